"""Solid archives: a whole file tree in one archive (spec: formats/FORMAT.md, "Solid layout").

Invariants:
- the files' bytes are concatenated, in index order, into one stream cut into blocks of
  `block` bytes (the last one shorter); each block is one segment, coded by api.code_segment
  (so the LLM context and the online models carry over from file to file inside a block, and
  workers code blocks in parallel with byte-identical output for any number of workers);
- files are ordered so that similar ones are adjacent: by extension, then by path;
- the index (first frame) lists for every file its relative path ('/'-separated, UTF-8), size,
  permission bits, mtime and a check of its bytes: compact packing (frame 05, written): paths
  front-coded, mode and mtime (whole seconds) as differences, the low 32 bits of the xxh3-64;
  the first packing (frame 06, read): full paths, ns, 64 bits; a full restore also checks the
  end frame's xxh3-64 of the whole stream; a file's bytes are the stream range that the sizes
  before it imply, so extracting one file decodes only the blocks that range overlaps;
- a restored path is always inside the target directory: the index is refused when a path is
  absolute, empty, has an empty, '.' or '..' component, a NUL or backslash, or repeats (or is a
  directory of) another path; every directory on the way is opened without following symbolic
  links (a symlink is refused), and files are written through a temp file + fsync + rename in
  their directory; an existing file is never replaced without `force`.
"""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

import xxhash

from . import api
from . import container as C
from .errors import NacritError

DEFAULT_BLOCK = 4 << 20
MAX_FILES = 1 << 20
MAX_PATH = 4096


@dataclass
class Entry:
    path: str                       # relative, '/'-separated
    size: int
    mode: int                       # permission bits (0o7777)
    mtime_ns: int
    xxh3: int = 0                   # of the file's bytes: the low check_bits bits of its xxh3-64
    source: str = ""                # where it is read from (compression only)
    check_bits: int = 64


# ---------------------------------------------------------------- index
MTIME_S_LIMIT = (1 << 64) // 10**9


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(z: int) -> int:
    return z >> 1 if not z & 1 else -((z + 1) >> 1)


def pack_index(entries: list[Entry], block: int, compact: bool = True) -> bytes:
    """The raw index. compact (frame 05): each path as the length it shares with the previous
    path + the rest, mode and mtime (whole seconds) as zigzag differences from the previous
    file's (the first from 0o644 and 0), the low 32 bits of the file's xxh3-64. Not compact
    (frame 06, the first packing): full paths, mtimes in ns, 64-bit checks."""
    b = bytearray()
    C.put_varint(b, block)
    C.put_varint(b, len(entries))
    prev, pmode, ptime = b"", 0o644, 0
    for e in entries:
        raw = e.path.encode("utf-8")
        if not compact:
            C.put_varint(b, len(raw))
            b += raw
            for v in (e.size, e.mode, e.mtime_ns):
                C.put_varint(b, v)
            b += struct.pack("<Q", e.xxh3)
            continue
        shared = len(os.path.commonprefix([prev, raw]))
        C.put_varint(b, shared)
        C.put_varint(b, len(raw) - shared)
        b += raw[shared:]
        secs = e.mtime_ns // 10**9
        for v in (e.size, _zigzag(e.mode - pmode), _zigzag(secs - ptime)):
            C.put_varint(b, v)
        b += struct.pack("<I", e.xxh3 & 0xFFFFFFFF)
        prev, pmode, ptime = raw, e.mode, secs
    return bytes(b)


def check_path(p: str) -> None:
    """Refuse a path that could point outside the target directory (module invariants)."""
    parts = p.split("/")
    if (not p or p.startswith("/") or "\x00" in p or "\\" in p
            or any(x in ("", ".", "..") for x in parts) or len(p.encode("utf-8")) > MAX_PATH):
        raise NacritError(f"solid archive holds an unsafe path {p!r}; refusing to restore it")


def parse_index(raw: bytes, compact: bool = True) -> tuple[int, list[Entry]]:
    r = C.Reader(raw, "file index")
    block = r.varint(C.MAX_NEURAL_SEGMENT)
    if block < 1:
        raise NacritError("corrupt file index (block size 0)")
    out, seen, dirs = [], set(), set()
    prev, mode, secs = b"", 0o644, 0
    for _ in range(r.varint(MAX_FILES)):
        if compact:
            shared = r.varint(len(prev))
            praw = prev[:shared] + r.take(r.varint(MAX_PATH - shared))
        else:
            praw = r.take(r.varint(MAX_PATH))
        try:
            path = praw.decode("utf-8")
        except UnicodeDecodeError:
            raise NacritError("corrupt file index (path is not UTF-8)") from None
        check_path(path)
        size = r.varint(C.MAX_TOTAL)
        if compact:
            mode += _unzigzag(r.varint(2 * 0o7777 + 1))
            secs += _unzigzag(r.varint(2 * MTIME_S_LIMIT + 1))
            if not 0 <= mode <= 0o7777 or not 0 <= secs <= MTIME_S_LIMIT:
                raise NacritError("corrupt file index (mode or mtime out of range)")
            mtime, xxh, bits = secs * 10**9, r.u32(), 32
            prev = praw
        else:
            mode, mtime, xxh, bits = r.varint(0o7777), r.varint(1 << 64), r.u64(), 64
        if path in seen or path in dirs:
            raise NacritError(f"solid archive lists {path!r} twice (or as a file and a directory)")
        parents = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
        if any(d in seen for d in parents):
            raise NacritError(f"solid archive lists {path!r} under a file")
        seen.add(path)
        dirs.update(parents)
        out.append(Entry(path, size, mode, mtime, xxh, check_bits=bits))
    r.done()
    return block, out


# ---------------------------------------------------------------- compression
def walk(paths: list[str]) -> list[Entry]:
    """Regular files under paths (symlinks, FIFOs and devices skipped, like -r), each named by
    its path relative to its argument's parent directory; ordered by extension, then path."""
    out, seen = [], set()
    for top in paths:
        top = os.path.normpath(top)
        st = os.stat(top)
        base = os.path.dirname(os.path.abspath(top))
        if stat.S_ISREG(st.st_mode):
            files = [os.path.abspath(top)]
        elif stat.S_ISDIR(st.st_mode):
            files = []
            for d, subdirs, names in os.walk(top):
                subdirs.sort()
                for n in sorted(names):
                    p = os.path.join(d, n)
                    if stat.S_ISREG(os.lstat(p).st_mode):
                        files.append(os.path.abspath(p))
        else:
            raise NacritError(f"{top}: not a regular file or directory")
        for f in files:
            rel = os.path.relpath(f, base).replace(os.sep, "/")
            if rel in seen:
                continue
            check_path(rel)
            seen.add(rel)
            st = os.stat(f)
            out.append(Entry(rel, st.st_size, stat.S_IMODE(st.st_mode), max(0, st.st_mtime_ns), 0,
                             f))
    out.sort(key=lambda e: (os.path.splitext(e.path)[1].lower(), e.path))
    return out


def _hash_files(entries: list[Entry]) -> None:
    for e in entries:
        h = xxhash.xxh3_64()
        n = 0
        with open(e.source, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
        e.size, e.xxh3 = n, h.intdigest()


def _blocks(entries: list[Entry], block: int):
    """The concatenated stream in blocks; a file that changed since it was indexed fails."""
    buf = bytearray()
    for e in entries:
        h, n = xxhash.xxh3_64(), 0
        with open(e.source, "rb") as f:
            while n < e.size and (chunk := f.read(min(1 << 20, e.size - n))):
                h.update(chunk)
                n += len(chunk)
                buf += chunk
                while len(buf) >= block:
                    yield bytes(buf[:block])
                    del buf[:block]
        if n != e.size or h.intdigest() != e.xxh3:
            raise NacritError(f"{e.source}: file changed while it was being archived")
    if buf:
        yield bytes(buf)


def compress_tree(paths: list[str], dst, opts: api.Options | None = None, *, pool=None,
                  progress=None, block: int | None = None) -> dict:
    """Write a solid archive of the files under `paths` to the binary stream dst."""
    o = api.normalized(opts)
    block = block or min(o.segment_size, DEFAULT_BLOCK)
    entries = walk(paths)
    if len(entries) > MAX_FILES:
        raise NacritError(f"too many files for one solid archive ({len(entries)} > {MAX_FILES})")
    _hash_files(entries)
    w = api.ArchiveWriter(dst, o, index=pack_index(entries, block))
    blocks = _blocks(entries, block)
    coded = ((b, api.code_segment(b, o, progress)) for b in blocks) if pool is None \
        else pool.imap("encode", blocks)
    for b, c in coded:
        w.add(b, c)
    stats = w.finish()
    stats["files"] = len(entries)
    return stats


# ---------------------------------------------------------------- listing and extraction
def read_index(src) -> tuple[int, list[Entry], api.Scan]:
    """(block size, entries, Scan) of a solid archive, structure checked, no model loaded."""
    s = api.scan(src)
    if s.index is None:
        raise NacritError("not a solid archive (no file index)")
    block, entries = parse_index(s.index.raw, s.index.compact)
    if sum(e.size for e in entries) != s.total_len:
        raise NacritError("corrupt file index (sizes do not add up to the archive's total)")
    sizes = [seg["original"] for seg in s.segments]
    if any(n != block for n in sizes[:-1]) or (sizes and not 0 < sizes[-1] <= block):
        raise NacritError("corrupt archive (segments do not follow the index's block size)")
    return block, entries, s


class _Dir:
    """A directory inside the target, opened component by component without following links."""

    def __init__(self, root_fd: int):
        self.root = root_fd
        self.fds: dict[str, int] = {"": root_fd}

    def open(self, d: str) -> int:
        if d in self.fds:
            return self.fds[d]
        parent, _, name = d.rpartition("/")
        pfd = self.open(parent)
        try:
            os.mkdir(name, 0o777, dir_fd=pfd)
        except FileExistsError:
            pass
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=pfd)
        except OSError as e:
            why = "a symbolic link or not a directory" if e.errno in (20, 40) \
                else os.strerror(e.errno)
            raise NacritError(f"{d}: cannot restore into it ({why})") from None
        self.fds[d] = fd
        return fd

    def close(self) -> None:
        for d, fd in self.fds.items():
            if d:
                os.close(fd)


def _write_file(dirs: _Dir, e: Entry, data: bytes, force: bool) -> None:
    parent, _, name = e.path.rpartition("/")
    dfd = dirs.open(parent)
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if not force:
            raise NacritError(f"{e.path}: already exists (use -f to overwrite)")
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            raise NacritError(f"{e.path}: exists and is not a regular file")
    except FileNotFoundError:
        pass
    tmp = f".{name}.{os.getpid()}.nctmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
    try:
        mv = memoryview(data)
        while mv:
            mv = mv[os.write(fd, mv):]
        os.fchmod(fd, e.mode & 0o7777)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        raise


def extract(path: str, target: str, opts: api.Options | None = None, *, only: str | None = None,
            force: bool = False, progress=None, dry: bool = False) -> dict:
    """Restore the files of the solid archive at `path` under the directory `target` (all of
    them, or only the file `only`, decoding only the blocks it needs). dry: decode and verify
    every file, write nothing."""
    o = opts or api.Options()
    with open(path, "rb") as f:
        block, entries, _ = read_index(f)
        if only is not None:
            picked = [i for i, e in enumerate(entries) if e.path == only]
            if not picked:
                raise NacritError(f"{only}: not in the archive")
        else:
            picked = list(range(len(entries)))
        offsets, off = [], 0
        for e in entries:
            offsets.append(off)
            off += e.size
        need = set()
        for i in picked:
            a, n = offsets[i], entries[i].size
            need.update(range(a // block, (a + max(n, 1) - 1) // block + 1) if n else [])
        if not dry:
            os.makedirs(target, exist_ok=True)
        root = os.open(target if not dry else ".", os.O_RDONLY | os.O_DIRECTORY)
        dirs = _Dir(root)
        decoded_blocks = 0
        try:
            f.seek(0)
            kind, first = api._peek_header(f)
            state: dict = {}
            cache: dict = {}
            stream = bytearray()            # decoded bytes not yet written, from stream_pos
            stream_pos = 0
            nxt = 0                         # next entry (in `picked` order) to write
            pending = picked
            whole = xxhash.xxh3_64()        # of the whole stream (full restore only)
            for task in api._tasks4(f, first, state, solid=True):
                seg, _, desc, k, offset = task
                if k not in need:
                    stream_pos = offset + seg.orig_len
                    stream.clear()
                    continue
                if not stream:
                    stream_pos = offset
                chunk = api.decode_segment(*task, o, progress, cache)
                if only is None:
                    whole.update(chunk)
                stream += chunk
                decoded_blocks += 1
                while nxt < len(pending):
                    e_i = pending[nxt]
                    a, n = offsets[e_i] - stream_pos, entries[e_i].size
                    if a + n > len(stream):
                        break
                    data = bytes(stream[a:a + n])
                    mask = (1 << entries[e_i].check_bits) - 1
                    if xxhash.xxh3_64_intdigest(data) & mask != entries[e_i].xxh3:
                        raise NacritError(f"{entries[e_i].path}: does not match its checksum")
                    if not dry:
                        _write_file(dirs, entries[e_i], data, force)
                    nxt += 1
                # drop what no pending file needs any more
                keep_from = offsets[pending[nxt]] - stream_pos if nxt < len(pending) else len(stream)
                del stream[:max(0, keep_from)]
                stream_pos += max(0, keep_from)
            while nxt < len(pending) and entries[pending[nxt]].size == 0:
                if not dry:
                    _write_file(dirs, entries[pending[nxt]], b"", force)
                nxt += 1
            if nxt != len(pending):
                raise NacritError("corrupt archive (files missing from its stream)")
            end = state.get("end")
            if only is None and end is not None and end.total_hash is not None \
                    and whole.intdigest() != end.total_hash:
                raise NacritError("decoded tree does not match the archive's checksum")
        finally:
            dirs.close()
            os.close(root)
    return {"files": len(picked), "blocks_decoded": decoded_blocks, "blocks": len(need)}


def listing(src) -> list[Entry]:
    """The files of a solid archive (no model is loaded)."""
    return read_index(src)[1]

