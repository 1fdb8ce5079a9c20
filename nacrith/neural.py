"""Neural segment codec: lanes of tokens coded in lockstep with LLM probabilities.

Invariants:
- a segment's bytes are split into K contiguous lanes; each lane is exactly tokenized
  (tokenizer.py) and coded into its own arithmetic-coded stream;
- the sequence of llama_decode calls is produced by `lockstep` alone, from the per-lane token
  counts (which the header stores) and, with the confidence skip on, from the lanes' model states
  before each step (which encoder and decoder share), so both sides issue identical calls: at step
  t every lane with t < n_tokens[lane] either needs the LLM, and is fed the tokens that wait for it
  (its previous token, BOS at t = 0, preceded by any skipped ones) with logits for the last one
  only, all such lanes in lane order in ONE llama_decode; or it is skipped (mix.skip > 0, the match
  model's probability >= skip / 2^16, at most skip_cap tokens already waiting): its token is coded
  from the n-gram/match models alone and joins the lane's waiting tokens (the KV cache catches up
  at the lane's next LLM step; nothing is ever re-evaluated). Without skips this is exactly one
  token per active lane per step;
- with the ensemble on (mix), each lane has its own mixer.LaneModel, fresh at segment start, and
  every token is coded with the ensemble's frequencies instead of the LLM's; on a device backend
  that opts in (codes_on_device), the lanes' ensembles and coders live on the device instead
  (mixer.device.LaneBatch, one call per step for every lane, the logits never leave the device),
  the same steps compiled for it, so the same bytes;
- lane payload = escape block + coded stream; escape block = varint count, then per escape
  varint(gap from the end of the previous escape), varint(length), raw bytes.
"""
from __future__ import annotations

import numpy as np

from .coder import Decoder, Encoder
from .container import Reader, Segment, put_varint
from .errors import NacritError
from .tokenizer import merge


def split_lanes(data: bytes, k: int) -> list[bytes]:
    """K contiguous parts of similar size, cut after a newline where one is near."""
    n = len(data)
    k = max(1, min(k, n)) if n else 1
    cuts, start = [0], 0
    for i in range(1, k):
        target = n * i // k
        nl = data.rfind(b"\n", start + 1, target)
        cut = nl + 1 if nl != -1 and target - nl < n // (4 * k) + 64 else target
        cut = max(cut, start + 1)
        cuts.append(cut)
        start = cut
    cuts.append(n)
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


def lockstep(backend, k: int, more, code, progress=None, skip=None, cap: int = 0) -> None:
    """Drive the LLM over k lanes; code(lane, t, logits_row) codes token t and returns it.

    more(lane, t) -> bool: the lane has a token t (once False, False for every later t: a
    count of tokens, or, when decoding a version-4 lane, "fewer bytes decoded than it holds").
    skip(lane) -> bool (optional): code the lane's token t without the LLM (code gets row None);
    asked before step t, only while at most `cap` tokens of that lane wait for the LLM."""
    def step(t, active, need, groups):
        logits = backend.feed(need, groups) if need else None
        rows = dict(zip(need, logits)) if need else {}
        return [code(lane, t, rows.get(lane)) for lane in active]
    skips = None if skip is None else (lambda lanes: {lane for lane in lanes if skip(lane)})
    lockstep_steps(backend, k, more, step, progress, skips, cap)


def lockstep_steps(backend, k: int, more, step, progress=None, skips=None, cap: int = 0,
                   begin=None, end=None):
    """lockstep with a whole step at once: step(t, active, need, groups) feeds groups[i] to
    lane need[i] (the LLM), codes token t of every active lane (those not in need without the
    LLM) and returns them in active's order; skips(lanes) -> the set of them to skip; begin()
    runs once the backend's lanes are reset (a shared engine's View has its lanes then) and
    end() after the last step, while it still has them; end()'s result is returned."""
    backend.reset()
    try:
        if begin is not None:
            begin()
        wait = [[backend.bos] for _ in range(k)]   # tokens not yet fed to the LLM, per lane
        t = 0
        while True:
            active = [lane for lane in range(k) if more(lane, t)]
            if not active:
                return None if end is None else end()
            sk = set() if skips is None else skips(
                [lane for lane in active if len(wait[lane]) <= cap])
            need = [lane for lane in active if lane not in sk]
            for lane, sym in zip(active, step(t, active, need, [wait[lane] for lane in need])):
                if lane in sk:
                    wait[lane].append(sym)
                else:
                    wait[lane] = [sym]
            if progress is not None:
                progress(len(active))
            t += 1
    finally:
        done = getattr(backend, "done", None)     # a shared engine's View (hub.py): lanes back
        if done is not None:
            done()


def pack_escapes(escapes) -> bytes:
    out = bytearray()
    put_varint(out, len(escapes))
    end = 0
    for off, raw in escapes:
        put_varint(out, off - end)
        put_varint(out, len(raw))
        out += raw
        end = off + len(raw)
    return bytes(out)


def unpack_escapes(block: bytes, lane_len: int, whole: bool = True):
    """Escapes of a lane of lane_len bytes; whole=False: the block is a prefix of `block`, and
    (escapes, its length) is returned."""
    r = Reader(block, "escape table")
    escapes, end = [], 0
    for _ in range(r.varint(lane_len)):
        off = end + r.varint(lane_len)
        raw = r.take(r.varint(lane_len))
        end = off + len(raw)
        if end > lane_len:
            raise NacritError("corrupt escape table (escape beyond lane end)")
        escapes.append((off, raw))
    if not whole:
        return escapes, r.pos
    r.done()
    return escapes


def _lane_models(engine, mix, n_tokens):
    """One fresh ensemble state per lane (None: the LLM-only path of coder.py); n_tokens[i]
    bounds the tokens lane i codes."""
    if mix is None or not mix.active:
        return None
    from .mixer import LaneModel
    tcol = engine.column_table if mix.col_lr else None
    return [LaneModel(mix, engine.backend.n_vocab, n, tcol) for n in n_tokens]


class OwnDevice:
    """The device coder of an engine of its own (a DeviceBackend that opts in): each step, the
    forward pass of the lanes that need the LLM, then one launch codes every active lane."""

    def __init__(self, backend, batch):
        self.backend, self.batch = backend, batch

    def begin(self, streams=None) -> None:
        if streams is not None:
            self.batch.start_decode(streams)

    def skip_conf(self):
        return self.batch.skip_conf()

    def step(self, need, groups, skipped, syms=None):
        logits = self.backend.forward(need, groups) if need else None
        if syms is None:
            return self.batch.decode(logits, need, skipped)
        self.batch.encode(logits, need, skipped, syms)
        return None

    def finish(self, k: int) -> list:
        return self.batch.finish(range(k))


def _device_lanes(engine, mix, n_tokens):
    """The lanes' ensembles and coders on the device (mixer/device.py): through the shared
    engine of a hub's View where it has a device coder (hub.View.device_coder), or on a device
    engine of this coder's own that opts in; only with the ensemble on and where the lanes fit
    in the device's free memory; else None (the host codes them: the same bytes)."""
    if mix is None or not mix.active:
        return None
    b = engine.backend
    tcol = engine.column_table if mix.col_lr else None
    shared = getattr(b, "device_coder", None)
    if shared is not None:
        return shared(mix, n_tokens, tcol)
    if not getattr(b, "codes_on_device", False):
        return None
    from .mixer.device import LaneBatch
    bound = max(n_tokens + [1])
    if LaneBatch.lanes_that_fit(mix, b.n_vocab, bound) < len(n_tokens):
        return None
    return OwnDevice(b, LaneBatch(mix, b.n_vocab, len(n_tokens), bound, tcol))


def _skip_rule(mix):
    """(threshold, cap) of mix's confidence skip: a lane whose skip confidence >= threshold,
    with at most cap tokens waiting for the LLM, codes its next token without it."""
    from .mixer import FRAC_SCALE
    return mix.skip / FRAC_SCALE, mix.skip_cap


def _run(engine, mix, lms, more, code, progress):
    """lockstep with the confidence skip that mix selects."""
    skip, cap = None, 0
    if lms is not None and mix.skip:
        thr, cap = _skip_rule(mix)

        def skip(lane):
            return lms[lane].skip_conf() >= thr
    lockstep(engine.backend, len(more.limits), more, code, progress, skip, cap)


def _run_device(engine, mix, dev, more, step, progress, streams=None):
    """lockstep_steps with every lane's coding on the device (dev: OwnDevice or hub's
    DeviceLanes); step(t, active, need, groups, skipped) -> the active lanes' tokens; encoding
    (streams None): the lanes' coded streams."""
    skips, cap = None, 0
    if mix.skip:
        thr, cap = _skip_rule(mix)

        def skips(lanes):
            conf = dev.skip_conf() if lanes else None
            return {lane for lane in lanes if conf[lane] >= thr}

    def whole(t, active, need, groups):
        coded = set(need)
        return step(t, active, need, groups, [lane for lane in active if lane not in coded])
    k = len(more.limits)
    return lockstep_steps(engine.backend, k, more, whole, progress, skips, cap,
                          begin=lambda: dev.begin(streams),
                          end=(lambda: dev.finish(k)) if streams is None else None)


class _Counts:
    """more(lane, t) for lanes of known token counts."""

    def __init__(self, n_tokens):
        self.limits = list(n_tokens)

    def __call__(self, lane, t):
        return t < self.limits[lane]


class _Bytes:
    """more(lane, t) for version-4 lanes: a lane goes on until its pieces fill its stream bytes
    (every piece is non-empty, so a lane of n stream bytes has at most n tokens)."""

    def __init__(self, stream_bytes):
        self.limits = list(stream_bytes)
        self.done = [0] * len(stream_bytes)

    def __call__(self, lane, t):
        return self.done[lane] < self.limits[lane]


def encode_segment(engine, data: bytes, lanes: int, max_escaped: int, progress=None, mix=None):
    """Code `data` neurally. Returns [(orig_bytes, lane payload)] per lane (lane payload =
    escape block + coded stream), or None if it is not text enough.

    mix: mixer.MixParams of the ensemble, or None / inactive for the LLM alone. Every lane's
    model state is sized by its stream bytes (the bound a version-4 decoder has)."""
    parts = split_lanes(data, lanes)
    toks, escs = [], []
    for part in parts:
        r = engine.tokenizer.tokenize(part, max_escaped=max_escaped)
        if r is None:
            return None
        toks.append(r[0])
        escs.append(r[1])
    bounds = [len(p) - sum(len(raw) for _, raw in e) for p, e in zip(parts, escs)]
    dev = _device_lanes(engine, mix, bounds)
    if dev is not None:
        def step(t, active, need, groups, skipped):
            syms = np.zeros(len(parts), dtype=np.int64)
            for lane in active:
                syms[lane] = toks[lane][t]
            dev.step(need, groups, skipped, syms)
            return syms[active]
        streams = _run_device(engine, mix, dev, _Counts([len(t) for t in toks]), step, progress)
        return [(len(part), pack_escapes(esc) + stream)
                for part, esc, stream in zip(parts, escs, streams)]
    encoders = [Encoder() for _ in parts]
    lms = _lane_models(engine, mix, bounds)

    def code(lane, t, row):
        sym = int(toks[lane][t])
        if lms is None:
            encoders[lane].encode_logits(row, sym)
        elif row is None:
            lms[lane].encode_skip(encoders[lane], sym)
        else:
            lms[lane].encode(encoders[lane], row, sym)
        return sym

    _run(engine, mix, lms, _Counts([len(t) for t in toks]), code, progress)
    return [(len(part), pack_escapes(esc) + enc.finish())
            for part, esc, enc in zip(parts, escs, encoders)]


def decode_lanes(engine, lanes, progress=None, mix=None) -> bytes:
    """Inverse of encode_segment for version-4 lanes [(orig_bytes, lane payload)]: each lane's
    tokens are decoded until their pieces and the escapes fill its orig_bytes."""
    escs, decoders, stream_bytes = [], [], []
    for orig, pay in lanes:
        esc, n = unpack_escapes(pay, orig, whole=False)
        escs.append(esc)
        decoders.append(Decoder(pay[n:]))
        stream_bytes.append(orig - sum(len(raw) for _, raw in esc))
    more = _Bytes(stream_bytes)
    return _decode(engine, mix, more, stream_bytes, escs, decoders, [o for o, _ in lanes],
                   progress)


def _decode(engine, mix, more, bounds, escs, decoders, origs, progress) -> bytes:
    toks = [[] for _ in origs]
    sizes = [len(p) for p in engine.tokenizer.pieces]
    done = getattr(more, "done", None)
    dev = _device_lanes(engine, mix, bounds)
    if dev is not None:
        def step(t, active, need, groups, skipped):
            syms = dev.step(need, groups, skipped)[active]
            for lane, sym in zip(active, syms):
                toks[lane].append(int(sym))
                if done is not None:
                    done[lane] += sizes[sym]
            return syms
        _run_device(engine, mix, dev, more, step, progress,
                    {lane: d._data.tobytes() for lane, d in enumerate(decoders)})
        return _merge(engine, origs, toks, escs)
    lms = _lane_models(engine, mix, bounds)

    def code(lane, t, row):
        if lms is None:
            sym = decoders[lane].decode_logits(row)
        elif row is None:
            sym = lms[lane].decode_skip(decoders[lane])
        else:
            sym = lms[lane].decode(decoders[lane], row)
        toks[lane].append(sym)
        if done is not None:
            done[lane] += sizes[sym]
        return sym

    _run(engine, mix, lms, more, code, progress)
    return _merge(engine, origs, toks, escs)


def _merge(engine, origs, toks, escs) -> bytes:
    pieces = engine.tokenizer.pieces
    out = []
    for orig, tk, esc in zip(origs, toks, escs):
        part = merge(b"".join([pieces[t] for t in tk]), esc)
        if len(part) != orig:
            raise NacritError("decoded lane has the wrong length (model or backend mismatch?)")
        out.append(part)
    return b"".join(out)


def decode_segment(engine, seg: Segment, payload: bytes, progress=None, mix=None) -> bytes:
    """A version 1-3 neural segment (lane table with token counts and escape block sizes)."""
    pos, escs, decoders = 0, [], []
    for lane in seg.lanes:
        escs.append(unpack_escapes(payload[pos:pos + lane.ins_bytes], lane.orig_bytes))
        pos += lane.ins_bytes
        decoders.append(Decoder(payload[pos:pos + lane.stream_bytes]))
        pos += lane.stream_bytes
    n_tokens = [lane.n_tokens for lane in seg.lanes]
    return _decode(engine, mix, _Counts(n_tokens), n_tokens, escs, decoders,
                   [lane.orig_bytes for lane in seg.lanes], progress)
