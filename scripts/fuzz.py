#!/usr/bin/env python3
"""Decoder fuzzing: damaged archives must decode to the exact original or fail with NacritError.

Seeds are valid archives: fallback ones made here with `neural=False` (empty, 1 byte, stored,
zstd, multi-segment, mixed stored+zstd) and every `formats/golden/*.nc` (neural ones included).
Each case applies one or two mutations to one or two seeds:

- truncation at every header/frame/field boundary (a deterministic sweep) and at random points;
- random bit flips, byte changes, insertions and deletions, aimed at any section or a chosen one
  (file header, model frame, segment header, payload, end frame);
- splicing two archives (at random points or at frame boundaries), frame-level recombination;
- duplicating, removing and swapping sections (frames with their payloads);
- appending or prepending garbage (random bytes, zeros, a whole second archive);
- with --crafted: field-level changes whose checksums are recomputed (lengths, methods, lane
  tables, model parameters, lying zstd frame headers), to test what the decoder does with
  well-formed but hostile values.

A case passes when decoding ends in either the exact original bytes of a seed involved in the case
(which the decoder can only produce after every checksum verified) or NacritError with a
non-empty one-line message. It fails on any other exception (MemoryError included), on wrong
bytes, and on exceeding the per-case time limit.

Without --neural no model is ever loaded: `api.get_engine` and `models.find_by_sha` are replaced
by a guard. When the guard is reached, the archive must be structurally valid (`container.scan`
accepts every header, frame and payload checksum); otherwise the model would have been loaded for
a damaged archive, and the case fails. Structurally valid neural cases are then counted as
"needs model" (decoded for real with --neural, at most --max-model-cases of them).

    python scripts/fuzz.py                      # 5000 random cases + the truncation sweep
    python scripts/fuzz.py --cases 50000 --seed 7 --crafted --max-mem 2048
    python scripts/fuzz.py --neural --cases 2000 --max-model-cases 40 --threads 1

Prints the case counts by outcome and every failure; exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import random
import resource
import signal
import struct
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nacrith  # noqa: E402
from nacrith import api, models  # noqa: E402
from nacrith import container as C  # noqa: E402
from nacrith import frames as F  # noqa: E402
from nacrith.errors import NacritError  # noqa: E402

GOLDEN = ROOT / "formats" / "golden"


# ---------------------------------------------------------------- seeds
@dataclass
class Section:
    kind: str            # header | model | segment | end | garbage
    start: int
    head_end: int        # end of the frame header (== payload start)
    end: int             # end of the payload (== next frame)
    fields: list = field(default_factory=list)   # offsets of field boundaries inside the header


@dataclass
class Seed:
    name: str
    blob: bytes
    sha: str             # sha256 of the original
    size: int
    sections: list
    neural: bool


def parse_sections(blob: bytes) -> list[Section]:
    """Split a valid archive into sections (file header, frames with their payloads)."""
    if blob[:4] != b"NACR":
        return parse_sections4(blob)
    f = io.BytesIO(blob)
    C.read_file_header(f)
    out = [Section("header", 0, 10, 10, [4, 5, 6])]
    index = 0
    while True:
        start = f.tell()
        frame = C.read_frame(f, index)
        head_end = f.tell()
        index += 1
        if isinstance(frame, C.End):
            out.append(Section("end", start, head_end, head_end, _field_ends(blob, start, head_end)))
            break
        if isinstance(frame, C.ModelDescriptor):
            out.append(Section("model", start, head_end, head_end,
                               _field_ends(blob, start, head_end)))
            continue
        C.read_payload(f, frame, index - 1)
        out.append(Section("segment", start, head_end, f.tell(), _field_ends(blob, start, head_end)))
    assert f.tell() == len(blob), "trailing data in a seed"
    return out


def _varint_end(blob: bytes, pos: int) -> int:
    while blob[pos] & 0x80:
        pos += 1
    return pos + 1


def parse_sections4(blob: bytes) -> list[Section]:
    """Version 4: single layouts (header, descriptor, length + body, trailer) or the framed
    layout (header, model / segment / end frames)."""
    layout, version = F.header_fields(blob)
    out = [Section("header", 0, 4, 4, [3])]
    if layout != F.L_FRAMED:
        pos = 4
        if layout in (F.L_NEURAL, F.L_HYBRID):
            r = C.Reader(blob[4:], "x")
            F.read_descriptor(r, version)
            out.append(Section("model", 4, 4 + r.pos, 4 + r.pos, list(range(5, 4 + r.pos))))
            pos = 4 + r.pos
        head_end = _varint_end(blob, pos)
        out.append(Section("segment", pos, head_end, len(blob) - 8, list(range(pos + 1, head_end))))
        out.append(Section("end", len(blob) - 8, len(blob), len(blob), [len(blob) - 4]))
        return out
    pos = 4
    while True:
        kind = blob[pos]
        if kind == F.T_END:
            end = _varint_end(blob, pos + 1) + 12
            out.append(Section("end", pos, end, end, _field_ends(blob, pos, end)))
            assert end == len(blob), "trailing data in a seed"
            return out
        if kind == F.T_MODEL:
            r = C.Reader(blob[pos + 1:], "x")
            n = r.varint()
            end = pos + 1 + r.pos + n + 4
            out.append(Section("model", pos, end, end, _field_ends(blob, pos, end)))
            pos = end
            continue
        a = _varint_end(blob, pos + 1)
        r = C.Reader(blob[a:], "x")
        n = r.varint()
        head_end = a + r.pos
        out.append(Section("segment", pos, head_end, head_end + n + 8,
                           _field_ends(blob, pos, head_end)))
        pos = head_end + n + 8


def _field_ends(blob: bytes, start: int, end: int) -> list[int]:
    """Every position inside a frame header (headers are short: all of them are boundaries)."""
    return list(range(start + 1, end))


def _words(rng: random.Random, n: int) -> bytes:
    vocab = ("the of and to in is was that for it with as his on be at by had not are but from "
             "or have an they which one you were her all she there would their we him been has "
             "when who will more no if out so said what up its about into than them can only "
             "other new some could time these two may then do first any my now such like our "
             "over man me even most made after also did many before must through back years "
             "where much your way well down should because each just those people").split()
    out, size = [], 0
    while size < n:
        w = rng.choice(vocab)
        if rng.random() < 0.08:
            w = w.capitalize()
        w += "\n" if rng.random() < 0.07 else (". " if rng.random() < 0.05 else " ")
        out.append(w)
        size += len(w)
    return "".join(out).encode()[:n]


def generated_originals(rng: random.Random) -> list[tuple[str, bytes, dict]]:
    text = _words(rng, 6000)
    noise = bytes(rng.getrandbits(8) for _ in range(700))
    return [
        ("gen-empty", b"", {}),
        ("gen-1byte", b"\x00", {}),
        ("gen-stored", noise[:300], {}),
        ("gen-zstd", text[:2500], {}),
        ("gen-multiseg", text[:3000] + noise + bytes(range(256)), {"segment_size": 1000}),
        ("gen-multiseg-small", text[:700], {"segment_size": 100}),
    ]


def load_seeds(rng: random.Random, golden: bool = True, neural_gen: bool = False,
               threads: int = 1) -> list[Seed]:
    seeds = []
    for name, data, kw in generated_originals(rng):
        blob = nacrith.compress(data, neural=False, **kw)
        seeds.append(Seed(name, blob, hashlib.sha256(data).hexdigest(), len(data),
                          parse_sections(blob), False))
    if neural_gen:                  # an archive made by this version's encoder (mixer included)
        data = _words(rng, 240)
        blob = nacrith.compress(data, threads=threads)
        if api.scan(io.BytesIO(blob)).model is not None:
            seeds.append(Seed("gen-neural", blob, hashlib.sha256(data).hexdigest(), len(data),
                              parse_sections(blob), True))
    if golden and (GOLDEN / "MANIFEST.txt").is_file():
        for line in (GOLDEN / "MANIFEST.txt").read_text().splitlines():
            if not line.strip():
                continue
            sha, size, name, methods = line.split()
            if "-solid" in name:        # trees: restored by solid.extract, fuzzed in test_solid
                continue
            blob = (GOLDEN / name).read_bytes()
            seeds.append(Seed(name, blob, sha, int(size), parse_sections(blob),
                              "neural" in methods))
    return seeds


# ---------------------------------------------------------------- mutations
INTERESTING = [0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF]


def _sections_bytes(seed: Seed, s: Section) -> bytes:
    return seed.blob[s.start:s.end]


def _pick_range(rng, seed: Seed, kind: str | None) -> tuple[int, int]:
    """A byte range to damage: the whole archive, or one section kind (header / payload...)."""
    blob = seed.blob
    if kind is None:
        return 0, len(blob)
    cands = []
    for s in seed.sections:
        if kind == "payload" and s.kind == "segment" and s.end > s.head_end:
            cands.append((s.head_end, s.end))
        elif kind == "frame_header" and s.kind in ("segment", "model", "end"):
            cands.append((s.start, s.head_end))
        elif s.kind == kind:
            cands.append((s.start, s.head_end if kind != "segment" else s.end))
    if not cands:
        return 0, len(blob)
    return rng.choice(cands)


def m_bitflip(rng, seeds, seed):
    b = bytearray(seed.blob)
    if not b:
        return bytes(b), "bitflip(empty)"
    kind = rng.choice([None, None, "header", "model", "frame_header", "payload", "end"])
    lo, hi = _pick_range(rng, seed, kind)
    n = 1 + min(int(rng.expovariate(0.7)), 16)
    for _ in range(n):
        b[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    return bytes(b), f"bitflip({kind},{n})"


def m_bytechange(rng, seeds, seed):
    b = bytearray(seed.blob)
    if not b:
        return bytes(b), "bytes(empty)"
    kind = rng.choice([None, "header", "model", "frame_header", "payload", "end"])
    lo, hi = _pick_range(rng, seed, kind)
    n = 1 + min(int(rng.expovariate(0.5)), 32)
    for _ in range(n):
        b[rng.randrange(lo, hi)] = rng.choice(INTERESTING) if rng.random() < 0.5 \
            else rng.randrange(256)
    return bytes(b), f"bytes({kind},{n})"


def m_insert(rng, seeds, seed):
    pos = rng.randint(0, len(seed.blob))
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return seed.blob[:pos] + junk + seed.blob[pos:], f"insert({pos},{len(junk)})"


def m_delete(rng, seeds, seed):
    if not seed.blob:
        return seed.blob, "delete(empty)"
    pos = rng.randrange(len(seed.blob))
    n = rng.randint(1, min(64, len(seed.blob) - pos))
    return seed.blob[:pos] + seed.blob[pos + n:], f"delete({pos},{n})"


def m_truncate(rng, seeds, seed):
    n = rng.randint(0, max(0, len(seed.blob) - 1))
    return seed.blob[:n], f"truncate({n})"


def m_truncate_boundary(rng, seeds, seed):
    pts = boundaries(seed)
    n = max(0, min(len(seed.blob) - 1, rng.choice(pts) + rng.choice([-1, 0, 0, 1])))
    return seed.blob[:n], f"truncate-boundary({n})"


def m_splice(rng, seeds, seed, other):
    if rng.random() < 0.5:
        i, j = rng.randint(0, len(seed.blob)), rng.randint(0, len(other.blob))
    else:
        i = rng.choice([s.start for s in seed.sections] + [len(seed.blob)])
        j = rng.choice([s.start for s in other.sections] + [len(other.blob)])
    return seed.blob[:i] + other.blob[j:], f"splice({other.name},{i},{j})"


def m_recombine(rng, seeds, seed, other):
    """File header of one, then frames drawn from both, then an end frame of either."""
    frames = [(sd, s) for sd in (seed, other) for s in sd.sections
              if s.kind in ("model", "segment")]
    pick = [rng.choice(frames) for _ in range(rng.randint(0, 4))] if frames else []
    end_seed = rng.choice([seed, other])
    end = end_seed.sections[-1]
    blob = seed.blob[:10] + b"".join(_sections_bytes(sd, s) for sd, s in pick) \
        + end_seed.blob[end.start:end.end]
    return blob, f"recombine({other.name},{len(pick)})"


def m_dup(rng, seeds, seed):
    secs = seed.sections
    s = rng.choice(secs)
    blob = seed.blob
    at = rng.choice([x.start for x in secs] + [len(blob)])
    return blob[:at] + blob[s.start:s.end] + blob[at:], f"dup({s.kind}@{s.start}->{at})"


def m_remove(rng, seeds, seed):
    s = rng.choice(seed.sections)
    return seed.blob[:s.start] + seed.blob[s.end:], f"remove({s.kind}@{s.start})"


def m_swap(rng, seeds, seed):
    secs = seed.sections
    if len(secs) < 3:
        return m_remove(rng, seeds, seed)
    i, j = sorted(rng.sample(range(len(secs)), 2))
    parts = [seed.blob[s.start:s.end] for s in secs]
    parts[i], parts[j] = parts[j], parts[i]
    return b"".join(parts), f"swap({secs[i].kind},{secs[j].kind})"


def m_append(rng, seeds, seed, other):
    r = rng.random()
    if r < 0.3:
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif r < 0.5:
        junk = b"\x00" * rng.randint(1, 64)
    elif r < 0.8:
        junk = other.blob                           # two archives concatenated
    else:
        junk = other.blob[10:]                      # frames of another archive
    if rng.random() < 0.2:
        return junk + seed.blob, f"prepend({len(junk)})"
    return seed.blob + junk, f"append({len(junk)})"


# ---------------------------------------------------------------- crafted (checksums fixed)

HUGE = [0, 1, 255, 256, (1 << 20), (1 << 22) + 1, (1 << 31), (1 << 32) - 1, 1 << 32,
        (1 << 32) + 1, (1 << 32) + (1 << 20), (1 << 33), (1 << 50), (1 << 50) + 1, (1 << 63) - 1]


def _rand_len(rng) -> int:
    return rng.choice(HUGE) if rng.random() < 0.6 else rng.randrange(1 << rng.randrange(1, 40))


def _frames(seed: Seed):
    f = io.BytesIO(seed.blob)
    C.read_file_header(f)
    out, index = [], 0
    for s in seed.sections[1:]:
        f.seek(s.start)
        out.append((s, C.read_frame(f, index), seed.blob[s.head_end:s.end]))
        index += 1
    return out


def zstd_lie(payload: bytes, content_size: int) -> bytes:
    """Rewrite a zstd frame header so that it claims `content_size` (8-byte FCS field)."""
    if payload[:4] != b"\x28\xb5\x2f\xfd":
        return payload
    fhd = payload[4]
    single = fhd >> 5 & 1
    fcs_code, did_code = fhd >> 6, fhd & 3
    fcs = {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[fcs_code]
    did = {0: 0, 1: 1, 2: 2, 3: 4}[did_code]
    pos = 5 + (0 if single else 1)
    window = payload[5:6] if not single else b""
    rest = payload[pos + did + fcs:]
    new_fhd = (3 << 6) | (fhd & 0x3C) | did_code
    if single and content_size < 256:
        content_size = 256
    return payload[:4] + bytes([new_fhd]) + window + payload[pos:pos + did] \
        + struct.pack("<Q", content_size) + rest


def _mutate_varints(rng, body: bytes, n: int) -> tuple[bytes, str]:
    """Rewrite one of the first n varints of body (a lane or run table) with a hostile value."""
    vals, pos = [], 0
    try:
        for _ in range(n):
            end = _varint_end(body, pos)
            vals.append((pos, end))
            pos = end
    except IndexError:
        pass
    if not vals:
        return body, "no varint"
    a, b = rng.choice(vals)
    out = bytearray()
    C.put_varint(out, v := _rand_len(rng))
    return body[:a] + bytes(out) + body[b:], f"table varint={v}"


def _crafted_body(rng, method: int, body: bytes) -> tuple[int, bytes, str]:
    choice = rng.randrange(5)
    if choice == 0:
        m = rng.choice([0, 1, 2, 3, 4, 7, 15])
        return m, body, f"method={m}"
    if choice == 1 and body:
        p = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            p[rng.randrange(len(p))] ^= 1 << rng.randrange(8)
        return method, bytes(p), "body bits (checks fixed)"
    if choice == 2:
        b, what = _mutate_varints(rng, body, 6)
        return method, b, what
    if choice == 3 and method == F.L_HYBRID:
        r = C.Reader(body, "x")
        n = r.varint()
        for _ in range(n - 1):
            r.varint()
        p = bytearray(body)
        p[r.pos] = rng.choice([0, 1, 2, 255])
        return method, bytes(p), f"binary method={p[r.pos]}"
    return method, body[:rng.randrange(len(body) + 1)], "body cut (checks fixed)"


def m_crafted4(rng, seeds, seed):
    """Version 4: change one field and recompute every check that covers it."""
    blob = seed.blob
    layout, version = F.header_fields(blob)
    if layout != F.L_FRAMED:
        desc, segm = F.read_single(io.BytesIO(blob[4:]), layout, F.SINGLE_LIMIT, version)
        choice = rng.randrange(5)
        method, body, check, orig = layout, segm.body, segm.check, segm.orig_len
        what = ""
        if choice == 0 and desc is not None:
            what = _crafted_desc(rng, desc)
        elif choice == 1:
            orig = _rand_len(rng) % (1 << 40)
            what = f"orig_len={orig}"
        elif choice == 2:
            check = rng.getrandbits(32)
            what = "content check"
        else:
            method, body, what = _crafted_body(rng, method, body)
        if method in (F.L_NEURAL, F.L_HYBRID) and desc is None:
            desc = F.Descriptor(1, F.E_LLAMA, 0, {})
        b = bytearray(F.header(method & 15, version))
        if method in (F.L_NEURAL, F.L_HYBRID):
            b += desc.pack()
        C.put_varint(b, orig)
        b += body + struct.pack("<I", check)
        b += struct.pack("<I", C.hash32(bytes(b)))
        return bytes(b), f"crafted(single: {what})"
    secs = [s for s in seed.sections[1:]]
    s = rng.choice(secs)
    index = sum(1 for x in seed.sections[1:] if x.kind == "segment" and x.start < s.start)
    if s.kind == "segment":
        f = io.BytesIO(blob[s.start:s.end])
        seg = F.read_frame(f, 0, index, version)
        method, body, what = _crafted_body(rng, seg.method, seg.body)
        orig = seg.orig_len if rng.random() < 0.7 else _rand_len(rng) % (1 << 40)
        b = bytearray([(method + 1) & 255])
        C.put_varint(b, orig)
        C.put_varint(b, len(body))
        b += body + struct.pack("<I", seg.check)
        frame = bytes(b) + struct.pack("<I", __import__("xxhash").xxh32_intdigest(bytes(b),
                                                                                 seed=index))
    elif s.kind == "model":
        d = F.read_frame(io.BytesIO(blob[s.start:s.end]), 0, 0, version)
        what = _crafted_desc(rng, d)
        frame = F.pack_model_frame(d)
    else:
        n = sum(1 for x in seed.sections if x.kind == "segment")
        total = _rand_len(rng) % (1 << 50) if rng.random() < 0.5 else 0
        what = f"total_len={total}"
        frame = F.pack_end_frame(total, rng.getrandbits(64), n)
    return blob[:s.start] + frame + blob[s.end:], f"crafted({s.kind}@{s.start}: {what})"


def _crafted_desc(rng, d) -> str:
    choice = rng.randrange(5)
    if choice == 0:
        d.model_id = rng.choice([0, 1, 2, 3, 1000])
        if d.model_id == 0:
            d.sha256, d.n_vocab, d.name = bytes(32), rng.choice([0, 1, 2, 1 << 23, 1 << 24]), "x"
        return f"model_id={d.model_id}"
    if choice == 1:
        d.engine = rng.choice([1, 2])
        d.engine_check = rng.choice([0, 1, 0xFFFF])
        return f"engine={d.engine}/{d.engine_check}"
    key = rng.choice(list(C.PARAM_KEYS.values()))
    if choice == 2:
        d.params.pop(key, None)
        return f"no {key}"
    d.params[key] = rng.choice([0, 1, 2, 3, 7, 255, 256, 513, 1 << 16, (1 << 31), (1 << 32) - 1,
                                1 << 32])
    return f"{key}={d.params[key]}"


def m_crafted(rng, seeds, seed):
    """Change one field of one frame and recompute every checksum that covers it."""
    if seed.blob[:4] != b"NACR":
        return m_crafted4(rng, seeds, seed)
    frames = _frames(seed)
    i = rng.randrange(len(frames) + 1)
    if i == len(frames):                           # file header: version / flags, checksum fixed
        head = bytearray(seed.blob[:6])
        if rng.random() < 0.5:
            head[4] = rng.choice([0, 2, 3, 255])
        else:
            head[5] = rng.choice([1, 0x80, 0xFF])
        head += struct.pack("<I", C.hash32(bytes(head)))
        return bytes(head) + seed.blob[10:], f"crafted(header {head[4]},{head[5]})"
    s, frame, payload = frames[i]
    what = ""
    if isinstance(frame, C.Segment):
        choice = rng.randrange(8)
        if choice == 0:
            frame.orig_len = _rand_len(rng)
            what = f"orig_len={frame.orig_len}"
        elif choice == 1:
            frame.payload_len = _rand_len(rng)
            what = f"payload_len={frame.payload_len}"
        elif choice == 2:
            frame.method = rng.choice([0, 1, 2, 3, 255])
            what = f"method={frame.method}"
            if frame.method == C.NEURAL and not frame.lanes:
                frame.lanes = [C.Lane(frame.orig_len, rng.randint(0, frame.orig_len),
                                      0, frame.payload_len)]
        elif choice == 3 and frame.lanes:
            ln = rng.choice(frame.lanes)
            attr = rng.choice(["orig_bytes", "n_tokens", "ins_bytes", "stream_bytes"])
            setattr(ln, attr, _rand_len(rng))
            what = f"lane.{attr}={getattr(ln, attr)}"
        elif choice == 4 and frame.lanes:
            k = rng.choice([1, 2, 3, 4, 255, 256, 257])
            frame.lanes = (frame.lanes * k)[:k]
            what = f"lanes={k}"
        elif choice == 5 and frame.method == C.ZSTD:
            payload = zstd_lie(payload, rng.choice([frame.orig_len + 1, 1 << 31, 3 << 30, 1 << 32,
                                                    1 << 40, (1 << 63) - 1]))
            what = "zstd content size lie"
        elif choice == 6 and payload:
            p = bytearray(payload)
            for _ in range(rng.randint(1, 4)):
                p[rng.randrange(len(p))] ^= 1 << rng.randrange(8)
            payload = bytes(p)
            what = "payload bits (hash fixed)"
        else:
            frame.orig_hash = rng.getrandbits(64)
            what = "orig_hash"
        if what != "orig_hash":
            frame.payload_hash = C.hash32(payload)
        if "payload_len" not in what and "lane" not in what:
            frame.payload_len = len(payload) if frame.method != C.NEURAL else frame.payload_len
        body = frame.pack() + payload
    elif isinstance(frame, C.End):
        if rng.random() < 0.5:
            frame.total_len = _rand_len(rng)
            what = f"total_len={frame.total_len}"
        else:
            frame.total_hash = rng.getrandbits(64)
            what = "total_hash"
        body = frame.pack()
    else:
        params = dict(frame.params)
        key = rng.choice(list(C.PARAM_KEYS.values()))
        choice = rng.randrange(4)
        if choice == 0:
            params[key] = rng.choice([0, 1, 2, 3, 7, 255, 256, 513, 1 << 16, (1 << 31),
                                      (1 << 32) - 1, 1 << 32])
            what = f"{key}={params[key]}"
        elif choice == 1:
            params.pop(key, None)
            what = f"no {key}"
        elif choice == 2:
            frame.n_vocab = rng.choice([0, 1, frame.n_vocab + 1, (1 << 32) - 1])
            what = f"n_vocab={frame.n_vocab}"
        else:
            frame.backend = rng.choice(["", "x", frame.backend.replace("0.3", "9.9"),
                                        "0" * 255])
            what = "backend"
        frame.params = params
        body = frame.pack()
    blob = seed.blob[:s.start] + body + seed.blob[s.end:]
    return blob, f"crafted({s.kind}@{s.start}: {what})"


SINGLE = [m_bitflip, m_bitflip, m_bytechange, m_insert, m_delete, m_truncate, m_truncate_boundary,
          m_truncate_boundary, m_dup, m_remove, m_swap]
PAIR = [m_splice, m_recombine, m_append]


def boundaries(seed: Seed) -> list[int]:
    pts = {0, len(seed.blob)}
    for s in seed.sections:
        pts.update([s.start, s.head_end, s.end])
        pts.update(s.fields)
    return sorted(pts)


def sweep_cases(seeds: list[Seed]):
    """Deterministic: every truncation at (and next to) every header, frame and field boundary."""
    for i, seed in enumerate(seeds):
        cuts = set()
        for p in boundaries(seed):
            cuts.update([p - 1, p, p + 1])
        for n in sorted(cuts):
            if 0 <= n < len(seed.blob):
                yield seed.blob[:n], (i,), f"{seed.name}: truncate-sweep({n})"


def random_case(rng: random.Random, seeds: list[Seed], crafted: bool):
    i = rng.randrange(len(seeds))
    seed = seeds[i]
    if crafted and rng.random() < 0.5:
        blob, what = m_crafted(rng, seeds, seed)
        involved = (i,)
    elif rng.random() < 0.25:
        j = rng.randrange(len(seeds))
        blob, what = rng.choice(PAIR)(rng, seeds, seed, seeds[j])
        involved = (i, j)
    else:
        blob, what = rng.choice(SINGLE)(rng, seeds, seed)
        involved = (i,)
    if rng.random() < 0.15 and blob:              # a second, independent mutation
        tmp = Seed(seed.name, blob, seed.sha, seed.size, seed.sections, seed.neural)
        try:
            tmp.sections = parse_sections(blob)
        except Exception:
            tmp.sections = seed.sections if len(blob) >= len(seed.blob) else \
                [Section("garbage", 0, len(blob), len(blob))]
        m = rng.choice([m_bitflip, m_bytechange, m_truncate, m_delete, m_insert])
        blob, w2 = m(rng, seeds, tmp)
        what += " + " + w2
    return blob, involved, f"{seed.name}: {what}"


# ---------------------------------------------------------------- running a case
class ModelNeeded(BaseException):
    pass


class TimeLimit(BaseException):
    pass


class NonSeekable:
    """A pipe-like source: the decoder cannot scan ahead."""

    def __init__(self, blob: bytes):
        self.f = io.BytesIO(blob)

    def read(self, n=-1):
        return self.f.read(n)

    def seekable(self):
        return False


def _guard(*a, **k):
    raise ModelNeeded()


class ModelGuard:
    """Replace the model-loading entry points (api.get_engine, models.find_by_sha)."""

    def __init__(self, active: bool):
        self.active = active
        self.saved = []

    def __enter__(self):
        if self.active:
            for mod, name in ((api, "get_engine"), (models, "find_by_sha")):
                if hasattr(mod, name):
                    self.saved.append((mod, name, getattr(mod, name)))
                    setattr(mod, name, _guard)
        return self

    def __exit__(self, *exc):
        for mod, name, fn in self.saved:
            setattr(mod, name, fn)
        self.saved = []
        return False


def _on_alarm(signum, frame):
    raise TimeLimit()


@dataclass
class Outcome:
    kind: str            # ok | error | model | fail
    detail: str = ""


def decode_case(blob: bytes, allowed: set, streaming: bool, guard: bool, time_limit: float,
                opts: dict | None = None) -> Outcome:
    src = NonSeekable(blob) if streaming else io.BytesIO(blob)
    out = io.BytesIO()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        with ModelGuard(guard):
            api.decompress_stream(src, out, **(opts or {}))
        result = Outcome("ok")
    except NacritError as e:
        msg = str(e)
        if not msg or "\n" in msg:
            result = Outcome("fail", f"NacritError without a one-line message: {msg!r}")
        else:
            result = Outcome("error", msg)
    except ModelNeeded:
        result = Outcome("model")
    except TimeLimit:
        result = Outcome("fail", f"no result within {time_limit} s")
    except Exception as e:  # noqa: BLE001 -- anything else is a decoder bug
        tb = traceback.format_exc(limit=-3).strip().splitlines()
        result = Outcome("fail", f"{type(e).__name__}: {e} | " + " / ".join(tb[-4:]))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if result.kind == "ok":
        got = hashlib.sha256(out.getvalue()).hexdigest()
        if got not in allowed:
            result = Outcome("fail", f"decoded {len(out.getvalue())} bytes that are not the "
                                     "original of any seed involved")
    if result.kind == "model" and not streaming:
        try:                          # the model may only be needed for an intact structure
            api.scan(io.BytesIO(blob))
        except NacritError as e:
            result = Outcome("fail", f"model requested for a damaged archive ({e})")
    return result


@dataclass
class Report:
    counts: dict = field(default_factory=lambda: {"ok": 0, "error": 0, "model": 0, "fail": 0,
                                                  "skipped-model": 0, "decoded-model": 0})
    failures: list = field(default_factory=list)
    messages: dict = field(default_factory=dict)
    cases: list = field(default_factory=list)       # (blob, allowed, outcome kind) if kept
    unique: set = field(default_factory=set)        # distinct (archive, source mode) pairs

    @property
    def total(self):
        return sum(v for k, v in self.counts.items() if k != "decoded-model")


def _kind(what: str) -> str:
    """Mutation kind of a case label, for capping the slow model decodes per kind."""
    w = what.split(": ", 1)[-1]
    if w.startswith("crafted("):
        inner = w[len("crafted("):]
        return "crafted " + inner.split("@")[0] + " " + inner.split(": ", 1)[-1].split("=")[0]
    return w.split("(")[0]


def run(cases: int = 5000, seed: int = 1, crafted: bool = False, neural: bool = False,
        time_limit: float = 10.0, max_model_cases: int = 20, sweep: bool = True,
        threads: int = 1, keep_cases: bool = False, log=None,
        seeds: list[Seed] | None = None) -> Report:
    rng = random.Random(seed)
    if seeds is None:
        seeds = load_seeds(rng, neural_gen=neural, threads=threads)
    rep = Report()
    memo: dict = {}
    model_runs = 0
    per_kind: dict = {}             # model decodes per mutation kind (full decodes are slow)

    def one(blob, involved, what, streaming):
        nonlocal model_runs
        allowed = {seeds[i].sha for i in involved}
        key = (hashlib.sha256(blob).digest(), streaming, tuple(sorted(allowed)))
        if key in memo:
            out = memo[key]
        else:
            out = decode_case(blob, allowed, streaming, guard=True, time_limit=time_limit)
            if out.kind == "model" and neural:
                kind = _kind(what)
                if model_runs < max_model_cases and per_kind.get(kind, 0) < 3:
                    model_runs += 1
                    per_kind[kind] = per_kind.get(kind, 0) + 1
                    t0 = time.monotonic()
                    out = decode_case(blob, allowed, streaming, guard=False,
                                      time_limit=max(time_limit, 600),
                                      opts={"threads": threads})
                    if log:
                        log(f"  model case {model_runs}: {what} -> {out.kind} "
                            f"({time.monotonic() - t0:.1f} s) {out.detail[:100]}")
                    rep.counts["decoded-model"] += 1
                else:
                    out = Outcome("skipped-model")
            memo[key] = out
        rep.counts[out.kind] += 1
        rep.unique.add(key)
        if out.kind == "fail":
            rep.failures.append((what + (" [stream]" if streaming else ""), out.detail))
        elif out.kind == "error":
            rep.messages[out.detail.split(" (")[0]] = rep.messages.get(out.detail.split(" (")[0], 0) + 1
        if keep_cases:
            rep.cases.append((blob, allowed, out.kind, what))

    if sweep:
        for blob, involved, what in sweep_cases(seeds):
            one(blob, involved, what, streaming=False)
            one(blob, involved, what, streaming=True)
    for _ in range(cases):
        blob, involved, what = random_case(rng, seeds, crafted)
        one(blob, involved, what, streaming=rng.random() < 0.3)
    return rep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=5000, help="random cases (plus the sweep)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--crafted", action="store_true",
                    help="also field-level mutations with recomputed checksums")
    ap.add_argument("--neural", action="store_true",
                    help="decode structurally valid neural cases with the real model")
    ap.add_argument("--max-model-cases", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (--neural)")
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per case")
    ap.add_argument("--max-mem", type=int, default=0,
                    help="address-space limit in MiB (RLIMIT_AS), 0 = none")
    ap.add_argument("--no-sweep", action="store_true", help="skip the truncation sweep")
    a = ap.parse_args(argv)
    if a.max_mem:
        lim = a.max_mem << 20
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    t0 = time.monotonic()
    rep = run(a.cases, a.seed, a.crafted, a.neural, a.time_limit, a.max_model_cases,
              not a.no_sweep, a.threads, log=print)
    dt = time.monotonic() - t0
    c = rep.counts
    print(f"fuzz: {rep.total} cases ({len(rep.unique)} distinct) in {dt:.1f} s (seed {a.seed}{', crafted' if a.crafted else ''}"
          f"{', neural' if a.neural else ''}): {c['ok']} exact, {c['error']} NacritError, "
          f"{c['fail']} failures; {c['decoded-model']} decoded with the model (counted above), "
          f"{c['model'] + c['skipped-model']} structurally valid neural cases not decoded")
    for msg, n in sorted(rep.messages.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {n:6d}  {msg}")
    for what, detail in rep.failures[:200]:
        print(f"FAIL {what}: {detail}")
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
