"""Command line: every case runs `python -m nacrith` in a fresh process (exact bytes, messages,
exit codes, and which files exist afterwards)."""
import errno
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import corpus

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
ENV.pop("NACRITH_DEBUG", None)


def run(*args, cwd, input=b"", timeout=120, **kw) -> subprocess.CompletedProcess:
    """Run the CLI; stdin is a pipe (never a terminal) unless given otherwise."""
    if "stdin" in kw:
        input = None
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run([sys.executable, "-m", "nacrith", *map(str, args)], cwd=cwd, env=ENV,
                          input=input, timeout=timeout, **kw)


def popen(*args, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nacrith", *map(str, args)], cwd=cwd, env=ENV,
                            **kw)


def one_error(r, name: str) -> str:
    """Exit 1, exactly one stderr line `nacrith: NAME: reason`, no traceback; returns reason."""
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    prefix = f"nacrith: {name}: "
    assert lines[0].startswith(prefix), err
    return lines[0][len(prefix):]


def listing(d: Path) -> set:
    return {p.name for p in d.iterdir()}


def text_sample() -> bytes:
    return corpus("alice29.txt")[:20000]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """(original, archive bytes) of a 20 kB text made with the CLI, zstd only."""
    d = tmp_path_factory.mktemp("archive")
    data = text_sample()
    r = run("--no-neural", "-c", input=data, cwd=d)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    return data, r.stdout


def put(d: Path, name: str, data: bytes) -> Path:
    p = d / name
    p.write_bytes(data)
    return p


# ---------------------------------------------------------------- round trips
def test_binary_file_roundtrip_default_names_keep_mode_and_mtime(tmp_path):
    data = corpus("kennedy.xls")
    src = put(tmp_path, "kennedy.xls", data)
    os.chmod(src, 0o640)
    os.utime(src, ns=(1_500_000_000_000_000_000, 1_600_000_000_123_456_789))
    r = run("kennedy.xls", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")     # silent like gzip
    assert listing(tmp_path) == {"kennedy.xls", "kennedy.xls.nc"}  # input kept, no temp file
    out = tmp_path / "kennedy.xls.nc"
    assert out.read_bytes()[:3] == b"NAC" and out.stat().st_size < len(data) // 10
    assert oct(out.stat().st_mode & 0o7777) == oct(0o640)
    assert out.stat().st_mtime_ns == 1_600_000_000_123_456_789
    src.unlink()
    r = run("decompress", "kennedy.xls.nc", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert listing(tmp_path) == {"kennedy.xls", "kennedy.xls.nc"}
    assert (tmp_path / "kennedy.xls").read_bytes() == data
    assert oct((tmp_path / "kennedy.xls").stat().st_mode & 0o7777) == oct(0o640)


def test_binary_roundtrip_through_pipes(tmp_path):
    data = corpus("kennedy.xls")
    put(tmp_path, "k.xls", data)
    r = run(cwd=tmp_path, input=data)                       # no args, stdin a pipe: compress
    assert (r.returncode, r.stderr) == (0, b"")
    blob = r.stdout
    assert blob[:3] == b"NAC"
    r2 = run("-c", "k.xls", cwd=tmp_path)                   # file -> stdout: same bytes
    assert (r2.returncode, r2.stderr, r2.stdout) == (0, b"", blob)
    r3 = run("-c", "-", cwd=tmp_path, input=data)
    assert r3.stdout == blob
    r = run("-d", cwd=tmp_path, input=blob)                 # stdin -> stdout, -c implied
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout == data
    put(tmp_path, "k.xls.nc", blob)
    r = run("-dc", "k.xls.nc", cwd=tmp_path)                # combined short flags
    assert (r.returncode, r.stderr, r.stdout) == (0, b"", data)
    assert listing(tmp_path) == {"k.xls", "k.xls.nc"}


def test_no_neural_text_roundtrip_verbose(tmp_path):
    data = text_sample()
    put(tmp_path, "alice.txt", data)
    r = run("compress", "--no-neural", "-v", "alice.txt", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == b""
    size = (tmp_path / "alice.txt.nc").stat().st_size
    bpb = f"{size * 8 / 20000:.3f}"
    assert r.stderr.decode() == f"alice.txt: 20000 -> {size} bytes ({bpb} bpb, zstd)\n"
    r = run("-d", "-v", "-o", "back.txt", "alice.txt.nc", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stderr.decode() == f"alice.txt.nc: {size} -> 20000 bytes ({bpb} bpb)\n"
    assert (tmp_path / "back.txt").read_bytes() == data
    assert listing(tmp_path) == {"alice.txt", "alice.txt.nc", "back.txt"}


def test_empty_input(tmp_path):
    put(tmp_path, "empty", b"")
    r = run("-v", "empty", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stderr.decode() == "empty: 0 -> 13 bytes (- bpb, empty)\n"
    (tmp_path / "empty").unlink()
    assert run("-d", "empty.nc", cwd=tmp_path).returncode == 0
    assert (tmp_path / "empty").read_bytes() == b""


# ---------------------------------------------------------------- keep / rm / overwrite
def test_keep_is_default_and_k_accepted(tmp_path):
    put(tmp_path, "a.txt", b"hello hello hello\n" * 50)
    r = run("-k", "--no-neural", "a.txt", cwd=tmp_path)
    assert r.returncode == 0
    assert listing(tmp_path) == {"a.txt", "a.txt.nc"}


def test_rm_removes_input_only_on_success(tmp_path, archive):
    data, blob = archive
    put(tmp_path, "a.txt", data)
    r = run("--rm", "--no-neural", "a.txt", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, b"")
    assert listing(tmp_path) == {"a.txt.nc"}
    r = run("-d", "--rm", "a.txt.nc", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, b"")
    assert listing(tmp_path) == {"a.txt"}
    assert (tmp_path / "a.txt").read_bytes() == data
    # failure (corrupt archive): input kept, no output
    put(tmp_path, "bad.nc", blob[:-3])
    one_error(run("-d", "--rm", "bad.nc", cwd=tmp_path), "bad.nc")
    assert listing(tmp_path) == {"a.txt", "bad.nc"}
    # failure (output exists): input kept, existing output untouched
    put(tmp_path, "a.txt.nc", b"precious")
    r = run("--rm", "--no-neural", "a.txt", cwd=tmp_path)
    assert one_error(r, "a.txt.nc") == "already exists (use -f to overwrite)"
    assert (tmp_path / "a.txt").read_bytes() == data
    assert (tmp_path / "a.txt.nc").read_bytes() == b"precious"


def test_no_overwrite_without_force(tmp_path, archive):
    data, blob = archive
    put(tmp_path, "a.txt", data)
    put(tmp_path, "a.txt.nc", b"precious")
    r = run("--no-neural", "a.txt", cwd=tmp_path)
    assert r.stderr == b"nacrith: a.txt.nc: already exists (use -f to overwrite)\n"
    assert r.returncode == 1 and r.stdout == b""
    assert (tmp_path / "a.txt.nc").read_bytes() == b"precious"
    assert listing(tmp_path) == {"a.txt", "a.txt.nc"}
    # decompress onto an existing file
    put(tmp_path, "b.nc", blob)
    put(tmp_path, "b", b"keep me")
    r = run("-d", "b.nc", cwd=tmp_path)
    assert r.stderr == b"nacrith: b: already exists (use -f to overwrite)\n" and r.returncode == 1
    assert (tmp_path / "b").read_bytes() == b"keep me"
    r = run("-d", "-o", "a.txt", "b.nc", cwd=tmp_path)
    assert r.stderr == b"nacrith: a.txt: already exists (use -f to overwrite)\n"
    assert (tmp_path / "a.txt").read_bytes() == data


def test_overwrite_with_force_and_combined_flags(tmp_path, archive):
    data, blob = archive
    put(tmp_path, "a.txt", data)
    put(tmp_path, "a.txt.nc", b"old")
    r = run("-kf", "--no-neural", "a.txt", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, b"")
    assert (tmp_path / "a.txt.nc").read_bytes() == blob
    put(tmp_path, "a.txt", b"old")
    r = run("-df", "a.txt.nc", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, b"")
    assert (tmp_path / "a.txt").read_bytes() == data
    r = run("-dfo", "c.txt", "a.txt.nc", cwd=tmp_path)      # -o's value may follow -dfo
    assert (r.returncode, r.stderr) == (0, b"")
    assert (tmp_path / "c.txt").read_bytes() == data
    assert listing(tmp_path) == {"a.txt", "a.txt.nc", "c.txt"}


def test_same_input_and_output_refused(tmp_path, archive):
    _, blob = archive
    put(tmp_path, "a.nc", blob)
    r = run("-d", "-f", "-o", "a.nc", "a.nc", cwd=tmp_path)
    assert one_error(r, "a.nc") == "input and output are the same file"
    assert (tmp_path / "a.nc").read_bytes() == blob


def test_compress_refuses_nc_suffix(tmp_path, archive):
    put(tmp_path, "x.nc", archive[1])
    r = run("--no-neural", "x.nc", cwd=tmp_path)
    assert one_error(r, "x.nc") == "already has .nc suffix -- ignored"
    assert listing(tmp_path) == {"x.nc"}


# ---------------------------------------------------------------- damaged archives
FUTURE = 10           # a format version no nacrith has used (the newest read is 9)


def _future_version(blob: bytes) -> bytes:
    return blob[:3] + bytes([blob[3] & 0xF0 | FUTURE]) + blob[4:]


def _flip(blob: bytes, pos: int, bit: int = 0) -> bytes:
    b = bytearray(blob)
    b[pos % len(b)] ^= 1 << bit
    return bytes(b)


# a version-5 single-layout archive: every byte after the header is covered by the archive
# check, so truncation and damage both show as its mismatch (lengths are implied)
CHECK = "corrupt archive (archive checksum mismatch)"
DAMAGE = {
    "truncated_half": (lambda b: b[:len(b) // 2], CHECK),
    "truncated_trailer": (lambda b: b[:-1], CHECK),
    "truncated_header": (lambda b: b[:7], "truncated archive (in version-5 archive)"),
    "empty": (lambda b: b"", "not a nacrith archive (bad magic)"),
    "flip_length": (lambda b: _flip(b, 5), CHECK),
    "flip_check": (lambda b: _flip(b, -2, 3), CHECK),
    "flip_layout": (lambda b: _flip(b, 3, 4), CHECK),
    "flip_payload": (lambda b: _flip(b, len(b) // 2, 5), CHECK),
    "wrong_magic": (lambda b: b"GZIP" + b[4:], "not a nacrith archive (bad magic)"),
    "future_version": (_future_version, f"archive format version {FUTURE} is newer than this nacrith"),
    "trailing_garbage": (lambda b: b + b"\x00", CHECK),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_archive_decompress(tmp_path, archive, kind):
    damage, expect = DAMAGE[kind]
    put(tmp_path, "bad.txt.nc", damage(archive[1]))
    reason = one_error(run("-d", "bad.txt.nc", cwd=tmp_path), "bad.txt.nc")
    assert expect in reason
    assert listing(tmp_path) == {"bad.txt.nc"}                 # no output, no temp file
    one_error(run("test", "bad.txt.nc", cwd=tmp_path), "bad.txt.nc")
    one_error(run("info", "bad.txt.nc", cwd=tmp_path), "bad.txt.nc")
    assert listing(tmp_path) == {"bad.txt.nc"}


@pytest.mark.parametrize("kind", ["truncated_half", "flip_payload", "future_version",
                                  "trailing_garbage"])
def test_damaged_archive_from_pipe(tmp_path, archive, kind):
    damage, expect = DAMAGE[kind]
    r = run("-d", cwd=tmp_path, input=damage(archive[1]))
    assert expect in one_error(r, "<stdin>")
    r = run("-d", "-o", "out", "-", cwd=tmp_path, input=damage(archive[1]))
    assert expect in one_error(r, "<stdin>")
    assert listing(tmp_path) == set()


# ---------------------------------------------------------------- info / test
def test_info_prints_methods_and_sizes(tmp_path, archive):
    data, blob = archive
    put(tmp_path, "a.txt.nc", blob)
    from nacrith import api
    payload = api.scan(io.BytesIO(blob)).segments[0]["compressed"]
    assert payload == len(blob) - 4 - 3 - 8     # header, varint(20000), trailer
    r = run("info", "a.txt.nc", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, b"")
    out = r.stdout.decode()
    assert out.startswith("a.txt.nc:\n  format       nacrith v5\n  layout       zstd\n")
    assert "  model        none (no neural segments)\n" in out
    assert "  segments     1\n" in out
    assert re.search(rf"^ +0  zstd +20000 +{payload}  {payload * 8 / 20000:.3f}$", out, re.M), out
    assert "  original     20000 bytes\n" in out
    assert f"  compressed   {len(blob)} bytes\n" in out
    assert f"  ratio        {len(blob) / 20000:.3f} ({len(blob) * 8 / 20000:.3f} bpb)\n" in out
    assert run("-l", "a.txt.nc", cwd=tmp_path).stdout == r.stdout       # zstd-style alias
    r = run("info", "--json", "-", cwd=tmp_path, input=blob)
    d = json.loads(r.stdout)
    assert d["file"] == "<stdin>" and d["archive_size"] == len(blob)
    assert d["segments"] == [{"method": "zstd", "original": 20000, "compressed": payload,
                              "lanes": 0}]
    assert "model" not in d and d["original_size"] == 20000
    assert listing(tmp_path) == {"a.txt.nc"}


def test_test_command_good_and_bad(tmp_path, archive):
    _, blob = archive
    put(tmp_path, "good.nc", blob)
    put(tmp_path, "bad.nc", _flip(blob, -20))
    r = run("test", "good.nc", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"good.nc: OK\n", b"")
    r = run("-t", "-q", "good.nc", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    r = run("-t", "bad.nc", "good.nc", cwd=tmp_path)          # the bad one does not stop the rest
    one_error(r, "bad.nc")
    assert r.stdout == b"good.nc: OK\n"
    r = run("test", cwd=tmp_path, input=blob)
    assert (r.returncode, r.stdout) == (0, b"<stdin>: OK\n")
    assert listing(tmp_path) == {"good.nc", "bad.nc"}


# ---------------------------------------------------------------- errors per file
def test_missing_input_other_files_still_processed(tmp_path):
    put(tmp_path, "a.txt", b"some text\n" * 20)
    r = run("--no-neural", "nope.txt", "a.txt", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == b"nacrith: nope.txt: No such file or directory\n"
    assert listing(tmp_path) == {"a.txt", "a.txt.nc"}
    r = run("-d", "nope.txt.nc", "a.txt.nc", "-f", cwd=tmp_path)
    assert r.stderr == b"nacrith: nope.txt.nc: No such file or directory\n"
    assert (tmp_path / "a.txt").read_bytes() == b"some text\n" * 20


def test_unknown_suffix_on_decompress(tmp_path, archive):
    put(tmp_path, "a.txt", archive[1])
    r = run("-d", "a.txt", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, b"nacrith: a.txt: unknown suffix -- ignored\n")
    assert listing(tmp_path) == {"a.txt"}
    r = run("-d", "-o", "b.txt", "a.txt", cwd=tmp_path)           # explicit output: fine
    assert (r.returncode, r.stderr) == (0, b"")
    assert (tmp_path / "b.txt").read_bytes() == archive[0]


def test_directory_and_fifo_inputs(tmp_path):
    (tmp_path / "dir").mkdir()
    r = run("dir", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, b"nacrith: dir: is a directory -- ignored\n")
    os.mkfifo(tmp_path / "fifo")
    r = run("fifo", cwd=tmp_path, timeout=20)                   # must not block on the FIFO
    assert (r.returncode, r.stderr) == (
        1, b"nacrith: fifo: not a regular file -- ignored (use -f to force)\n")
    assert listing(tmp_path) == {"dir", "fifo"}


def test_stdout_write_error_is_one_line(tmp_path, archive):
    with open("/dev/full", "wb") as full:
        r = run("-dc", "-", cwd=tmp_path, input=archive[1], stdout=full)
    assert (r.returncode, r.stderr) == (1, b"nacrith: <stdout>: No space left on device\n")


def test_broken_pipe_is_silent(tmp_path):
    put(tmp_path, "k.xls.nc", run("-c", cwd=tmp_path, input=corpus("kennedy.xls")).stdout)
    p = popen("-dc", "k.xls.nc", cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.read(10) == corpus("kennedy.xls")[:10]
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 141 and err == b""


def test_bad_model_is_a_per_file_error(tmp_path):
    put(tmp_path, "a.txt", b"plain text\n" * 30)
    put(tmp_path, "b.txt", b"more text\n" * 30)
    r = run("--model", "no-such-model.gguf", "a.txt", "b.txt", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.decode() == (
        "nacrith: a.txt: model not found: no-such-model.gguf (presets: smollm2, gemma3)\n"
        "nacrith: b.txt: model not found: no-such-model.gguf (presets: smollm2, gemma3)\n")
    assert listing(tmp_path) == {"a.txt", "b.txt"}


def test_dash_dash_and_rm_with_stdout(tmp_path):
    put(tmp_path, "-x.txt", b"dash file\n" * 10)
    r = run("--no-neural", "--", "-x.txt", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, b"")
    assert listing(tmp_path) == {"-x.txt", "-x.txt.nc"}
    r = run("-dc", "--rm", "--", "-x.txt.nc", cwd=tmp_path)   # -c keeps inputs, says so
    assert (r.returncode, r.stdout) == (0, b"dash file\n" * 10)
    assert r.stderr == b"nacrith: --rm ignored when writing to standard output\n"
    assert listing(tmp_path) == {"-x.txt", "-x.txt.nc"}


# ---------------------------------------------------------------- usage errors
@pytest.mark.parametrize("args", [
    ["--threads", "x", "a.txt"], ["--threads", "0", "a.txt"], ["--ctx", "abc", "a.txt"],
    ["--lanes", "0", "a.txt"], ["-o", "out", "a.txt", "b.txt"], ["--bogus", "a.txt"],
    ["-d", "-t", "a.txt"], ["-c", "-o", "out", "a.txt"], ["decompress", "--no-neural", "a.txt"],
    ["info", "-f", "a.txt"],
])
def test_usage_errors_exit_2(tmp_path, args):
    put(tmp_path, "a.txt", b"x" * 100)
    put(tmp_path, "b.txt", b"y" * 100)
    r = run(*args, cwd=tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "Usage: nacrith" in err and "Error: " in err and "Traceback" not in err
    assert listing(tmp_path) == {"a.txt", "b.txt"}


def test_help_and_version(tmp_path):
    r = run("--help", cwd=tmp_path)
    assert r.returncode == 0 and b"compress" in r.stdout and b"decompress" in r.stdout
    r = run("-d", "-h", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith(b"Usage: nacrith decompress")
    from nacrith import __version__
    from nacrith import frames as F
    from nacrith.portable import ENGINE_VERSION
    for flag in ("-V", "--version"):
        r = run(flag, cwd=tmp_path)
        assert (r.returncode, r.stderr) == (0, b"")
        assert r.stdout.decode() == (f"nacrith {__version__}\n"
                                     f"portable engine version {ENGINE_VERSION}\n"
                                     "archive format: writes version 5 (8 with --model2, 9 "
                                     "with --mix-preset 5), reads versions 1-9\n")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__) and F.VERSION >= 5


# ---------------------------------------------------------------- terminals
def _run_pty(args, cwd, stdin=subprocess.DEVNULL, stdout_pty=True, stdin_pty=False):
    master, slave = os.openpty()
    try:
        p = popen(*args, cwd=cwd, stdin=slave if stdin_pty else stdin,
                  stdout=slave if stdout_pty else subprocess.PIPE, stderr=subprocess.PIPE)
        os.close(slave)
        slave = None
        seen = b""
        while True:                                 # drain the terminal so the child never blocks
            try:
                chunk = os.read(master, 65536)
            except OSError as e:                    # EIO: every slave end closed
                if e.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            seen += chunk
        err = p.stderr.read()
        out = p.stdout.read() if not stdout_pty else seen
        return p.wait(timeout=60), out, err
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)


def test_refuses_to_write_compressed_data_to_terminal(tmp_path):
    put(tmp_path, "a.txt", b"hello terminal\n" * 10)
    msg = b"nacrith: stdout is a terminal; refusing to write compressed data (use -f to force)\n"
    rc, out, err = _run_pty(["-c", "--no-neural", "a.txt"], tmp_path)
    assert (rc, out, err) == (1, b"", msg)
    with open(tmp_path / "a.txt", "rb") as f:                  # nacrith < a.txt  (tty stdout)
        rc, out, err = _run_pty(["--no-neural"], tmp_path, stdin=f)
    assert (rc, out, err) == (1, b"", msg)
    rc, out, err = _run_pty(["-cf", "--no-neural", "a.txt"], tmp_path)
    assert (rc, err) == (0, b"") and out.startswith(b"NAC\x15")
    put(tmp_path, "a.txt.nc", run("--no-neural", "-c", "a.txt", cwd=tmp_path).stdout)
    rc, out, err = _run_pty(["-dc", "a.txt.nc"], tmp_path)     # decompressed text is fine
    assert (rc, err) == (0, b"") and out.replace(b"\r\n", b"\n") == b"hello terminal\n" * 10
    assert listing(tmp_path) == {"a.txt", "a.txt.nc"}


def test_no_arguments_with_terminal_stdin_is_usage_error(tmp_path):
    rc, out, err = _run_pty([], tmp_path, stdout_pty=False, stdin_pty=True)
    assert (rc, out) == (2, b"")
    assert b"Usage: nacrith" in err and b"terminal" in err and b"Traceback" not in err
    rc, out, err = _run_pty(["-d"], tmp_path, stdout_pty=False, stdin_pty=True)
    assert (rc, out) == (1, b"")
    assert err == (b"nacrith: stdin is a terminal; refusing to read compressed data"
                   b" (use -f to force)\n")


# ---------------------------------------------------------------- progress and summaries
def _run_stderr_pty(args, cwd, timeout=600):
    """Run with stderr a pseudo-terminal (stdin /dev/null, stdout a pipe): (status, stdout,
    everything written to the terminal)."""
    master, slave = os.openpty()
    try:
        p = popen(*args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                  stderr=slave)
        os.close(slave)
        slave = None
        seen, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 65536)
            except OSError as e:                    # EIO: every slave end closed
                if e.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            seen += chunk
        return p.wait(timeout=60), p.stdout.read(), seen
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)


# one drawing of the bar: NAME: PCT%|...| DONE/TOTAL [ELAPSED<LEFT, RATE B/s, POSTFIX]
BAR = re.compile(rb"([^\r\n]+?): +(\d+)%\|[^|\r]*\| *([\d.]+k?)/([\d.]+k?) "
                 rb"\[(\d\d:\d\d)<(\d\d:\d\d|\?), ([\d.]+k?B/s|\?B/s)([^\]\r]*)\]")


def _lines(seen: bytes) -> list:
    """The lines left on the terminal: what follows the last carriage return of each."""
    return [chunk.split(b"\r")[-1].decode() for chunk in seen.split(b"\r\n")[:-1]]


def test_progress_bar_and_summary_of_a_file_on_a_terminal(tmp_path):
    why = _neural_available()
    if why:
        pytest.skip(why)
    # 1200 bytes: ~300 tokens coded and verified, over the 1 s a rate needs even at ~200 tok/s
    put(tmp_path, "a.txt", corpus("alice29.txt")[:1200])
    rc, out, seen = _run_stderr_pty(["--threads", "1", "a.txt"], tmp_path)
    assert (rc, out) == (0, b""), seen
    bars = BAR.findall(seen)
    assert bars, seen
    assert {(b[0], b[3]) for b in bars} == {(b"a.txt", b"1.20k")}      # over the input's bytes
    pcts = [int(b[1]) for b in bars]
    assert pcts == sorted(pcts) and pcts[-1] <= 100
    assert any(b[5] != b"?" for b in bars), seen                      # a time left
    assert any(re.fullmatch(rb", [\d.]+ tok/s", b[7]) for b in bars), seen
    size = (tmp_path / "a.txt.nc").stat().st_size
    assert _lines(seen) == [f"a.txt : {size * 100 / 1200:.1f}% (1200 => {size} bytes, a.txt.nc)"]
    assert seen.endswith(b"\r" + b" " * 80 + b"\r" + _lines(seen)[0].encode() + b"\r\n")


def test_progress_bar_of_a_recursive_job_on_a_terminal(tmp_path):
    why = _neural_available()
    if why:
        pytest.skip(why)
    (tmp_path / "d" / "sub").mkdir(parents=True)
    # 1200 bytes of text: ~300 tokens, over the 1 s a rate needs even at ~200 tok/s
    put(tmp_path / "d", "a.txt", corpus("asyoulik.txt")[:1200])
    put(tmp_path / "d" / "sub", "b.bin", bytes(range(256)) * 4)        # binary: zstd/stored
    rc, out, seen = _run_stderr_pty(["--threads", "1", "-r", "d"], tmp_path)
    assert (rc, out) == (0, b""), seen
    bars = [b for b in BAR.findall(seen) if b"tok/s" in b[7]]         # the job's bar
    assert bars, seen
    assert {(b[0], b[3]) for b in bars} == {(b"compress", b"2.22k")}   # 1200 + 1024 bytes
    assert any(b[5] != b"?" for b in bars), seen
    assert all(re.fullmatch(rb", [01]/2 files, [\d.]+ tok/s", b[7]) for b in bars), seen
    a = (tmp_path / "d" / "a.txt.nc").stat().st_size
    b = (tmp_path / "d" / "sub" / "b.bin.nc").stat().st_size
    lines = _lines(seen)            # the files are coded at once: in the order they finish
    assert sorted(lines[:2]) == [f"d/a.txt : {a * 100 / 1200:.1f}% (1200 => {a} bytes, "
                                 "d/a.txt.nc)",
                                 f"d/sub/b.bin : {b * 100 / 1024:.1f}% (1024 => {b} bytes, "
                                 "d/sub/b.bin.nc)"]
    assert len(lines) == 3 and lines[2].startswith(
        f"2 files compressed, 0 failed; 2224 -> {a + b} bytes")


def test_quiet_or_no_terminal_prints_no_bar_and_no_summary(tmp_path):
    why = _neural_available()
    if why:
        pytest.skip(why)
    (tmp_path / "d").mkdir()
    put(tmp_path / "d", "a.txt", corpus("alice29.txt")[:120])
    rc, out, seen = _run_stderr_pty(["-q", "--threads", "1", "-r", "d"], tmp_path)
    assert (rc, out, seen) == (0, b"", b"")
    assert (tmp_path / "d" / "a.txt.nc").is_file()
    r = run("-f", "--no-neural", "-r", "d", cwd=tmp_path)                 # stderr a pipe
    assert r.returncode == 0 and re.fullmatch(rb"1 files compressed, 0 failed; 120 -> \d+ bytes "
                                              rb"\([\d.]+ bpb\) in [\d.]+ s; manifest "
                                              rb"nacrith-manifest.jsonl\n", r.stderr), r.stderr


def test_summary_lines_on_a_terminal(tmp_path):
    data = text_sample()[:4000]
    put(tmp_path, "a.txt", data)
    rc, out, seen = _run_stderr_pty(["--no-neural", "-c", "a.txt"], tmp_path)
    assert rc == 0 and out[:3] == b"NAC"
    n = len(out)
    assert seen == f"a.txt : {n * 100 / 4000:.1f}% (4000 => {n} bytes, <stdout>)\r\n".encode()
    rc, out, seen = _run_stderr_pty(["--no-neural", "-v", "a.txt"], tmp_path)
    assert (rc, out) == (0, b"")
    assert seen.decode() == (f"a.txt : {n * 100 / 4000:.1f}% (4000 => {n} bytes, a.txt.nc)\r\n"
                             f"a.txt: 4000 -> {n} bytes ({n * 8 / 4000:.3f} bpb, zstd)\r\n")
    (tmp_path / "a.txt").unlink()
    rc, out, seen = _run_stderr_pty(["-d", "a.txt.nc"], tmp_path)
    assert (rc, out) == (0, b"") and (tmp_path / "a.txt").read_bytes() == data
    assert seen == f"a.txt.nc : {n * 100 / 4000:.1f}% ({n} => 4000 bytes, a.txt)\r\n".encode()
    rc, out, seen = _run_stderr_pty(["-t", "a.txt.nc"], tmp_path)      # test: its OK line only
    assert (rc, out, seen) == (0, b"a.txt.nc: OK\n", b"")
    rc, out, seen = _run_stderr_pty(["-dq", "-f", "a.txt.nc"], tmp_path)
    assert (rc, out, seen) == (0, b"", b"")
    (tmp_path / "d").mkdir()
    put(tmp_path / "d", "x.txt", data[:1000])
    put(tmp_path / "d", "y.txt", data[1000:3000])
    rc, out, seen = _run_stderr_pty(["--no-neural", "--solid", "-o", "all.nc", "d"], tmp_path)
    assert (rc, out) == (0, b"")
    s = (tmp_path / "all.nc").stat().st_size
    assert seen == f"all.nc : {s * 100 / 3000:.1f}% (3000 => {s} bytes, 2 files)\r\n".encode()


# ---------------------------------------------------------------- signals
def _wait_for_temp(d: Path, p: subprocess.Popen, timeout=60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tmps = [n for n in listing(d) if n.endswith(".tmp")]
        if tmps:
            return tmps[0]
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.02)
    raise AssertionError("no temp file appeared")


@pytest.mark.parametrize("mode", ["compress", "decompress"])
@pytest.mark.parametrize("sig,code,msg", [(signal.SIGINT, 130, b"nacrith: interrupted\n"),
                                          (signal.SIGTERM, 143, b"nacrith: terminated\n")])
def test_signal_removes_partial_output(tmp_path, archive, mode, sig, code, msg):
    """The process blocks reading stdin after creating its temp file; the signal must remove it."""
    args = ["--no-neural", "-o", "out", "-"] if mode == "compress" else ["-d", "-o", "out", "-"]
    feed = archive[0][:5000] if mode == "compress" else archive[1][:len(archive[1]) // 2]
    p = popen(*args, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE)
    try:
        p.stdin.write(feed)
        p.stdin.flush()
        tmp = _wait_for_temp(tmp_path, p)
        assert re.fullmatch(r"\.out\.\w+\.tmp", tmp)
        time.sleep(0.2)                             # let it block inside the read
        p.send_signal(sig)
        assert p.wait(timeout=30) == code
        assert p.stderr.read() == msg
        assert listing(tmp_path) == set()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdin.close()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_native_threads_never_take_signals(tmp_path):
    """llama.cpp's OpenMP pool and numpy's BLAS pool must block SIGINT/SIGTERM/SIGHUP: a signal
    they took would leave the main thread blocked in read() until input arrives (a hang with an
    idle writer). After a neural file, the process waits on stdin with those threads running."""
    (tmp_path / "a.txt").write_bytes(corpus("alice29.txt")[:1500])
    p = popen("a.txt", "-", cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600      # generous: a loaded box, a cold Numba cache
        while not (tmp_path / "a.txt.nc").exists():
            assert p.poll() is None, p.stderr.read()   # exited: reading stderr cannot block
            if time.monotonic() > deadline:
                p.kill()
                raise AssertionError("no archive after 600 s")
            time.sleep(0.05)
        time.sleep(0.5)
        tasks = sorted(int(t) for t in os.listdir(f"/proc/{p.pid}/task"))
        assert len(tasks) >= 2                  # main + at least the BLAS/OpenMP helpers
        want = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGHUP - 1))
        for t in tasks:
            status = Path(f"/proc/{p.pid}/task/{t}/status").read_text()
            blk = int(re.search(r"^SigBlk:\s*([0-9a-f]+)", status, re.M).group(1), 16)
            assert blk & want == (0 if t == p.pid else want), (t, hex(blk))
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 143
        assert p.stderr.read() == b"nacrith: terminated\n"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdin.close()
        p.stdout.close()


def test_sigterm_on_fifo_input_with_force(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    fd = os.open(tmp_path / "fifo", os.O_RDWR)             # a writer that stays open
    try:
        p = popen("--no-neural", "-f", "--rm", "fifo", cwd=tmp_path, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
        os.write(fd, b"stream data\n" * 100)
        tmp = _wait_for_temp(tmp_path, p)
        assert tmp.startswith(".fifo.nc.")
        time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 143
        assert p.stderr.read() == b"nacrith: terminated\n"
        assert listing(tmp_path) == {"fifo"}
    finally:
        os.close(fd)


# ---------------------------------------------------------------- neural (real default model)
def _neural_available() -> str | None:
    if importlib.util.find_spec("nacrith.coder") is None:
        return "nacrith.coder is not available yet"
    from nacrith import models
    from nacrith.errors import NacritError
    try:
        models.resolve(None)
    except NacritError as e:
        return str(e)
    return None


def test_neural_roundtrip_small_text(tmp_path):
    why = _neural_available()
    if why:
        pytest.skip(why)
    data = corpus("alice29.txt")[:1500]
    put(tmp_path, "alice.txt", data)
    # one llama.cpp thread: OpenMP spin-waits make several threads crawl on a loaded 2-core box
    r = run("-v", "--threads", "1", "alice.txt", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    size = (tmp_path / "alice.txt.nc").stat().st_size
    assert r.stderr.decode() == (f"alice.txt: 1500 -> {size} bytes "
                                 f"({size * 8 / 1500:.3f} bpb, neural)\n")
    r = run("info", "alice.txt.nc", cwd=tmp_path)
    out = r.stdout.decode()
    assert r.returncode == 0
    assert re.search(r"^ +0  neural +1500 +\d+  [\d.]+$", out, re.M), out
    assert re.search(r"^  model        SmolLM2-135M-Instruct.Q4_1.gguf$", out, re.M), out
    assert re.search(r"^  sha256       [0-9a-f]{64}$", out, re.M), out
    assert "  params       ctx=2048 slide=512 n_keep=1 lanes=1 mix_preset=4" in out
    r = run("-d", "-q", "-o", "back.txt", "alice.txt.nc", cwd=tmp_path, timeout=600)
    assert (r.returncode, r.stderr) == (0, b"")
    assert (tmp_path / "back.txt").read_bytes() == data
    assert listing(tmp_path) == {"alice.txt", "alice.txt.nc", "back.txt"}


def test_no_mixer_writes_llm_only_archive(tmp_path):
    why = _neural_available()
    if why:
        pytest.skip(why)
    data = corpus("xargs.1")[:700]
    put(tmp_path, "x.txt", data)
    r = run("--no-mixer", "--threads", "1", "x.txt", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    blob = (tmp_path / "x.txt.nc").read_bytes()
    from nacrith import frames as F
    layout, desc, _, _ = F.scan_bytes(blob)
    assert layout == F.L_NEURAL and desc.params == {"mix_preset": 0}
    r = run("-dc", "x.txt.nc", cwd=tmp_path, timeout=600)
    assert (r.returncode, r.stdout) == (0, data)


def test_mix_preset_5_writes_version_9(tmp_path):
    why = _neural_available()
    if why:
        pytest.skip(why)
    data = corpus("xargs.1")[:700]
    put(tmp_path, "x.txt", data)
    r = run("--mix-preset", "5", "--threads", "1", "x.txt", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    blob = (tmp_path / "x.txt.nc").read_bytes()
    from nacrith import frames as F
    layout, desc, _, _ = F.scan_bytes(blob)
    assert (layout, desc.version, desc.params, blob[3]) == (F.L_NEURAL, 9, {}, F.L_NEURAL << 4 | 9)
    r = run("info", "x.txt.nc", cwd=tmp_path)
    assert r.returncode == 0 and "  params       ctx=2048 slide=512 n_keep=1 lanes=1 mix_preset=5" \
        in r.stdout.decode(), r.stdout
    r = run("-dc", "x.txt.nc", cwd=tmp_path, timeout=600)
    assert (r.returncode, r.stdout) == (0, data)
    r = run("--mix-preset", "6", "-c", "x.txt", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == b"" and b"--mix-preset" in r.stderr, r.stderr
    r = run("--mix-preset", "5", "--model", "gemma3", "--model2", "smollm2", "-c", "x.txt",
            cwd=tmp_path)
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr.decode() == ("nacrith: bad option: mix_preset must be one of 1, 2, 3, 4, 5 "
                                 "(the ensemble; not with model2; got 5)\n")


def test_ctrl_c_during_neural_coding(tmp_path):
    """SIGINT while tokens are being coded (the progress bar is on a terminal): exit 130, the
    partial output is removed and the input is kept."""
    why = _neural_available()
    if why:
        pytest.skip(why)
    data = corpus("alice29.txt")[:30000]
    put(tmp_path, "alice.txt", data)
    master, slave = os.openpty()
    try:
        p = popen("--threads", "1", "--rm", "alice.txt", cwd=tmp_path, stdin=subprocess.DEVNULL,
                  stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        seen, deadline = b"", time.monotonic() + 300
        while b"tok" not in seen:                   # tqdm bar: tokens are being coded
            assert time.monotonic() < deadline and p.poll() is None, seen
            seen += os.read(master, 4096)
        assert re.search(r"^\.alice\.txt\.nc\.\w+\.tmp$", "\n".join(listing(tmp_path)), re.M)
        p.send_signal(signal.SIGINT)
        rest = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            rest += chunk
        assert p.wait(timeout=60) == 130
        assert (seen + rest).endswith(b"nacrith: interrupted\r\n")
        assert b"Traceback" not in seen + rest
        assert listing(tmp_path) == {"alice.txt"}
        assert (tmp_path / "alice.txt").read_bytes() == data
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()


# ================================================================ reliability (issue 6)
def _binary_text(n: int) -> bytes:
    """Text-like bytes with a NUL every few KiB (binary-flagged: no model is ever loaded); every
    MiB rotated differently, so zstd level 19 needs seconds per 4 MiB segment."""
    import random
    rng = random.Random(3)
    words = [bytes(rng.choice(b"etaoinshrdlucmfwyp") for _ in range(rng.randint(1, 9)))
             for _ in range(2000)]
    base = bytearray()
    while len(base) < 1 << 20:
        base += rng.choice(words) + (b"\n" if rng.random() < 0.1 else b" ")
        if len(base) % 4096 < 10:
            base += b"\x00"
    base = bytes(base[:1 << 20])
    out = b"".join(base[k:] + base[:k] for k in ((i * 7919) % len(base)
                                                 for i in range(-(-n // len(base)))))
    return out[:n]


def _signal_when_temp_appears(p: subprocess.Popen, d: Path, sig, delay: float) -> str:
    tmp = _wait_for_temp(d, p, timeout=300)
    time.sleep(delay)
    assert p.poll() is None, "finished before the signal"
    p.send_signal(sig)
    return tmp


SIGNALS = [(signal.SIGINT, 130, b"nacrith: interrupted\n"),
           (signal.SIGTERM, 143, b"nacrith: terminated\n")]


@pytest.mark.parametrize("sig,code,msg", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_mid_compress_of_a_file_keeps_input_with_rm(tmp_path, sig, code, msg):
    """A regular file being compressed (zstd level 19, several seconds) with --rm: the signal
    leaves the input byte-identical and no output or temp file."""
    data = _binary_text(24 << 20)
    put(tmp_path, "big.bin", data)
    p = popen("-q", "--rm", "big.bin", cwd=tmp_path, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE)
    try:
        tmp = _signal_when_temp_appears(p, tmp_path, sig, 0.5)
        assert tmp.startswith(".big.bin.nc.")
        assert p.wait(timeout=60) == code
        assert p.stderr.read() == msg
        assert listing(tmp_path) == {"big.bin"}
        assert (tmp_path / "big.bin").read_bytes() == data
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("sig,code,msg", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_mid_neural_decompress_of_a_file_keeps_input_with_rm(tmp_path, sig, code, msg):
    """Decoding a neural archive (model load + token loop, seconds) from a file with --rm: the
    signal leaves the archive and no partial output."""
    why = _neural_available()
    if why:
        pytest.skip(why)
    # a portable-engine archive: it decodes on every machine (a llama.cpp golden is refused at
    # once where the build differs, before any decoding to interrupt)
    blob = (REPO / "formats" / "golden" / "v4-portable-2lanes-slide.nc").read_bytes()
    put(tmp_path, "g.txt.nc", blob)
    p = popen("-d", "-q", "--rm", "--threads", "1", "g.txt.nc", cwd=tmp_path,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _signal_when_temp_appears(p, tmp_path, sig, 1.0)
        assert p.wait(timeout=120) == code
        assert p.stderr.read() == msg
        assert listing(tmp_path) == {"g.txt.nc"}
        assert (tmp_path / "g.txt.nc").read_bytes() == blob
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# ---------------------------------------------------------------- failing writes
def test_compress_to_full_stdout_is_one_line(tmp_path):
    put(tmp_path, "a.bin", _binary_text(300000))
    with open("/dev/full", "wb") as full:
        r = run("-c", "--rm", "a.bin", cwd=tmp_path, stdout=full)
    assert (r.returncode, r.stderr) == (1, b"nacrith: --rm ignored when writing to standard "
                                           b"output\nnacrith: <stdout>: No space left on device\n")
    assert listing(tmp_path) == {"a.bin"}


def _char_device(path: Path, major: int, minor: int) -> None:
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        with open(path, "wb", buffering=0):
            pass
    except OSError as e:
        pytest.skip(f"cannot create a character device node here ({e})")


@pytest.mark.parametrize("force", [False, True])
def test_output_to_a_full_device_fails_and_never_replaces_it(tmp_path, archive, force):
    """`-o FULL` where FULL is a /dev/full node (1,7): written in place like a shell redirection,
    so exit 1 `No space left on device`, the node is still the same character device (it is
    never replaced by a regular file, even with -f), and --rm keeps the input."""
    data, blob = archive
    _char_device(tmp_path / "full", 1, 7)
    rdev = (tmp_path / "full").stat().st_rdev
    put(tmp_path, "a.txt", data)
    put(tmp_path, "a.txt.nc", blob)
    flags = ["-f"] if force else []
    for args, name in ((["--no-neural", "--rm", "-o", "full", "a.txt"], "full"),
                       (["-d", "--rm", "-o", "full", "a.txt.nc"], "full")):
        r = run(*flags, *args, cwd=tmp_path)
        assert one_error(r, name) == "No space left on device"
        st = (tmp_path / "full").lstat()
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev
        assert listing(tmp_path) == {"a.txt", "a.txt.nc", "full"}
    assert (tmp_path / "a.txt").read_bytes() == data


def test_output_to_a_null_device_is_written_in_place_and_rm_is_ignored(tmp_path, archive):
    data, blob = archive
    _char_device(tmp_path / "null", 1, 3)
    put(tmp_path, "a.txt.nc", blob)
    r = run("-d", "--rm", "-o", "null", "a.txt.nc", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, b"")
    assert r.stderr == b"nacrith: null: --rm ignored (output is not a regular file)\n"
    assert stat.S_ISCHR((tmp_path / "null").lstat().st_mode)
    assert listing(tmp_path) == {"a.txt.nc", "null"}


def test_full_filesystem_leaves_no_partial_file_and_keeps_input(tmp_path):
    """A 64 KiB tmpfs (private mount namespace via unshare -m): compressing 1 MiB of incompressible
    data into it fails with one line, leaves nothing in it, and --rm keeps the input."""
    if not shutil.which("unshare"):
        pytest.skip("unshare not available")
    data = os.urandom(1 << 20)
    put(tmp_path, "in.bin", data)
    (tmp_path / "mnt").mkdir()
    script = (f'mount -t tmpfs -o size=64k tmpfs mnt || exit 99; '
              f'"{sys.executable}" -m nacrith --no-neural --rm -o mnt/in.bin.nc in.bin; '
              f'echo "rc=$?"; ls -A mnt')
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, env=ENV,
                       capture_output=True, timeout=120)
    if r.returncode == 99 or b"rc=" not in r.stdout:
        pytest.skip(f"cannot mount a private tmpfs: {r.stderr.decode()[-200:]}")
    assert r.stdout == b"rc=1\n", r.stdout              # exit 1, nothing left in the tmpfs
    assert r.stderr == b"nacrith: mnt/in.bin.nc: No space left on device\n"
    assert (tmp_path / "in.bin").read_bytes() == data
    assert listing(tmp_path) == {"in.bin", "mnt"}


TRACE = """
import json, os, sys
from nacrith import cli
events = []
def wrap(name):
    real = getattr(os, name)
    def f(*a, **k):
        arg = a[0] if a else None
        if isinstance(arg, int):
            try:
                arg = os.readlink(f"/proc/self/fd/{arg}")
            except OSError:
                arg = f"fd{arg}"
        events.append([name, os.path.basename(str(arg)),
                       os.path.basename(str(a[1])) if len(a) > 1 else None])
        return real(*a, **k)
    setattr(os, name, f)
for n in ("fsync", "link", "replace", "rename", "unlink"):
    wrap(n)
try:
    cli.main(sys.argv[1:])
except SystemExit as e:
    events.append(["exit", e.code, None])
sys.stderr.write(json.dumps(events))
"""


@pytest.mark.parametrize("mode", ["compress", "decompress"])
def test_rm_deletes_input_only_after_output_is_synced_and_renamed(tmp_path, archive, mode):
    """Order of the system calls with --rm: fsync(output temp file) -> link/rename to the final
    name -> fsync(directory) -> unlink(input), and nothing is unlinked before."""
    data, blob = archive
    if mode == "compress":
        put(tmp_path, "a.txt", data)
        args, src, dst = ["--no-neural", "--rm", "a.txt"], "a.txt", "a.txt.nc"
    else:
        put(tmp_path, "a.txt.nc", blob)
        args, src, dst = ["-d", "--rm", "a.txt.nc"], "a.txt.nc", "a.txt"
    r = subprocess.run([sys.executable, "-c", TRACE, *args], cwd=tmp_path, env=ENV,
                       capture_output=True, timeout=120)
    ev = json.loads(r.stderr)
    assert ev[-1] == ["exit", 0, None]
    names = [e[0] for e in ev]
    i_fsync = next(i for i, e in enumerate(ev) if e[0] == "fsync" and e[1].startswith(f".{dst}."))
    i_final = next(i for i, e in enumerate(ev) if e[0] in ("link", "replace", "rename")
                   and e[2] == dst)
    i_dir = next(i for i, e in enumerate(ev) if e[0] == "fsync" and e[1] == tmp_path.name)
    i_rm = names.index("unlink", i_dir)
    assert ev[i_rm][1] == src
    assert i_fsync < i_final < i_dir < i_rm
    assert all(e[1] != src for e in ev[:i_rm] if e[0] == "unlink")
    assert listing(tmp_path) == {dst}


# ---------------------------------------------------------------- hostile paths and inputs
def test_symlink_inputs_like_gzip(tmp_path, archive):
    """gzip 1.12: a symlinked input is refused unless -f (then the link is followed, and --rm
    removes the link, not its target) or the output is stdout (-c)."""
    data, blob = archive
    put(tmp_path, "real.txt", data)
    os.symlink("real.txt", tmp_path / "link.txt")
    put(tmp_path, "other.txt", b"other\n" * 50)
    r = run("--no-neural", "link.txt", "other.txt", cwd=tmp_path)
    assert one_error(r, "link.txt") == "is a symbolic link -- ignored (use -f to force)"
    assert listing(tmp_path) == {"real.txt", "link.txt", "other.txt", "other.txt.nc"}
    r = run("--no-neural", "-c", "link.txt", cwd=tmp_path)          # -c follows the link
    assert (r.returncode, r.stderr, r.stdout) == (0, b"", blob)
    r = run("--no-neural", "-f", "--rm", "link.txt", cwd=tmp_path)   # -f follows, rm the link
    assert (r.returncode, r.stderr) == (0, b"")
    assert listing(tmp_path) == {"real.txt", "link.txt.nc", "other.txt", "other.txt.nc"}
    assert (tmp_path / "real.txt").read_bytes() == data
    assert not (tmp_path / "link.txt.nc").is_symlink()
    assert (tmp_path / "link.txt.nc").read_bytes() == blob
    # decompress: same rules; a dangling link is an error of its own
    os.symlink("link.txt.nc", tmp_path / "l2.txt.nc")
    os.symlink("nowhere.nc", tmp_path / "dangling.nc")
    r = run("-d", "l2.txt.nc", "dangling.nc", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.decode().splitlines() == [
        "nacrith: l2.txt.nc: is a symbolic link -- ignored (use -f to force)",
        "nacrith: dangling.nc: is a symbolic link -- ignored (use -f to force)"]
    r = run("-d", "-f", "dangling.nc", cwd=tmp_path)
    assert one_error(r, "dangling.nc") == "No such file or directory"
    r = run("-dc", "l2.txt.nc", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, data)
    r = run("-t", "-q", "l2.txt.nc", cwd=tmp_path)                    # test writes nothing
    assert (r.returncode, r.stderr) == (0, b"")
    assert "l2.txt" not in listing(tmp_path) and "dangling" not in listing(tmp_path)


def _wait_until_opened(pid: int, path, limit: float = 120.0) -> None:
    """Until process pid has `path` open (its /proc fd table), at most `limit` seconds."""
    want = os.path.realpath(path)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                    return
            except OSError:
                pass
        time.sleep(0.02)


def test_fifo_and_device_inputs_like_gzip(tmp_path):
    """FIFOs and devices: never read just because they were named (no FIFO.nc, no /dev/zero.nc),
    but read when the output is stdout (gzip -c FIFO, gzip -c /dev/null) or with -f."""
    os.mkfifo(tmp_path / "fifo")
    r = run("--no-neural", "/dev/zero", cwd=tmp_path, timeout=20)
    assert one_error(r, "/dev/zero") == "not a regular file -- ignored (use -f to force)"
    assert not os.path.exists("/dev/zero.nc")
    r = run("-c", "/dev/null", cwd=tmp_path)
    assert r.returncode == 0 and run("-d", cwd=tmp_path, input=r.stdout).stdout == b""
    fd = os.open(tmp_path / "fifo", os.O_RDWR)          # keeps the FIFO open for writing
    try:
        os.write(fd, b"through a fifo\n" * 20)
        p = popen("--no-neural", "-c", "fifo", cwd=tmp_path, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
        _wait_until_opened(p.pid, tmp_path / "fifo")   # closing earlier would lose the data
        os.close(fd)
        fd = None
        out, err = p.communicate(timeout=60)
        assert (p.returncode, err) == (0, b"")
        assert run("-d", cwd=tmp_path, input=out).stdout == b"through a fifo\n" * 20
    finally:
        if fd is not None:
            os.close(fd)
    r = run("-t", "fifo", cwd=tmp_path, timeout=20)
    assert one_error(r, "fifo") == "not a regular file -- ignored"
    assert listing(tmp_path) == {"fifo"}


def _drop_dac_override():
    """preexec_fn: root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so file modes apply."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):                      # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:   # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_unreadable_file_is_a_per_file_error_and_the_batch_continues(tmp_path):
    """chmod 000 input among others: `nacrith: FILE: Permission denied`, the other files are
    compressed, exit 1. Tests run as root, so the CLI runs without the capabilities that let
    root ignore file modes (when running unprivileged, the modes already apply)."""
    put(tmp_path, "a.txt", b"first file\n" * 40)
    put(tmp_path, "secret.txt", b"cannot read me\n" * 40)
    put(tmp_path, "b.txt", b"second file\n" * 40)
    os.chmod(tmp_path / "secret.txt", 0)
    kw = {"preexec_fn": _drop_dac_override} if os.geteuid() == 0 else {}
    try:
        r = run("--no-neural", "a.txt", "secret.txt", "b.txt", cwd=tmp_path, **kw)
    except subprocess.SubprocessError as e:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE: {e}")
    assert one_error(r, "secret.txt") == "Permission denied"
    assert listing(tmp_path) == {"a.txt", "b.txt", "secret.txt", "a.txt.nc", "b.txt.nc"}
    os.chmod(tmp_path / "secret.txt", 0o644)


def test_read_error_mid_input_is_a_per_file_error(tmp_path):
    """A file whose read fails (EIO: /proc/self/mem at offset 0) with -c: one line, the next file
    is still done, exit 1. (On stdout, like gzip -c, what was written before the error stays in
    the stream: here the 10-byte file header of the failed archive.)"""
    if not os.path.exists("/proc/self/mem"):
        pytest.skip("no /proc/self/mem")
    put(tmp_path, "b.txt", b"second file\n" * 40)
    r = run("--no-neural", "-c", "/proc/self/mem", "b.txt", cwd=tmp_path)
    assert one_error(r, "/proc/self/mem") == "Input/output error"
    good = run("--no-neural", "-c", "b.txt", cwd=tmp_path).stdout
    assert r.stdout.endswith(good) and len(r.stdout) - len(good) <= 10


def test_archive_strings_cannot_name_files_or_drive_the_terminal(tmp_path):
    """An archive stores no file name: output names come only from the command line (FILE.nc ->
    FILE, -o), so `../` or absolute-path attacks through the archive do not apply. The only
    strings it carries are the model file name and backend fingerprint of the model frame,
    used in messages: a hostile `../../x\\x1b[2J` name is shown escaped on one line, never used
    as a path and never interpreted by the terminal."""
    blob = (REPO / "formats" / "golden" / "v1-neural-1lane.nc").read_bytes()
    from nacrith import container as C
    f = io.BytesIO(blob)
    C.read_file_header(f)
    m = C.read_frame(f, 0)
    rest = blob[f.tell():]
    m.name = "../../evil\x1b[2J\x07\u202e.gguf"
    m.backend = "0.0.1 x86_64 \x1b]0;owned\x07"
    m.sha256 = bytes(32)                               # no installed model has this hash
    put(tmp_path, "x.txt.nc", blob[:10] + m.pack() + rest)
    r = run("-d", "x.txt.nc", cwd=tmp_path)
    reason = one_error(r, "x.txt.nc")
    assert "\x1b" not in reason and "\x07" not in reason and "\u202e" not in reason
    assert "../../evil\\x1b[2J\\x07\\u202e.gguf" in reason
    assert listing(tmp_path) == {"x.txt.nc"}
    assert not (tmp_path.parent.parent / "evil").exists()
    r = run("-l", "x.txt.nc", cwd=tmp_path)
    out = r.stdout.decode()
    assert r.returncode == 0 and "\x1b" not in out and "\x07" not in out
    assert "  model        ../../evil\\x1b[2J\\x07\\u202e.gguf\n" in out
    assert "  backend      0.0.1 x86_64 \\x1b]0;owned\\x07\n" in out
