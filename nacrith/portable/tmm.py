"""ENGINE.md §3 on int8 tensor cores (Triton): the device engine's matrix products.

out[t, r] = row r of W times activation row t, for int8 codes W [N, K] (Q4_1 nibbles widened to
0..15, Q8_0 as stored), block scales WD / WM [N, K/32] and activations A [M, K] int8 with scales
DA, SA [M, K/32] (rows LA / LD apart; OUT's rows LO apart).  Per 32-column block b, in increasing order:

    S   = tl.dot(a_b, w_b) in int32          exact (tensor-core integer MMA; |S| <= 2^19)
    acc = acc + ((wd*da) * f32(S) [+ (wm*da) * sa])

MODE 0 stores acc, 1 adds it to OUT (the residual: out + acc), 2 stores the fixed-point logit
(ENGINE.md §5 Output).  Invariants: compiled with `enable_fp_fusion=False` (every float op is a
separate `mul.rn` / `add.rn`; tests/test_device.py compiles it to PTX and rejects fma, .ftz,
.approx and division), no division (the logit's 1/65536 is an exact power-of-two product), and
each output element's block loop is its own: tiling never changes a bit.
"""
from __future__ import annotations

import triton
import triton.language as tl

OPTIONS = {"enable_fp_fusion": False}
LMAX = tl.constexpr(16777215.0)     # 2^24 - 1


@triton.jit
def mm_kernel(A, DA, SA, W, WD, WM, OUT, M, N, NB, LA, LD, LO,
              Q4: tl.constexpr, MODE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, 32)
    okm = rm < M
    okn = rn < N
    K = NB * 32
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for b in range(NB):
        a = tl.load(A + rm[:, None] * LA + b * 32 + rk[None, :], mask=okm[:, None], other=0)
        w = tl.load(W + rn[None, :] * K + b * 32 + rk[:, None], mask=okn[None, :], other=0)
        s = tl.dot(a, w, out_dtype=tl.int32)
        da = tl.load(DA + rm * LD + b, mask=okm, other=0.0)
        wd = tl.load(WD + rn * NB + b, mask=okn, other=0.0)
        t = (wd[None, :] * da[:, None]) * s.to(tl.float32)
        if Q4:
            sa = tl.load(SA + rm * LD + b, mask=okm, other=0.0)
            wm = tl.load(WM + rn * NB + b, mask=okn, other=0.0)
            t = t + (wm[None, :] * da[:, None]) * sa[:, None]
        acc = acc + t
    optr = OUT + rm[:, None] * LO + rn[None, :]
    ok = okm[:, None] & okn[None, :]
    if MODE == 1:
        acc = tl.load(optr, mask=ok, other=0.0) + acc
    if MODE == 2:
        v = tl.floor(acc.to(tl.float64) * 65536.0 + 0.5)
        v = tl.where(v <= LMAX, v, tl.where(v > 0.0, LMAX, -LMAX))      # NaN -> -LMAX
        v = tl.where(v < -LMAX, -LMAX, v)
        acc = (v * (1.0 / 65536.0)).to(tl.float32)
    tl.store(optr, acc, mask=ok)


def tiles(M: int, N: int, sms: int = 132) -> tuple:
    """(BM, BN, warps): 128 x 128 tiles, halved (N first) until the grid has at least two
    programs per multiprocessor (a 576-row matrix at 1024 lanes would fill 40 of 132)."""
    BM = 16 if M <= 16 else 64 if M <= 64 else 128
    BN = 128
    while triton.cdiv(M, BM) * triton.cdiv(N, BN) < 2 * sms and (BM > 32 or BN > 32):
        if BN >= BM and BN > 32:
            BN //= 2
        else:
            BM //= 2
    return BM, BN, 8 if BM * BN >= 128 * 128 else 4


_SMS = []


def mm(q4, W, WD, WM, A, DA, SA, OUT, mode):
    """Launch on torch tensors (the device engine's buffers, viewed zero-copy)."""
    M, N = OUT.shape
    if not _SMS:
        import torch
        _SMS.append(torch.cuda.get_device_properties(OUT.device).multi_processor_count)
    BM, BN, nw = tiles(M, N, _SMS[0])
    grid = (triton.cdiv(N, BN), triton.cdiv(M, BM))
    mm_kernel[grid](A, DA, SA, W, WD, WM, OUT, M, N, WD.shape[1], A.stride(0), DA.stride(0),
                    OUT.stride(0), Q4=bool(q4), MODE=mode,
                    BM=BM, BN=BN, num_warps=nw, **OPTIONS)


def ptx(q4: bool, mode: int, cc: int = 90, bm: int = 64, bn: int = 128) -> str:
    """The kernel's PTX for compute capability cc, compiled without a GPU (tests)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig = {"A": "*i8", "DA": "*fp32", "SA": "*fp32", "W": "*i8", "WD": "*fp32", "WM": "*fp32",
           "OUT": "*fp32", "M": "i32", "N": "i32", "NB": "i32", "LA": "i32", "LD": "i32",
           "LO": "i32", "Q4": "constexpr",
           "MODE": "constexpr", "BM": "constexpr", "BN": "constexpr"}
    src = ASTSource(fn=mm_kernel, signature=sig,
                    constexprs={"Q4": q4, "MODE": mode, "BM": bm, "BN": bn})
    return triton.compile(src, target=GPUTarget("cuda", cc, 32), options=OPTIONS).asm["ptx"]
