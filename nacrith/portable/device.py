"""The portable engine on a CUDA device: ENGINE.md's whole forward pass for many lanes at once.

DeviceBackend has PortableBackend's interface and semantics (lanes, groups, slides, n_keep,
logits of the last token of each group) and returns the same logits, bit for bit:

- weights are uploaded once (codes widened to int8 [rows, cols], scales float32 [rows, cols/32]);
  the int8 KV cache, the kept raw keys and every scratch buffer live on the device; a feed
  uploads the plan (tokens, lanes, slots, positions) and downloads the logits, nothing else;
- the element-wise steps are arith.py's family compiled for the device (target "cuda":
  libdevice round-to-nearest calls, never contracted; target "sim": the CUDA simulator, for CI);
- matrix products: tmm.py (Triton, int8 tensor cores, fp fusion off) on a real GPU when Triton
  and PyTorch are importable, else the numba kernel below (one thread per output element);
  both are ENGINE.md §3 exactly;
- attention: one thread block per (token, KV head), its query heads together; scores, the max,
  Z and cmax are per-position values combined by max / integer sums (order-free), and
  A_j = sum_s P_s V_sj is an exact int64 sum, so the split over threads cannot change a bit;
- slides move cache rows on the device (each column serially upward: no overlap hazard) and
  re-rotate the kept keys with the same functions as the CPU.
"""
from __future__ import annotations

import math
import os
from types import SimpleNamespace

import numpy as np

from ..errors import NacritError
from . import arith
from .backend import PortableBackend, fingerprint
from .mathx import rope_turns
from .model import load

GRAPH_AFTER = 2     # a step shape is captured as a CUDA graph at its third run: continuous
MAX_GRAPHS = 32     # batching makes many shapes that never come back (hub.py)
NT = 256                         # threads per attention block (16 in the simulator: same bits)
FLUSH = 256                      # int32 partial sums of P*V (|term| < 2^22) flushed this often


def _cuda():
    try:
        cuda = arith.numba_cuda()
    except Exception as e:                        # pragma: no cover - install problem
        raise NacritError(f"the device engine needs numba-cuda ('pip install nacrith[gpu]'): "
                          f"{e}") from None
    return cuda


# ------------------------------------------------------------------ kernels (arith's globals)
# Written against arith's family and helpers and the constants HD, GRP, HKV, H, NT (bound per
# model in _compile); compiled with cuda.jit for the target.

def k_rope(apos, turns, cs):
    t, i = cuda.grid(2)                                           # noqa: F821
    if t < apos.shape[0] and i < turns.shape[0]:
        rope_entry(apos[t], turns[i], cs[t], i)                   # noqa: F821


def k_embed(toks, W, Wd, Wm, q4, x):
    t, j = cuda.grid(2)                                           # noqa: F821
    if t < x.shape[0] and j < x.shape[1]:
        v = toks[t]
        b = j // 32
        m = Wm[v, b] if q4 else F0
        x[t, j] = dequant(Wd[v, b], W[v, j], m, q4)               # noqa: F821


def k_norm_quant(x, rows, w, eps, h, qa, da, sa):
    i = cuda.grid(1)                                              # noqa: F821
    if i < rows.shape[0]:
        rmsnorm(x[rows[i]], w, eps, h[i])                         # noqa: F821
        for b in range(da.shape[1]):
            d, s = quant_block(h[i], b * 32, 32, qa[i], b * 32)   # noqa: F821
            da[i, b] = d
            sa[i, b] = s


def k_quant(a, qa, da, sa):
    t, b = cuda.grid(2)                                           # noqa: F821
    if t < a.shape[0] and b < da.shape[1]:
        d, s = quant_block(a[t], b * 32, 32, qa[t], b * 32)       # noqa: F821
        da[t, b] = d
        sa[t, b] = s


def k_swiglu_quant(gu, qa, da, sa):
    t, b = cuda.grid(2)                                           # noqa: F821
    F = gu.shape[1] // 2
    if t < gu.shape[0] and b < da.shape[1]:
        act = cuda.local.array(32, np.float32)                    # noqa: F821
        for i in range(32):
            act[i] = swiglu(gu[t, b * 32 + i], gu[t, F + b * 32 + i])   # noqa: F821
        d, s = quant_block(act, 0, 32, qa[t], b * 32)             # noqa: F821
        da[t, b] = d
        sa[t, b] = s


def k_qkv(qkv, lane_of, slot_of, cs, n_keep, n_rot, kraw, qq, dq, kc, kd, vc, vd):
    t, j = cuda.grid(2)                                           # noqa: F821
    if t >= qkv.shape[0] or j >= H + HKV:                         # noqa: F821
        return
    row = qkv[t]
    nq = H * HD                                                   # noqa: F821
    nk = HKV * HD                                                 # noqa: F821
    if j < H:                                                     # noqa: F821
        rope_apply(row, j * HD, n_rot, cs, t)                     # noqa: F821
        d, _ = quant_block(row, j * HD, HD, qq[t], j * HD)        # noqa: F821
        dq[t, j] = d
    else:
        g = j - H                                                 # noqa: F821
        lane = lane_of[t]
        slot = slot_of[t]
        if slot < n_keep:
            for i in range(HD):                                   # noqa: F821
                kraw[lane, slot, g * HD + i] = row[nq + g * HD + i]   # noqa: F821
        rope_apply(row, nq + g * HD, n_rot, cs, t)                # noqa: F821
        d, _ = quant_block(row, nq + g * HD, HD, kc[lane, g], slot * HD)  # noqa: F821
        kd[lane, g, slot] = d
        d, _ = quant_block(row, nq + nk + g * HD, HD, vc[lane, g], slot * HD)  # noqa: F821
        vd[lane, g, slot] = d


def _sbyte(word, bb):
    """Signed byte bb (0 = lowest) of an int32 word."""
    v = (word >> (8 * bb)) & 255
    return v - ((v & 128) << 1)


def k_attend(qq, dq, kw, kd, vw, vd, lane_of, slot_of, kq_scale, sc, pp, out):
    """Block (t, g): query heads g*GRP .. g*GRP+GRP-1 over the lane's slots 0..slot.  kw / vw
    are the K / V caches viewed as int32 words (4 codes each, lowest byte first).

    Scores, e_s, c_s and P_s: one thread per position; m, cmax: max over the threads' maxima;
    Z and A_j: integer sums, A_j split over NG position groups x HD/4 words (int32 partials of
    at most FLUSH terms, then int64), the groups' partials added at the end: all order-free."""
    bid = cuda.blockIdx.x                                         # noqa: F821
    tid = cuda.threadIdx.x                                        # noqa: F821
    t = bid // HKV                                                # noqa: F821
    g = bid % HKV                                                 # noqa: F821
    lane = lane_of[t]
    n = slot_of[t] + 1
    W4 = HD // 4                                                  # noqa: F821
    qs = cuda.shared.array((GRP, HD), np.int32)                   # noqa: F821
    red = cuda.shared.array((GRP, NT), np.float32)                # noqa: F821
    zred = cuda.shared.array((GRP, NT), np.int64)                 # noqa: F821
    part = cuda.shared.array((NG, GRP, HD), PART)                 # noqa: F821
    mh = cuda.shared.array(GRP, np.float32)                       # noqa: F821
    cm = cuda.shared.array(GRP, np.float32)                       # noqa: F821
    gs = cuda.shared.array(GRP, np.float32)                       # noqa: F821
    zs = cuda.shared.array(GRP, np.int64)                         # noqa: F821
    for i in range(tid, GRP * HD, NT):                            # noqa: F821
        qs[i // HD, i % HD] = qq[t, g * GRP * HD + i]             # noqa: F821
    cuda.syncthreads()                                            # noqa: F821
    acc = cuda.local.array(GRP, np.int32)                         # noqa: F821
    lm = cuda.local.array(GRP, np.float32)                        # noqa: F821
    lz = cuda.local.array(GRP, np.int64)                          # noqa: F821
    for h in range(GRP):                                          # noqa: F821
        lm[h] = -np.inf
    for s in range(tid, n, NT):                                   # noqa: F821
        for h in range(GRP):                                      # noqa: F821
            acc[h] = 0
        for w in range(W4):
            word = kw[lane, g, s * W4 + w]
            for bb in range(4):
                kv = _sbyte(word, bb)                             # noqa: F821
                for h in range(GRP):                              # noqa: F821
                    acc[h] += kv * qs[h, 4 * w + bb]
        dk = kd[lane, g, s]
        for h in range(GRP):                                      # noqa: F821
            hh = g * GRP + h                                      # noqa: F821
            x = att_score(dq[t, hh], dk, acc[h], kq_scale)        # noqa: F821
            sc[t * H + hh, s] = x                                 # noqa: F821
            if x > lm[h]:
                lm[h] = x
    for h in range(GRP):                                          # noqa: F821
        red[h, tid] = lm[h]
    cuda.syncthreads()                                            # noqa: F821
    if tid < GRP:                                                 # noqa: F821
        m = np.float32(-np.inf)
        for i in range(NT):                                       # noqa: F821
            if red[tid, i] > m:
                m = red[tid, i]
        mh[tid] = m
    cuda.syncthreads()                                            # noqa: F821
    for h in range(GRP):                                          # noqa: F821
        lm[h] = F0                                                # now: this thread's cmax
        lz[h] = 0
    for s in range(tid, n, NT):                                   # noqa: F821
        dv = vd[lane, g, s]
        for h in range(GRP):                                      # noqa: F821
            r = t * H + g * GRP + h                               # noqa: F821
            e = att_e(sc[r, s], mh[h])                            # noqa: F821
            lz[h] += att_z(e)                                     # noqa: F821
            c = att_c(e, dv)                                      # noqa: F821
            sc[r, s] = c
            if c > lm[h]:
                lm[h] = c
    for h in range(GRP):                                          # noqa: F821
        red[h, tid] = lm[h]
        zred[h, tid] = lz[h]
    cuda.syncthreads()                                            # noqa: F821
    if tid < GRP:                                                 # noqa: F821
        c = F0
        z = np.int64(0)
        for i in range(NT):                                       # noqa: F821
            if red[tid, i] > c:
                c = red[tid, i]
            z += zred[tid, i]
        cm[tid] = c
        zs[tid] = z
        gs[tid] = att_gain(c) if c != F0 else F0                  # noqa: F821
    cuda.syncthreads()                                            # noqa: F821
    for s in range(tid, n, NT):                                   # noqa: F821
        for h in range(GRP):                                      # noqa: F821
            r = t * H + g * GRP + h                               # noqa: F821
            pp[r, s] = att_p(sc[r, s], gs[h]) if cm[h] != F0 else 0   # noqa: F821
    cuda.syncthreads()                                            # noqa: F821
    pg = tid // W4
    w = tid % W4
    if pg < NG:                                                   # noqa: F821
        a32 = cuda.local.array((GRP, 4), np.int32)                # noqa: F821
        a64 = cuda.local.array((GRP, 4), np.int64)                # noqa: F821
        for h in range(GRP):                                      # noqa: F821
            for bb in range(4):
                a32[h, bb] = 0
                a64[h, bb] = 0
        cnt = 0
        for s in range(pg, n, NG):                                # noqa: F821
            word = vw[lane, g, s * W4 + w]
            for h in range(GRP):                                  # noqa: F821
                p = pp[t * H + g * GRP + h, s]                    # noqa: F821
                for bb in range(4):
                    a32[h, bb] += p * _sbyte(word, bb)            # noqa: F821
            cnt += 1
            if cnt == FLUSH:                                      # noqa: F821
                for h in range(GRP):                              # noqa: F821
                    for bb in range(4):
                        a64[h, bb] += a32[h, bb]
                        a32[h, bb] = 0
                cnt = 0
        for h in range(GRP):                                      # noqa: F821
            for bb in range(4):
                part[pg, h, 4 * w + bb] = PART(a64[h, bb] + a32[h, bb])   # noqa: F821
    cuda.syncthreads()                                            # noqa: F821
    for i in range(tid, GRP * HD, NT):                            # noqa: F821
        h = i // HD                                               # noqa: F821
        j = i % HD                                                # noqa: F821
        hh = g * GRP + h                                          # noqa: F821
        if cm[h] == F0:
            out[t, hh * HD + j] = F0                              # noqa: F821
        else:
            a = np.int64(0)
            for k in range(NG):                                   # noqa: F821
                a += np.int64(part[k, h, j])
            out[t, hh * HD + j] = att_out(a, cm[h], zs[h])        # noqa: F821


def k_mm(W, Wd, Wm, q4, qa, da, sa, out, mode):
    """ENGINE.md §3, one thread per output (t, r); mode 0 store, 1 add, 2 fixed logit."""
    r, t = cuda.grid(2)                                           # noqa: F821
    if r >= out.shape[1] or t >= out.shape[0]:
        return
    acc = F0
    for b in range(da.shape[1]):
        s = np.int32(0)
        for j in range(32):
            s += np.int32(W[r, b * 32 + j]) * np.int32(qa[t, b * 32 + j])
        m = Wm[r, b] if q4 else F0
        acc = mm_block(acc, Wd[r, b], da[t, b], s, m, sa[t, b], q4)   # noqa: F821
    if mode == 0:
        out[t, r] = acc
    elif mode == 1:
        out[t, r] = fadd(out[t, r], acc)                          # noqa: F821
    else:
        out[t, r] = fixed_logit(acc)                              # noqa: F821


def k_slide(kc, vc, kd, vd, lane, k, s, n):
    """Slots [k+s, n) of one lane move down by s in every layer and KV head; thread (l*HKV+g,
    j) moves column j of those rows in increasing slot order (a slot is read before any write
    reaches it)."""
    lg, j = cuda.grid(2)                                          # noqa: F821
    if lg >= kc.shape[0] * HKV or j >= HD:                        # noqa: F821
        return
    l = lg // HKV                                                 # noqa: F821
    g = lg % HKV                                                  # noqa: F821
    for p in range(k, n - s):
        kc[l, lane, g, p * HD + j] = kc[l, lane, g, (p + s) * HD + j]   # noqa: F821
        vc[l, lane, g, p * HD + j] = vc[l, lane, g, (p + s) * HD + j]   # noqa: F821
        if j == 0:
            kd[l, lane, g, p] = kd[l, lane, g, p + s]
            vd[l, lane, g, p] = vd[l, lane, g, p + s]


def k_rerotate(kraw, kc, kd, lane, n_keep, n_rot, cs):
    """Kept slot j of one lane, every layer and KV head: rotate the raw key for table cs[j]
    and re-quantise it into slot j (ENGINE.md §6)."""
    lj, g = cuda.grid(2)                                          # noqa: F821
    if lj >= kc.shape[0] * n_keep or g >= HKV:                    # noqa: F821
        return
    l = lj // n_keep
    j = lj % n_keep
    tmp = cuda.local.array(HD, np.float32)                        # noqa: F821
    for i in range(HD):                                           # noqa: F821
        tmp[i] = kraw[l, lane, j, g * HD + i]                     # noqa: F821
    rope_apply(tmp, 0, n_rot, cs, j)                              # noqa: F821
    d, _ = quant_block(tmp, 0, HD, kc[l, lane, g], j * HD)        # noqa: F821
    kd[l, lane, g, j] = d


KERNELS = (k_rope, k_embed, k_norm_quant, k_quant, k_swiglu_quant, k_qkv, k_attend, k_mm,
           k_slide, k_rerotate)


def nt(target: str) -> int:
    return 16 if target == "sim" else NT


def compile_kernels(target: str, hd: int, grp: int, hkv: int, ctx: int = 2048):
    """The kernels for target "cuda" or "sim", bound to a model's head shape: {name: kernel}."""
    cuda = _cuda()
    A = arith.build(target)
    env = A["env"]
    n = nt(target)
    ng = n // (hd // 4)
    # a group's whole sum fits int32 when it has at most 512 terms (512 * 32767 * 127 < 2^31)
    part = np.int32 if -(-ctx // ng) <= 512 else np.int64
    env.update(cuda=cuda, HD=hd, GRP=grp, HKV=hkv, H=grp * hkv, NT=n, NG=ng, FLUSH=FLUSH,
               PART=part)
    env["_sbyte"] = cuda.jit(device=True)(arith.rebind(_sbyte, env))
    return {fn.__name__: cuda.jit(arith.rebind(fn, env)) for fn in KERNELS}


def _use_triton() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or os.environ.get("NACRITH_NO_TRITON"):
        return False
    try:
        import torch  # noqa: F401
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _grid(n, b):
    return (n + b - 1) // b


def _config(kernel, grid, block, sim, stream=0):
    """kernel[grid, block, stream], kept for reuse on a GPU; the simulator's kernel object
    holds only its last configuration, so there it is configured at each call."""
    if sim:
        return lambda *args: kernel[grid, block](*args)
    return kernel[grid, block, stream]


class _Mat:
    """A matrix on the device: int8 codes [rows, cols], scales [rows, cols/32] (m: zeros [1, 1]
    for Q8_0)."""

    def __init__(self, cuda, kind, q, d, m):
        self.q4 = kind == 1
        self.q = cuda.to_device(q)
        self.d = cuda.to_device(d)
        self.m = cuda.to_device(m)
        self.rows = q.shape[0]
        self.t = None                              # torch views, made on first Triton use


def _codes(kind, q, d, m):
    """GGUF-order (q, d, m) (Mat.plain) -> int8 codes [rows, cols] and float32 scales."""
    rows = d.shape[0]
    if kind == 1:                                  # Q4_1: byte j = q_j | q_{j+16} << 4
        b = q.reshape(rows, -1, 16)
        c = np.concatenate([b & 15, b >> 4], axis=2).reshape(rows, -1).astype(np.int8)
        return c, d, m
    return q.view(np.int8), d, np.zeros((1, 1), np.float32)


class DeviceBackend:
    """PortableBackend's interface on a CUDA device (or the CUDA simulator)."""

    # True: the ensemble is coded on the device too (mixer/device.py, one device thread per
    # lane, or a block of threads per lane for mix preset 5; neural.OwnDevice, or
    # hub.DeviceLanes for a shared engine). Off by default until timed on a GPU: a lane's serial
    # vocabulary passes are far slower on one device thread than on a host core, so it can only
    # pay with hundreds of lanes in one launch (the hub's) or a block per lane.
    codes_on_device = False

    def __init__(self, path: str, *, ctx: int, lanes: int, slide: int, n_keep: int,
                 threads: int = 1, group: int = 1, model=None, **ignored):
        if not 1 <= n_keep < ctx or not 1 <= slide <= ctx - n_keep:
            raise NacritError(f"bad window settings (ctx={ctx}, slide={slide}, n_keep={n_keep})")
        if lanes < 1:
            raise NacritError("lanes must be >= 1")
        cuda = self.cuda = _cuda()
        self.sim = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
        if not self.sim and not cuda.is_available():
            raise NacritError("no CUDA device is available for the device engine")
        self.path = str(path)
        self.ctx, self.lanes, self.slide, self.n_keep, self.group = ctx, lanes, slide, n_keep, group
        m = self.m = model if model is not None else load(self.path)
        if m.arch != "llama":
            raise NacritError(f"{self.path}: the device engine runs llama-architecture models "
                              f"only (this one is {m.arch}: use the CPU portable engine)")
        self.n_vocab, self.bos = m.n_vocab, m.bos
        self._pieces = m.pieces
        self.turns_h = rope_turns(m.rope_base, m.n_rot)
        self.kq_scale = np.float32(1.0 / math.sqrt(m.head_dim))
        self.hd, self.H, self.Hkv = m.head_dim, m.n_head, m.n_kv
        self.K = compile_kernels("sim" if self.sim else "cuda", m.head_dim, m.n_head // m.n_kv,
                                 m.n_kv, ctx)
        self.triton = not self.sim and _use_triton()
        self.graphs = self.triton and not os.environ.get("NACRITH_NO_GRAPHS")
        self._graphs = 0                           # graphs captured (at most MAX_GRAPHS)
        self._tstream = None
        self.graph_error = None
        self.nt = nt("sim" if self.sim else "cuda")
        L, hd, nkv = m.n_layer, m.head_dim, m.n_kv
        self.turns = cuda.to_device(self.turns_h)
        self.kc = self._zeros((L, lanes, nkv, ctx * hd), np.int8)
        self.vc = self._zeros((L, lanes, nkv, ctx * hd), np.int8)
        self.kd = self._zeros((L, lanes, nkv, ctx), np.float32)
        self.vd = self._zeros((L, lanes, nkv, ctx), np.float32)
        self.kraw = self._zeros((L, lanes, n_keep, nkv * hd), np.float32)
        self.attn_norm = cuda.to_device(m.attn_norm)
        self.ffn_norm = cuda.to_device(m.ffn_norm)
        self.out_norm = cuda.to_device(m.out_norm)

        def up(mat, l=None):
            return _Mat(cuda, mat.kind, *_codes(mat.kind, *mat.plain(l)))
        self.wqkv = [up(m.wqkv, l) for l in range(L)]
        self.wo = [up(m.wo, l) for l in range(L)]
        self.wgu = [up(m.wgu, l) for l in range(L)]
        self.wdn = [up(m.wdn, l) for l in range(L)]
        self.embd = up(m.embd)
        self.out = up(m.out)
        kw, vw = self.kc.view(np.int32), self.vc.view(np.int32)
        self.layer_views = [(self.attn_norm[l], self.ffn_norm[l], self.kraw[l], self.kc[l],
                              self.kd[l], self.vc[l], self.vd[l], kw[l], vw[l])
                             for l in range(L)]
        self.pos = np.zeros(lanes, dtype=np.int64)
        self.off = np.zeros(lanes, dtype=np.int64)
        self.base = np.zeros(lanes, dtype=np.int64)     # (PortableBackend.reset's: no SWA here)
        self._cap = 0
        self._tok = None
        self.keep_hidden = False
        self.hidden = None

    def _zeros(self, shape, dtype):
        if self.sim:
            return self.cuda.to_device(np.zeros(shape, dtype))
        a = self.cuda.device_array(shape, dtype)
        self.cuda.driver.device_memset(a, 0, a.nbytes)
        return a

    # ------------------------------------------------------------------ host-side bookkeeping
    def fingerprint(self) -> str:
        return fingerprint()

    def reset(self, lanes=None) -> None:
        PortableBackend.reset(self, lanes)

    def piece(self, token: int) -> bytes:
        return self._pieces[token]

    def tokenize(self, text: bytes) -> np.ndarray:
        return PortableBackend.tokenize(self, text)

    def close(self) -> None:
        PortableBackend.close(self)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _cs(self, apos):
        """RoPE tables of absolute positions apos, computed on the device."""
        cuda = self.cuda
        a = cuda.to_device(np.asarray(apos, np.int64))
        cs = cuda.device_array((len(apos), self.m.n_rot // 2, 2), np.float32)
        self.K["k_rope"][(_grid(len(apos), 8), _grid(self.m.n_rot // 2, 32)), (8, 32)](
            a, self.turns, cs)
        return cs

    def _slide(self, lane: int) -> None:
        k, s, n = self.n_keep, self.slide, int(self.pos[lane])
        s = min(s, n - k)
        L = self.m.n_layer
        self.K["k_slide"][(_grid(L * self.Hkv, 4), _grid(self.hd, 32)), (4, 32)](
            self.kc, self.vc, self.kd, self.vd, lane, k, s, n)
        self.pos[lane] -= s
        self.off[lane] += s
        cs = self._cs([j + int(self.off[lane]) for j in range(k)])
        self.K["k_rerotate"][(_grid(L * k, 32), _grid(self.Hkv, 4)), (32, 4)](
            self.kraw, self.kc, self.kd, lane, k, self.m.n_rot, cs)

    # ------------------------------------------------------------------ buffers
    def _buffers(self, T):
        if T <= self._cap:
            return
        cuda, m = self.cuda, self.m
        T = max(T, 2 * self._cap)
        D, nq, F = m.d_model, self.H * self.hd, m.n_ff
        nmax = max(D, nq, F)
        e = lambda *s, dt=np.float32: cuda.device_array(s, dt)  # noqa: E731
        self.b = dict(x=e(T, D), h=e(T, D), qa=e(T, nmax, dt=np.int8), da=e(T, nmax // 32),
                      sa=e(T, nmax // 32), qkv=e(T, nq + 2 * self.Hkv * self.hd),
                      qq=e(T, nq, dt=np.int8), dq=e(T, self.H), att=e(T, nq), gu=e(T, 2 * F),
                      sc=e(T * self.H, self.ctx), pp=e(T * self.H, self.ctx, dt=np.int32),
                      logits=e(T, self.n_vocab), plan=e(5 * T, dt=np.int64),
                      cs=e(T, m.n_rot // 2, 2),
                      rows=cuda.to_device(np.arange(T, dtype=np.int64)))
        self._cap = T
        self._steps = {}

    def _step_views(self, T, S):
        """Views and launch configurations of a step of T tokens and S returned rows (cached:
        slicing device arrays and configuring launches costs host time at every call)."""
        st = self._steps.get((T, S))
        if st is not None:
            return st
        K, m, b = self.K, self.m, self.b
        D, nq, F = m.d_model, self.H * self.hd, m.n_ff
        qa, da, sa = b["qa"], b["da"], b["sa"]

        def q(n, rows=T):
            return (qa[:rows, :n], da[:rows, :n // 32], sa[:rows, :n // 32])
        p = b["plan"]
        st = SimpleNamespace(
            toks=p[0:T], lane=p[T:2 * T], slot=p[2 * T:3 * T], apos=p[3 * T:4 * T],
            sel=p[4 * T:4 * T + S], plan=p[:4 * T + S], cs=b["cs"][:T], x=b["x"][:T],
            rows=b["rows"][:T], qD=q(D), qN=q(nq), qF=q(F), qS=q(D, S), qkv=b["qkv"][:T],
            qq=b["qq"][:T], dq=b["dq"][:T], att=b["att"][:T], gu=b["gu"][:T],
            logits=b["logits"][:S])

        def launchers(stream):
            C = lambda k, g, blk: _config(k, g, blk, self.sim, stream)  # noqa: E731
            return SimpleNamespace(
                rope=C(K["k_rope"], (_grid(T, 8), _grid(m.n_rot // 2, 32)), (8, 32)),
                embed=C(K["k_embed"], (_grid(T, 4), _grid(D, 64)), (4, 64)),
                norm=C(K["k_norm_quant"], _grid(T, 64), 64),
                normS=C(K["k_norm_quant"], _grid(S, 64), 64),
                qkvk=C(K["k_qkv"], (_grid(T, 16), _grid(self.H + self.Hkv, 8)), (16, 8)),
                attend=C(K["k_attend"], T * self.Hkv, self.nt),
                quant=C(K["k_quant"], (_grid(T, 8), _grid(nq // 32, 32)), (8, 32)),
                swiglu=C(K["k_swiglu_quant"], (_grid(T, 8), _grid(F // 32, 32)), (8, 32)))
        st.L = launchers(0)
        st.launchers = launchers
        st.graph = None
        st.runs = 0
        if self.triton:
            tv = self._torch
            st.t = {id(a): tv(a) for a in (*st.qD, *st.qN, *st.qF, *st.qS, st.x, st.qkv,
                                           st.gu, st.logits)}
        self._steps[(T, S)] = st
        return st

    def _mm(self, st, W: _Mat, q, out, mode):
        if self.triton:
            from . import tmm
            if W.t is None:
                W.t = (self._torch(W.q), self._torch(W.d), self._torch(W.m))
            t = st.t
            tmm.mm(W.q4, *W.t, t[id(q[0])], t[id(q[1])], t[id(q[2])], t[id(out)], mode)
        else:
            by = min(4, out.shape[0])          # no idle token threads for 1-3 tokens
            self.K["k_mm"][(_grid(W.rows, 32), _grid(out.shape[0], by)), (32, by)](
                W.q, W.d, W.m, W.q4, *q, out, mode)

    def _torch(self, a):
        import torch
        return torch.as_tensor(a, device="cuda")

    # ------------------------------------------------------------------ the forward pass
    def step(self, lanes, tokens) -> np.ndarray:
        return self.feed(lanes, [[t] for t in tokens])

    def feed(self, lanes, groups) -> np.ndarray:
        """Feed groups[i] to lanes[i]; logits of the last token of each group, (len, n_vocab)."""
        return self.forward(lanes, groups).copy_to_host()

    def forward(self, lanes, groups):
        """The forward pass; returns the logits as a device array (len(groups), n_vocab).

        On a GPU with PyTorch, the third step of a given shape (tokens, returned rows) is
        captured as a CUDA graph (at most MAX_GRAPHS shapes) and later steps of that shape
        replay it: the same kernels on the same buffers (the plan is uploaded into them first),
        without the host's per-launch cost."""
        toks, lane_of, slot_of, apos, sel = self._plan(lanes, groups)
        T, S = len(toks), len(sel)
        self._buffers(T)
        st = self._step_views(T, S)
        st.plan.copy_to_device(np.concatenate([toks, lane_of, slot_of, apos, sel]))
        if st.graph is not None:
            st.graph.replay()
        elif self.graphs and st.runs >= GRAPH_AFTER and self._graphs < MAX_GRAPHS:
            self._capture(st)
        else:
            self._body(st, st.L)
            st.runs += 1
        if self.keep_hidden:
            self.hidden = self.b["h"][:S].copy_to_host()
        return st.logits

    def _capture(self, st):
        import torch
        if self._tstream is None:
            self._tstream = torch.cuda.Stream()
        ext = self.cuda.external_stream(self._tstream.cuda_stream)
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g, stream=self._tstream, capture_error_mode="relaxed"):
                self._body(st, st.launchers(ext))
        except Exception as e:                     # capture refused: run without graphs
            self.graphs = False
            self.graph_error = f"{type(e).__name__}: {e}"
            torch.cuda.synchronize()
            self._body(st, st.L)
            return
        st.graph = g
        self._graphs += 1
        g.replay()

    def _body(self, st, L):
        m, b = self.m, self.b
        L.rope(st.apos, self.turns, st.cs)
        e = self.embd
        L.embed(st.toks, e.q, e.d, e.m, e.q4, st.x)
        x = st.x
        for l in range(m.n_layer):
            c = self.layer_views[l]
            L.norm(x, st.rows, c[0], m.eps, b["h"], *st.qD)
            self._mm(st, self.wqkv[l], st.qD, st.qkv, 0)
            L.qkvk(st.qkv, st.lane, st.slot, st.cs, self.n_keep, m.n_rot, c[2], st.qq, st.dq,
                   c[3], c[4], c[5], c[6])
            L.attend(st.qq, st.dq, c[7], c[4], c[8], c[6], st.lane, st.slot, self.kq_scale,
                     b["sc"], b["pp"], st.att)
            L.quant(st.att, *st.qN)
            self._mm(st, self.wo[l], st.qN, x, 1)
            L.norm(x, st.rows, c[1], m.eps, b["h"], *st.qD)
            self._mm(st, self.wgu[l], st.qD, st.gu, 0)
            L.swiglu(st.gu, *st.qF)
            self._mm(st, self.wdn[l], st.qF, x, 1)
        L.normS(x, st.sel, self.out_norm, m.eps, b["h"], *st.qS)
        self._mm(st, self.out, st.qS, st.logits, 2)

    def _plan(self, lanes, groups):
        """PortableBackend._plan (slides, slots), with absolute positions instead of tables;
        one token per distinct lane (the batch step) is planned with array operations."""
        k = len(groups)
        if k and max(map(len, groups)) == 1:
            la = np.fromiter(lanes, np.int64, k)
            toks = np.fromiter((g[0] for g in groups), np.int64, k)
            if (la.min() >= 0 and la.max() < self.lanes and len(np.unique(la)) == k
                    and toks.min() >= 0 and toks.max() < self.n_vocab):
                for lane in la[self.pos[la] + 1 > self.ctx]:
                    while self.pos[lane] + 1 > self.ctx:
                        self._slide(int(lane))
                slot = self.pos[la]
                apos = slot + self.off[la]
                self.pos[la] += 1
                return toks, la, slot, apos, np.arange(k, dtype=np.int64)
        toks, lane_of, slot_of, apos, sel = [], [], [], [], []
        for lane, g in zip(lanes, groups):
            n = len(g)
            if not 1 <= n <= self.ctx - self.n_keep or not 0 <= lane < self.lanes:
                raise NacritError(f"batch of {n} tokens for lane {lane} does not fit")
            while self.pos[lane] + n > self.ctx:
                self._slide(lane)
            for t in g:
                t = int(t)
                if not 0 <= t < self.n_vocab:
                    raise NacritError(f"token {t} out of range")
                toks.append(t)
                lane_of.append(lane)
                slot_of.append(int(self.pos[lane]))
                apos.append(int(self.pos[lane] + self.off[lane]))
                self.pos[lane] += 1
            sel.append(len(toks) - 1)
        return (np.array(toks, np.int64), np.array(lane_of, np.int64),
                np.array(slot_of, np.int64), np.array(apos, np.int64), np.array(sel, np.int64))
