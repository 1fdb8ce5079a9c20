"""Ensemble mixer: online token n-gram model, match model and log-space bias head, blended with
the LLM distribution and quantized to 24-bit frequencies, all in Numba and deterministic.

Invariants (part of the bitstream format; formats/FORMAT.md "Ensemble mixer" is the spec):
- one ``LaneModel`` per lane and segment, created fresh (all tables zero) at segment start; its
  state changes only in ``_update``, after the token has been coded, identically in encoder and
  decoder (both call the same compiled ``_predict`` / ``_update``);
- every float that reaches the coder is computed with IEEE basic operations in a fixed order,
  without fastmath; exp is cdf._exp_nonpos (hand-written), no log is ever taken;
- every hyperparameter comes from the model frame (``MixParams.from_params``): an absent key
  means the component is off, so version-1 archives decode as "LLM only".

Per token (one fused kernel call):
1. LLM + bias head: x_i = tau * l_i + b_i (the pending bias step of the previous token is applied
   in the same pass), q = softmax(x) with the deterministic exp;
2. sparse models: n-gram orders 1..N (hashed buckets of SLOTS or ngram_slots (token, count)
   slots with a check tag; with slot_lr each slot also learns a log-space bias) and the match
   model each give a few candidate tokens with probability c and an escape mass e that is
   spread like q, i.e. P_k(i) = c_k(i) + e_k q_i (the LLM itself is k = 0 with e_0 = 1);
3. mixer: P = sum_k w_k P_k = A q + sparse extras, with w = floor + (1 - K floor) softmax(z_set)
   and the weight set selected by (highest n-gram order that hit, match-length bucket, LLM top
   probability bucket); z is trained by online gradient descent on -log P(y); with mix2 a second
   set, selected by the agreement of the LLM argmax with the top n-gram / match candidates, is
   averaged in (each set trained on its own mixture);
4. boost (boost_lr > 0): a log-linear correction of the candidates, P'_c ∝ P_c exp(sum_k beta_k
   c_k(c) + slot biases), beta per weight set, trained on -log P'(y); the normaliser only
   involves the candidates, so it is O(candidates);
5. SSE (apm_lr > 0): the probability of the top token is refined by an interpolated adaptive
   table (context: hit order, match bucket, agreement flags), the others rescaled;
6. quantize: f_i = 1 + floor(P_i (2^24 - V)), the remainder to the largest f (first index), so
   every f_i >= 1 and the total is exactly 2^24.

Vocabulary-sized work per token: one pass (bias step + x), a max, the exp, one or two 8-way sums,
the quantization, and the coder's cumulative sum / symbol search: ~0.15 ms for V = 49152 on an
idle core here (scripts/ablation.py prints it).  The n-gram, match, mixer, slot-bias and SSE work
is O(orders x slots).

Presets (PRESETS, model-frame key mix_preset) are frozen; fields without a model-frame key
(ngram_slots, slot_lr, mix2, apm_lr, apm_w, bias_g0) come only from the preset, and 0 means the
preset-1 behaviour, so preset-1 archives decode exactly as before.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
from numba import njit

from . import cdf as _cdf
from . import coder as _coder
from .cdf import TOTAL, _exp_nonpos, _max_ignoring_nan
from .coder import _dec_count, _dec_update, _encode_range, _find_symbol, _source_stamp

SLOTS = 4               # (token, count) slots per n-gram bucket
MAX_ORDER = 8
MATCH_VERIFY = 400      # a new match's length is verified back this many tokens at most
N_MBUCKETS = 24         # match-length buckets of the adaptive hit/miss counts
MIX_LLM_BUCKETS = 4     # LLM top-probability buckets of the weight-set selector
MIX_MATCH_BUCKETS = 4   # match-length buckets of the weight-set selector
TAU_MIN, TAU_MAX = 0.5, 2.0
BIAS_MAX = 16.0
BOOST_MAX = 30.0
SB_MAX = 8.0
BIAS_G0 = 1.0
MAX_SKIP_CAP = 255      # catch-up batches of at most 256 tokens per lane
APM_N = 29              # SSE nodes per context: stretch -4, -3.5, .., +10
APM_S0, APM_DS = -4.0, 0.5
APM_PMIN, APM_PMAX = 1e-6, 1.0 - 1e-6
COL_NB = 128           # column-bias buckets per class (line goes on / line ends)
COL_MAX = 16.0

# fixed-point scales of the float hyperparameters in the model frame (varints)
LR_SCALE = 1 << 20      # bias_lr, temp_lr, mix_lr: value / 2^20
FRAC_SCALE = 1 << 16    # mix_floor, ngram_esc: value / 2^16

# ipar slots
P_NG, P_NGBITS, P_NGLIM, P_MMIN, P_MBITS, P_MLIM, P_BIAS, P_TEMP, P_K, P_NSETS, P_BOOST, P_APM, \
    P_MIX2, P_SB, P_COL = range(15)
# fpar slots
F_BIAS_LR, F_TEMP_LR, F_MIX_LR, F_FLOOR, F_NG_ESC, F_BOOST_LR, F_APM_LR, F_APM_W, \
    F_SB_LR, F_COL_LR = range(10)
# ist slots (ints of the lane state)
I_T, I_MPTR, I_MLEN, I_SET, I_HIT, I_MB, I_MPRED, I_NCAND, I_HAVEP, I_Y, I_APMT, I_APMI, \
    I_SET2, I_COL = range(14)
I_NGB = 16              # I_NGB + o: bucket of order o+1 in this step, -1 if not available
I_NGHIT = 32            # I_NGHIT + o: 1 if that bucket's tag matched
# fst slots (floats of the lane state)
S_TAU, S_INVS, S_A, S_EL, S_MC, S_IZ, S_APMR, S_APMP = range(8)


@dataclass
class MixParams:
    """Hyperparameters of the ensemble (model-frame keys; 0 / absent = component off).

    MixParams() is "LLM only"; DEFAULTS (end of module) holds the tuned values."""
    ngram: int = 0          # highest n-gram order (orders 1..ngram); 0 = off
    ngram_bits: int = 0     # log2 buckets per order table
    ngram_limit: int = 0    # a bucket's counts are halved when one exceeds this
    ngram_esc: int = 0      # escape mass per distinct token, / 2^16
    match: int = 0          # match model: context length k (tokens) hashed; 0 = off
    match_bits: int = 0     # log2 entries of the match hash table
    match_limit: int = 0    # hit/miss counts are halved above this
    bias_lr: int = 0        # bias head learning rate / 2^20; 0 = off
    temp_lr: int = 0        # temperature learning rate / 2^20; 0 = off
    mix_lr: int = 0         # mixer learning rate / 2^20
    mix_floor: int = 0      # weight floor / 2^16
    boost_lr: int = 0       # log-linear candidate boost learning rate / 2^20; 0 = off
    bias_ada: int = 0       # 1: AdaGrad step sizes for the bias head
    skip: int = 0           # confidence skip: code a token without the LLM when the match model's
                            # probability >= skip / 2^16 (neural.lockstep); 0 = off
    skip_cap: int = 0       # most tokens a lane lets wait for the LLM (its catch-up batch - 1)
    # preset-only fields (no model-frame key: an archive gets them from mix_preset; 0 = off /
    # the preset-1 behaviour)
    ngram_slots: int = 0    # (token, count) slots per n-gram bucket; 0 = SLOTS (4)
    slot_lr: int = 0        # n-gram slot bias learning rate / 2^20; 0 = off
    mix2: int = 0           # 1: second mixer weight set (agreement selector), weights averaged
    apm_lr: int = 0         # SSE (top token) table learning rate / 2^20; 0 = off
    apm_w: int = 0          # weight of the SSE output / 2^16
    bias_g0: int = 0        # AdaGrad initial sum G0 / 2^16; 0 = BIAS_G0 (1.0)
    col_lr: int = 0         # column bias (AdaGrad) learning rate / 2^20; 0 = off

    KEYS = ("ngram", "ngram_bits", "ngram_limit", "ngram_esc", "match", "match_bits",
            "match_limit", "bias_lr", "temp_lr", "mix_lr", "mix_floor", "boost_lr",
            "bias_ada", "skip", "skip_cap")

    @property
    def active(self) -> bool:
        return bool(self.ngram or self.match or self.bias_lr or self.temp_lr)

    def params(self) -> dict:
        """Model-frame parameters: none for LLM only; else mix_preset = the highest preset whose
        preset-only fields (those without a model-frame key) equal ours, and the keys whose value
        differs from that preset (a few bytes for the defaults).  Settings whose preset-only
        fields match no preset cannot be written (ValueError)."""
        if not self.active:
            return {}
        own = [f.name for f in fields(self) if f.name not in self.KEYS]
        for pid in sorted(PRESETS, reverse=True):
            base = PRESETS[pid]
            if all(getattr(self, k) == getattr(base, k) for k in own):
                break
        else:
            raise ValueError("mixer settings " + ", ".join(f"{k}={getattr(self, k)}" for k in own)
                             + " match no preset (these fields have no model-frame key)")
        out = {"mix_preset": pid}
        out.update({k: int(getattr(self, k)) for k in self.KEYS
                    if getattr(self, k) != getattr(base, k)})
        return out

    @classmethod
    def from_params(cls, p: dict) -> "MixParams":
        """Inverse of params(): start from preset mix_preset (absent or 0: all zero, i.e. every
        component off), then apply the keys present."""
        from .errors import NacritError
        preset = int(p.get("mix_preset", 0))
        if preset and preset not in PRESETS:
            raise NacritError(f"archive uses unknown mixer preset {preset}; upgrade nacrith")
        d = {f.name: getattr(PRESETS[preset], f.name) if preset else 0 for f in fields(cls)}
        d.update({k: int(p[k]) for k in cls.KEYS if k in p})
        return cls(**d)

    def validate(self) -> None:
        from .errors import NacritError
        if not 0 <= self.ngram <= MAX_ORDER:
            raise NacritError(f"ngram order must be 0..{MAX_ORDER}")
        if self.ngram and not 4 <= self.ngram_bits <= 24:
            raise NacritError("ngram_bits must be 4..24")
        if self.ngram and not 1 <= self.ngram_limit <= 1 << 20:
            raise NacritError("ngram_limit must be 1..2^20")
        if not 0 <= self.match <= 64:
            raise NacritError("match context length must be 0..64")
        if self.match and not 4 <= self.match_bits <= 26:
            raise NacritError("match_bits must be 4..26")
        if self.match and not 1 <= self.match_limit <= 1 << 20:
            raise NacritError("match_limit must be 1..2^20")
        k = 1 + self.ngram + (1 if self.match else 0)
        if not 0 <= self.ngram_esc <= 1 << 24:
            raise NacritError("ngram_esc out of range")
        if not 0 <= self.mix_floor * k < FRAC_SCALE:
            raise NacritError("mix_floor * inputs must be < 1")
        if not 0 <= self.ngram_slots <= 16:
            raise NacritError("ngram_slots must be 0..16")
        if not 0 <= self.bias_g0 <= 1 << 24:
            raise NacritError("bias_g0 must be 0..2^24")
        if not 0 <= self.apm_w <= FRAC_SCALE:
            raise NacritError("apm_w must be 0..2^16")
        for name in ("bias_lr", "temp_lr", "mix_lr", "boost_lr", "apm_lr", "slot_lr", "col_lr"):
            if not 0 <= getattr(self, name) <= LR_SCALE:
                raise NacritError(f"{name} must be 0..2^20")
        if not 0 <= self.skip < FRAC_SCALE or (self.skip and not self.match):
            raise NacritError("skip must be 0..2^16-1, and needs the match model")
        if self.skip and not 1 <= self.skip_cap <= MAX_SKIP_CAP:
            raise NacritError(f"skip_cap must be 1..{MAX_SKIP_CAP}")


# ----------------------------------------------------------------------------- kernels

_PRIME = np.uint64(0x9E3779B97F4A7C15)
_PRIME2 = np.uint64(0xC2B2AE3D27D4EB4F)


@njit(cache=True)
def _ctx_hash(hist, t, n, salt):
    """Hash of the n tokens hist[t-n .. t-1] (uint64)."""
    h = np.uint64(salt) * _PRIME2 + np.uint64(n)
    for j in range(1, n + 1):
        h = (h + np.uint64(hist[t - j]) + np.uint64(1)) * _PRIME
        h ^= h >> np.uint64(29)
    return h


@njit(cache=True)
def _mbucket(mlen):
    if mlen < 16:
        return mlen
    b = 16 + (mlen - 16) // 16
    return b if b < N_MBUCKETS else N_MBUCKETS - 1


@njit(cache=True)
def _add_cand(cand_tok, cand_x, n, tok, x):
    for j in range(n):
        if cand_tok[j] == tok:
            cand_x[j] += x
            return n
    cand_tok[n] = tok
    cand_x[n] = x
    return n + 1


@njit(cache=True)
def _feat(mk_tok, mk_c, mk_n, k, tok):
    """Feature of model k for token tok: its explicit probability c_k(tok) (0 if none)."""
    for jj in range(mk_n[k]):
        if mk_tok[k, jj] == tok:
            return mk_c[k, jj]
    return 0.0


@njit(cache=True)
def _exp_signed(g):
    """exp(g) for |g| <= BOOST_MAX from the deterministic exp of a non-positive argument."""
    if g <= 0.0:
        return _exp_nonpos(g)
    return 1.0 / _exp_nonpos(-g)


@njit(cache=True)
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


@njit(cache=True)
def _pl(p, l):
    v = p * np.float64(l)
    return v if p > 0.0 else 0.0        # p = 0 where l is -inf or NaN


@njit(cache=True)
def _sum8_pl(p, logits, n):
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    i = 0
    while i + 8 <= n:
        s0 += _pl(p[i], logits[i])
        s1 += _pl(p[i + 1], logits[i + 1])
        s2 += _pl(p[i + 2], logits[i + 2])
        s3 += _pl(p[i + 3], logits[i + 3])
        s4 += _pl(p[i + 4], logits[i + 4])
        s5 += _pl(p[i + 5], logits[i + 5])
        s6 += _pl(p[i + 6], logits[i + 6])
        s7 += _pl(p[i + 7], logits[i + 7])
        i += 8
    while i < n:
        s0 += _pl(p[i], logits[i])
        i += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(cache=True)
def _col_bucket(tcol, i, col):
    """Column-bias bucket of token i at column col: the column where its bytes up to the first
    line break end (capped at COL_NB - 1), plus COL_NB if it has a line break."""
    e = col + tcol[0, i]
    e = e if e < COL_NB else COL_NB - 1
    return e + COL_NB * tcol[1, i]


@njit(cache=True)
def _lookup_sparse(S):
    """n-gram and match predictions for the next token (mk_*, I_NGB/I_NGHIT, I_MPRED, S_MC).

    Returns hit * 256 + mb: the highest n-gram order that hit and the match-length bucket."""
    (ipar, fpar, ist, fst, hist, bias, xbuf, p, ng_tag, ng_tok, ng_cnt, mt, mcnt, mz,
     mk_tok, mk_c, mk_n, mk_e, w, cand_tok, cand_x, beta, cand_g, bias_g, apm, apm_nodes, ng_b,
     mk_s, colst, tcol) = S
    t = ist[I_T]
    N = ipar[P_NG]
    k = 1
    hit = 0
    for o in range(N):
        order = o + 1
        mk_n[k] = 0
        mk_e[k] = 1.0
        ist[I_NGB + o] = -1
        ist[I_NGHIT + o] = 0
        if t >= order:
            h = _ctx_hash(hist, t, order, order)
            bits = ipar[P_NGBITS]
            bkt = np.int64(h >> np.uint64(64 - bits))
            tag = np.int64(h & np.uint64(0xFFFFFFFF)) | 1
            ist[I_NGB + o] = bkt
            if ng_tag[o, bkt] == tag:
                ist[I_NGHIT + o] = 1
                tot = 0
                d = 0
                for j in range(ng_cnt.shape[2]):
                    c = ng_cnt[o, bkt, j]
                    if c > 0:
                        tot += c
                        d += 1
                if tot > 0:
                    hit = order
                    esc = fpar[F_NG_ESC] * d
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
    if ipar[P_MMIN] > 0:
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


@njit(cache=True)
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


@njit(cache=True)
def _predict(logits, S, freqs):
    """Fill freqs (int64[V]) with the ensemble distribution for the next token of this lane."""
    (ipar, fpar, ist, fst, hist, bias, xbuf, p, ng_tag, ng_tok, ng_cnt, mt, mcnt, mz,
     mk_tok, mk_c, mk_n, mk_e, w, cand_tok, cand_x, beta, cand_g, bias_g, apm, apm_nodes, ng_b,
     mk_s, colst, tcol) = S
    n = logits.shape[0]
    t = ist[I_T]
    tau = fst[S_TAU]
    use_bias = ipar[P_BIAS] != 0
    use_temp = ipar[P_TEMP] != 0

    # ---- pass 1: pending bias step of the previous token, x = tau l + b
    if use_bias and ist[I_HAVEP] != 0 and ipar[P_BIAS] == 2:
        # AdaGrad-like: token i steps by lr * r_i, r_i = 1 / sqrt(G0 + sum over the earlier
        # occurrences of i of (1 - q_i)^2) (bias_g holds r; only the coded token's r changes)
        lr = fpar[F_BIAS_LR]
        step = lr * fst[S_INVS]
        y = ist[I_Y]
        gy = 1.0 - p[y] * fst[S_INVS]
        by = bias[y] + lr * bias_g[y] * gy          # the coded token's step, with the old r_y
        G = 1.0 / (bias_g[y] * bias_g[y]) + gy * gy
        for i in range(n):
            b = bias[i] - step * p[i] * bias_g[i]
            b = by if i == y else b
            b = b if b > -BIAS_MAX else -BIAS_MAX
            b = b if b < BIAS_MAX else BIAS_MAX
            bias[i] = b
            xbuf[i] = tau * np.float64(logits[i]) + b
        bias_g[y] = 1.0 / np.sqrt(G)
    elif use_bias and ist[I_HAVEP] != 0:
        lr = fpar[F_BIAS_LR]
        step = lr * fst[S_INVS]
        y = ist[I_Y]
        for i in range(n):
            b = bias[i] - step * p[i] + (lr if i == y else 0.0)
            b = b if b > -BIAS_MAX else -BIAS_MAX
            b = b if b < BIAS_MAX else BIAS_MAX
            bias[i] = b
            xbuf[i] = tau * np.float64(logits[i]) + b
    elif use_bias:
        for i in range(n):
            xbuf[i] = tau * np.float64(logits[i]) + bias[i]
    else:
        for i in range(n):
            xbuf[i] = tau * np.float64(logits[i])
    use_col = ipar[P_COL] != 0
    col = ist[I_COL]
    if use_col:
        # column bias: x_i += cb[bucket of token i at the current column] (_col_bucket)
        colb = colst[0]
        for i in range(n):
            xbuf[i] += colb[_col_bucket(tcol, i, col)]
    m = _max_ignoring_nan(xbuf)

    # ---- pass 2: p = exp(x - m) (vectorised); degenerate rows become uniform
    arg = 0
    if m == -np.inf or m == np.inf:
        for i in range(n):
            p[i] = 1.0
    else:
        for i in range(n):
            p[i] = _exp_nonpos(xbuf[i] - m)
        while xbuf[arg] != m:           # first index of the maximum (p == 1 there)
            arg += 1

    # ---- pass 3: S = sum p and E = sum p l, each as 8 interleaved partial sums (index i goes
    # to partial i mod 8) added up as ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)); the tail i >= 8 floor(n/8)
    # is added to s0 in index order
    s = _sum8(p, n)
    if use_col:
        cq = colst[2]
        for j in range(2 * COL_NB):
            cq[j] = 0.0
        for i in range(n):
            cq[_col_bucket(tcol, i, col)] += p[i]
    el = 0.0
    if use_temp:
        el = _sum8_pl(p, logits, n)
    invs = 1.0 / s
    fst[S_INVS] = invs
    fst[S_EL] = el * invs
    ist[I_HAVEP] = 1
    qmax = p[arg] * invs

    # ---- sparse models
    K = ipar[P_K]
    N = ipar[P_NG]
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
        _set_weights(mz, sel, K, fpar[F_FLOOR], w, 0)
    if K > 1 and ipar[P_MIX2] != 0:
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
        sel2 = ipar[P_NSETS] + ((hit * 3 + ag) * 4 + cb) * 3 + ma
        ist[I_SET2] = sel2
        for j in range(K):
            w[K + j] = w[j]
        _set_weights(mz, sel2, K, fpar[F_FLOOR], w, 2 * K)
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
    use_boost = ipar[P_BOOST] != 0
    use_sb = ipar[P_SB] != 0
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
                            g += np.float64(ng_b[kk - 1, ist[I_NGB + kk - 1], mk_s[kk, jj]])
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
    if ipar[P_APM] != 0:
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
            pn = pT + fpar[F_APM_W] * (a - pT)
            pn = pn if pn > APM_PMIN else APM_PMIN
            pn = pn if pn < APM_PMAX else APM_PMAX
            so = (1.0 - pn) / (1.0 - pT)
            ist[I_APMT] = T
            ist[I_APMI] = idx
            fst[S_APMR] = r
            fst[S_APMP] = a
        else:
            T = -1

    # ---- pass 4: quantize P_i = A q_i / Z (candidates: P'_c), times so except T
    scale = np.float64(TOTAL - n)
    aq = aqi * iz * scale
    if T >= 0:
        aq = aq * so
    tot = 0
    for i in range(n):
        f = 1 + np.int64(p[i] * aq)
        freqs[i] = f
        tot += f
    fbest = freqs[arg]
    ibest = arg
    for j in range(ncand):
        c = cand_tok[j]
        if T < 0:
            f = 1 + np.int64(cand_g[j] * scale)
        elif c == T:
            f = 1 + np.int64(pn * scale)
        else:
            f = 1 + np.int64(cand_g[j] * so * scale)
        tot += f - freqs[c]
        freqs[c] = f
    if T == arg:
        f = 1 + np.int64(pn * scale)
        tot += f - freqs[arg]
        freqs[arg] = f
    for j in range(ncand):
        c = cand_tok[j]
        if freqs[c] > fbest or (freqs[c] == fbest and c < ibest):
            fbest = freqs[c]
            ibest = c
    if freqs[arg] > fbest or (freqs[arg] == fbest and arg < ibest):
        ibest = arg
    freqs[ibest] += TOTAL - tot


@njit(cache=True)
def _update(S, y, ly):
    """Learn from the coded token y, whose LLM logit is ly (after coding, on both sides)."""
    (ipar, fpar, ist, fst, hist, bias, xbuf, p, ng_tag, ng_tok, ng_cnt, mt, mcnt, mz,
     mk_tok, mk_c, mk_n, mk_e, w, cand_tok, cand_x, beta, cand_g, bias_g, apm, apm_nodes, ng_b,
     mk_s, colst, tcol) = S
    K = ipar[P_K]           # (_learn_sparse, called last, checks the lane's token count)
    invs = fst[S_INVS]
    qy = p[y] * invs

    # ---- mixer: dL/dz_j = (1 - K floor) s_j (g_j - sum_k s_k g_k), g_k = -P_k(y) / P(y)
    if K > 1 and fpar[F_MIX_LR] > 0.0 and ipar[P_MIX2] != 0:
        fl = fpar[F_FLOOR]
        one = 1.0 - K * fl
        for j in range(K):
            pk = qy * mk_e[j]
            for jj in range(mk_n[j]):
                if mk_tok[j, jj] == y:
                    pk += mk_c[j, jj]
            xbuf[j] = pk
        lr = fpar[F_MIX_LR]
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
    elif K > 1 and fpar[F_MIX_LR] > 0.0:
        sel = ist[I_SET]
        fl = fpar[F_FLOOR]
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
            lr = fpar[F_MIX_LR]
            for j in range(K):
                sj = (w[j] - fl) / one
                g = one * sj * (-xbuf[j] * ip - gs)
                z = mz[sel, j] - lr * g
                z = z if z < 40.0 else 40.0
                mz[sel, j] = z if z > -40.0 else -40.0

    # ---- boost: dL/dbeta_k = sum_c P'_c f_k(c) - f_k(y)
    if ipar[P_BOOST] != 0 and K > 1:
        sel = ist[I_SET]
        lr = fpar[F_BOOST_LR]
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
        lr = fpar[F_APM_LR]
        a0 = apm[idx] + lr * (1.0 - r) * err
        a1 = apm[idx + 1] + lr * r * err
        a0 = a0 if a0 > 0.0 else 0.0
        a1 = a1 if a1 > 0.0 else 0.0
        apm[idx] = a0 if a0 < 1.0 else 1.0
        apm[idx + 1] = a1 if a1 < 1.0 else 1.0

    # ---- temperature: d(-log q_y)/d tau = E_q[l] - l_y
    if ipar[P_TEMP] != 0 and ly > -1e300 and ly < 1e300:     # skipped for a non-finite l_y
        tau = fst[S_TAU] - fpar[F_TEMP_LR] * (fst[S_EL] - ly)
        tau = tau if tau > TAU_MIN else TAU_MIN
        fst[S_TAU] = tau if tau < TAU_MAX else TAU_MAX
    ist[I_Y] = y

    # ---- slot biases of the buckets that predicted: b += lr ([y = c] - P'_c), kept as float32
    if ipar[P_SB] != 0:
        lr = fpar[F_SB_LR]
        ncand = ist[I_NCAND]
        for o in range(ipar[P_NG]):
            k = o + 1
            bkt = ist[I_NGB + o]
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
    if ipar[P_COL] != 0:
        cb, cg, cq = colst[0], colst[1], colst[2]
        by = _col_bucket(tcol, y, ist[I_COL])
        lr = fpar[F_COL_LR]
        for j in range(2 * COL_NB):
            g = (1.0 if j == by else 0.0) - cq[j] * invs
            G = cg[j] + g * g
            cg[j] = G
            b = cb[j] + lr * g / np.sqrt(G)
            b = b if b < COL_MAX else COL_MAX
            cb[j] = b if b > -COL_MAX else -COL_MAX

    _learn_sparse(S, y)


@njit(cache=True)
def _learn_sparse(S, y):
    """n-gram counts, history and match model learn token y (after _lookup_sparse)."""
    (ipar, fpar, ist, fst, hist, bias, xbuf, p, ng_tag, ng_tok, ng_cnt, mt, mcnt, mz,
     mk_tok, mk_c, mk_n, mk_e, w, cand_tok, cand_x, beta, cand_g, bias_g, apm, apm_nodes, ng_b,
     mk_s, colst, tcol) = S
    t = ist[I_T]
    if t >= hist.shape[0]:
        raise ValueError("LaneModel: more tokens coded than the lane was created for")
    # ---- n-gram counts
    N = ipar[P_NG]
    lim = ipar[P_NGLIM]
    for o in range(N):
        bkt = ist[I_NGB + o]
        if bkt < 0:
            continue
        if ist[I_NGHIT + o] == 0:
            h = _ctx_hash(hist, t, o + 1, o + 1)
            ng_tag[o, bkt] = np.int64(h & np.uint64(0xFFFFFFFF)) | 1
            for j in range(ng_cnt.shape[2]):
                ng_cnt[o, bkt, j] = 0
                if ipar[P_SB] != 0:
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
            if ipar[P_SB] != 0:
                ng_b[o, bkt, j] = 0.0

    # ---- column after y: bytes after its last line break, or the column plus its length
    if ipar[P_COL] != 0:
        ist[I_COL] = tcol[2, y] if tcol[1, y] != 0 else ist[I_COL] + tcol[0, y]

    # ---- match model
    hist[t] = y
    nt = t + 1
    ist[I_T] = nt
    kk = ipar[P_MMIN]
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
            if mcnt[bk, 0] + mcnt[bk, 1] > ipar[P_MLIM]:
                mcnt[bk, 0] *= 0.5
                mcnt[bk, 1] *= 0.5
        if nt >= kk:
            h = _ctx_hash(hist, nt, kk, 0)
            slot = np.int64(h >> np.uint64(64 - ipar[P_MBITS]))
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


@njit(cache=True)
def _skip_conf(S):
    """Probability the match model gives its prediction for the next token (0.0 if none)."""
    ipar, ist, mcnt = S[0], S[2], S[12]
    if ipar[P_MMIN] == 0 or ist[I_MLEN] <= 0:
        return 0.0
    bk = _mbucket(ist[I_MLEN])
    return (mcnt[bk, 0] + 0.5) / (mcnt[bk, 0] + mcnt[bk, 1] + 1.0)


@njit(cache=True)
def _skip_predict(S, freqs):
    """Confidence skip: the next token's distribution without the LLM (only when _skip_conf > 0):
    P = c [match prediction] + (1 - c) ((1 - u) NG + u / V), NG the candidates of the highest
    n-gram order that hit, normalised (u = 1 when none hit). Every f >= 1, total 2^24."""
    hm = _lookup_sparse(S)
    hit = hm >> 8
    ist, fst, mk_tok, mk_c, mk_n = S[2], S[3], S[14], S[15], S[16]
    c = fst[S_MC]
    pred = ist[I_MPRED]
    n = freqs.shape[0]
    scale = np.float64(TOTAL - n)
    esc = 1.0 - c
    uni = esc * SKIP_UNIFORM if hit > 0 else esc
    fu = 1 + np.int64(uni / n * scale)
    for i in range(n):
        freqs[i] = fu
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


def _make_kernels(stamp):
    @njit(cache=True)
    def enc_kernel(st, buf, logits, sym, freqs, S):
        _ = stamp                               # cdf/coder sources are part of the cache key
        _predict(logits, S, freqs)
        c_lo = 0
        for i in range(sym):
            c_lo += freqs[i]
        buf = _encode_range(st, buf, c_lo, c_lo + freqs[sym])
        _update(S, sym, np.float64(logits[sym]))
        return buf

    @njit(cache=True)
    def dec_kernel(st, data, logits, freqs, S):
        _ = stamp
        count = _dec_count(st)
        _predict(logits, S, freqs)
        s, c_lo = _find_symbol(freqs, count)
        _dec_update(st, data, c_lo, c_lo + freqs[s])
        _update(S, s, np.float64(logits[s]))
        return s

    @njit(cache=True)
    def cost_kernel(logits2d, toks, freqs, S, out):
        """Offline: predict/update over a cached sequence; out[t] = 2^24 / f(token t)."""
        _ = stamp
        for t in range(toks.shape[0]):
            y = toks[t]
            row = logits2d[t]
            _predict(row, S, freqs)
            out[t] = freqs[y]
            _update(S, y, np.float64(row[y]))

    @njit(cache=True)
    def enc_skip_kernel(st, buf, sym, freqs, S):
        _ = stamp
        _skip_predict(S, freqs)
        c_lo = 0
        for i in range(sym):
            c_lo += freqs[i]
        buf = _encode_range(st, buf, c_lo, c_lo + freqs[sym])
        _learn_sparse(S, sym)
        return buf

    @njit(cache=True)
    def dec_skip_kernel(st, data, freqs, S):
        _ = stamp
        count = _dec_count(st)
        _skip_predict(S, freqs)
        s, c_lo = _find_symbol(freqs, count)
        _dec_update(st, data, c_lo, c_lo + freqs[s])
        _learn_sparse(S, s)
        return s

    @njit(cache=True)
    def cost_skip_kernel(logits2d, toks, freqs, S, out, thr, cap, skipped):
        """Offline: as cost_kernel, with the confidence-skip rule of neural.lockstep (skip when
        _skip_conf >= thr and fewer than cap tokens wait for the LLM); skipped[t] = 1 if so."""
        _ = stamp
        run = 0
        for t in range(toks.shape[0]):
            y = toks[t]
            if thr > 0.0 and run < cap and _skip_conf(S) >= thr:
                _skip_predict(S, freqs)
                out[t] = freqs[y]
                _learn_sparse(S, y)
                skipped[t] = 1
                run += 1
            else:
                row = logits2d[t]
                _predict(row, S, freqs)
                out[t] = freqs[y]
                _update(S, y, np.float64(row[y]))
                run = 0

    return enc_kernel, dec_kernel, cost_kernel, enc_skip_kernel, dec_skip_kernel, cost_skip_kernel


(_enc_kernel, _dec_kernel, _cost_kernel, _enc_skip_kernel, _dec_skip_kernel,
 _cost_skip_kernel) = _make_kernels(
    _source_stamp(_cdf) ^ (_source_stamp(_coder) << 1))


@njit(cache=True)
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


# ----------------------------------------------------------------------------- Python API

MIX_Z0 = 4.0           # initial z of the LLM input (the others start at 0)


def _mz_init(nsets: int, K: int) -> np.ndarray:
    z = np.zeros((nsets, K), dtype=np.float64)
    z[:, 0] = MIX_Z0
    return z


def column_table(pieces) -> np.ndarray:
    """int32[3, V] for the column bias, from each token's bytes: [0] the bytes before its first
    line break (CR or LF; all of them if none, capped at COL_NB), [1] 1 if it has a line break,
    [2] the bytes after its last line break."""
    t = np.zeros((3, len(pieces)), dtype=np.int32)
    for i, pc in enumerate(pieces):
        cut = [j for j in (pc.find(b"\n"), pc.find(b"\r")) if j >= 0]
        if cut:
            t[0, i] = min(min(cut), COL_NB)
            t[1, i] = 1
            t[2, i] = min(len(pc) - 1 - max(pc.rfind(b"\n"), pc.rfind(b"\r")), COL_NB)
        else:
            t[0, i] = min(len(pc), COL_NB)
    return t


class LaneModel:
    """Online model state of one lane for one segment."""

    def __init__(self, mp: MixParams, n_vocab: int, n_tokens: int, tcol=None):
        """tcol: column_table(token pieces), required when mp.col_lr (engine.column_table())."""
        if mp.col_lr and (tcol is None or tcol.shape != (3, n_vocab)):
            raise ValueError("the column bias needs the token column table of the model")
        N = mp.ngram
        M = 1 if mp.match else 0
        K = 1 + N + M
        nsets = (N + 1) * MIX_MATCH_BUCKETS * MIX_LLM_BUCKETS
        ipar = np.zeros(32, dtype=np.int64)
        ipar[P_NG] = N
        ipar[P_NGBITS] = mp.ngram_bits if N else 0
        ipar[P_NGLIM] = mp.ngram_limit
        ipar[P_MMIN] = mp.match
        ipar[P_MBITS] = mp.match_bits if M else 0
        ipar[P_MLIM] = mp.match_limit
        ipar[P_BIAS] = (2 if mp.bias_ada else 1) if mp.bias_lr else 0
        ipar[P_TEMP] = 1 if mp.temp_lr else 0
        ipar[P_K] = K
        ipar[P_NSETS] = nsets
        ipar[P_BOOST] = 1 if mp.boost_lr else 0
        ipar[P_APM] = 1 if mp.apm_lr else 0
        ipar[P_MIX2] = 1 if mp.mix2 else 0
        ipar[P_SB] = 1 if mp.slot_lr and N else 0
        ipar[P_COL] = 1 if mp.col_lr else 0
        nsets2 = (N + 1) * 3 * 4 * 3 if mp.mix2 else 0
        fpar = np.zeros(16, dtype=np.float64)
        fpar[F_BIAS_LR] = mp.bias_lr / LR_SCALE
        fpar[F_TEMP_LR] = mp.temp_lr / LR_SCALE
        fpar[F_MIX_LR] = mp.mix_lr / LR_SCALE
        fpar[F_FLOOR] = mp.mix_floor / FRAC_SCALE
        fpar[F_NG_ESC] = mp.ngram_esc / FRAC_SCALE
        fpar[F_BOOST_LR] = mp.boost_lr / LR_SCALE
        fpar[F_APM_LR] = mp.apm_lr / LR_SCALE
        fpar[F_APM_W] = mp.apm_w / FRAC_SCALE
        fpar[F_SB_LR] = mp.slot_lr / LR_SCALE
        fpar[F_COL_LR] = mp.col_lr / LR_SCALE
        ist = np.zeros(64, dtype=np.int64)
        fst = np.zeros(16, dtype=np.float64)
        fst[S_TAU] = 1.0
        nb = 1 << mp.ngram_bits if N else 1
        V = n_vocab
        sl = mp.ngram_slots if mp.ngram_slots else SLOTS
        g0 = mp.bias_g0 / FRAC_SCALE if mp.bias_g0 else BIAS_G0
        self.S = (
            ipar, fpar, ist, fst,
            np.zeros(max(1, n_tokens), dtype=np.int32),           # hist
            np.zeros(V if mp.bias_lr else 1, dtype=np.float64),    # bias
            np.zeros(max(V, 16), dtype=np.float64),                # xbuf
            np.zeros(V, dtype=np.float64),                         # p
            np.zeros((max(N, 1), nb), dtype=np.int64),             # ng_tag
            np.zeros((max(N, 1), nb, sl), dtype=np.int32),      # ng_tok
            np.zeros((max(N, 1), nb, sl), dtype=np.int32),      # ng_cnt
            np.zeros(1 << mp.match_bits if M else 1, dtype=np.int64),  # mt
            np.zeros((N_MBUCKETS, 2), dtype=np.float64),           # mcnt (hit, miss)
            _mz_init(nsets + nsets2, K),                           # mz (set 2 rows after)
            np.zeros((K, sl), dtype=np.int64),                  # mk_tok
            np.zeros((K, sl), dtype=np.float64),                # mk_c
            np.zeros(K, dtype=np.int64),                           # mk_n
            np.ones(K, dtype=np.float64),                          # mk_e
            np.zeros(3 * K if mp.mix2 else K, dtype=np.float64),   # w (mix2: w, w1, w2)
            np.zeros(K * sl + 1, dtype=np.int64),               # cand_tok
            np.zeros(K * sl + 1, dtype=np.float64),             # cand_x
            np.zeros((nsets, K), dtype=np.float64),                # beta
            np.zeros(K * sl + 1, dtype=np.float64),             # cand_g
            np.full(V if mp.bias_ada else 1, 1.0 / np.sqrt(g0)),  # bias_g: AdaGrad r
            np.zeros((N + 1) * MIX_MATCH_BUCKETS * 4 * APM_N if mp.apm_lr else APM_N),  # apm
            np.zeros(APM_N),                                       # apm_nodes
            np.zeros((N, nb, sl) if mp.slot_lr and N else (1, 1, 1),
                     dtype=np.float32),                            # ng_b: slot biases
            np.zeros((K, sl), dtype=np.int64),                  # mk_s
            np.stack([np.zeros(2 * COL_NB), np.ones(2 * COL_NB), np.zeros(2 * COL_NB)]
                     if mp.col_lr else [np.zeros(1)] * 3),         # colst: cb, AdaGrad G, Q
            tcol if mp.col_lr else np.zeros((3, 1), dtype=np.int32),  # tcol
        )
        _apm_init(self.S[25], self.S[24])
        self.n_vocab = V
        self.freqs = np.empty(V, dtype=np.int64)

    def _row(self, logits) -> np.ndarray:
        logits = np.ascontiguousarray(_coder._as_logits(logits))
        if logits.shape[0] != self.n_vocab:
            raise ValueError(f"logits row has {logits.shape[0]} entries, expected {self.n_vocab}")
        return logits

    def encode(self, encoder, logits, sym: int) -> None:
        """Code sym with the ensemble distribution on encoder (coder.Encoder), then learn it."""
        encoder._check()
        logits = self._row(logits)
        sym = int(sym)
        if not 0 <= sym < self.n_vocab:
            raise ValueError(f"symbol {sym} out of range [0, {self.n_vocab})")
        encoder._buf = _enc_kernel(encoder._st, encoder._buf, logits, sym, self.freqs, self.S)

    def decode(self, decoder, logits) -> int:
        """Decode one symbol from decoder (coder.Decoder), then learn it."""
        return int(_dec_kernel(decoder._st, decoder._data, self._row(logits), self.freqs, self.S))

    def costs(self, logits2d, toks, skip_thr: float = 0.0, skip_cap: int = 0):
        """Offline evaluation: the frequency of each true token (bits = 24 - log2(f)); with
        skip_thr > 0 also the mask of the tokens the confidence skip would code."""
        out = np.zeros(len(toks), dtype=np.int64)
        toks = np.asarray(toks, dtype=np.int64)
        if skip_thr <= 0.0:
            _cost_kernel(logits2d, toks, self.freqs, self.S, out)
            return out
        skipped = np.zeros(len(toks), dtype=np.int8)
        _cost_skip_kernel(logits2d, toks, self.freqs, self.S, out, skip_thr, skip_cap, skipped)
        return out, skipped

    # ---- confidence skip (neural.lockstep): code a token without the LLM
    def skip_conf(self) -> float:
        """Match-model confidence in its prediction of the next token (0.0: no prediction)."""
        return float(_skip_conf(self.S))

    def encode_skip(self, encoder, sym: int) -> None:
        encoder._check()
        sym = int(sym)
        if not 0 <= sym < self.n_vocab:
            raise ValueError(f"symbol {sym} out of range [0, {self.n_vocab})")
        encoder._buf = _enc_skip_kernel(encoder._st, encoder._buf, sym, self.freqs, self.S)

    def decode_skip(self, decoder) -> int:
        return int(_dec_skip_kernel(decoder._st, decoder._data, self.freqs, self.S))


# Presets are part of the format (model-frame key mix_preset): never change one, add a new id.
# Preset 1 was tuned on cached SmolLM2 logits (scripts/ablation.py).
PRESETS = {1: MixParams(ngram=4, ngram_bits=16, ngram_limit=255, ngram_esc=65536, match=6,
                     match_bits=18, match_limit=1023, bias_lr=500000, bias_ada=1, temp_lr=300,
                     mix_lr=1000000, mix_floor=131, boost_lr=300000)}
# Preset 2: preset 1 plus 8 n-gram slots with slot biases, the second weight set, the SSE of the
# top token, a smaller AdaGrad G0 with a lower bias rate and a lower boost rate (tuned on the
# whole alice29.txt and the corpus slices of scripts/ablation.py).
PRESETS[2] = replace(PRESETS[1], ngram_slots=8, slot_lr=100000, mix2=1, apm_lr=5000,
                     apm_w=65536, bias_g0=32768, bias_lr=400000, boost_lr=100000)
# Preset 3: preset 2 plus the column bias (tuned on the whole alice29.txt: -0.52%; the corpus
# slices of scripts/ablation.py move by -0.1% .. +0.1%).
PRESETS[3] = replace(PRESETS[2], col_lr=131072)
DEFAULTS = PRESETS[3]
