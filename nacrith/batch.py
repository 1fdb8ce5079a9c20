"""Batch archival (`-r`): walk directories, one archive per file, a JSON-lines manifest, resume.

Invariants:
- one archive per input file, FILE.nc beside it, like `gzip -r` (not one multi-file archive):
  a damaged archive costs one file, any file is restored alone, the per-file guarantees of the
  CLI (temp file + fsync + rename, no clobber, --rm only after commit) hold unchanged, and a
  resumed batch redoes nothing that was committed;
- walking takes regular files only (symbolic links, FIFOs and devices inside a tree are skipped,
  as are our own `.NAME.XXXXXXXX.tmp` files and the manifest), in sorted order; compress skips
  `*.nc`, decompress and test take only `*.nc`;
- the manifest gets one JSON line per file as soon as that file is done (committed or failed):
  appended, flushed and fsynced, under a lock (files finish in any order with workers); reading
  it ignores a torn last line, and the next line always starts on a line of its own;
- `--resume` skips a file iff its archive exists, the archive's structure and payload checksums
  verify (container.scan) and its end frame's length and xxh3-64 match the file as it is now
  (a full neural decode is `nacrith test -r`); an archive that does not verify is replaced;
  leftover temp files of a killed run are removed;
- a failing file is reported (one line; an "error" line in the manifest) and the others still
  complete; the status is then 1.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import stat
import sys
import threading
import time

import xxhash

from . import api, runner
from ._signals import blocked
from .errors import NacritError

DEFAULT_MANIFEST = "nacrith-manifest.jsonl"
_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def walk(paths: list[str], mode: str, exclude: set) -> list[str]:
    """Arguments -> files: a directory is walked (sorted), anything else is kept as given."""
    out = []
    for p in paths:
        if not os.path.isdir(p):
            out.append(p)
            continue
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for f in sorted(files):
                full = os.path.join(root, f)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or _TMP.match(f):
                    continue
                if (st.st_dev, st.st_ino) in exclude:
                    continue
                if f.endswith(runner.SUFFIX) == (mode == "compress"):
                    continue
                out.append(full)
    return out


class Manifest:
    """Append-only JSON lines: {"path", "size", "sha256", "archive", "archive_size", "bpb",
    "method", "seconds"} per compressed file, {"path", "error"} per failure."""

    def __init__(self, path: str):
        self.path = path
        self.entries: dict = {}
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        for line in data.split(b"\n"):
            try:
                rec = json.loads(line)
                self.entries[rec["path"]] = rec
            except (ValueError, KeyError, TypeError):
                continue                        # a torn line (killed mid-write)
        self.lock = threading.Lock()
        self.created = not os.path.lexists(path)
        self.f = open(path, "ab")
        if data and not data.endswith(b"\n"):
            self._write(b"\n")

    def _write(self, b: bytes) -> None:
        with blocked():
            self.f.write(b)
            self.f.flush()
            os.fsync(self.f.fileno())

    def append(self, rec: dict) -> None:
        with self.lock:
            self._write(json.dumps(rec).encode() + b"\n")
            self.entries[rec["path"]] = rec

    def identity(self):
        st = os.fstat(self.f.fileno())
        return st.st_dev, st.st_ino

    def close(self) -> None:
        self.f.close()

    def abandon(self) -> None:
        """The run stops before any file: close, and remove the manifest if this run made it
        and wrote nothing to it."""
        self.close()
        if self.created and not self.entries:
            try:
                os.unlink(self.path)
            except OSError:
                pass


class _Digest:
    """Reader wrapper: SHA-256 and length of what was read."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def read(self, n=-1) -> bytes:
        b = self.f.read(n)
        self.h.update(b)
        self.n += len(b)
        return b


class _Counting:
    """A pool whose results advance the batch's progress bar segment by segment (input bytes:
    the block for compress, the payload for decompress/test), so a large file shows progress."""

    def __init__(self, pool, batch: "Batch"):
        self.pool, self.batch = pool, batch
        self.n = pool.n

    def imap(self, kind: str, items):
        for item, result in self.pool.imap(kind, items):
            n = len(item) if kind == "encode" else item[0].payload_len
            self.batch.local.counted += n
            self.batch._progress(n, file_done=False)
            yield item, result


def _bpb(packed: int, original: int):
    return round(packed * 8 / original, 4) if original else None


class Batch:
    """One `-r` run: files, manifest (compress), progress bar, summary."""

    def __init__(self, job, args: list[str]):
        self.job = job
        self.manifest = None
        exclude = set()
        if job.mode == "compress":
            self.manifest = Manifest(job.manifest or DEFAULT_MANIFEST)
            exclude.add(self.manifest.identity())
        self.files = walk(args, job.mode, exclude)
        self.lock = threading.Lock()
        self.done = self.skipped = self.failed = 0
        self.bytes_in = self.bytes_out = 0
        self.bar = None
        self.local = threading.local()          # bytes of the current file already shown
        if not job.quiet and runner.isatty(sys.stderr):
            from .progress import Bar
            total = 0
            for f in self.files:
                try:
                    total += os.stat(f).st_size
                except OSError:
                    pass
            self.bar = job.bar = Bar(job.mode, total)     # runner feeds it within each file too
            self.bar.set_postfix_str(f"0/{len(self.files)} files")

    def abandon(self) -> None:
        """The run stops before any file (a pool failed to start): no leftover manifest."""
        if self.manifest is not None:
            self.manifest.abandon()
        if self.bar is not None:
            self.bar.close()

    def run(self) -> bool:
        t0 = time.monotonic()
        try:
            failed = runner.run_files(self.job, self.files, each=self.each)
        finally:
            if self.bar is not None:
                self.bar.close()
            if self.manifest is not None:
                self.manifest.close()
        if not self.job.quiet:
            runner.err_plain(self.summary(time.monotonic() - t0))
        return failed

    def summary(self, secs: float) -> str:
        verb = {"compress": "compressed", "decompress": "restored", "test": "OK"}[self.job.mode]
        s = f"{self.done} files {verb}"
        if self.job.mode == "compress" and self.job.resume:
            s += f", {self.skipped} already done"
        s += f", {self.failed} failed"
        if self.job.mode == "compress":
            s += (f"; {self.bytes_in} -> {self.bytes_out} bytes "
                  f"({runner.bpb(self.bytes_out, self.bytes_in)} bpb)")
        s += f" in {secs:.1f} s"
        if self.manifest is not None:
            s += f"; manifest {self.manifest.path}"
        return s

    def _progress(self, size: int, file_done: bool = True) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.update(size)
                if file_done:
                    self.bar.set_postfix_str(f"{self.done + self.skipped + self.failed}/"
                                             f"{len(self.files)} files")

    def each(self, name: str) -> None:
        try:
            size = os.stat(name).st_size
        except OSError:
            size = 0
        self.local.counted = 0
        job = self.job
        if self.bar is not None and job.pool is not None:
            job = dataclasses.replace(job, pool=_Counting(job.pool, self))
        try:
            if self.job.mode == "compress":
                self._compress(name, job)
            else:
                stats = runner.one(job, name)
                with self.lock:
                    self.done += 1
                    self.bytes_in += stats.get("packed", 0)
                    self.bytes_out += stats["in"]
        except BaseException as e:
            with self.lock:
                self.failed += 1
            if self.manifest is not None and not runner.received:
                reason = getattr(e, "reason", None) or runner.oneline(e)
                self.manifest.append({"path": name, "error": reason})
            raise
        finally:
            self._progress(max(0, size - self.local.counted))

    def _compress(self, name: str, job) -> None:
        if job.resume:
            state = self.check(name)
            if state == "done":
                with self.lock:
                    self.skipped += 1
                return
            if state == "stale":
                job = dataclasses.replace(job, force=True)
        t0 = time.monotonic()
        digest = []

        def reader(src):
            digest.append(_Digest(src))
            return digest[0]
        stats = runner.one(job, name, reader=reader)
        self.manifest.append({
            "path": name, "size": stats["in"], "sha256": digest[0].h.hexdigest(),
            "archive": stats["output"], "archive_size": stats["out"],
            "bpb": _bpb(stats["out"], stats["in"]),
            "method": "+".join(dict.fromkeys(stats["methods"])) or "empty",
            "seconds": round(time.monotonic() - t0, 3)})
        with self.lock:
            self.done += 1
            self.bytes_in += stats["in"]
            self.bytes_out += stats["out"]

    def check(self, name: str):
        """--resume: "done" (archive verifies against the file), "stale" (an archive is there
        but does not), or None (no archive). Removes temp files a killed run left for it."""
        out = name + runner.SUFFIX
        d, base = os.path.split(out)
        for tmp in glob.glob(os.path.join(glob.escape(d or "."), glob.escape(f".{base}.")
                                          + "*.tmp")):
            if _TMP.match(os.path.basename(tmp)):
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        try:
            if not stat.S_ISREG(os.lstat(name).st_mode) or \
                    not stat.S_ISREG(os.lstat(out).st_mode):
                return None
        except OSError:
            return None
        try:
            with open(out, "rb") as f:
                summary = api.scan(f)
                packed = f.tell()
            h, sha, n = xxhash.xxh3_64(), hashlib.sha256(), 0
            with open(name, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    sha.update(chunk)
                    n += len(chunk)
        except (NacritError, OSError):
            return "stale"
        if not summary.matches(n, h.intdigest()):
            return "stale"
        rec = self.manifest.entries.get(name)
        if rec is None or rec.get("sha256") != sha.hexdigest() or rec.get("archive") != out:
            methods = [seg["method"] for seg in summary.segments]
            self.manifest.append({
                "path": name, "size": n, "sha256": sha.hexdigest(), "archive": out,
                "archive_size": packed, "bpb": _bpb(packed, n),
                "method": "+".join(dict.fromkeys(methods)) or "empty", "seconds": 0.0})
        return "done"
