"""Library API: compress/decompress bytes and streams; segment method choice; model cache.

Invariants:
- an archive never exceeds len(input) + HEADER_BOUND bytes: every segment is coded with the
  smallest of neural / zstd / stored, and stored is always a candidate;
- input is processed in segments of at most `segment_size` bytes, so memory is bounded by the
  segment size whatever the input length;
- the decoder checks every checksum (header, frame, payload, segment content, whole content) and
  raises NacritError on the first mismatch; no decoded byte of a segment is written before that
  segment's content hash has verified;
- a model is loaded only when a neural segment is coded or decoded, once per process and settings.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import xxhash
import zstandard

from . import container as C
from . import engine as engines
from . import models
from .errors import BadOption, ModelMismatch, NacritError
from .fileio import write_all

DEFAULT_SKIP_CAP = 32      # with the confidence skip on: catch-up batches of <= 33 tokens per lane
HEADER_BOUND = 64          # archive size <= input size + HEADER_BOUND for inputs <= 4 MiB (tested)


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class Options:
    model: str | os.PathLike | None = None     # preset name or GGUF path
    ctx: int = 2048                             # KV window per lane (tokens)
    slide: int | None = None                    # tokens dropped when the window is full (ctx//4)
    n_keep: int = 1                             # leading positions kept (BOS attention sink)
    threads: int | None = None                  # llama.cpp threads; None = default_threads()
    lanes: int = 1                              # sequences decoded in lockstep
    n_gpu_layers: int = 0
    main_gpu: int = 0
    neural: bool = True                         # False: zstd/stored only, no model
    segment_size: int = 4 << 20
    zstd_level: int = 19
    ignore_backend: bool = False                # decode even if the backend profile differs
    # ensemble mixer (nacrith/mixer.py); None = the tuned default (mixer.DEFAULTS).  mixer=False
    # codes with the LLM alone (a version-1 archive); a component is off when its switch is 0.
    mixer: bool = True
    ngram: int | None = None                    # highest n-gram order (0 = off)
    ngram_bits: int | None = None
    ngram_limit: int | None = None
    ngram_esc: int | None = None                # / 2^16
    match: int | None = None                    # match context length in tokens (0 = off)
    match_bits: int | None = None
    match_limit: int | None = None
    bias_lr: int | None = None                  # / 2^20 (0 = bias head off)
    bias_ada: int | None = None
    temp_lr: int | None = None                  # / 2^20 (0 = temperature off)
    mix_lr: int | None = None                   # / 2^20
    mix_floor: int | None = None                # / 2^16
    boost_lr: int | None = None                 # / 2^20 (0 = boost off)
    skip: int | None = None                     # confidence skip threshold / 2^16 (0 = off)
    skip_cap: int | None = None                 # most tokens waiting for the LLM per lane

    def mix_params(self):
        """The ensemble hyperparameters these options select (all zero: LLM only)."""
        from .mixer import DEFAULTS, MixParams
        if not self.neural or not self.mixer:
            return MixParams()
        return replace(DEFAULTS, **{k: int(getattr(self, k)) for k in MixParams.KEYS
                                    if getattr(self, k) is not None})


class Engine:
    """A loaded model with its exact tokenizer and the header parameters that describe it."""

    def __init__(self, path: Path, opts: Options, group: int = 1):
        from .backend import Backend, fingerprint
        from .tokenizer import ExactTokenizer
        self.path = path
        self.sha256 = models.sha256(path)
        self.backend = Backend(str(path), ctx=opts.ctx, lanes=opts.lanes, threads=opts.threads,
                               slide=opts.slide, n_keep=opts.n_keep,
                               n_gpu_layers=opts.n_gpu_layers, main_gpu=opts.main_gpu,
                               group=group)
        self.tokenizer = ExactTokenizer(self.backend)
        self._tcol = None
        self.fingerprint = fingerprint()
        self.params = {"ctx": opts.ctx, "slide": opts.slide, "n_keep": opts.n_keep,
                       "threads": opts.threads, "lanes": opts.lanes, "bos": self.backend.bos,
                       "cdf_bits": 24}

    @property
    def column_table(self):
        """mixer.column_table of this model's token pieces (computed once)."""
        if self._tcol is None:
            from .mixer import column_table
            self._tcol = column_table(self.tokenizer.pieces)
        return self._tcol

    def descriptor(self, mix=None) -> C.ModelDescriptor:
        params = dict(self.params)
        if mix is not None:
            params.update(mix.params())         # ensemble keys only when a component is on
        return C.ModelDescriptor(self.sha256, self.path.name, self.backend.n_vocab,
                                 self.fingerprint, params)


def get_engine(path: Path, opts: Options, mix=None) -> Engine:
    """The loaded model for these settings, leased to the calling thread (nacrith.engine): no
    other thread uses it until this thread's engine scope ends, so threads never share a
    llama.cpp context. `mix` (MixParams) sizes the batch for catch-ups."""
    group = mix.skip_cap + 1 if mix is not None and mix.skip else 1
    key = (str(path), opts.ctx, opts.slide, opts.n_keep, opts.threads, opts.lanes,
           opts.n_gpu_layers, opts.main_gpu, group)
    return engines.POOL.get(key, lambda: Engine(path, opts, group))


def normalized(opts: Options | None = None, **kw) -> Options:
    """Options with every default filled in and every bound checked (NacritError)."""
    return _options(opts, kw)


def _options(opts: Options | None, kw) -> Options:
    o = _replace(opts, kw)
    for name in ("ctx", "slide", "n_keep", "threads", "lanes", "segment_size", "zstd_level",
                 "n_gpu_layers", "main_gpu"):
        v = getattr(o, name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise BadOption(f"{name} must be an integer (got {v!r})")
    if o.threads is None:
        o.threads = default_threads()
    if o.slide is None:
        o.slide = max(1, o.ctx // 4)
    if o.skip and o.skip_cap is None:
        o.skip_cap = DEFAULT_SKIP_CAP
    if o.ctx % 256:
        raise BadOption("ctx must be a multiple of 256")
    for name in ("ctx", "slide", "n_keep", "threads", "lanes", "segment_size"):
        if int(getattr(o, name)) < 1:
            raise BadOption(f"{name} must be >= 1")
    if o.lanes > C.MAX_LANES:
        raise BadOption(f"lanes must be <= {C.MAX_LANES}")
    if o.ctx > C.MAX_CTX or o.lanes * o.ctx > C.MAX_KV_TOKENS:
        raise BadOption(f"lanes x ctx must be <= {C.MAX_KV_TOKENS} tokens (ctx <= {C.MAX_CTX})")
    if o.threads > C.MAX_THREADS:
        raise BadOption(f"threads must be <= {C.MAX_THREADS}")
    if o.neural and o.segment_size > C.MAX_NEURAL_SEGMENT:
        raise BadOption(f"segment_size must be <= {C.MAX_NEURAL_SEGMENT} for neural coding")
    try:
        if o.neural and o.mixer:        # else no ensemble (and no numba import to check it)
            o.mix_params().validate()
    except (NacritError, TypeError) as e:
        raise BadOption(str(e)) from None
    return o


def _replace(opts: Options | None, kw) -> Options:
    """opts (or the defaults) with the keywords kw applied; an unknown name is a BadOption."""
    if opts is not None and not isinstance(opts, Options):
        raise BadOption(f"expected nacrith.Options, got {type(opts).__name__}")
    unknown = sorted(set(kw) - _OPTION_NAMES)
    if unknown:
        raise BadOption(f"unknown option {unknown[0]!r}")
    return replace(opts or Options(), **kw)


_OPTION_NAMES = frozenset(f.name for f in fields(Options))


def decode_options(opts: Options | None = None, **kw) -> Options:
    """Options for decoding: names checked; threads left unset means "as recorded"."""
    o = _replace(opts, kw)
    if o.threads is not None and (not isinstance(o.threads, int) or
                                  not 1 <= o.threads <= C.MAX_THREADS):
        raise BadOption(f"threads must be 1..{C.MAX_THREADS}")
    return o


def looks_binary(data: bytes) -> bool:
    """NUL bytes or many control bytes: not worth tokenizing."""
    if b"\x00" in data:
        return True
    ctrl = sum(data.count(bytes([c])) for c in range(32) if c not in (9, 10, 12, 13, 27))
    return ctrl * 20 > len(data)


# ---------------------------------------------------------------- compression
def _fallback_segment(data: bytes, level: int):
    z = zstandard.ZstdCompressor(level=level).compress(data)
    if len(z) < len(data):
        return C.Segment(C.ZSTD, len(data), len(z), C.hash64(data), C.hash32(z)), z
    return C.Segment(C.STORED, len(data), len(data), C.hash64(data), C.hash32(data)), data


@dataclass
class Coded:
    """What coding one segment can produce (code_segment); ArchiveWriter.add picks the smallest.

    Both candidates travel, because whether neural wins depends on whether the archive already
    has its model frame, which only the writer knows (a frame's worth of bytes decides)."""
    fallback: tuple                             # (Segment, payload): zstd or stored
    neural: tuple | None = None                 # (Segment, payload), None: not text enough
    model_frame: bytes = b""                    # packed model frame, with neural


def code_segment(block: bytes, o: Options, progress=None) -> Coded:
    """Pure per-segment work: depends only on `block` and the (normalised) options, so any
    process holding the same model and settings produces the same result (workers, Ray)."""
    c = Coded(_fallback_segment(block, o.zstd_level))
    if o.neural and not looks_binary(block):
        mix = o.mix_params()
        with engines.scope():           # the engine is this thread's until the segment is coded
            engine = get_engine(models.resolve(o.model), o, mix)
            from .neural import encode_segment
            c.model_frame = engine.descriptor(mix).pack()
            c.neural = encode_segment(engine, block, o.lanes, max(16, len(block) // 20),
                                      progress, mix=mix)
    return c


class ArchiveWriter:
    """Assembles one archive from segments coded anywhere, in input order: file header, the
    model frame before the first neural segment, segment frames, end frame. The single place
    where the file-level framing is written."""

    def __init__(self, dst, o: Options):
        self.dst = dst
        mix = o.mix_params()
        version = C.VERSION if mix.skip else C.MIXER_VERSION if mix.active else C.LLM_ONLY_VERSION
        self.written = _write(dst, C.FileHeader(version).pack())
        self.h = xxhash.xxh3_64()
        self.total = 0
        self.methods: list[str] = []
        self.model_frame = b""

    def add(self, block: bytes, c: Coded) -> None:
        seg, payload = c.fallback
        if c.neural is not None:
            extra = 0 if self.model_frame else len(c.model_frame)
            n, _ = c.neural
            if len(n.pack()) + n.payload_len + extra < len(seg.pack()) + seg.payload_len:
                seg, payload = c.neural
        if seg.method == C.NEURAL and not self.model_frame:
            self.model_frame = c.model_frame
            self.written += _write(self.dst, self.model_frame)
        self.written += _write(self.dst, seg.pack()) + _write(self.dst, payload)
        self.methods.append(C.METHOD_NAMES[seg.method])
        self.h.update(block)
        self.total += len(block)

    def finish(self) -> dict:
        self.written += _write(self.dst, C.End(self.total, self.h.intdigest()).pack())
        return {"in": self.total, "out": self.written, "methods": self.methods}


def compress_stream(src, dst, opts: Options | None = None, progress=None, pool=None,
                    **kw) -> dict:
    """Read src to EOF, write one archive to dst. Returns stats (sizes, methods).

    pool: None codes segments here; else an object whose `imap("encode", blocks)` yields
    (block, Coded) in input order (nacrith.workers), producing the same bytes."""
    o = _options(opts, kw)
    w = ArchiveWriter(dst, o)
    blocks = iter(lambda: _read_block(src, o.segment_size), b"")
    coded = ((b, code_segment(b, o, progress)) for b in blocks) if pool is None \
        else pool.imap("encode", blocks)
    for block, c in coded:
        w.add(block, c)
    return w.finish()


def _read_block(src, n: int) -> bytes:
    parts, left = [], n
    while left:
        b = src.read(left)
        if not b:
            break
        parts.append(b)
        left -= len(b)
    return b"".join(parts)


def _write(dst, b: bytes) -> int:
    """Write all of b (fileio.write_all: short writes, None and 0 returns handled)."""
    return write_all(dst, b)


# ---------------------------------------------------------------- decompression
def _decode_engine(m: C.ModelDescriptor, o: Options):
    """(engine, mixer.MixParams) for an archive's model frame."""
    p = m.params
    C.check_model_params(m)             # read_frame did already; also for hand-made descriptors
    path = models.find_by_sha(m.sha256, m.name, o.model)
    if p.get("cdf_bits") != 24:
        raise NacritError(f"unsupported CDF precision {p.get('cdf_bits')}")
    from .mixer import MixParams
    mix = MixParams.from_params(p)      # absent keys (version 1): component off
    mix.validate()
    dopts = replace(o, ctx=p["ctx"], slide=p["slide"], n_keep=p["n_keep"], lanes=p["lanes"],
                    threads=o.threads or min(p.get("threads", 1), default_threads()))
    engine = get_engine(path, dopts, mix)
    if engine.backend.n_vocab != m.n_vocab or engine.backend.bos != p["bos"]:
        raise ModelMismatch("model vocabulary does not match the archive")
    if engine.fingerprint != m.backend and not o.ignore_backend:
        from .backend import describe_difference
        raise ModelMismatch(f"archive was made on another llama.cpp build "
                          f"({describe_difference(m.backend, engine.fingerprint)}), so logits may "
                          "differ; decode on a matching build (native/README.md) or pass "
                          "--ignore-backend (checksums still verify the result)")
    return engine, mix


def _segment_tasks(src, state: dict):
    """Read an archive's frames; yield one decode task (frame, payload, model, index, offset) per
    segment, after its structural checks. state gets "end" (End) and "segments" at the end."""
    C.read_file_header(src)
    total = index = 0
    model = None
    while True:
        frame = C.read_frame(src, index)
        if isinstance(frame, C.End):
            state["end"], state["segments"] = frame, index
            return
        if isinstance(frame, C.ModelDescriptor):
            if model is not None:
                raise NacritError("corrupt archive (second model frame)")
            model = frame
            index += 1
            continue
        payload = C.read_payload(src, frame, index)
        if frame.method == C.NEURAL:
            if model is None:
                raise NacritError("corrupt archive (neural segment before any model frame)")
            C.check_neural_segment(frame, model, index)
        yield frame, payload, model, index, total
        total += frame.orig_len
        index += 1


def decode_segment(frame: C.Segment, payload: bytes, model, index: int, offset: int,
                   o: Options, progress=None, cache: dict | None = None) -> bytes:
    """Pure per-segment work of the decoder: one segment's original bytes, checked against its
    content hash (NacritError otherwise). Runs here or in a worker (nacrith.workers). `cache`
    (the caller's dict) keeps the decoding engine between segments."""
    cache = {} if cache is None else cache
    if frame.method == C.STORED:
        data = payload
    elif frame.method == C.ZSTD:
        data = _unzstd(payload, frame.orig_len, index)
    else:
        key = (model.pack(), o.model, o.threads, o.ignore_backend, o.n_gpu_layers, o.main_gpu)
        if key not in cache:
            cache.clear()
            cache[key] = _decode_engine(model, o)
        engine, mix = cache[key]
        from .neural import decode_segment as neural_decode
        try:
            data = neural_decode(engine, frame, payload, progress, mix=mix)
        except NacritError as e:
            raise NacritError(f"segment {index} (at byte offset {offset}) does not decode: "
                              f"{str(e).split(' (')[0]}{_mismatch_hint(engine, model)}") from None
    if len(data) != frame.orig_len or C.hash64(data) != frame.orig_hash:
        raise NacritError(f"segment {index} (at byte offset {offset}) does not match its "
                          "checksum" + (_mismatch_hint(engine, model)
                                        if frame.method == C.NEURAL else ""))
    return data


def decompress_stream(src, dst, opts: Options | None = None, progress=None, pool=None,
                      **kw) -> dict:
    """Decode one archive from src to dst, verifying every checksum.

    pool: None decodes here; else an object whose `imap("decode", tasks)` yields (task, bytes)
    in order (nacrith.workers): segments are then decoded in parallel, written in order."""
    o = replace(opts or Options(), **kw)
    if _seekable(src):
        start = src.tell()
        C.scan(src)             # structure and payload checksums, before any model is loaded
        src.seek(start)
    h = xxhash.xxh3_64()
    total = 0
    state: dict = {}
    cache: dict = {}
    tasks = _segment_tasks(src, state)
    decoded = ((t, decode_segment(*t, o, progress, cache)) for t in tasks) if pool is None \
        else pool.imap("decode", tasks)
    for _, data in decoded:
        _write(dst, data)
        h.update(data)
        total += len(data)
    end = state["end"]
    if total != end.total_len or h.intdigest() != end.total_hash:
        raise NacritError("decoded data does not match the archive checksum")
    if not _seekable(src) and src.read(1):
        raise NacritError("corrupt archive (data after end frame)")
    return {"in": total, "segments": state["segments"]}


def _mismatch_hint(engine: Engine, m: C.ModelDescriptor) -> str:
    """What may differ when a neural segment does not reproduce, and what to try."""
    made, used = m.params.get("threads"), engine.params.get("threads")
    if made is not None and used != made:
        return (f" (decoded with threads={used}, the archive was made with threads={made}: "
                f"retry with --threads {made}; else a model or backend mismatch)")
    return " (model or backend mismatch?)"


def _unzstd(payload: bytes, orig_len: int, index: int) -> bytes:
    """One zstd frame -> at most orig_len bytes, produced in <= 1 MiB steps: nothing is allocated
    from the frame's own (unverified) content size or from orig_len before data exists."""
    parts, n = [], 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(payload) as r:
            while chunk := r.read(min(1 << 20, orig_len - n + 1)):
                n += len(chunk)
                if n > orig_len:
                    raise NacritError(f"corrupt zstd data in segment {index} (longer than "
                                      "its original)")
                parts.append(chunk)
    except zstandard.ZstdError as e:
        raise NacritError(f"corrupt zstd data in segment {index} ({e})") from None
    return b"".join(parts)


def _seekable(f) -> bool:
    try:
        return f.seekable()
    except (AttributeError, ValueError):
        return False


def info(src) -> dict:
    """Describe an archive from its headers (validates structure; never loads a model)."""
    hdr, m, segs, end = C.scan(src)
    d = {"version": hdr.version, "original_size": end.total_len,
         "segments": [{"method": C.METHOD_NAMES[s.method], "original": s.orig_len,
                       "compressed": s.payload_len, "lanes": len(s.lanes)} for s in segs]}
    if m is not None:
        d["model"] = {"name": m.name, "sha256": m.sha256.hex(), "n_vocab": m.n_vocab,
                      "backend": m.backend, **m.params}
    return d
