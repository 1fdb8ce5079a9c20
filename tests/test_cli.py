"""Command line: every case runs `python -m nacrith` in a fresh process (exact bytes, messages,
exit codes, and which files exist afterwards)."""
import errno
import importlib.util
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xxhash

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"          # ../shared/corpus beside the repository
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
ENV.pop("NACRITH_DEBUG", None)


def corpus(name: str) -> bytes:
    p = CORPUS / name
    if not p.is_file():
        pytest.skip(f"corpus file {p} not found (expected ../shared/corpus beside the repository)")
    return p.read_bytes()


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
    assert out.read_bytes()[:4] == b"NACR" and out.stat().st_size < len(data) // 10
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
    assert blob[:4] == b"NACR"
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
    assert r.stderr.decode() == "empty: 0 -> 24 bytes (- bpb, empty)\n"
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
def _future_version(blob: bytes) -> bytes:
    b = bytearray(blob)
    b[4] = 2
    b[6:10] = struct.pack("<I", xxhash.xxh32_intdigest(bytes(b[:6])))
    return bytes(b)


def _flip(blob: bytes, pos: int, bit: int = 0) -> bytes:
    b = bytearray(blob)
    b[pos % len(b)] ^= 1 << bit
    return bytes(b)


DAMAGE = {
    "truncated_half": (lambda b: b[:len(b) // 2], "truncated archive"),
    "truncated_end_frame": (lambda b: b[:-1], "truncated archive"),
    "truncated_header": (lambda b: b[:7], "truncated archive (in file header)"),
    "empty": (lambda b: b"", "not a nacrith archive (bad magic)"),
    "flip_header_flags": (lambda b: _flip(b, 5), "corrupt file header (checksum mismatch)"),
    "flip_header_checksum": (lambda b: _flip(b, 8, 3), "corrupt file header (checksum mismatch)"),
    "flip_frame_header": (lambda b: _flip(b, 12, 2), "corrupt frame 0 header"),
    "flip_payload": (lambda b: _flip(b, len(b) // 2, 5), "payload checksum mismatch"),
    "wrong_magic": (lambda b: b"GZIP" + b[4:], "not a nacrith archive (bad magic)"),
    "future_version": (_future_version, "archive format version 2 is newer than this nacrith"),
    "trailing_garbage": (lambda b: b + b"\x00", "data after end frame"),
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
    from nacrith import container
    payload = container.scan_bytes(blob)[2][0].payload_len
    r = run("info", "a.txt.nc", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, b"")
    out = r.stdout.decode()
    assert out.startswith("a.txt.nc:\n  format       nacrith v1\n")
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
        "nacrith: a.txt: model not found: no-such-model.gguf (presets: smollm2)\n"
        "nacrith: b.txt: model not found: no-such-model.gguf (presets: smollm2)\n")
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
    r = run("-V", cwd=tmp_path)
    assert r.returncode == 0 and re.fullmatch(rb"nacrith \d+\.\d+\.\d+\S*\n", r.stdout)


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
    assert (rc, err) == (0, b"") and out.startswith(b"NACR")
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
    assert re.search(r"^  model        \S+\.gguf$", out, re.M), out
    assert re.search(r"^  sha256       [0-9a-f]{64}$", out, re.M), out
    assert "  params       ctx=2048 slide=512 n_keep=1 threads=1 lanes=1 " in out
    r = run("-d", "-q", "-o", "back.txt", "alice.txt.nc", cwd=tmp_path, timeout=600)
    assert (r.returncode, r.stderr) == (0, b"")
    assert (tmp_path / "back.txt").read_bytes() == data
    assert listing(tmp_path) == {"alice.txt", "alice.txt.nc", "back.txt"}


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
