"""The ensemble proper: bias head and temperature, mixer weight sets, log-linear boost, SSE of the
top token and column bias over the LLM distribution, the guard (a fixed-share mixture of that
ensemble with the bare LLM), quantized to 24-bit frequencies (_predict), and their online
learning (_update).

Invariants: plain @njit (compiled into the stamped kernels of kernels.py, never cached alone);
every float that reaches the coder comes from IEEE basic operations in a fixed order without
fastmath, exp is cdf._exp_nonpos, no log is taken; _predict leaves in the state what _update of
the same token needs (and nothing else carries over); every f >= 1 and the total is 2^24.
_predict is a sequence of pieces: the *_rows passes touch rows range(lo, hi, st) only (the CPU
runs them over every row; mixer/device.py splits them over a block of threads where the sums
between them are exact, cfg.isum), the others are serial.
"""
import math

import numpy as np
from numba import njit

from ..cdf import TOTAL, _exp_nonpos, _max_ignoring_nan
from .params import (APM_DS, APM_N, APM_PMAX, APM_PMIN, APM_S0, BIAS_MAX, BOOST_MAX, COL_MAX,
                     COL_NB, MIX_LLM_BUCKETS, MIX_MATCH_BUCKETS, SB_MAX, TAU_MAX, TAU_MIN)
from .sparse import _learn_sparse, _lookup_sparse
from .state import (I_APMI, I_APMT, I_COL, I_GT, I_HAVEP, I_MPRED, I_NCAND, I_SET, I_SET2, I_Y,
                    S_A, S_APMP, S_APMR, S_EL, S_GW, S_INVS, S_IZ, S_PN, S_RINVS,
                    S_SO, S_TAU)

@njit
def _add_cand(cand_tok, cand_x, n, tok, x):
    for j in range(n):
        if cand_tok[j] == tok:
            cand_x[j] += x
            return n
    cand_tok[n] = tok
    cand_x[n] = x
    return n + 1


@njit
def _feat(mk_tok, mk_c, mk_n, k, tok):
    """Feature of model k for token tok: its explicit probability c_k(tok) (0 if none)."""
    for jj in range(mk_n[k]):
        if mk_tok[k, jj] == tok:
            return mk_c[k, jj]
    return 0.0


@njit
def _exp_signed(g):
    """exp(g) for |g| <= BOOST_MAX from the deterministic exp of a non-positive argument."""
    if g <= 0.0:
        return _exp_nonpos(g)
    return 1.0 / _exp_nonpos(-g)


@njit
def _sum8(p, n):
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    i = 0
    while i + 8 <= n:
        s0 += p[i]
        s1 += p[i + 1]
        s2 += p[i + 2]
        s3 += p[i + 3]
        s4 += p[i + 4]
        s5 += p[i + 5]
        s6 += p[i + 6]
        s7 += p[i + 7]
        i += 8
    while i < n:
        s0 += p[i]
        i += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


# Exact sums (preset 5, cfg.isum): p and the guard's r are rounded to multiples of 2^-32, and each
# term p l to a multiple of 2^-20 after clamping |p l| to EL_MAX, before they are summed.  With at
# most params.ISUM_MAX_V = 2^21 terms every partial sum is then an integer multiple of its grid
# below 2^53 grid steps, an exact double, so the sums (S, E, the column buckets' Q_j and the
# guard's sum) have the same bits in any order or split.
P_GRID = 4294967296.0            # 2^32
EL_GRID = 1048576.0              # 2^20
EL_MAX = 2048.0
_RN = 4503599627370496.0         # 2^52: (x + 2^52) - 2^52 rounds x to an integer, 0 <= x < 2^52
_RN_S = 6755399441055744.0       # 1.5 * 2^52: the same for |x| < 2^51


@njit
def _grid(p):
    """round(p 2^32) / 2^32 (ties to even; 0 <= p <= 1): a term of an exact sum."""
    return ((p * P_GRID + _RN) - _RN) / P_GRID


@njit
def _pl(p, l, grid):
    v = p * np.float64(l)
    v = v if p > 0.0 else 0.0           # p = 0 where l is -inf or NaN
    if grid == 0:
        return v
    v = v if v < EL_MAX else EL_MAX
    v = v if v > -EL_MAX else -EL_MAX
    return ((v * EL_GRID + _RN_S) - _RN_S) / EL_GRID


@njit
def _sum8_pl(p, logits, n, grid):
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    i = 0
    while i + 8 <= n:
        s0 += _pl(p[i], logits[i], grid)
        s1 += _pl(p[i + 1], logits[i + 1], grid)
        s2 += _pl(p[i + 2], logits[i + 2], grid)
        s3 += _pl(p[i + 3], logits[i + 3], grid)
        s4 += _pl(p[i + 4], logits[i + 4], grid)
        s5 += _pl(p[i + 5], logits[i + 5], grid)
        s6 += _pl(p[i + 6], logits[i + 6], grid)
        s7 += _pl(p[i + 7], logits[i + 7], grid)
        i += 8
    while i < n:
        s0 += _pl(p[i], logits[i], grid)
        i += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit
def _col_bucket(tcol, i, col):
    """Column-bias bucket of token i at column col: the column where its bytes up to the first
    line break end (capped at COL_NB - 1), plus COL_NB if it has a line break."""
    e = col + tcol[0, i]
    e = e if e < COL_NB else COL_NB - 1
    return e + COL_NB * tcol[1, i]


@njit
def _set_weights(mz, sel, K, fl, w, off):
    """w[off + j] = fl + (1 - K fl) softmax(z of weight set sel)_j, j < K."""
    zmax = mz[sel, 0]
    for j in range(1, K):
        zmax = mz[sel, j] if mz[sel, j] > zmax else zmax
    zs = 0.0
    for j in range(K):
        e = _exp_nonpos(mz[sel, j] - zmax)
        w[off + j] = e
        zs += e
    sc = (1.0 - K * fl) / zs
    for j in range(K):
        w[off + j] = fl + w[off + j] * sc


# ---- _predict in pieces.  The CPU runs them in order over every row (lo, hi, st = 0, V, 1);
# the device (device.py, exact-sum presets) runs the row passes (*_rows: rows range(lo, hi, st))
# over a block of threads per lane and the serial pieces on one thread, with the order-free
# reductions (max, first index of the max, exact sums, integer sums) between them.

@njit
def _bias_pre(S):
    """The scalars pass 1 reads before any row is written: (kind, y, step, by, G); kind 0: no
    bias head, 1: no pending step, 2: the plain step, 3: the AdaGrad step."""
    cfg, ist, fst, p = S.cfg, S.lane.ist, S.lane.fst, S.lane.p
    if cfg.bias == 0:
        return 0, 0, 0.0, 0.0, 0.0
    if ist[I_HAVEP] == 0:
        return 1, 0, 0.0, 0.0, 0.0
    lr = cfg.bias_lr
    step = lr * fst[S_INVS]
    y = ist[I_Y]
    if cfg.bias != 2:
        return 2, y, step, 0.0, 0.0
    # AdaGrad-like: token i steps by lr * r_i, r_i = 1 / sqrt(G0 + sum over the earlier
    # occurrences of i of (1 - q_i)^2) (bias_g holds r; only the coded token's r changes)
    bias_g = S.bias.r
    gy = 1.0 - p[y] * fst[S_INVS]
    by = S.bias.b[y] + lr * bias_g[y] * gy          # the coded token's step, with the old r_y
    G = 1.0 / (bias_g[y] * bias_g[y]) + gy * gy
    return 3, y, step, by, G


@njit
def _x_rows(logits, S, kind, y, step, by, lo, hi, st):
    """Pass 1 on rows range(lo, hi, st): the pending bias step of the previous token, then
    x = tau l + b, plus the column bias cb[bucket of token i at the current column]."""
    cfg, fst, p, xbuf = S.cfg, S.lane.fst, S.lane.p, S.lane.xbuf
    bias, bias_g = S.bias.b, S.bias.r
    tau = fst[S_TAU]
    if kind == 3:
        for i in range(lo, hi, st):
            b = bias[i] - step * p[i] * bias_g[i]
            b = by if i == y else b
            b = b if b > -BIAS_MAX else -BIAS_MAX
            b = b if b < BIAS_MAX else BIAS_MAX
            bias[i] = b
            xbuf[i] = tau * np.float64(logits[i]) + b
    elif kind == 2:
        lr = cfg.bias_lr
        for i in range(lo, hi, st):
            b = bias[i] - step * p[i] + (lr if i == y else 0.0)
            b = b if b > -BIAS_MAX else -BIAS_MAX
            b = b if b < BIAS_MAX else BIAS_MAX
            bias[i] = b
            xbuf[i] = tau * np.float64(logits[i]) + b
    elif kind == 1:
        for i in range(lo, hi, st):
            xbuf[i] = tau * np.float64(logits[i]) + bias[i]
    else:
        for i in range(lo, hi, st):
            xbuf[i] = tau * np.float64(logits[i])
    if cfg.col != 0:
        colb, tcol, col = S.col.b, S.col.tcol, S.lane.ist[I_COL]
        for i in range(lo, hi, st):
            xbuf[i] += colb[_col_bucket(tcol, i, col)]


@njit
def _x_post(S, kind, y, G):
    """After every row of pass 1: the coded token's new AdaGrad r."""
    if kind == 3:
        S.bias.r[y] = 1.0 / math.sqrt(G)


@njit
def _mid(S, arg, s, el):
    """The serial middle of _predict, from pass 3's sums S = sum p and E = sum p l and the first
    index arg of the maximum: 1 / S, the sparse models, the mixer weights, the candidates and
    their boost, the SSE of the top token.  Returns (aqi, iz, so, pn, T, ncand)."""
    cfg, ist, fst, p = S.cfg, S.lane.ist, S.lane.fst, S.lane.p
    ng_b, ngb = S.ng.b, S.ng.bkt
    mz, w, beta = S.mix.z, S.mix.w, S.mix.beta
    mk_tok, mk_c, mk_n, mk_e = S.preds.tok, S.preds.c, S.preds.n, S.preds.e
    mk_s, cand_tok, cand_x, cand_g = S.preds.s, S.cands.tok, S.cands.x, S.cands.g
    apm, apm_nodes = S.sse.t, S.sse.nodes
    invs = 1.0 / s
    fst[S_INVS] = invs
    fst[S_EL] = el * invs
    ist[I_HAVEP] = 1
    qmax = p[arg] * invs

    # ---- sparse models
    K = cfg.K
    N = cfg.ng
    ncand = 0
    hm = _lookup_sparse(S)
    hit = hm >> 8
    mb = hm & 255
    # ---- mixer weights of the selected set
    lb = 0 if qmax < 0.3 else (1 if qmax < 0.6 else (2 if qmax < 0.9 else 3))
    sel = (hit * MIX_MATCH_BUCKETS + mb) * MIX_LLM_BUCKETS + lb
    ist[I_SET] = sel
    A = 1.0
    if K > 1:
        _set_weights(mz, sel, K, cfg.floor, w, 0)
    if K > 1 and cfg.mix2 != 0:
        # second weight set, selected by the agreement of the LLM argmax with the top candidate
        # of the highest n-gram order that hit (and its probability) and with the match model;
        # w = (w_sel + w_sel2) / 2 (both sets are trained on their own mixture)
        ag = 0
        cb = 0
        if hit > 0:
            top = 0
            for jj in range(1, mk_n[hit]):
                if mk_c[hit, jj] > mk_c[hit, top]:
                    top = jj
            ag = 1 if mk_tok[hit, top] == arg else 2
            cc = mk_c[hit, top]
            cb = 0 if cc < 0.4 else (1 if cc < 0.7 else (2 if cc < 0.9 else 3))
        ma = 0 if ist[I_MPRED] < 0 else (1 if ist[I_MPRED] == arg else 2)
        sel2 = cfg.nsets + ((hit * 3 + ag) * 4 + cb) * 3 + ma
        ist[I_SET2] = sel2
        for j in range(K):
            w[K + j] = w[j]
        _set_weights(mz, sel2, K, cfg.floor, w, 2 * K)
        for j in range(K):
            w[j] = 0.5 * (w[K + j] + w[2 * K + j])
    if K > 1:
        A = w[0]
        for j in range(1, K):
            A += w[j] * mk_e[j]
            for jj in range(mk_n[j]):
                ncand = _add_cand(cand_tok, cand_x, ncand, mk_tok[j, jj], w[j] * mk_c[j, jj])
    fst[S_A] = A
    ist[I_NCAND] = ncand

    # ---- log-linear boost of the candidates: P'_c = P_c exp(g_c) / Z, g_c = sum_k beta_k f_k(c)
    aqi = A * invs
    Z = 1.0
    use_boost = cfg.boost != 0
    use_sb = cfg.sb != 0
    for j in range(ncand):
        c = cand_tok[j]
        pc = p[c] * aqi + cand_x[j]
        cand_x[j] = pc
        pb = pc
        if use_boost or use_sb:
            g = 0.0
            if use_boost:
                for kk in range(1, K):
                    g += beta[sel, kk] * _feat(mk_tok, mk_c, mk_n, kk, c)
            if use_sb:
                # slot biases: a learned log-space offset per (n-gram context, token)
                for kk in range(1, N + 1):
                    for jj in range(mk_n[kk]):
                        if mk_tok[kk, jj] == c:
                            g += np.float64(ng_b[kk - 1, ngb[kk - 1], mk_s[kk, jj]])
            g = g if g < BOOST_MAX else BOOST_MAX
            g = g if g > -BOOST_MAX else -BOOST_MAX
            pb = pc * _exp_signed(g)
        cand_g[j] = pb
        Z += pb - pc
    iz = 1.0 / Z
    fst[S_IZ] = iz
    for j in range(ncand):
        cand_g[j] = cand_g[j] * iz

    # ---- SSE: the top token T (highest P among the candidates and the LLM argmax) gets
    # P''_T = P_T + apm_w (a - P_T), a interpolated from an adaptive table indexed by a small
    # context and P_T's position between fixed nodes; every other token is scaled by
    # (1 - P''_T) / (1 - P_T)
    so = 1.0
    pn = 0.0
    T = -1
    ist[I_APMT] = -1
    if cfg.apm != 0:
        T = arg
        pT = p[arg] * aqi * iz
        for j in range(ncand):
            if cand_tok[j] == arg:
                pT = cand_g[j]
        for j in range(ncand):
            if cand_g[j] > pT:
                T = cand_tok[j]
                pT = cand_g[j]
        if pT < APM_PMAX:
            ctx = ((hit * MIX_MATCH_BUCKETS + mb) * 2 + (1 if T == arg else 0)) * 2 + \
                (1 if T == ist[I_MPRED] else 0)
            jn = 0
            r = 0.0
            if pT >= apm_nodes[APM_N - 1]:
                jn = APM_N - 2
                r = 1.0
            elif pT > apm_nodes[0]:
                while apm_nodes[jn + 1] <= pT:
                    jn += 1
                r = (pT - apm_nodes[jn]) / (apm_nodes[jn + 1] - apm_nodes[jn])
            idx = ctx * APM_N + jn
            a = apm[idx] * (1.0 - r) + apm[idx + 1] * r
            pn = pT + cfg.apm_w * (a - pT)
            pn = pn if pn > APM_PMIN else APM_PMIN
            pn = pn if pn < APM_PMAX else APM_PMAX
            so = (1.0 - pn) / (1.0 - pT)
            ist[I_APMT] = T
            ist[I_APMI] = idx
            fst[S_APMR] = r
            fst[S_APMP] = a
        else:
            T = -1

    fst[S_SO] = so
    fst[S_PN] = pn
    return aqi, iz, so, pn, T, ncand


@njit
def _q_scales(S, aqi, iz, so, T, n):
    """(aq, gq) of pass 4: P_i (2^24 - V) = p_i aq (the guard's R_i (2^24 - V) = r_i gq)."""
    scale = np.float64(TOTAL - n)
    aq = aqi * iz * scale
    if T >= 0:
        aq = aq * so
    if S.cfg.guard == 0:
        return aq, 0.0
    wg = S.lane.fst[S_GW]
    return aq * wg, (1.0 - wg) * S.lane.fst[S_RINVS] * scale


@njit
def _q_rows(S, freqs, aq, gq, lo, hi, st):
    """Pass 4 on rows range(lo, hi, st): f_i = 1 + floor(p_i aq) (with the guard:
    1 + floor(p_i aq + r_i gq)); returns their sum."""
    p = S.lane.p
    tot = 0
    if S.cfg.guard == 0:
        for i in range(lo, hi, st):
            f = 1 + np.int64(p[i] * aq)
            freqs[i] = f
            tot += f
    else:
        r = S.guard.r
        for i in range(lo, hi, st):
            f = 1 + np.int64(p[i] * aq + r[i] * gq)
            freqs[i] = f
            tot += f
    return tot


@njit
def _q_f(v, guard, wg, r, c, gq):
    """The f of token c whose P (2^24 - V) is v: 1 + floor(v); with the guard
    1 + floor(w v + r_c gq)."""
    if guard == 0:
        return 1 + np.int64(v)
    return 1 + np.int64(wg * v + r[c] * gq)


@njit
def _q_fix(S, freqs, arg, so, pn, T, ncand, gq, tot):
    """After every row of pass 4 (tot their sum): the candidates' and the top token's f, the
    rounding remainder to the largest f of arg and the candidates (_give_remainder; without the
    guard against arg's f before the candidates were written, as pass 4 has always compared)."""
    cand_tok, cand_g = S.cands.tok, S.cands.g
    guard, wg, r = S.cfg.guard, S.lane.fst[S_GW], S.guard.r
    n = freqs.shape[0]
    scale = np.float64(TOTAL - n)
    fbest = freqs[arg]
    for j in range(ncand):
        c = cand_tok[j]
        if T < 0:
            v = cand_g[j] * scale
        elif c == T:
            v = pn * scale
        else:
            v = cand_g[j] * so * scale
        f = _q_f(v, guard, wg, r, c, gq)
        tot += f - freqs[c]
        freqs[c] = f
    if T == arg:
        f = _q_f(pn * scale, guard, wg, r, arg, gq)
        tot += f - freqs[arg]
        freqs[arg] = f
    _give_remainder(freqs, arg, cand_tok, ncand, fbest if guard == 0 else freqs[arg], tot)


@njit
def _predict(logits, S, freqs):
    """Fill freqs (int64[V]) with the ensemble distribution for the next token of this lane:
    pass 1 (x), pass 2 (p = exp(x - max x)), pass 3 (sums), the serial middle, the guard's
    row, pass 4 (quantization)."""
    cfg, p, xbuf = S.cfg, S.lane.p, S.lane.xbuf
    n = logits.shape[0]
    kind, y, step, by, G = _bias_pre(S)
    _x_rows(logits, S, kind, y, step, by, 0, n, 1)
    _x_post(S, kind, y, G)
    m = _max_ignoring_nan(xbuf)

    # ---- pass 2: p = exp(x - m) (vectorised); degenerate rows become uniform
    _exp_rows(xbuf, m, p, 0, n, 1, cfg.isum)
    arg = 0
    if m != -np.inf and m != np.inf:
        while xbuf[arg] != m:           # first index of the maximum (p == 1 there)
            arg += 1

    # ---- pass 3: S = sum p and E = sum p l, each as 8 interleaved partial sums (index i goes
    # to partial i mod 8) added up as ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)); the tail i >= 8 floor(n/8)
    # is added to s0 in index order (exact in any order with cfg.isum)
    s = _sum8(p, n)
    if cfg.col != 0:
        S.col.q[:] = 0.0
        _cq_rows(S, 0, n, 1)
    el = 0.0
    if cfg.temp != 0:
        el = _sum8_pl(p, logits, n, cfg.isum)
    aqi, iz, so, pn, T, ncand = _mid(S, arg, s, el)

    # ---- guard: the coded distribution is w P + (1 - w) R, R = the bare LLM's softmax (same
    # exp and sums as passes 2-3), w the ensemble's weight of a fixed-share two-expert mixture
    if cfg.guard != 0:
        _guard_row(logits, S.guard.r, S.lane.fst, n, cfg.isum)

    # ---- pass 4: quantize P_i = A q_i / Z (candidates: P'_c), times so except T
    aq, gq = _q_scales(S, aqi, iz, so, T, n)
    tot = _q_rows(S, freqs, aq, gq, 0, n, 1)
    _q_fix(S, freqs, arg, so, pn, T, ncand, gq, tot)


@njit
def _give_remainder(freqs, arg, cand_tok, ncand, fbest, tot):
    """freqs[i] += 2^24 - tot for the largest f (lowest index among equals) of the candidates,
    against fbest for arg, then arg itself (pass 4's rule; fbest is arg's f before the candidates
    were written, as pass 4 has always compared)."""
    ibest = arg
    for j in range(ncand):
        c = cand_tok[j]
        if freqs[c] > fbest or (freqs[c] == fbest and c < ibest):
            fbest = freqs[c]
            ibest = c
    if freqs[arg] > fbest or (freqs[arg] == fbest and arg < ibest):
        ibest = arg
    freqs[ibest] += TOTAL - tot


@njit
def _max_rows(x, lo, hi, st):
    """max of x (as float64) on rows range(lo, hi, st), ignoring NaN (-inf if none): exact and
    order-free, as cdf._max_ignoring_nan."""
    m = -np.inf
    for i in range(lo, hi, st):
        v = np.float64(x[i])
        m = v if v > m else m
    return m


@njit
def _first_rows(x, m, lo, hi, st):
    """The first index i of range(lo, hi, st) with x_i == m (hi if none)."""
    for i in range(lo, hi, st):
        if x[i] == m:
            return i
    return hi


@njit
def _sum_rows(x, lo, hi, st):
    """sum of x (float64 on the isum grid) on rows range(lo, hi, st): a part of an exact sum,
    so any split gives the same bits."""
    s = 0.0
    for i in range(lo, hi, st):
        s += x[i]
    return s


@njit
def _isum_rows(f, lo, hi, st):
    """sum of the integers f on rows range(lo, hi, st)."""
    s = 0
    for i in range(lo, hi, st):
        s += f[i]
    return s


@njit
def _pl_rows(p, logits, lo, hi, st):
    """sum of p_i l_i on rows range(lo, hi, st), each on the isum grid (_pl)."""
    s = 0.0
    for i in range(lo, hi, st):
        s += _pl(p[i], logits[i], 1)
    return s


@njit
def _cq_rows(S, lo, hi, st):
    """Adds p_i to its column bucket's Q for rows range(lo, hi, st) (exact on the isum grid)."""
    p, cq, tcol, col = S.lane.p, S.col.q, S.col.tcol, S.lane.ist[I_COL]
    for i in range(lo, hi, st):
        cq[_col_bucket(tcol, i, col)] += p[i]


@njit
def _exp_rows(x, m, out, lo, hi, st, grid):
    """out_i = exp(x_i - m) on rows range(lo, hi, st) for x (float32 or float64) and m its
    maximum ignoring NaN (float64), on the exact-sum grid if grid (_grid); every out_i = 1 if m is
    +-inf (a degenerate row becomes uniform). Passes 2 and the guard."""
    if m == -np.inf or m == np.inf:
        for i in range(lo, hi, st):
            out[i] = 1.0
    elif grid != 0:
        for i in range(lo, hi, st):
            out[i] = _grid(_exp_nonpos(np.float64(x[i]) - m))
    else:
        for i in range(lo, hi, st):
            out[i] = _exp_nonpos(np.float64(x[i]) - m)


@njit
def _guard_row(logits, r, fst, n, grid):
    """r = exp(l - max l) of the bare LLM row (uniform if degenerate; on the exact-sum grid if
    grid); fst[S_RINVS] = 1 / sum."""
    _exp_rows(logits, _max_ignoring_nan(logits), r, 0, n, 1, grid)
    fst[S_RINVS] = 1.0 / _sum8(r, n)


@njit
def _p_ens(S, y):
    """The ensemble's probability of y in the last prediction (before the guard)."""
    fst, ist = S.lane.fst, S.lane.ist
    T = ist[I_APMT]
    if T >= 0 and y == T:
        return fst[S_PN]
    so = fst[S_SO] if T >= 0 else 1.0
    cand_tok, cand_g = S.cands.tok, S.cands.g
    for j in range(ist[I_NCAND]):
        if cand_tok[j] == y:
            return cand_g[j] * so
    return S.lane.p[y] * (fst[S_A] * fst[S_INVS]) * fst[S_IZ] * so


@njit
def _guard_update(S, y):
    """Bayes step of the two-expert weight, then the fixed share toward 1/2 at the decaying
    rate a_t = a0 / (1 + t a0) (t = the lane's guarded tokens before this one; a0 = 1/2 gives
    1 / (t + 2): switching costs O(log n) bits over n tokens, not O(n))."""
    fst, ist = S.lane.fst, S.lane.ist
    wg = fst[S_GW]
    pe = _p_ens(S, y)
    pr = S.guard.r[y] * fst[S_RINVS]
    pm = wg * pe + (1.0 - wg) * pr
    if pm > 0.0:
        wg = wg * pe / pm
    a0 = S.cfg.guard_a
    a = a0 / (1.0 + np.float64(ist[I_GT]) * a0)
    ist[I_GT] += 1
    fst[S_GW] = (1.0 - a) * wg + a * 0.5


@njit
def _update(S, y, ly):
    """Learn from the coded token y, whose LLM logit is ly (after coding, on both sides)."""
    cfg, ist, fst, p = S.cfg, S.lane.ist, S.lane.fst, S.lane.p
    xbuf, ng_b, ngb = S.lane.xbuf, S.ng.b, S.ng.bkt
    mz, w, beta, mk_tok = S.mix.z, S.mix.w, S.mix.beta, S.preds.tok
    mk_c, mk_n, mk_e, mk_s = S.preds.c, S.preds.n, S.preds.e, S.preds.s
    cand_tok, cand_g, apm, tcol = S.cands.tok, S.cands.g, S.sse.t, S.col.tcol
    K = cfg.K           # (_learn_sparse, called last, checks the lane's token count)
    if cfg.guard != 0:
        _guard_update(S, y)
    invs = fst[S_INVS]
    qy = p[y] * invs

    # ---- mixer: dL/dz_j = (1 - K floor) s_j (g_j - sum_k s_k g_k), g_k = -P_k(y) / P(y)
    if K > 1 and cfg.mix_lr > 0.0 and cfg.mix2 != 0:
        fl = cfg.floor
        one = 1.0 - K * fl
        for j in range(K):
            pk = qy * mk_e[j]
            for jj in range(mk_n[j]):
                if mk_tok[j, jj] == y:
                    pk += mk_c[j, jj]
            xbuf[j] = pk
        lr = cfg.mix_lr
        for m in range(2):
            sel = ist[I_SET] if m == 0 else ist[I_SET2]
            off = K * (m + 1)
            py = 0.0
            for j in range(K):
                py += w[off + j] * xbuf[j]
            if py > 0.0:
                ip = 1.0 / py
                gs = 0.0
                for j in range(K):
                    sj = (w[off + j] - fl) / one
                    gs += sj * (-xbuf[j] * ip)
                for j in range(K):
                    sj = (w[off + j] - fl) / one
                    g = one * sj * (-xbuf[j] * ip - gs)
                    z = mz[sel, j] - lr * g
                    z = z if z < 40.0 else 40.0
                    mz[sel, j] = z if z > -40.0 else -40.0
    elif K > 1 and cfg.mix_lr > 0.0:
        sel = ist[I_SET]
        fl = cfg.floor
        one = 1.0 - K * fl
        py = 0.0
        for j in range(K):
            pk = qy * mk_e[j]
            for jj in range(mk_n[j]):
                if mk_tok[j, jj] == y:
                    pk += mk_c[j, jj]
            xbuf[j] = pk                 # xbuf is free scratch until the next _predict
            py += w[j] * pk
        if py > 0.0:
            ip = 1.0 / py
            gs = 0.0
            for j in range(K):
                sj = (w[j] - fl) / one
                gs += sj * (-xbuf[j] * ip)
            lr = cfg.mix_lr
            for j in range(K):
                sj = (w[j] - fl) / one
                g = one * sj * (-xbuf[j] * ip - gs)
                z = mz[sel, j] - lr * g
                z = z if z < 40.0 else 40.0
                mz[sel, j] = z if z > -40.0 else -40.0

    # ---- boost: dL/dbeta_k = sum_c P'_c f_k(c) - f_k(y)
    if cfg.boost != 0 and K > 1:
        sel = ist[I_SET]
        lr = cfg.boost_lr
        ncand = ist[I_NCAND]
        for kk in range(1, K):
            e = 0.0
            for j in range(ncand):
                e += cand_g[j] * _feat(mk_tok, mk_c, mk_n, kk, cand_tok[j])
            bt = beta[sel, kk] - lr * (e - _feat(mk_tok, mk_c, mk_n, kk, y))
            bt = bt if bt < BOOST_MAX else BOOST_MAX
            beta[sel, kk] = bt if bt > -BOOST_MAX else -BOOST_MAX

    # ---- SSE table: the two nodes around P_T move toward [y = T] by lr (1 - r), lr r
    T = ist[I_APMT]
    if T >= 0:
        idx = ist[I_APMI]
        r = fst[S_APMR]
        err = (1.0 if y == T else 0.0) - fst[S_APMP]
        lr = cfg.apm_lr
        a0 = apm[idx] + lr * (1.0 - r) * err
        a1 = apm[idx + 1] + lr * r * err
        a0 = a0 if a0 > 0.0 else 0.0
        a1 = a1 if a1 > 0.0 else 0.0
        apm[idx] = a0 if a0 < 1.0 else 1.0
        apm[idx + 1] = a1 if a1 < 1.0 else 1.0

    # ---- temperature: d(-log q_y)/d tau = E_q[l] - l_y
    if cfg.temp != 0 and ly > -1e300 and ly < 1e300:     # skipped for a non-finite l_y
        tau = fst[S_TAU] - cfg.temp_lr * (fst[S_EL] - ly)
        tau = tau if tau > TAU_MIN else TAU_MIN
        fst[S_TAU] = tau if tau < TAU_MAX else TAU_MAX
    ist[I_Y] = y

    # ---- slot biases of the buckets that predicted: b += lr ([y = c] - P'_c), kept as float32
    if cfg.sb != 0:
        lr = cfg.sb_lr
        ncand = ist[I_NCAND]
        for o in range(cfg.ng):
            k = o + 1
            bkt = ngb[o]
            for jj in range(mk_n[k]):
                c = mk_tok[k, jj]
                pc = 0.0
                for j in range(ncand):
                    if cand_tok[j] == c:
                        pc = cand_g[j]
                b = np.float64(ng_b[o, bkt, mk_s[k, jj]]) + lr * ((1.0 if c == y else 0.0) - pc)
                b = b if b < SB_MAX else SB_MAX
                ng_b[o, bkt, mk_s[k, jj]] = b if b > -SB_MAX else -SB_MAX

    # ---- column bias (AdaGrad): d(-log q_y)/d cb_j = Q_j - [j = bucket of y]
    if cfg.col != 0:
        cb, cg, cq = S.col.b, S.col.g, S.col.q
        by = _col_bucket(tcol, y, ist[I_COL])
        lr = cfg.col_lr
        for j in range(2 * COL_NB):
            g = (1.0 if j == by else 0.0) - cq[j] * invs
            G = cg[j] + g * g
            cg[j] = G
            b = cb[j] + lr * g / math.sqrt(G)
            b = b if b < COL_MAX else COL_MAX
            cb[j] = b if b > -COL_MAX else -COL_MAX

    _learn_sparse(S, y)


@njit
def _apm_init(nodes, apm):
    """SSE nodes squash(APM_S0 + j APM_DS) with the deterministic exp; every context's table
    starts as the identity (apm = node value)."""
    for j in range(APM_N):
        x = APM_S0 + j * APM_DS
        if x >= 0.0:
            v = 1.0 / (1.0 + _exp_nonpos(-x))
        else:
            e = _exp_nonpos(x)
            v = e / (1.0 + e)
        nodes[j] = v
    for i in range(apm.shape[0]):
        apm[i] = nodes[i % APM_N]
