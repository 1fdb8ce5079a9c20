"""Signal masking shared by the CLI and the backend.

Invariant: SIGINT/SIGTERM/SIGHUP are only ever delivered to the thread that runs nacrith's
Python code. Native libraries start helper threads (llama.cpp's OpenMP pool, numpy's BLAS pool)
that inherit the creating thread's signal mask; creating them inside `blocked()` keeps those
signals away from them, so a blocking read in the main thread is always interrupted by Ctrl-C
or SIGTERM instead of waiting for input that may never come.
"""
from __future__ import annotations

import signal

SIGNALS = [s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP"))
           if s is not None]
_mask = getattr(signal, "pthread_sigmask", None)


class blocked:
    """Context manager: those signals stay pending (not lost) until the block ends."""

    __slots__ = ("old",)

    def __enter__(self):
        self.old = None
        if _mask is not None:
            try:
                self.old = _mask(signal.SIG_BLOCK, SIGNALS)
            except (OSError, ValueError):
                self.old = None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            _mask(signal.SIG_SETMASK, self.old)
        return False
