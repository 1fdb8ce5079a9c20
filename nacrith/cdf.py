"""Softmax -> 24-bit integer frequencies, deterministic to the bit.

Invariants (the decoder rebuilds the exact same table from the same logits, so these are part of
the bitstream format):
- every symbol gets frequency >= 1;
- total == 2**24 (``TOTAL``);
- a pure function of the float32 logits, bit-identical on every IEEE-754 machine.

How the last point is kept:
- only IEEE-754 basic operations (+ - * /, comparisons, floor, exact int<->float conversions) in
  float64, never ``fastmath`` (so LLVM may neither reassociate nor contract into FMA);
- exp() is hand-written (``_exp_nonpos``): range reduction x = k*ln2 + r with ln2 split into an
  exact high part and a low part, a fixed degree-12 Taylor polynomial in Horner form, and scaling
  by 2**k read from a module-level table of exact powers of two.  libm's exp is never used, because
  the encoder and the decoder run this code inside different compiled kernels and LLVM could pick
  different exp implementations (scalar libm vs. vectorised SVML) that round differently;
- the normalising sum is taken sequentially in index order in float64.

Algorithm (``quantize``): m = max(logits) (NaN ignored); p_i = exp(l_i - m), which is 0.0 for
l_i - m < EXP_CUTOFF, -inf or NaN; S = sum p_i; f_i = 1 + int(p_i * ((TOTAL - V) / S)); the
remainder TOTAL - sum f_i is added to the first index holding the maximum p.  Degenerate rows
(all logits NaN or -inf, or S not finite) fall back to "uniform" (all p_i = 1); if the maximum
is +inf, the +inf entries get p = 1 and all others p = 0.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

PRECISION_BITS = 24
TOTAL = 1 << PRECISION_BITS

# exp(x) for x < EXP_CUTOFF is taken as 0.0.  Anything below about -17 already quantises to the
# minimum frequency, so the cutoff only matters through the (tiny) contribution to the sum S.
EXP_CUTOFF = -700.0

# ln2 = LN2_HI + LN2_LO; LN2_HI has 21 trailing zero bits, so k * LN2_HI is exact for |k| < 2**21
# (here |k| <= 1010).
LN2_HI = 6.93147180369123816490e-01   # 0x3FE62E42FEE00000
LN2_LO = 1.90821492927058770002e-10   # 0x3DEA39EF35793C76
INV_LN2 = 1.44269504088896338700e+00  # 0x3FF71547652B82FE

# Exact powers of two 2**k for k = -POW2_BIAS .. 0 (index k + POW2_BIAS); all normal doubles.
POW2_BIAS = 1022
POW2 = np.ldexp(np.ones(POW2_BIAS + 1), np.arange(-POW2_BIAS, 1)).astype(np.float64)

# 1/n! for the Horner polynomial (rounded once by Python's correctly rounded division; the
# literal values are fixed by this module, which is all determinism needs).
_C = [1.0 / math.factorial(n) for n in range(13)]
C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12 = _C[2:]


@njit(cache=True)
def _exp_nonpos(x):
    """exp(x) for x <= 0 (float64) from basic IEEE operations only; 0.0 below EXP_CUTOFF or NaN.

    Written branch-free (selects only) so that the per-vocabulary loop vectorises; vector and
    scalar code perform the same IEEE operations per element, so results are identical."""
    ok = x >= EXP_CUTOFF                       # False for NaN
    xc = x if ok else EXP_CUTOFF
    k = math.floor(xc * INV_LN2 + 0.5)         # k in [-1010, 0]
    r = (xc - k * LN2_HI) - k * LN2_LO         # |r| <= ~0.3466
    p = C12
    p = p * r + C11
    p = p * r + C10
    p = p * r + C9
    p = p * r + C8
    p = p * r + C7
    p = p * r + C6
    p = p * r + C5
    p = p * r + C4
    p = p * r + C3
    p = p * r + C2
    p = p * r + 1.0
    p = p * r + 1.0
    v = p * POW2[np.uint64(np.int64(k) + POW2_BIAS)]
    return v if ok else 0.0


@njit(cache=True)
def exp_nonpos(x):
    """Python-callable wrapper of the deterministic exp (tests and diagnostics)."""
    return _exp_nonpos(np.float64(x))


@njit(cache=True)
def _max_ignoring_nan(logits):
    # max is exact and order-independent (NaN never compares greater, +-0 give the same
    # l - m), so four interleaved accumulators change nothing but speed.
    n = logits.shape[0]
    m0 = m1 = m2 = m3 = -np.inf
    i = 0
    while i + 4 <= n:
        v0 = np.float64(logits[i])
        v1 = np.float64(logits[i + 1])
        v2 = np.float64(logits[i + 2])
        v3 = np.float64(logits[i + 3])
        m0 = v0 if v0 > m0 else m0
        m1 = v1 if v1 > m1 else m1
        m2 = v2 if v2 > m2 else m2
        m3 = v3 if v3 > m3 else m3
        i += 4
    while i < n:
        v0 = np.float64(logits[i])
        m0 = v0 if v0 > m0 else m0
        i += 1
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    return m2 if m2 > m0 else m0


@njit(cache=True)
def quantize_into(logits, freqs, p):
    """Fill freqs (int64[V]) with the quantized distribution of logits (float32/float64[V]).

    p is a float64[V] scratch buffer (receives the unnormalised probabilities exp(l_i - m)).
    Returns the index that received the rounding remainder (first index of the maximum p).
    Callable from other njit kernels; allocates nothing.
    """
    n = logits.shape[0]
    if n < 1 or n > TOTAL:
        raise ValueError("quantize: vocabulary size must be in [1, 2**24]")
    if freqs.shape[0] != n or p.shape[0] != n:
        raise ValueError("quantize: freqs/scratch length differs from logits")

    # pass 1: maximum, NaN ignored
    m = _max_ignoring_nan(logits)

    # pass 2: p_i = exp(l_i - m)  (vectorised, elementwise)
    if m == -np.inf:                     # all -inf / NaN: uniform
        for i in range(n):
            p[i] = 1.0
    elif m == np.inf:                    # the +inf entries share the mass
        for i in range(n):
            p[i] = 1.0 if np.float64(logits[i]) == np.inf else 0.0
    else:
        for i in range(n):
            p[i] = _exp_nonpos(np.float64(logits[i]) - m)

    # pass 3: sequential float64 sum in index order, first index of the maximum p
    s, arg = sum_argmax(p)
    if not (s >= 1.0 and s <= n):        # cannot happen (max p == 1.0 exactly); defensive
        for i in range(n):
            p[i] = 1.0
        s = float(n)
        arg = 0
    # pass 4: integer frequencies
    freqs_of(p, s, arg, freqs)
    return arg


@njit(cache=True)
def sum_argmax(p):
    """(sequential float64 sum of p in index order, first index of its maximum)."""
    s = 0.0
    best = -1.0
    arg = 0
    for i in range(p.shape[0]):
        q = p[i]
        s += q
        if q > best:
            best = q
            arg = i
    return s, arg


@njit(cache=True)
def freqs_of(p, s, arg, freqs):
    """freqs_i = 1 + int(p_i * ((TOTAL - n) / s)), the remainder TOTAL - sum added at arg (pass
    4 of quantize; also the byte coder's table of a mixed distribution, bytemix.py).

    The remainder is >= 0 up to the rounding of s (a relative 1e-11 at most); a theoretical
    negative remainder of a unit or two would come out of the largest frequency, which is always
    far larger than that, so every frequency stays >= 1 and the total exact."""
    n = p.shape[0]
    scale = (TOTAL - n) / s
    tot = 0
    for i in range(n):                   # vectorised
        f = 1 + np.int64(p[i] * scale)
        freqs[i] = f
        tot += f
    freqs[arg] += TOTAL - tot


@njit(cache=True)
def quantize(logits, freqs):
    """freqs[:] = 24-bit quantized softmax(logits); returns the index that got the remainder.

    logits: float32 or float64 [V]; freqs: int64 [V] output.  Allocates a float64 scratch;
    per-token kernels call ``quantize_into`` with a persistent scratch instead (same result,
    bit for bit)."""
    p = np.empty(logits.shape[0], dtype=np.float64)
    return quantize_into(logits, freqs, p)
