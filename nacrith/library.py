"""The public Python API: bytes, streams and files, typed keyword options, result objects.

Invariants:
- safe under threads: every call runs inside an engine scope (nacrith.engine), so a loaded
  model is used by one thread at a time and any number of threads may call at once;
- options are keyword-only and checked before anything is read or created: an unknown name or
  a value out of range is a BadOption;
- `compress_file` / `decompress_file` never damage their input or leave a partial output: the
  same path or inode as input and output is refused before anything is opened, and the output
  is written to a temp file beside it, fsynced, and renamed only once complete (removed on any
  error: bad option, corrupt archive, full disk, Ctrl-C);
- archive damage surfaces as CorruptArchive, a missing model as ModelUnavailable, a model or
  backend that differs from the archive's as ModelMismatch (all NacritError subclasses).
"""
from __future__ import annotations

import io
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, TypedDict, Union

from . import api, fileio
from . import engine as engines
from .api import Options
from .errors import CorruptArchive, NacritError

if TYPE_CHECKING:                       # PEP 692 typed **kwargs, for type checkers only
    from typing_extensions import Unpack

SUFFIX = ".nc"
PathLike = Union[str, "os.PathLike[str]"]


class OptionArgs(TypedDict, total=False):
    """The keyword options every public function takes: the fields of `Options` (see there).
    Decoding reads its settings from the archive and uses only model, threads, n_gpu_layers,
    main_gpu and ignore_backend."""
    model: Optional[PathLike]
    ctx: int
    slide: Optional[int]
    n_keep: int
    threads: Optional[int]
    lanes: int
    n_gpu_layers: int
    main_gpu: int
    neural: bool
    segment_size: int
    zstd_level: int
    ignore_backend: bool
    backend: str
    swa_full: Optional[bool]
    mixer: bool
    ngram: Optional[int]
    ngram_bits: Optional[int]
    ngram_limit: Optional[int]
    ngram_esc: Optional[int]
    match: Optional[int]
    match_bits: Optional[int]
    match_limit: Optional[int]
    bias_lr: Optional[int]
    bias_ada: Optional[int]
    temp_lr: Optional[int]
    mix_lr: Optional[int]
    mix_floor: Optional[int]
    boost_lr: Optional[int]
    skip: Optional[int]
    skip_cap: Optional[int]
    guard: Optional[int]
    mix_preset: Optional[int]
    model2: Optional[str]
    ctx2: int
    level: Optional[int]


@dataclass(frozen=True)
class CompressResult:
    """What compressing produced: `original_size` bytes read, `archive_size` bytes written,
    `methods` the coding of each segment in order ("neural", "zstd", "stored")."""
    original_size: int
    archive_size: int
    methods: tuple

    @property
    def segments(self) -> int:
        """Number of segments in the archive."""
        return len(self.methods)

    @property
    def bpb(self) -> Optional[float]:
        """Archive bits per original byte (None for an empty input)."""
        return self.archive_size * 8 / self.original_size if self.original_size else None


@dataclass(frozen=True)
class DecompressResult:
    """What decompressing produced: `original_size` bytes restored (every checksum verified),
    `archive_size` bytes of archive read (None if not known), `segments` decoded."""
    original_size: int
    archive_size: Optional[int]
    segments: int


# ---------------------------------------------------------------- errors
_CORRUPT = ("corrupt", "truncated", "not a nacrith archive", "decoded data does not match",
            "segment ", "neural segment", "model frame", "archive format version",
            "archive uses unknown", "unsupported CDF")


def classified(e: NacritError) -> NacritError:
    """A plain NacritError about archive damage (raised by the container layer) as the
    CorruptArchive it is; any other error unchanged."""
    if type(e) is NacritError and str(e).startswith(_CORRUPT):
        c = CorruptArchive(str(e))
        c.__traceback__ = e.__traceback__
        return c
    return e


@contextmanager
def _archive_errors():
    try:
        yield
    except NacritError as e:
        c = classified(e)
        if c is e:
            raise
        raise c from None


class _Counted:
    """The `pool` interface of api.compress_stream / decompress_stream, counting segments: runs
    tasks here (with one decoding engine cache for this stream), or in the given pool."""

    def __init__(self, pool, o: Options, progress):
        self.pool, self.o, self.progress = pool, o, progress
        self.n = getattr(pool, "n", 1)
        self.count = 0
        self.cache: dict = {}

    def imap(self, kind: str, items):
        if self.pool is not None:
            results = self.pool.imap(kind, items)
        elif kind == "encode":
            results = ((b, api.code_segment(b, self.o, self.progress)) for b in items)
        else:
            results = ((t, api.decode_segment(*t, self.o, self.progress, self.cache))
                       for t in items)
        for r in results:
            self.count += 1
            yield r


# ---------------------------------------------------------------- streams
def compress_stream(src, dst, opts: Optional[Options] = None, /, *,
                    progress: Optional[Callable[[int], None]] = None, pool=None,
                    **options: Unpack[OptionArgs]) -> CompressResult:
    """Read the binary file object `src` to its end and write one archive to `dst`.

    Memory is bounded by the segment size (4 MiB by default) whatever the input length.
    `opts` (an Options) and keyword options (model=, ctx=, threads=, lanes=, neural=, ...)
    select the coding; `progress(n)` is called with the number of tokens coded as they are;
    `pool` (nacrith.workers.LocalPool, nacrith.ray_engine.RayPool) codes segments elsewhere,
    producing the same bytes. Raises BadOption, ModelUnavailable, or OSError of the files."""
    o = api.normalized(opts, **options)
    counted = _Counted(pool, o, progress)
    with engines.scope():
        stats = api.compress_stream(src, dst, o, pool=counted)
    return CompressResult(stats["in"], stats["out"], tuple(stats["methods"]))


def decompress_stream(src, dst, opts: Optional[Options] = None, /, *,
                      progress: Optional[Callable[[int], None]] = None, pool=None,
                      **options: Unpack[OptionArgs]) -> DecompressResult:
    """Decode the archive read from `src` and write the original bytes to `dst`.

    Every checksum is verified; no byte of a segment is written before that segment's
    checksum has matched (earlier segments may have been written when a later one fails).
    Raises CorruptArchive, ModelUnavailable, ModelMismatch (e.g. another llama.cpp build:
    retry with ignore_backend=True), BadOption, or OSError of the files."""
    o = api.decode_options(opts, **options)
    counted = _Counted(pool, o, progress)
    start = src.tell() if fileio.seekable(src) else None
    with engines.scope(), _archive_errors():
        stats = api.decompress_stream(src, dst, o, pool=counted)
    size = src.tell() - start if start is not None else None
    return DecompressResult(stats["in"], size, counted.count)


# ---------------------------------------------------------------- bytes
def compress(data: bytes, opts: Optional[Options] = None, /,
             **options: Unpack[OptionArgs]) -> bytes:
    """Compress bytes (any bytes-like object) to an archive. The same input and options give
    the same archive bytes on the same llama.cpp build, in any process or thread."""
    out = io.BytesIO()
    compress_stream(io.BytesIO(bytes(data)), out, opts, **options)
    return out.getvalue()


def decompress(blob: bytes, opts: Optional[Options] = None, /,
               **options: Unpack[OptionArgs]) -> bytes:
    """Decompress a whole archive to its original bytes (every checksum verified; data after
    the end of the archive is CorruptArchive)."""
    out = io.BytesIO()
    decompress_stream(io.BytesIO(bytes(blob)), out, opts, **options)
    return out.getvalue()


def info(src) -> dict:
    """Describe an archive read from the binary file object `src` from its headers: "version",
    "original_size", "segments" (method, original, compressed, lanes each) and "model" when it
    has neural segments. Validates the structure and payload checksums; never loads a model."""
    with _archive_errors():
        return api.info(src)


# ---------------------------------------------------------------- files
@contextmanager
def _file_pair(src: PathLike, dst: PathLike):
    """(input file, atomic output) for src -> dst: refuses src == dst before opening anything;
    the output is committed when the block succeeds and removed otherwise."""
    src, dst = os.fspath(src), os.fspath(dst)
    fileio.check_not_same(src, dst)
    fin = open(src, "rb")
    out = None
    try:
        st = os.fstat(fin.fileno())
        fileio.check_not_same(src, dst, st)
        out = fileio.open_output(dst, fileio.output_kind(dst), force=True)
        yield fin, out
        out.commit()
    finally:
        if out is not None:
            out.discard()                       # no-op once committed
        fin.close()


def compress_file(src: PathLike, dst: Optional[PathLike] = None,
                  opts: Optional[Options] = None, /,
                  **options: Unpack[OptionArgs]) -> CompressResult:
    """Compress the file `src` to `dst` (default: src + ".nc").

    The archive appears only complete (temp file in dst's directory, fsync, rename; an existing
    dst is replaced atomically); on any error nothing is left at dst and the input is intact.
    `src` and `dst` naming the same file is refused (NacritError) before anything is opened."""
    dst = os.fspath(src) + SUFFIX if dst is None else dst
    o = api.normalized(opts, **options)
    with _file_pair(src, dst) as (fin, out):
        return compress_stream(fin, out, o)


def decompress_file(src: PathLike, dst: Optional[PathLike] = None,
                    opts: Optional[Options] = None, /,
                    **options: Unpack[OptionArgs]) -> DecompressResult:
    """Decompress the archive file `src` to `dst` (default: src without its ".nc" suffix).

    Same guarantees as compress_file: a corrupt archive, a missing model or a bad option
    leaves no file at dst (and an existing dst untouched)."""
    if dst is None:
        s = os.fspath(src)
        if not s.endswith(SUFFIX) or os.path.basename(s) == SUFFIX:
            raise fileio.Refused(s, f"no {SUFFIX} suffix: give the output path")
        dst = s[:-len(SUFFIX)]
    o = api.decode_options(opts, **options)
    with _file_pair(src, dst) as (fin, out):
        return decompress_stream(fin, out, o)
