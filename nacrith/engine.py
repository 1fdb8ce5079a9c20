"""Engine pool: loaded models (one llama.cpp context each) handed to one thread at a time.

A llama.cpp context is not thread-safe: two threads decoding in one context corrupt its batch
and KV cache (wrong logits, `llama_decode failed`, or a ggml assertion that aborts the process).

Invariants:
- an engine is leased to at most one thread at a time, and a thread holds at most one lease:
  asking for other settings first returns its current engine to the idle set (a thread is
  sequential, so it is not coding with it at that moment);
- a lease ends when the thread's outermost `scope()` exits, when the thread asks for other
  settings, or when the thread ends (then the engine is freed with the thread's state);
- an engine that is leased is never freed or handed to another thread: a thread that finds no
  idle engine for its settings loads its own (loading happens outside the pool's lock);
- at most `max_idle` idle engines are kept, the least recently returned dropped first; engines
  in use are bounded by the number of threads coding at once.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Hashable, Iterator

MAX_IDLE = 2


class _Lease:
    """One thread's state: the engine it holds (if any) and its scope depth."""

    __slots__ = ("key", "engine", "depth")

    def __init__(self):
        self.key = None
        self.engine = None
        self.depth = 0


class EnginePool:
    """Engines keyed by their settings; `get` leases one to the calling thread."""

    def __init__(self, max_idle: int = MAX_IDLE):
        self.max_idle = max_idle
        self.lock = threading.Lock()
        self.idle: list = []                    # [(key, engine)], oldest first
        self.local = threading.local()
        self.loads = 0                          # engines created (tests, diagnostics)

    def _lease(self) -> _Lease:
        st = getattr(self.local, "lease", None)
        if st is None:
            st = self.local.lease = _Lease()
        return st

    def get(self, key: Hashable, load: Callable[[], object]):
        """The calling thread's engine for `key`: the one it already holds, else an idle one,
        else a new one from `load()` (if that raises, the thread holds nothing)."""
        st = self._lease()
        if st.engine is not None and st.key == key:
            return st.engine
        self._release(st)
        engine = None
        with self.lock:
            for i, (k, e) in enumerate(self.idle):
                if k == key:
                    engine = e
                    del self.idle[i]
                    break
        if engine is None:
            engine = load()
            with self.lock:
                self.loads += 1
        st.key, st.engine = key, engine
        return engine

    def _release(self, st: _Lease) -> None:
        engine, key = st.engine, st.key
        st.engine = st.key = None
        if engine is None:
            return
        with self.lock:
            self.idle.append((key, engine))
            dropped = self.idle[:max(0, len(self.idle) - self.max_idle)]
            del self.idle[:len(dropped)]
        del dropped                             # freed here, outside the lock

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Within this block the calling thread keeps the engines it gets; when the outermost
        block exits, its engine goes back to the idle set for any thread to reuse."""
        st = self._lease()
        st.depth += 1
        try:
            yield
        finally:
            st.depth -= 1
            if st.depth == 0:
                self._release(st)

    def held(self):
        """The engine the calling thread holds, or None."""
        return self._lease().engine

    def clear(self) -> None:
        """Drop every idle engine (engines in use stay with their threads)."""
        with self.lock:
            dropped, self.idle = self.idle, []
        del dropped


POOL = EnginePool()
scope = POOL.scope
