"""Exact integer SIMD primitives, emitted as target-independent LLVM vector IR.

Invariants: every primitive here is pure integer arithmetic whose every intermediate fits its
lane type (checked bounds in the comments), so the result is the mathematical value whatever the
target lowers the vectors to (AVX-512/VNNI, AVX2, SSE2 on NUMBA_CPU_NAME=generic, NEON, ...);
integer sums are associative, so the order the backend chooses for a reduction cannot matter.
No floating point is touched here.

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
    """Pointer to element `off` of a 1-D C-contiguous array, cast to a vector pointer."""
    a = context.make_array(aryty)(context, builder, ary)
    p = builder.gep(a.data, [off])
    return builder.bitcast(p, vt.as_pointer())


def _load(builder, p, vt):
    return builder.load(p, align=1)


def _reduce_add(builder, v, n):
    fnty = ir.FunctionType(_i32, [_vec(_i32, n)])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.vector.reduce.add.v{n}i32")
    return builder.call(fn, [v])


def _splat(builder, val, t, n):
    undef = ir.Constant(_vec(t, n), ir.Undefined)
    v = builder.insert_element(undef, val, ir.Constant(_i32, 0))
    return builder.shuffle_vector(v, undef, ir.Constant(_vec(_i32, n), [0] * n))


@intrinsic
def dot_q4(typingctx, w, wo, x, xo):
    """sum_j q_j * x[xo + j], j < 32, for one Q4_1 block of 16 packed bytes w[wo:wo+16]
    (q_j = low nibble of byte j for j < 16, high nibble of byte j-16 otherwise; 0..15) and int8
    activations.  |sum| <= 32 * 15 * 127 < 2^16; each product fits int16 (|15 * 127| < 2^15)."""
    sig = types.int32(w, wo, x, xo)

    def codegen(context, builder, sig, args):
        v16 = _load(builder, _ptr(context, builder, sig.args[0], args[0], args[1], _vec(_i8, 16)),
                    _vec(_i8, 16))
        lo = builder.and_(v16, ir.Constant(_vec(_i8, 16), [15] * 16))
        hi = builder.lshr(v16, ir.Constant(_vec(_i8, 16), [4] * 16))
        q = builder.shuffle_vector(lo, hi, ir.Constant(_vec(_i32, 32), list(range(32))))
        xv = _load(builder, _ptr(context, builder, sig.args[2], args[2], args[3], _vec(_i8, 32)),
                   _vec(_i8, 32))
        p = builder.mul(builder.zext(q, _vec(_i16, 32)), builder.sext(xv, _vec(_i16, 32)))
        return _reduce_add(builder, builder.sext(p, _vec(_i32, 32)), 32)

    return sig, codegen


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

