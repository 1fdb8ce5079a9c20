"""Exact integer SIMD primitives, emitted as target-independent LLVM vector IR.

Invariants: every primitive here is pure integer arithmetic whose every intermediate fits its
lane type (checked bounds in the comments), so the result is the mathematical value whatever the
target lowers the vectors to (AVX-512/VNNI, AVX2, SSE2 on NUMBA_CPU_NAME=generic, NEON, ...);
integer sums are associative, so the order the backend chooses for a reduction cannot matter.
No floating point is touched here, except the lane-wise §3 block update of blk16_* (basic
float32 operations, one lane per row, in the order of the spec).  On a host with AVX-512 VNNI
the quad sums use vpdpbusd (non-saturating); on AVX2 vpmaddubsw + vpmaddwd with bounds that
never saturate (below); elsewhere generic IR: the same exact integers on every path.

Why IR and not plain loops: LLVM's auto-vectoriser does not vectorise Numba's block loops
reliably (fully unrolled 32-trip loops fall back to scalar code); explicit vector IR does.
"""
from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_i8, _i16, _i32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)


def _vec(t, n):
    return ir.VectorType(t, n)


def _ptr(context, builder, aryty, ary, off, vt):
    """Pointer to flat element `off` of a C-contiguous array, cast to a vector pointer."""
    a = context.make_array(aryty)(context, builder, ary)
    p = builder.gep(a.data, [off])
    return builder.bitcast(p, vt.as_pointer())


def _load(builder, p, vt):
    return builder.load(p, align=1)


def _call(builder, name, ret, *args):
    """Call the LLVM intrinsic `name` (declared from the argument types) on args."""
    fn = cgutils.get_or_insert_function(builder.module,
                                        ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, list(args))


def _reduce_add(builder, v, n):
    return _call(builder, f"llvm.vector.reduce.add.v{n}i32", _i32, v)


def _splat(builder, val, t, n):
    undef = ir.Constant(_vec(t, n), ir.Undefined)
    v = builder.insert_element(undef, val, ir.Constant(_i32, 0))
    return builder.shuffle_vector(v, undef, ir.Constant(_vec(_i32, n), [0] * n))


@intrinsic
def dot_i8x32(typingctx, w, wo, x, xo):
    """sum_j w[wo + j] * x[xo + j], j < 32, both int8 (|product| <= 128^2 = 2^14, fits int16
    products summed in int32; |sum| <= 2^19)."""
    sig = types.int32(w, wo, x, xo)

    def codegen(context, builder, sig, args):
        a = _load(builder, _ptr(context, builder, sig.args[0], args[0], args[1], _vec(_i8, 32)),
                  _vec(_i8, 32))
        b = _load(builder, _ptr(context, builder, sig.args[2], args[2], args[3], _vec(_i8, 32)),
                  _vec(_i8, 32))
        p = builder.mul(builder.sext(a, _vec(_i32, 32)), builder.sext(b, _vec(_i32, 32)))
        return _reduce_add(builder, p, 32)

    return sig, codegen


@intrinsic
def axpy_i8x64(typingctx, acc, ao, p, v, vo):
    """acc[ao + i] += p * v[vo + i], i < 64: int32 accumulators, int32 p (|p| <= 2^15), int8 v.
    The caller bounds the number of accumulated terms so int32 never overflows."""
    sig = types.void(acc, ao, p, v, vo)

    def codegen(context, builder, sig, args):
        pa = _ptr(context, builder, sig.args[0], args[0], args[1], _vec(_i32, 64))
        a = _load(builder, pa, _vec(_i32, 64))
        vv = _load(builder, _ptr(context, builder, sig.args[3], args[3], args[4], _vec(_i8, 64)),
                   _vec(_i8, 64))
        pv = _splat(builder, builder.trunc(args[2], _i32) if args[2].type != _i32 else args[2],
                    _i32, 64)
        r = builder.add(a, builder.mul(builder.sext(vv, _vec(_i32, 64)), pv))
        builder.store(r, pa, align=4)
        return context.get_dummy_value()

    return sig, codegen



@intrinsic
def f32_bits(typingctx, x):
    """The bits of float32 x as an int32 (a bit cast, no conversion)."""
    sig = types.int32(types.float32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _i32)

    return sig, codegen


@intrinsic
def bits_f32(typingctx, i):
    """The float32 whose bits are the int32 i (a bit cast, no conversion)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


# ---------------------------------------------------------------- 16-row interleaved blocks
# Layout prepared at load (model.py): for a group of R = 16 rows and one 32-column block, chunk k
# of 64 bytes holds byte c of quad k of every row r at 4r + c.  Q8_0: 8 chunks, byte = q[r, 4k+c]
# (int8).  Q4_1: 4 chunks, byte = GGUF byte 4k+c of row r's block (low nibble q[r, 4k+c], high
# nibble q[r, 16+4k+c]).  Lane pairs (2r, 2r+1) of the int32 partial sums belong to row r.
R = 16
_EVEN64 = list(range(0, 64, 2))
_ODD64 = list(range(1, 64, 2))
_EVEN32 = list(range(0, 32, 2))
_ODD32 = list(range(1, 32, 2))
_QUAD64 = [i % 4 for i in range(64)]


def _shuf(builder, v, idx):
    return builder.shuffle_vector(v, v, ir.Constant(_vec(_i32, len(idx)), idx))


def _quad_dot(builder, w16, xq):
    """<64 x i16> codes (lane 4r + c) times the 4 activations xq (<4 x i8>, repeated for every
    row) -> <32 x i32> pair sums (lane 2r + e = codes 4r+2e, 4r+2e+1), exact (|.| < 2^16)."""
    x16 = builder.sext(_shuf(builder, xq, _QUAD64), _vec(_i16, 64))
    s = [builder.mul(builder.sext(_shuf(builder, a, idx), _vec(_i32, 32)),
                     builder.sext(_shuf(builder, x16, idx), _vec(_i32, 32)))
         for a, idx in ((w16, _EVEN64), (w16, _ODD64))]
    return builder.add(s[0], s[1])


def _host_has(*features) -> bool:
    """Compiling for this host (not NUMBA_CPU_NAME=generic or another named CPU) and it has
    every one of `features` (an explicit NUMBA_CPU_FEATURES list decides instead).  Picks the
    speed path only: every path computes the same exact integers."""
    import numba
    from llvmlite import binding
    if numba.config.CPU_NAME not in (None, "", "host"):
        return False
    feats = numba.config.CPU_FEATURES
    if feats:
        return all(f"+{f}" in feats for f in features)
    host = binding.get_host_cpu_features()
    return all(host.get(f) for f in features)


def _dpbusd(builder, acc, a, b):
    """acc + (sum of 4 u8 a x s8 b products per int32 lane): exact (non-saturating vpdpbusd)."""
    v = _vec(_i32, R)
    return _call(builder, "llvm.x86.avx512.vpdpbusd.512", v, acc, builder.bitcast(a, v),
                 builder.bitcast(b, v))


def _halves(builder, v):
    """<64 x i8> -> its two <32 x i8> halves (rows 0-7, rows 8-15 of the interleaved chunk)."""
    return (_shuf(builder, v, list(range(32))), _shuf(builder, v, list(range(32, 64))))


def _maddubs(builder, u, s):
    """vpmaddubsw: <32 x u8> x <32 x s8> -> <16 x i16> pair sums (saturating; callers keep every
    pair sum inside int16, so it never saturates)."""
    return _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _vec(_i16, 16), u, s)


def _maddwd1(builder, v):
    """vpmaddwd with ones: <16 x i16> -> <8 x i32> sums of lane pairs (exact)."""
    return _call(builder, "llvm.x86.avx2.pmadd.wd", _vec(_i32, 8), v,
                 ir.Constant(_vec(_i16, 16), [1] * 16))


def _row_sums(builder, steps, signed):
    """Exact int32 sums S_r (<16 x i32>, lane r = row r) of one 16-row block: steps yields
    (codes, xq): a 64-byte interleaved chunk (<64 x i8>: byte c of row r at 4r + c) and the 4
    activations (<4 x i8>, |x| <= 127, quant_block) its quad multiplies.  Codes are unsigned
    nibbles (<= 15, at most 8 steps: Q4_1) or, with `signed`, int8 (Q8_0).  The host decides
    the instructions; every path gives the same integers:
    - AVX-512 VNNI: vpdpbusd; signed codes as (w + 128) unsigned, minus 128 * sum x at the end;
    - AVX2: vpmaddubsw pair sums, then vpmaddwd; nibbles sum in int16 (|sum| <= 8 * 2 * 15 *
      127 = 30480 < 2^15), signed codes as |w| x sign(w)*x (pairs <= 2 * 128 * 127 < 2^15), so
      vpmaddubsw never saturates;
    - elsewhere generic vector IR (_quad_dot)."""
    if _host_has("avx512vnni", "avx512bw"):
        isum = ir.Constant(_vec(_i32, R), [0] * R)
        xs = ir.Constant(_i32, 0)
        for v, xq in steps:
            if signed:      # (w + 128) is unsigned: sum (w + 128) x = sum w x + 128 sum x
                v = builder.xor(v, ir.Constant(_vec(_i8, 64), [-128] * 64))
            isum = _dpbusd(builder, isum, v, _shuf(builder, xq, _QUAD64))
            if signed:
                xs = builder.add(xs, _reduce_add(builder, builder.sext(xq, _vec(_i32, 4)), 4))
        if signed:
            isum = builder.sub(isum, _splat(builder, builder.shl(xs, ir.Constant(_i32, 7)),
                                            _i32, R))
        return isum
    if _host_has("avx2"):
        wide = _vec(_i32, 8) if signed else _vec(_i16, 16)
        part = [ir.Constant(wide, [0] * wide.count)] * 2
        n = 0
        for v, xq in steps:
            n += 1
            xb = _shuf(builder, xq, _QUAD64[:32])
            for j, half in enumerate(_halves(builder, v)):
                if signed:
                    a = _call(builder, "llvm.abs.v32i8", half.type, half,
                              ir.Constant(ir.IntType(1), 0))
                    sx = _call(builder, "llvm.x86.avx2.psign.b", xb.type, xb, half)
                    part[j] = builder.add(part[j], _maddwd1(builder, _maddubs(builder, a, sx)))
                else:
                    part[j] = builder.add(part[j], _maddubs(builder, half, xb))
        assert signed or n <= 8, "the int16 nibble sums are bounded for 8 steps"
        if not signed:
            part = [_maddwd1(builder, h) for h in part]
        return builder.shuffle_vector(part[0], part[1], ir.Constant(_vec(_i32, R), list(range(R))))
    isum = ir.Constant(_vec(_i32, 32), [0] * 32)
    ext = builder.sext if signed else builder.zext
    for v, xq in steps:
        isum = builder.add(isum, _quad_dot(builder, ext(v, _vec(_i16, 64)), xq))
    # <32 x i32> pair sums (lanes 2r, 2r+1) -> <16 x i32> row sums
    return builder.add(_shuf(builder, isum, _EVEN32), _shuf(builder, isum, _ODD32))


def _acc_update(context, builder, sig, args, isum, q4):
    """acc[0:16] = acc + (wd*da)*f32(S) [+ (wm*da)*sa]: lane-wise float32 basic operations in the
    order of ENGINE.md §3 (one lane per row; no fast-math flags, no fma)."""
    f32 = ir.FloatType()
    sf = builder.sitofp(isum, _vec(f32, R))
    pa = _ptr(context, builder, sig.args[0], args[0], ir.Constant(ir.IntType(64), 0), _vec(f32, R))
    wd = _load(builder, _ptr(context, builder, sig.args[5], args[5], args[7], _vec(f32, R)), None)
    da = _splat(builder, args[9], f32, R)
    t = builder.fmul(builder.fmul(wd, da), sf)
    if q4:
        wm = _load(builder, _ptr(context, builder, sig.args[6], args[6], args[8], _vec(f32, R)),
                   None)
        t = builder.fadd(t, builder.fmul(builder.fmul(wm, da), _splat(builder, args[10], f32, R)))
    builder.store(builder.fadd(builder.load(pa, align=4), t), pa, align=4)


def _load4(context, builder, aryty, ary, off, k):
    off = builder.add(off, ir.Constant(off.type, k))
    return _load(builder, _ptr(context, builder, aryty, ary, off, _vec(_i8, 4)), None)


def _chunk(context, builder, aryty, ary, off, k):
    off = builder.add(off, ir.Constant(off.type, 64 * k))
    return _load(builder, _ptr(context, builder, aryty, ary, off, _vec(_i8, 64)), None)


@intrinsic
def blk16_q4(typingctx, acc, w, wo, x, xo, wd, wm, so, mo, da, sa):
    """One Q4_1 block (256 interleaved bytes at flat offset wo of w) of 16 rows times int8
    activations x[xo:xo+32] (flat offsets): acc[r] = acc[r] + ((wd[so+r]*da)*f32(S_r) +
    (wm[mo+r]*da)*sa), S_r exact int32 (|S_r| <= 32*15*127 < 2^16)."""
    sig = types.void(acc, w, wo, x, xo, wd, wm, so, mo, da, sa)

    def codegen(context, builder, sig, args):
        def steps():
            for k in range(4):
                v = _chunk(context, builder, sig.args[1], args[1], args[2], k)
                lo = builder.and_(v, ir.Constant(_vec(_i8, 64), [15] * 64))
                hi = builder.lshr(v, ir.Constant(_vec(_i8, 64), [4] * 64))
                for nib, xoff in ((lo, 4 * k), (hi, 16 + 4 * k)):
                    yield nib, _load4(context, builder, sig.args[3], args[3], args[4], xoff)
        _acc_update(context, builder, sig, args, _row_sums(builder, steps(), False), True)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def blk16_q8(typingctx, acc, w, wo, x, xo, wd, wm, so, mo, da, sa):
    """One Q8_0 block (512 interleaved int8 codes w[wo:]) of 16 rows times int8 activations
    x[xo:xo+32]: acc[r] = acc[r] + (wd[so+r]*da)*f32(S_r), S_r exact int32 (|S_r| <= 2^19);
    wm, mo and sa are unused (same signature as blk16_q4)."""
    sig = types.void(acc, w, wo, x, xo, wd, wm, so, mo, da, sa)

    def codegen(context, builder, sig, args):
        def steps():
            for k in range(8):
                v = _chunk(context, builder, sig.args[1], args[1], args[2], k)
                yield v, _load4(context, builder, sig.args[3], args[3], args[4], 4 * k)
        _acc_update(context, builder, sig, args, _row_sums(builder, steps(), True), False)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def blk16_q6(typingctx, acc, w, wo, x, xo, wd, wm, so, mo, da, sa):
    """One block with two half scales (kind 2, from Q6_K: 512 interleaved int8 codes w[wo:],
    codes 0-15 of a row scaled by wd[so+r], codes 16-31 by wm[mo+r]) of 16 rows times int8
    activations x[xo:xo+32]: acc[r] = acc[r] + ((wd*da)*f32(S_lo,r) + (wm*da)*f32(S_hi,r)),
    S_lo/S_hi exact int32 sums over the two halves (|S| <= 2^18); sa is unused."""
    sig = types.void(acc, w, wo, x, xo, wd, wm, so, mo, da, sa)

    def codegen(context, builder, sig, args):
        def steps(k0):
            for k in range(k0, k0 + 4):
                v = _chunk(context, builder, sig.args[1], args[1], args[2], k)
                yield v, _load4(context, builder, sig.args[3], args[3], args[4], 4 * k)
        lo = _row_sums(builder, steps(0), True)
        hi = _row_sums(builder, steps(4), True)
        f32 = ir.FloatType()
        pa = _ptr(context, builder, sig.args[0], args[0], ir.Constant(ir.IntType(64), 0),
                  _vec(f32, R))
        wd = _load(builder, _ptr(context, builder, sig.args[5], args[5], args[7], _vec(f32, R)),
                   None)
        wm = _load(builder, _ptr(context, builder, sig.args[6], args[6], args[8], _vec(f32, R)),
                   None)
        da = _splat(builder, args[9], f32, R)
        t = builder.fadd(builder.fmul(builder.fmul(wd, da), builder.sitofp(lo, _vec(f32, R))),
                         builder.fmul(builder.fmul(wm, da), builder.sitofp(hi, _vec(f32, R))))
        builder.store(builder.fadd(builder.load(pa, align=4), t), pa, align=4)
        return context.get_dummy_value()

    return sig, codegen


# ---------------------------------------------------------------- attention scores
def _pair_sums(builder, a, b):
    """[pair sums of a's lanes | pair sums of b's lanes] (same width as a and b)."""
    w = a.type.count
    ev = ir.Constant(_vec(_i32, w), list(range(0, 2 * w, 2)))
    od = ir.Constant(_vec(_i32, w), list(range(1, 2 * w, 2)))
    return builder.add(builder.shuffle_vector(a, b, ev), builder.shuffle_vector(a, b, od))


def _lane_totals(builder, vecs):
    """16 int32 vectors of width W (16 or 8) -> one <16 x i32>, lane j = the sum of vecs[j]'s
    lanes (a transposing tree of pair sums: 15 shuffle-adds, not 16 horizontal reductions)."""
    while len(vecs) > 16 // vecs[0].type.count:
        vecs = [_pair_sums(builder, vecs[i], vecs[i + 1]) for i in range(0, len(vecs), 2)]
    if len(vecs) == 2:
        vecs = [builder.shuffle_vector(vecs[0], vecs[1], ir.Constant(_vec(_i32, 16),
                                                                     list(range(16))))]
    return vecs[0]


@intrinsic
def dots16_i8x64(typingctx, out, k, ko, q, qo):
    """out[j] = sum_i k[ko + 64 j + i] * q[qo + i] for j < 16, i < 64: the attention scores of 16
    cache positions (int8 keys, head dim 64) for one query head; exact int32 (|sum| <= 2^20).
    q must avoid -128 (quant_block's codes are in [-127, 127]): the AVX2 path negates it.
    AVX-512 VNNI: vpdpbusd on (k + 128) unsigned, minus 128 * sum q; AVX2: vpmaddubsw on
    |k| x sign(k)*q (pairs <= 2 * 128 * 127 < 2^15, never saturates) and vpmaddwd; elsewhere
    generic IR.  The same integers on every path."""
    sig = types.void(out, k, ko, q, qo)

    def codegen(context, builder, sig, args):
        def kvec(j):
            off = builder.add(args[2], ir.Constant(args[2].type, 64 * j))
            return _load(builder, _ptr(context, builder, sig.args[1], args[1], off,
                                       _vec(_i8, 64)), None)
        qv = _load(builder, _ptr(context, builder, sig.args[3], args[3], args[4], _vec(_i8, 64)),
                   None)
        if _host_has("avx512vnni", "avx512bw"):
            zero = ir.Constant(_vec(_i32, 16), [0] * 16)
            flip = ir.Constant(_vec(_i8, 64), [-128] * 64)
            tot = _lane_totals(builder, [_dpbusd(builder, zero, builder.xor(kvec(j), flip), qv)
                                         for j in range(16)])
            qs = _reduce_add(builder, builder.sext(qv, _vec(_i32, 64)), 64)
            tot = builder.sub(tot, _splat(builder, builder.shl(qs, ir.Constant(_i32, 7)),
                                          _i32, 16))
        elif _host_has("avx2"):
            qh = _halves(builder, qv)
            parts = []
            for j in range(16):
                ps = []
                for kh, xh in zip(_halves(builder, kvec(j)), qh):
                    a = _call(builder, "llvm.abs.v32i8", kh.type, kh, ir.Constant(ir.IntType(1), 0))
                    sx = _call(builder, "llvm.x86.avx2.psign.b", xh.type, xh, kh)
                    ps.append(_maddwd1(builder, _maddubs(builder, a, sx)))
                parts.append(builder.add(ps[0], ps[1]))
            tot = _lane_totals(builder, parts)
        else:
            q32 = builder.sext(qv, _vec(_i32, 64))
            parts = []
            for j in range(16):
                p = builder.mul(builder.sext(kvec(j), _vec(_i32, 64)), q32)
                sl = [_shuf(builder, p, list(range(16 * i, 16 * i + 16))) for i in range(4)]
                parts.append(builder.add(builder.add(sl[0], sl[1]), builder.add(sl[2], sl[3])))
            tot = _lane_totals(builder, parts)
        po = _ptr(context, builder, sig.args[0], args[0], ir.Constant(ir.IntType(64), 0),
                  _vec(_i32, 16))
        builder.store(tot, po, align=4)
        return context.get_dummy_value()

    return sig, codegen
