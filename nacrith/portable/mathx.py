"""Deterministic scalar math for the portable engine on the host (formats/ENGINE.md,
"Elementary functions"): the CPU build of arith.py's family, and the RoPE frequencies.

Invariants: the float functions are arith.py's (one source for every target; only IEEE basic
operations in the order written, no fastmath, no libm).  rope_turns is computed with exact
decimal arithmetic on the host, once per model, so every target shares the same integers.

- exp_nonpos_f32(x): e^x for float32 x <= 0 (0 below EXP_MIN or NaN): Cody-Waite reduction
  x = n*ln2 + r, a degree-7 polynomial for e^r, scaling by 2^n built from its bits.
- sigmoid/silu in float32 from exp_nonpos_f32 only.
- RoPE: an angle is an integer fraction of a turn, a = pos * T_i mod 2^64 (T_i = the frequency
  in turns as 64-bit fixed point, rope_turns()), and (sin, cos)(2*pi*a/2^64) comes from a
  quadrant/octant reduction done in integers and Taylor polynomials in float64.
"""
from __future__ import annotations

from decimal import Decimal, localcontext

import numpy as np
from numba import njit

from .arith import _PI, _EC, build  # noqa: F401  (tables re-exported for tools)

CPU = build("cpu")
exp_nonpos_f32 = CPU["exp_nonpos"]
sigmoid_f32 = CPU["sigmoid"]
silu_f32 = CPU["silu"]
sincos_turn = CPU["sincos_turn"]
_rope_entry = CPU["rope_entry"]


# ---------------------------------------------------------------- RoPE angles
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


@njit(cache=True)
def rope_table(apos, turns, out):
    """out[i] = (cos, sin) of the angle apos * T_i (mod one turn), float32."""
    for i in range(turns.shape[0]):
        _rope_entry(apos, turns[i], out, i)
