"""User mistakes at the command line: each is one line `nacrith: WHAT: reason` and exit 1
(usage errors: click's usage text and exit 2), never a traceback, and leaves no file behind.
Options are checked in the parent before any worker pool or Ray starts."""
import os
import subprocess

import pytest

from test_cli import _drop_dac_override, put, run

MODEL_MISSING = "model not found: no-such.gguf (presets: smollm2, gemma3)"

# (args, files before -> {name: bytes}, directories made read-only, exit code, stderr or
#  usage fragment, files after (None: unchanged), needs file modes to apply)
CASES = {
    "bad manifest path": (
        ["compress", "-r", "--no-neural", "--manifest", "/nonexistent/m", "d"], [], 1,
        "nacrith: /nonexistent/m: No such file or directory\n", None),
    "bad ctx with workers": (
        ["compress", "--workers", "2", "--ctx", "1000", "a.txt"], [], 1,
        "nacrith: bad option: ctx must be a multiple of 256\n", None),
    "bad ctx with workers, -r (no manifest made)": (
        ["compress", "-r", "--workers", "2", "--ctx", "1000", "d"], [], 1,
        "nacrith: bad option: ctx must be a multiple of 256\n", None),
    "bad ctx without workers: once, not per file": (
        ["compress", "--ctx", "1000", "a.txt", "d/b.txt"], [], 1,
        "nacrith: bad option: ctx must be a multiple of 256\n", None),
    "lanes x ctx too large": (
        ["compress", "--ctx", "131072", "--lanes", "2", "a.txt"], [], 1,
        "nacrith: bad option: lanes x ctx must be <= 131072 tokens (ctx <= 131072)\n", None),
    "too many threads with workers": (
        ["compress", "--workers", "2", "--threads", "513", "a.txt"], [], 1,
        "nacrith: bad option: threads must be <= 512\n", None),
    "too many threads to decode": (
        ["decompress", "--threads", "513", "a.txt.nc"], [], 1,
        "nacrith: bad option: threads must be 1..512\n", None),
    "neural segment too large": (
        ["compress", "--segment-size", "128M", "a.txt"], [], 1,
        "nacrith: bad option: segment_size must be <= 67108864 for neural coding\n", None),
    "unreadable input": (
        ["compress", "--no-neural", "secret.txt", "a.txt"], [], 1,
        "nacrith: secret.txt: Permission denied\n", {"a.txt.nc"}),
    "read-only output directory": (
        ["compress", "--no-neural", "-o", "ro/a.txt.nc", "a.txt"], ["ro"], 1,
        "nacrith: ro/a.txt.nc: Permission denied\n", None),
    "read-only directory with -r": (
        ["compress", "-r", "-q", "--no-neural", "--manifest", "m.jsonl", "ro"], ["ro"], 1,
        "nacrith: ro/c.txt.nc: Permission denied\n", {"m.jsonl"}),
    "missing output directory": (
        ["compress", "--no-neural", "-o", "/nonexistent/x.nc", "a.txt"], [], 1,
        "nacrith: /nonexistent/x.nc: No such file or directory\n", None),
    "unknown model": (
        ["compress", "--model", "no-such.gguf", "a.txt"], [], 1,
        f"nacrith: a.txt: {MODEL_MISSING}\n", None),
    "unknown model with workers": (
        ["compress", "--workers", "2", "--threads", "1", "--model", "no-such.gguf", "a.txt"],
        [], 1, f"nacrith: a.txt: {MODEL_MISSING}\n", None),
    "bench of a missing file": (
        ["bench", "--file", "/nonexistent/t"], [], 1,
        "nacrith: /nonexistent/t: No such file or directory\n", None),
    "bad --devices": (
        ["compress", "--devices", "gpu0", "a.txt"], [], 2, "Invalid value for '--devices'", None),
    "bad --address for ray": (
        ["compress", "--engine", "ray", "--address", "nowhere", "a.txt"], [], 2,
        "Invalid value for '--address'", None),
    "ray port out of range": (
        ["compress", "--engine", "ray", "--address", "127.0.0.1:70000", "a.txt"], [], 2,
        "Invalid value for '--address'", None),
    "--address without ray": (
        ["compress", "--address", "127.0.0.1:6379", "a.txt"], [], 2,
        "--address needs --engine ray", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistake_is_one_line_and_leaves_nothing(tmp_path, case):
    args, readonly, code, expected, added = CASES[case]
    put(tmp_path, "a.txt", b"some plain text\n" * 20)
    put(tmp_path, "secret.txt", b"cannot read me\n" * 20)
    (tmp_path / "d").mkdir()
    put(tmp_path / "d", "b.txt", b"another text\n" * 20)
    (tmp_path / "ro").mkdir()
    put(tmp_path / "ro", "c.txt", b"in a read-only directory\n" * 20)
    blob = run("--no-neural", "-c", "a.txt", cwd=tmp_path).stdout
    if "a.txt.nc" in args:
        put(tmp_path, "a.txt.nc", blob)
    os.chmod(tmp_path / "secret.txt", 0)
    for d in readonly:
        os.chmod(tmp_path / d, 0o555)
    before = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    kw = {"preexec_fn": _drop_dac_override} if os.geteuid() == 0 else {}
    try:
        r = run(*args, cwd=tmp_path, timeout=300, **kw)
    except subprocess.SubprocessError as e:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE: {e}")
    finally:
        os.chmod(tmp_path / "secret.txt", 0o644)
        for d in readonly:
            os.chmod(tmp_path / d, 0o755)
    err = r.stderr.decode()
    assert r.returncode == code, err
    assert "Traceback" not in err
    if code == 1:
        assert err == expected
    else:
        assert err.startswith("Usage: nacrith") and expected in err, err
    after = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    assert {str(p) for p in after - before} == (added or set())
    assert before <= after
    assert r.stdout == b""
