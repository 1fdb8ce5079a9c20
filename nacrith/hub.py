"""Continuous batching: many segment coders share one portable-engine backend's lanes.

A worker that codes several segments at once (`--inflight N`, nacrith/workers.py) runs each in a
thread of its own; every thread gets an Engine whose backend is a `View` of k lanes of one
shared backend (DeviceBackend on a GPU, PortableBackend on the CPU) with room for many lanes.
A coder's `feed` waits until every coder that is stepping has asked for its next feed, then one
backend.feed serves them all (each coder's lanes mapped onto the lanes it holds), and each gets
its own rows back. A coder that finishes gives its lanes back at once and the next segment
takes them (continuous batching: no coder waits for a slower neighbour to finish its segment).

Invariants:
- a coder's logits are exactly what a backend of its own would give: the engine computes every
  lane from that lane's tokens alone (ENGINE.md: no value depends on the batch, its order or the
  other lanes), a view resets only its own lanes, and the shared backend is fed by one thread
  at a time (under the hub's lock). So an archive's bytes never depend on which other
  segments shared the device, or whether any did (tests/test_scale.py, gpu_check);
- a coder "steps" from its view's reset() (neural.lockstep's start) to its done() (lockstep's
  end, also on error): the batch runs when every stepping coder has a feed waiting, so a coder
  between segments (tokenizing, writing) holds nobody up;
- lanes are taken at reset() and given back at done(); a coder waits for free lanes only when
  more lanes are asked for than the backend has;
- a failure of the shared feed is raised in every coder of that batch; the hub goes on;
  after cancel(err) every waiting and later feed raises err (an interrupted -r unwinds).

In the CLI, `-r` without --workers codes several files at once this way in its own process
(runner.run_files), and a worker with --inflight N codes N segments (nacrith/workers.py).
"""
from __future__ import annotations

import copy
import threading

import numpy as np

from .errors import NacritError

MAX_TOKENS = 4096       # tokens per backend.feed: a larger batch is split (same logits)


class Hub:
    """One backend with `backend.lanes` lanes shared by coders in any number of threads."""

    def __init__(self, engine):
        self.engine = engine                    # api.Engine whose backend has every lane
        self.backend = engine.backend
        self.cond = threading.Condition()
        self.free = list(range(self.backend.lanes))
        self.stepping = 0
        self.pending: list = []                 # [_Ask] of the next batch
        self.batches = 0                        # backend feeds run (tests, diagnostics)
        self.cancelled: BaseException | None = None

    def engine_for(self, lanes: int):
        """An Engine for one coder: this hub's model and tokenizer, a View of `lanes` lanes
        (its header parameters say `lanes`, like an engine of its own)."""
        self.engine.column_table                # the mixer's table, computed once, shared
        e = copy.copy(self.engine)
        e.backend = View(self, lanes)
        e.params = {**self.engine.params, "lanes": lanes}
        return e

    # ---------------------------------------------------------------- called by views
    def cancel(self, err: BaseException) -> None:
        """Every coder waiting now or feeding later gets `err` (an interrupted run unwinds)."""
        with self.cond:
            self.cancelled = err
            for a in self.pending:
                a.out = err
            self.pending = []
            self.cond.notify_all()

    def _begin(self, view: "View") -> None:
        with self.cond:
            if view.phys is None:
                while len(self.free) < view.k:
                    if self.cancelled is not None:
                        raise self.cancelled
                    self.cond.wait()
                view.phys = np.array(self.free[:view.k], np.int64)
                del self.free[:view.k]
                self.stepping += 1
            self.backend.reset(view.phys)       # under the lock: no feed runs meanwhile

    def _end(self, view: "View") -> None:
        with self.cond:
            if view.phys is None:
                return
            self.free.extend(int(p) for p in view.phys)
            view.phys = None
            self.stepping -= 1
            self._run_if_ready()
            self.cond.notify_all()

    def _feed(self, view: "View", lanes, groups) -> np.ndarray:
        if view.phys is None:
            raise NacritError("internal error: feed before reset on a shared engine")
        ask = _Ask([int(view.phys[lane]) for lane in lanes], groups)
        with self.cond:
            if self.cancelled is not None:
                raise self.cancelled
            self.pending.append(ask)
            self._run_if_ready()
            while ask.out is None:
                self.cond.wait()
        if isinstance(ask.out, BaseException):
            raise ask.out
        return ask.out

    def _run_if_ready(self) -> None:
        """Under the lock: every stepping coder waits for a feed -> run them as one batch."""
        if not self.pending or len(self.pending) < self.stepping:
            return
        asks, self.pending = self.pending, []
        try:
            rows = self._run(asks)
        except BaseException as e:              # noqa: BLE001 - every coder of it sees it
            for a in asks:
                a.out = e
        else:
            i = 0
            for a in asks:
                a.out = rows[i:i + len(a.lanes)]
                i += len(a.lanes)
        self.batches += 1
        self.cond.notify_all()

    def _run(self, asks) -> np.ndarray:
        lanes = [lane for a in asks for lane in a.lanes]
        groups = [g for a in asks for g in a.groups]
        out, start, n = [], 0, 0
        for i, g in enumerate(groups):              # split at MAX_TOKENS (lane-independent)
            if n and n + len(g) > MAX_TOKENS:
                out.append(self.backend.feed(lanes[start:i], groups[start:i]))
                start, n = i, 0
            n += len(g)
        out.append(self.backend.feed(lanes[start:], groups[start:]))
        return out[0] if len(out) == 1 else np.concatenate(out)


class _Ask:
    __slots__ = ("lanes", "groups", "out")

    def __init__(self, lanes, groups):
        self.lanes, self.groups, self.out = lanes, groups, None


class View:
    """The backend interface (neural.lockstep's) over k lanes of a hub's backend."""

    codes_on_device = False     # a view's rows come back to the host (hub.Hub._feed)

    def __init__(self, hub: Hub, k: int):
        self.hub, self.k, self.lanes = hub, k, k
        self.phys = None                        # the hub's lanes, while stepping

    def __getattr__(self, name):                # n_vocab, bos, piece, tokenize, fingerprint...
        return getattr(self.hub.backend, name)

    def reset(self) -> None:
        self.hub._begin(self)

    def done(self) -> None:
        self.hub._end(self)

    def feed(self, lanes, groups) -> np.ndarray:
        return self.hub._feed(self, lanes, groups)

    def close(self) -> None:                    # never the shared backend's close()
        self.done()


# ---------------------------------------------------------------- this process's hubs
_LOCK = threading.Lock()
_HUBS: dict = {}
_LANES = 0              # lanes of each shared backend; 0: no sharing (every engine its own)


def enable(lanes: int) -> None:
    """Share engines in this process (a worker coding several segments at once): each
    portable-engine setting gets one backend of `lanes` lanes."""
    global _LANES
    _LANES = lanes


def lanes() -> int:
    return _LANES


def disable() -> None:
    """No more sharing; the shared engines are dropped (engines in use stay with their coders)."""
    global _LANES
    with _LOCK:
        _LANES = 0
        _HUBS.clear()


def cancel(err: BaseException) -> None:
    """Cancel every hub of this process (hub.cancel)."""
    with _LOCK:
        hubs = list(_HUBS.values())
    for h in hubs:
        h.cancel(err)


def hub_for(key, make) -> Hub:
    """The hub for backend settings `key`; make(lanes) -> Engine of that many lanes on first use."""
    with _LOCK:
        h = _HUBS.get(key)
        if h is None:
            e = make(_LANES)
            e.backend.tokenize(b"")                 # load the vocabulary once, before threads
            h = _HUBS[key] = Hub(e)
        return h
