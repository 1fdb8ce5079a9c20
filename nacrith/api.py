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
from . import frames as F
from . import levels, models
from .errors import BadOption, ModelMismatch, NacritError
from .fileio import write_all

DEFAULT_SKIP_CAP = 32      # with the confidence skip on: catch-up batches of <= 33 tokens per lane
HEADER_BOUND = 64          # archive size <= input size + HEADER_BOUND for inputs <= 4 MiB (tested)


def default_threads(backend: str = "llama") -> int:
    """Threads when none are asked for, by measurement (docs/benchmarks.md): llama.cpp
    min(4, cpus); the portable engine min(2, cpus) (a team of threads per feed, portable/team.py:
    on an idle 2-core box 1.4-1.6x one thread's speed; beside a busy process 1.15-1.2x slower
    than one thread; more than 2 not measured).  The portable engine's output never depends on
    its thread count."""
    if backend == "device":
        return 1
    return max(1, min(2 if backend == "portable" else 4, os.cpu_count() or 1))


@dataclass
class Options:
    model: str | os.PathLike | None = None     # preset name or GGUF path
    ctx: int = 2048                             # KV window per lane (tokens)
    slide: int | None = None                    # tokens dropped when the window is full (ctx//4)
    n_keep: int = 1                             # leading positions kept (BOS attention sink)
    threads: int | None = None                  # CPU threads; None = default_threads(backend)
    lanes: int = 1                              # sequences decoded in lockstep
    n_gpu_layers: int = 0
    main_gpu: int = 0
    neural: bool = True                         # False: zstd/stored only, no model
    segment_size: int = 4 << 20
    zstd_level: int = 19
    ignore_backend: bool = False                # decode even if the backend profile differs
    backend: str = "auto"                       # "llama" (llama.cpp) | "portable" (ENGINE.md) |
                                                # "device": the portable engine on a CUDA GPU
                                                # (the same logits: the same archives) |
                                                # "auto": portable for presets on CPU, else llama
    swa_full: bool | None = None                # llama.cpp's full-size cache for the sliding-
                                                # window layers (Gemma-3); None = on (llama.cpp's
                                                # default). Off: faster long windows, other
                                                # logits (recorded). No effect without SWA
    # ensemble mixer (nacrith/mixer/); None = the tuned default (mixer.DEFAULTS).  mixer=False
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
    guard: int | None = None                    # ensemble-vs-bare-LLM switch rate / 2^16 (0 = off)
    mix_preset: int | None = None               # the base preset (mixer.PRESETS) of the fields
                                                # above; None = mixer.DEFAULTS (4); 5: exact,
                                                # order-free vocabulary sums (version 9)
    # the byte-level two-model coder (bytemix.py, a version-8 archive): a second model preset
    # whose byte probabilities are mixed with the first's (both on the portable engine, no
    # ensemble, one lane), with its own window ctx2
    model2: str | None = None
    ctx2: int = 8192
    # compression level 1..9 (nacrith.levels): sets the fields above that are left at their
    # defaults (a keyword, or a field of an Options that differs from the default, wins)
    level: int | None = None

    def mix_params(self):
        """The ensemble hyperparameters these options select (all zero: LLM only)."""
        from .mixer import DEFAULTS, PRESETS, MixParams
        if not self.neural or not self.mixer:
            return MixParams()
        base = DEFAULTS if self.mix_preset is None else PRESETS[self.mix_preset]
        return replace(base, **{k: int(getattr(self, k)) for k in MixParams.KEYS
                                if getattr(self, k) is not None})

    def format_version(self) -> int:
        """The container version these options write (frames.py)."""
        if self.model2 is not None:
            return F.BYTEMIX_VERSION
        # (no preset given: the default, version 5, without importing the mixer's numba)
        return F.VERSION if self.mix_preset is None else _mix_version(self.mix_params())


def _mix_version(mix) -> int:
    """The container version of an archive coded with the ensemble settings mix (MixParams):
    9 for preset 5's exact sums with the ensemble on, else 5 (frames.py)."""
    return F.ISUM_VERSION if mix.isum and mix.active else F.VERSION


class Engine:
    """A loaded model with its exact tokenizer and the header parameters that describe it."""

    def __init__(self, path: Path, opts: Options, group: int = 1):
        from .tokenizer import ExactTokenizer
        self.path = path
        self.sha256 = models.sha256(path)
        if opts.backend in ("portable", "device"):
            from .portable import ENGINE_VERSION, PortableBackend, fingerprint
            cls, self.engine, self.engine_check = PortableBackend, F.E_PORTABLE, ENGINE_VERSION
            if opts.backend == "device":
                from .portable.device import DeviceBackend as cls
        else:
            from .backend import Backend as cls, fingerprint
            self.engine = F.E_LLAMA
        self.backend = cls(str(path), ctx=opts.ctx, lanes=opts.lanes, threads=opts.threads,
                           slide=opts.slide, n_keep=opts.n_keep, n_gpu_layers=opts.n_gpu_layers,
                           main_gpu=opts.main_gpu, group=group,
                           swa_full=opts.swa_full is not False)     # (portable: ignored)
        self.tokenizer = ExactTokenizer(self.backend)
        self._tcol = None
        self.fingerprint = fingerprint()
        if self.engine == F.E_LLAMA:
            self.engine_check = F.fingerprint_hash(self.fingerprint)
        self.params = {"ctx": opts.ctx, "slide": opts.slide, "n_keep": opts.n_keep,
                       "threads": opts.threads, "lanes": opts.lanes, "bos": self.backend.bos,
                       "cdf_bits": 24}
        swa = getattr(self.backend, "swa_full", None)    # None: the model has no SWA layers
        if swa is not None:
            self.params["swa_full"] = int(swa)

    @property
    def column_table(self):
        """mixer.column_table of this model's token pieces (computed once)."""
        if self._tcol is None:
            from .mixer import column_table
            self._tcol = column_table(self.tokenizer.pieces)
        return self._tcol

    def descriptor(self, mix) -> F.Descriptor:
        """The version-4 model descriptor: registered model id (or the custom GGUF's SHA-256),
        engine and the parameters that differ from its version's frames.DEFAULTS_OF (version 9
        for the ensemble's preset 5, else 5)."""
        version = _mix_version(mix)
        implied = {**F.DEFAULTS_OF[version], "slide": self.params["ctx"] // 4}  # slide: ctx / 4
        params = {k: self.params[k] for k in ("ctx", "slide", "n_keep", "lanes")
                  if self.params[k] != implied[k]}
        if self.params.get("swa_full", 1) != 1:     # absent: full-size SWA cache (key 34)
            params["swa_full"] = self.params["swa_full"]
        mp = mix.params() or {"mix_preset": 0}  # LLM only: preset 0, every component off
        params.update({k: v for k, v in mp.items()
                       if k != "mix_preset" or v != implied["mix_preset"]})
        mid = models.registry_id(self.sha256)
        return F.Descriptor(mid, self.engine, self.engine_check, params,
                            *(() if mid else (self.sha256, self.backend.n_vocab, self.path.name)),
                            version=version)


def get_engine(path: Path, opts: Options, mix=None) -> Engine:
    """The loaded model for these settings, leased to the calling thread (nacrith.engine): no
    other thread uses it until this thread's engine scope ends, so threads never share a
    llama.cpp context. `mix` (MixParams) sizes the batch for catch-ups."""
    group = mix.skip_cap + 1 if mix is not None and mix.skip else 1
    key = (str(path), opts.backend, opts.ctx, opts.slide, opts.n_keep, opts.threads, opts.lanes,
           opts.n_gpu_layers, opts.main_gpu, group,
           opts.backend in ("portable", "device") or opts.swa_full is not False)
    from . import hub       # not at import: numpy's BLAS threads start inside _signals.blocked()
    if opts.backend in ("portable", "device") and 0 < opts.lanes <= hub.lanes():
        # a worker coding several segments at once: a View of one shared backend per thread
        h = hub.hub_for(key[:6] + key[7:], lambda n: Engine(path, replace(opts, lanes=n), group))
        return engines.POOL.get(key, lambda: h.engine_for(opts.lanes))
    return engines.POOL.get(key, lambda: Engine(path, opts, group))


def normalized(opts: Options | None = None, **kw) -> Options:
    """Options with every default filled in and every bound checked (NacritError)."""
    return _options(opts, kw)


def at_level(level: int | None, **kw) -> Options:
    """Options of compression level `level` (None: the defaults) with the keywords kw on top."""
    o = _replace(None, kw)
    for k, v in _level_settings(level, kw).items():
        if k not in kw:
            setattr(o, k, v)
    o.level = None
    return o


def _level_settings(level, given: dict) -> dict:
    if level is None:
        return {}
    try:
        return levels.settings(level, given)
    except ValueError as e:
        raise BadOption(str(e)) from None


def _options(opts: Options | None, kw) -> Options:
    o = _replace(opts, kw)
    if o.level is not None:
        base = Options()
        given = {**({} if opts is None else {f: getattr(opts, f) for f in _OPTION_NAMES
                                            if getattr(opts, f) != getattr(base, f)}), **kw}
        for k, v in _level_settings(o.level, given).items():
            if k not in given:
                setattr(o, k, v)
    for name in ("ctx", "slide", "n_keep", "threads", "lanes", "segment_size", "zstd_level",
                 "n_gpu_layers", "main_gpu"):
        v = getattr(o, name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise BadOption(f"{name} must be an integer (got {v!r})")
    if o.swa_full is not None and not isinstance(o.swa_full, bool):
        raise BadOption(f"swa_full must be True, False or None (got {o.swa_full!r})")
    if o.slide is None:
        o.slide = max(1, o.ctx // 4)
    if o.skip and o.skip_cap is None:
        o.skip_cap = DEFAULT_SKIP_CAP
    if o.ctx % 256:
        raise BadOption("ctx must be a multiple of 256")
    if o.backend == "auto":
        o.backend = auto_backend(o.model, o.n_gpu_layers)
    if o.backend not in ("llama", "portable", "device"):
        raise BadOption(f"backend must be 'auto', 'llama', 'portable' or 'device' "
                        f"(got {o.backend!r})")
    if o.threads is None:
        o.threads = default_threads(o.backend)
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
    if o.model2 is not None:
        _check_two_models(o)
    if o.mix_preset is not None:
        from .mixer import PRESETS
        if isinstance(o.mix_preset, bool) or o.mix_preset not in PRESETS or o.model2 is not None:
            raise BadOption(f"mix_preset must be one of {', '.join(map(str, PRESETS))} (the "
                            f"ensemble; not with model2; got {o.mix_preset!r})")
    try:
        if o.neural and o.mixer and o.model2 is None:   # else no ensemble (nor numba import)
            o.mix_params().validate()
    except (NacritError, TypeError) as e:
        raise BadOption(str(e)) from None
    return o


def _check_two_models(o: Options) -> None:
    first = o.model or models.DEFAULT
    if o.model2 not in models.PRESETS or first not in models.PRESETS or first == o.model2:
        raise BadOption(f"model2 must be a model preset other than the first "
                        f"({', '.join(models.PRESETS)}; got {o.model2!r} with {first!r})")
    if o.backend != "portable" or o.lanes != 1:
        raise BadOption("model2 codes on the portable engine (--backend portable) with 1 lane")
    if not isinstance(o.ctx2, int) or isinstance(o.ctx2, bool) or o.ctx2 % 256 or \
            not 256 <= o.ctx2 <= C.MAX_CTX:
        raise BadOption(f"ctx2 must be a multiple of 256 in 256..{C.MAX_CTX}")


def _bytemix_tracks(paths, ctx: int, slide: int, n_keep: int, ctx2: int, threads: int, st):
    """The two models' bytemix.Tracks, leased to the calling thread (nacrith.engine): the first
    with window (ctx, slide, n_keep), the second with (ctx2, ctx2 / 4, 1)."""
    from .bytemix import Track
    from .portable import PortableBackend
    windows = ((ctx, slide, n_keep), (ctx2, ctx2 // 4, 1))

    def load():
        return [Track(PortableBackend(str(p), ctx=c, slide=s, n_keep=k, lanes=1, threads=threads),
                      st, lr) for p, (c, s, k), lr in zip(paths, windows, (st.bias_lr, st.bias_lr2))]
    return engines.POOL.get(("bytemix", *map(str, paths), *windows, threads, st), load)


def _bytemix_descriptor(o: Options, st) -> F.Descriptor:
    """The version-8 descriptor of o's two-model coder (settings st)."""
    from .portable import ENGINE_VERSION
    implied = {**F.DEFAULTS_OF[F.BYTEMIX_VERSION], "slide": o.ctx // 4}
    params = {k: getattr(o, k) for k in ("ctx", "slide", "n_keep") if getattr(o, k) != implied[k]}
    params.update(model2=models.PRESETS[o.model2].id, ctx2=o.ctx2, **st.params())
    return F.Descriptor(models.PRESETS[o.model or models.DEFAULT].id, F.E_PORTABLE,
                        ENGINE_VERSION, params, version=F.BYTEMIX_VERSION)


def auto_backend(model: str | None, n_gpu_layers: int = 0) -> str:
    """The default engine: the portable integer engine for the two shipped models (SmolLM2,
    Gemma-3) on the CPU — its archives decode on any machine, and it measured as good a ratio
    (within 0.1-0.3%) and a faster compress than llama.cpp here (docs/benchmarks.md, "Portable
    engine", "Gemma-3 on the portable engine") — llama.cpp for custom GGUFs (the portable
    engine implements only the llama and gemma3 architectures) and for GPU offload."""
    return "portable" if model in (None, *models.PRESETS) and not n_gpu_layers else "llama"


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
def _fallback_body(data: bytes, level: int) -> tuple[int, bytes]:
    """(method, body): zstd when it is smaller, else stored."""
    if data:
        z = F.zstd_magicless(level).compress(data)
        if len(z) < len(data):
            return F.L_ZSTD, z
    return F.L_STORED, data


@dataclass
class Coded:
    """The candidates for one segment (code_segment); ArchiveWriter.add keeps the smallest.

    Every candidate travels, because a neural one also needs the model descriptor, which an
    archive carries once: only the writer knows whether it already has one."""
    fallback: F.Segment                          # zstd or stored
    neural: F.Segment | None = None              # neural or hybrid; None: not text enough
    descriptor: F.Descriptor | None = None       # with neural


def _neural_body(engine, data: bytes, o: Options, mix, progress) -> bytes | None:
    from .neural import encode_segment
    lanes = encode_segment(engine, data, o.lanes, max(16, len(data) // 20), progress, mix=mix)
    return None if lanes is None else F.pack_neural(lanes)


def code_segment(block: bytes, o: Options, progress=None) -> Coded:
    """Pure per-segment work: depends only on `block` and the (normalised) options, so any
    process holding the same model and settings produces the same result (workers, Ray).

    Candidates: zstd or stored; neural for text; hybrid (hybrid.split_runs: text runs neural,
    binary runs zstd or stored) for text with binary stretches, e.g. a tar stream."""
    check = F.content_check(block)
    method, body = _fallback_body(block, o.zstd_level)
    c = Coded(F.Segment(method, len(block), body, check))
    if not o.neural or not block:
        return c
    from .hybrid import split_runs
    runs = None
    if looks_binary(block):
        runs = split_runs(block)
        if runs is None:
            return c
    mix = o.mix_params()
    with engines.scope():               # the engine is this thread's until the segment is coded
        if o.model2 is None:
            engine = get_engine(models.resolve(o.model), o, mix)
            c.descriptor = engine.descriptor(mix)

            def body_of(text):
                return _neural_body(engine, text, o, mix, progress)
        else:
            from . import bytemix
            st = bytemix.Settings()         # what this nacrith writes
            tracks = _bytemix_tracks((models.resolve(o.model), models.resolve(o.model2)),
                                     o.ctx, o.slide, o.n_keep, o.ctx2, o.threads, st)
            c.descriptor = _bytemix_descriptor(o, st)

            def body_of(text):
                return bytemix.encode(tracks, text, progress)
        if runs is None:
            body = body_of(block)
            if body is not None:
                c.neural = F.Segment(F.L_NEURAL, len(block), body, check)
            return c
        text, binary, pos = [], [], 0
        for i, n in enumerate(runs):
            (binary if i % 2 else text).append(block[pos:pos + n])
            pos += n
        neural = body_of(b"".join(text))
    if neural is not None:
        bm, bb = _fallback_body(b"".join(binary), o.zstd_level)
        body = F.HybridBody(runs, bm, bb, neural).pack()
        c.neural = F.Segment(F.L_HYBRID, len(block), body, check)
    return c


class ArchiveWriter:
    """Assembles one version-4 archive from segments coded anywhere, in input order. The single
    place where the file-level framing is written.

    The first segment is held back: if no second one follows, the archive is written in a single
    layout (no frame lengths, one trailer); otherwise in the framed layout, with the model frame
    before the first neural segment."""

    def __init__(self, dst, o: Options, index: bytes | None = None):
        """index: a solid archive's raw file index (solid.py): the solid layout, framed, with
        the index frame first."""
        self.dst = dst
        self.h = xxhash.xxh3_64()
        self.total = 0
        self.written = 0
        self.methods: list[str] = []
        self.pending: Coded | None = None
        self.framed = index is not None
        self.descriptor = None
        self.n = 0
        self.version = o.format_version()
        if index is not None:
            self.written += _write(dst, F.header(F.L_SOLID, self.version)
                                   + F.pack_index_frame(index))

    def _choose(self, c: Coded) -> F.Segment:
        seg = c.fallback
        if c.neural is not None:
            extra = 0 if self.descriptor else len(c.descriptor.pack()) + 6
            if c.neural.payload_len + extra < seg.payload_len:
                seg = c.neural
        return seg

    def add(self, block: bytes, c: Coded) -> None:
        self.h.update(block)
        self.total += len(block)
        if self.pending is None and not self.framed:
            self.pending = c
            return
        if not self.framed:
            self.framed = True
            self.written += _write(self.dst, F.header(F.L_FRAMED, self.version))
            first, self.pending = self.pending, None
            self._frame(first)
        self._frame(c)

    def _frame(self, c: Coded) -> None:
        seg = self._choose(c)
        if seg.method >= F.L_NEURAL and self.descriptor is None:
            self.descriptor = c.descriptor
            self.written += _write(self.dst, F.pack_model_frame(c.descriptor))
        self.written += _write(self.dst, F.pack_segment_frame(seg, self.n))
        self.n += 1
        self.methods.append(F.METHOD_NAMES[seg.method])

    def finish(self) -> dict:
        if self.framed:
            self.written += _write(self.dst, F.pack_end_frame(self.total, self.h.intdigest(),
                                                              self.n))
        else:
            c = self.pending or Coded(F.Segment(F.L_STORED, 0, b"", F.content_check(b"")))
            seg = self._choose(c)
            self.written += _write(self.dst, F.pack_single(seg, c.descriptor))
            if seg.orig_len:
                self.methods.append(F.METHOD_NAMES[seg.method])
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
    """(engine, mixer.MixParams) for a version 1-3 archive's model frame."""
    p = m.params
    C.check_model_params(m)             # read_frame did already; also for hand-made descriptors
    path = models.find_by_sha(m.sha256, m.name, o.model)
    if p.get("cdf_bits") != 24:
        raise NacritError(f"unsupported CDF precision {p.get('cdf_bits')}")
    from .mixer import MixParams
    mix = MixParams.from_params(p)      # absent keys (version 1): component off
    mix.validate()
    dopts = replace(o, ctx=p["ctx"], slide=p["slide"], n_keep=p["n_keep"], lanes=p["lanes"],
                    threads=o.threads or min(p.get("threads", 1), default_threads()),
                    backend="llama",    # versions 1-3: llama.cpp only
                    swa_full=None)      # versions 1-3 predate key 34: llama.cpp's default
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


def model_of(d: F.Descriptor) -> tuple[str, bytes, int]:
    """(name, SHA-256, n_vocab) of the model a version-4 descriptor names."""
    if d.model_id:
        return models.registered(d.model_id)
    return d.name, d.sha256, d.n_vocab


def check_descriptor(d: F.Descriptor) -> tuple[dict, object]:
    """(full parameters, MixParams) of a version-4 descriptor, every bound checked before any
    model is loaded (the same limits as a version 1-3 model frame)."""
    from .mixer import MixParams
    p = d.full_params()
    name, _, n_vocab = model_of(d)
    C.check_model_params(C.ModelDescriptor(b"", name, n_vocab, "", {**p, "threads": 1,
                                                                      "bos": 0, "cdf_bits": 24}))
    if (F.NEW_IN_6 | F.NEW_IN_7 | F.NEW_IN_8) & set(p):
        return p, _check_bytemix(d, p)
    mix = MixParams.from_params(p)
    mix.validate()
    if (d.version == F.ISUM_VERSION) != (_mix_version(mix) == F.ISUM_VERSION):
        raise NacritError(f"corrupt model frame (mixer preset {p['mix_preset']} in a version-"
                          f"{d.version} archive: preset 5 is version 9's, and only its)")
    return p, mix


def _check_bytemix(d: F.Descriptor, p: dict):
    """The bytemix.Settings of a version-6..8 two-model descriptor, every field checked."""
    from .bytemix import Settings
    if F.NEW_IN_6 - set(p) or (d.version >= 7) != ("cm_preset" in p) \
            or any((d.version >= 8) != (k in p) for k in ("bias_ppm", "bias2_ppm")):
        raise NacritError("corrupt model frame (two-model coder without all its settings)")
    if d.version >= 7 and p["cm_preset"] != F.CM_PRESET_OF[d.version]:
        raise NacritError("corrupt archive (byte coder settings out of range)")
    if d.engine != F.E_PORTABLE or p["lanes"] != 1 or not d.model_id \
            or p["model2"] == d.model_id:
        raise NacritError("corrupt model frame (two-model coder: engine, lanes or models)")
    models.registered(p["model2"])
    c2 = p["ctx2"]
    if not 256 <= c2 <= C.MAX_CTX or c2 % 256:
        raise NacritError(f"corrupt model frame (ctx2 {c2})")
    return Settings.from_params(p)


def _decode_engine4(d: F.Descriptor, o: Options):
    """(engine, mixer.MixParams) for a version-4 model descriptor; (the two bytemix.Tracks,
    None) for a two-model one."""
    p, mix = check_descriptor(d)
    name, sha, n_vocab = model_of(d)
    if d.engine == F.E_PORTABLE:
        from .portable import ENGINE_VERSION
        if d.engine_check != ENGINE_VERSION:
            raise ModelMismatch(f"archive needs portable engine version {d.engine_check}; this "
                                f"nacrith implements version {ENGINE_VERSION}"
                                + ("; upgrade nacrith" if d.engine_check > ENGINE_VERSION else ""))
    path = models.find_by_sha(sha, name, o.model)
    if "model2" in p:
        name2, sha2, _ = models.registered(p["model2"])
        paths = (path, models.find_by_sha(sha2, name2, None))
        tracks = _bytemix_tracks(paths, p["ctx"], p["slide"], p["n_keep"], p["ctx2"],
                                 o.threads or default_threads("portable"), mix)
        if tracks[0].b.n_vocab != n_vocab:
            raise ModelMismatch("model vocabulary does not match the archive")
        return tracks, None
    backend = ("llama" if d.engine != F.E_PORTABLE else
               "device" if o.backend == "device" else "portable")
    dopts = replace(o, ctx=p["ctx"], slide=p["slide"], n_keep=p["n_keep"], lanes=p["lanes"],
                    threads=o.threads or default_threads(backend), backend=backend,
                    swa_full=bool(p.get("swa_full", 1)))
    engine = get_engine(path, dopts, mix)
    if engine.backend.n_vocab != n_vocab or engine.backend.bos != p.get("bos", engine.backend.bos):
        raise ModelMismatch("model vocabulary does not match the archive")
    if d.engine == F.E_LLAMA:
        here = F.fingerprint_hash(engine.fingerprint)
        if here != d.engine_check and not o.ignore_backend:
            raise ModelMismatch(f"archive was made on another llama.cpp build (fingerprint hash "
                                f"{d.engine_check:04x}; this build, '{engine.fingerprint}', "
                                f"hashes to {here:04x}), so logits may differ; decode on the "
                                "build that made it (native/README.md), pass --ignore-backend "
                                "(checksums still verify the result), or make archives with "
                                "--backend portable, which decode on any machine")
    return engine, mix


def _peek_header(src) -> tuple[str, bytes]:
    """("v4", first 4 bytes) or ("legacy", first bytes) of an archive."""
    first = C.read_upto(src, 4)
    if len(first) == 4 and first[:3] == F.MAGIC and first[3] != F.LEGACY_BYTE:
        version = F.header_fields(first)[1]
        if version > max(F.READ_VERSIONS):
            raise NacritError(f"archive format version {version} is newer than this nacrith "
                              f"supports (<= {max(F.READ_VERSIONS)}); upgrade nacrith")
        if version not in F.READ_VERSIONS:
            raise NacritError("corrupt file header (bad version byte)")
        return "v4", first
    return "legacy", first


class _Prefixed:
    """A stream that first returns `head`, then reads on from `f`."""

    def __init__(self, head: bytes, f):
        self.head, self.f = head, f

    def read(self, n=-1):
        if self.head:
            if n is None or n < 0:
                out, self.head = self.head + self.f.read(), b""
                return out
            out, self.head = self.head[:n], self.head[n:]
            return out if len(out) == n else out + self.f.read(n - len(out))
        return self.f.read(n)


def _segment_tasks(src, state: dict):
    """Read an archive's frames; yield one decode task (frame, payload, model, index, offset) per
    segment, after its structural checks. state gets "end" and "segments" at the end."""
    kind, first = _peek_header(src)
    if kind == "v4":
        yield from _tasks4(src, first, state)
        return
    src = _Prefixed(first, src)
    C.read_file_header(src)
    total = index = 0
    model = None
    while True:
        frame = C.read_frame(src, index)
        if isinstance(frame, C.End):
            state["end"], state["segments"] = frame, index
            state["legacy_src"] = src
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


def _tasks4(src, first: bytes, state: dict, solid: bool = False):
    """Decode tasks of a version-4 archive. A solid archive (a file tree) is refused unless
    `solid` (solid.py extracts it); its index is then in state["index"]."""
    layout, version = F.header_fields(first)
    if layout in F.SINGLE_LAYOUTS:
        desc, seg = F.read_single(src, layout, F.SINGLE_LIMIT, version)
        if desc is not None:
            check_descriptor(desc)
        state["end"], state["segments"] = F.End(seg.orig_len, None, seg.check), 1
        yield seg, None, desc, 0, 0         # even when empty: its content check is verified
        return
    if layout == F.L_SOLID and not solid:
        raise NacritError("this is a solid archive of a file tree: restore it with `nacrith "
                          "decompress ARCHIVE -o DIR` (or nacrith.solid.extract)")
    if layout not in (F.L_FRAMED, F.L_SOLID):
        raise NacritError(f"archive uses unknown layout {layout}; upgrade nacrith")
    desc, n_frames, n_segs, total = None, 0, 0, 0
    while True:
        frame = F.read_frame(src, n_frames, n_segs, version)
        n_frames += 1
        if isinstance(frame, F.Index):
            if layout != F.L_SOLID or n_frames != 1:
                raise NacritError("corrupt archive (misplaced file index)")
            state["index"] = frame
            continue
        if layout == F.L_SOLID and "index" not in state:
            raise NacritError("corrupt archive (solid archive without a file index)")
        if isinstance(frame, F.End):
            state["end"], state["segments"] = frame, n_segs
            return
        if isinstance(frame, F.Descriptor):
            if desc is not None:
                raise NacritError("corrupt archive (second model frame)")
            check_descriptor(frame)
            desc = frame
            continue
        F.validate_segment(frame, desc, f"segment {n_segs}")
        yield frame, None, desc, n_segs, total
        total += frame.orig_len
        n_segs += 1


def _decode4(seg: F.Segment, desc, index: int, o: Options, progress, cache: dict) -> bytes:
    if seg.method == F.L_STORED:
        return seg.body
    if seg.method == F.L_ZSTD:
        return _unzstd(seg.body, seg.orig_len, index, magicless=True)
    key = (desc.pack(), o.model, o.threads, o.ignore_backend, o.n_gpu_layers, o.main_gpu)
    if key not in cache:
        cache.clear()
        cache[key] = _decode_engine4(desc, o)
    engine, mix = cache[key]
    from .neural import decode_lanes
    lanes = desc.full_params()["lanes"]

    def text_of(neural: bytes, n: int) -> bytes:
        if "model2" in desc.params:                     # two models: one byte stream
            from .bytemix import decode
            return decode(engine, neural, n, progress)  # (a wrong stream: the content check)
        body = F.unpack_neural(neural, n, lanes, f"segment {index}")
        try:
            return decode_lanes(engine, body.lanes, progress, mix)
        except NacritError as e:
            raise NacritError(f"segment {index} does not decode: {str(e).split(' (')[0]} "
                              "(model or engine mismatch?)") from None

    if seg.method == F.L_NEURAL:
        return text_of(seg.body, seg.orig_len)
    h = F.unpack_hybrid(seg.body, seg.orig_len, f"segment {index}")
    text = text_of(h.neural, h.text_len)
    binary = h.bin_payload if h.bin_method == F.L_STORED else \
        _unzstd(h.bin_payload, h.bin_len, index, magicless=True)
    if len(binary) != h.bin_len:
        raise NacritError(f"corrupt zstd data in segment {index} (binary runs too short)")
    out, tp, bp = [], 0, 0
    for i, n in enumerate(h.runs):
        if i % 2:
            out.append(binary[bp:bp + n])
            bp += n
        else:
            out.append(text[tp:tp + n])
            tp += n
    return b"".join(out)


def decode_segment(frame, payload, model, index: int, offset: int,
                   o: Options, progress=None, cache: dict | None = None) -> bytes:
    """Pure per-segment work of the decoder: one segment's original bytes, checked against its
    content check (NacritError otherwise). Runs here or in a worker (nacrith.workers). `cache`
    (the caller's dict) keeps the decoding engine between segments."""
    cache = {} if cache is None else cache
    if isinstance(frame, F.Segment):
        neural = frame.method >= F.L_NEURAL
        data = _decode4(frame, model, index, o, progress, cache)
        if len(data) != frame.orig_len or F.content_check(data) != frame.check:
            raise NacritError(f"segment {index} (at byte offset {offset}) does not match its "
                              "checksum" + (" (model or engine mismatch?)" if neural else ""))
        return data
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
        scan(src)               # structure and payload checksums, before any model is loaded
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
    if isinstance(end, F.End):
        ok = total == end.total_len and (end.total_hash is None or h.intdigest() == end.total_hash)
        trailing = end.total_hash is not None and src.read(1)
    else:
        ok = total == end.total_len and h.intdigest() == end.total_hash
        trailing = not _seekable(src) and state["legacy_src"].read(1)
    if not ok:
        raise NacritError("decoded data does not match the archive checksum")
    if trailing:
        raise NacritError("corrupt archive (data after end frame)")
    return {"in": total, "segments": state["segments"]}


def _mismatch_hint(engine: Engine, m: C.ModelDescriptor) -> str:
    """What may differ when a neural segment does not reproduce, and what to try."""
    made, used = m.params.get("threads"), engine.params.get("threads")
    if made is not None and used != made:
        return (f" (decoded with threads={used}, the archive was made with threads={made}: "
                f"retry with --threads {made}; else a model or backend mismatch)")
    return " (model or backend mismatch?)"


def _unzstd(payload: bytes, orig_len: int, index: int, magicless: bool = False) -> bytes:
    """One zstd frame -> at most orig_len bytes, produced in <= 1 MiB steps: nothing is allocated
    from the frame's own (unverified) content size or from orig_len before data exists."""
    parts, n = [], 0
    d = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS) if magicless \
        else zstandard.ZstdDecompressor()
    try:
        with d.stream_reader(payload) as r:
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


@dataclass
class Scan:
    """An archive's structure, validated without decoding (scan)."""
    version: int
    layout: str                         # "framed" (v1-3 always), or the single method
    model: dict | None                  # info()'s model entry
    segments: list                      # [{"method", "original", "compressed", "lanes"}]
    total_len: int
    total_hash: int | None              # xxh3-64 of the original (None: single layout)
    check: int | None = None            # single layout: low 32 bits of that xxh3-64
    index: "F.Index | None" = None      # solid layout: the file index (solid.py parses it)

    def matches(self, length: int, xxh3: int) -> bool:
        """Whether an original of this length and xxh3-64 is the archive's content."""
        if length != self.total_len:
            return False
        return xxh3 == self.total_hash if self.total_hash is not None \
            else (xxh3 & 0xFFFFFFFF) == self.check


def scan(src) -> Scan:
    """Validate an archive's structure and every checksum that needs no decoding; never loads a
    model (bad damage is reported here, before decoding starts)."""
    kind, first = _peek_header(src)
    if kind == "legacy":
        hdr, m, segs, end = C.scan(_Prefixed(first, src))
        model = None if m is None else {"name": m.name, "sha256": m.sha256.hex(),
                                         "n_vocab": m.n_vocab, "backend": m.backend, **m.params}
        return Scan(hdr.version, "framed", model,
                    [{"method": C.METHOD_NAMES[s.method], "original": s.orig_len,
                      "compressed": s.payload_len, "lanes": len(s.lanes)} for s in segs],
                    end.total_len, end.total_hash)
    layout, d, segs, end = F.scan(src, first)
    model = None
    if d is not None:
        p, _ = check_descriptor(d)
        name, sha, n_vocab = model_of(d)
        engine = F.ENGINE_NAMES[d.engine] + (f" (build hash {d.engine_check:04x})"
                                             if d.engine == F.E_LLAMA
                                             else f" version {d.engine_check}")
        model = {"name": name, "sha256": sha.hex(), "n_vocab": n_vocab, "backend": engine, **p}
    out = []
    for s in segs:
        lanes = 0
        if s.method >= F.L_NEURAL:
            lanes = F.n_lanes(F.unpack_hybrid(s.body, s.orig_len, "segment").text_len
                              if s.method == F.L_HYBRID else s.orig_len,
                              d.full_params()["lanes"])
        out.append({"method": F.METHOD_NAMES[s.method], "original": s.orig_len,
                    "compressed": s.payload_len, "lanes": lanes})
    layout_name = {F.L_FRAMED: "framed", F.L_SOLID: "solid"}.get(layout) or F.METHOD_NAMES[layout]
    if layout in F.SINGLE_LAYOUTS and not end.total_len:
        out = []
    return Scan(F.header_fields(first)[1], layout_name, model, out, end.total_len, end.total_hash,
                end.check, end.index)


def info(src) -> dict:
    """Describe an archive from its headers (validates structure; never loads a model)."""
    s = scan(src)
    d = {"version": s.version, "layout": s.layout, "original_size": s.total_len,
         "segments": s.segments}
    if s.model is not None:
        d["model"] = s.model
    return d
