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

Device coder (hub.DeviceLanes; where the shared backend codes on the device,
DeviceBackend.codes_on_device): the hub also keeps one mixer.device.LaneBatch of every lane, and
a coder's step is an ask carrying its symbols (encoding) or asking for them (decoding), the
lanes it skips included: one batch runs the forward pass of every ask's lanes, then one launch
codes all the coders' lanes; only symbols and skip confidences cross to the host. A lane's
state is reset when a coder takes it, so, as with the logits, no coder's bytes depend on its
neighbours (tests/test_device.py). Lanes of more than CODER_TOKENS tokens, or another mix than
the first coder's, are coded on the host (the same bytes).

In the CLI, `-r` without --workers codes several files at once this way in its own process
(runner.run_files), and a worker with --inflight N codes N segments (nacrith/workers.py).
"""
from __future__ import annotations

import copy
import threading

import numpy as np

from .errors import NacritError

MAX_TOKENS = 4096       # tokens per backend.feed: a larger batch is split (same logits)
CODER_TOKENS = 1 << 16  # tokens a lane of a hub's device coder holds (longer lanes: the host)


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
        self.coder = None                       # mixer.device.LaneBatch of every lane, or None
        self.coder_mix = None

    def engine_for(self, lanes: int):
        """An Engine for one coder: this hub's model and tokenizer, a View of `lanes` lanes
        (its header parameters say `lanes`, like an engine of its own)."""
        self.engine.column_table                # the mixer's table, computed once, shared
        e = copy.copy(self.engine)
        e.backend = View(self, lanes)
        e.params = {**self.engine.params, "lanes": lanes}
        return e

    # ---------------------------------------------------------------- called by views
    def device_lanes(self, view: "View", mix, n_tokens, tcol):
        """View.device_coder: the hub's LaneBatch (made at the first call, for every lane of
        the backend, lanes of up to max(CODER_TOKENS, these) tokens) where the backend codes on
        the device, it fits in the device's free memory, and the mix and lengths suit it."""
        if not getattr(self.backend, "codes_on_device", False):
            return None
        from .mixer.device import LaneBatch
        bound = max(list(n_tokens) + [1])
        with self.cond:
            if self.coder is None:
                n = max(CODER_TOKENS, bound)
                V = self.backend.n_vocab
                if LaneBatch.lanes_that_fit(mix, V, n) < self.backend.lanes:
                    return None
                self.coder, self.coder_mix = LaneBatch(mix, V, self.backend.lanes, n, tcol), mix
            if mix != self.coder_mix or bound > self.coder.n_tokens:
                return None
        return DeviceLanes(self, view)

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

    def _feed(self, view: "View", lanes, groups, code=None):
        if view.phys is None:
            raise NacritError("internal error: feed before reset on a shared engine")
        ask = _Ask([int(view.phys[lane]) for lane in lanes], groups, code)
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
            outs = self._run(asks)
        except BaseException as e:              # noqa: BLE001 - every coder of it sees it
            for a in asks:
                a.out = e
        else:
            for a, out in zip(asks, outs):
                a.out = out
        self.batches += 1
        self.cond.notify_all()

    def _run(self, asks) -> list:
        """One batch: the forward pass of every ask's lanes (split at MAX_TOKENS: lanes are
        independent), the rows of plain asks to the host, and, for the asks of device coders,
        one launch that codes all their lanes (hub.DeviceLanes); each ask's result."""
        lanes = [lane for a in asks for lane in a.lanes]
        groups = [g for a in asks for g in a.groups]
        chunks, start, n = [], 0, 0
        for i, g in enumerate(groups):
            if n and n + len(g) > MAX_TOKENS:
                chunks.append((start, i))
                start, n = i, 0
            n += len(g)
        chunks.append((start, len(lanes)))
        if all(a.code is None for a in asks):       # every row to the host
            out = [self.backend.feed(lanes[s:e], groups[s:e]) for s, e in chunks]
            rows = out[0] if len(out) == 1 else np.concatenate(out)
            ends = np.cumsum([len(a.lanes) for a in asks])
            return [rows[e - len(a.lanes):e] for a, e in zip(asks, ends)]
        owner = [k for k, a in enumerate(asks) for _ in a.lanes]
        rows = [[] for _ in asks]
        c = self.coder
        syms = np.zeros(c.lanes, dtype=np.int64)
        enc_skip, dec_skip, decoded = [], [], np.zeros(c.lanes, dtype=np.int64)
        for a in asks:
            if a.code is not None:
                skipped, sym = a.code
                (enc_skip if sym is not None else dec_skip).extend(skipped)
                for p, v in (sym or {}).items():
                    syms[p] = v
        for j, (s, e) in enumerate(chunks):
            out = self.backend.forward(lanes[s:e], groups[s:e]) if e > s else None
            host = None
            enc, erows, dec, drows = [], [], [], []
            for i in range(s, e):
                a = asks[owner[i]]
                if a.code is None:
                    host = out.copy_to_host() if host is None else host
                    rows[owner[i]].append(host[i - s])
                elif a.code[1] is not None:
                    enc.append(lanes[i])
                    erows.append(i - s)
                else:
                    dec.append(lanes[i])
                    drows.append(i - s)
            first = j == 0
            if enc or (first and enc_skip):
                c.encode(out, enc, enc_skip if first else [], syms, np.array(erows, np.int64))
            if dec or (first and dec_skip):
                got = c.decode(out, dec, dec_skip if first else [], np.array(drows, np.int64))
                for p in dec + (dec_skip if first else []):
                    decoded[p] = got[p]
        return [np.array(rows[k]) if a.code is None else          # (an encode's result is
                (() if a.code[1] is not None else decoded)            # not None: done)
                for k, a in enumerate(asks)]


class _Ask:
    """One coder's step: feed groups[i] to lanes[i] (the hub's lanes); code None: the rows come
    back to the host; code (skipped lanes, {lane: symbol} to encode, or None to decode): the
    hub's device coder codes them and every lane in skipped (without the LLM)."""
    __slots__ = ("lanes", "groups", "code", "out")

    def __init__(self, lanes, groups, code=None):
        self.lanes, self.groups, self.code, self.out = lanes, groups, code, None


class View:
    """The backend interface (neural.lockstep's) over k lanes of a hub's backend."""

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

    def device_coder(self, mix, n_tokens, tcol):
        """neural.py's device coder for this view's lanes through the hub's (DeviceLanes), where
        the shared backend codes on the device (DeviceBackend.codes_on_device) and the hub's
        LaneBatch serves this mix and these lane lengths; else None (the host codes them)."""
        return self.hub.device_lanes(self, mix, n_tokens, tcol)


class DeviceLanes:
    """A View's lanes in the hub's device coder (mixer.device.LaneBatch of every hub lane):
    neural.OwnDevice's interface; each step is an ask of the hub's batch, so one launch codes
    the lanes of every coder in flight."""

    def __init__(self, hub: Hub, view: View):
        self.hub, self.view = hub, view

    def begin(self, streams=None) -> None:
        """After the view's reset (its lanes known): fresh states, then the streams to decode."""
        phys = self.view.phys
        with self.hub.cond:
            self.hub.coder.reset(phys)
            if streams is not None:
                self.hub.coder.start_decode({int(phys[k]): b for k, b in streams.items()})

    def skip_conf(self):
        return self.hub.coder.skip_conf()[self.view.phys]

    def step(self, need, groups, skipped, syms=None):
        phys = self.view.phys
        code = ([int(phys[k]) for k in skipped],
                None if syms is None else {int(phys[k]): int(syms[k]) for k in
                                           list(need) + list(skipped)})
        out = self.hub._feed(self.view, need, groups, code)
        return None if syms is not None else out[phys]

    def finish(self, k: int) -> list:
        with self.hub.cond:
            return self.hub.coder.finish([int(p) for p in self.view.phys[:k]])


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
