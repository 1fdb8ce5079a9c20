"""Container formats v4 to v9, the compact frame (spec: formats/FORMAT.md).

Invariants:
- a version-4..9 archive starts with "NAC" and one byte (layout << 4) | version; "NACR" (0x52
  = layout 5, version 2, never a version-4..9 value) starts every version 1-3 archive
  (container.py reads those); the encoder writes version 5, or 8 for the two-model byte coder
  (only version 6-8 descriptors may have its keys, NEW_IN_6, only version 7-8 ones the context
  mixer's, NEW_IN_7, and only version 8 ones the token bias heads', NEW_IN_8: an older reader
  refuses the archive by its version; versions 6 (the linear two-model mixture) and 7 (bits
  mixed, no bias heads) are read, no longer written), or 9 for the ensemble's preset 5 (exact
  sums): version 5 whose absent mix_preset means 5, without the two-model keys, and the reader
  requires preset 5 there and refuses it in versions 4-8 (api.check_descriptor); 4 and 5 differ
  only in the descriptor's defaults (DEFAULTS_OF: an absent mix_preset is 3 in version 4, 4 in
  version 5) and in the keys a version-4 descriptor may not have (NEW_IN_5), so every reader
  takes the archive's version;
- single layouts (stored, zstd, neural, hybrid: the whole input is one segment) carry no lengths
  that the file's own length implies, and end with a trailer: the low 32 bits of the xxh3-64 of
  the original (content check) and the xxh32 of every archive byte before it (archive check).
  The archive check is verified before any field after the header is used, so damage is reported
  before a model is loaded; the content check catches a decode that does not reproduce;
- the framed layout (several segments) gives every frame its own length and xxh32 (seeded with
  the frame's index, so frames cannot be reordered unnoticed), every segment its content check,
  and ends with an end frame (total length, xxh3-64 of the whole original);
- the model descriptor names a registered model preset by a small id (models.REGISTRY: the
  decoder knows its SHA-256) or stores a custom GGUF's full SHA-256, names the engine (llama.cpp
  with a 16-bit hash of its build fingerprint, or the portable engine with its version), and
  stores only the parameters that differ from DEFAULTS;
- every length is bounded before use (no allocation from an unverified value).
"""
from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

import xxhash

from . import container as C
from .container import PARAM_IDS, PARAM_KEYS, Reader, hash32, put_varint
from .errors import NacritError

MAGIC = b"NAC"
VERSION = 5                      # written; versions 4 to 9 are read (FORMAT.md, "Version 5")
BYTEMIX_VERSION = 8              # written instead when the descriptor has the two-model keys
ISUM_VERSION = 9                 # written instead for the ensemble's preset 5 (exact sums)
CM_PRESET_OF = {7: 1, 8: 2}      # the bit mixer preset (bytecm.PRESETS) each version codes with
READ_VERSIONS = (4, 5, 6, 7, 8, 9)
LEGACY_BYTE = 0x52               # "NACR": versions 1-3 (container.py)

# layouts (high nibble of header byte 3)
L_STORED, L_ZSTD, L_NEURAL, L_HYBRID, L_FRAMED, L_SOLID = 0, 1, 2, 3, 8, 9
SINGLE_LAYOUTS = (L_STORED, L_ZSTD, L_NEURAL, L_HYBRID)
METHOD_NAMES = {L_STORED: "stored", L_ZSTD: "zstd", L_NEURAL: "neural", L_HYBRID: "hybrid"}

# frame types of the framed layout
T_END, T_INDEX2, T_INDEX, T_MODEL = 0, 5, 6, 7   # segment frames use their layout + 1 (1..4)
MAX_INDEX = 1 << 26              # bytes of a solid archive's index (compressed and raw)

# engines
E_LLAMA, E_PORTABLE = 1, 2
ENGINE_NAMES = {E_LLAMA: "llama", E_PORTABLE: "portable"}

# Parameters a version-4 archive takes when its descriptor does not list them. Never change a
# value here: archives rely on it (a new default needs a new key or a new version).
DEFAULTS_OF = {4: {"ctx": 2048, "n_keep": 1, "lanes": 1, "mix_preset": 3},   # absent slide:
               5: {"ctx": 2048, "n_keep": 1, "lanes": 1, "mix_preset": 4},   # ctx / 4
               6: {"ctx": 2048, "n_keep": 1, "lanes": 1, "mix_preset": 4},
               7: {"ctx": 2048, "n_keep": 1, "lanes": 1, "mix_preset": 4},
               8: {"ctx": 2048, "n_keep": 1, "lanes": 1, "mix_preset": 4},
               9: {"ctx": 2048, "n_keep": 1, "lanes": 1, "mix_preset": 5}}
DEFAULTS = DEFAULTS_OF[VERSION]
NEW_IN_5 = frozenset(PARAM_KEYS[k] for k in C.V5_KEYS)   # names a v4 archive cannot have
NEW_IN_6 = frozenset(PARAM_KEYS[k] for k in C.V6_KEYS)   # names a v4 / v5 archive cannot have
NEW_IN_7 = frozenset(PARAM_KEYS[k] for k in C.V7_KEYS)   # names a v4 - v6 archive cannot have
NEW_IN_8 = frozenset(PARAM_KEYS[k] for k in C.V8_KEYS)   # names a v4 - v7 archive cannot have
TRAILER = 8
MAX_RUNS = 1 << 20
MAX_DESCRIPTOR = 1024            # bytes of a packed descriptor (a custom model's is ~ 300)


def content_check(data) -> int:
    """Low 32 bits of xxh3-64: the single-segment content check (FORMAT.md)."""
    return xxhash.xxh3_64_intdigest(data) & 0xFFFFFFFF


def fingerprint_hash(fp: str) -> int:
    return hash32(fp.encode("utf-8")) & 0xFFFF


@dataclass
class Descriptor:
    """What the decoder needs to rebuild the model: model id (or custom SHA-256), engine, params."""
    model_id: int                   # models.REGISTRY id, 0 = custom
    engine: int                     # E_LLAMA | E_PORTABLE
    engine_check: int               # E_LLAMA: fingerprint_hash; E_PORTABLE: engine version
    params: dict                    # the differences from DEFAULTS
    sha256: bytes = b""             # custom model only
    n_vocab: int = 0                # custom model only
    name: str = ""                  # custom model only (informative)
    version: int = VERSION          # the archive's format version (its DEFAULTS)

    def full_params(self) -> dict:
        p = dict(DEFAULTS_OF[self.version])
        p.update(self.params)
        p.setdefault("slide", p["ctx"] // 4)
        return p

    def pack(self) -> bytes:
        b = bytearray()
        put_varint(b, self.model_id << 3 | self.engine << 1 | (1 if self.params else 0))
        if self.model_id == 0:
            b += self.sha256
            put_varint(b, self.n_vocab)
            raw = self.name.encode("utf-8")[:255]
            b.append(len(raw))
            b += raw
        if self.engine == E_LLAMA:
            b += struct.pack("<H", self.engine_check)
        else:
            put_varint(b, self.engine_check)
        if self.params:
            put_varint(b, len(self.params))
            for name, value in self.params.items():
                b.append(PARAM_IDS[name])
                put_varint(b, int(value))
        return bytes(b)


def read_descriptor(r: Reader, version: int = VERSION) -> Descriptor:
    head = r.varint(1 << 20)
    model_id, engine, has_params = head >> 3, head >> 1 & 3, head & 1
    if engine not in ENGINE_NAMES:
        raise NacritError(f"corrupt {r.what} (unknown engine {engine})")
    d = Descriptor(model_id, engine, 0, {}, version=version)
    if model_id == 0:
        d.sha256 = r.take(32)
        d.n_vocab = r.varint(1 << 23)
        d.name = r.take(r.u8()).decode("utf-8", "replace")
    d.engine_check = struct.unpack("<H", r.take(2))[0] if engine == E_LLAMA else r.varint(1 << 16)
    if has_params:
        n = r.varint(len(PARAM_KEYS))
        if n == 0:
            raise NacritError(f"corrupt {r.what} (empty parameter list)")
        for _ in range(n):
            key = r.u8()
            value = r.varint(1 << 32)
            name = PARAM_KEYS.get(key)
            if name is None:
                raise NacritError(f"archive uses unknown model parameter {key}; upgrade nacrith")
            if (name in ("threads", "cdf_bits") or name in d.params
                    or version < 5 and name in NEW_IN_5 or version < 6 and name in NEW_IN_6
                    or version < 7 and name in NEW_IN_7 or version < 8 and name in NEW_IN_8
                    or version == ISUM_VERSION and name in NEW_IN_6 | NEW_IN_7 | NEW_IN_8):
                raise NacritError(f"corrupt {r.what} (parameter {name} not allowed or repeated)")
            d.params[name] = value
    return d


# ---------------------------------------------------------------- segment bodies
@dataclass
class NeuralBody:
    """Lanes of a neural segment: (orig_bytes, lane payload = escape block + coded stream)."""
    lanes: list = field(default_factory=list)     # [(orig_bytes, payload bytes)]


def n_lanes(orig_len: int, lanes: int) -> int:
    """Lanes a neural body of orig_len bytes has (neural.split_lanes makes min(lanes, n))."""
    return max(1, min(lanes, orig_len))


def pack_neural(lanes) -> bytes:
    """lanes: [(orig_bytes, lane payload)]: K-1 orig lengths, K-1 payload lengths, payloads."""
    b = bytearray()
    for orig, _ in lanes[:-1]:
        put_varint(b, orig)
    for _, pay in lanes[:-1]:
        put_varint(b, len(pay))
    for _, pay in lanes:
        b += pay
    return bytes(b)


def unpack_neural(body: bytes, orig_len: int, lanes: int, what: str) -> NeuralBody:
    k = n_lanes(orig_len, lanes)
    r = Reader(body, what)
    origs = [r.varint(orig_len) for _ in range(k - 1)]
    pays = [r.varint(len(body)) for _ in range(k - 1)]
    if sum(origs) > orig_len or any(o == 0 for o in origs) or orig_len - sum(origs) == 0:
        raise NacritError(f"corrupt {what} (lane lengths do not add up)")
    origs.append(orig_len - sum(origs))
    rest = len(body) - r.pos
    if sum(pays) > rest:
        raise NacritError(f"corrupt {what} (lane streams run past the segment)")
    pays.append(rest - sum(pays))
    out = NeuralBody()
    for o, n in zip(origs, pays):
        out.lanes.append((o, r.take(n)))
    return out


@dataclass
class HybridBody:
    """Runs alternating text, binary, text, ... (the first may be empty); text runs are coded
    as one neural body over their concatenation, binary runs as one stored or zstd blob."""
    runs: list                      # run lengths, alternating text/binary, starting with text
    bin_method: int                 # L_STORED | L_ZSTD
    bin_payload: bytes
    neural: bytes                   # neural body of the concatenated text runs

    def pack(self) -> bytes:
        b = bytearray()
        put_varint(b, len(self.runs))
        for n in self.runs[:-1]:
            put_varint(b, n)
        b.append(self.bin_method)
        put_varint(b, len(self.bin_payload))
        return bytes(b) + self.bin_payload + self.neural

    @property
    def text_len(self) -> int:
        return sum(self.runs[0::2])

    @property
    def bin_len(self) -> int:
        return sum(self.runs[1::2])


def unpack_hybrid(body: bytes, orig_len: int, what: str) -> HybridBody:
    r = Reader(body, what)
    n = r.varint(MAX_RUNS)
    if n < 2:
        raise NacritError(f"corrupt {what} (hybrid segment with {n} runs)")
    runs = [r.varint(orig_len) for _ in range(n - 1)]
    if sum(runs) > orig_len or any(x == 0 for x in runs[1:]):
        raise NacritError(f"corrupt {what} (run lengths do not add up)")
    runs.append(orig_len - sum(runs))
    if runs[-1] == 0:
        raise NacritError(f"corrupt {what} (empty last run)")
    method = r.u8()
    if method not in (L_STORED, L_ZSTD):
        raise NacritError(f"corrupt {what} (binary runs with method {method})")
    blob = r.take(r.varint(len(body)))
    h = HybridBody(runs, method, blob, body[r.pos:])
    if h.text_len == 0 or (method == L_STORED and len(blob) != h.bin_len):
        raise NacritError(f"corrupt {what} (hybrid runs do not match their payloads)")
    return h


# ---------------------------------------------------------------- archive structure
@dataclass
class Segment:
    """One segment of a version-4 archive, checked structurally, payload not yet decoded."""
    method: int                     # L_STORED .. L_HYBRID
    orig_len: int
    body: bytes                     # method-specific body (FORMAT.md)
    check: int                      # content_check of the original bytes

    @property
    def payload_len(self) -> int:
        return len(self.body)


def header(layout: int, version: int = VERSION) -> bytes:
    return MAGIC + bytes([layout << 4 | version])


def header_fields(first4: bytes) -> tuple[int, int]:
    """(layout, version) of a version-4+ archive's first 4 bytes (the inverse of header)."""
    return first4[3] >> 4, first4[3] & 15


def pack_single(seg: Segment, desc: Descriptor | None) -> bytes:
    """A whole single-layout archive: header, descriptor (neural/hybrid), length, body, trailer."""
    b = bytearray(header(seg.method, desc.version if desc is not None else VERSION))
    if seg.method in (L_NEURAL, L_HYBRID):
        b += desc.pack()
    put_varint(b, seg.orig_len)
    b += seg.body
    b += struct.pack("<I", seg.check)
    return bytes(b) + struct.pack("<I", hash32(bytes(b)))


def pack_model_frame(desc: Descriptor) -> bytes:
    raw = desc.pack()
    b = bytearray([T_MODEL])
    put_varint(b, len(raw))
    b += raw
    return bytes(b) + struct.pack("<I", hash32(bytes(b)))


_ZSTD = threading.local()            # ZstdCompressor is not safe to share between threads


def zstd_magicless(level: int):
    """The version-4 zstd compressor: magicless frames without content size, checksum or
    dictionary id (the archive has its own lengths and checks). One per thread and level: a
    python-zstandard compressor used by two threads at once fails ("Src size is incorrect")."""
    cache = _ZSTD.__dict__
    if level not in cache:
        import zstandard
        cache[level] = zstandard.ZstdCompressor(
            compression_params=zstandard.ZstdCompressionParameters.from_level(
                level, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_content_size=0,
                write_checksum=0, write_dict_id=0))
    return cache[level]


def pack_index_frame(raw: bytes, compact: bool = True) -> bytes:
    """Solid archives: the file index (solid.py). compact (frame 05, solid.pack_index's compact
    packing): varint (n << 1 | z), then the n raw bytes (z = 0) or varint m + m bytes of
    magicless zstd (z = 1, written only when smaller); frame 06 (the first index packing): varint
    n, varint m, m bytes of magicless zstd."""
    z = zstd_magicless(19).compress(raw)
    b = bytearray([T_INDEX2 if compact else T_INDEX])
    if not compact:
        put_varint(b, len(raw))
        put_varint(b, len(z))
        b += z
    elif len(z) + len(_varint(len(z))) < len(raw):
        put_varint(b, len(raw) << 1 | 1)
        put_varint(b, len(z))
        b += z
    else:
        put_varint(b, len(raw) << 1)
        b += raw
    return bytes(b) + struct.pack("<I", hash32(bytes(b)))


def _varint(v: int) -> bytes:
    b = bytearray()
    put_varint(b, v)
    return bytes(b)


@dataclass
class Index:
    raw: bytes                      # the uncompressed index (solid.py parses it)
    compact: bool = True            # frame 05 (solid.pack_index compact) or 06 (the first)


def pack_segment_frame(seg: Segment, index: int) -> bytes:
    b = bytearray([seg.method + 1])
    put_varint(b, seg.orig_len)
    put_varint(b, len(seg.body))
    b += seg.body
    b += struct.pack("<I", seg.check)
    return bytes(b) + struct.pack("<I", xxhash.xxh32_intdigest(bytes(b), seed=index))


def pack_end_frame(total_len: int, total_hash: int, n_segments: int) -> bytes:
    b = bytearray([T_END])
    put_varint(b, total_len)
    b += struct.pack("<Q", total_hash)
    return bytes(b) + struct.pack("<I", xxhash.xxh32_intdigest(bytes(b), seed=n_segments))


@dataclass
class End:
    total_len: int
    total_hash: int | None          # xxh3-64 (framed layout); None: single (content check only)
    check: int | None = None        # single layout: the content check
    index: "Index | None" = None    # solid layout: the file index (set by scan)


def read_single(f, layout: int, limit: int, version: int = VERSION):
    """Rest of a single-layout archive (after its 4 header bytes): (Descriptor | None, Segment).

    Reads at most `limit` bytes beyond the header; more is refused as trailing data."""
    rest = C.read_upto(f, limit + 1)
    if len(rest) > limit:
        raise NacritError("corrupt archive (longer than its declared original allows)")
    blob = header(layout, version) + rest
    if len(blob) < 4 + 1 + TRAILER:
        raise NacritError(f"truncated archive (in version-{version} archive)")
    if hash32(blob[:-4]) != struct.unpack("<I", blob[-4:])[0]:
        raise NacritError("corrupt archive (archive checksum mismatch)")
    r = Reader(blob[4:-TRAILER], "archive header")
    desc = read_descriptor(r, version) if layout in (L_NEURAL, L_HYBRID) else None
    orig_len = r.varint(C.MAX_SEGMENT)
    check = struct.unpack("<I", blob[-TRAILER:-4])[0]
    seg = Segment(layout, orig_len, blob[4 + r.pos:-TRAILER], check)
    validate_segment(seg, desc, "archive")
    return desc, seg


def read_frame(f, index: int, n_segments: int, version: int = VERSION):
    """Next frame of a framed archive: a Descriptor, a Segment (payload read and checked) or End."""
    what = f"frame {index}"
    t, kind = C.open_frame(f)

    def fixed(n):
        return t.fixed(n, what)

    if kind == T_MODEL:
        n = C._read_varint_stream(t, what, MAX_DESCRIPTOR)
        raw = fixed(n)
        body = bytes(t.seen)
        if hash32(body) != struct.unpack("<I", fixed(4))[0]:
            raise NacritError(f"corrupt {what} (model frame checksum mismatch)")
        r = Reader(raw, f"{what} (model frame)")
        d = read_descriptor(r, version)
        r.done()
        return d
    if kind in (T_INDEX, T_INDEX2):
        n = C._read_varint_stream(t, what, 2 * MAX_INDEX + 1)
        zipped = kind == T_INDEX or n & 1
        if kind == T_INDEX2:
            n >>= 1
        if n > MAX_INDEX:
            raise NacritError(f"corrupt {what} (index too long)")
        m = C._read_varint_stream(t, what, MAX_INDEX) if zipped else n
        z = C.read_exact(f, m, f"{what} (index)")
        head = bytes(t.seen)
        if hash32(head + z) != struct.unpack("<I", fixed(4))[0]:
            raise NacritError(f"corrupt {what} (index checksum mismatch)")
        if not zipped:
            return Index(z, True)
        import zstandard
        try:
            with zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS).stream_reader(z) as r:
                raw = C.read_upto(r, n + 1)
        except zstandard.ZstdError as e:
            raise NacritError(f"corrupt {what} (index: {e})") from None
        if len(raw) != n:
            raise NacritError(f"corrupt {what} (index length mismatch)")
        return Index(raw, kind == T_INDEX2)
    if kind == T_END:
        total = C._read_varint_stream(t, what, C.MAX_TOTAL)
        total_hash = struct.unpack("<Q", fixed(8))[0]
        body = bytes(t.seen)
        if xxhash.xxh32_intdigest(body, seed=n_segments) != struct.unpack("<I", fixed(4))[0]:
            raise NacritError(f"corrupt {what} (end frame checksum mismatch)")
        return End(total, total_hash)
    if not 1 <= kind <= 4:
        raise NacritError(f"corrupt archive (unknown frame type {kind} at frame {index})")
    orig_len = C._read_varint_stream(t, what, C.MAX_SEGMENT)
    plen = C._read_varint_stream(t, what, C.MAX_SEGMENT + (1 << 20))
    head = bytes(t.seen)
    body = C.read_exact(f, plen, f"segment {n_segments} payload")
    tail = fixed(8)
    check, fcheck = struct.unpack("<II", tail)
    if xxhash.xxh32_intdigest(head + body + tail[:4], seed=n_segments) != fcheck:
        raise NacritError(f"corrupt archive (segment {n_segments} checksum mismatch)")
    return Segment(kind - 1, orig_len, body, check)


def validate_segment(seg: Segment, desc: Descriptor | None, what: str) -> None:
    """Structural checks of a segment against its descriptor (no decoding)."""
    if seg.method == L_STORED and seg.payload_len != seg.orig_len:
        raise NacritError(f"corrupt {what} (stored length mismatch)")
    if seg.method in (L_NEURAL, L_HYBRID):
        if desc is None:
            raise NacritError(f"corrupt {what} (neural segment without a model descriptor)")
        if seg.orig_len == 0:
            raise NacritError(f"corrupt {what} (empty neural segment)")
        if seg.orig_len > C.MAX_NEURAL_SEGMENT:
            raise NacritError(f"neural segment of {seg.orig_len} bytes exceeds the limit "
                              f"({C.MAX_NEURAL_SEGMENT})")
        lanes = desc.full_params()["lanes"]
        lanes_of = (lambda *a: None) if "model2" in desc.params else unpack_neural  # 1 stream
        if seg.method == L_NEURAL:
            lanes_of(seg.body, seg.orig_len, lanes, what)
        else:
            h = unpack_hybrid(seg.body, seg.orig_len, what)
            lanes_of(h.neural, h.text_len, lanes, what)


def scan(f, first4: bytes):
    """Validate a whole version-4 archive without decoding (after its first 4 bytes were read).

    Returns (layout, Descriptor | None, [Segment], End)."""
    layout, version = header_fields(first4)
    if layout in SINGLE_LAYOUTS:
        desc, seg = read_single(f, layout, SINGLE_LIMIT, version)
        return layout, desc, [seg], End(seg.orig_len, None, seg.check)
    if layout not in (L_FRAMED, L_SOLID):
        raise NacritError(f"archive uses unknown layout {layout}; upgrade nacrith")
    desc, segs, index, solid = None, [], 0, None
    while True:
        frame = read_frame(f, index, len(segs), version)
        index += 1
        if isinstance(frame, Index):
            if layout != L_SOLID or index != 1:
                raise NacritError("corrupt archive (misplaced file index)")
            solid = frame
            continue
        if layout == L_SOLID and solid is None:
            raise NacritError("corrupt archive (solid archive without a file index)")
        if isinstance(frame, End):
            break
        if isinstance(frame, Descriptor):
            if desc is not None or segs and any(s.method >= L_NEURAL for s in segs):
                raise NacritError("corrupt archive (misplaced model frame)")
            desc = frame
            continue
        validate_segment(frame, desc, f"segment {len(segs)}")
        segs.append(frame)
    if f.read(1):
        raise NacritError("corrupt archive (data after end frame)")
    if sum(s.orig_len for s in segs) != frame.total_len:
        raise NacritError("corrupt archive (segment lengths do not add up to the total)")
    frame.index = solid
    return layout, desc, segs, frame


# A single-layout archive is at most its original's length + descriptor + varints + trailer
# (the encoder writes the smallest candidate, and stored is one), so reading is bounded by the
# largest original a single segment may have plus this slack.
SINGLE_SLACK = 2048
SINGLE_LIMIT = C.MAX_NEURAL_SEGMENT + SINGLE_SLACK


def scan_bytes(blob: bytes):
    """scan() of a whole version-4 archive in memory: (layout, Descriptor | None, [Segment], End)."""
    import io
    f = io.BytesIO(blob)
    first = f.read(4)
    if len(first) < 4 or first[:3] != MAGIC or first[3] == LEGACY_BYTE:
        raise NacritError("not a version-4 nacrith archive")
    return scan(f, first)
