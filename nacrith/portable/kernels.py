"""Numba kernels of the portable engine: every number they produce is defined by formats/ENGINE.md.

The element-wise steps (quantisation, RMSNorm, RoPE, exp/SiLU, attention's float steps,
fixed-point logits) are arith.py's family compiled for the CPU: the device kernels (device.py)
are compiled from the same source.  Here: the vectorised integer products and the threading.

Invariants (what makes the logits identical on every machine, thread count and batch shape):
- every matrix product is an exact integer dot product per 32-block (simd.py: int8/uint4 codes x
  int8 activations summed in int32), combined with the block scales by float32 basic operations in
  block order, one output element at a time;
- every float step is per element / per row, serial, in the order written: no reassociation, no
  fastmath, no FMA contraction (Numba's default fastmath=False emits plain fmul/fadd), no libm
  (mathx.py builds exp, sigmoid, sin/cos from basic operations);
- `prange` splits only independent output elements (rows of a matrix, (token, head) pairs,
  tokens): the work of one element never depends on how many threads there are or which other
  tokens share the batch;
- no reduction variable ever crosses a prange iteration, and no numpy array expression appears in
  a parallel kernel (Numba would parallelise it as a reduction in an unspecified order);
- attention over a lane's cache uses only integer sums (scores per position are independent;
  softmax normaliser and weighted values are integer sums), so the order of cache positions is
  irrelevant too; its maxima are taken on float bits as integers (the same value as a float max);
- where the work runs (a thread, the calling thread below SERIAL_BELOW tokens, which block of
  16 positions) never changes a number: only the speed.
"""
from __future__ import annotations


import numpy as np
from numba import njit, prange

from .arith import F0, LOGIT_MAX, LOGIT_SCALE, P_MAX  # noqa: F401
from .mathx import CPU
from .simd import R, axpy_i8x64, bits_f32, blk16_q4, blk16_q8, dot_i8x32, dots16_i8x64, f32_bits

Q8_0, Q4_1 = 0, 1                # matrix kinds (codes: int8 / packed uint4 + min)
FLUSH = 256                      # int32 value accumulators are flushed to int64 this often

# the element-wise arithmetic (arith.py: one source for the CPU and the device kernels)
quant_block = CPU["quant_block"]
rmsnorm = CPU["rmsnorm"]
rope_apply = CPU["rope_apply"]
fixed_logit = CPU["fixed_logit"]
swiglu = CPU["swiglu"]
dequant = CPU["dequant"]
att_score, att_e, att_z, att_c = CPU["att_score"], CPU["att_e"], CPU["att_z"], CPU["att_c"]
att_gain, att_p, att_out = CPU["att_gain"], CPU["att_p"], CPU["att_out"]


@njit(cache=True)
def quant_row(x, q, d, s):
    """Per-32-block quantisation of one activation row x[C] -> q[C] int8, d[C/32], s[C/32]."""
    for b in range(d.shape[0]):
        db, sb = quant_block(x, b * 32, 32, q, b * 32)
        d[b] = db
        s[b] = sb


@njit(cache=True)
def mm_group(kind, W, Wd, Wm, g, qa, da, sa, t, acc):
    """Rows 16g..16g+15 of a quantised matrix (interleaved layout, model.py) times activation row
    t: acc[0:16] (float32), each lane the §3 block loop of its row, blocks in increasing order.
    (Flat offsets into the C-contiguous 2-D arrays: no views, no reference counting.)"""
    wo = g * W.shape[1]
    so = g * Wd.shape[1]
    mo = so if kind == Q4_1 else 0
    xo = t * qa.shape[1]
    for i in range(R):
        acc[i] = F0
    if kind == Q4_1:
        for b in range(da.shape[1]):
            blk16_q4(acc, W, wo + b * 256, qa, xo + b * 32, Wd, Wm, so + b * R, mo + b * R,
                     da[t, b], sa[t, b])
    else:
        for b in range(da.shape[1]):
            blk16_q8(acc, W, wo + b * 512, qa, xo + b * 32, Wd, Wm, so + b * R, mo,
                     da[t, b], sa[t, b])


@njit(cache=True)
def _mm_rows(kind, W, Wd, Wm, g, qa, da, sa, out, add, acc, T, n):
    for t in range(T):
        mm_group(kind, W, Wd, Wm, g, qa, da, sa, t, acc)
        for i in range(min(R, n - g * R)):
            if add:
                out[t, g * R + i] = out[t, g * R + i] + acc[i]
            else:
                out[t, g * R + i] = acc[i]


@njit(parallel=True, cache=True)
def pmatmul(kind, W, Wd, Wm, qa, da, sa, out, add):
    """out[t, r] (+)= row r times activation row t for every r < out.shape[1], in parallel over
    row groups (each element is computed alone: the split cannot change it)."""
    T, n = out.shape
    for g in prange(W.shape[0]):
        acc = np.empty(R, np.float32)
        _mm_rows(kind, W, Wd, Wm, g, qa, da, sa, out, add, acc, T, n)


@njit(cache=True)
def attend(qq, qo, dq, kc, kd, vc, vd, n, hd, kq_scale, out, oo):
    """Attention of one query head over cache positions 0..n-1 of one KV head -> out[oo:oo+hd].

    The maxima are taken on the float bits as integers (vectorisable, unlike a float max):
    scores as order-preserving keys, NaN never chosen, so m is the largest non-NaN score (its
    sign when it is a zero cannot change e = exp(x - m)); the products c are >= 0 or NaN, and
    cmax is the largest of them that is not NaN (0 if none), as with a float compare."""
    sc = np.empty(n, np.float32)
    si = np.empty(16, np.int32)
    s0 = 0
    if hd == 64:
        while s0 + 16 <= n:
            dots16_i8x64(si, kc, s0 * 64, qq, qo)
            for j in range(16):
                sc[s0 + j] = att_score(dq, kd[s0 + j], si[j], kq_scale)
            s0 += 16
    for s in range(s0, n):
        d = np.int32(0)
        for c in range(hd // 32):
            d += dot_i8x32(kc, s * hd + c * 32, qq, qo + c * 32)
        sc[s] = att_score(dq, kd[s], d, kq_scale)
    mk = _key(np.float32(-np.inf))
    for s in range(n):
        x = sc[s]
        k = _key(x) if x == x else np.int32(-2147483648)
        mk = max(mk, k)
    m = _unkey(mk)
    z = np.int64(0)
    cb = np.int32(0)
    for s in range(n):
        e = att_e(sc[s], m)
        z += att_z(e)
        c = att_c(e, vd[s])
        sc[s] = c
        b = f32_bits(c)
        cb = max(cb, b if b <= 0x7F800000 else np.int32(0))
    cmax = bits_f32(cb)
    if cmax == F0:
        for i in range(hd):
            out[oo + i] = F0
        return
    g = att_gain(cmax)
    acc = np.zeros(hd, np.int32)
    tot = np.zeros(hd, np.int64)
    cnt = 0
    for s in range(n):
        p = att_p(sc[s], g)
        if p != 0:
            if hd == 64:
                axpy_i8x64(acc, 0, p, vc, s * hd)
            else:
                _axpy(acc, p, vc, s * hd, hd)
            cnt += 1
            if cnt == FLUSH:
                for i in range(hd):
                    tot[i] += acc[i]
                    acc[i] = 0
                cnt = 0
    for i in range(hd):
        out[oo + i] = att_out(tot[i] + acc[i], cmax, z)


@njit(cache=True)
def _key(x):
    """float32 -> int32 with the same order (-0.0 just below +0.0; not for NaN)."""
    b = f32_bits(x)
    return b if b >= 0 else b ^ np.int32(0x7FFFFFFF)


@njit(cache=True)
def _unkey(k):
    return bits_f32(k if k >= 0 else k ^ np.int32(0x7FFFFFFF))


@njit(cache=True)
def _axpy(acc, p, v, vo, n):
    for i in range(n):
        acc[i] += p * np.int32(v[vo + i])


@njit(cache=True)
def store_kv(kvec, ko, vvec, vo, hd, kc, kd, vc, vd, slot):
    """Quantise one head's rotated key and its value into cache slot `slot` (int8 per head row)."""
    d, _ = quant_block(kvec, ko, hd, kc, slot * hd)
    kd[slot] = d
    d, _ = quant_block(vvec, vo, hd, vc, slot * hd)
    vd[slot] = d


SERIAL_BELOW = 4                 # tokens: below this, a layer's element steps run on one thread


@njit(cache=True)
def _norm_quant(x, w, eps, h, qa, da, sa, t):
    rmsnorm(x[t], w, eps, h[t])
    quant_row(h[t], qa[t], da[t], sa[t])


@njit(parallel=True, cache=True)
def _norm_quant_rows(x, w, eps, h, qa, da, sa):
    """RMSNorm with weights w, then quantisation, of every token row of x (the two norms of a
    layer); on the calling thread below SERIAL_BELOW tokens."""
    T = x.shape[0]
    if T >= SERIAL_BELOW:
        for t in prange(T):
            _norm_quant(x, w, eps, h, qa, da, sa, t)
    else:
        for t in range(T):
            _norm_quant(x, w, eps, h, qa, da, sa, t)


@njit(cache=True)
def _rope_store(qkv, t, lane_of, slot_of, cs, kraw, n_keep, qq, dq, n_head, n_kv, hd, n_rot,
                kc, kd, vc, vd):
    """Token t: keep its raw keys (kept slots), rotate and quantise its query heads, rotate and
    store its keys and values in the cache."""
    nq = n_head * hd
    nk = n_kv * hd
    lane = lane_of[t]
    slot = slot_of[t]
    row = qkv[t]
    if slot < n_keep:
        for i in range(nk):
            kraw[lane, slot, i] = row[nq + i]
    for hh in range(n_head):
        rope_apply(row, hh * hd, n_rot, cs, t)
        d, _ = quant_block(row, hh * hd, hd, qq[t], hh * hd)
        dq[t, hh] = d
    for g in range(n_kv):
        rope_apply(row, nq + g * hd, n_rot, cs, t)
        store_kv(row, nq + g * hd, row, nq + nk + g * hd, hd,
                 kc[lane, g], kd[lane, g], vc[lane, g], vd[lane, g], slot)


@njit(cache=True)
def _swiglu_quant(gu, t, F, qa, da, sa):
    act = np.empty(F, np.float32)
    for i in range(F):
        act[i] = swiglu(gu[t, i], gu[t, F + i])
    quant_row(act, qa[t], da[t], sa[t])


@njit(parallel=True, cache=True)
def layer(x, lane_of, slot_of, cs, attn_w, ffn_w, eps, kind,
          wqkv, wqkv_d, wqkv_m, wo, wo_d, wo_m, wgu, wgu_d, wgu_m, wdn, wdn_d, wdn_m,
          kc, kd, vc, vd, kraw, n_keep, n_head, n_kv, hd, n_rot, kq_scale):
    """One transformer block for T tokens, in place on the residual x[T, D].

    Caches of this layer: kc/vc int8 [lanes, n_kv, ctx*hd], kd/vd float32 [lanes, n_kv, ctx];
    kraw float32 [lanes, n_keep, n_kv*hd]: un-rotated keys of the kept positions (re-rotated after
    a slide).  Token t goes to lane lane_of[t], slot slot_of[t]; cs[t] is its RoPE table.
    Below SERIAL_BELOW tokens the per-token element steps run on the calling thread (a parallel
    region costs more than they do); the products and attention are parallel always."""
    T, D = x.shape
    nbD = D // 32
    nq = n_head * hd
    nk = n_kv * hd
    F = wdn_d.shape[1] // R * 32          # ffn width = columns of the down matrix
    par = T >= SERIAL_BELOW
    h = np.empty((T, D), np.float32)
    qa = np.empty((T, D), np.int8)
    da = np.empty((T, nbD), np.float32)
    sa = np.empty((T, nbD), np.float32)
    _norm_quant_rows(x, attn_w, eps, h, qa, da, sa)
    qkv = np.empty((T, nq + 2 * nk), np.float32)
    pmatmul(kind, wqkv, wqkv_d, wqkv_m, qa, da, sa, qkv, False)
    qq = np.empty((T, nq), np.int8)
    dq = np.empty((T, n_head), np.float32)
    if par:
        for t in prange(T):
            _rope_store(qkv, t, lane_of, slot_of, cs, kraw, n_keep, qq, dq, n_head, n_kv, hd,
                        n_rot, kc, kd, vc, vd)
    else:
        for t in range(T):
            _rope_store(qkv, t, lane_of, slot_of, cs, kraw, n_keep, qq, dq, n_head, n_kv, hd,
                        n_rot, kc, kd, vc, vd)
    att = np.empty((T, nq), np.float32)
    grp = n_head // n_kv
    for i in prange(T * n_head):
        t = i // n_head
        hh = i % n_head
        g = hh // grp
        lane = lane_of[t]
        attend(qq[t], hh * hd, dq[t, hh], kc[lane, g], kd[lane, g], vc[lane, g], vd[lane, g],
               slot_of[t] + 1, hd, kq_scale, att[t], hh * hd)
    nbQ = nq // 32
    qa2 = np.empty((T, nq), np.int8)
    da2 = np.empty((T, nbQ), np.float32)
    sa2 = np.empty((T, nbQ), np.float32)
    if par:
        for t in prange(T):
            quant_row(att[t], qa2[t], da2[t], sa2[t])
    else:
        for t in range(T):
            quant_row(att[t], qa2[t], da2[t], sa2[t])
    pmatmul(kind, wo, wo_d, wo_m, qa2, da2, sa2, x, True)
    _norm_quant_rows(x, ffn_w, eps, h, qa, da, sa)
    gu = np.empty((T, 2 * F), np.float32)
    pmatmul(kind, wgu, wgu_d, wgu_m, qa, da, sa, gu, False)
    nbF = F // 32
    qa3 = np.empty((T, F), np.int8)
    da3 = np.empty((T, nbF), np.float32)
    sa3 = np.empty((T, nbF), np.float32)
    if par:
        for t in prange(T):
            _swiglu_quant(gu, t, F, qa3, da3, sa3)
    else:
        for t in range(T):
            _swiglu_quant(gu, t, F, qa3, da3, sa3)
    pmatmul(kind, wdn, wdn_d, wdn_m, qa3, da3, sa3, x, True)


@njit(cache=True)
def layers(x, lane_of, slot_of, cs, attn_w, ffn_w, eps, kind,
           wqkv, wqkv_d, wqkv_m, wo, wo_d, wo_m, wgu, wgu_d, wgu_m, wdn, wdn_d, wdn_m,
           kc, kd, vc, vd, kraw, n_keep, n_head, n_kv, hd, n_rot, kq_scale):
    """Every transformer block in order (layer() with the weights and caches of layer l): one
    call per feed instead of one per layer (each call from Python costs its argument checks)."""
    for l in range(wqkv.shape[0]):
        layer(x, lane_of, slot_of, cs, attn_w[l], ffn_w[l], eps, kind,
              wqkv[l], wqkv_d[l], wqkv_m[l], wo[l], wo_d[l], wo_m[l], wgu[l], wgu_d[l], wgu_m[l],
              wdn[l], wdn_d[l], wdn_m[l], kc[l], kd[l], vc[l], vd[l], kraw[l], n_keep, n_head,
              n_kv, hd, n_rot, kq_scale)


@njit(parallel=True, cache=True)
def head(x, sel, norm_w, eps, kind, W, Wd, Wm, out):
    """Final RMSNorm of the selected tokens x[sel[i]] and the output matrix; out[i, v] float32
    logits rounded to integers of 2^-16 (|value| < 2^8, exactly representable)."""
    S = sel.shape[0]
    D = x.shape[1]
    nb = D // 32
    qa = np.empty((S, D), np.int8)
    da = np.empty((S, nb), np.float32)
    sa = np.empty((S, nb), np.float32)
    for i in prange(S):
        h = np.empty(D, np.float32)
        rmsnorm(x[sel[i]], norm_w, eps, h)
        quant_row(h, qa[i], da[i], sa[i])
    V = out.shape[1]
    for g in prange(W.shape[0]):
        acc = np.empty(R, np.float32)
        for i in range(S):
            mm_group(kind, W, Wd, Wm, g, qa, da, sa, i, acc)
            for j in range(min(R, V - g * R)):
                out[i, g * R + j] = fixed_logit(acc[j])


@njit(parallel=True, cache=True)
def final_hidden(x, sel, norm_w, eps, out):
    """out[i] = the final RMSNorm of x[sel[i]] (the vector head() quantises): float32, the
    same operations as head's, so as deterministic as the logits."""
    for i in prange(sel.shape[0]):
        rmsnorm(x[sel[i]], norm_w, eps, out[i])


@njit(parallel=True, cache=True)
def embed(tokens, kind, W, Wd, Wm, out):
    """out[t] = dequantised row tokens[t] (interleaved layout): Q8_0 d*q, Q4_1 d*q + m."""
    D = out.shape[1]
    for t in prange(tokens.shape[0]):
        g = tokens[t] // R
        r = tokens[t] % R
        w = W[g]
        for b in range(D // 32):
            d = Wd[g, b * R + r]
            if kind == Q4_1:
                m = Wm[g, b * R + r]
                for j in range(16):
                    byte = np.int32(w[b * 256 + (j // 4) * 64 + 4 * r + j % 4])
                    out[t, b * 32 + j] = dequant(d, byte & 15, m, True)
                    out[t, b * 32 + 16 + j] = dequant(d, byte >> 4, m, True)
            else:
                for j in range(32):
                    out[t, b * 32 + j] = dequant(
                        d, np.int8(w[b * 512 + (j // 4) * 64 + 4 * r + j % 4]), F0, False)


@njit(cache=True)
def rerotate(kraw, kc, kd, n_keep, n_kv, hd, n_rot, cs):
    """Kept positions j < n_keep of one lane and layer: rotate the raw key by table cs[j] and
    re-quantise it into slot j (after a slide moved the lane's offset)."""
    tmp = np.empty(hd, np.float32)
    for j in range(n_keep):
        for g in range(n_kv):
            for i in range(hd):
                tmp[i] = kraw[j, g * hd + i]
            rope_apply(tmp, 0, n_rot, cs, j)
            d, _ = quant_block(tmp, 0, hd, kc[g], j * hd)
            kd[g, j] = d
