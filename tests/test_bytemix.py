"""The two-model byte coder (bytemix.py) on tiny random models with overlapping vocabularies:
exact round trips on every kind of input, exact next-byte distributions, the same stream for 1
and 2 threads and in a fresh process compiled for another target CPU."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import GOLDEN, REPO
from nacrith import bytemix, cdf
from nacrith.errors import NacritError
from nacrith.portable.backend import PortableBackend
from nacrith.portable.tiny import write_tiny_gemma, write_tiny_llama

# pieces that overlap each other and the text below
WORDS = [" the", " t", "th", "he", "the", " a", "an", "and", " and", "in", "ing", " in", "e ",
         "\r\n", "  ", "<|endoftext|>", "ab", "abc", "\xe9", "ca", " ca", "cat", "hat"]
TEXTS = [
    b"",
    b"a",
    bytes(range(256)),
    b"the cat and the hat in the thing\r\nand then\r\n",
    b"\xff\xfe\x80 invalid \xc3( utf-8 \xed\xa0\x80",
    b"<|endoftext|>the<|endoftext|>",
    b"abcabcabab" * 8,
]
CTX = 48                        # small: the lanes slide inside the longer texts


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("bm")
    spm = [w.replace(" ", "\u2581") for w in WORDS]                # SPM: "\u2581" is a space
    return (str(write_tiny_llama(d / "l.gguf", seed=3, n_vocab=300, words=WORDS[::-1])),
            str(write_tiny_gemma(d / "g.gguf", seed=4, n_vocab=300, words=spm)))


def tracks(paths, threads=1, **kw):
    st = bytemix.Settings(**kw)
    return [bytemix.Track(PortableBackend(p, ctx=CTX, lanes=1, threads=threads, slide=CTX // 4,
                                          n_keep=1), st, lr)
            for p, lr in zip(paths, (st.bias_lr, st.bias_lr2))]


@pytest.mark.parametrize("cm, lr", [(1, (0.38, 0.1)), (1, (0.0, 0.0)), (0, (0.0, 0.0))])
def test_round_trip_every_kind_of_input(paths, cm, lr):
    """Bits context-mixed with the token bias heads (version 8), without (version 7), and the
    linear mixture (version 6)."""
    tr = tracks(paths, cm=cm, bias_lr=lr[0], bias_lr2=lr[1])
    for data in TEXTS:
        z = bytemix.encode(tr, data)
        assert bytemix.decode(tr, z, len(data)) == data
    assert sum(t.calls for t in tr) > 0


def test_bytes_that_are_no_token(paths, tmp_path):
    """A vocabulary of "t3" ... "t299" only (no byte tokens): bytes no token starts are
    skipped by that model (the other one and eps code them)."""
    p = str(write_tiny_gemma(tmp_path / "nobytes.gguf", n_vocab=300))
    tr = tracks((paths[0], p))
    data = b"t3t45 t299t\x00t1" + bytes(range(250, 256))
    z = bytemix.encode(tr, data)
    assert bytemix.decode(tr, z, len(data)) == data
    assert tr[1].dead >= 9 and tr[1].H[0].p == b""              # the last byte: skipped
    with pytest.raises(NacritError, match="vocabulary with text pieces"):
        bytemix.vocab([b"", b"x"], [1, 3])


def test_next_byte_distribution_is_exact(paths):
    """Each model's P sums to 1, and equals the brute-force sum over the beam's branches."""
    tr = tracks(paths)
    data = TEXTS[3]
    for t in tr:
        t.reset()
        for c in data:
            p = t.predict()
            assert abs(p.sum() - 1.0) < 1e-12 and p.min() > 0
            t.advance(c)
    freqs = np.empty(256, np.int64)
    bytemix._quantize_probs(np.full(256, 1 / 256), freqs)
    assert freqs.sum() == cdf.TOTAL and freqs.min() >= 1


def test_threads_and_beam_settings(paths):
    data = TEXTS[3] + TEXTS[6]
    one = bytemix.encode(tracks(paths, 1), data)
    assert bytemix.encode(tracks(paths, 2), data) == one
    narrow = tracks(paths, beam=1)
    z = bytemix.encode(narrow, data)
    assert z != one and bytemix.decode(narrow, z, len(data)) == data


def test_progress_counts_units_of_four_bytes(paths):
    tr, ticks = tracks(paths), []
    data = TEXTS[3]
    z = bytemix.encode(tr, data, ticks.append)
    assert ticks == [1] * (len(data) // 4)
    ticks.clear()
    assert bytemix.decode(tr, z, len(data), ticks.append) == data
    assert ticks == [1] * (len(data) // 4)


def test_dead_ends_recut(paths):
    """K = 1 keeps one branch: bytes that no kept branch reaches are re-cut, and decode."""
    tr = tracks(paths, beam=1, lag=0)
    data = b"abcab\xffthe\r\r\nin"
    z = bytemix.encode(tr, data)
    assert bytemix.decode(tr, z, len(data)) == data


CHILD_IR = """
from numba.core.registry import CPUDispatcher
from nacrith import bytecm, bytemix, cdf, coder
from test_portable import ir_violations
bad = {f"{m.__name__}.{n}": ir_violations(d.inspect_llvm(sig)) for m in (bytecm, bytemix, cdf, coder)
       for n, d in vars(m).items() if isinstance(d, CPUDispatcher) for sig in d.signatures}
print({k: v for k, v in bad.items() if v} or "ir ok", len(bad))
"""


def test_another_target_cpu_decodes(paths, tmp_path):
    """A fresh process compiled for the generic x86-64 target with 1 thread decodes the
    stream; its byte coder's, bit mixer's, CDF's and coder's kernels (compiled there, empty
    cache) hold no fma, contraction, fast-math flag or libm call."""
    data = TEXTS[3] + TEXTS[4]
    z = bytemix.encode(tracks(paths), data)
    (tmp_path / "z").write_bytes(z)
    code = (
        "import sys; sys.path.insert(0, 'tests'); from test_bytemix import tracks; "
        "from nacrith import bytemix; "
        f"print(bytemix.decode(tracks({list(paths)!r}), open(sys.argv[1], 'rb').read(), "
        f"{len(data)}).hex())\n" + CHILD_IR)
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "z")], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stderr
    out = r.stdout.split("\n")
    assert bytes.fromhex(out[0].strip()) == data
    assert out[1].startswith("ir ok ") and int(out[1].split()[-1]) >= 14, out[1]


# ---------------------------------------------------------------- the version-6 to -8 archives
BIAS = (380000, 380000)          # the v8 golden's bias_ppm, bias2_ppm
TWO = {"ctx": 256, "model2": 1, "ctx2": 256, "beam": 4, "lag": 2, "rel_ppm": 1000,
       "alpha_ppm": 200000, "eps_bits": 12, "tau_ppm": 1000}


@pytest.mark.parametrize("version, name, extra", [
    (6, "v6-bytemix-gemma3", {}),                       # linear mixture (read, no longer written)
    (7, "v7-bytecm-gemma3", {"cm_preset": 1}),          # bits context-mixed
    (8, "v8-bias-gemma3", {"cm_preset": 2, "bias_ppm": BIAS[0], "bias2_ppm": BIAS[1]}),
])
def test_golden_fields(version, name, extra):
    """The exact header and descriptor of a two-model archive (formats/FORMAT.md)."""
    from nacrith import frames as F
    blob = (GOLDEN / f"{name}.nc").read_bytes()
    assert blob[:4] == b"NAC" + bytes([F.L_NEURAL << 4 | version])
    layout, d, segs, _ = F.scan_bytes(blob)
    assert (layout, d.version, d.model_id, d.engine, d.engine_check) == (F.L_NEURAL, version,
                                                                         2, F.E_PORTABLE, 1)
    assert d.params == {**TWO, **extra}
    assert bytemix.Settings.from_params(d.params) == bytemix.Settings(
        cm=version - 6, **({} if version == 8 else {"bias_lr": 0.0, "bias_lr2": 0.0}))


def test_older_versions_refuse_the_two_model_keys():
    from nacrith import frames as F
    from nacrith.container import Reader
    d = F.Descriptor(2, F.E_PORTABLE, 1, {"model2": 1, **bytemix.Settings().params()})
    for version, key in ((4, "model2"), (5, "model2"), (6, "cm_preset"), (7, "bias_ppm")):
        with pytest.raises(NacritError, match=f"parameter {key} not allowed"):
            F.read_descriptor(Reader(d.pack(), "model frame"), version)
    assert F.read_descriptor(Reader(d.pack(), "model frame"), 8).params == d.params


@pytest.mark.parametrize("params, message", [
    ({"beam": 0}, "byte coder settings out of range"),
    ({"eps_bits": 0}, "byte coder settings out of range"),
    ({"rel_ppm": 10 ** 6 + 1}, "byte coder settings out of range"),
    ({"tau_ppm": 10 ** 6 + 1}, "byte coder settings out of range"),
    ({"model2": 2}, "two-model coder: engine, lanes or models"),
    ({"lanes": 2}, "two-model coder: engine, lanes or models"),
    ({"ctx2": 300}, "ctx2 300"),
    ({"model2": 9}, "unknown model id 9"),
    ({"model2": None}, "without all its settings"),
    ({"cm_preset": None}, "without all its settings"),
    ({"cm_preset": 0}, "byte coder settings out of range"),
    ({"cm_preset": 1}, "byte coder settings out of range"),     # version 7's, not version 8's
    ({"cm_preset": 3}, "byte coder settings out of range"),
    ({"bias_ppm": None}, "without all its settings"),
    ({"bias2_ppm": None}, "without all its settings"),
    ({"bias2_ppm": 10 ** 6 + 1}, "byte coder settings out of range"),
    ({"bias_ppm": 10 ** 6 + 1}, "byte coder settings out of range"),
])
def test_hostile_descriptors_are_refused_before_a_model_loads(params, message):
    from nacrith import api, frames as F
    p = {"model2": 1, "ctx2": 256, **bytemix.Settings().params()}
    p.update(params)
    p = {k: v for k, v in p.items() if v is not None}
    with pytest.raises(NacritError, match=message):
        api.check_descriptor(F.Descriptor(2, F.E_PORTABLE, 1, p, version=8))
    for version in (6, 7):          # cm_preset in a v6 one, bias_ppm in a v7 one
        with pytest.raises(NacritError, match="without all its settings"):
            api.check_descriptor(F.Descriptor(2, F.E_PORTABLE, 1, {"model2": 1, "ctx2": 256,
                                              **bytemix.Settings().params()}, version=version))


def test_each_version_codes_with_its_bit_mixer_preset():
    """Version 7 archives code with bit mixer preset 1, version 8 with preset 2: any other is
    refused before a model loads."""
    from nacrith import api, frames as F
    p7 = {"model2": 1, "ctx2": 256, **bytemix.Settings(cm=1, bias_lr=0, bias_lr2=0).params()}
    assert api.check_descriptor(F.Descriptor(2, F.E_PORTABLE, 1, p7, version=7)) is not None
    for version, preset in ((7, 2), (7, 0), (8, 1)):
        p = {**p7, "cm_preset": preset, **({"bias_ppm": 0, "bias2_ppm": 0} if version == 8 else {})}
        with pytest.raises(NacritError, match="byte coder settings out of range"):
            api.check_descriptor(F.Descriptor(2, F.E_PORTABLE, 1, p, version=version))
    assert F.CM_PRESET_OF == {7: 1, 8: 2} and bytemix.Settings().cm == 2


@pytest.mark.parametrize("kw, message", [
    ({"model2": "nope"}, "model2 must be a model preset other than the first"),
    ({"model2": "smollm2"}, "model2 must be a model preset other than the first"),
    ({"model2": "smollm2", "model": "gemma3", "lanes": 2}, "portable engine .* with 1 lane"),
    ({"model2": "smollm2", "model": "gemma3", "backend": "llama"}, "portable engine"),
    ({"model2": "smollm2", "model": "gemma3", "ctx2": 1000}, "ctx2 must be a multiple of 256"),
])
def test_bad_two_model_options(kw, message):
    from nacrith import api
    from nacrith.errors import BadOption
    with pytest.raises(BadOption, match=message):
        api.normalized(**kw)


def test_bias_step_is_the_spec():
    """One anchored token's bias-head step (FORMAT.md "Token bias heads"), element by element."""
    order = np.array([2, 0, 3, 1], np.int64)           # sorted index -> token id
    fs = np.array([1 << 23, 1 << 22, (1 << 22) - 5, 5], np.int64)
    b = np.array([0.5, -16.0, 0.0, 15.9])
    r = np.full(4, bytemix.BIAS_R0)
    r[3] = 0.25
    want_b, want_r, lr = b.copy(), r.copy(), 0.38
    for s in range(4):
        t, q = order[s], fs[s] * 2.0 ** -24
        g = q - 1.0 if s == 2 else q
        want_b[t] = min(16.0, max(-16.0, want_b[t] - lr * want_r[t] * g))
    e = 1.0 - fs[2] * 2.0 ** -24
    want_r[3] = 1.0 / np.sqrt(1.0 / (0.25 * 0.25) + e * e)
    bytemix._bias_step(b, r, fs, order, 2, lr)
    assert b.tolist() == want_b.tolist() and r.tolist() == want_r.tolist()
    assert b[1] == -16.0 and b[3] > 15.9 and r[3] < 0.25


def test_bias_heads_learn_a_repetitive_text(paths):
    """With the bias heads the repeated text codes smaller, and both sides agree."""
    data = b"the cat and the hat " * 12
    sizes = []
    for lr in (0.0, 0.38):
        tr = tracks(paths, bias_lr=lr, bias_lr2=lr)
        z = bytemix.encode(tr, data)
        assert bytemix.decode(tr, z, len(data)) == data
        sizes.append(len(z))
    assert sizes[1] < sizes[0], sizes
