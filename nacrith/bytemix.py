"""Byte-level segment codec that mixes two models (issue 23 item 2; measured: scripts/byte_mix.py).

The coded unit is the byte. Each model (a `Track`) gives its probability of the next byte given
the bytes so far, without a tokenization of text the decoder has not seen: it keeps a beam of
tokenizations of the bytes since its anchor. A hypothesis h holds the tokens it adds to the
anchor, the bytes p of its open token, the model's distribution C at its last boundary and its
weight w (P(tokens), relative); its mass is W_h = w M(p), M(q) the mass under C of the tokens
whose piece starts with q (one range of the vocabulary sorted by piece bytes). Byte b has

    P(b) = sum_h w_h [ M_h(p + b) + P_h(t = p) F'_h(b) ] / sum_h W_h

F' the first-byte masses after p as a token (a model call, a "probe"; for an ended token lighter
than TAU x the mass, the first-byte masses at h's own boundary stand in, and the probe is made
only if that branch is kept). Each h branches into
"p + b goes on" and "p ended, b starts the next token"; branches lighter than REL x the
heaviest are dropped, at most K stay, and a hypothesis may hold at most LAG tokens beyond the
anchor before the heaviest one's first token wins. The tokens all hypotheses share are fed to the
anchor lane for good. When no branch lives, the heaviest hypothesis's bytes are re-cut into its
longest token prefixes ("dead"; a byte no token starts is skipped).

Bias head (archive version 8; the Track's bias_lr > 0: settings.bias_lr for the first model,
settings.bias_lr2 for the second): each model's logits get a per-token
log-space bias b before they are quantized, x_i = l_i + b_i; when tokens join the anchor, each
one y is learned from the frequencies f that predicted it (the hypothesis's distribution at
that token's start, q = f / 2^24): b_i -= lr r_i (q_i - [i = y]) in sorted order, clamped to
[-16, 16], then r_y = 1 / sqrt(1 / r_y^2 + (1 - q_y)^2) (AdaGrad on y, r = sqrt 2 at the start).
A distribution keeps the bias it was computed with.

The two models' byte distributions (each smoothed by EPS) are context-mixed bit by bit
(settings.cm, a bytecm.PRESETS key; archive versions 7 and 8: bytecm.py has the mixer, each bit
is coded with coder.py as a two-symbol table), or (cm = 0, version 6, read only) mixed linearly
with a two-expert Bayes weight and a fixed share ALPHA, quantized to 256 frequencies (each >= 1,
total 2^24) and coded with coder.py.

Invariants:
- before byte i, encoder and decoder hold the same state, a function of the settings and of
  bytes [0, i) alone, and code byte i with the same 256 frequencies; every byte value codes;
- the arithmetic is the same bits on every machine: token frequencies are cdf.quantize's
  integers of the portable engine's logits (themselves identical everywhere); masses are integer
  sums over ranges (order-free); weights and probabilities are float64 with + - * / only,
  element-wise (numpy) or in a fixed sequential order (CPython scalars, Numba without fastmath);
  no float reduction runs in numpy (its pairwise, SIMD-blocked sums are not fixed);
- model calls go to lane 0 of each model's own backend: a probe feeds a hypothesis's tokens
  after the anchor and rolls the lane back (pos -= n), which is exact because a token's logits
  depend only on the rows before it; the lane slides (its own ctx / 4) before a feed would pass
  ctx, never inside a probe; the anchor's tokens whose rows the last probe already wrote are
  committed by moving pos (the same rows a feed would write);
- a byte that no usable token (non-control, non-empty piece) starts gets only the eps share of
  that model; its dead end re-cut skips it (the model's state goes on as if it were absent).
"""
from __future__ import annotations

import bisect
import math
from typing import NamedTuple

import numpy as np
from numba import njit

from . import bytecm, cdf
from .coder import Decoder, Encoder
from .errors import NacritError
from .portable.vocab import BYTE, CONTROL


MAX_BEAM, MAX_LAG = 64, 16


class Settings(NamedTuple):
    """What encoder and decoder must share beyond the models (an archive records it)."""
    beam: int = 4               # K: hypotheses kept per model
    rel: float = 1e-3           # drop a hypothesis under rel x the heaviest
    lag: int = 2                # tokens a hypothesis may hold beyond the anchor
    alpha: float = 0.2          # fixed share of the two-expert Bayes mixture
    eps: float = 2.0 ** -12     # each model's smoothing: (1 - eps) P + eps / 256
    tau: float = 1e-3           # an ended token lighter than tau x the mass: probed only if kept
    cm: int = 2                 # bytecm.PRESETS key: bits context-mixed (frames.CM_PRESET_OF:
    #                             version 7 codes 1, version 8 codes 2); 0: linear (version 6)
    bias_lr: float = 0.38       # the first model's token bias head rate (version 8; 0 = off)
    bias_lr2: float = 0.38      # the second model's (version 8; both 0 in versions 6 and 7)

    def params(self) -> dict:
        """The archive's integer fields (container.PARAM_KEYS 37-45; cm_preset if cm, bias_ppm
        and bias2_ppm if either rate is not 0)."""
        p = dict(beam=self.beam, lag=self.lag, rel_ppm=round(self.rel * 1e6),
                 alpha_ppm=round(self.alpha * 1e6), eps_bits=round(-math.log2(self.eps)),
                 tau_ppm=round(self.tau * 1e6))
        if self.cm:
            p["cm_preset"] = self.cm
        if self.bias_lr or self.bias_lr2:
            p["bias_ppm"] = round(self.bias_lr * 1e6)
            p["bias2_ppm"] = round(self.bias_lr2 * 1e6)
        return p

    @classmethod
    def from_params(cls, p: dict) -> "Settings":
        """The settings an archive records (NacritError outside their bounds)."""
        st = cls(p["beam"], p["rel_ppm"] / 1e6, p["lag"], p["alpha_ppm"] / 1e6,
                 2.0 ** -p["eps_bits"], p["tau_ppm"] / 1e6, p.get("cm_preset", 0),
                 p.get("bias_ppm", 0) / 1e6, p.get("bias2_ppm", 0) / 1e6)
        if not (1 <= st.beam <= MAX_BEAM and st.lag <= MAX_LAG and p["rel_ppm"] <= 10 ** 6
                and p["alpha_ppm"] <= 10 ** 6 and 1 <= p["eps_bits"] <= 40
                and p["tau_ppm"] <= 10 ** 6 and p.get("bias_ppm", 0) <= 10 ** 6
                and p.get("bias2_ppm", 0) <= 10 ** 6
                and ("cm_preset" not in p or st.cm in bytecm.PRESETS)):
            raise NacritError("corrupt archive (byte coder settings out of range)")
        return st


class Vocab(NamedTuple):
    """A vocabulary sorted by piece bytes: the usable tokens whose piece starts with q are the
    sorted indices [lo, hi). Built once per model."""
    order: np.ndarray           # int64 [N]: token id of sorted index i
    buf: np.ndarray             # uint8: the sorted pieces, concatenated
    off: np.ndarray             # int64 [N + 1]: piece i is buf[off[i]:off[i + 1]]
    fb: np.ndarray              # int64 [257]: first-byte ranges [fb[c], fb[c + 1])
    pieces: list                # the sorted pieces (bytes), for bisect


class Dist(NamedTuple):
    """One model distribution over the sorted vocabulary."""
    fs: np.ndarray              # int64 [N]: cdf.quantize frequencies in sorted order
    total: int                  # sum of fs (the usable mass)
    first: np.ndarray           # int64 [256]: mass of the tokens starting with each byte


def vocab(pieces, types) -> Vocab:
    """Sort the usable tokens (non-empty piece, not CONTROL) by (piece, BYTE type last, id)."""
    V = len(pieces)
    types = list(types) or [1] * V
    use = [t for t in range(V) if pieces[t] and int(types[t]) != CONTROL]
    use.sort(key=lambda t: (pieces[t], int(types[t]) == BYTE, t))
    S = [pieces[t] for t in use]
    fb = np.array([bisect.bisect_left(S, bytes([c])) for c in range(256)] + [len(S)], np.int64)
    if not S:
        raise NacritError("the byte coder needs a vocabulary with text pieces")
    off = np.zeros(len(S) + 1, np.int64)
    off[1:] = np.cumsum([len(s) for s in S])
    return Vocab(np.array(use, np.int64), np.frombuffer(b"".join(S), np.uint8).copy(), off,
                 fb, S)


@njit(cache=True)
def _scan(fs, buf, off, lo, hi, L, cont, sub):
    """Over the sorted range [lo, hi) of tokens starting with a prefix of L bytes: cont[b] =
    mass of those whose next byte is b, sub[b] / sub[256 + b] = their range; returns the
    mass of the tokens equal to the prefix (they sort first)."""
    for b in range(256):
        cont[b] = 0
        sub[b] = 0
        sub[256 + b] = 0
    exact = 0
    i = lo
    while i < hi and off[i + 1] - off[i] == L:
        exact += fs[i]
        i += 1
    while i < hi:
        b = buf[off[i] + L]
        if cont[b] == 0 and sub[256 + b] == 0:
            sub[b] = i
        cont[b] += fs[i]
        sub[256 + b] = i + 1
        i += 1
    return exact


@njit(cache=True)
def _sorted(freqs, order, fb, fs, first):
    """fs = freqs in sorted order, first[c] = the mass of the range of byte c; the total."""
    tot = 0
    for c in range(256):
        acc = 0
        for i in range(fb[c], fb[c + 1]):
            f = freqs[order[i]]
            fs[i] = f
            acc += f
        first[c] = acc
        tot += acc
    return tot


@njit(cache=True)
def _quantize_probs(p, freqs):
    """The 256 frequencies of a mixed byte distribution: cdf.quantize's last two passes."""
    s, arg = cdf.sum_argmax(p)
    cdf.freqs_of(p, s, arg, freqs)


def _succ(q: bytes):
    """The least byte string above every string starting with q (None: there is none)."""
    q = q.rstrip(b"\xff")
    return None if not q else q[:-1] + bytes([q[-1] + 1])


BIAS_R0 = math.sqrt(2.0)    # the bias head's AdaGrad start: 1 / sqrt(G0), G0 = 1/2
BIAS_MAX = 16.0


@njit(cache=True)
def _biased(logits, b, x):
    """x = logits + b (float64, element-wise)."""
    for i in range(x.shape[0]):
        x[i] = np.float64(logits[i]) + b[i]


@njit(cache=True)
def _bias_step(b, r, fs, order, y, lr):
    """Token y (sorted index) was anchored where the model's frequencies were fs (sorted order):
    b_i -= lr r_i (q_i - [i = y]), q = fs / 2^24, clamped; then r_y = 1 / sqrt(1/r_y^2 + (1 - q_y)^2)."""
    inv = 1.0 / cdf.TOTAL
    for s in range(fs.shape[0]):
        t = order[s]
        q = fs[s] * inv
        g = q - 1.0 if s == y else q
        v = b[t] - lr * r[t] * g
        b[t] = BIAS_MAX if v > BIAS_MAX else (-BIAS_MAX if v < -BIAS_MAX else v)
    t = order[y]
    e = 1.0 - fs[y] * inv
    r[t] = 1.0 / np.sqrt(1.0 / (r[t] * r[t]) + e * e)


class _Hyp:
    __slots__ = ("toks", "p", "lo", "hi", "dist", "w", "chain")

    def __init__(self, toks, p, lo, hi, dist, w, chain=()):
        self.toks, self.p, self.lo, self.hi, self.dist, self.w = toks, p, lo, hi, dist, w
        self.chain = chain      # (sorted index, Dist) that predicted each of toks


class Track:
    """One model's byte predictor over a portable backend with one lane (its own ctx)."""

    def __init__(self, backend, settings: Settings = Settings(), bias_lr: float = 0.0):
        m = backend.m
        self.b, self.s, self.lr = backend, settings, bias_lr
        self.v = vocab(m.pieces, m.token_types)
        self._freqs = np.empty(backend.n_vocab, np.int64)
        self._scratch = np.empty(backend.n_vocab, np.float64)
        self._cont = np.empty(256, np.int64)
        self._sub = np.empty(512, np.int64)
        self._x = np.empty(backend.n_vocab, np.float64)
        self.calls = 0                  # model feeds (probes and commits)
        self.dead = 0                   # dead ends re-cut
        self.reset()

    # -- model calls ------------------------------------------------------------------------
    def _dist(self, logits) -> Dist:
        if self.lr:
            _biased(logits, self._bias, self._x)
            logits = self._x
        cdf.quantize_into(logits, self._freqs, self._scratch)
        fs, first = np.empty(len(self.v.order), np.int64), np.empty(256, np.int64)
        return Dist(fs, _sorted(self._freqs, self.v.order, self.v.fb, fs, first), first)

    def _feed(self, toks) -> np.ndarray:
        """The logits after the anchor and toks; the lane ends after toks. The rows that the last
        probe left past the anchor for a prefix of toks are kept, not fed again."""
        b, n = self.b, len(toks)
        while b.pos[0] + n > b.ctx:                         # slide now, never inside a probe
            b._slide(0)
            self._ahead = ()
        m, a = 0, self._ahead
        while m < n - 1 and m < len(a) and a[m] == toks[m]:
            m += 1
        b.pos[0] += m
        self.calls += 1
        lg = b.feed([0], [list(toks[m:])])[0]
        self._ahead = tuple(toks)               # their rows, from where the feed started
        return lg

    def _probe(self, toks) -> Dist:
        """The distribution after the anchor and toks (fed, then rolled back)."""
        d = self._dist(self._feed(toks))
        self.b.pos[0] -= len(toks)
        return d

    def _commit(self, toks) -> None:
        """toks join the anchor for good (their rows: already written by the last probe, or fed)."""
        k = len(toks)
        if self._ahead[:k] == tuple(toks):
            self.b.pos[0] += k
            self._ahead = self._ahead[k:]
        else:
            self._feed(toks)
            self._ahead = ()

    # -- the beam ---------------------------------------------------------------------------
    def reset(self) -> None:
        self._bias = np.zeros(self.b.n_vocab)
        self._r = np.full(self.b.n_vocab, BIAS_R0)
        self.b.reset()
        self._ahead = ()
        d = self._dist(self._feed([self.b.bos]))
        self._ahead = ()
        self.H = [_Hyp((), b"", 0, len(self.v.order), d, 1.0)]

    def _mass(self, h) -> float:
        """W_h (float): h's weight times its open token's prefix mass."""
        fs = h.dist.fs
        m = h.dist.total if h.lo == 0 and h.hi == len(fs) else int(fs[h.lo:h.hi].sum())
        return h.w * m / h.dist.total

    def predict(self) -> np.ndarray:
        """float64 [256]: the next byte's probability, smoothed by eps (sums to 1 up to
        rounding); keeps what `advance` needs."""
        v, eps = self.v, self.s.eps
        num = np.zeros(256)
        Z = 0.0
        scans = []
        for h in self.H:
            d = h.dist
            exact = _scan(d.fs, v.buf, v.off, h.lo, h.hi, len(h.p), self._cont, self._sub)
            a = h.w / d.total
            Z += a * (exact + int(self._cont.sum()))
            num += a * self._cont
            scans.append((self._cont.copy(), self._sub.copy(), exact, a))
        self._scans = []
        for h, (cont, sub, exact, a) in zip(self.H, scans):
            end = None
            if exact:                           # p is a token: it may end here
                key = h.toks + (int(v.order[h.lo]),)
                we = a * exact                  # P(tokens + t), relative
                # a light branch takes its first bytes from h's own boundary (probed if kept)
                pd = self._probe(key) if we >= self.s.tau * Z else None
                src = h.dist if pd is None else pd
                num += (we / src.total) * src.first
                end = (key, pd, we, src)
            self._scans.append((cont, sub, end))
        return (1.0 - eps) * (num / Z) + eps / 256

    def advance(self, c: int) -> None:
        """Byte c was coded: branch, prune, move the anchor."""
        s, v = self.s, self.v
        kids, W = [], []
        for h, (cont, sub, end) in zip(self.H, self._scans):
            if cont[c]:
                kids.append(_Hyp(h.toks, h.p + bytes([c]), int(sub[c]), int(sub[256 + c]),
                                 h.dist, h.w, h.chain))
                W.append(h.w * int(cont[c]) / h.dist.total)
            if end is not None and end[3].first[c]:
                key, pd, we, src = end
                kids.append(_Hyp(key, bytes([c]), int(v.fb[c]), int(v.fb[c + 1]), pd, we,
                                 h.chain + ((h.lo, h.dist),)))
                W.append(we * int(src.first[c]) / src.total)
        if not kids:
            kids, W = self._recut(c)
        top = max(W)
        keep = sorted((j for j in range(len(kids)) if W[j] >= s.rel * top),
                      key=lambda j: (-W[j], len(kids[j].toks), j))[:s.beam]
        H = [kids[j] for j in keep]
        if max(len(h.toks) for h in H) > s.lag:         # the heaviest's first token wins
            H = [h for h in H if h.toks[:1] == H[0].toks[:1]]
        for h in H:
            if h.dist is None:                          # a light branch that was kept
                h.dist = self._probe(h.toks)
        for h in H:
            h.w = h.w / top
        k = 0                                           # tokens every hypothesis shares
        while all(len(h.toks) > k for h in H) and len({h.toks[k] for h in H}) == 1:
            k += 1
        if k:
            if self.lr:
                for y, d in H[0].chain[:k]:
                    _bias_step(self._bias, self._r, d.fs, self.v.order, y, self.lr)
            self._commit(H[0].toks[:k])
            for h in H:
                h.toks = h.toks[k:]
                h.chain = h.chain[k:]
        self.H = H

    def _range(self, q: bytes):
        """The sorted range of the tokens whose piece starts with q."""
        S, s = self.v.pieces, _succ(q)
        return bisect.bisect_left(S, q), len(S) if s is None else bisect.bisect_left(S, s)

    def _recut(self, c: int):
        """No branch takes c: the heaviest hypothesis's bytes cut into longest token prefixes;
        a byte that is no token and starts no token left ends nowhere: the model skips it."""
        self.dead += 1
        v = self.v
        W = [self._mass(h) for h in self.H]
        h = self.H[W.index(max(W))]
        toks, rest, w, d, chain = h.toks, h.p + bytes([c]), h.w, h.dist, h.chain
        while rest:
            lo, hi = self._range(rest)
            if lo < hi:
                break
            k, i, j = len(rest), 0, 0
            while k > 1 and i == j:                     # the longest prefix that is a token
                k -= 1
                i, j = (bisect.bisect_left(v.pieces, rest[:k]),
                        bisect.bisect_right(v.pieces, rest[:k]))
            if i == j:                                  # none: the model skips rest[0]
                rest = rest[1:]
                continue
            w = w * int(d.fs[i:j].sum()) / d.total
            toks = toks + (int(v.order[i]),)
            chain = chain + ((i, d),)
            d = self._probe(toks)
            rest = rest[k:]
        if not rest:                                    # all skipped or cut: a boundary
            lo, hi = 0, len(v.pieces)
        kid = _Hyp(toks, rest, lo, hi, d, w if w > 0 else 1.0, chain)
        return [kid], [self._mass(kid)]


PROGRESS_BYTES = 4     # progress(1) per this many bytes (the bar counts model tokens, ~4 bytes)


def _run(tracks, n: int, code, code_bit, progress=None) -> bytes:
    """Code n bytes: code(freqs, i) codes byte i with a 256-entry table (linear mixing) and
    code_bit(f1, i, j) bit j of byte i with the table (2^24 - f1, f1) (settings.cm); each
    returns what it coded (encoder: from the data; decoder: decoded)."""
    if len(tracks) != 2 or tracks[0].s != tracks[1].s:
        raise NacritError("the byte coder mixes two models with the same settings")
    for t in tracks:
        t.reset()
    st = tracks[0].s
    if st.cm:
        cm = bytecm.new(bytecm.PRESETS[st.cm], n)
    wa = 0.5
    al = st.alpha
    freqs = np.empty(256, np.int64)
    out = bytearray()
    for i in range(n):
        pa, pb = (t.predict() for t in tracks)
        if st.cm:
            cm.llm[0] = pa
            cm.llm[1] = pb
            c = 0
            for j in range(8):
                bit = code_bit(bytecm.freq1(bytecm.bit_p(cm)), i, j)
                bytecm.bit_update(cm, bit)
                c = c << 1 | bit
        else:
            pm = wa * pa + (1.0 - wa) * pb
            _quantize_probs(pm, freqs)
            c = code(freqs, i)
            wa = wa * float(pa[c]) / float(pm[c])
            wa = (1.0 - al) * wa + al / 2
        out.append(c)
        for t in tracks:
            t.advance(c)
        if progress is not None and i % PROGRESS_BYTES == PROGRESS_BYTES - 1:
            progress(1)
    return bytes(out)


def encode(tracks, data: bytes, progress=None) -> bytes:
    """The coded stream of data (tracks: the two models' Tracks, with the same settings)."""
    enc = Encoder()

    def code(freqs, i):
        c = data[i]
        enc.encode_freqs(freqs, c)
        return c

    def code_bit(f1, i, j):
        bit = data[i] >> (7 - j) & 1
        enc.encode_bit(f1, bit)
        return bit

    _run(tracks, len(data), code, code_bit, progress)
    return enc.finish()


def decode(tracks, payload: bytes, n: int, progress=None) -> bytes:
    """The n bytes coded in payload."""
    dec = Decoder(payload)
    return _run(tracks, n, lambda freqs, i: dec.decode_freqs(freqs),
                lambda f1, i, j: dec.decode_bit(f1), progress)
