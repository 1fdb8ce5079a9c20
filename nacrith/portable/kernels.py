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
- the threads of a team (feed_team, team.py) split only independent output elements (rows of
  a matrix, (token, head) pairs, tokens, 32-blocks): the work of one element never depends on
  how many threads there are, which thread claims it or which other tokens share the batch;
- no float reduction crosses chunks: what chunks combine are integer maxima and sums;
- attention over a lane's cache uses only integer sums (scores per position are independent;
  softmax normaliser and weighted values are integer sums), so the order of cache positions is
  irrelevant too, and a team cuts a head's positions into chunks whose partial maxima and sums
  it combines; its maxima are taken on float bits as integers (the same value as a float max);
- where the work runs (which thread, which chunk, which block of 16 positions) never changes a
  number: only the speed.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from .arith import F0, LOGIT_MAX, LOGIT_SCALE, P_MAX  # noqa: F401
from .mathx import CPU
from .team import claim, cycles, next_chunk, share, tick, wait
from .simd import (R, axpy_i8x64, bits_f32, blk16_q4, blk16_q6, blk16_q8, dot_i8x32,
                   dots16_i8x64, f32_bits)

Q8_0, Q4_1, Q6 = 0, 1, 2         # matrix kinds (codes: int8 / packed uint4 + min / int8, 2 scales)
FLUSH = 256                      # int32 value accumulators are flushed to int64 this often

# the element-wise arithmetic (arith.py: one source for the CPU and the device kernels)
quant_block = CPU["quant_block"]
rmsnorm = CPU["rmsnorm"]
rope_apply = CPU["rope_apply"]
fixed_logit = CPU["fixed_logit"]
swiglu = CPU["swiglu"]
geglu = CPU["geglu"]
rope_neox = CPU["rope_neox"]
add_norm = CPU["add_norm"]
dequant = CPU["dequant"]
embed_scale = CPU["embed_scale"]
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
    elif kind == Q6:
        for b in range(da.shape[1]):
            blk16_q6(acc, W, wo + b * 512, qa, xo + b * 32, Wd, Wm, so + b * R, so + b * R,
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


@njit(cache=True)
def attend(qq, qo, dq, kc, kd, vc, vd, n, hd, kq_scale, out, oo):
    """Attention of one query head over cache positions 0..n-1 of one KV head -> out[oo:oo+hd]:
    the three passes below over all n positions, then att_finish.

    The passes can be cut into ranges of positions (a team does: feed_team): the maximum of
    the scores and of the products, the normaliser z and the weighted values are order-free
    (integer maxima and sums), so the result is the same for any cut.  The passes take views
    of the range (with offsets into whole arrays LLVM no longer vectorises pass 2)."""
    sc = np.empty(n, np.float32)
    si = np.empty(16, np.int32)
    m = _unkey(att_scores(qq, qo, dq, kc[:n * hd], kd[:n], hd, kq_scale, sc, si))
    z, cb = att_weights(sc, vd[:n], m)
    cmax = bits_f32(cb)
    tot = np.zeros(hd, np.int64)
    if cmax != F0:
        att_values(sc, vc[:n * hd], hd, att_gain(cmax), tot, np.empty(hd, np.int32))
    att_finish(tot, cmax, z, hd, out, oo)


@njit(cache=True)
def att_scores(qq, qo, dq, kc, kd, hd, kq_scale, sc, si):
    """Pass 1 over the positions of the views kc [n*hd], kd [n]: scores into sc[:n]; returns
    their largest key (order-preserving int32 of the largest non-NaN score; key(-inf) if
    none).  si: int32 [16] scratch."""
    n = kd.shape[0]
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
    return mk


@njit(cache=True)
def att_weights(sc, vd, m):
    """Pass 2 over the positions of the view vd [n], with the maximum m over all positions:
    e = exp(score - m); returns (sum of att_z(e), the bits of the largest non-NaN product c, 0
    if none); sc[:n] holds the products c = e * value scale afterwards."""
    z = np.int64(0)
    cb = np.int32(0)
    for s in range(vd.shape[0]):
        e = att_e(sc[s], m)
        z += att_z(e)
        c = att_c(e, vd[s])
        sc[s] = c
        b = f32_bits(c)
        cb = max(cb, b if b <= 0x7F800000 else np.int32(0))
    return z, cb


@njit(cache=True)
def att_values(sc, vc, hd, g, tot, acc):
    """Pass 3 over the positions of the view vc [n*hd], gain g = att_gain(cmax): tot[i] += sum
    of p * v[s, i] (int32 partial sums in acc [hd], flushed to the int64 tot every FLUSH
    terms: exact)."""
    for i in range(hd):
        acc[i] = 0
    cnt = 0
    for s in range(vc.shape[0] // hd):
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
        tot[i] += acc[i]


@njit(cache=True)
def att_finish(tot, cmax, z, hd, out, oo):
    """out[oo + i] = att_out(tot[i]) (zeros when every product is 0)."""
    for i in range(hd):
        out[oo + i] = F0 if cmax == F0 else att_out(tot[i], cmax, z)


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


@njit(cache=True)
def _norm_quant(x, w, eps, h, qa, da, sa, t):
    rmsnorm(x[t], w, eps, h[t])
    quant_row(h[t], qa[t], da[t], sa[t])


@njit(cache=True)
def _rotate(v, vo, n_rot, cs, tt, neox):
    if neox:
        rope_neox(v, vo, n_rot, cs, tt)
    else:
        rope_apply(v, vo, n_rot, cs, tt)


@njit(cache=True)
def _rope_item(qkv, i, lane_of, slot_of, cs, kraw, n_keep, qq, dq, n_head, n_kv, hd, n_rot,
               kc, kd, vc, vd, qn, kn, eps, neox):
    """Item i of the RoPE step for T tokens (each touches one head of one token): for
    i < T*n_head (token, query head) normed (qn non-empty: Gemma-3), rotated and quantised
    into qq/dq; then (token, KV head): the key normed (kn), kept un-rotated (slot < n_keep),
    rotated, key and value quantised into the cache."""
    nq = n_head * hd
    nk = n_kv * hd
    T = qq.shape[0]
    if i < T * n_head:
        t = i // n_head
        hh = i % n_head
        if qn.shape[0]:
            v = qkv[t, hh * hd:(hh + 1) * hd]
            rmsnorm(v, qn, eps, v)
        _rotate(qkv[t], hh * hd, n_rot, cs, t, neox)
        d, _ = quant_block(qkv[t], hh * hd, hd, qq[t], hh * hd)
        dq[t, hh] = d
        return
    i -= T * n_head
    t = i // n_kv
    g = i % n_kv
    lane = lane_of[t]
    slot = slot_of[t]
    row = qkv[t]
    if kn.shape[0]:
        v = row[nq + g * hd:nq + (g + 1) * hd]
        rmsnorm(v, kn, eps, v)
    if slot < n_keep:
        for j in range(g * hd, (g + 1) * hd):
            kraw[lane, slot, j] = row[nq + j]
    _rotate(row, nq + g * hd, n_rot, cs, t, neox)
    store_kv(row, nq + g * hd, row, nq + nk + g * hd, hd,
             kc[lane, g], kd[lane, g], vc[lane, g], vd[lane, g], slot)


@njit(cache=True)
def _swiglu_blocks(gu, t, F, b0, b1, qa, da, sa, gelu):
    """SwiGLU (GeGLU with gelu) of token t's 32-blocks b0..b1-1 (gate gu[t, :F], up gu[t, F:])
    quantised into qa/da/sa: each block alone, as quant_row does."""
    act = np.empty(32, np.float32)
    for b in range(b0, b1):
        for i in range(32):
            if gelu:
                act[i] = geglu(gu[t, b * 32 + i], gu[t, F + b * 32 + i])
            else:
                act[i] = swiglu(gu[t, b * 32 + i], gu[t, F + b * 32 + i])
        d, s = quant_block(act, 0, 32, qa[t], b * 32)
        da[t, b] = d
        sa[t, b] = s


WHOLE_HEADS = 2                  # heads per thread from which a team runs attention per head
ATT_CHUNK = 512                  # positions per attention chunk of a team (feed_team)
MM_CHUNKS = 8                    # chunks per thread of a team's matrix product
S_EMBED, S_ELEM, S_MAT, S_ROPE, S_ATT, S_HEAD = range(6)     # stages of a feed_team profile
STAGES = ("embed", "norms, quantisation, SwiGLU", "matrices", "RoPE + cache store", "attention",
          "head")


@njit(cache=True)
def att_plan(slot_of, lo_of, n_head, size):
    """The attention chunks of a team for tokens with slots slot_of: head j = t*n_head + hh
    (token t sees positions lo_of[t]..slot_of[t]) has chunks first[j]..first[j+1]-1, chunk c
    covering positions [c0[c], c1[c]) of head cj[c] (`size` positions each, the last one
    shorter), its scores at so[c] of the scratch (head j's window at j*Nmax); and Nmax, the
    longest window."""
    T = slot_of.shape[0]
    H = T * n_head
    Nmax = 0
    for t in range(T):
        Nmax = max(Nmax, slot_of[t] + 1 - lo_of[t])
    first = np.empty(H + 1, np.int64)
    nc = 0
    for j in range(H):
        first[j] = nc
        t = j // n_head
        nc += (slot_of[t] - lo_of[t] + size) // size
    first[H] = nc
    cj = np.empty(nc, np.int64)
    c0 = np.empty(nc, np.int64)
    c1 = np.empty(nc, np.int64)
    so = np.empty(nc, np.int64)
    for j in range(H):
        t = j // n_head
        n = slot_of[t] + 1
        for c in range(first[j], first[j + 1]):
            cj[c] = j
            c0[c] = lo_of[t] + (c - first[j]) * size
            c1[c] = min(n, c0[c] + size)
            so[c] = j * Nmax + c0[c] - lo_of[t]
    return first, cj, c0, c1, so, Nmax


@njit(cache=True)
def window_starts(slot_of, window):
    """The first position each token sees in a sliding-window layer (window 0: none)."""
    lo = np.zeros(slot_of.shape[0], np.int64)
    if window > 0:
        for t in range(slot_of.shape[0]):
            lo[t] = max(0, slot_of[t] - window + 1)
    return lo


# the 15 steps of a layer in feed_team, in the order they run (13: the post-attention norm,
# 14: the post-feed-forward norm, Gemma-3 only), their stage, which matrix the products use
_STEPS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 13, 9, 10, 11, 12, 14)
_STEP_STAGE = (S_ELEM, S_MAT, S_ROPE, S_ATT, S_ATT, S_ATT, S_ATT, S_ELEM, S_MAT, S_ELEM, S_MAT,
               S_ELEM, S_MAT, S_ELEM, S_ELEM)
_STEP_MAT = (-1, 0, -1, -1, -1, -1, -1, -1, 1, -1, 2, -1, 3, -1, -1)


@njit(cache=True)
def mm_range(kind, W, Wd, Wm, qa, da, sa, out, add, lo, hi, acc):
    """out[t, r] (+= with add) row r of a quantised matrix times activation row t, for the rows
    of groups lo..hi-1 (each element alone: a split cannot change it)."""
    T, n = out.shape
    for g in range(lo, hi):
        _mm_rows(kind, W, Wd, Wm, g, qa, da, sa, out, add, acc, T, n)


@njit(cache=True)
def _head_rows(kind, W, Wd, Wm, qa, da, sa, out, lo, hi, acc):
    """Row groups lo..hi-1 of the output matrix: fixed-point logits out[i, v] (float32 integers
    of 2^-16, |value| < 2^8) of every selected token's quantised final norm qa[i]."""
    V = out.shape[1]
    for g in range(lo, hi):
        for i in range(out.shape[0]):
            mm_group(kind, W, Wd, Wm, g, qa, da, sa, i, acc)
            for j in range(min(R, V - g * R)):
                out[i, g * R + j] = fixed_logit(acc[j])


@njit(cache=True)
def _take(buf, o, r, c):
    """The [r, c] view of buf at element o, and o + r*c (an empty view past buf's end: the
    caller checks the last offset)."""
    e = o + r * c
    if e > buf.shape[0]:
        return buf[:0].reshape(0, c), e
    return buf[o:e].reshape(r, c), e


@njit(cache=True)
def _att_layout(slot_of, lo_of, n_head, size, whole_heads, nth):
    """How a team of nth threads splits attention: (per head?, att_plan's chunks and the
    longest window Nmax of the chunked scores' scratch; per head: no chunks, Nmax 0)."""
    whole = slot_of.shape[0] * n_head >= whole_heads * nth
    if whole:
        return (whole,) + att_plan(slot_of[:0], lo_of[:0], n_head, size)
    return (whole,) + att_plan(slot_of, lo_of, n_head, size)


@njit(cache=True)
def _carve(f32, i8, i32, i64, T, D, n_head, n_kv, hd, F, NC, Nmax):
    """feed_team's shared scratch as views of the four buffers, in one fixed layout, and the
    element counts it needs of each (on empty buffers: the sizes to allocate, team_scratch)."""
    nq = n_head * hd
    h, o = _take(f32, 0, T, D)
    da, o = _take(f32, o, T, D // 32)
    sa, o = _take(f32, o, T, D // 32)
    qkv, o = _take(f32, o, T, nq + 2 * n_kv * hd)
    dq, o = _take(f32, o, T, n_head)
    sc, o = _take(f32, o, 1, T * n_head * Nmax)
    att, o = _take(f32, o, T, nq)
    mo, o = _take(f32, o, T, D)
    da2, o = _take(f32, o, T, nq // 32)
    sa2, o = _take(f32, o, T, nq // 32)
    gu, o = _take(f32, o, T, 2 * F)
    da3, o = _take(f32, o, T, F // 32)
    sa3, o = _take(f32, o, T, F // 32)
    qa, o8 = _take(i8, 0, T, D)
    qq, o8 = _take(i8, o8, T, nq)
    qa2, o8 = _take(i8, o8, T, nq)
    qa3, o8 = _take(i8, o8, T, F)
    pm, o32 = _take(i32, 0, NC, 2)
    pz, o64 = _take(i64, 0, 1, NC)
    ptot, o64 = _take(i64, o64, NC, hd)
    return (h, da, sa, qkv, dq, sc[0] if sc.shape[0] else sc.reshape(0), att, mo, da2, sa2, gu,
            da3, sa3, qa, qq, qa2, qa3, pm, pz[0] if pz.shape[0] else pz.reshape(0), ptot,
            (o, o8, o32, o64))


@njit(nogil=True, cache=True)
def team_phases(n_layer):
    """Phases of feed_team at most: embed, 15 per layer, the head's norm and its matrix."""
    return 1 + 15 * n_layer + 2


@njit(nogil=True, cache=True)
def feed_team(tid, nth, bar, toks, ekind, ew, ewd, ewm, x, lane_of, slot_of, cs, attn_w, ffn_w,
              eps, kinds, wqkv, wqkv_d, wqkv_m, wo, wo_d, wo_m, wgu, wgu_d, wgu_m, wdn, wdn_d,
              wdn_m, kv, n_keep, n_head, n_kv, hd, n_rot, kq_scale,
              sel, norm_w, hkind, hw, hwd, hwm, out, f32, i8, i32, i64, clk, att_chunk,
              whole_heads, ar):
    """One feed (formats/ENGINE.md §5, §10: embedding, every block, the head) of T tokens, run
    by every thread of a team (team.py), in phases whose chunks the threads claim: embed by
    token; per layer: norm + quantise by token, the products by row groups (each group for all
    T tokens: a weight block is read once per feed), RoPE and the cache store by (token, head),
    attention per head (whole_heads or more heads per thread) or, for fewer heads, its three
    passes over chunks of att_chunk positions of each head with partial maxima and integer sums
    combined per head (the cut cannot change them: attend), quantise by token, [Gemma-3: the
    post-attention norm by token], SwiGLU/GeGLU + quantise by 32-blocks, [the post-feed-forward
    norm]; the head's norm by token and its matrix by row groups.  Each output element is
    computed by one chunk, so neither the thread count nor who claims a chunk changes a
    number.  kinds [L, 4]: the kind of each layer's four matrices; ar: the architecture's
    extras (Arch: empty norms and window 0 for llama, whose steps 13/14 are skipped by every
    thread alike); kv: the caches (KV: sliding-window layers in their own rows).
    f32/i8/i32/i64: the shared scratch (team_scratch elements); clk: a stage profile
    (team.tick, stages STAGES) or an empty [0, k] array."""
    T, D = x.shape
    F = wdn_d.shape[2] // R * 32
    H = T * n_head
    grp = n_head // n_kv
    post = ar.pan.shape[1] > 0
    lo_g = np.zeros(T, np.int64)
    lo_s = window_starts(slot_of, ar.window) + kv.slot2 - slot_of     # as rows of kv.kc2
    whole, gfirst, gcj, gc0, gc1, gso, gN = _att_layout(slot_of, lo_g, n_head, att_chunk,
                                                        whole_heads, nth)
    _, sfirst, scj, sc0, sc1, sso, sN = _att_layout(kv.slot2, lo_s, n_head, att_chunk,
                                                    whole_heads, nth)
    NC = max(gcj.shape[0], scj.shape[0])
    (h, da, sa, qkv, dq, sc, att, mo, da2, sa2, gu, da3, sa3, qa, qq, qa2, qa3, pm, pz, ptot,
     need) = _carve(f32, i8, i32, i64, T, D, n_head, n_kv, hd, F, NC, max(gN, sN))
    if need[0] > f32.shape[0] or need[1] > i8.shape[0] or need[2] > i32.shape[0] \
            or need[3] > i64.shape[0]:
        raise ValueError("feed_team: scratch too small")
    acc = np.empty(R, np.float32)
    tot = np.empty(hd, np.int64)
    si = np.empty(16, np.int32)
    ai = np.empty(hd, np.int32)
    nbF = F // 32
    fch = (nbF + 7) // 8                                # SwiGLU chunks per token

    t0 = cycles() if clk.shape[0] else 0
    L = wqkv.shape[0]
    p = 0
    for l in range(-1, L + 1):
        swa = 0 <= l < L and ar.swa[l] != 0
        first, cj, c0, c1, so = (sfirst, scj, sc0, sc1, sso) if swa else (gfirst, gcj, gc0,
                                                                           gc1, gso)
        lo_of = lo_s if swa else lo_g
        csl = ar.cs2 if swa else cs
        c = kv.li[min(max(l, 0), L - 1)]
        if swa:
            slots, kcl, kdl, vcl, vdl = kv.slot2, kv.kc2[c], kv.kd2[c], kv.vc2[c], kv.vd2[c]
        else:
            slots, kcl, kdl, vcl, vdl = slot_of, kv.kc[c], kv.kd[c], kv.vc[c], kv.vd[c]
        for si_ in range(15 if 0 <= l < L else 1 if l < 0 else 2):
            step = _STEPS[si_] if 0 <= l < L else si_
            if 0 <= l < L and step >= 13 and not post:
                continue                                # every thread alike: no phase
            if l < 0:
                stage, n, per = S_EMBED, T, 1
            elif l == L:
                stage, n, per = S_HEAD, sel.shape[0] if step == 0 else hw.shape[0], 4 * MM_CHUNKS
            else:
                stage, n, per = _STEP_STAGE[step], T, 2
                if stage == S_MAT:
                    n, per = (wqkv, wo, wgu, wdn)[_STEP_MAT[step]].shape[1], MM_CHUNKS
                elif step == 2:
                    n = T * (n_head + n_kv)
                elif step == 3 and whole:
                    n, per = H, 8
                elif 3 <= step <= 6 and whole:
                    n = 0
                elif 3 <= step <= 5:
                    n, per = cj.shape[0], 4
                elif step == 6:
                    n = H
                elif step == 11:
                    n = T * fch
            nu = min(n, per * nth)
            u = claim(bar, p, nu, tid, nth)
            while u >= 0:
                lo, hi = share(n, u, nu)
                if l < 0:
                    _embed_rows(toks, ekind, ew, ewd, ewm, x, lo, hi, ar.escale)
                elif l == L:
                    if step == 0:
                        for i in range(lo, hi):
                            rmsnorm(x[sel[i]], norm_w, eps, h[i])
                            quant_row(h[i], qa[i], da[i], sa[i])
                    else:
                        _head_rows(hkind, hw, hwd, hwm, qa, da, sa, out, lo, hi, acc)
                elif stage == S_MAT:
                    k = _STEP_MAT[step]
                    kind = kinds[l, k]
                    if k == 0:
                        mm_range(kind, wqkv[l], wqkv_d[l], wqkv_m[l], qa, da, sa, qkv, False,
                                 lo, hi, acc)
                    elif k == 1:
                        mm_range(kind, wo[l], wo_d[l], wo_m[l], qa2, da2, sa2,
                                 mo if post else x, not post, lo, hi, acc)
                    elif k == 2:
                        mm_range(kind, wgu[l], wgu_d[l], wgu_m[l], qa, da, sa, gu, False,
                                 lo, hi, acc)
                    else:
                        mm_range(kind, wdn[l], wdn_d[l], wdn_m[l], qa3, da3, sa3,
                                 mo if post else x, not post, lo, hi, acc)
                else:
                    for i in range(lo, hi):
                        if step == 0:
                            _norm_quant(x, attn_w[l], eps, h, qa, da, sa, i)
                        elif step == 2:
                            _rope_item(qkv, i, lane_of, slots, csl, kv.kraw[l], n_keep, qq, dq,
                                       n_head, n_kv, hd, n_rot, kcl, kdl, vcl, vdl,
                                       ar.qn[l], ar.kn[l], eps, ar.neox)
                        elif step == 3 and whole:       # attention, a whole head per item
                            t = i // n_head
                            hh = i % n_head
                            g = hh // grp
                            a0 = lo_of[t]
                            attend(qq[t], hh * hd, dq[t, hh], kcl[lane_of[t], g, a0 * hd:],
                                   kdl[lane_of[t], g, a0:], vcl[lane_of[t], g, a0 * hd:],
                                   vdl[lane_of[t], g, a0:], slots[t] + 1 - a0, hd,
                                   kq_scale, att[t], hh * hd)
                        elif step == 3:                 # attention pass 1: scores, max keys
                            j = cj[i]
                            t = j // n_head
                            hh = j % n_head
                            g = hh // grp
                            pm[i, 0] = att_scores(
                                qq[t], hh * hd, dq[t, hh], kcl[lane_of[t], g, c0[i] * hd:c1[i] * hd],
                                kdl[lane_of[t], g, c0[i]:c1[i]], hd, kq_scale,
                                sc[so[i]:so[i] + c1[i] - c0[i]], si)
                        elif step == 4:                 # pass 2: exp, z, product maxima
                            j = cj[i]
                            mk = pm[first[j], 0]
                            for k in range(first[j] + 1, first[j + 1]):
                                mk = max(mk, pm[k, 0])
                            z, cb = att_weights(
                                sc[so[i]:so[i] + c1[i] - c0[i]],
                                vdl[lane_of[j // n_head], (j % n_head) // grp, c0[i]:c1[i]],
                                _unkey(mk))
                            pz[i] = z
                            pm[i, 1] = cb
                        elif step == 5:                 # pass 3: integer weighted values
                            j = cj[i]
                            cb = pm[first[j], 1]
                            for k in range(first[j] + 1, first[j + 1]):
                                cb = max(cb, pm[k, 1])
                            cmax = bits_f32(cb)
                            for e in range(hd):
                                ptot[i, e] = 0
                            if cmax != F0:
                                att_values(sc[so[i]:so[i] + c1[i] - c0[i]],
                                           vcl[lane_of[j // n_head], (j % n_head) // grp,
                                              c0[i] * hd:c1[i] * hd], hd, att_gain(cmax),
                                           ptot[i], ai)
                        elif step == 6:                 # per head: combine, att_out
                            k0 = first[i]
                            cb = pm[k0, 1]
                            z = pz[k0]
                            for e in range(hd):
                                tot[e] = ptot[k0, e]
                            for k in range(k0 + 1, first[i + 1]):
                                cb = max(cb, pm[k, 1])
                                z += pz[k]
                                for e in range(hd):
                                    tot[e] += ptot[k, e]
                            att_finish(tot, bits_f32(cb), z, hd, att[i // n_head],
                                       (i % n_head) * hd)
                        elif step == 7:
                            quant_row(att[i], qa2[i], da2[i], sa2[i])
                        elif step == 9:
                            _norm_quant(x, ffn_w[l], eps, h, qa, da, sa, i)
                        elif step == 11:
                            b0, b1 = share(nbF, i % fch, fch)
                            _swiglu_blocks(gu, i // fch, F, b0, b1, qa3, da3, sa3, ar.gelu)
                        elif step == 13:
                            add_norm(x[i], mo[i], ar.pan[l], eps, h[i])
                        else:                           # step 14
                            add_norm(x[i], mo[i], ar.pfn[l], eps, h[i])
                u = next_chunk(bar, p, nu, tid, nth)
            p = wait(bar, p, nu, nth)
            t0 = tick(clk, tid, stage, t0)


def team_scratch(T, slot_of, d_model, n_head, n_kv, hd, ffn, att_chunk, whole_heads, nth,
                 window=0):
    """Sizes of feed_team's shared scratch (float32, int8, int32, int64 elements): its layout
    (_carve) laid over empty buffers, for the larger of the global and sliding-window plans."""
    plans = [_att_layout(slot_of, lo, n_head, att_chunk, whole_heads, nth)
             for lo in (np.zeros(len(slot_of), np.int64), window_starts(slot_of, window))]
    e = np.empty(0, np.float32)
    return _carve(e, e.view(np.int8), e.view(np.int32), np.empty(0, np.int64), T, d_model,
                  n_head, n_kv, hd, ffn, max(p[2].shape[0] for p in plans),
                  max(p[6] for p in plans))[-1]


Arch = namedtuple("Arch", ("gelu", "neox", "escale", "qn", "kn", "pan", "pfn", "swa", "window",
                           "cs2"))
Arch.__doc__ = """feed_team's architecture extras (ENGINE.md §10): GeGLU and NEOX RoPE flags, the
embedding scale (0: none), per-layer q/k norms [L, hd] and post norms [L, D] (llama: [L, 0]),
the sliding-window flags [L] with the window (0: none) and the RoPE table of those layers."""


KV = namedtuple("KV", ("kc", "kd", "vc", "vd", "kc2", "kd2", "vc2", "vd2", "li", "slot2", "kraw"))
KV.__doc__ = """feed_team's caches: int8 keys/values with their scales per position of the global
layers (kc, kd, vc, vd: [layers, lanes, n_kv, ctx*hd | ctx]) and of the sliding-window layers
(kc2 ...: [layers, lanes, n_kv, rows*hd | rows], their own, smaller rows: backend.py), li [L]:
layer l's index in its set, slot2 [T]: each token's row in the sliding-window set (rows < n_keep:
the kept slots; a window's slots are consecutive rows), kraw [L, lanes, n_keep, n_kv*hd]: the kept
slots' un-rotated keys."""


def arch(m, cs, cs2) -> Arch:
    """The Arch of model m (model.Model) for one feed's RoPE tables (cs2: sliding-window
    layers; cs for a llama model)."""
    gem = m.arch == "gemma3"
    return Arch(gem, gem, np.float32(m.emb_scale), m.q_norm, m.k_norm, m.post_attn, m.post_ffn,
                m.swa, int(m.window), cs2)


@njit(cache=True)
def final_hidden(x, sel, norm_w, eps, out):
    """out[i] = the final RMSNorm of x[sel[i]] (the vector head() quantises): float32, the
    same operations as head's, so as deterministic as the logits."""
    for i in range(sel.shape[0]):
        rmsnorm(x[sel[i]], norm_w, eps, out[i])


@njit(nogil=True, cache=True)
def _embed_rows(tokens, kind, W, Wd, Wm, out, t0, t1, escale):
    """Rows of the embedding, dequantised per element (kind 2: each half its scale), times
    escale (0: not scaled)."""
    D = out.shape[1]
    for t in range(t0, t1):
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
                    dj = Wm[g, b * R + r] if kind == Q6 and j >= 16 else d
                    out[t, b * 32 + j] = dequant(
                        dj, np.int8(w[b * 512 + (j // 4) * 64 + 4 * r + j % 4]), F0, False)
            for j in range(32):
                out[t, b * 32 + j] = embed_scale(out[t, b * 32 + j], escale)


@njit(cache=True)
def rerotate(kraw, kc, kd, n_keep, n_kv, hd, n_rot, cs, neox):
    """Kept positions j < n_keep of one lane and layer: rotate the raw key by table cs[j] and
    re-quantise it into slot j (after a slide moved the lane's offset)."""
    tmp = np.empty(hd, np.float32)
    for j in range(n_keep):
        for g in range(n_kv):
            for i in range(hd):
                tmp[i] = kraw[j, g * hd + i]
            _rotate(tmp, 0, n_rot, cs, j, neox)
            d, _ = quant_block(tmp, 0, hd, kc[g], j * hd)
            kd[g, j] = d
