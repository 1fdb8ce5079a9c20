"""File machinery shared by the CLI and the library: atomic outputs, the input policy, write-all.

Invariants:
- an output file only ever appears complete: data goes to a temp file in the output's directory
  (`.NAME.XXXXXX.tmp`), which is flushed, fsynced, given the input's mode and times (when an
  input stat is given), then renamed to its final name; on any error or signal (`discard`) the
  temp file is removed and the destination is left as it was;
- an existing output is replaced only with `force` (the final link is no-clobber otherwise);
  an existing character device or FIFO is written in place, never replaced by a regular file;
- an input is never its own output: the same path or the same inode is refused before anything
  is created or truncated (`check_not_same`);
- `write_all` writes every byte or raises: a short count is retried, a None return (a raw
  non-blocking file that would block) waits for the file to become writable, and a 0 return
  is an I/O error rather than an endless loop;
- inputs are opened like gzip (`open_input`): symbolic links followed only when allowed, FIFOs
  and devices read only when allowed, checks made on the opened file (fstat).
"""
from __future__ import annotations

import errno
import os
import select
import stat
import sys
import tempfile

from ._signals import blocked
from .errors import NacritError

STDIN_NAME = "<stdin>"
STDOUT_NAME = "<stdout>"


class Refused(NacritError):
    """A file operation refused on purpose (same input and output, existing output, a
    directory, a symbolic link, ...): `name` is the file, `reason` the one-line why."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class OutputError(OSError):
    """An OSError while creating, writing or committing an output, under the output's name."""

    def __init__(self, name: str, err: OSError):
        super().__init__(err.errno, err.strerror or str(err), name)
        self.name = name
        self.err = err


# ---------------------------------------------------------------- writing
def write_all(f, b, name: str | None = None) -> int:
    """Write every byte of b to f; returns len(b). With `name`, an OSError is re-raised as
    OutputError(name, ...) so it is reported under the output's name."""
    view = memoryview(b).cast("B")
    total = len(view)
    try:
        while view:
            try:
                n = f.write(view)
            except BlockingIOError as e:        # a buffered non-blocking file: partly written
                n = e.characters_written
                _wait_writable(f)
                view = view[n:]
                continue
            if n is None:                       # a raw non-blocking file that would block
                _wait_writable(f)
                continue
            if n <= 0:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            view = view[n:]
    except OSError as e:
        if name is None:
            raise
        raise OutputError(name, e) from None
    return total


def _wait_writable(f) -> None:
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):
        raise OSError(errno.EAGAIN, "output would block and cannot be waited for") from None
    select.select([], [fd], [])


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- outputs
class Output:
    """An output being written: `f` the file object, `path` its name in messages; `write`,
    `commit` (make it final), `discard` (undo; a no-op after commit)."""

    f = None
    path = ""

    def write(self, b) -> int:
        return write_all(self.f, b, self.path)

    def commit(self) -> None:
        pass

    def discard(self) -> None:
        pass


class AtomicOutput(Output):
    """Temp file beside `path`; `commit` makes it the final file, `discard` removes it."""

    def __init__(self, path: str, force: bool, src_stat: os.stat_result | None = None):
        self.path, self.force, self.src_stat = os.fspath(path), force, src_stat
        self.tmp = None
        self.f = None
        d, base = os.path.split(self.path)
        try:
            with blocked():       # a signal can only arrive once self.tmp is known
                fd, self.tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=d or ".")
                self.f = os.fdopen(fd, "wb")
        except BaseException as e:
            self.discard()
            if isinstance(e, OSError):
                raise OutputError(self.path, e) from None
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
            raise OutputError(self.path, e) from None

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
            raise Refused(self.path, "already exists (use -f to overwrite)") from None
        except OSError:                         # filesystem without hard links
            if os.path.lexists(self.path):
                raise Refused(self.path, "already exists (use -f to overwrite)") from None
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


class StdoutOutput(Output):
    def __init__(self):
        self.f, self.path = sys.stdout.buffer, STDOUT_NAME

    def commit(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            raise OutputError(STDOUT_NAME, e) from None

    def discard(self) -> None:
        try:
            self.f.flush()
        except (OSError, ValueError):
            pass


class StreamOutput(Output):
    """An existing character device or FIFO (/dev/null, a pipe): written in place, never
    created, replaced, chmod-ed or removed (gzip -c > /dev/null; zstd -o /dev/null)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.f = None
        try:
            fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0))
        except OSError as e:
            raise OutputError(self.path, e) from None
        try:
            ost = os.fstat(fd)
            if not (stat.S_ISCHR(ost.st_mode) or stat.S_ISFIFO(ost.st_mode)):
                raise Refused(self.path, "changed while being opened -- not written")
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
            raise OutputError(self.path, e) from None
        finally:
            self.f = None

    def discard(self) -> None:
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None


class NullOutput(Output):
    """Writes nothing (`nacrith test`)."""

    def write(self, b) -> int:
        return len(b)


def output_kind(out_path: str) -> str | None:
    """None: no such file; "file": a regular file (or a dangling link) to be replaced only with
    force; "stream": a character device or FIFO (e.g. /dev/null), written in place like a shell
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
        raise Refused(out_path, "is a directory")
    raise Refused(out_path, "not a regular file -- not replaced")


def open_output(path: str, kind: str | None, force: bool,
                src_stat: os.stat_result | None = None) -> Output:
    """The Output for `path` given its `output_kind`: written in place for a stream, else an
    AtomicOutput (an existing file is replaced only with force)."""
    if kind == "stream":
        return StreamOutput(path)
    if kind == "file" and not force:
        raise Refused(path, "already exists (use -f to overwrite)")
    return AtomicOutput(path, force, src_stat)


def check_not_same(src: str, dst: str, src_stat: os.stat_result | None = None) -> None:
    """Refused(src, "input and output are the same file") when dst names src: the same path,
    or (if dst exists) the same inode. Call before anything is opened for writing."""
    if os.path.abspath(os.fspath(src)) == os.path.abspath(os.fspath(dst)):
        raise Refused(os.fspath(src), "input and output are the same file")
    try:
        a = src_stat or os.stat(src)
        b = os.stat(dst)
    except OSError:
        return
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        raise Refused(os.fspath(src), "input and output are the same file")


# ---------------------------------------------------------------- inputs
class CountingReader:
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


def seekable(f) -> bool:
    try:
        return f.seekable()
    except (AttributeError, ValueError, OSError):
        return False


def open_input(name: str, *, follow: bool, special: bool, hint: bool = True):
    """Open a named input the way gzip does; returns (file, stat of what was opened).

    - follow: a symbolic link is followed (else `is a symbolic link -- ignored`; gzip uses
      O_NOFOLLOW unless -f or -c);
    - special: a FIFO, device or socket may be read (else `not a regular file -- ignored`,
      with "(use -f to force)" when `hint`);
    - the checks are made on the opened file (fstat), so a file swapped for a FIFO or a link
      between the check and the open is still refused, and a FIFO never blocks the check."""
    lst = os.lstat(name)
    if stat.S_ISLNK(lst.st_mode) and not follow:
        raise Refused(name, "is a symbolic link -- ignored (use -f to force)")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(name, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise Refused(name, "is a symbolic link -- ignored (use -f to force)") from None
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise Refused(name, "is a directory -- ignored")
        if not stat.S_ISREG(st.st_mode):
            if not special:
                raise Refused(name, "not a regular file -- ignored"
                              + (" (use -f to force)" if hint else ""))
            # a FIFO must block for its writer like a plain open(); reopen without O_NONBLOCK
            fd2 = os.open(name, flags & ~getattr(os, "O_NONBLOCK", 0))
            st2 = os.fstat(fd2)
            os.close(fd)
            fd = fd2
            if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
                raise Refused(name, "changed while being opened -- ignored")
        elif hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise
