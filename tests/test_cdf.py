"""cdf.quantize: exact invariants, exact values on degenerate rows, determinism across kernels."""
import hashlib
import math

import numpy as np
import pytest
from numba import njit

from nacrith import cdf
from nacrith.cdf import TOTAL, exp_nonpos, quantize, quantize_into
from nacrith.coder import Decoder, Encoder, scratch

from helpers import det_logits


def q(logits) -> np.ndarray:
    f = np.empty(len(logits), dtype=np.int64)
    quantize(np.asarray(logits), f)
    return f


def check_invariants(f):
    assert f.dtype == np.int64
    assert int(f.sum()) == TOTAL
    assert int(f.min()) >= 1


def test_constants():
    assert cdf.PRECISION_BITS == 24 and TOTAL == 1 << 24
    assert cdf.LN2_HI + cdf.LN2_LO == math.log(2)
    # LN2_HI must make k * LN2_HI exact: at least 11 trailing zero mantissa bits
    assert int.from_bytes(np.float64(cdf.LN2_HI).tobytes(), "little") & 0x7FF == 0


@pytest.mark.parametrize("v", [1, 2, 3, 17, 1000, 49152, 262144])
@pytest.mark.parametrize("scale", [0.0, 1.0, 5.0, 40.0, 1e4])
def test_invariants_random(v, scale):
    rng = np.random.default_rng(v)
    logits = (rng.standard_normal(v) * scale).astype(np.float32)
    f = q(logits)
    check_invariants(f)
    a = int(np.argmax(logits))
    assert f[a] == f.max()
    assert int(np.argmax(f)) == a


def test_all_equal_exact():
    v = 1000
    f = q(np.full(v, 3.25, dtype=np.float32))
    # scale = (2**24 - 1000) / 1000 = 16776.216 -> every f = 1 + 16776; remainder 216 to index 0
    assert f[0] == 16777 + 216
    assert np.all(f[1:] == 16777)
    check_invariants(f)


@pytest.mark.parametrize("v", [2, 49152, 262144])
@pytest.mark.parametrize("low", [0.0, -1e30, -3.4e38, -np.inf])
def test_spike_exact(v, low):
    logits = np.full(v, low, dtype=np.float32)
    logits[v // 3] = 1e4 if low == 0.0 else 0.0
    f = q(logits)
    expect = np.ones(v, dtype=np.int64)
    expect[v // 3] = TOTAL - (v - 1)
    assert np.array_equal(f, expect)


def test_huge_positive_values():
    v = 5000
    logits = np.linspace(1e30, 3e38, v).astype(np.float32)
    logits[123] = np.float32(3.4e38)
    f = q(logits)
    assert f[123] == TOTAL - (v - 1)
    assert np.all(np.delete(f, 123) == 1)
    f = q(np.full(v, 3.4e38, dtype=np.float32))      # equal huge values: uniform
    assert f[0] == 1 + (TOTAL - v) // v + (TOTAL - v * (1 + (TOTAL - v) // v))
    assert np.all(f[1:] == 1 + (TOTAL - v) // v)


def test_nan_and_inf():
    v = 100
    logits = np.zeros(v, dtype=np.float32)
    logits[7] = np.nan
    f = q(logits)
    check_invariants(f)
    assert f[7] == 1                                   # NaN gets the minimum
    logits[9] = np.inf
    logits[11] = np.inf
    f = q(logits)
    check_invariants(f)
    half = 1 + (TOTAL - v) // 2                        # p = 1 at both +inf, 0 elsewhere
    assert f[9] == half + (TOTAL - 2 * half - (v - 2)) and f[11] == half
    assert np.all(np.delete(f, [9, 11]) == 1)
    f = q(np.full(v, np.nan, dtype=np.float32))        # nothing usable: uniform
    check_invariants(f)
    assert np.all(f[1:] == 1 + (TOTAL - v) // v)


def test_tiny_vocab_exact():
    assert q(np.array([0.5], dtype=np.float32)).tolist() == [TOTAL]
    assert q(np.array([0.0, 0.0], dtype=np.float32)).tolist() == [TOTAL // 2, TOTAL // 2]


@pytest.mark.parametrize("v", [10, 1000, 49152])
def test_close_to_numpy_softmax(v):
    for seed, scale in [(1, 1.0), (2, 4.0), (3, 15.0)]:
        logits = (np.random.default_rng(seed).standard_normal(v) * scale).astype(np.float32)
        x = logits.astype(np.float64)
        p = np.exp(x - x.max())
        p /= p.sum()
        f = q(logits)
        ideal = 1 + p * (TOTAL - v)                    # f_i = floor(ideal_i) except the argmax
        a = int(np.argmax(logits))
        rest = np.delete(np.arange(v), a)
        assert np.all(np.abs(f[rest] - ideal[rest]) <= 1.0 + 1e-6)
        assert -1.0 <= f[a] - ideal[a] <= v
        # and the coding cost is within a hair of the float softmax
        kl = float(np.sum(p * (np.log2(p + 1e-300) - np.log2(f / TOTAL))))
        assert kl < (1e-4 if v <= 1000 else 5e-3)


def test_exp_accuracy_and_edges():
    xs = np.concatenate([-np.linspace(0.0, 700.0, 20001), -np.geomspace(1e-20, 1.0, 200)])
    for x in xs:
        e = exp_nonpos(x)
        t = math.exp(x)
        assert abs(e - t) <= 4e-16 * t, x
    assert exp_nonpos(0.0) == 1.0
    assert exp_nonpos(-0.0) == 1.0
    assert exp_nonpos(-700.5) == 0.0
    assert exp_nonpos(-np.inf) == 0.0
    assert exp_nonpos(np.nan) == 0.0
    # p <= 1 for every x <= 0 (so the maximum p is exactly 1.0, at the max logit)
    assert max(exp_nonpos(-x) for x in np.geomspace(1e-30, 0.4, 2000)) <= 1.0


def test_float32_and_float64_inputs_agree():
    logits = det_logits(7, 5000)
    assert np.array_equal(q(logits), q(logits.astype(np.float64)))


@njit(cache=False)   # never cached: a stale on-disk copy would embed an old quantize_into
def _quantize_rows_elsewhere(rows, out):
    """A different compiled kernel that inlines quantize_into with its own scratch."""
    p = np.empty(rows.shape[1], dtype=np.float64)
    for r in range(rows.shape[0]):
        quantize_into(rows[r], out[r], p)


@pytest.mark.parametrize("v", [257, 49152, 262144])
def test_deterministic_across_kernels(v):
    rows = np.stack([det_logits(s, v, scale) for s, scale in [(1, 12.0), (2, 30.0), (3, 3.0)]])
    ref = np.stack([q(r) for r in rows])
    other = np.empty_like(ref)
    _quantize_rows_elsewhere(rows, other)
    assert np.array_equal(ref, other)
    # the coder's fused kernels leave their table in the shared scratch
    for r, f in zip(rows, ref):
        Encoder().encode_logits(r, v - 1)
        assert np.array_equal(scratch(v)[0], f)
        Decoder(b"\x12\x34\x56\x78").decode_logits(r)
        assert np.array_equal(scratch(v)[0], f)


def test_pinned_tables():
    # A change to these hashes changes every archive: it is a format change (bump the container
    # version).
    h = hashlib.sha256()
    for seed, v, scale in [(11, 49152, 12.0), (12, 1000, 40.0), (13, 262144, 25.0)]:
        h.update(q(det_logits(seed, v, scale)).astype("<i8").tobytes())
    assert h.hexdigest() == "3f7305673ff7b102a4b4c9af208ed4b9cb33316411044c5433a18eae082361dd"


def reference_quantize(logits) -> list[int]:
    """The algorithm in plain Python floats (IEEE double, correctly rounded): compiled code must
    match it bit for bit, which rules out FMA contraction, reassociation and libm exp."""
    xs = [float(x) for x in logits]
    m = max((x for x in xs if x == x), default=-math.inf)
    assert math.isfinite(m)
    c = [1.0 / math.factorial(k) for k in range(13)]
    p = []
    for x in xs:
        x = x - m
        if not x >= cdf.EXP_CUTOFF:
            p.append(0.0)
            continue
        k = math.floor(x * cdf.INV_LN2 + 0.5)
        r = (x - k * cdf.LN2_HI) - k * cdf.LN2_LO
        y = c[12]
        for j in range(11, -1, -1):
            y = y * r + c[j]
        p.append(y * math.ldexp(1.0, k))
    s = 0.0
    for y in p:
        s += y
    scale = (TOTAL - len(xs)) / s
    f = [1 + int(y * scale) for y in p]
    f[p.index(max(p))] += TOTAL - sum(f)
    return f


@pytest.mark.parametrize("seed,v,scale", [(21, 3000, 25.0), (22, 500, 400.0), (23, 4000, 3.0)])
def test_matches_pure_python_reference(seed, v, scale):
    logits = det_logits(seed, v, scale)
    logits[::97] = np.nan
    logits[5::101] = -1e30
    assert q(logits).tolist() == reference_quantize(logits)
