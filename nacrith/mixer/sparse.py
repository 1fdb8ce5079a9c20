"""Sparse models of the ensemble: hashed n-gram orders and the match model (lookup before a token,
learning after it), and the confidence-skip distribution that uses them alone.

Invariants: plain @njit (no on-disk cache of their own: they are compiled into the stamped
kernels of kernels.py, so an edit here can never leave a stale copy in use); _lookup_sparse writes
this step's predictions (State.preds, NGram.bkt/hit, the match prediction) and _learn_sparse,
called after the token was coded on both sides, is the only place these tables change.
"""
import numpy as np
from numba import njit

from ..cdf import TOTAL
from .params import MATCH_VERIFY, N_MBUCKETS
from .state import I_COL, I_MLEN, I_MPRED, I_MPTR, I_T, S_MC

_PRIME = np.uint64(0x9E3779B97F4A7C15)
_PRIME2 = np.uint64(0xC2B2AE3D27D4EB4F)


@njit
def _ctx_hash(hist, t, n, salt):
    """Hash of the n tokens hist[t-n .. t-1] (uint64)."""
    h = np.uint64(salt) * _PRIME2 + np.uint64(n)
    for j in range(1, n + 1):
        h = (h + np.uint64(hist[t - j]) + np.uint64(1)) * _PRIME
        h ^= h >> np.uint64(29)
    return h


@njit
def _mbucket(mlen):
    if mlen < 16:
        return mlen
    b = 16 + (mlen - 16) // 16
    return b if b < N_MBUCKETS else N_MBUCKETS - 1


@njit
def _lookup_sparse(S):
    """n-gram and match predictions for the next token (mk_*, I_NGB/I_NGHIT, I_MPRED, S_MC).

    Returns hit * 256 + mb: the highest n-gram order that hit and the match-length bucket."""
    cfg, ist, fst, hist = S.cfg, S.lane.ist, S.lane.fst, S.lane.hist
    ng_tag, ng_tok, ng_cnt, ngb = S.ng.tag, S.ng.tok, S.ng.cnt, S.ng.bkt
    nghit, mcnt, mk_tok, mk_c = S.ng.hit, S.match.cnt, S.preds.tok, S.preds.c
    mk_n, mk_e, mk_s = S.preds.n, S.preds.e, S.preds.s
    t = ist[I_T]
    N = cfg.ng
    k = 1
    hit = 0
    for o in range(N):
        order = o + 1
        mk_n[k] = 0
        mk_e[k] = 1.0
        ngb[o] = -1
        nghit[o] = 0
        if t >= order:
            h = _ctx_hash(hist, t, order, order)
            bits = cfg.ng_bits
            bkt = np.int64(h >> np.uint64(64 - bits))
            tag = np.int64(h & np.uint64(0xFFFFFFFF)) | 1
            ngb[o] = bkt
            if ng_tag[o, bkt] == tag:
                nghit[o] = 1
                tot = 0
                d = 0
                for j in range(ng_cnt.shape[2]):
                    c = ng_cnt[o, bkt, j]
                    if c > 0:
                        tot += c
                        d += 1
                if tot > 0:
                    hit = order
                    esc = cfg.ng_esc * d
                    den = 1.0 / (tot + esc)
                    nn = 0
                    for j in range(ng_cnt.shape[2]):
                        c = ng_cnt[o, bkt, j]
                        if c > 0:
                            mk_tok[k, nn] = ng_tok[o, bkt, j]
                            mk_c[k, nn] = c * den
                            mk_s[k, nn] = j
                            nn += 1
                    mk_n[k] = nn
                    mk_e[k] = esc * den
        k += 1
    mb = 0
    ist[I_MPRED] = -1
    if cfg.m_min > 0:
        mk_n[k] = 0
        mk_e[k] = 1.0
        mlen = ist[I_MLEN]
        if mlen > 0:
            bk = _mbucket(mlen)
            c = (mcnt[bk, 0] + 0.5) / (mcnt[bk, 0] + mcnt[bk, 1] + 1.0)
            pred = hist[ist[I_MPTR]]
            ist[I_MPRED] = pred
            fst[S_MC] = c
            mk_tok[k, 0] = pred
            mk_c[k, 0] = c
            mk_n[k] = 1
            mk_e[k] = 1.0 - c
            mb = 1 if mlen < 16 else (2 if mlen < 32 else 3)
        k += 1
    return hit * 256 + mb


@njit
def _learn_sparse(S, y):
    """n-gram counts, history and match model learn token y (after _lookup_sparse)."""
    cfg, ist, hist, ng_tag = S.cfg, S.lane.ist, S.lane.hist, S.ng.tag
    ng_tok, ng_cnt, ng_b, ngb = S.ng.tok, S.ng.cnt, S.ng.b, S.ng.bkt
    nghit, mt, mcnt, tcol = S.ng.hit, S.match.table, S.match.cnt, S.col.tcol
    t = ist[I_T]
    if t >= hist.shape[0]:
        raise ValueError("LaneModel: more tokens coded than the lane was created for")
    # ---- n-gram counts
    N = cfg.ng
    lim = cfg.ng_lim
    for o in range(N):
        bkt = ngb[o]
        if bkt < 0:
            continue
        if nghit[o] == 0:
            h = _ctx_hash(hist, t, o + 1, o + 1)
            ng_tag[o, bkt] = np.int64(h & np.uint64(0xFFFFFFFF)) | 1
            for j in range(ng_cnt.shape[2]):
                ng_cnt[o, bkt, j] = 0
                if cfg.sb != 0:
                    ng_b[o, bkt, j] = 0.0
                ng_tok[o, bkt, j] = 0
        found = -1
        empty = -1
        low = 0
        for j in range(ng_cnt.shape[2]):
            c = ng_cnt[o, bkt, j]
            if c > 0 and ng_tok[o, bkt, j] == y:
                found = j
                break
            if c == 0 and empty < 0:
                empty = j
            if c < ng_cnt[o, bkt, low]:
                low = j
        if found >= 0:
            c = ng_cnt[o, bkt, found] + 1
            ng_cnt[o, bkt, found] = c
            if c > lim:
                for j in range(ng_cnt.shape[2]):
                    ng_cnt[o, bkt, j] = (ng_cnt[o, bkt, j] + 1) >> 1
        else:
            j = empty if empty >= 0 else low
            ng_tok[o, bkt, j] = y
            ng_cnt[o, bkt, j] = 1
            if cfg.sb != 0:
                ng_b[o, bkt, j] = 0.0

    # ---- column after y: bytes after its last line break, or the column plus its length
    if cfg.col != 0:
        ist[I_COL] = tcol[2, y] if tcol[1, y] != 0 else ist[I_COL] + tcol[0, y]

    # ---- match model
    hist[t] = y
    nt = t + 1
    ist[I_T] = nt
    kk = cfg.m_min
    if kk > 0:
        mlen = ist[I_MLEN]
        if mlen > 0:
            bk = _mbucket(mlen)
            if ist[I_MPRED] == y:
                mcnt[bk, 0] += 1.0
                ist[I_MLEN] = mlen + 1
                ist[I_MPTR] += 1
            else:
                mcnt[bk, 1] += 1.0
                ist[I_MLEN] = 0
            if mcnt[bk, 0] + mcnt[bk, 1] > cfg.m_lim:
                mcnt[bk, 0] *= 0.5
                mcnt[bk, 1] *= 0.5
        if nt >= kk:
            h = _ctx_hash(hist, nt, kk, 0)
            slot = np.int64(h >> np.uint64(64 - cfg.m_bits))
            if ist[I_MLEN] == 0:
                cand = mt[slot] - 1          # index of the token that followed that context
                if cand > 0:
                    L = 0
                    while L < MATCH_VERIFY and cand - 1 - L >= 0 and \
                            hist[cand - 1 - L] == hist[nt - 1 - L]:
                        L += 1
                    if L >= kk:
                        ist[I_MLEN] = L
                        ist[I_MPTR] = cand
            mt[slot] = nt + 1


SKIP_UNIFORM = 1.0 / 64    # share of a skipped token's escape mass spread uniformly


@njit
def _skip_conf(S):
    """Probability the match model gives its prediction for the next token (0.0 if none)."""
    cfg, ist, mcnt = S.cfg, S.lane.ist, S.match.cnt
    if cfg.m_min == 0 or ist[I_MLEN] <= 0:
        return 0.0
    bk = _mbucket(ist[I_MLEN])
    return (mcnt[bk, 0] + 0.5) / (mcnt[bk, 0] + mcnt[bk, 1] + 1.0)


@njit
def _skip_predict(S, freqs):
    """Confidence skip: the next token's distribution without the LLM (only when _skip_conf > 0):
    P = c [match prediction] + (1 - c) ((1 - u) NG + u / V), NG the candidates of the highest
    n-gram order that hit, normalised (u = 1 when none hit). Every f >= 1, total 2^24.  In
    pieces (as ensemble._predict, for the device's block of threads): _skip_head, the rows,
    _skip_tail."""
    fu, hit = _skip_head(S, freqs.shape[0])
    for i in range(freqs.shape[0]):
        freqs[i] = fu
    _skip_tail(S, freqs, fu, hit)


@njit
def _skip_head(S, n):
    """The sparse lookup of a skipped token: (the f of every token outside the predictions,
    the highest n-gram order that hit)."""
    hit = _lookup_sparse(S) >> 8
    esc = 1.0 - S.lane.fst[S_MC]
    uni = esc * SKIP_UNIFORM if hit > 0 else esc
    return 1 + np.int64(uni / n * np.float64(TOTAL - n)), hit


@njit
def _skip_tail(S, freqs, fu, hit):
    """After every f is fu: the n-gram candidates' and the match prediction's f and the
    remainder."""
    ist, fst, pr = S.lane.ist, S.lane.fst, S.preds
    mk_tok, mk_c, mk_n = pr.tok, pr.c, pr.n
    c = fst[S_MC]
    pred = ist[I_MPRED]
    n = freqs.shape[0]
    scale = np.float64(TOTAL - n)
    esc = 1.0 - c
    uni = esc * SKIP_UNIFORM if hit > 0 else esc
    tot = fu * n
    if hit > 0:
        ng = esc - uni
        cs = 0.0
        for jj in range(mk_n[hit]):
            cs += mk_c[hit, jj]
        for jj in range(mk_n[hit]):
            tok = mk_tok[hit, jj]
            f = fu + np.int64(ng * (mk_c[hit, jj] / cs) * scale)
            tot += f - freqs[tok]
            freqs[tok] = f
    f = freqs[pred] + np.int64(c * scale)
    tot += f - freqs[pred]
    freqs[pred] = f + (TOTAL - tot)
