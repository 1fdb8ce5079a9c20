"""Jobs over files: the per-file engine the CLI and `-r` batches share.

Invariants (the CLI's, for every file however it is reached: one file, many, -r, workers):
- outputs are atomic (nacrith.fileio): temp file in the output's directory, fsync, rename;
  removed on any error, Ctrl-C or SIGTERM; an existing output is replaced only with -f;
- `--rm` deletes an input only after its output has been committed (never when the output is
  a device or FIFO such as /dev/null);
- inputs are handled like gzip (fileio.open_input): a symbolic link is followed only with -f or
  when writing to stdout (-c) or nothing (test); FIFOs and devices are read only with -f or when
  writing to stdout;
- every failure the user can cause (NacritError, OSError) is one stderr line
  `nacrith: NAME: reason` (`guarded`), and the remaining files are still processed;
- strings taken from an archive (model name, backend) are printed with control characters
  escaped, so an archive cannot drive the terminal;
- with a pool (workers, Ray) up to N files are handled at once, one thread each, every file
  keeping the guarantees above; on a signal the pool is terminated first, so every thread
  unwinds and removes its temp file;
- on a terminal (stderr a tty, no -q: Job.terminal) a file coded here shows a progress.Bar over
  its input bytes (inside a -r job, the job's bar: invocation.py), fed through `Segments` with
  the same segment calls as without it, so the bytes written are the same; every compressed or
  decompressed file then gets one summary line on stderr, `FILE : 11.7% (20000 => 2343 bytes,
  FILE.nc)`; without a terminal, or with -q, neither is printed.
Imports go down only: cli -> invocation -> batch -> runner -> pools (workers, ray_engine) /
fileio / api / progress.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import sys
import threading
from dataclasses import dataclass, field
from typing import List, Optional

from . import api
from . import container as C
from . import progress as P
from ._signals import blocked
from .errors import NacritError
from .fileio import (STDIN_NAME, STDOUT_NAME, CountingReader, NullOutput, OutputError, Refused,
                     StdoutOutput, check_not_same, open_output, output_kind, seekable)
from .fileio import open_input as _open_file

PROG = "nacrith"
SUFFIX = ".nc"


# ---------------------------------------------------------------- control-flow exceptions
class Signalled(BaseException):
    """Raised from the SIGTERM/SIGHUP handler so that every `finally` cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Stop(BaseException):
    """End the whole invocation now with this status (and optional message); not seen by click."""

    def __init__(self, code: int, message: Optional[str] = None):
        super().__init__(code)
        self.code = code
        self.message = message


received: List[int] = []      # signals seen, so an interrupt a library converted still counts


def on_signal(signum, frame):
    received.append(signum)
    if signum == getattr(signal, "SIGINT", None):
        raise KeyboardInterrupt
    raise Signalled(signum)


def stop_for_signal() -> "Stop":
    """The status for the first signal received: 130 for Ctrl-C, 128 + N otherwise."""
    sig = received[0]
    return Stop(128 + sig, "interrupted" if sig == getattr(signal, "SIGINT", None) else "terminated")


# ---------------------------------------------------------------- messages
def err(msg: str) -> None:
    try:
        sys.stderr.write(f"{PROG}: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def printable(s: str) -> str:
    """Escape control and format characters (terminal escapes, bidi overrides) that an archive
    could carry in its model name or backend string, so they are shown, never interpreted."""
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() or c == " " else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in s)


def oneline(s) -> str:
    return printable(" ".join(str(s).split())) or "unknown error"


def strerror(e: OSError) -> str:
    return oneline(e.strerror or e)


def isatty(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class Segments:
    """The `pool` interface of api.compress_stream / decompress_stream and solid.compress_tree
    that tells a progress.FileTracker where each segment starts and ends: codes each segment
    here, exactly as those functions do without a pool (same calls, same bytes), with the
    tracker as the tokens callback; or in `pool`, counting its results."""

    def __init__(self, pool, opts: api.Options, track: P.FileTracker):
        self.pool, self.opts, self.track = pool, opts, track
        self.n = getattr(pool, "n", 1)
        self.cache: dict = {}           # the decoding engine, kept from segment to segment

    def imap(self, kind: str, items):
        track = self.track
        if self.pool is not None:
            for item, result in self.pool.imap(kind, items):
                track.segment(*_sizes(kind, item))
                track.segment_done()
                yield item, result
            return
        for item in items:
            track.segment(*_sizes(kind, item))
            if kind == "encode":
                result = api.code_segment(item, self.opts, track)
            else:
                result = api.decode_segment(*item, self.opts, track, self.cache)
            track.segment_done()
            yield item, result


def _sizes(kind: str, item) -> tuple:
    """(input bytes, original bytes) of a segment task: the block, or (frame, payload, ...)."""
    if kind == "encode":
        return len(item), len(item)
    return item[0].payload_len, item[0].orig_len


# ---------------------------------------------------------------- the per-file engine
@dataclass
class Job:
    mode: str                               # compress | decompress | test | info
    output: Optional[str] = None
    stdout: bool = False
    force: bool = False
    rm: bool = False
    quiet: bool = False
    verbose: bool = False
    json: bool = False
    opts: api.Options = field(default_factory=api.Options)
    recursive: bool = False                 # -r: walk directories (nacrith/batch.py)
    workers: Optional[int] = None           # worker processes / Ray actors (None: in-process)
    devices: List[str] = field(default_factory=list)
    inflight: Optional[int] = None          # segments per worker at once (None: its default)
    files_at_once: int = 1                  # without a pool: files coded at once here (hub.py)
    engine: str = "local"                   # local | ray
    address: Optional[str] = None           # Ray cluster address
    resume: bool = False
    manifest: Optional[str] = None
    pool: object = None                     # workers.LocalPool | ray_engine.RayPool, at run time
    batch: object = None                    # batch.Batch with -r, at run time
    solid: bool = False                     # compress --solid: one archive of every input
    member: Optional[str] = None            # decompress --file: one file of a solid archive
    bar: object = None                      # progress.Bar of a whole -r job, at run time

    @property
    def terminal(self) -> bool:
        """Progress bars and per-file summaries: stderr is a terminal and no -q."""
        return not self.quiet and isatty(sys.stderr)

    @property
    def progress(self) -> bool:
        """A bar of its own for each file: coded here, outside a -r job."""
        return self.terminal and self.pool is None and self.batch is None


def tracker(job: Job, desc: str, total: Optional[int]):
    """(the bar to close, the FileTracker) for one file: the -r job's bar (whose owner, batch.py,
    commits the file's bytes; with workers it counts segments itself), a bar of the file's own,
    or (None, None)."""
    if job.bar is not None:
        return None, (job.bar.file() if job.pool is None else None)
    if job.progress:
        bar = P.Bar(desc, total)
        return bar, bar.file()
    return None, None


def tell(job: Job, line: str) -> None:
    """A per-file summary on stderr, through the job's bar when one may be drawn."""
    if job.bar is not None:
        job.bar.write(line)
    else:
        err_plain(line)


def start_pool(job: Job):
    """Worker processes (or Ray actors), each with its model loaded; -v prints each one."""
    if job.engine == "ray":
        from .ray_engine import RayPool
        pool = RayPool(job.workers, job.devices, job.opts, job.mode, job.address, job.inflight)
    else:
        from .workers import LocalPool
        pool = LocalPool(job.workers, job.devices, job.opts, job.mode, job.inflight)
    try:
        rss = pool.wait_ready()
    except BaseException:
        pool.terminate()
        raise
    if job.verbose:
        for a in pool.assignments:
            err_plain(f"{a.describe()}, peak RSS {rss.get(a.index, 0) / 2**20:.0f} MiB after "
                       "loading")
    return pool


def close_pool(job: Job) -> None:
    """Normal end of the workers; -v tells which ones died and were replaced meanwhile."""
    if job.pool is None:
        return
    job.pool.close()
    if job.verbose:
        for why in getattr(job.pool, "deaths", ()):
            err_plain(f"{why}: replaced by a new worker, its task retried")


def run_files(job: Job, files: List[str], each=None) -> bool:
    """Process files: in this thread, or as many at a time as the workers code segments at once
    (with a pool), or job.files_at_once here (sharing one engine: hub.py), so small files keep
    every worker busy. `each(name)` replaces `one`. True if any failed."""
    each = each or (lambda name: one(job, name))
    n = job.pool.slots if job.pool is not None else job.files_at_once
    if n < 2 or len(files) < 2:
        return any([guarded(job, name, each) is not None for name in files])
    from concurrent.futures import ThreadPoolExecutor
    ex = ThreadPoolExecutor(max_workers=n, thread_name_prefix="nacrith-file")
    try:
        futs = [ex.submit(guarded, job, name, each) for name in files]
        return any([f.result() is not None for f in futs])
    except BaseException as e:
        if job.pool is not None:
            job.pool.terminate()        # tasks in flight fail: every thread cleans up and ends
        else:
            from . import hub
            hub.cancel(NacritError(f"interrupted ({type(e).__name__})"))   # coders unwind
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        ex.shutdown(wait=True)


def guarded(job: Job, name: str, each) -> Optional[str]:
    """each(name), with every failure reported as one line; returns that reason, or None.
    After a signal, failures are the interruption's consequence: nothing is printed."""
    shown = STDIN_NAME if name == "-" else name
    try:
        try:
            each(name)
        except BaseException:
            if received:   # e.g. Ctrl-C inside a lazy import, re-raised as ImportError
                if threading.current_thread() is not threading.main_thread():
                    return "interrupted"
                raise stop_for_signal() from None
            raise
        return None
    except Refused as e:
        where, reason = e.name, e.reason
    except NacritError as e:
        where, reason = shown, oneline(e)
    except OutputError as e:
        if e.err.errno == errno.EPIPE:
            raise Stop(128 + 13) from None     # like being killed by SIGPIPE, silently
        where, reason = e.name, strerror(e.err)
    except OSError as e:
        extra = f"{e.filename}: " if e.filename not in (None, name) else ""
        where, reason = shown, f"{extra}{strerror(e)}"
    except Exception as e:                      # a bug: still one line, unless debugging
        if os.environ.get("NACRITH_DEBUG"):
            raise
        where, reason = shown, f"internal error ({type(e).__name__}: {oneline(e)})"
    err(f"{where}: {reason}")
    return reason


def output_path(job: Job, name: str) -> Optional[str]:
    """Final output path, or None for stdout."""
    if job.stdout or job.output == "-" or (name == "-" and job.output is None):
        return None
    if job.output is not None:
        return job.output
    if job.mode == "compress":
        if name.endswith(SUFFIX) and not job.force:
            raise Refused(name, f"already has {SUFFIX} suffix -- ignored")
        return name + SUFFIX
    base = os.path.basename(name)
    if not base.endswith(SUFFIX) or base == SUFFIX:
        raise Refused(name, "unknown suffix -- ignored")
    return name[:-len(SUFFIX)]


def is_solid(name: str) -> bool:
    """Whether the file `name` starts like a solid archive (layout 9)."""
    if name == "-":
        return False
    try:
        if not stat.S_ISREG(os.stat(name).st_mode):   # never open a FIFO or device here
            return False
        with open(name, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    from . import frames as F
    if len(head) != 4 or head[:3] != F.MAGIC:
        return False
    layout, version = F.header_fields(head)
    return layout == F.L_SOLID and version in F.READ_VERSIONS


def solid_compress(job: Job, paths: List[str]) -> None:
    """compress --solid: every input (files, trees) into the one archive job.output."""
    from . import solid
    out_path = job.output
    for p in paths:
        check_not_same(p, out_path)
    out = open_output(out_path, output_kind(out_path), job.force)
    bar = track = None
    try:
        if job.terminal:
            bar = P.Bar(out_path, sum(e.size for e in solid.walk(paths)))
            track = bar.file()
        pool = job.pool if track is None else Segments(job.pool, api.normalized(job.opts), track)
        stats = solid.compress_tree(paths, out, job.opts, pool=pool)
        if bar is not None:
            bar.close()
        out.commit()
    finally:
        if bar is not None:
            bar.close()
        out.discard()
    if job.terminal:
        err_plain(P.summary("compress", out_path, stats["out"], stats["in"],
                            f"{stats['files']} files"))
    if job.verbose:
        err_plain(f"{out_path}: {stats['files']} files, {stats['in']} -> {stats['out']} bytes "
                  f"({bpb(stats['out'], stats['in'])} bpb)")


def solid_one(job: Job, name: str) -> dict:
    """decompress/test of a solid archive: restore its tree under -o DIR (default: the current
    directory), or only --file PATH; test decodes and verifies every file, writing nothing."""
    from . import solid
    if job.stdout or job.output == "-":
        raise Refused(name, "a solid archive holds a file tree: restore it with -o DIR")
    target = job.output or "."
    r = solid.extract(name, target, job.opts, only=job.member, force=job.force,
                      dry=job.mode == "test")
    if job.mode == "test" and not job.quiet:
        say(f"{name}: OK ({r['files']} files)")
    elif job.verbose:
        err_plain(f"{name}: {r['files']} files restored under {target} "
                  f"({r['blocks_decoded']} blocks decoded)")
    return {"in": 0, "output": target}


def one(job: Job, name: str, reader=None) -> dict:
    """One input, gzip-style. Returns the coding stats plus "output" (path or None).
    reader(src) may wrap the opened input (the batch's SHA-256)."""
    shown = STDIN_NAME if name == "-" else name
    st = None
    if job.mode in ("decompress", "test") and is_solid(name):
        return solid_one(job, name)
    if job.member is not None:
        raise Refused(name, "--file needs a solid archive")
    if job.mode == "info":
        if name != "-":
            st = os.stat(name)
            if stat.S_ISDIR(st.st_mode):
                raise Refused(name, "is a directory -- ignored")
            if not stat.S_ISREG(st.st_mode):
                raise Refused(name, "not a regular file -- ignored")
        return info_one(job, name, shown)
    to_stdout = job.stdout or job.output == "-" or (name == "-" and job.output is None)
    src = sys.stdin.buffer
    if name != "-":
        src, st = _open_input(job, name, writes_file=job.mode != "test" and not to_stdout)
    try:
        out_path = output_path(job, name) if job.mode != "test" else None
        kind = output_kind(out_path) if out_path is not None else None
        if kind is not None:
            if st is not None:
                check_not_same(name, out_path, st)
            if kind == "file" and not job.force:
                raise Refused(out_path, "already exists (use -f to overwrite)")
    except BaseException:
        if src is not sys.stdin.buffer:
            src.close()
        raise

    out = None
    bar, track = tracker(job, shown, st.st_size if st is not None and stat.S_ISREG(st.st_mode)
                         else None)
    try:
        if job.mode == "test":
            out = NullOutput()
        elif out_path is None:
            out = StdoutOutput()
        else:
            out = open_output(out_path, kind, job.force, st)
        if job.mode == "compress":
            pool = job.pool if track is None else \
                Segments(job.pool, api.normalized(job.opts), track)
            stats = api.compress_stream(src if reader is None else reader(src), out, job.opts,
                                        pool=pool)
        else:
            pool = job.pool if track is None else Segments(job.pool, job.opts, track)
            counted = src if seekable(src) else CountingReader(src)
            start = src.tell() if counted is src else 0
            stats = api.decompress_stream(counted, out, job.opts, pool=pool)
            packed = src.tell() - start if counted is src else counted.n
            stats["packed"] = packed
        if bar is not None:
            bar.close()
        out.commit()
    finally:
        if track is not None:
            track.finish()
        if bar is not None:
            bar.close()
        if out is not None:
            out.discard()               # no-op once committed; removes the temp file otherwise
        if src is not sys.stdin.buffer:
            src.close()

    if job.rm and out_path is not None and st is not None and stat.S_ISREG(st.st_mode):
        if kind == "stream":            # /dev/null, a FIFO: nothing durable to keep the data
            if not job.quiet:
                err(f"{out_path}: --rm ignored (output is not a regular file)")
        else:
            with blocked():
                os.unlink(name)
    if job.terminal and job.mode == "compress":
        tell(job, P.summary("compress", shown, stats["out"], stats["in"], out_path or STDOUT_NAME))
    elif job.terminal and job.mode == "decompress":
        tell(job, P.summary("decompress", shown, packed, stats["in"], out_path or STDOUT_NAME))
    if job.mode == "compress":
        if job.verbose:
            methods = "+".join(dict.fromkeys(stats["methods"])) or "empty"
            err_plain(f"{shown}: {stats['in']} -> {stats['out']} bytes "
                       f"({bpb(stats['out'], stats['in'])} bpb, {methods})")
    elif job.mode == "decompress":
        if job.verbose:
            err_plain(f"{shown}: {packed} -> {stats['in']} bytes "
                       f"({bpb(packed, stats['in'])} bpb)")
    elif not job.quiet:
        say(f"{shown}: OK")
    stats["output"] = out_path
    return stats


def bpb(packed: int, original: int) -> str:
    return f"{packed * 8 / original:.3f}" if original else "-"


def err_plain(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def say(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except OSError as e:
        raise OutputError(STDOUT_NAME, e) from None


def info_one(job: Job, name: str, shown: str) -> None:
    src = sys.stdin.buffer if name == "-" else open(name, "rb")
    try:
        reader = src if seekable(src) else CountingReader(src)
        start = src.tell() if reader is src else 0
        d = api.info(reader)
        size = src.tell() - start if reader is src else reader.n
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    if job.json:
        if d["layout"] == "solid":
            from . import solid
            with open(name, "rb") as f:
                d["files"] = [{"path": e.path, "size": e.size, "mode": e.mode,
                               "mtime_ns": e.mtime_ns} for e in solid.listing(f)]
        say(json.dumps({"file": shown, "archive_size": size, **d}, sort_keys=True))
        return
    orig = d["original_size"]
    lines = [f"{shown}:", f"  format       nacrith v{d['version']}",
             f"  layout       {d['layout']}"]
    m = d.get("model")
    if m is None:
        lines.append("  model        none (no neural segments)")
    else:
        params = " ".join(f"{k}={m[k]}" for k in C.PARAM_IDS if k in m)
        lines += [f"  model        {printable(m['name'])}",
                  f"  sha256       {m['sha256']}",
                  f"  n_vocab      {m['n_vocab']}",
                  f"  backend      {printable(m['backend'])}",
                  f"  params       {params}"]
    segs = d["segments"]
    lines.append(f"  segments     {len(segs)}")
    if segs:
        lines.append(f"    {'#':>4}  {'method':<7} {'original':>12} {'compressed':>12}  bpb")
        for i, s in enumerate(segs):
            lines.append(f"    {i:>4}  {s['method']:<7} {s['original']:>12} {s['compressed']:>12}"
                         f"  {bpb(s['compressed'], s['original'])}"
                         + (f"  ({s['lanes']} lanes)" if s["lanes"] > 1 else ""))
    if d["layout"] == "solid":
        from . import solid
        with open(name, "rb") as f:
            entries = solid.listing(f)
        lines.append(f"  files        {len(entries)}")
        for e in entries:
            lines.append(f"    {e.size:>12}  {e.mode:04o}  {printable(e.path)}")
    ratio = f"{size / orig:.3f}" if orig else "-"
    lines += [f"  original     {orig} bytes",
              f"  compressed   {size} bytes",
              f"  ratio        {ratio} ({bpb(size, orig)} bpb)"]
    say("\n".join(lines))


def _open_input(job: Job, name: str, writes_file: bool):
    """fileio.open_input with the CLI's policy: links followed with -f or when nothing is
    written beside the input; FIFOs and devices read with -f or when writing to stdout."""
    coding = job.mode in ("compress", "decompress")
    follow = job.force or not writes_file
    return _open_file(name, follow=follow, special=job.force or (coding and not writes_file),
                      hint=coding)
