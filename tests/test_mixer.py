"""Ensemble mixer: exact round trips with every component on and off, non-default
hyperparameters, decoded in a fresh process; format keys; synthetic-logit kernel checks."""
import hashlib
from dataclasses import replace

import numpy as np
import pytest

import nacrith
from nacrith import container as C, frames as F
from nacrith.coder import Decoder, Encoder
from nacrith.errors import NacritError
from nacrith import mixer
from nacrith.mixer import DEFAULTS, PRESETS, LaneModel, MixParams

from helpers import corpus, fresh_python

OFF = dict(ngram=0, match=0, bias_lr=0, temp_lr=0, boost_lr=0)
# preset-only components (no model-frame key) of presets 2 and 3, all off = preset 1
NEW_OFF = dict(ngram_slots=0, slot_lr=0, mix2=0, apm_lr=0, apm_w=0, bias_g0=0, col_lr=0)
NEW_ODD = dict(ngram_slots=3, slot_lr=400000, mix2=1, apm_lr=60000, apm_w=20000, bias_g0=200000,
               col_lr=500000)


# ---------------------------------------------------------------- synthetic logits (no LLM)
def lane(mp, V, n):
    """A lane model over a synthetic vocabulary: token i is 1..5 letters, every 17th ends a line."""
    pieces = [bytes([97 + i % 26]) * (1 + i % 5) + (b"\r\n" if i % 17 == 0 else b"")
              for i in range(V)]
    return LaneModel(mp, V, n, mixer.column_table(pieces))


def _synthetic(n_tok=600, V=512, seed=1):
    """A token stream with repeats and logits that half-know it (float32, like llama.cpp)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, V, 150)
    toks = np.concatenate([base, rng.integers(0, V, 150), base, base[:150]])[:n_tok]
    logits = rng.normal(0, 2, (len(toks), V)).astype(np.float32)
    logits[np.arange(len(toks)), toks] += rng.uniform(0, 4, len(toks)).astype(np.float32)
    logits[5, :] = -np.inf                      # degenerate rows stay codable
    logits[6, 3] = np.nan
    return toks.astype(np.int64), logits


CONFIGS = {
    "llm_only_kernel": MixParams(),
    "defaults": DEFAULTS,
    "ngram_only": replace(DEFAULTS, match=0, bias_lr=0, temp_lr=0),
    "match_only": replace(DEFAULTS, ngram=0, bias_lr=0, temp_lr=0),
    "bias_sgd": replace(DEFAULTS, ngram=0, match=0, bias_ada=0, temp_lr=0),
    "boost_nondefault": replace(DEFAULTS, ngram=6, ngram_bits=10, ngram_limit=7, ngram_esc=9000,
                                match=3, match_bits=8, match_limit=15, bias_lr=900000,
                                temp_lr=5000, mix_lr=1000000, mix_floor=2000, boost_lr=200000),
    "preset1": PRESETS[1],
    "slots_sbias_only": replace(PRESETS[1], ngram_slots=8, slot_lr=100000),
    "mix2_only": replace(PRESETS[1], mix2=1),
    "apm_only": replace(PRESETS[1], apm_lr=10000, apm_w=65536),
    "col_only": replace(MixParams(), col_lr=131072),
    "preset2": PRESETS[2],
    "preset5": PRESETS[5],
    "apm_no_mixer_inputs": replace(DEFAULTS, ngram=0, match=0),
    "new_nondefault": replace(DEFAULTS, ngram=5, ngram_bits=9, ngram_limit=9, match=2,
                              match_bits=7, **NEW_ODD),
    "guard_off": PRESETS[3],
    "guard_small": replace(DEFAULTS, guard=700),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kernel_roundtrip_synthetic(name):
    mp = CONFIGS[name]
    toks, logits = _synthetic()
    V = logits.shape[1]
    enc, lm = Encoder(), lane(mp, V, len(toks))
    for t, y in enumerate(toks):
        lm.encode(enc, logits[t], int(y))
        f = lm.freqs
        assert f.min() >= 1 and f.sum() == 1 << 24
    blob = enc.finish()
    dec, lm2 = Decoder(blob), lane(mp, V, len(toks))
    got = [lm2.decode(dec, logits[t]) for t in range(len(toks))]
    assert got == toks.tolist()
    # the offline cost kernel sees the same probabilities as the coder
    f = lane(mp, V, len(toks)).costs(logits, toks)
    bits = 24 * len(f) - np.log2(f.astype(np.float64)).sum()
    assert abs(8 * len(blob) - bits) < 40


def test_guard_is_preset3_when_off_and_bounds_the_loss_to_the_bare_llm():
    toks, logits = _synthetic()
    V = logits.shape[1]

    def bits(mp):
        f = lane(mp, V, len(toks)).costs(logits, toks)
        return float(24 * len(f) - np.log2(f.astype(np.float64)).sum())
    assert np.array_equal(lane(replace(DEFAULTS, guard=0), V, len(toks)).costs(logits, toks),
                          lane(PRESETS[3], V, len(toks)).costs(logits, toks))
    # the coded distribution is w P + (1 - w) R (P: the ensemble without the guard, R: the bare
    # LLM, both as the coder sees them), w the Bayes / fixed-share weight of the ensemble
    from nacrith.mixer.state import S_GW
    g, e, b = (lane(mp, V, len(toks)) for mp in (DEFAULTS, PRESETS[3], MixParams()))
    a0 = DEFAULTS.guard / 65536
    w = 0.5
    encs = [Encoder() for _ in range(3)]
    for t, y in enumerate(toks[:300]):
        # (from the 24-bit frequencies here, the kernel's float probabilities there)
        assert g.S.lane.fst[S_GW] == pytest.approx(w, rel=2e-2)
        w = float(g.S.lane.fst[S_GW])
        for lm, enc in zip((g, e, b), encs):
            lm.encode(enc, logits[t], int(y))
        want = w * e.freqs + (1 - w) * b.freqs
        diff = np.abs(g.freqs - want)
        # floor rounding moves each entry by < 2; the three rounding remainders (< V each) sit
        # on one token per distribution
        assert (diff > 2).sum() <= 3 and diff.max() < V
        pe, pl = e.freqs[y] / 2.0 ** 24, b.freqs[y] / 2.0 ** 24
        w = w * pe / (w * pe + (1 - w) * pl)
        a = a0 / (1 + t * a0)                   # = 1 / (t + 2) for a0 = 1/2
        w = (1 - a) * w + a / 2
    # over the stream the guard costs at most the fixed-share bound more than the better of the
    # two (1 bit of prior, -log2(1 - a_t/2) at token t, 24-bit rounding)
    best = min(bits(MixParams()), bits(PRESETS[3]))
    share = -np.log2(1 - 0.5 / (np.arange(len(toks)) + 2)).sum()
    assert bits(DEFAULTS) <= best + 1 + share + 0.01 * len(toks)


def test_new_components_change_the_coding_synthetic():
    # each preset-2/3 component is live (changes the frequencies) and preset 2 without them is
    # preset 1 exactly
    toks, logits = _synthetic()
    V = logits.shape[1]

    def freqs(mp):
        return lane(mp, V, len(toks)).costs(logits, toks)
    base = freqs(PRESETS[1])
    keyed = {k: getattr(PRESETS[1], k) for k in MixParams.KEYS}
    assert np.array_equal(freqs(replace(PRESETS[2], **NEW_OFF, **keyed)), base)
    # preset 3 without the column bias is preset 2 exactly
    assert np.array_equal(freqs(replace(PRESETS[3], col_lr=0)), freqs(PRESETS[2]))
    for k in ("ngram_slots", "slot_lr", "mix2", "apm_lr", "bias_g0", "col_lr"):
        kw = {k: getattr(PRESETS[3], k) if k != "ngram_slots" else 2}   # (few successors here)
        if k == "apm_lr":
            kw["apm_w"] = PRESETS[2].apm_w
        if k == "slot_lr":
            kw["ngram_slots"] = 8
        assert not np.array_equal(freqs(replace(PRESETS[1], **kw)), base), k


def test_kernel_decodes_in_fresh_process_synthetic(tmp_path):
    # preset-only values that no archive can carry, coded here and decoded by a new interpreter
    mp = CONFIGS["new_nondefault"]
    toks, logits = _synthetic(seed=3)
    enc, lm = Encoder(), lane(mp, logits.shape[1], len(toks))
    for t, y in enumerate(toks):
        lm.encode(enc, logits[t], int(y))
    (tmp_path / "s.bin").write_bytes(enc.finish())
    code = ("import sys; sys.path.insert(0, 'tests')\n"
            "from test_mixer import _synthetic, CONFIGS\n"
            "from nacrith.coder import Decoder\n"
            "from test_mixer import lane\n"
            "toks, logits = _synthetic(seed=3)\n"
            "dec = Decoder(open(sys.argv[1], 'rb').read())\n"
            "lm = lane(CONFIGS['new_nondefault'], logits.shape[1], len(toks))\n"
            "got = [lm.decode(dec, logits[t]) for t in range(len(toks))]\n"
            "print(int(got == toks.tolist()))\n")
    r = fresh_python(code, str(tmp_path / "s.bin"))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["1"]


def test_match_model_learns_repeats_synthetic():
    toks, logits = _synthetic()
    V = logits.shape[1]
    def bits(mp):
        f = lane(mp, V, len(toks)).costs(logits, toks)
        c = 24 - np.log2(f.astype(np.float64))
        return c[450:].sum()                    # the repeated part
    assert bits(replace(DEFAULTS, **dict(OFF, match=6))) < 0.5 * bits(MixParams())


def test_preset5_sums_are_exact_in_any_order():
    """Preset 5 rounds the terms of every vocabulary-wide sum to a fixed grid, so the sum is
    exact: the 8-partial kernel sum, any permutation, a split into chunks and numpy's pairwise sum
    all give math.fsum's bits. Without the grid (preset 4's terms) the order changes the bits."""
    import math
    from nacrith.mixer.ensemble import EL_GRID, EL_MAX, P_GRID, _exp_rows, _sum8, _sum8_pl
    assert PRESETS[5] == replace(PRESETS[4], isum=1) and PRESETS[4].isum == 0
    rng = np.random.default_rng(3)
    for V in (49152, 262144):
        x = rng.normal(0, 3, V)
        x[7:9] = (-800.0, -60.0)                       # exp underflow and a tiny term
        x[9] = x.max() - 0.5
        raw, p = np.empty(V), np.empty(V)
        _exp_rows(x, x.max(), raw, 0, V, 1, 0)
        _exp_rows(x, x.max(), p, 0, V, 1, 1)
        lg = rng.normal(0, 8, V).astype(np.float32)
        lg[9] = 3e4                                    # clamped: |p l| <= EL_MAX
        assert np.abs(p - raw).max() <= 0.5 / P_GRID and p.max() == 1.0
        assert raw[7] == 0.0 and raw[8] > 0.0 and p[8] == 0.0
        assert np.all(p * P_GRID == np.round(p * P_GRID))
        perm = rng.permutation(V)
        exact = math.fsum(p)
        sums = {_sum8(p, V), _sum8(np.ascontiguousarray(p[perm]), V), float(np.sum(p[::-1])),
                sum(_sum8(c.copy(), len(c)) for c in np.array_split(p[perm], 7))}
        assert sums == {exact}
        t = np.where(p > 0, p * lg.astype(np.float64), 0.0).clip(-EL_MAX, EL_MAX)
        t = np.round(t * EL_GRID) / EL_GRID
        el = {_sum8_pl(p, lg, V, 1), _sum8_pl(np.ascontiguousarray(p[perm]),
                                               np.ascontiguousarray(lg[perm]), V, 1)}
        assert el == {math.fsum(t)}
        # the check can fail: preset 4's terms give other bits in another order
        assert len({_sum8(raw, V), _sum8(np.ascontiguousarray(raw[perm]), V),
                    math.fsum(raw)}) > 1
        assert _sum8_pl(raw, lg, V, 0) != _sum8_pl(np.ascontiguousarray(raw[perm]),
                                                    np.ascontiguousarray(lg[perm]), V, 0)
    from nacrith.mixer.state import new_state
    with pytest.raises(NacritError, match="preset 5 sums at most 2097152"):
        new_state(PRESETS[5], (1 << 21) + 1, 4)


def test_params_roundtrip_and_absent_keys_mean_off():
    p = CONFIGS["boost_nondefault"].params()
    assert MixParams.from_params(p) == CONFIGS["boost_nondefault"]
    assert MixParams.from_params({"ctx": 2048}) == MixParams()
    assert not MixParams().active and MixParams().params() == {}
    assert set(p) <= set(C.PARAM_IDS)
    with pytest.raises(NacritError):
        replace(DEFAULTS, ngram=99).validate()
    with pytest.raises(NacritError):
        replace(DEFAULTS, mix_floor=30000).validate()
    # the defaults cost one key (mix_preset = 4); a change costs that key only; 0 turns off
    assert DEFAULTS == PRESETS[4] and DEFAULTS.guard == 32768
    assert DEFAULTS.params() == {"mix_preset": 4}
    assert replace(DEFAULTS, match=0).params() == {"mix_preset": 4, "match": 0}
    assert MixParams.from_params({"mix_preset": 4, "match": 0}) == replace(DEFAULTS, match=0)
    # preset 3 (version-4 archives' default) keeps its meaning: no guard
    assert MixParams.from_params({"mix_preset": 3}) == replace(DEFAULTS, guard=0) == PRESETS[3]
    assert replace(DEFAULTS, guard=0).params() == {"mix_preset": 4, "guard": 0}
    assert replace(DEFAULTS, col_lr=0).params() == {"mix_preset": 2, "guard": 32768}
    assert MixParams.from_params({"mix_preset": 2}) == PRESETS[2] and PRESETS[2].col_lr == 0
    with pytest.raises(NacritError, match="unknown mixer preset 9"):
        MixParams.from_params({"mix_preset": 9})
    # preset 5 = preset 4 with exact sums; settings with isum are written as preset 5
    assert PRESETS[5].params() == {"mix_preset": 5}
    assert replace(PRESETS[5], guard=0).params() == {"mix_preset": 5, "guard": 0}
    # preset 1 (version-2 archives before preset 2) keeps its meaning: the preset-only fields
    # are off, and settings with them off are written as preset 1
    p1 = MixParams.from_params({"mix_preset": 1})
    assert p1 == PRESETS[1] and all(getattr(p1, k) == 0 for k in NEW_OFF)
    assert replace(DEFAULTS, **NEW_OFF).params() == dict(
        {"mix_preset": 1}, **{k: getattr(DEFAULTS, k) for k in MixParams.KEYS
                              if getattr(DEFAULTS, k) != getattr(PRESETS[1], k)})
    assert set(replace(DEFAULTS, **NEW_OFF).params()) == {"mix_preset", "bias_lr", "boost_lr",
                                                           "guard"}
    assert PRESETS[1].params() == {"mix_preset": 1}
    # preset-only values of no preset cannot be written
    with pytest.raises(ValueError, match="match no preset"):
        CONFIGS["new_nondefault"].params()
    for bad in (dict(ngram_slots=17), dict(apm_w=70000), dict(apm_lr=1 << 21),
                dict(slot_lr=-1), dict(bias_g0=1 << 25), dict(col_lr=1 << 21),
                dict(guard=-1), dict(guard=32769)):
        with pytest.raises(NacritError):
            replace(DEFAULTS, **bad).validate()


# ---------------------------------------------------------------- real model, fresh process
ARCHIVES = {
    "llm_only": dict(mixer=False),
    "full_default": dict(),
    "preset1": dict(),              # encoded with mixer.DEFAULTS = PRESETS[1] (fixture)
    "ngram": dict(OFF, ngram=4),
    "match": dict(OFF, match=6),
    "bias": dict(OFF, bias_lr=300000, bias_ada=1),
    "bias_temp_sgd": dict(OFF, bias_lr=100000, bias_ada=0, temp_lr=2000),
    "nondefault": dict(ngram=3, ngram_bits=9, ngram_limit=5, ngram_esc=20000, match=3,
                       match_bits=7, match_limit=31, bias_lr=700000, bias_ada=1, temp_lr=4000,
                       mix_lr=900000, mix_floor=1000, boost_lr=300000),
    "guard_off": dict(guard=0),
    "guard_nondefault": dict(guard=30000),
    "isum": dict(mix_preset=5),
    "isum_guard": dict(mix_preset=5, guard=30000),
}


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """Every configuration's archive of corpus slices (read here: a missing corpus skips)."""
    TEXT = corpus("alice29.txt", 800)
    REPEAT = corpus("xargs.1", 600)
    d = tmp_path_factory.mktemp("mix")
    out = {}
    for name, kw in ARCHIVES.items():
        data = TEXT if name != "nondefault" else REPEAT + REPEAT[:300]
        if name == "preset1":
            old, mixer.DEFAULTS = mixer.DEFAULTS, PRESETS[1]
            try:
                blob = nacrith.compress(data, threads=1, **kw)
            finally:
                mixer.DEFAULTS = old
        else:
            blob = nacrith.compress(data, threads=1, **kw)
        (d / f"{name}.nc").write_bytes(blob)
        out[name] = (data, blob, d / f"{name}.nc")
    # two lanes, every component on
    data = TEXT + REPEAT
    blob = nacrith.compress(data, threads=1, lanes=2)
    (d / "lanes2.nc").write_bytes(blob)
    out["lanes2"] = (data, blob, d / "lanes2.nc")
    return out


def _desc(blob):
    return F.scan_bytes(blob)[1]


def test_archive_fields(archives):
    # version 5: the LLM alone is mix_preset 0; the default ensemble (preset 4) writes nothing
    assert _desc(archives["llm_only"][1]).params == {"mix_preset": 0}
    assert _desc(archives["full_default"][1]).params == {}
    assert MixParams.from_params(_desc(archives["full_default"][1]).full_params()) == DEFAULTS
    p = _desc(archives["preset1"][1]).params
    assert p == {"mix_preset": 1}
    assert MixParams.from_params(_desc(archives["preset1"][1]).full_params()) == PRESETS[1]
    # preset 2 codes differently from preset 1 (same text)
    assert archives["preset1"][1] != archives["full_default"][1]
    d = _desc(archives["nondefault"][1])
    assert MixParams.from_params(d.full_params()) == replace(DEFAULTS, **ARCHIVES["nondefault"])
    d = _desc(archives["match"][1])
    assert d.params["ngram"] == 0 and "match" not in d.params
    assert MixParams.from_params(d.full_params()) == replace(DEFAULTS, **ARCHIVES["match"])
    # the guard: one key when it differs from preset 4's, and it changes the coding
    assert _desc(archives["guard_off"][1]).params == {"guard": 0}
    assert _desc(archives["guard_nondefault"][1]).params == {"guard": 30000}
    assert len({archives[n][1][-40:] for n in ("full_default", "guard_off", "guard_nondefault")}) == 3
    # preset 5 is a version-9 archive whose absent mix_preset means 5 (no parameter bytes)
    for name, params in (("isum", {}), ("isum_guard", {"guard": 30000})):
        blob = archives[name][1]
        d = _desc(blob)
        assert (blob[3] & 15, d.version, d.params) == (9, 9, params)
        assert MixParams.from_params(d.full_params()) == replace(PRESETS[5], **params)
    assert archives["full_default"][1][3] & 15 == 5


def test_decode_all_in_fresh_process(archives):
    names = list(archives)
    code = ("import sys, hashlib, nacrith\n"
            "for p in sys.argv[1:]:\n"
            "    print(hashlib.sha256(nacrith.decompress(open(p, 'rb').read(), threads=1))"
            ".hexdigest())\n")
    r = fresh_python(code, *[str(archives[n][2]) for n in names])
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == [hashlib.sha256(archives[n][0]).hexdigest() for n in names]


def test_ensemble_not_worse_than_llm(archives):
    # on 800 bytes the online models have little to learn; they must not cost anything either
    # (the larger-text gains are measured by scripts/ablation.py)
    full = sum(s.payload_len for s in F.scan_bytes(archives["full_default"][1])[2])
    llm = sum(s.payload_len for s in F.scan_bytes(archives["llm_only"][1])[2])
    assert full <= llm * 1.01 + 2
    assert len(archives["full_default"][1]) <= len(archives["llm_only"][1]) * 1.01 + 6


def test_deterministic_encoding(archives):
    data, blob, _ = archives["full_default"]
    assert nacrith.compress(data, threads=1) == blob


def test_column_table_and_bucket():
    t = mixer.column_table([b"", b" the", b".\r\n", b"\n\nab", b"x" * 300, b"a\rb\nc"])
    assert t.tolist() == [[0, 4, 1, 0, mixer.COL_NB, 1],
                          [0, 0, 1, 1, 0, 1],
                          [0, 0, 0, 2, 0, 1]]
    # bucket: where the token's bytes up to its first line break end, + COL_NB if it breaks
    b = mixer._col_bucket
    assert b(t, 1, 10) == 14 and b(t, 2, 60) == mixer.COL_NB + 61 and b(t, 3, 5) == mixer.COL_NB + 5
    assert b(t, 4, 0) == mixer.COL_NB - 1 and b(t, 2, 500) == 2 * mixer.COL_NB - 1


def test_column_bias_learns_a_line_width_synthetic():
    # lines of exactly 20 one-byte tokens, then a line break token: the LLM logits know nothing
    # (all zero), so only the column bias can learn where lines end
    V, width, lines = 64, 20, 60
    pieces = [bytes([65 + i % 26]) for i in range(V - 1)] + [b"\n"]
    rng = np.random.default_rng(5)
    toks = np.concatenate([np.append(rng.integers(0, V - 1, width), V - 1)
                           for _ in range(lines)]).astype(np.int64)
    logits = np.zeros((len(toks), V), dtype=np.float32)
    mp = replace(MixParams(), col_lr=mixer.LR_SCALE)
    f = LaneModel(mp, V, len(toks), mixer.column_table(pieces)).costs(logits, toks)
    bits = 24 - np.log2(f.astype(np.float64))
    nl = toks == V - 1
    assert bits[nl][0] > 5.99                    # uniform at first (log2 64 = 6 bits)
    assert bits[nl][-10:].mean() < 0.1           # the line break became nearly free
    assert bits[~nl][-200:].mean() < np.log2(V - 1) + 0.05   # others lose no more than that
    with pytest.raises(ValueError, match="column table"):
        LaneModel(mp, V, 10)


def test_lane_refuses_more_tokens_than_it_was_made_for():
    toks, logits = _synthetic()
    enc, lm = Encoder(), lane(DEFAULTS, logits.shape[1], 5)
    for t in range(5):
        lm.encode(enc, logits[t], int(toks[t]))
    with pytest.raises(ValueError, match="more tokens coded than the lane was created for"):
        lm.encode(enc, logits[5], int(toks[5]))


def test_every_cached_mixer_kernel_is_inside_the_source_stamp():
    # numba keys its disk cache on the defining file only: a cached helper would keep an old
    # copy of cdf/coder or of another mixer module compiled in. Only the stamped closures of
    # mixer/kernels.py may be cached; the helpers are compiled into them.
    import importlib
    import pkgutil
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher
    from nacrith.mixer import kernels
    cached, helpers = [], []
    for m in pkgutil.iter_modules(mixer.__path__):
        mod = importlib.import_module(f"nacrith.mixer.{m.name}")
        for name, f in vars(mod).items():
            if isinstance(f, CPUDispatcher) and f.__module__ == mod.__name__:
                (helpers if isinstance(f._cache, NullCache) else cached).append((m.name, name))
                if not isinstance(f._cache, NullCache):
                    cells = [c.cell_contents for c in f.py_func.__closure__ or ()]
                    assert kernels.STAMP in cells, name
    assert {n for _, n in cached} == {"enc_kernel", "dec_kernel", "cost_kernel", "enc_skip_kernel",
                                      "dec_skip_kernel", "cost_skip_kernel", "skip_conf_kernel",
                                      "init_kernel"}
    assert {m for m, _ in cached} == {"kernels"}
    assert {"_predict", "_update", "_set_weights", "_exp_signed", "_apm_init", "_skip_predict",
            "_lookup_sparse", "_learn_sparse"} <= {n for _, n in helpers}


def test_state_fields_are_named():
    # the kernels take named tuples: two same-typed arrays can no longer be swapped by position
    lm = lane(DEFAULTS, 64, 10)
    assert type(lm.S).__name__ == "State" and lm.S.cfg.K == 1 + DEFAULTS.ngram + 1
    assert lm.S.mix.z.shape[1] == lm.S.cfg.K and lm.S.ng.bkt.shape == (mixer.MAX_ORDER,)
