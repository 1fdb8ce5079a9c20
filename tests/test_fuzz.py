"""Decoder fuzzing in CI (harness: scripts/fuzz.py).

Every damaged archive must decode to the exact original bytes (only possible when every checksum
verified) or fail with a NacritError carrying a one-line message: never another exception, a hang
(each case has a time limit), or wrong bytes. No model is loaded here: `api.get_engine` and
`models.find_by_sha` are replaced by a guard, and reaching the guard is only allowed for an
archive whose whole structure verifies (`container.scan`), which proves that damage to a neural
archive's headers or payload is reported before a model is loaded. The same cases go through the
command line (`python -m nacrith -d/-t/-l`): exit 1, one stderr line per bad file, no traceback,
no output or temp file left."""
import hashlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nacrith
from nacrith import api

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
ENV.pop("NACRITH_DEBUG", None)


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("nacrith_fuzz", REPO / "scripts" / "fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["nacrith_fuzz"] = mod
    spec.loader.exec_module(mod)
    return mod


fuzz = _load_fuzz()

@pytest.fixture(scope="module")
def seeds():
    import random
    return fuzz.load_seeds(random.Random(11))


def _summary(rep) -> str:
    return f"{rep.total} cases: {rep.counts}; failures: {rep.failures[:10]}"


def test_fuzz_damaged_archives(seeds):
    """Truncation sweep (every header/frame/field boundary, seekable and streaming) plus 3000
    random mutations: bit flips, byte changes, insertions, deletions, truncations, splices, frame
    recombination, duplicated/removed/swapped frames, appended/prepended garbage."""
    rep = fuzz.run(cases=3000, seed=20240601, seeds=seeds, time_limit=5.0)
    print(_summary(rep))
    assert rep.total >= 2000
    assert rep.failures == [], _summary(rep)
    assert rep.counts["ok"] > 0 and rep.counts["error"] > 1000       # the harness does bite


def test_fuzz_crafted_values_with_valid_checksums(seeds):
    """Hostile values behind correct checksums (huge lengths, zstd frame headers that lie about
    their content size, wrong methods, lane tables, model parameters, version/flags): still
    NacritError or exact bytes."""
    rep = fuzz.run(cases=3000, seed=77, crafted=True, sweep=False, seeds=seeds, time_limit=5.0)
    print(_summary(rep))
    assert rep.failures == [], _summary(rep)


# ---------------------------------------------------------------- neural archives, no model
NEURAL_GOLDEN = [s for s in fuzz.load_seeds(__import__("random").Random(1)) if s.neural]


@pytest.mark.parametrize("seed", NEURAL_GOLDEN, ids=[s.name for s in NEURAL_GOLDEN])
def test_damage_to_neural_archive_is_caught_before_model_load(seed):
    """Every single-bit flip and every truncation of a neural golden archive fails with
    NacritError while model loading is forbidden (get_engine / find_by_sha raise). From a seekable
    source the whole archive is checked first; from a pipe (no look-ahead) every position up to
    the end of the first neural segment's payload (file header, model frame, segment header,
    payload) is checked before the model: damage after it can only be seen once reached."""
    blob = seed.blob
    first_neural = next(s for s in seed.sections if s.kind == "segment")
    n = 0
    for streaming in (False, True):
        limit = len(blob) if not streaming else first_neural.end
        for pos in range(limit):
            for bit in (pos % 8, 7 - pos % 8):
                b = bytearray(blob)
                b[pos] ^= 1 << bit
                out = fuzz.decode_case(bytes(b), {seed.sha}, streaming, guard=True, time_limit=5)
                assert out.kind == "error", (pos, bit, streaming, out)
                n += 1
        for cut in range(limit):
            out = fuzz.decode_case(blob[:cut], {seed.sha}, streaming, guard=True, time_limit=5)
            assert out.kind == "error", (cut, streaming, out)
            n += 1
    # the intact archive does ask for the model (the guard works)
    assert fuzz.decode_case(blob, {seed.sha}, False, guard=True, time_limit=5).kind == "model"
    assert n >= 3 * len(blob)        # (seekable) every bit position twice and every cut


def test_guard_blocks_model_loading():
    """The guard itself: an intact neural archive reaches it, in both source modes."""
    seed = NEURAL_GOLDEN[0]
    for streaming in (False, True):
        with fuzz.ModelGuard(True):
            with pytest.raises(fuzz.ModelNeeded):
                src = fuzz.NonSeekable(seed.blob) if streaming else io.BytesIO(seed.blob)
                nacrith.decompress_stream(src, io.BytesIO())


# ---------------------------------------------------------------- through the command line
def _cli(*args, cwd, input=b"", timeout=300):
    return subprocess.run([sys.executable, "-m", "nacrith", *map(str, args)], cwd=cwd, env=ENV,
                          input=input, capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def cli_cases(seeds):
    """~300 fuzz cases with their library outcome (seekable source), none needing a model."""
    rep = fuzz.run(cases=700, seed=4242, seeds=seeds, sweep=False, keep_cases=True,
                   time_limit=5.0)
    picked, seen = [], set()
    for blob, allowed, _, what in rep.cases:
        key = hashlib.sha256(blob).digest()
        if key in seen:
            continue
        seen.add(key)
        out = fuzz.decode_case(blob, allowed, False, guard=True, time_limit=5)
        if out.kind in ("ok", "error"):
            picked.append((blob, allowed, out, what))
    assert len(picked) >= 300
    return picked[:300]


def _lines_by_file(stderr: bytes) -> dict:
    err = stderr.decode()
    assert "Traceback" not in err and "internal error" not in err, err
    assert err == "" or err.endswith("\n")
    by = {}
    for line in err.splitlines():
        assert line.startswith("nacrith: "), line
        name, _, reason = line[len("nacrith: "):].partition(": ")
        assert name not in by, f"two lines for {name}: {err}"
        by[name] = reason
    return by


@pytest.mark.parametrize("mode", ["-d", "-t", "-l"])
def test_fuzz_cases_through_cli(tmp_path, cli_cases, mode):
    """300 damaged archives as files, in batches: each bad file gets exactly one line `nacrith:
    FILE: reason` (the library's message for -d/-t), the batch goes on, exit 1; good files decode
    to their exact original; nothing else is left in the directory."""
    names = []
    for i, (blob, _, _, _) in enumerate(cli_cases):
        (tmp_path / f"c{i:04d}.nc").write_bytes(blob)
        names.append(f"c{i:04d}.nc")
    for start in range(0, len(names), 75):
        batch = names[start:start + 75]
        r = _cli(mode, *batch, cwd=tmp_path) if mode == "-l" else \
            _cli(mode, "-q", *batch, cwd=tmp_path)
        errors = _lines_by_file(r.stderr)
        expected_bad = set()
        for name in batch:
            blob, allowed, out, what = cli_cases[int(name[1:5])]
            if mode == "-l":
                try:
                    api.scan(io.BytesIO(blob))
                except nacrith.NacritError as e:
                    expected_bad.add(name)
                    assert errors.get(name) == " ".join(str(e).split()), (what, errors.get(name))
                continue
            if out.kind == "error":
                expected_bad.add(name)
                assert errors.get(name) == " ".join(out.detail.split()), (what, errors.get(name))
            elif mode == "-d":
                got = (tmp_path / name[:-3]).read_bytes()
                assert hashlib.sha256(got).hexdigest() in allowed, what
        assert set(errors) == expected_bad
        assert r.returncode == (1 if expected_bad else 0), r.stderr
    left = {p.name for p in tmp_path.iterdir()} - set(names)
    if mode == "-d":
        assert left == {n[:-3] for i, n in enumerate(names) if cli_cases[i][2].kind == "ok"}
    else:
        assert left == set()


def test_fuzz_cases_through_cli_pipes(tmp_path, cli_cases):
    """40 damaged archives on stdin (no look-ahead): exit 1 and one line `nacrith: <stdin>: ...`
    for bad ones, exact bytes for good ones; with -o, no output or temp file is left."""
    for i, (blob, allowed, out, what) in enumerate(cli_cases[:40]):
        r = _cli("-d", "-o", "out", "-", cwd=tmp_path, input=blob)
        if out.kind == "ok":
            assert r.returncode == 0 and r.stderr == b"", what
            assert hashlib.sha256((tmp_path / "out").read_bytes()).hexdigest() in allowed
            (tmp_path / "out").unlink()
        else:
            errors = _lines_by_file(r.stderr)
            assert r.returncode == 1 and list(errors) == ["<stdin>"], (what, r.stderr)
            assert list(tmp_path.iterdir()) == [], what
