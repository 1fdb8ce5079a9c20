"""Arithmetic coder: exact round trips, efficiency, corruption safety, pinned bitstream."""
import hashlib
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nacrith.cdf import TOTAL, quantize
from nacrith.coder import Decoder, Encoder

from helpers import det_logits



def freqs_of(logits) -> np.ndarray:
    f = np.empty(len(logits), dtype=np.int64)
    quantize(logits, f)
    return f


def ideal_bits(tables, syms) -> float:
    return sum(-math.log2(f[s] / TOTAL) for f, s in zip(tables, syms))


@st.composite
def messages(draw):
    v = draw(st.integers(2, 5000))
    n = draw(st.integers(0, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([0.0, 1.0, 4.0, 20.0, 200.0]))
    rng = np.random.default_rng(seed)
    rows = (rng.standard_normal((n, v)) * scale).astype(np.float32)
    # symbols: arbitrary (often very improbable), the argmax, or sampled from the distribution
    kinds = draw(st.lists(st.sampled_from(["any", "argmax", "sample"]), min_size=n, max_size=n))
    syms = []
    for row, kind in zip(rows, kinds):
        if kind == "any":
            syms.append(draw(st.integers(0, v - 1)))
        elif kind == "argmax":
            syms.append(int(np.argmax(row)))
        else:
            f = freqs_of(row)
            syms.append(int(np.searchsorted(np.cumsum(f), rng.integers(TOTAL), side="right")))
    return rows, syms


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_roundtrip_property(msg):
    rows, syms = msg
    tables = [freqs_of(r) for r in rows]

    enc = Encoder()
    for r, s in zip(rows, syms):
        enc.encode_logits(r, s)
    data = enc.finish()
    assert not data.endswith(b"\x00")
    dec = Decoder(data)
    assert [dec.decode_logits(r) for r in rows] == syms

    # the table API produces the identical stream
    enc = Encoder()
    for f, s in zip(tables, syms):
        enc.encode_freqs(f, s)
    assert enc.finish() == data
    dec = Decoder(data)
    assert [dec.decode_freqs(f) for f in tables] == syms

    # efficiency: within 4 bytes of the information content
    assert len(data) <= ideal_bits(tables, syms) / 8 + 4


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 24), st.integers(0, 2**24 - 1)), max_size=60),
       st.integers(2, 300))
def test_uniform_interleaved_roundtrip(items, v):
    items = [(nb, x & ((1 << nb) - 1)) for nb, x in items]
    f = freqs_of(det_logits(v, v))
    enc = Encoder()
    for i, (nb, x) in enumerate(items):
        enc.encode_uniform(x, nb)
        enc.encode_freqs(f, (i * 7919) % v)
    data = enc.finish()
    dec = Decoder(data)
    for i, (nb, x) in enumerate(items):
        assert dec.decode_uniform(nb) == x
        assert dec.decode_freqs(f) == (i * 7919) % v
    assert len(data) <= (sum(nb for nb, _ in items) + ideal_bits([f] * len(items),
                         [(i * 7919) % v for i in range(len(items))])) / 8 + 4


def test_empty_message_exact():
    data = Encoder().finish()
    assert data == b"\x40"          # pending 1 + emit 0: bits 01, zero padded
    Decoder(data)
    Decoder(b"")                     # also fine: nothing to decode


def test_single_certain_symbol_costs_nothing_extra():
    f = np.ones(3, dtype=np.int64)
    f[1] = TOTAL - 2
    enc = Encoder()
    for _ in range(1000):
        enc.encode_freqs(f, 1)
    data = enc.finish()
    assert len(data) <= 1 + 1
    dec = Decoder(data)
    assert all(dec.decode_freqs(f) == 1 for _ in range(1000))


def test_efficiency_long_llm_like_stream():
    v = 4096
    rng = np.random.default_rng(5)
    rows = [det_logits(1000 + t, v) for t in range(1500)]
    tables = [freqs_of(r) for r in rows]
    syms = [int(np.searchsorted(np.cumsum(f), rng.integers(TOTAL), side="right"))
            for f in tables]
    enc = Encoder()
    for r, s in zip(rows, syms):
        enc.encode_logits(r, s)
    cost = enc.cost_bits()
    data = enc.finish()
    ideal = ideal_bits(tables, syms)
    assert len(data) <= (cost + 7) // 8
    assert ideal / 8 - 1 < len(data) <= ideal / 8 * 1.0001 + 4
    dec = Decoder(data)
    assert [dec.decode_logits(r) for r in rows] == syms


def test_improbable_symbols_and_long_pending_runs():
    # the middle symbol of [half, 2, half] keeps the interval straddling 1/2: ~23 pending bits
    # per symbol, thousands in a row, then a resolution
    f = np.array([TOTAL // 2 - 1, 2, TOTAL // 2 - 1], dtype=np.int64)
    syms = [1] * 300 + [0] + [1] * 300 + [2]
    enc = Encoder()
    for s in syms:
        enc.encode_freqs(f, s)
    data = enc.finish()
    assert len(data) <= ideal_bits([f] * len(syms), syms) / 8 + 4
    c = [0, TOTAL // 2 - 1, TOTAL // 2 + 1, TOTAL]
    assert reference_encode([(c[s], c[s + 1]) for s in syms]) == data
    dec = Decoder(data)
    assert [dec.decode_freqs(f) for _ in syms] == syms


def test_fixed_buffer_steps_write_the_encoders_bytes():
    """The steps the device runs (mixer/device.py) write into a fixed buffer of 4 bytes per token
    + 16, never grown: on the worst cases (a frequency of 1 in 2^24 costs 24 bits; the straddling
    middle symbol makes long pending runs) the stream fits and equals Encoder's (which grows its
    buffer before each step, coder._reserve)."""
    from nacrith.coder import E_HIGH, E_NBYTES, TOP, _encode_symbol, _finish
    f1 = np.array([1, TOTAL - 1], dtype=np.int64)
    fm = np.array([TOTAL // 2 - 1, 2, TOTAL // 2 - 1], dtype=np.int64)
    steps = [(f1, 0)] * 500 + [(fm, 1)] * 500 + [(fm, 0), (f1, 0)] * 200 + [(fm, 2)]
    st = np.zeros(8, dtype=np.int64)
    st[E_HIGH] = TOP
    buf = np.zeros(4 * len(steps) + 16, dtype=np.uint8)
    enc = Encoder()
    for f, s in steps:
        _encode_symbol(st, buf, f, s)
        enc.encode_freqs(f, s)
    _finish(st, buf)
    data = enc.finish()
    assert len(data) > 3 * len(steps) // 2           # the worst cases are there
    assert st[E_NBYTES] == len(data) <= len(buf)
    assert buf[:st[E_NBYTES]].tobytes() == data


def test_trailing_zero_bytes_dropped_exact():
    # termination leaves 3f ff ff 7f c0 00 00 here; zero bytes at the end carry no information
    f = np.array([TOTAL // 2 - 1, 2, TOTAL // 2 - 1], dtype=np.int64)
    enc = Encoder()
    for s in (0, 1, 1, 2):
        enc.encode_freqs(f, s)
    data = enc.finish()
    assert data == bytes.fromhex("3fffff7fc0")
    dec = Decoder(data)
    assert [dec.decode_freqs(f) for _ in range(4)] == [0, 1, 1, 2]


def test_buffer_growth():
    enc = Encoder()
    vals = [(i * 40503) & 0xFFFF for i in range(30000)]
    for x in vals:
        enc.encode_uniform(x, 16)
    data = enc.finish()
    assert 60000 <= len(data) <= 60004
    dec = Decoder(data)
    assert [dec.decode_uniform(16) for _ in vals] == vals


@pytest.mark.parametrize("v", [2, 7, 1000, 49152])
def test_decoder_on_garbage_stays_in_range(v):
    rng = np.random.default_rng(v)
    rows = (rng.standard_normal((8, v)) * 6).astype(np.float32)
    tables = [freqs_of(r) for r in rows]
    blobs = [b"", b"\x00", b"\xff" * 64, rng.bytes(3), rng.bytes(200)]
    good = Encoder()
    for i in range(100):
        good.encode_logits(rows[i % 8], i % v)
    good = good.finish()
    blobs += [good[: len(good) // 2], good[:-1] + bytes([good[-1] ^ 0x10]), b"\x00" + good]
    for blob in blobs:
        dec = Decoder(blob)
        for i in range(300 if v < 49152 else 40):
            if i % 3 == 2:
                s = dec.decode_freqs(tables[i % 8])
            elif i % 7 == 6:
                s = dec.decode_uniform(13)
                assert 0 <= s < 1 << 13
                continue
            else:
                s = dec.decode_logits(rows[i % 8])
            assert 0 <= s < v


def test_errors():
    enc = Encoder()
    with pytest.raises(ValueError):
        enc.encode_freqs(np.array([TOTAL - 1, 2], dtype=np.int64), 0)    # wrong total
    with pytest.raises(ValueError):
        enc.encode_freqs(np.array([TOTAL, 0], dtype=np.int64), 0)        # zero frequency
    with pytest.raises(ValueError):
        enc.encode_freqs(np.array([TOTAL // 2, TOTAL // 2], dtype=np.int64), 2)
    with pytest.raises(ValueError):
        enc.encode_logits(np.zeros(5, dtype=np.float32), 5)
    with pytest.raises(ValueError):
        enc.encode_uniform(4, 2)
    with pytest.raises(ValueError):
        Decoder(b"").decode_freqs(np.array([1, 1], dtype=np.int64))
    assert enc.finish() == b"\x40"   # the failed calls left no trace
    with pytest.raises(ValueError):
        enc.finish()
    with pytest.raises(ValueError):
        enc.encode_uniform(0, 1)


def reference_encode(ranges) -> bytes:
    """The documented algorithm in plain Python: (c_lo, c_hi) ranges of 2**24 -> bytes."""
    low, high, pending, bits = 0, (1 << 32) - 1, 0, []

    def emit(b):
        nonlocal pending
        bits.extend([b] + [1 - b] * pending)
        pending = 0

    for c_lo, c_hi in ranges:
        rng = high - low + 1
        high = low + (rng * c_hi >> 24) - 1
        low = low + (rng * c_lo >> 24)
        while True:
            if high < 1 << 31:
                emit(0)
            elif low >= 1 << 31:
                emit(1)
                low, high = low - (1 << 31), high - (1 << 31)
            elif low >= 1 << 30 and high < 3 << 30:
                pending += 1
                low, high = low - (1 << 30), high - (1 << 30)
            else:
                break
            low, high = 2 * low, 2 * high + 1
    pending += 1
    emit(0 if low < 1 << 30 else 1)
    bits += [0] * (-len(bits) % 8)
    out = bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))
    return out.rstrip(b"\x00")


def test_pinned_bitstream():
    # A change to this hash is a bitstream format change (cdf quantization or coder): bump the
    # container version.
    v = 1000
    rows = [det_logits(1234 + t, v) for t in range(200)]
    syms = []
    for t, r in enumerate(rows):
        if t % 5 == 0:
            syms.append((t * 7919) % v)              # improbable
        elif t % 5 == 1:
            syms.append(int(np.argmax(r)))
        else:
            syms.append(int(np.argsort(r, kind="stable")[-1 - t % 7]))
    enc = Encoder()
    for r, s in zip(rows, syms):
        enc.encode_logits(r, s)
    enc.encode_uniform(0xBEEF, 16)
    data = enc.finish()
    assert hashlib.sha256(data).hexdigest() == (
        "2f60e19db36d92fe976ab952179419d9e221a582a608995c798d53752a746055")
    ranges = []
    for r, s in zip(rows, syms):
        f = freqs_of(r)
        ranges.append((int(f[:s].sum()), int(f[:s + 1].sum())))
    ranges.append((0xBEEF << 8, 0xBEF0 << 8))
    assert reference_encode(ranges) == data
    dec = Decoder(data)
    assert [dec.decode_logits(r) for r in rows] == syms
    assert dec.decode_uniform(16) == 0xBEEF
