"""Confidence skip: tokens the match model is sure of are coded without the LLM and fed to
llama.cpp later in one catch-up batch; encoder and decoder issue identical llama_decode calls."""
import hashlib
from dataclasses import replace

import numpy as np
import pytest

import nacrith
from nacrith import api, container as C, frames as F, models
from nacrith.coder import Decoder, Encoder
from nacrith.errors import NacritError
from nacrith.mixer import DEFAULTS, MixParams

from helpers import corpus, fresh_python
from test_mixer import lane

SKIP = dict(skip=62259, skip_cap=16)          # p >= 0.95
LLAMA = dict(SKIP, backend="llama")           # the recorder wraps llama.cpp's Backend.feed


def _synthetic(V=300, seed=3):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, V, 200)
    toks = np.concatenate([base, rng.integers(0, V, 50), base, base]).astype(np.int64)
    logits = rng.normal(0, 2, (len(toks), V)).astype(np.float32)
    return toks, logits


def _code(mp, toks, logits, thr, cap, decode_blob=None):
    """The lockstep rule for one lane: skip while conf >= thr and at most cap tokens wait."""
    V = logits.shape[1]
    lm = lane(mp, V, len(toks))
    enc = Encoder() if decode_blob is None else None
    dec = Decoder(decode_blob) if decode_blob is not None else None
    run, skipped, out = 0, [], []
    for t in range(len(toks)):
        if run < cap and lm.skip_conf() >= thr:
            if enc is not None:
                lm.encode_skip(enc, int(toks[t]))
                y = int(toks[t])
            else:
                y = lm.decode_skip(dec)
            f = lm.freqs
            assert f.min() >= 1 and f.sum() == 1 << 24
            skipped.append(t)
            run += 1
        else:
            if enc is not None:
                lm.encode(enc, logits[t], int(toks[t]))
                y = int(toks[t])
            else:
                y = lm.decode(dec, logits[t])
            run = 0
        out.append(y)
    return (enc.finish() if enc is not None else out), skipped


def test_skip_kernels_roundtrip_and_offline_cost():
    toks, logits = _synthetic()
    thr, cap = 0.95, 16
    blob, skipped = _code(DEFAULTS, toks, logits, thr, cap)
    assert len(skipped) > 150                           # the repeats are mostly skipped
    assert all(t >= 200 for t in skipped)               # nothing before the first repeat
    got, skipped2 = _code(DEFAULTS, toks, logits, thr, cap, decode_blob=blob)
    assert got == toks.tolist() and skipped2 == skipped
    f, mask = lane(DEFAULTS, logits.shape[1], len(toks)).costs(logits, toks, thr, cap)
    assert np.flatnonzero(mask).tolist() == skipped
    bits = 24 * len(f) - np.log2(f.astype(np.float64)).sum()
    assert abs(8 * len(blob) - bits) < 40
    # never more than cap consecutive skips
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, mask, 0])))[::2]
    assert runs.max() <= cap


def test_skip_params_validated():
    assert DEFAULTS.skip == 0 and "skip" not in DEFAULTS.params()      # off by default
    p = replace(DEFAULTS, **SKIP).params()
    assert p == {"mix_preset": 4, "skip": 62259, "skip_cap": 16}
    assert {C.PARAM_IDS["skip"], C.PARAM_IDS["skip_cap"]} == {32, 33}
    with pytest.raises(NacritError, match="needs the match model"):
        replace(DEFAULTS, skip=1000, skip_cap=4, match=0).validate()
    with pytest.raises(NacritError, match=r"skip_cap must be 1\.\.255"):
        replace(DEFAULTS, skip=1000, skip_cap=0).validate()
    with pytest.raises(NacritError, match=r"skip_cap must be 1\.\.255"):
        MixParams.from_params({"mix_preset": 1, "skip": 9, "skip_cap": 1 << 30}).validate()
    with pytest.raises(NacritError, match="skip must be"):
        replace(DEFAULTS, skip=65536, skip_cap=4).validate()


# ---------------------------------------------------------------- real model
@pytest.fixture
def repeat():
    return corpus("xargs.1", 700)


@pytest.fixture
def data(repeat):
    """A text with repeats (read here, so a missing corpus skips instead of failing import)."""
    return repeat + repeat + corpus("alice29.txt", 300)


class _Recorder:
    """Wraps Backend.feed to record every llama_decode call (lanes and group sizes)."""

    def __init__(self, monkeypatch):
        from nacrith.backend import Backend
        self.calls = []
        orig = Backend.feed

        def feed(backend, lanes, groups):
            self.calls.append((list(lanes), [list(g) for g in groups]))
            return orig(backend, lanes, groups)
        monkeypatch.setattr(Backend, "feed", feed)


@pytest.mark.parametrize("lanes", [1, 3])
def test_skip_roundtrip_fresh_process(tmp_path, monkeypatch, lanes):
    rec = _Recorder(monkeypatch)
    parts = [corpus("alice29.txt", 3000)[i * 600:(i + 1) * 600] for i in range(lanes)]
    data = b"".join(p + p for p in parts)           # every lane holds a repeat
    blob = nacrith.compress(data, threads=1, lanes=lanes, **LLAMA)
    layout, desc, segs, _ = F.scan_bytes(blob)
    assert layout == F.L_NEURAL
    assert (desc.params["skip"], desc.params["skip_cap"]) == (62259, 16)
    engine = api.get_engine(models.resolve(None), api.normalized(threads=1, lanes=lanes, **LLAMA),
                            api.normalized(**SKIP).mix_params())
    counts = [len(engine.tokenizer.tokenize(p + p)[0]) for p in parts]
    fed = [len(g) for _, groups in rec.calls for g in groups]
    assert sum(fed) <= sum(counts)                   # every token fed once at most (no re-eval)
    assert max(fed) > 1 and max(fed) <= 17           # catch-up batches, bounded by cap + 1
    assert len(rec.calls) < max(counts)              # steps saved
    # ... and a fresh process decodes the same bytes
    p = tmp_path / "a.nc"
    p.write_bytes(blob)
    r = fresh_python("import sys, hashlib, nacrith\n"
                     "print(hashlib.sha256(nacrith.decompress(open(sys.argv[1], 'rb').read()))"
                     ".hexdigest())", str(p))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == hashlib.sha256(data).hexdigest()


def test_decoder_replays_encoder_calls(monkeypatch, repeat, data):
    rec = _Recorder(monkeypatch)
    blob = nacrith.compress(repeat * 4 + data, threads=1, lanes=2, **LLAMA)
    enc_calls = list(rec.calls)
    rec.calls.clear()
    assert nacrith.decompress(blob, threads=1) == repeat * 4 + data
    assert rec.calls == enc_calls
    assert max(len(g) for _, groups in enc_calls for g in groups) > 1


def test_skip_costs_little_on_repeats(data):
    off = nacrith.compress(data, threads=1)
    on = nacrith.compress(data, threads=1, **SKIP)
    assert len(on) <= len(off) * 1.03 + 8
