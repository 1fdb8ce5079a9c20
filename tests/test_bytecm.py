"""The byte coder's bit mixer (bytecm.py): its hand-written ln, the coder's two-symbol tables,
and a mixer that learns (exact frequencies, the same for every run)."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from nacrith import bytecm, cdf
from nacrith.coder import Decoder, Encoder


def test_ln_is_close_to_libm_and_clamped():
    xs = np.concatenate([np.logspace(-17, 0, 2000), [0.5, 0.70710678, 0.999999999, 1.0]])
    for x in xs:
        assert abs(bytecm._ln(x) - math.log(x)) <= 4e-16 * max(1.0, abs(math.log(x))), x
    assert bytecm._ln(0.0) == bytecm._ln(2.0 ** -70) == bytecm._ln(bytecm.LN_FLOOR)
    assert bytecm._ln(2.0) == 0.0
    assert bytecm._squash(0.0) == 0.5 and bytecm._squash(-800.0) == 0.0
    assert bytecm._squash(3.0) + bytecm._squash(-3.0) == pytest.approx(1.0, abs=3e-16)


def test_bit_tables_code_like_two_symbol_frequency_tables():
    rng = np.random.default_rng(5)
    f1s = rng.integers(1, cdf.TOTAL, 3000)
    bits = rng.integers(0, 2, 3000)
    a, b = Encoder(), Encoder()
    for f1, bit in zip(f1s, bits):
        a.encode_bit(f1, bit)
        b.encode_freqs(np.array([cdf.TOTAL - f1, f1]), bit)
    z = a.finish()
    assert z == b.finish()
    dec = Decoder(z)
    assert [dec.decode_bit(f1) for f1 in f1s] == list(bits)
    for bad in (0, cdf.TOTAL):
        with pytest.raises(ValueError, match="1 <= f1 < 2"):
            Encoder().encode_bit(bad, 1)
        with pytest.raises(ValueError, match="1 <= f1 < 2"):
            Decoder(b"").decode_bit(bad)
    assert bytecm.freq1(0.0) == 1 and bytecm.freq1(1.0) == cdf.TOTAL - 1


def _frequencies(data, da, db, settings=bytecm.PRESETS[1]):
    cm = bytecm.new(settings, len(data))
    out = np.zeros(8 * len(data), np.int64)
    bytecm.run(cm, da, db, np.frombuffer(data, np.uint8), out)
    return out


def test_the_mixer_learns_and_is_reproducible():
    """Two flat 'models' and a repetitive text: the n-gram and match inputs carry it well under
    8 bits per byte; the frequencies are the same in a second run, and their hash is pinned
    (preset 1 is part of the version-7 format: a change of its arithmetic fails here)."""
    data = b"the cat and the hat; " * 60
    flat = np.full((len(data), 256), 1 / 256)
    out = _frequencies(data, flat, flat)
    bits = -np.log2(out / cdf.TOTAL).sum() / len(data)
    assert bits < 0.8
    assert (_frequencies(data, flat, flat) == out).all()
    assert out.min() >= 1 and out.max() <= cdf.TOTAL - 1
    # one model sure of every byte: the mixer follows it
    sure = np.full((len(data), 256), 1e-6)
    sure[np.arange(len(data)), np.frombuffer(data, np.uint8)] = 1 - 255e-6
    assert -np.log2(_frequencies(data, sure, flat) / cdf.TOTAL).sum() / len(data) < 0.1
    assert hashlib.sha256(out.tobytes()).hexdigest() == \
        "0102ba4e9a63247d53e85fc099deaf570a457c1ed41185455af7834044163be2"


def test_preset_2_is_preset_1_with_the_first_model_weighted_first():
    """Version 8's preset: only the initial weights differ (0.6, 0.4 instead of 0.3, 0.7), and its
    frequencies are pinned too; swapping the two models' inputs under preset 2 is not preset 1
    (the models' weights start apart, one input order per preset)."""
    assert bytecm.PRESETS[2] == bytecm.PRESETS[1]._replace(w0=(0.6, 0.4))
    assert bytecm.PRESETS[1].w0 == (0.3, 0.7)
    data = b"the cat and the hat; " * 60
    flat = np.full((len(data), 256), 1 / 256)
    sure = np.full((len(data), 256), 1e-6)
    sure[np.arange(len(data)), np.frombuffer(data, np.uint8)] = 1 - 255e-6
    out = _frequencies(data, sure, flat, bytecm.PRESETS[2])
    assert not (out == _frequencies(data, sure, flat)).all()
    assert not (out == _frequencies(data, flat, sure)).all()
    assert hashlib.sha256(out.tobytes()).hexdigest() == \
        "d343709b33a7e45f9ed855f4e428cab2ea6b62d288e7bab051d22c52d4d01f15"


def test_table_size_follows_the_segment():
    st = bytecm.PRESETS[1]
    assert [bytecm.table_bits(st, n) for n in (0, 1, 256, 257, 10 ** 6, 10 ** 9)] == \
        [12, 12, 12, 13, 22, st.table_bits]
