"""Container format v2 (reads v1): file header, segment frames, end frame (spec: formats/FORMAT.md).

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
VERSION = 3              # written when the model frame carries the confidence-skip keys (32, 33)
MIXER_VERSION = 2        # written when it carries ensemble keys (8..21) only
LLM_ONLY_VERSION = 1     # written otherwise (archives a version-1 reader can decode)
FRAME_END = 0x00
FRAME_SEGMENT = 0x01
FRAME_MODEL = 0x02

STORED, ZSTD, NEURAL = 0, 1, 2
METHOD_NAMES = {STORED: "stored", ZSTD: "zstd", NEURAL: "neural"}

MAX_SEGMENT = 1 << 32        # bytes of original per segment (the encoder uses far less)
MAX_TOTAL = 1 << 50
MAX_LANES = 256
MAX_CTX = 1 << 17            # KV window per lane, tokens
MAX_KV_TOKENS = 1 << 17      # lanes * ctx: the llama.cpp KV cache (~23 KB/token for SmolLM2-135M)
MAX_THREADS = 512            # GGML_MAX_N_THREADS; more crashed or hung llama.cpp
MAX_NEURAL_SEGMENT = 1 << 26 # bytes of original per neural segment (the encoder uses 4 MiB)
REQUIRED_PARAMS = ("ctx", "slide", "n_keep", "threads", "lanes", "bos", "cdf_bits")

# Model-descriptor parameter keys (u8 key, varint value). Unknown keys are refused.
PARAM_KEYS = {
    1: "ctx",          # KV window per lane, tokens
    2: "slide",        # tokens dropped when the window is full
    3: "n_keep",       # leading positions never dropped (BOS attention sink)
    4: "threads",      # n_threads == n_threads_batch
    5: "lanes",        # sequences in the llama.cpp context (n_seq_max)
    6: "bos",          # token fed first in every lane
    7: "cdf_bits",     # CDF precision (24)
    # version 2: ensemble mixer (nacrith/mixer/); an absent key takes its mix_preset value
    # (0 = component off when there is no mix_preset, e.g. in every version-1 archive)
    8: "ngram",        # highest token n-gram order (orders 1..ngram)
    9: "ngram_bits",   # log2 buckets per n-gram order table
    10: "ngram_limit", # bucket counts are halved when one exceeds this
    11: "ngram_esc",   # n-gram escape mass per distinct token, / 2^16
    12: "match",       # match model context length in tokens
    13: "match_bits",  # log2 entries of the match hash table
    14: "match_limit", # match hit/miss counts are halved above this total
    15: "bias_lr",     # log-space bias head learning rate, / 2^20
    16: "bias_ada",    # 1: AdaGrad step sizes for the bias head
    17: "temp_lr",     # LLM temperature learning rate, / 2^20
    18: "mix_lr",      # mixer weight learning rate, / 2^20
    19: "mix_floor",   # mixer weight floor, / 2^16
    20: "boost_lr",    # log-linear candidate boost learning rate, / 2^20
    21: "mix_preset",  # base values of keys 8..20, 22 and preset-only fields (0/absent: all 0;
                       # 1..4: mixer.PRESETS)
    22: "guard",       # first fixed-share rate / 2^16 of the ensemble-vs-bare-LLM switch
                       # (preset 4; version 5 only: refused in a version 1-3 model frame)
    # confidence skip (nacrith/neural.py lockstep); absent = off (no mix_preset sets it)
    32: "skip",        # skip a lane's LLM step when the match probability >= skip / 2^16
    33: "skip_cap",    # most tokens waiting for the LLM per lane (catch-up batch <= cap + 1)
    # version 5 only (a version 1-3 model frame never has it: refused there as unknown)
    34: "swa_full",    # llama.cpp swa_full: 0 = small cache for the sliding-window layers
                       # (Gemma-3); absent = 1, llama.cpp's default (full-size)
    # versions 6 and 7 only: the byte-level two-model coder (bytemix.py); with "model2" every neural
    # text is one byte stream coded by both models (no lanes, no ensemble)
    35: "model2",      # the second model's preset id (models.PRESETS; the first: the descriptor's)
    36: "ctx2",        # the second model's window (its slide: ctx2 / 4, n_keep 1)
    37: "beam",        # bytemix.Settings: hypotheses kept per model
    38: "lag",         # tokens a hypothesis may hold beyond the anchor
    39: "rel_ppm",     # a hypothesis under rel_ppm / 10^6 x the heaviest is dropped
    40: "alpha_ppm",   # fixed share of the two-model Bayes mixture, / 10^6
    41: "eps_bits",    # each model's smoothing: eps = 2^-eps_bits
    42: "tau_ppm",     # an ended token under tau_ppm / 10^6 of the mass is probed only if kept
    # versions 7 and 8: the two models' bits context-mixed (bytecm.py); required there with 35-42
    43: "cm_preset",   # bytecm.PRESETS key
    # version 8 only: each model's token bias head (bytemix.py); required there with 35-43
    44: "bias_ppm",    # the first model's bias head learning rate, / 10^6
    45: "bias2_ppm",   # the second model's
}
V5_KEYS = frozenset({22, 34})   # keys of version 5 descriptors only (never in v1-3 or v4)
V6_KEYS = frozenset(range(35, 43))      # keys of version 6 - 8 descriptors only
V7_KEYS = frozenset({43})               # keys of version 7 and 8 descriptors only
V8_KEYS = frozenset({44, 45})               # keys of version 8 descriptors only
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


def read_upto(f, n: int) -> bytes:
    """Read up to n bytes (fewer only at EOF), in chunks of at most 1 MiB."""
    parts, left = [], n
    while left:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


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

    def fixed(self, n: int, what: str) -> bytes:
        b = self.read(n)
        if len(b) < n:
            raise NacritError(f"truncated archive (in {what})")
        return b


def open_frame(f):
    """(_Tee over f, frame type byte): the start of every frame reader (v1-3 and v4)."""
    t = _Tee(f)
    kind = t.read(1)
    if not kind:
        raise NacritError("truncated archive (end frame missing)")
    return t, kind[0]


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
    t, kind = open_frame(f)

    def fixed(n):
        return t.fixed(n, what)

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
        params, unknown = {}, []
        for _ in range(fixed(1)[0]):
            key = fixed(1)[0]           # every value is a varint: unknown keys can be skipped
            value = _read_varint_stream(t, what, 1 << 32)
            if key in PARAM_KEYS and key not in V5_KEYS | V6_KEYS | V7_KEYS | V8_KEYS:
                params[PARAM_KEYS[key]] = value
            else:
                unknown.append(key)
        frame = ModelDescriptor(sha, name, n_vocab, backend, params)
    else:
        raise NacritError(f"corrupt archive (unknown frame type {kind} at frame {index})")
    body = bytes(t.seen)
    check = struct.unpack("<I", fixed(4))[0]
    if hash32(body) != check:
        raise NacritError(f"corrupt {what} (checksum mismatch)")
    if isinstance(frame, Segment):
        _validate_segment(frame, what)
    if isinstance(frame, ModelDescriptor):
        if unknown:                     # checksum verified: really a newer format
            raise NacritError(f"archive uses unknown model parameter {unknown[0]}; upgrade nacrith")
        check_model_params(frame, what)
    return frame


def check_model_params(m: "ModelDescriptor", what: str = "model frame") -> None:
    """Refuse model-frame values that would make llama.cpp allocate or spawn without bound.

    Checked before any model is loaded; the encoder (api._options) keeps to the same limits."""
    p = m.params
    missing = [k for k in REQUIRED_PARAMS if k not in p]
    if missing:
        raise NacritError(f"corrupt {what} (missing parameter {', '.join(missing)})")
    ctx, lanes, slide, n_keep = p["ctx"], p["lanes"], p["slide"], p["n_keep"]
    if not 256 <= ctx <= MAX_CTX or ctx % 256:
        raise NacritError(f"corrupt {what} (ctx {ctx} is not a multiple of 256 up to {MAX_CTX})")
    if not 1 <= lanes <= MAX_LANES or lanes * ctx > MAX_KV_TOKENS:
        raise NacritError(f"{what} asks for {lanes} lanes x {ctx} tokens of KV cache "
                          f"(limit {MAX_KV_TOKENS} tokens)")
    if not 1 <= n_keep < ctx or not 1 <= slide <= ctx - n_keep:
        raise NacritError(f"corrupt {what} (window ctx={ctx} slide={slide} n_keep={n_keep})")
    if p.get("swa_full", 1) not in (0, 1):
        raise NacritError(f"corrupt {what} (swa_full {p['swa_full']})")
    if "threads" in p and not 1 <= p["threads"] <= MAX_THREADS:
        raise NacritError(f"corrupt {what} (threads {p['threads']}, limit {MAX_THREADS})")
    if not 2 <= m.n_vocab <= (1 << 23):     # 24-bit CDFs give every token a frequency >= 1
        raise NacritError(f"corrupt {what} (n_vocab {m.n_vocab})")


def check_neural_segment(s: "Segment", m: "ModelDescriptor", index: int) -> None:
    """Lane table against the model frame, and token counts against what their streams can hold:
    every frequency is >= 1 of 2^cdf_bits, so a token costs at least -log2(1 - (V-1)/2^24) bits."""
    import math
    if len(s.lanes) > m.params["lanes"]:
        raise NacritError(f"corrupt archive (segment {index} has {len(s.lanes)} lanes, the model "
                          f"frame {m.params['lanes']})")
    if s.orig_len > MAX_NEURAL_SEGMENT:
        raise NacritError(f"neural segment {index} of {s.orig_len} bytes exceeds the limit "
                          f"({MAX_NEURAL_SEGMENT})")
    min_bits = -math.log2(1.0 - (m.n_vocab - 1) / (1 << 24))
    for ln in s.lanes:
        if ln.n_tokens > (8 * ln.stream_bytes + 64) / min_bits + 1:
            raise NacritError(f"corrupt archive (segment {index}: {ln.n_tokens} tokens cannot "
                              f"fit in {ln.stream_bytes} coded bytes)")


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
        if frame.method == NEURAL:
            if model is None:
                raise NacritError("corrupt archive (neural segment before any model frame)")
            check_neural_segment(frame, model, index - 1)
        segs.append(frame)
    if f.read(1):
        raise NacritError("corrupt archive (data after end frame)")
    if sum(s.orig_len for s in segs) != frame.total_len:
        raise NacritError("corrupt archive (segment lengths do not add up to the total)")
    return hdr, model, segs, frame


def scan_bytes(blob: bytes):
    return scan(io.BytesIO(blob))
