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
  every token is coded with the ensemble's frequencies instead of the LLM's;
- lane payload = escape block + coded stream; escape block = varint count, then per escape
  varint(gap from the end of the previous escape), varint(length), raw bytes.
"""
from __future__ import annotations

import numpy as np

from .coder import Decoder, Encoder
from .container import NEURAL, Lane, Reader, Segment, hash32, hash64, put_varint
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


def lockstep(backend, n_tokens: list[int], code, progress=None, skip=None, cap: int = 0) -> None:
    """Drive the LLM over all lanes; code(lane, t, logits_row) codes token t and returns it.

    skip(lane) -> bool (optional): code the lane's token t without the LLM (code gets row None);
    asked before step t, only while at most `cap` tokens of that lane wait for the LLM."""
    backend.reset()
    k = len(n_tokens)
    wait = [[backend.bos] for _ in range(k)]       # tokens not yet fed to the LLM, per lane
    for t in range(max(n_tokens, default=0)):
        active = [lane for lane in range(k) if t < n_tokens[lane]]
        if skip is None:
            need = active
        else:
            need = [lane for lane in active if len(wait[lane]) > cap or not skip(lane)]
        logits = backend.feed(need, [wait[lane] for lane in need]) if need else None
        i = 0
        for lane in active:
            if i < len(need) and need[i] == lane:
                wait[lane] = [code(lane, t, logits[i])]
                i += 1
            else:
                wait[lane].append(code(lane, t, None))
        if progress is not None:
            progress(len(active))


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


def unpack_escapes(block: bytes, lane_len: int):
    r = Reader(block, "escape table")
    escapes, end = [], 0
    for _ in range(r.varint(lane_len)):
        off = end + r.varint(lane_len)
        raw = r.take(r.varint(lane_len))
        end = off + len(raw)
        if end > lane_len:
            raise NacritError("corrupt escape table (escape beyond lane end)")
        escapes.append((off, raw))
    r.done()
    return escapes


def _lane_models(engine, mix, n_tokens):
    """One fresh ensemble state per lane (None: the LLM-only path of coder.py)."""
    if mix is None or not mix.active:
        return None
    from .mixer import LaneModel
    tcol = engine.column_table if mix.col_lr else None
    return [LaneModel(mix, engine.backend.n_vocab, n, tcol) for n in n_tokens]


def _run(engine, mix, lms, n_tokens, code, progress):
    """lockstep with the confidence skip that mix selects."""
    skip, cap = None, 0
    if lms is not None and mix.skip:
        from .mixer import FRAC_SCALE
        thr = mix.skip / FRAC_SCALE
        skip, cap = (lambda lane: lms[lane].skip_conf() >= thr), mix.skip_cap
    lockstep(engine.backend, n_tokens, code, progress, skip, cap)


def encode_segment(engine, data: bytes, lanes: int, max_escaped: int, progress=None, mix=None):
    """Code `data` neurally. Returns (Segment, payload) or None if it is not text enough.

    mix: mixer.MixParams of the ensemble, or None / inactive for the LLM alone."""
    parts = split_lanes(data, lanes)
    toks, escs = [], []
    for part in parts:
        r = engine.tokenizer.tokenize(part, max_escaped=max_escaped)
        if r is None:
            return None
        toks.append(r[0])
        escs.append(r[1])
    encoders = [Encoder() for _ in parts]
    lms = _lane_models(engine, mix, [len(t) for t in toks])

    def code(lane, t, row):
        sym = int(toks[lane][t])
        if lms is None:
            encoders[lane].encode_logits(row, sym)
        elif row is None:
            lms[lane].encode_skip(encoders[lane], sym)
        else:
            lms[lane].encode(encoders[lane], row, sym)
        return sym

    _run(engine, mix, lms, [len(t) for t in toks], code, progress)
    payload = bytearray()
    lane_table = []
    for part, tk, esc, enc in zip(parts, toks, escs, encoders):
        block, stream = pack_escapes(esc), enc.finish()
        payload += block + stream
        lane_table.append(Lane(len(part), len(tk), len(block), len(stream)))
    payload = bytes(payload)
    seg = Segment(NEURAL, len(data), len(payload), hash64(data), hash32(payload), lane_table)
    return seg, payload


def decode_segment(engine, seg: Segment, payload: bytes, progress=None, mix=None) -> bytes:
    pos, escs, decoders = 0, [], []
    for lane in seg.lanes:
        escs.append(unpack_escapes(payload[pos:pos + lane.ins_bytes], lane.orig_bytes))
        pos += lane.ins_bytes
        decoders.append(Decoder(payload[pos:pos + lane.stream_bytes]))
        pos += lane.stream_bytes
    n_tokens = [lane.n_tokens for lane in seg.lanes]
    toks = [np.zeros(n, dtype=np.int32) for n in n_tokens]
    lms = _lane_models(engine, mix, n_tokens)

    def code(lane, t, row):
        if lms is None:
            sym = decoders[lane].decode_logits(row)
        elif row is None:
            sym = lms[lane].decode_skip(decoders[lane])
        else:
            sym = lms[lane].decode(decoders[lane], row)
        toks[lane][t] = sym
        return sym

    _run(engine, mix, lms, n_tokens, code, progress)
    pieces = engine.tokenizer.pieces
    out = []
    for lane, tk, esc in zip(seg.lanes, toks, escs):
        stream = b"".join([pieces[t] for t in tk.tolist()])
        part = merge(stream, esc)
        if len(part) != lane.orig_bytes:
            raise NacritError("decoded lane has the wrong length (model or backend mismatch?)")
        out.append(part)
    return b"".join(out)
