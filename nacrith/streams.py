"""Incremental objects and file objects: Compressor, Decompressor, NacritFile and open().

Invariants:
- a Compressor's output, all its `compress()` returns then `flush()`, is byte-identical to
  `nacrith.compress()` of the concatenated input with the same options: it cuts the same
  segments (`segment_size` bytes, the last one shorter), codes them with the same per-segment
  function and frames them with the same ArchiveWriter; it buffers at most one segment;
- a Decompressor returns each segment's bytes only once that segment's checksum has matched,
  buffers the archive until a frame and its payload are complete, and checks the whole-content
  checksum at the end frame; bytes after the end frame are `unused_data` (as zlib does);
- a NacritFile opened for writing on a path appears only complete, on close (fileio's atomic
  output); if the `with` block raises, nothing is left at the path, and on a caller's file
  object no end frame is written (a reader then reports a truncated archive, never a valid
  archive of partial data);
- every call runs inside an engine scope, so objects in different threads never share a model.
"""
from __future__ import annotations

import builtins
import errno
import io
import os
from typing import TYPE_CHECKING, Optional

import xxhash

from . import api, fileio
from . import container as C
from . import engine as engines
from . import frames as F
from .errors import BadOption, CorruptArchive
from .library import CompressResult, OptionArgs, PathLike, _archive_errors

if TYPE_CHECKING:
    from typing_extensions import Unpack

READ_CHUNK = 1 << 16


class Compressor:
    """Incremental compression, like `zlib.compressobj()` or `lzma.LZMACompressor`:
    `compress(data)` returns the archive bytes ready so far (often b"": a segment is coded
    once `segment_size` bytes are buffered), `flush()` returns the rest and ends the archive.
    Options as for `nacrith.compress`; `result` is the CompressResult after flush()."""

    def __init__(self, opts: Optional[api.Options] = None, /, **options: Unpack[OptionArgs]):
        self._o = api.normalized(opts, **options)
        self._out = io.BytesIO()
        self._writer = api.ArchiveWriter(self._out, self._o)
        self._pending = bytearray()
        self.result: Optional[CompressResult] = None

    def compress(self, data) -> bytes:
        """Add data (bytes-like); returns archive bytes that are ready (possibly b"")."""
        if self.result is not None:
            raise ValueError("compress() after flush()")
        self._pending += data
        seg = self._o.segment_size
        while len(self._pending) >= seg:
            block = bytes(self._pending[:seg])
            del self._pending[:seg]
            self._code(block)
        return self._drain()

    def flush(self) -> bytes:
        """Code what is buffered and write the end frame; returns the last archive bytes.
        The compressor cannot be used afterwards."""
        if self.result is not None:
            raise ValueError("flush() called twice")
        if self._pending:
            self._code(bytes(self._pending))
            self._pending.clear()
        stats = self._writer.finish()
        self.result = CompressResult(stats["in"], stats["out"], tuple(stats["methods"]))
        return self._drain()

    def _code(self, block: bytes) -> None:
        with engines.scope():
            self._writer.add(block, api.code_segment(block, self._o))

    def _drain(self) -> bytes:
        b = self._out.getvalue()
        self._out.seek(0)
        self._out.truncate()
        return b


class _NeedMore(Exception):
    """The buffered archive ends inside the unit being parsed: wait for more input."""


class _Reader:
    """File-like view of a buffer from `pos`; a read past the end raises _NeedMore."""

    def __init__(self, buf: bytearray, pos: int):
        self.buf, self.pos = buf, pos

    def read(self, n: int = -1) -> bytes:
        end = len(self.buf) if n < 0 else self.pos + n
        if end > len(self.buf):
            raise _NeedMore
        b = bytes(self.buf[self.pos:end])
        self.pos = end
        return b


class Decompressor:
    """Incremental decompression, like `zlib.decompressobj()` or `lzma.LZMADecompressor`:
    `decompress(data)` returns the original bytes of every segment completed so far (each
    verified). `eof` is True once the end frame has been read and the whole content verified;
    `unused_data` holds any bytes after it. Options as for `nacrith.decompress`."""

    def __init__(self, opts: Optional[api.Options] = None, /, **options: Unpack[OptionArgs]):
        self._o = api.decode_options(opts, **options)
        self._buf = bytearray()
        self._pos = 0
        self._header = False
        self._model = None
        self._index = 0
        self._total = 0
        self._hash = xxhash.xxh3_64()
        self._layout = None             # version 4+: the layout; None: a version 1-3 archive
        self._version = 0               # version 4+: the format version of the header
        self.eof = False
        self.unused_data = b""
        self.segments = 0

    @property
    def needs_input(self) -> bool:
        """True until the end of the archive has been reached."""
        return not self.eof

    def decompress(self, data) -> bytes:
        """Add archive bytes; returns the original bytes that became available (maybe b"").
        Raises CorruptArchive (and the model errors of nacrith.decompress); EOFError after
        the end of the archive."""
        if self.eof:
            raise EOFError("already at the end of the archive")
        self._buf += data
        out = []
        with engines.scope(), _archive_errors():
            while not self.eof:
                step = self._step()
                if step is None:
                    break
                out.append(step)
        del self._buf[:self._pos]
        self._pos = 0
        return b"".join(out)

    def flush(self) -> bytes:
        """No more input: a version-4 single-layout archive (one segment, no end frame: it ends
        with its input) is decoded now; anything else must already be complete."""
        if self.eof:
            return b""
        with engines.scope(), _archive_errors():
            if not self._header:            # fewer than 4 bytes, or a partial v1-3 header
                C.read_file_header(io.BytesIO(bytes(self._buf)))
            if self._layout is not None and self._layout in F.SINGLE_LAYOUTS:
                # the 4 header bytes were consumed by _step: the buffer holds the rest
                desc, seg = F.read_single(io.BytesIO(bytes(self._buf)), self._layout,
                                          F.SINGLE_LIMIT, self._version)
                if desc is not None:
                    api.check_descriptor(desc)
                data = api.decode_segment(seg, None, desc, 0, 0, self._o, None, {})
                self._buf.clear()
                self.eof = True
                self.segments = 1 if seg.orig_len else 0
                return data
            raise CorruptArchive("truncated archive (ends before its end frame)")

    def _step(self) -> Optional[bytes]:
        """Parse and decode one unit (header, frame, segment); None if more input is needed."""
        r = _Reader(self._buf, self._pos)
        try:
            if not self._header:
                first = r.read(4)
                if first[:3] == F.MAGIC and first[3] != F.LEGACY_BYTE:
                    api._peek_header(io.BytesIO(first))       # version checks
                    self._layout, self._version = F.header_fields(first)
                    if self._layout == F.L_SOLID:
                        raise CorruptArchive("this is a solid archive of a file tree: restore "
                                             "it with `nacrith decompress ARCHIVE -o DIR`")
                    if self._layout not in F.SINGLE_LAYOUTS + (F.L_FRAMED,):
                        raise CorruptArchive(f"archive uses unknown layout {self._layout}; "
                                             "upgrade nacrith")
                else:
                    r = _Reader(self._buf, self._pos)
                    C.read_file_header(r)
                self._header = True
                self._pos = r.pos
                return b""
            if self._layout is not None:
                if self._layout in F.SINGLE_LAYOUTS:
                    return None                 # ends with the input: see flush()
                frame = F.read_frame(r, self._index, self.segments, self._version)
                payload = None
            else:
                frame = C.read_frame(r, self._index)
                if isinstance(frame, C.Segment) and len(self._buf) - r.pos < frame.payload_len:
                    return None
                payload = C.read_payload(r, frame, self._index) \
                    if isinstance(frame, C.Segment) else None
        except _NeedMore:
            return None
        self._pos = r.pos
        if isinstance(frame, (C.End, F.End)):
            if self._total != frame.total_len or self._hash.intdigest() != frame.total_hash:
                raise CorruptArchive("decoded data does not match the archive checksum")
            self.eof = True
            self.unused_data = bytes(self._buf[self._pos:])
            self._pos = len(self._buf)
            return b""
        if isinstance(frame, (C.ModelDescriptor, F.Descriptor)):
            if self._model is not None:
                raise CorruptArchive("corrupt archive (second model frame)")
            if isinstance(frame, F.Descriptor):
                api.check_descriptor(frame)
            self._model = frame
            self._index += 1
            return b""
        if isinstance(frame, F.Segment):
            F.validate_segment(frame, self._model, f"segment {self.segments}")
            index = self.segments
        else:
            if frame.method == C.NEURAL:
                if self._model is None:
                    raise CorruptArchive("corrupt archive (neural segment before any model "
                                         "frame)")
                C.check_neural_segment(frame, self._model, self._index)
            index = self._index
        data = api.decode_segment(frame, payload, self._model, index, self._total,
                                  self._o, None, {})
        self._hash.update(data)
        self._total += len(data)
        self._index += 1
        self.segments += 1
        return data


class NacritFile(io.BufferedIOBase):
    """A binary file object over an archive, like gzip.GzipFile / lzma.LZMAFile: mode "rb"
    reads the original bytes (verified segment by segment), "wb" (or "xb": the path must not
    exist) compresses what is written. `file` is a path or a binary file object (left open).
    Writing to a path is atomic: the file appears on close(), complete."""

    def __init__(self, file, mode: str = "rb", opts: Optional[api.Options] = None, /,
                 **options: Unpack[OptionArgs]):
        m = mode.replace("b", "")
        if m not in ("r", "w", "x") or mode.count("b") > 1:
            raise BadOption(f"invalid mode {mode!r} (expected 'rb', 'wb' or 'xb')")
        self._reading = m == "r"
        self._fp = self._atomic = None
        self._owns = False
        if self._reading:
            self._codec = Decompressor(opts, **options)
        else:
            self._codec = Compressor(opts, **options)
        if isinstance(file, (str, bytes, os.PathLike)):
            path = os.fsdecode(file)
            if self._reading:
                self._fp = builtins.open(path, "rb")
            else:
                if m == "x" and os.path.lexists(path):
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
                self._atomic = fileio.open_output(path, fileio.output_kind(path), m == "w")
                self._fp = self._atomic
            self._owns = True
        elif hasattr(file, "read" if self._reading else "write"):
            self._fp = file
        else:
            raise TypeError("file must be a path or a binary file object")
        self._decoded = b""
        self._offset = 0
        self._failed = False
        self.name = os.fsdecode(file) if self._owns else getattr(file, "name", "")
        self.mode = "rb" if self._reading else "wb"

    # ------------------------------------------------------------ reading
    def readable(self) -> bool:
        self._check_open()
        return self._reading

    def _fill(self) -> bool:
        """Decode until some bytes are ready; False at the end of the archive."""
        while self._offset >= len(self._decoded):
            if self._codec.eof:
                return False
            chunk = self._fp.read(READ_CHUNK)
            self._decoded, self._offset = (self._codec.decompress(chunk) if chunk
                                           else self._codec.flush()), 0
            if self._codec.eof and (self._codec.unused_data or self._fp.read(1)):
                raise CorruptArchive("corrupt archive (data after end frame)")
        return True

    def read(self, size: Optional[int] = -1) -> bytes:
        """Up to `size` original bytes (all that remain if size < 0); b"" at the end."""
        self._check_readable()
        if size is None or size < 0:
            parts = [self._decoded[self._offset:]]
            self._offset = len(self._decoded)
            while self._fill():
                parts.append(self._decoded)
                self._offset = len(self._decoded)
            return b"".join(parts)
        parts, left = [], size
        while left and self._fill():
            b = self._decoded[self._offset:self._offset + left]
            self._offset += len(b)
            left -= len(b)
            parts.append(b)
        return b"".join(parts)

    def read1(self, size: int = -1) -> bytes:
        """Original bytes already decoded (decoding one more segment if none are)."""
        self._check_readable()
        if not self._fill():
            return b""
        end = len(self._decoded) if size is None or size < 0 else self._offset + size
        b = self._decoded[self._offset:end]
        self._offset += len(b)
        return b

    def readinto(self, b) -> int:
        data = self.read(len(memoryview(b).cast("B")))
        memoryview(b).cast("B")[:len(data)] = data
        return len(data)

    def readinto1(self, b) -> int:
        data = self.read1(len(memoryview(b).cast("B")))
        memoryview(b).cast("B")[:len(data)] = data
        return len(data)

    # ------------------------------------------------------------ writing
    def writable(self) -> bool:
        self._check_open()
        return not self._reading

    def write(self, b) -> int:
        """Compress b; returns its length in bytes."""
        self._check_open()
        if self._reading:
            raise io.UnsupportedOperation("not open for writing")
        n = memoryview(b).nbytes
        try:
            fileio.write_all(self._fp, self._codec.compress(b))
        except BaseException:
            self._failed = True
            raise
        return n

    # ------------------------------------------------------------ life cycle
    def seekable(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a NacritFile has no file descriptor")

    def close(self) -> None:
        """Reading: release the file. Writing: end the archive (and, for a path, make the file
        appear); after a failed write nothing is finished and a path is left untouched."""
        if self.closed:
            return
        try:
            if not self._reading and not self._failed:
                fileio.write_all(self._fp, self._codec.flush())
                if self._atomic is not None:
                    self._atomic.commit()
        finally:
            try:
                if self._atomic is not None:
                    self._atomic.discard()              # no-op once committed
                elif self._owns:
                    self._fp.close()
            finally:
                super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._failed = True
        return super().__exit__(exc_type, exc, tb)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _check_readable(self) -> None:
        self._check_open()
        if not self._reading:
            raise io.UnsupportedOperation("not open for reading")


def open(file, mode: str = "rb", *, encoding: Optional[str] = None,
         errors: Optional[str] = None, newline: Optional[str] = None,
         **options: Unpack[OptionArgs]):
    """Open an archive like `gzip.open` / `lzma.open`: `file` is a path or a file object;
    mode "rb"/"r" (read), "wb"/"w" (write), "xb"/"x" (write, the path must not exist) return a
    NacritFile; "rt", "wt", "xt" wrap it in io.TextIOWrapper with encoding, errors, newline.
    Options as for nacrith.compress / nacrith.decompress."""
    if "t" in mode:
        if "b" in mode:
            raise BadOption(f"invalid mode {mode!r}")
        binary = NacritFile(file, mode.replace("t", "b"), **options)
        return io.TextIOWrapper(binary, io.text_encoding(encoding), errors, newline)
    if encoding is not None or errors is not None or newline is not None:
        raise BadOption("encoding, errors and newline are for text modes only")
    return NacritFile(file, mode if "b" in mode else mode + "b", **options)


__all__ = ["Compressor", "Decompressor", "NacritFile", "open", "PathLike"]
