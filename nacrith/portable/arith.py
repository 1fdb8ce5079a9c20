"""The portable engine's element-wise arithmetic, one source for every target (ENGINE.md §2-§5).

Each function here is plain Python over scalars and arrays, with every float operation written
as a call of a small helper (`fmul`, `fadd`, `fsub`, `fdiv` in float32; `dmul`, `dadd`, `dsub`,
`ddiv`, `dsqrt` in float64; `fbits`, the float32 with the bits of an int32, for exp's 2^n).
`build(target)` compiles the whole family for one target, binding the helpers to that target's
operations:

- "cpu": Numba njit; the helpers are plain `a * b`, ... (Numba's fastmath=False: LLVM `fmul`,
  `fadd` without contraction flags; the IR test checks no `llvm.fma`/`fmuladd` appears), `fbits`
  a bit cast (simd.bits_f32); no function here branches on data where a select will do, so the
  kernels' loops over them vectorise;
- "cuda": numba-cuda device functions; the helpers are libdevice's round-to-nearest calls
  (`__nv_fmul_rn`, ...), which NVVM never contracts into FMA (a plain `a * b + c` becomes
  `fma.rn.f32` on the device even with fastmath=False); the PTX test rejects any f32/f64
  mul/add/sub without `.rn`, any fma, `.ftz` or `.approx`;
- "sim": the CUDA simulator (NUMBA_ENABLE_CUDASIM=1); the helpers are numpy scalar operations,
  each rounded to its format.

Invariants: only IEEE basic operations in the order written, exact integer<->float conversions
and truncation toward zero; no libm; constants fixed here (rationals rounded once).  So the CPU
kernels (kernels.py) and the device kernels (device.py) compute the same bits, by construction.
"""
from __future__ import annotations

import math
import types as _types
from fractions import Fraction

import numpy as np

from ..gpu import numba_cuda

# ---------------------------------------------------------------- constants (ENGINE.md §4)
LOG2E_F = np.float32(1.44269504088896341)
LN2_HI_F = np.float32(0.693359375)          # 0x3F318000: n * LN2_HI_F exact for |n| < 2^15
LN2_LO_F = np.float32(-2.12194440e-4)       # ln2 - LN2_HI_F, rounded to float32
EXP_MIN = np.float32(-80.0)                 # e^x for x < EXP_MIN is taken as 0 (no subnormals)
_EC = [np.float32(float(Fraction(1, math.factorial(k)))) for k in range(8)]
E2, E3, E4, E5, E6, E7 = _EC[2:]
F0 = np.float32(0.0)
F05 = np.float32(0.5)
F1 = np.float32(1.0)
F127 = np.float32(127.0)
P_MAX = 32767                    # attention weights are integers in [0, P_MAX]
P_MAX_F = np.float32(32767.0)
GELU_A = np.float32(0.044715)
GELU_2K = np.float32(2.0 * math.sqrt(2.0 / math.pi))   # 2 sqrt(2/pi), rounded once
E_ONE = np.float32(16777216.0)   # softmax normaliser: e_s as integers of 2^-24
LOGIT_SCALE = 65536.0            # logits are integers of 2^-16
LOGIT_MAX = (1 << 24) - 1

_PI = "3.14159265358979323846264338327950288419716939937510582097494459230781640628620899863"
_SC = [float(Fraction((-1) ** (k // 2), math.factorial(k))) for k in range(20)]
S3, S5, S7, S9, S11, S13, S15, S17, S19 = (_SC[k] for k in range(3, 20, 2))
C2, C4, C6, C8, C10, C12, C14, C16, C18 = (_SC[k] for k in range(2, 19, 2))
HALF_PI = float(Fraction(__import__("decimal").Decimal(_PI)) / 2)
TWO_M62 = 2.0 ** -62
M62 = np.uint64((1 << 62) - 1)
Q61 = np.int64(1 << 61)
Q62 = np.int64(1 << 62)


# ---------------------------------------------------------------- helpers (bound per target)
def fmul(a, b):
    return a * b


def fadd(a, b):
    return a + b


def fsub(a, b):
    return a - b


def fdiv(a, b):
    return a / b


def dmul(a, b):
    return a * b


def dadd(a, b):
    return a + b


def dsub(a, b):
    return a - b


def ddiv(a, b):
    return a / b


def dsqrt(a):
    return math.sqrt(a)


def umul(a, b):
    """uint64 product modulo 2^64."""
    return np.uint64(a) * np.uint64(b)


def fbits(i):
    """The float32 whose bits are the int32 i (a bit cast: exact, no rounding)."""
    return np.int32(i).view(np.float32)


HELPERS = ("fmul", "fadd", "fsub", "fdiv", "dmul", "dadd", "dsub", "ddiv", "dsqrt", "umul",
           "fbits")


# ---------------------------------------------------------------- §4.1 / §4.2
def exp_nonpos(x):
    """e^x, float32 x <= 0; 0.0 for x < EXP_MIN or NaN.  Relative error about 2 ulp."""
    x = np.float32(x)
    if not (x >= EXP_MIN):
        return F0
    t = fmul(x, LOG2E_F)                              # in [-115.5, 0]
    n = -np.int32(fsub(F05, t))                       # nearest integer to t
    nf = np.float32(n)
    r = fsub(fsub(x, fmul(nf, LN2_HI_F)), fmul(nf, LN2_LO_F))
    p = E7
    p = fadd(fmul(p, r), E6)
    p = fadd(fmul(p, r), E5)
    p = fadd(fmul(p, r), E4)
    p = fadd(fmul(p, r), E3)
    p = fadd(fmul(p, r), E2)
    p = fadd(fmul(p, r), F1)
    p = fadd(fmul(p, r), F1)
    return fmul(p, fbits(np.int32((n + 127) << 23)))   # 2^n, n in [-116, 0]: a normal float


def sigmoid(g):
    """1 / (1 + e^-g) (g >= 0) or e^g / (1 + e^g) (g < 0), from exp_nonpos.  One exp of -|g|
    (the same value in both cases) and a select: no branch, so loops of it vectorise."""
    g = np.float32(g)
    e = exp_nonpos(-abs(g))
    return fdiv(F1 if g >= F0 else e, fadd(F1, e))


def silu(g):
    g = np.float32(g)
    return fmul(g, sigmoid(g))


def swiglu(g, u):
    """a = silu(g) * u (ENGINE.md §5 step 6)."""
    return fmul(silu(g), np.float32(u))


def gelu(g):
    """GELU, tanh form: 0.5 g (1 + tanh(k (g + A g^3))) = g * sigmoid(2k (g + A g^3)), with
    k = sqrt(2/pi), A = 0.044715 (ENGINE.md §10); sigmoid from exp_nonpos like SiLU's."""
    g = np.float32(g)
    z = fmul(GELU_2K, fadd(g, fmul(GELU_A, fmul(fmul(g, g), g))))
    return fmul(g, sigmoid(z))


def geglu(g, u):
    """a = gelu(g) * u (Gemma-3's feed-forward, ENGINE.md §10)."""
    return fmul(gelu(g), np.float32(u))


# ---------------------------------------------------------------- §4.3 RoPE
def sincos_turn(a):
    """(sin, cos) of 2*pi*a/2^64 for uint64 a, as float32 (rounded once from float64)."""
    a = np.uint64(a)
    k = np.int64(a >> np.uint64(62))                  # quadrant
    r = np.int64(a & M62)                             # position inside the quadrant, < 2^62
    swap = r > Q61
    if swap:
        r = Q62 - r                                   # reflect: angle pi/2 - phi
    phi = dmul(dmul(np.float64(r), TWO_M62), HALF_PI)  # [0, pi/4]
    z = dmul(phi, phi)
    s = S19
    s = dadd(dmul(s, z), S17)
    s = dadd(dmul(s, z), S15)
    s = dadd(dmul(s, z), S13)
    s = dadd(dmul(s, z), S11)
    s = dadd(dmul(s, z), S9)
    s = dadd(dmul(s, z), S7)
    s = dadd(dmul(s, z), S5)
    s = dadd(dmul(s, z), S3)
    s = dadd(phi, dmul(dmul(phi, z), s))
    c = C18
    c = dadd(dmul(c, z), C16)
    c = dadd(dmul(c, z), C14)
    c = dadd(dmul(c, z), C12)
    c = dadd(dmul(c, z), C10)
    c = dadd(dmul(c, z), C8)
    c = dadd(dmul(c, z), C6)
    c = dadd(dmul(c, z), C4)
    c = dadd(dmul(c, z), C2)
    c = dadd(1.0, dmul(z, c))
    if swap:
        s, c = c, s
    if k == 1:
        s, c = c, -s
    elif k == 2:
        s, c = -s, -c
    elif k == 3:
        s, c = -c, s
    return np.float32(s), np.float32(c)


def rope_entry(apos, turn, out, i):
    """out[i] = (cos, sin) of the angle apos * turn (mod one turn)."""
    s, c = sincos_turn(umul(apos, turn))
    out[i, 0] = c
    out[i, 1] = s


def rope_apply(v, vo, n_rot, cs, tt):
    """NORM RoPE (pairs 2i, 2i+1) in place on v[vo:vo+n_rot] with table cs[tt, i] = (cos, sin)."""
    for i in range(n_rot // 2):
        c = cs[tt, i, 0]
        s = cs[tt, i, 1]
        x0 = v[vo + 2 * i]
        x1 = v[vo + 2 * i + 1]
        v[vo + 2 * i] = fsub(fmul(x0, c), fmul(x1, s))
        v[vo + 2 * i + 1] = fadd(fmul(x0, s), fmul(x1, c))


def rope_neox(v, vo, n_rot, cs, tt):
    """NEOX RoPE (pairs i, i + n_rot/2: Gemma-3, ENGINE.md §10) in place on v[vo:vo+n_rot]."""
    h = n_rot // 2
    for i in range(h):
        c = cs[tt, i, 0]
        s = cs[tt, i, 1]
        x0 = v[vo + i]
        x1 = v[vo + i + h]
        v[vo + i] = fsub(fmul(x0, c), fmul(x1, s))
        v[vo + i + h] = fadd(fmul(x0, s), fmul(x1, c))


# ---------------------------------------------------------------- §2 quantisation, RMSNorm
def quant_block(x, xo, n, q, qo):
    """Quantise x[xo:xo+n] (float32) to int8 q[qo:qo+n]; return (scale d, sum of codes as f32).

    d = amax / 127, code = round-half-away(x * (127 / amax)) clamped to [-127, 127];
    amax == 0 (or NaN only) gives d = 0 and zero codes; a NaN element gets code 0."""
    amax = F0
    for j in range(n):
        a = abs(x[xo + j])
        if a > amax:
            amax = a
    if amax == F0:
        for j in range(n):
            q[qo + j] = 0
        return F0, F0
    d = fdiv(amax, F127)
    inv = fdiv(F127, amax)
    s = 0
    for j in range(n):
        v = fmul(x[xo + j], inv)
        if v >= F0:
            iv = np.int32(fadd(v, F05))
        elif v < F0:
            iv = -np.int32(fsub(F05, v))
        else:
            iv = np.int32(0)                          # NaN
        if iv > 127:
            iv = np.int32(127)
        elif iv < -127:
            iv = np.int32(-127)
        q[qo + j] = iv
        s += iv
    return d, np.float32(s)


def rms_scale(x, eps):
    """rho = f32(1 / sqrt(mean(x^2) + eps)); the mean in float64, serial, in order."""
    n = x.shape[0]
    ss = 0.0
    for i in range(n):
        v = np.float64(x[i])
        ss = dadd(ss, dmul(v, v))                     # exact product, rounded sum
    return np.float32(ddiv(1.0, dsqrt(dadd(ddiv(ss, np.float64(n)), np.float64(eps)))))


def rmsnorm(x, w, eps, out):
    """out = (x * rho) * w."""
    r = rms_scale(x, eps)
    for i in range(x.shape[0]):
        out[i] = fmul(fmul(x[i], r), w[i])


def add_norm(x, o, w, eps, h):
    """x += RMSNorm(o, w) (Gemma-3's post-attention / post-feed-forward norms; h: scratch)."""
    rmsnorm(o, w, eps, h)
    for i in range(x.shape[0]):
        x[i] = fadd(x[i], h[i])


# ---------------------------------------------------------------- §3, §5 embedding, §5 output
def mm_block(acc, wd, da, s, wm, sa, q4):
    """One block of ENGINE.md §3: acc + (wd*da)*f32(S) [+ (wm*da)*sa]."""
    t = fmul(fmul(wd, da), np.float32(s))
    if q4:
        t = fadd(t, fmul(fmul(wm, da), sa))
    return fadd(acc, t)


def dequant(d, q, m, q4):
    """Embedding element: Q8_0 d*q, Q4_1 d*q + m."""
    v = fmul(d, np.float32(q))
    if q4:
        v = fadd(v, m)
    return v


def embed_scale(v, s):
    """An embedding element times the model's scale (Gemma-3: f32(sqrt(D))); s == 0: none."""
    return v if s == F0 else fmul(v, s)


def fixed_logit(y):
    """y rounded to an integer of 2^-16, clamped to +-(2^24 - 1) (NaN -> the negative bound)."""
    v = math.floor(dadd(dmul(np.float64(y), LOGIT_SCALE), 0.5))
    if not (v <= LOGIT_MAX):                   # also NaN
        v = LOGIT_MAX if v > 0 else -LOGIT_MAX
    elif v < -LOGIT_MAX:
        v = -LOGIT_MAX
    return np.float32(dmul(np.float64(v), 1.0 / LOGIT_SCALE))   # exact: a power-of-two scale


# ---------------------------------------------------------------- §5 step 4, attention
def att_score(dq, dk, si, kq_scale):
    return fmul(fmul(fmul(dq, dk), np.float32(si)), kq_scale)


def att_e(x, m):
    return exp_nonpos(fsub(x, m))


def att_z(e):
    return np.int64(fmul(e, E_ONE))


def att_c(e, dv):
    return fmul(e, dv)


def att_gain(cmax):
    return fdiv(P_MAX_F, cmax)


def att_p(c, g):
    p = np.int32(fadd(fmul(c, g), F05))
    if p > P_MAX:
        p = np.int32(P_MAX)
    return p


def att_out(a, cmax, z):
    f = ddiv(dmul(np.float64(cmax), 16777216.0), np.float64(P_MAX))
    return np.float32(ddiv(dmul(np.float64(a), f), np.float64(z)))


# the family, in dependency order (each may call only those before it)
FAMILY = (exp_nonpos, sigmoid, silu, swiglu, gelu, geglu, sincos_turn, rope_entry, rope_apply,
          rope_neox, quant_block, rms_scale, rmsnorm, add_norm, mm_block, dequant, embed_scale,
          fixed_logit, att_score, att_e, att_z, att_c,
          att_gain, att_p, att_out)


def rebind(fn, env):
    """fn's code with the globals `env` (the helpers and family of one target)."""
    return _types.FunctionType(fn.__code__, env, fn.__name__, fn.__defaults__, fn.__closure__)


def _sim_helpers():
    f32, f64 = np.float32, np.float64
    return {
        "fmul": lambda a, b: f32(f32(a) * f32(b)), "fadd": lambda a, b: f32(f32(a) + f32(b)),
        "fsub": lambda a, b: f32(f32(a) - f32(b)), "fdiv": lambda a, b: f32(f32(a) / f32(b)),
        "dmul": lambda a, b: f64(f64(a) * f64(b)), "dadd": lambda a, b: f64(f64(a) + f64(b)),
        "dsub": lambda a, b: f64(f64(a) - f64(b)), "ddiv": lambda a, b: f64(f64(a) / f64(b)),
        "dsqrt": lambda a: f64(np.sqrt(f64(a))),
        "umul": lambda a, b: np.uint64((int(a) * int(b)) & 0xFFFFFFFFFFFFFFFF),
        "fbits": fbits,
    }


def _cuda_helpers():
    cuda = numba_cuda()
    from numba.cuda import libdevice as L

    def dsub_rn(a, b):
        return L.dadd_rn(a, -b)                   # negation is exact
    return {"fmul": L.fmul_rn, "fadd": L.fadd_rn, "fsub": L.fsub_rn, "fdiv": L.fdiv_rn,
            "dmul": L.dmul_rn, "dadd": L.dadd_rn, "dsub": cuda.jit(device=True)(dsub_rn),
            "ddiv": L.ddiv_rn, "dsqrt": L.dsqrt_rn, "umul": cuda.jit(device=True)(umul),
            "fbits": L.int_as_float}


def build(target: str, extra=()):
    """The family (and `extra` functions written against it) compiled for target "cpu", "cuda"
    or "sim": a dict name -> compiled function; its "env" entry is the shared globals dict, so
    later functions rebound with it see the whole family."""
    env = dict(globals())
    if target == "cpu":
        from numba import njit
        from .simd import bits_f32
        # error_model="numpy": a float division by zero gives IEEE inf/NaN instead of raising;
        # no division here can have a zero divisor, and the check would stop loops vectorising
        jit = njit(cache=True, error_model="numpy")
        for h in HELPERS:
            env[h] = jit(globals()[h]) if h != "fbits" else bits_f32
    elif target in ("cuda", "sim"):
        cuda = numba_cuda()
        env.update(_cuda_helpers() if target == "cuda" else _sim_helpers())
        jit = cuda.jit(device=True)
    else:
        raise ValueError(target)
    out = {}
    for fn in tuple(FAMILY) + tuple(extra):
        out[fn.__name__] = env[fn.__name__] = jit(rebind(fn, env))
    out["env"] = env
    return out
