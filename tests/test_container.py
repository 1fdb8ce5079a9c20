"""Container format: exact fields, size bound, and clear errors for every kind of damage."""
import io
import os
import struct

import pytest
import xxhash

import nacrith
from nacrith import container as C
from nacrith.api import HEADER_BOUND

DATA = b"The quick brown fox jumps over the lazy dog.\n" * 40


def fallback(data):
    return nacrith.compress(data, neural=False)


def test_empty_archive_exact_bytes():
    blob = fallback(b"")
    head = b"NACR\x01\x00"
    end = b"\x00\x00" + struct.pack("<Q", xxhash.xxh3_64_intdigest(b""))
    end += struct.pack("<I", xxhash.xxh32_intdigest(end))
    assert blob == head + struct.pack("<I", xxhash.xxh32_intdigest(head)) + end
    assert len(blob) == 24
    assert nacrith.decompress(blob) == b""


def test_zstd_segment_fields():
    blob = fallback(DATA)
    hdr, model, segs, end = C.scan_bytes(blob)
    assert (hdr.version, hdr.flags, model) == (1, 0, None)
    assert [s.method for s in segs] == [C.ZSTD]
    assert segs[0].orig_len == len(DATA) and segs[0].orig_hash == xxhash.xxh3_64_intdigest(DATA)
    assert (end.total_len, end.total_hash) == (len(DATA), xxhash.xxh3_64_intdigest(DATA))
    assert nacrith.decompress(blob) == DATA


@pytest.mark.parametrize("n", [1, 2, 100, 4096, 65536])
def test_incompressible_is_stored_within_bound(n):
    data = os.urandom(n)
    blob = fallback(data)
    assert C.scan_bytes(blob)[2][0].method == C.STORED
    assert len(blob) <= n + HEADER_BOUND
    assert nacrith.decompress(blob) == data


def test_multi_segment_and_all_byte_values():
    data = bytes(range(256)) * 50 + os.urandom(3000)
    blob = nacrith.compress(data, neural=False, segment_size=4000)
    segs = C.scan_bytes(blob)[2]
    assert [s.orig_len for s in segs] == [4000] * 3 + [len(data) - 12000]
    assert nacrith.decompress(blob) == data


def test_info_never_loads_a_model():
    d = nacrith.info(io.BytesIO(fallback(DATA)))
    assert d["original_size"] == len(DATA)
    assert d["segments"][0]["method"] == "zstd"
    assert "model" not in d


def _fix_header(blob: bytearray) -> bytearray:
    blob[6:10] = struct.pack("<I", xxhash.xxh32_intdigest(bytes(blob[:6])))
    return blob


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:3], "not a nacrith archive (bad magic)"),
    (lambda b: b"XACR" + b[4:], "not a nacrith archive (bad magic)"),
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
def test_damage_is_a_clear_error(mutate, message):
    blob = fallback(DATA)
    with pytest.raises(nacrith.NacritError) as e:
        nacrith.decompress(bytes(mutate(blob)))
    assert str(e.value) == message


def test_every_truncation_fails_cleanly():
    blob = fallback(DATA)
    for n in range(len(blob)):
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
