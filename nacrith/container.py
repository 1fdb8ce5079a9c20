"""Container format v1: file header, segment frames, end frame (spec: formats/FORMAT.md).

Invariants:
- every multi-byte integer is little-endian; lengths are LEB128 varints of at most 10 bytes;
- every header and frame header carries its own xxh32, checked before any field is trusted, so a
  damaged header is reported before a model is ever loaded;
- every length read from a file is bounded before it is used (no allocation driven by a corrupt
  field): payloads are read in bounded chunks and a short read is reported as truncation;
- each segment records the xxh3-64 of its original bytes and the xxh32 of its payload; the end
  frame records the total length and the xxh3-64 of the whole original.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

import xxhash

from .errors import NacritError

MAGIC = b"NACR"
VERSION = 1
FRAME_END = 0x00
FRAME_SEGMENT = 0x01
FRAME_MODEL = 0x02

STORED, ZSTD, NEURAL = 0, 1, 2
METHOD_NAMES = {STORED: "stored", ZSTD: "zstd", NEURAL: "neural"}

MAX_SEGMENT = 1 << 32        # bytes of original per segment (the encoder uses far less)
MAX_TOTAL = 1 << 50
MAX_LANES = 256

# Model-descriptor parameter keys (u8 key, varint value). Unknown keys are refused.
PARAM_KEYS = {
    1: "ctx",          # KV window per lane, tokens
    2: "slide",        # tokens dropped when the window is full
    3: "n_keep",       # leading positions never dropped (BOS attention sink)
    4: "threads",      # n_threads == n_threads_batch
    5: "lanes",        # sequences in the llama.cpp context (n_seq_max)
    6: "bos",          # token fed first in every lane
    7: "cdf_bits",     # CDF precision (24)
}
PARAM_IDS = {name: key for key, name in PARAM_KEYS.items()}


def hash64(data) -> int:
    return xxhash.xxh3_64_intdigest(data)


def hash32(data) -> int:
    return xxhash.xxh32_intdigest(data)


# ---------------------------------------------------------------- varints
def put_varint(out: bytearray, v: int) -> None:
    if v < 0:
        raise ValueError("varint must be >= 0")
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


class Reader:
    """Bounded cursor over a bytes object; every read failure is a NacritError."""

    def __init__(self, buf: bytes, what: str):
        self.buf = buf
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise NacritError(f"corrupt {self.what} (field runs past its end)")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def varint(self, limit: int = 1 << 63) -> int:
        v = shift = 0
        for _ in range(10):
            b = self.u8()
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                if v > limit:
                    raise NacritError(f"corrupt {self.what} (value {v} out of range)")
                return v
            shift += 7
        raise NacritError(f"corrupt {self.what} (varint too long)")

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise NacritError(f"corrupt {self.what} (trailing bytes)")


def read_exact(f, n: int, what: str) -> bytes:
    """Read exactly n bytes in bounded chunks; a short read is truncation."""
    parts, left = [], n
    while left:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            raise NacritError(f"truncated archive (in {what})")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


# ---------------------------------------------------------------- file header
@dataclass
class FileHeader:
    version: int = VERSION
    flags: int = 0

    def pack(self) -> bytes:
        head = MAGIC + struct.pack("<BB", self.version, self.flags)
        return head + struct.pack("<I", hash32(head))


def read_file_header(f) -> FileHeader:
    head = f.read(10)
    if len(head) < 4 or head[:4] != MAGIC:
        raise NacritError("not a nacrith archive (bad magic)")
    if len(head) < 6:
        raise NacritError("truncated archive (in file header)")
    version, flags = head[4], head[5]
    intact = len(head) == 10 and hash32(head[:6]) == struct.unpack("<I", head[6:])[0]
    if version > VERSION:   # a newer format may lay out its header differently
        raise NacritError(f"archive format version {version} is newer than this nacrith supports "
                          f"(<= {VERSION}); upgrade nacrith" + ("" if intact else
                                                               ", or the file is damaged"))
    if len(head) < 10:
        raise NacritError("truncated archive (in file header)")
    if not intact:
        raise NacritError("corrupt file header (checksum mismatch)")
    if version == 0:
        raise NacritError("corrupt file header (version 0)")
    if flags:
        raise NacritError(f"archive uses unknown flags 0x{flags:02x}; upgrade nacrith")
    return FileHeader(version, flags)


@dataclass
class ModelDescriptor:
    """Model frame: everything the decoder needs to rebuild the LLM and its schedule."""
    sha256: bytes
    name: str
    n_vocab: int
    backend: str
    params: dict

    def pack(self) -> bytes:
        b = bytearray([FRAME_MODEL])
        b += self.sha256
        for s in (self.name, self.backend):
            raw = s.encode("utf-8")[:255]
            b.append(len(raw))
            b += raw
        b += struct.pack("<I", self.n_vocab)
        b.append(len(self.params))
        for name, value in self.params.items():
            b.append(PARAM_IDS[name])
            put_varint(b, int(value))
        return bytes(b) + struct.pack("<I", hash32(bytes(b)))


# ---------------------------------------------------------------- frames
@dataclass
class Lane:
    orig_bytes: int
    n_tokens: int
    ins_bytes: int
    stream_bytes: int


@dataclass
class Segment:
    method: int
    orig_len: int
    payload_len: int
    orig_hash: int
    payload_hash: int
    lanes: list[Lane] = field(default_factory=list)

    def pack(self) -> bytes:
        b = bytearray([FRAME_SEGMENT, self.method])
        put_varint(b, self.orig_len)
        put_varint(b, self.payload_len)
        b += struct.pack("<QI", self.orig_hash, self.payload_hash)
        if self.method == NEURAL:
            put_varint(b, len(self.lanes))
            for ln in self.lanes:
                for v in (ln.orig_bytes, ln.n_tokens, ln.ins_bytes, ln.stream_bytes):
                    put_varint(b, v)
        b += struct.pack("<I", hash32(bytes(b)))
        return bytes(b)


@dataclass
class End:
    total_len: int
    total_hash: int

    def pack(self) -> bytes:
        b = bytearray([FRAME_END])
        put_varint(b, self.total_len)
        b += struct.pack("<Q", self.total_hash)
        b += struct.pack("<I", hash32(bytes(b)))
        return bytes(b)


class _Tee:
    """Wraps a stream, remembering the bytes of one frame header as they are read."""

    def __init__(self, f):
        self.f = f
        self.seen = bytearray()

    def read(self, n):
        b = self.f.read(n)
        self.seen += b
        return b


def _read_varint_stream(t: _Tee, what: str, limit: int) -> int:
    v = shift = 0
    for _ in range(10):
        b = t.read(1)
        if not b:
            raise NacritError(f"truncated archive (in {what})")
        v |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            if v > limit:
                raise NacritError(f"corrupt {what} (value out of range)")
            return v
        shift += 7
    raise NacritError(f"corrupt {what} (varint too long)")


def read_frame(f, index: int):
    """Read the next frame header (not its payload): a Segment, a ModelDescriptor or an End."""
    what = f"frame {index} header"
    t = _Tee(f)
    kind = t.read(1)
    if not kind:
        raise NacritError("truncated archive (end frame missing)")
    kind = kind[0]

    def fixed(n):
        b = t.read(n)
        if len(b) < n:
            raise NacritError(f"truncated archive (in {what})")
        return b

    if kind == FRAME_END:
        total = _read_varint_stream(t, what, MAX_TOTAL)
        total_hash = struct.unpack("<Q", fixed(8))[0]
        frame = End(total, total_hash)
    elif kind == FRAME_SEGMENT:
        method = fixed(1)[0]
        orig_len = _read_varint_stream(t, what, MAX_SEGMENT)
        payload_len = _read_varint_stream(t, what, MAX_SEGMENT + (1 << 20))
        orig_hash, payload_hash = struct.unpack("<QI", fixed(12))
        frame = Segment(method, orig_len, payload_len, orig_hash, payload_hash)
        if method == NEURAL:
            n = _read_varint_stream(t, what, MAX_LANES)
            for _ in range(n):
                frame.lanes.append(Lane(*(_read_varint_stream(t, what, MAX_SEGMENT) for _ in range(4))))
    elif kind == FRAME_MODEL:
        sha = fixed(32)
        name = fixed(fixed(1)[0]).decode("utf-8", "replace")
        backend = fixed(fixed(1)[0]).decode("utf-8", "replace")
        n_vocab = struct.unpack("<I", fixed(4))[0]
        params = {}
        for _ in range(fixed(1)[0]):
            key = fixed(1)[0]
            if key not in PARAM_KEYS:
                raise NacritError(f"archive uses unknown model parameter {key}; upgrade nacrith")
            params[PARAM_KEYS[key]] = _read_varint_stream(t, what, 1 << 32)
        frame = ModelDescriptor(sha, name, n_vocab, backend, params)
    else:
        raise NacritError(f"corrupt archive (unknown frame type {kind} at frame {index})")
    body = bytes(t.seen)
    check = struct.unpack("<I", fixed(4))[0]
    if hash32(body) != check:
        raise NacritError(f"corrupt {what} (checksum mismatch)")
    if isinstance(frame, Segment):
        _validate_segment(frame, what)
    return frame


def _validate_segment(s: Segment, what: str) -> None:
    if s.method == STORED and s.payload_len != s.orig_len:
        raise NacritError(f"corrupt {what} (stored length mismatch)")
    if s.method == NEURAL:
        if not s.lanes:
            raise NacritError(f"corrupt {what} (neural segment without lanes)")
        if sum(ln.orig_bytes for ln in s.lanes) != s.orig_len:
            raise NacritError(f"corrupt {what} (lane lengths do not add up)")
        if sum(ln.ins_bytes + ln.stream_bytes for ln in s.lanes) != s.payload_len:
            raise NacritError(f"corrupt {what} (lane streams do not add up)")
        if any(ln.n_tokens > ln.orig_bytes for ln in s.lanes):
            raise NacritError(f"corrupt {what} (more tokens than bytes)")
    elif s.method not in METHOD_NAMES:
        raise NacritError(f"corrupt {what} (unknown method {s.method})")


def read_payload(f, seg: Segment, index: int) -> bytes:
    payload = read_exact(f, seg.payload_len, f"segment {index} payload")
    if hash32(payload) != seg.payload_hash:
        raise NacritError(f"corrupt archive (segment {index} payload checksum mismatch)")
    return payload


def scan(f):
    """Validate the whole structure without decoding: headers, frame checksums, payload checksums.

    Returns (FileHeader, ModelDescriptor | None, [Segment], End). Used by `info`, and before a
    model is loaded when the input is seekable."""
    hdr = read_file_header(f)
    model, segs, index = None, [], 0
    while True:
        frame = read_frame(f, index)
        index += 1
        if isinstance(frame, End):
            break
        if isinstance(frame, ModelDescriptor):
            if model is not None:
                raise NacritError("corrupt archive (second model frame)")
            model = frame
            continue
        read_payload(f, frame, index - 1)
        if frame.method == NEURAL and model is None:
            raise NacritError("corrupt archive (neural segment before any model frame)")
        segs.append(frame)
    if f.read(1):
        raise NacritError("corrupt archive (data after end frame)")
    if sum(s.orig_len for s in segs) != frame.total_len:
        raise NacritError("corrupt archive (segment lengths do not add up to the total)")
    return hdr, model, segs, frame


def scan_bytes(blob: bytes):
    return scan(io.BytesIO(blob))
