"""numba.cuda kernels of the portable engine's matrix products and attention (formats/ENGINE.md
§3 and §5.4), computing the same integers and the same float32/float64 operation sequence as the
CPU kernels, one output element per GPU thread.

Invariants: the integer block sums are exact (on hardware: dp4a-style int32 sums); every float
step is the same basic operation as on the CPU, in the same order.  On real hardware the kernels
must be compiled without FMA contraction, fast division/sqrt or flush-to-zero (numba.cuda's
default `fastmath=False`; NVVM contraction must additionally be disabled, see ENGINE.md §9).
Tested bit-for-bit against the CPU kernels under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

F0 = np.float32(0.0)
F05 = np.float32(0.5)
ONE = np.float32(1.0)
LOG2E_F = np.float32(1.44269504088896341)
LN2_HI_F = np.float32(0.693359375)
LN2_LO_F = np.float32(-2.12194440e-4)
EXP_MIN = np.float32(-80.0)


@cuda.jit(device=True)
def _exp_nonpos(x, pow2, ec):
    if not (x >= EXP_MIN):
        return F0
    t = x * LOG2E_F
    n = -np.int32(F05 - t)
    nf = np.float32(n)
    r = (x - nf * LN2_HI_F) - nf * LN2_LO_F
    p = ec[7]
    p = p * r + ec[6]
    p = p * r + ec[5]
    p = p * r + ec[4]
    p = p * r + ec[3]
    p = p * r + ec[2]
    p = p * r + ONE
    p = p * r + ONE
    return p * pow2[n + 127]


@cuda.jit
def mm_kernel(kind, W, Wd, Wm, qa, da, sa, out):
    """out[t, r] = row r of the matrix x activation row t (ENGINE.md §3)."""
    r, t = cuda.grid(2)
    if r >= W.shape[0] or t >= qa.shape[0]:
        return
    acc = F0
    for b in range(Wd.shape[1]):
        s = np.int32(0)
        if kind == 1:
            for j in range(16):
                byte = np.int32(W[r, b * 16 + j])
                s += (byte & 15) * np.int32(qa[t, b * 32 + j])
                s += (byte >> 4) * np.int32(qa[t, b * 32 + 16 + j])
            dd = Wd[r, b] * da[t, b]
            mm = Wm[r, b] * da[t, b]
            acc = acc + (dd * np.float32(s) + mm * sa[t, b])
        else:
            for j in range(32):
                w = np.int32(W[r, b * 32 + j])
                if w > 127:
                    w -= 256
                s += w * np.int32(qa[t, b * 32 + j])
            acc = acc + (Wd[r, b] * da[t, b]) * np.float32(s)
    out[t, r] = acc


@cuda.jit
def attend_kernel(qq, dq, kc, kd, vc, vd, lane_of, slot_of, grp, hd, kq_scale, sc, pow2, ec,
                  acc64, out):
    """One thread per (token t, query head h): ENGINE.md §5 step 4 over the lane's cache.
    sc: float32 scratch [T*H, ctx]; acc64: int64 scratch [T*H, hd]."""
    i = cuda.grid(1)
    n_head = dq.shape[1]
    if i >= qq.shape[0] * n_head:
        return
    t = i // n_head
    h = i % n_head
    g = h // grp
    lane = lane_of[t]
    n = slot_of[t] + 1
    m = np.float32(-np.inf)
    for s in range(n):
        si = np.int32(0)
        for j in range(hd):
            si += np.int32(kc[lane, g, s * hd + j]) * np.int32(qq[t, h * hd + j])
        x = ((dq[t, h] * kd[lane, g, s]) * np.float32(si)) * kq_scale
        sc[i, s] = x
        if x > m:
            m = x
    z = np.int64(0)
    cmax = F0
    for s in range(n):
        e = _exp_nonpos(sc[i, s] - m, pow2, ec)
        z += np.int64(e * np.float32(16777216.0))
        c = e * vd[lane, g, s]
        sc[i, s] = c
        if c > cmax:
            cmax = c
    if cmax == F0:
        for j in range(hd):
            out[t, h * hd + j] = F0
        return
    gs = np.float32(32767.0) / cmax
    for j in range(hd):
        acc64[i, j] = 0
    for s in range(n):
        p = np.int32(sc[i, s] * gs + F05)
        if p > 32767:
            p = np.int32(32767)
        for j in range(hd):
            acc64[i, j] += np.int64(p) * np.int64(vc[lane, g, s * hd + j])
    f = (np.float64(cmax) * 16777216.0) / np.float64(32767.0)
    zf = np.float64(z)
    for j in range(hd):
        out[t, h * hd + j] = np.float32((np.float64(acc64[i, j]) * f) / zf)


def exp_tables():
    from .mathx import POW2_F, _EC
    return POW2_F, np.array(_EC, np.float32)


def mm(kind, W, Wd, Wm, qa, da, sa):
    out = np.zeros((qa.shape[0], W.shape[0]), np.float32)
    tpb = (32, 4)
    blocks = ((W.shape[0] + 31) // 32, (qa.shape[0] + 3) // 4)
    mm_kernel[blocks, tpb](kind, W, Wd, Wm, qa, da, sa, out)
    return out


def attention(qq, dq, kc, kd, vc, vd, lane_of, slot_of, grp, hd, kq_scale, ctx):
    T, H = dq.shape
    out = np.zeros((T, H * hd), np.float32)
    sc = np.zeros((T * H, ctx), np.float32)
    acc = np.zeros((T * H, hd), np.int64)
    pow2, ec = exp_tables()
    attend_kernel[(T * H + 31) // 32, 32](qq, dq, kc, kd, vc, vd, lane_of, slot_of, grp, hd,
                                          kq_scale, sc, pow2, ec, acc, out)
    return out


def feed(b, lanes, groups):
    """PortableBackend.feed with the matrix products and attention on the CUDA device (the
    element-wise steps run on the host through the CPU helpers: same operations either way)."""
    from . import kernels as K
    toks, lane_of, slot_of, cs, sel = b._plan(lanes, groups)
    m = b.m
    T, D = len(toks), m.d_model
    hd, H, Hkv = m.head_dim, m.n_head, m.n_kv
    nq, nk = H * hd, Hkv * hd
    x = np.empty((T, D), np.float32)
    e = m.embd
    K.embed(toks, e.kind, e.q, e.d, e.m, x)

    def qrow(v):
        n = v.shape[1]
        qa = np.empty((v.shape[0], n), np.int8)
        da = np.empty((v.shape[0], n // 32), np.float32)
        sa = np.empty((v.shape[0], n // 32), np.float32)
        for t in range(v.shape[0]):
            K.quant_row(v[t], qa[t], da[t], sa[t])
        return qa, da, sa

    def norm(w):
        h = np.empty((T, D), np.float32)
        for t in range(T):
            K.rmsnorm(x[t], w, m.eps, h[t])
        return h

    for l in range(m.n_layer):
        W = m.wqkv
        qkv = mm(m.kind, *W.plain(l), *qrow(norm(m.attn_norm[l])))
        qq = np.empty((T, nq), np.int8)
        dq = np.empty((T, H), np.float32)
        kc, kd, vc, vd = b.kc[l], b.kd[l], b.vc[l], b.vd[l]
        for t in range(T):
            lane, slot, row = lane_of[t], slot_of[t], qkv[t]
            if slot < b.n_keep:
                b.kraw[l, lane, slot, :] = row[nq:nq + nk]
            for hh in range(H):
                K.rope_apply(row, hh * hd, m.n_rot, cs, t)
                dq[t, hh], _ = K.quant_block(row, hh * hd, hd, qq[t], hh * hd)
            for g in range(Hkv):
                K.rope_apply(row, nq + g * hd, m.n_rot, cs, t)
                K.store_kv(row, nq + g * hd, row, nq + nk + g * hd, hd,
                           kc[lane, g], kd[lane, g], vc[lane, g], vd[lane, g], slot)
        att = attention(qq, dq, kc, kd, vc, vd, lane_of, slot_of, H // Hkv, hd, b.kq_scale,
                        b.ctx)
        W = m.wo
        x = x + mm(m.kind, *W.plain(l), *qrow(att))
        W = m.wgu
        gu = mm(m.kind, *W.plain(l), *qrow(norm(m.ffn_norm[l])))
        F = gu.shape[1] // 2
        act = np.empty((T, F), np.float32)
        for t in range(T):
            for i in range(F):
                act[t, i] = K.silu_f32(gu[t, i]) * gu[t, F + i]
        W = m.wdn
        x = x + mm(m.kind, *W.plain(l), *qrow(act))
    h = np.empty((len(sel), D), np.float32)
    for i, t in enumerate(sel):
        K.rmsnorm(x[t], m.out_norm, m.eps, h[i])
    W = m.out
    y = mm(W.kind, *W.plain(), *qrow(h))
    out = np.empty_like(y)
    for i in range(y.shape[0]):
        for v in range(y.shape[1]):
            out[i, v] = K.fixed_logit(y[i, v])
    return out
