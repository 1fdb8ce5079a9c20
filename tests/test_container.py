"""Container format v4 (and the v1-3 reader): exact fields, size bound, clear errors for damage."""
import io
import os
import struct

from pathlib import Path

import pytest
import xxhash
import zstandard

import nacrith
from nacrith import api
from nacrith import container as C
from nacrith import frames as F
from nacrith.api import HEADER_BOUND

DATA = b"The quick brown fox jumps over the lazy dog.\n" * 40


GOLDEN = Path(__file__).resolve().parents[1] / "formats" / "golden"


def fallback(data):
    return nacrith.compress(data, neural=False)


def trailer(head_and_body: bytes, original: bytes) -> bytes:
    b = head_and_body + struct.pack("<I", F.content_check(original))
    return b + struct.pack("<I", xxhash.xxh32_intdigest(b))


def test_empty_archive_exact_bytes():
    blob = fallback(b"")
    assert blob == trailer(b"NAC\x05" + b"\x00", b"")
    assert len(blob) == 13
    assert nacrith.decompress(blob) == b""


@pytest.mark.parametrize("n", [1, 2, 100, 4096, 65536])
def test_incompressible_is_stored_with_exact_overhead(n):
    data = os.urandom(n)
    blob = fallback(data)
    length = bytearray()
    C.put_varint(length, n)
    assert blob == trailer(b"NAC\x05" + bytes(length) + data, data)
    assert len(blob) <= n + HEADER_BOUND
    assert nacrith.decompress(blob) == data


def test_zstd_single_layout_fields():
    blob = fallback(DATA)
    assert blob[:4] == b"NAC\x15" and blob[4:6] == bytes([len(DATA) & 0x7F | 0x80, len(DATA) >> 7])
    body = blob[6:-8]                 # magicless zstd frame: no magic, size or checksum
    z = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS)
    assert z.decompressobj().decompress(body) == DATA
    assert body[:4] != b"\x28\xb5\x2f\xfd"
    assert blob == trailer(blob[:-8], DATA)
    s = api.scan(io.BytesIO(blob))
    assert (s.version, s.layout, s.model, s.total_len) == (5, "zstd", None, len(DATA))
    assert s.matches(len(DATA), xxhash.xxh3_64_intdigest(DATA))
    assert nacrith.decompress(blob) == DATA


def test_framed_layout_and_all_byte_values():
    data = bytes(range(256)) * 50 + os.urandom(3000)
    blob = nacrith.compress(data, neural=False, segment_size=4000)
    assert blob[:4] == b"NAC\x85"
    s = api.scan(io.BytesIO(blob))
    assert [x["original"] for x in s.segments] == [4000] * 3 + [len(data) - 12000]
    assert s.total_hash == xxhash.xxh3_64_intdigest(data)
    # the first segment frame: type, varint lengths, body, content check, xxh32 seeded 0
    assert blob[4] == F.L_ZSTD + 1
    r = C.Reader(blob[5:], "x")
    assert r.varint() == 4000
    plen = r.varint()
    head = blob[4:5 + r.pos]
    body = blob[5 + r.pos:5 + r.pos + plen]
    tail = blob[5 + r.pos + plen:5 + r.pos + plen + 8]
    assert struct.unpack("<I", tail[:4])[0] == F.content_check(data[:4000])
    assert struct.unpack("<I", tail[4:])[0] == xxhash.xxh32_intdigest(head + body + tail[:4], seed=0)
    assert nacrith.decompress(blob) == data


def test_info_never_loads_a_model():
    d = nacrith.info(io.BytesIO(fallback(DATA)))
    assert d["original_size"] == len(DATA) and d["version"] == 5 and d["layout"] == "zstd"
    assert d["segments"][0]["method"] == "zstd"
    assert "model" not in d


def _recheck(b: bytes) -> bytes:
    """Recompute a single-layout archive's archive check (damage behind a valid checksum)."""
    return b[:-4] + struct.pack("<I", xxhash.xxh32_intdigest(b[:-4]))


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:2], "not a nacrith archive (bad magic)"),
    (lambda b: b"XAC" + b[3:], "not a nacrith archive (bad magic)"),
    (lambda b: b[:3] + b"\x1a" + b[4:],
     "archive format version 10 is newer than this nacrith supports (<= 9); upgrade nacrith"),
    (lambda b: b[:3] + b"\x13" + b[4:], "corrupt file header (bad version byte)"),
    (lambda b: _recheck(b[:3] + b"\x45" + b[4:]), "archive uses unknown layout 4; upgrade nacrith"),
    (lambda b: b[:-1], "corrupt archive (archive checksum mismatch)"),
    (lambda b: b[:6], "truncated archive (in version-5 archive)"),
    (lambda b: b + b"x", "corrupt archive (archive checksum mismatch)"),
    (lambda b: b[:20] + bytes([b[20] ^ 0x10]) + b[21:], "corrupt archive (archive checksum mismatch)"),
    (lambda b: _recheck(b[:-8] + bytes([b[-8] ^ 1]) + b[-7:]),
     "segment 0 (at byte offset 0) does not match its checksum"),
    (lambda b: _recheck(b[:4] + b"\xe4\x00" + b[6:]),
     "corrupt zstd data in segment 0 (longer than its original)"),
    (lambda b: _recheck(b[:3] + b"\x05" + b[4:]), "corrupt archive (stored length mismatch)"),
])
def test_damage_is_a_clear_error(mutate, message):
    blob = fallback(DATA)
    with pytest.raises(nacrith.NacritError) as e:
        nacrith.decompress(bytes(mutate(blob)))
    assert str(e.value) == message


def _frames(blob: bytes):
    """Split a framed archive into its frames (test helper)."""
    out, pos = [], 4
    while True:
        kind = blob[pos]
        r = C.Reader(blob[pos + 1:], "x")
        if kind == 0:
            r.varint()
            out.append(blob[pos:pos + 1 + r.pos + 12])
            return out
        r.varint()
        n = r.varint()
        end = pos + 1 + r.pos + n + 8
        out.append(blob[pos:end])
        pos = end


@pytest.mark.parametrize("edit, message", [
    (lambda f: [f[1], f[0]] + f[2:], "corrupt archive (segment 0 checksum mismatch)"),
    (lambda f: [f[0]] + f[2:], "corrupt archive (segment 1 checksum mismatch)"),
    (lambda f: [f[0], f[0]] + f[1:], "corrupt archive (segment 1 checksum mismatch)"),
    (lambda f: f[:-2] + f[-1:], "corrupt frame 3 (end frame checksum mismatch)"),
    (lambda f: f[:-1], "truncated archive (end frame missing)"),
    (lambda f: f + [b"\x00"], "corrupt archive (data after end frame)"),
])
def test_framed_damage_is_a_clear_error(edit, message):
    data = bytes(range(256)) * 50 + os.urandom(3000)
    frames = _frames(nacrith.compress(data, neural=False, segment_size=4000))
    assert len(frames) == 5
    with pytest.raises(nacrith.NacritError) as e:
        nacrith.decompress(b"NAC\x85" + b"".join(edit(frames)))
    assert str(e.value) == message


@pytest.mark.parametrize("framed", [False, True])
def test_every_truncation_fails_cleanly(framed):
    blob = nacrith.compress(DATA, neural=False, segment_size=700 if framed else 1 << 22)
    assert blob[3] == (0x85 if framed else 0x15)
    for n in range(len(blob)):
        with pytest.raises(nacrith.NacritError):
            nacrith.decompress(blob[:n])


# ---- version 1-3 archives ("NACR") keep their reader and its messages
def _fix_header(blob: bytearray) -> bytearray:
    blob[6:10] = struct.pack("<I", xxhash.xxh32_intdigest(bytes(blob[:6])))
    return blob


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:8], "truncated archive (in file header)"),
    (lambda b: _fix_header(bytearray(b[:4]) + b"\x09" + b[5:]),
     "archive format version 9 is newer than this nacrith supports (<= 3); upgrade nacrith"),
    (lambda b: b[:5] + b"\x01" + b[6:], "corrupt file header (checksum mismatch)"),
    (lambda b: b[:-1], "truncated archive (in frame 1 header)"),
    (lambda b: b[:12], "truncated archive (in frame 0 header)"),
    (lambda b: b[:40], "truncated archive (in segment 0 payload)"),
    (lambda b: b + b"x", "corrupt archive (data after end frame)"),
    (lambda b: b[:10] + bytes([b[10] ^ 0x01]) + b[11:], "corrupt frame 0 header (checksum mismatch)"),
    (lambda b: b[:40] + bytes([b[40] ^ 0x10]) + b[41:],
     "corrupt archive (segment 0 payload checksum mismatch)"),
])
def test_legacy_damage_is_a_clear_error(mutate, message):
    blob = (GOLDEN / "v1-zstd.nc").read_bytes()
    with pytest.raises(nacrith.NacritError) as e:
        nacrith.decompress(bytes(mutate(blob)))
    assert str(e.value) == message


def test_legacy_truncations_fail_cleanly():
    blob = (GOLDEN / "v1-multisegment.nc").read_bytes()
    for n in range(0, len(blob), 7):
        with pytest.raises(nacrith.NacritError):
            nacrith.decompress(blob[:n])


def test_varint_roundtrip_and_bounds():
    for v in [0, 1, 127, 128, 300, 2**32, 2**63 - 1]:
        out = bytearray()
        C.put_varint(out, v)
        assert C.Reader(bytes(out), "x").varint() == v
    with pytest.raises(nacrith.NacritError, match="varint too long"):
        C.Reader(b"\xff" * 11, "x").varint()
    with pytest.raises(nacrith.NacritError, match="out of range"):
        C.Reader(b"\x80\x01", "x").varint(limit=100)


def test_zstd_frames_from_four_threads_at_once():
    """A python-zstandard compressor shared by threads crashes the process or fails ("Src size is
    incorrect"): frames.zstd_magicless keeps one per thread, so 4 threads give the same bytes."""
    import threading
    data = [os.urandom(64) + b"abc" * 3000 * i for i in range(1, 7)]
    ref = [F.zstd_magicless(3).compress(d) for d in data]
    bad = []

    def work():
        for _ in range(100):
            bad.extend(i for i, d in enumerate(data) if F.zstd_magicless(3).compress(d) != ref[i])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == [] and F.zstd_magicless(3) is F.zstd_magicless(3)
