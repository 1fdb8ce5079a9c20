"""Progress on a terminal: a bar over input bytes for a file or a whole `-r` job, and the
one-line summary of a file, as zstd prints it (`FILE : 11.7% (20000 => 2343 bytes, FILE.nc)`).

Invariants:
- display only: nothing here changes what is coded or written; the CLI makes a Bar or prints a
  summary only when stderr is a terminal and -q is not given (runner.Job.terminal), so pipes,
  logs and -q get neither;
- a Bar counts input bytes against the input's size (percent, bytes/s, time left), with the
  tokens/s of the model when tokens are coded here and, with -r, the files done. Its count is
  exact at the end of every segment and of every file; in between, the current segment's part
  is estimated from the tokens coded so far (bytes per token measured on this bar's finished
  neural segments, PRIOR before the first) and held below the segment's end (CAP), so the
  count never runs past what is done, and it never goes back;
- the clock starts at the first token when nothing was counted before (loading a model is not
  coding time: the rate and time left are the coding's);
- a bar appears only after DELAY seconds, so a quick file shows its summary alone; a line
  printed while a bar may be up goes through Bar.write (bar cleared, line, bar redrawn);
- safe from several threads (the files of a batch are coded at once with workers).
Imports: tqdm and the standard library only (used by runner and invocation).
"""
from __future__ import annotations

import os
import sys
import threading
from time import time

PRIOR = 3.5         # bytes per token before any is measured (SmolLM2: ~3.9 prose, ~2.4 code)
CAP = 0.99          # an estimate stays below this share of its segment until the segment ends
DELAY = 0.5         # seconds before a bar is drawn
MININTERVAL = 0.25  # seconds between two redraws


def shape(stream=None) -> dict:
    """tqdm sizing for a stream: a terminal that reports no size (fresh pty) would get no bar
    at all, so assume 80x24 there."""
    try:
        size = os.get_terminal_size((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        size = os.terminal_size((0, 0))
    return {"dynamic_ncols": True} if min(size) > 0 else {"ncols": 80, "nrows": 24}


class Bar:
    """One tqdm bar over input bytes. `update(n)`, `set_postfix_str(s)` and `close()` are
    tqdm's (batch.py drives the bar of a -r job through them: whole files, and "k/N files");
    `file()` gives the per-file tracker that runner feeds with segments and tokens."""

    def __init__(self, desc: str, total: int | None, stream=None, delay: float = DELAY):
        from tqdm import tqdm
        self.stream, self.delay = stream or sys.stderr, delay
        self.lock = threading.RLock()
        self.committed = 0              # bytes of whole files (update) -- exact
        self.partial: dict = {}         # FileTracker -> bytes of that file so far
        self.tokens = 0
        self.first = None               # time of the first token (tokens/s after a second)
        self.files = ""                 # "k/N files" of a -r job
        self.measured = [0, 0]          # original bytes, tokens of finished neural segments
        self.tqdm = tqdm(desc=desc, total=total or None, unit="B", unit_scale=True,
                         file=self.stream, leave=False, mininterval=MININTERVAL, delay=delay,
                         **shape(self.stream))

    # ------------------------------------------------ tqdm's interface (batch.py)
    @property
    def total(self):
        return self.tqdm.total

    def update(self, n: int) -> None:
        with self.lock:
            self.committed += n
            self._show()

    def set_postfix_str(self, s: str = "", refresh: bool = False) -> None:
        with self.lock:
            self.files = s
            self._show()

    def close(self) -> None:
        with self.lock:
            try:
                self.tqdm.close()
            except Exception:           # a closed or broken terminal: nothing to clear
                pass

    # ------------------------------------------------ ours
    def file(self) -> "FileTracker":
        return FileTracker(self)

    def write(self, line: str) -> None:
        """Print a line on the bar's stream without mixing it with the bar."""
        with self.lock:
            try:
                self.tqdm.clear()
                self.stream.write(line + "\n")
                self.stream.flush()
                if self.tqdm.format_dict["elapsed"] >= self.delay:     # else not drawn yet
                    self.tqdm.refresh()
            except (OSError, ValueError):
                pass

    def bytes_per_token(self) -> float:
        b, t = self.measured
        return b / t if t else PRIOR

    def postfix(self) -> str:
        parts = [self.files] if self.files else []
        if self.tokens and self.first is not None:
            dt = time() - self.first
            if dt >= 1:
                parts.append(f"{self.tokens / dt:.1f} tok/s")
        return ", ".join(parts)

    def count(self) -> int:
        return self.committed + sum(self.partial.values())

    def _show(self) -> None:
        """Under the lock: the count and postfix to tqdm, which redraws at most every
        MININTERVAL seconds (the count only grows)."""
        try:
            self.tqdm.set_postfix_str(self.postfix(), refresh=False)
            n = int(self.count())
            if n > self.tqdm.n:
                self.tqdm.update(n - self.tqdm.n)
        except (OSError, ValueError):   # the terminal went away: the coding goes on
            pass


class FileTracker:
    """One file's share of a Bar. Called with the number of tokens coded (the library's
    `progress(n)`); told by runner.Segments where each segment starts (`segment(size, orig)`:
    its input bytes and original bytes) and ends (`segment_done()`); `finish()` when the file
    is done, after which the file counts only through what the bar's owner commits."""

    def __init__(self, bar: Bar):
        self.bar = bar
        self.done = 0                   # input bytes of this file's finished segments
        self.seg = None                 # (input bytes, original bytes) of the current segment
        self.seg_tokens = 0

    def __call__(self, n: int) -> None:
        bar = self.bar
        with bar.lock:
            if bar.first is None:
                bar.first = time()
                if not bar.count():     # the clock starts with the coding, not the model's load
                    bar.tqdm.unpause()
            bar.tokens += n
            self.seg_tokens += n
            bar.partial[self] = self.done + self.estimate()
            bar._show()

    def estimate(self) -> float:
        """Input bytes of the current segment done, from its tokens (below CAP of it)."""
        if self.seg is None or not self.seg[1]:
            return 0
        size, orig = self.seg
        share = self.seg_tokens * self.bar.bytes_per_token() / orig
        return size * min(CAP, share)

    def segment(self, size: int, orig: int) -> None:
        with self.bar.lock:
            self.seg, self.seg_tokens = (size, orig), 0

    def segment_done(self) -> None:
        bar = self.bar
        with bar.lock:
            if self.seg is not None:
                size, orig = self.seg
                if self.seg_tokens:
                    bar.measured[0] += orig
                    bar.measured[1] += self.seg_tokens
                self.done += size
            self.seg, self.seg_tokens = None, 0
            bar.partial[self] = self.done
            bar._show()

    def finish(self) -> None:
        with self.bar.lock:
            self.bar.partial.pop(self, None)


def ratio(packed: int, original: int) -> str:
    """Archive size as a percentage of the original, zstd's way (one decimal)."""
    return f"{packed * 100 / original:.1f}%" if original else "-"


def summary(mode: str, name: str, packed: int, original: int, dest: str) -> str:
    """The line of one file: `FILE : 11.7% (20000 => 2343 bytes, FILE.nc)` for compress,
    `FILE.nc : 11.7% (2343 => 20000 bytes, FILE)` for decompress (input => output, and the
    same percentage: archive / original)."""
    a, b = (original, packed) if mode == "compress" else (packed, original)
    return f"{name} : {ratio(packed, original)} ({a} => {b} bytes, {dest})"
