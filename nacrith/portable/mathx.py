"""Deterministic scalar math for the portable engine (formats/ENGINE.md, "Elementary functions").

Invariants: only IEEE-754 basic operations (+ - * /, sqrt, comparisons, exact int<->float
conversions, truncation toward zero) in the order written, never fastmath (no reassociation, no
FMA contraction), no libm call.  Constants are fixed by this module (rational values rounded to
nearest once, by Python's exact Fraction -> float conversion), so every implementation that
evaluates the same expressions gets the same bits.

- exp_nonpos_f32(x): e^x for float32 x <= 0 (0 below EXP_MIN or NaN): Cody-Waite reduction
  x = n*ln2 + r, a degree-7 polynomial for e^r, scaling by an exact power of two from a table.
- sigmoid/silu in float32 from exp_nonpos_f32 only.
- RoPE: an angle is an integer fraction of a turn, a = pos * T_i mod 2^64 (T_i = the frequency
  in turns as 64-bit fixed point, rope_turns()), and (sin, cos)(2*pi*a/2^64) comes from a
  quadrant/octant reduction done in integers and Taylor polynomials in float64.
"""
from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
from numba import njit

# ---------------------------------------------------------------- exp (float32)
LOG2E_F = np.float32(1.44269504088896341)
LN2_HI_F = np.float32(0.693359375)          # 0x3F318000: n * LN2_HI_F exact for |n| < 2^15
LN2_LO_F = np.float32(-2.12194440e-4)       # ln2 - LN2_HI_F, rounded to float32
EXP_MIN = np.float32(-80.0)                 # e^x for x < EXP_MIN is taken as 0 (no subnormals)
_EC = [np.float32(float(Fraction(1, math.factorial(k)))) for k in range(8)]
E2, E3, E4, E5, E6, E7 = _EC[2:]
# 2^n for n = -127..0 (index n + 127); all normal float32 except none used below 2^-116
POW2_F = np.ldexp(np.ones(128, np.float32), np.arange(-127, 1)).astype(np.float32)
HALF_F = np.float32(0.5)
ONE_F = np.float32(1.0)
ZERO_F = np.float32(0.0)


@njit(cache=True)
def exp_nonpos_f32(x):
    """e^x, float32 x <= 0; 0.0 for x < EXP_MIN or NaN.  Relative error about 2 ulp."""
    x = np.float32(x)
    if not (x >= EXP_MIN):
        return ZERO_F
    t = x * LOG2E_F                              # in [-115.5, 0]
    n = -np.int32(HALF_F - t)                    # n = -trunc(0.5 - t): nearest integer to t
    nf = np.float32(n)
    r = (x - nf * LN2_HI_F) - nf * LN2_LO_F      # |r| <= ~0.35
    p = E7
    p = p * r + E6
    p = p * r + E5
    p = p * r + E4
    p = p * r + E3
    p = p * r + E2
    p = p * r + ONE_F
    p = p * r + ONE_F
    return p * POW2_F[n + 127]


@njit(cache=True)
def sigmoid_f32(g):
    """1 / (1 + e^-g) from exp_nonpos_f32 (g >= 0) or e^g / (1 + e^g) (g < 0)."""
    g = np.float32(g)
    if g >= ZERO_F:
        return ONE_F / (ONE_F + exp_nonpos_f32(-g))
    e = exp_nonpos_f32(g)
    return e / (ONE_F + e)


@njit(cache=True)
def silu_f32(g):
    g = np.float32(g)
    return g * sigmoid_f32(g)


# ---------------------------------------------------------------- RoPE angles
_PI = "3.14159265358979323846264338327950288419716939937510582097494459230781640628620899863"


def rope_turns(base: float, n_rot: int) -> np.ndarray:
    """T_i = round(2^64 * base^(-2i/n_rot) / (2*pi)) mod 2^64, i < n_rot/2, as uint64.

    Computed with 60-digit decimal arithmetic (ln/exp of the decimal module, correctly rounded)
    from the exact value of the float `base`; never float pow."""
    out = np.zeros(n_rot // 2, dtype=np.uint64)
    with localcontext() as c:
        c.prec = 60
        b = Decimal(float(base))
        two_pi = 2 * Decimal(_PI)
        for i in range(n_rot // 2):
            theta = (b.ln() * Decimal(-2 * i) / Decimal(n_rot)).exp()
            v = (theta * Decimal(2) ** 64 / two_pi).to_integral_value()   # half-even
            out[i] = int(v) % (1 << 64)
    return out


_SC = [float(Fraction((-1) ** (k // 2), math.factorial(k))) for k in range(20)]
S3, S5, S7, S9, S11, S13, S15, S17, S19 = (_SC[k] for k in range(3, 20, 2))
C2, C4, C6, C8, C10, C12, C14, C16, C18 = (_SC[k] for k in range(2, 19, 2))
HALF_PI = float(Fraction(Decimal(_PI)) / 2)
TWO_M62 = 2.0 ** -62
Q62 = np.uint64(1 << 62)
Q61 = np.int64(1 << 61)
M62 = np.uint64((1 << 62) - 1)


@njit(cache=True)
def sincos_turn(a):
    """(sin, cos) of 2*pi*a/2^64 for uint64 a, as float32 (rounded once from float64)."""
    a = np.uint64(a)
    k = np.int64(a >> np.uint64(62))                 # quadrant
    r = np.int64(a & M62)                            # position inside the quadrant, < 2^62
    swap = r > Q61
    if swap:
        r = np.int64(1 << 62) - r                    # reflect: angle pi/2 - phi
    phi = (np.float64(r) * TWO_M62) * HALF_PI        # [0, pi/4]
    z = phi * phi
    s = S19
    s = s * z + S17
    s = s * z + S15
    s = s * z + S13
    s = s * z + S11
    s = s * z + S9
    s = s * z + S7
    s = s * z + S5
    s = s * z + S3
    s = phi + (phi * z) * s
    c = C18
    c = c * z + C16
    c = c * z + C14
    c = c * z + C12
    c = c * z + C10
    c = c * z + C8
    c = c * z + C6
    c = c * z + C4
    c = c * z + C2
    c = 1.0 + z * c
    if swap:
        s, c = c, s
    if k == 1:
        s, c = c, -s
    elif k == 2:
        s, c = -s, -c
    elif k == 3:
        s, c = -c, s
    return np.float32(s), np.float32(c)


@njit(cache=True)
def rope_table(apos, turns, out):
    """out[i] = (cos, sin) of the angle apos * T_i (mod one turn), float32."""
    p = np.uint64(apos)
    for i in range(turns.shape[0]):
        s, c = sincos_turn(p * turns[i])
        out[i, 0] = c
        out[i, 1] = s
