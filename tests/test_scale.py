"""Scale (issue 7): workers, devices, batch archival with manifest and resume, the Ray engine.

Neural cases use --threads 1 and inputs of a few hundred bytes (the test box has 2 shared
cores); every archive is compared byte for byte with the one a single process makes."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nacrith import workers
from nacrith.errors import NacritError

from helpers import corpus, fresh_python
from test_cli import ENV, listing, one_error, popen, put, run

SEG = "400"                                 # small segments: one file -> several parallel tasks
NEURAL = ("--threads", "1", "--segment-size", SEG)


def _files() -> dict:
    return {"a.txt": corpus("alice29.txt")[2000:3000],     # 3 segments of 400 bytes or less
            "sub/x.1": corpus("xargs.1")[:300],
            "sub/k.bin": corpus("kennedy.xls")[:2000],      # binary: zstd/stored, no model
            "empty": b""}


def _tree(d: Path, files: dict) -> Path:
    for name, data in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    return d


def _archives(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*.nc"))}


def _manifest(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The archives one process (no workers) makes of _files(), file by file."""
    d = _tree(tmp_path_factory.mktemp("ref"), _files())
    names = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    r = run(*NEURAL, *names, cwd=d, timeout=600)
    assert (r.returncode, r.stderr) == (0, b""), r.stderr
    return _archives(d)


# ---------------------------------------------------------------- device assignment (no GPU)
def test_assign_gpus_round_robin_each_worker_sees_one_device():
    a = workers.assign(3, ["0", "1"], None, cpus=8)
    assert [(x.device, x.env, x.n_gpu_layers, x.main_gpu, x.threads) for x in a] == [
        ("0", {"CUDA_VISIBLE_DEVICES": "0"}, workers.GPU_ALL_LAYERS, 0, 2),
        ("1", {"CUDA_VISIBLE_DEVICES": "1"}, workers.GPU_ALL_LAYERS, 0, 2),
        ("0", {"CUDA_VISIBLE_DEVICES": "0"}, workers.GPU_ALL_LAYERS, 0, 2)]
    assert [x.n_gpu_layers for x in workers.assign(2, ["3"], 1, n_gpu_layers=12)] == [12, 12]
    assert workers.assign(1, ["5"], 1)[0].describe() == "worker 0: cuda:5, threads 1"


def test_assign_cpu_splits_threads_unless_given():
    assert [x.threads for x in workers.assign(2, [], None, cpus=2)] == [1, 1]
    assert [x.threads for x in workers.assign(2, [], None, cpus=16)] == [4, 4]  # default cap
    assert [x.threads for x in workers.assign(3, [], None, cpus=2)] == [1, 1, 1]
    assert [x.threads for x in workers.assign(2, [], 3, cpus=2)] == [3, 3]      # explicit wins
    a = workers.assign(2, [], 1)
    assert [(x.device, x.env, x.n_gpu_layers) for x in a] == [
        ("cpu", {"CUDA_VISIBLE_DEVICES": ""}, 0)] * 2
    o = workers.worker_options(workers.api.Options(), a[1], "compress")
    assert (o.threads, o.n_gpu_layers, o.main_gpu, o.slide) == (1, 0, 0, 512)


def test_parse_devices():
    assert workers.parse_devices("0, 2") == ["0", "2"]
    assert workers.parse_devices(None) == workers.parse_devices("cpu") == []
    with pytest.raises(NacritError):
        workers.parse_devices("gpu0")
    with pytest.raises(NacritError):
        workers.assign(0, [], 1)


@pytest.mark.parametrize("args,msg", [
    (["--devices", "x", "f"], "--devices"),
    (["--resume", "f"], "--resume needs compress -r"),
    (["--address", "h:1", "f"], "--address needs --engine ray"),
    (["--engine", "spark", "f"], "--engine"),
    (["-r", "-c", "d"], "-r writes each output beside its input"),
    (["--segment-size", "0", "f"], "--segment-size")])
def test_scale_usage_errors_exit_2(tmp_path, args, msg):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2 and msg in r.stderr.decode(), r.stderr
    assert listing(tmp_path) == set()


def test_peak_rss_is_the_workers_own_not_its_parents():
    """A process whose peak was 300 MiB spawns a child: the child's ru_maxrss inherits that peak
    across exec, its peak_rss() (VmHWM) does not."""
    r = fresh_python(
        "import subprocess, sys\n"
        "from nacrith.workers import peak_rss\n"
        "b = b'x' * (300 << 20); del b\n"
        "print(peak_rss())\n"
        "sys.stdout.flush()\n"
        "subprocess.run([sys.executable, '-c', 'import resource; from nacrith.workers import "
        "peak_rss; print(peak_rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)'])")
    assert r.returncode == 0, r.stderr
    parent, (child, child_maxrss) = [list(map(int, x.split())) for x in r.stdout.splitlines()]
    assert parent[0] >= 300 << 20
    assert child_maxrss >= 300 << 20                # what the old report said
    assert child < 100 << 20, child


# ---------------------------------------------------------------- identical bytes whatever N
def test_workers_make_the_same_archives_and_decode_them(tmp_path, reference):
    """2 workers: a 3-segment file coded in parallel + files spread over workers = exactly the
    single-process archives; then decompress -r with 2 workers restores every byte."""
    files = _files()
    d = _tree(tmp_path, files)
    r = run("-r", "-q", "--workers", "2", *NEURAL, ".", cwd=d, timeout=600)
    assert (r.returncode, r.stderr) == (0, b""), r.stderr
    assert _archives(d) == reference
    info = json.loads(run("info", "--json", "a.txt.nc", cwd=d).stdout)
    assert [s["method"] for s in info["segments"]] == ["neural"] * 3
    for name in files:
        (d / name).unlink()
    r = run("-d", "-r", "--workers", "2", "--threads", "1", ".", cwd=d, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stderr.decode().startswith("4 files restored, 0 failed in ")
    assert {n: (d / n).read_bytes() for n in files} == files


def test_inflight_workers_make_the_same_archives_and_decode_them(tmp_path, reference):
    """--inflight 3 (one worker, its 3 segments' lanes batched through one shared engine:
    nacrith/hub.py): exactly the single-process archives; decompress -r --inflight 3 restores
    every byte."""
    files = _files()
    d = _tree(tmp_path, files)
    r = run("-r", "-v", "--inflight", "3", *NEURAL, ".", cwd=d, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stderr.decode().splitlines()[0].startswith(
        "worker 0: cpu, threads 1, 3 segments in flight, peak RSS "), r.stderr
    assert _archives(d) == reference
    for name in files:
        (d / name).unlink()
    r = run("-d", "-r", "--inflight", "3", "--threads", "1", ".", cwd=d, timeout=600)
    assert r.returncode == 0, r.stderr
    assert {n: (d / n).read_bytes() for n in files} == files


def test_inflight_needs_the_portable_engine(tmp_path):
    put(tmp_path, "a.txt", b"hello " * 20)
    r = run("--inflight", "2", "--backend", "llama", "a.txt", cwd=tmp_path)
    assert (r.returncode, r.stderr.decode()) == (
        1, "nacrith: --inflight above 1 needs the portable engine (llama.cpp codes one segment "
           "per worker at a time)\n")
    r = run("--inflight", "0", "a.txt", cwd=tmp_path)
    assert r.returncode == 2 and b"--inflight" in r.stderr


def test_pool_backend_and_inflight_defaults():
    """--devices with the default model runs the portable engine on the GPUs with
    DEVICE_INFLIGHT segments per worker; Gemma-3 the portable engine on the CPU and llama.cpp
    with --devices (no device gemma3); --gpu-layers or a custom GGUF keeps llama.cpp;
    compress -r without workers codes FILES_AT_ONCE files at once with the portable engine."""
    O = workers.api.Options
    assert workers.pool_backend(O(), ["0"]) == "device"
    assert workers.pool_backend(O(), []) == "portable"
    assert workers.pool_backend(O(n_gpu_layers=99), ["0"]) == "llama"
    assert workers.pool_backend(O(backend="portable"), ["0"]) == "portable"
    assert workers.pool_backend(O(model="gemma3"), ["0"]) == "llama"      # offloaded: no device
    assert workers.pool_backend(O(model="gemma3"), []) == "portable"
    assert workers.pool_backend(O(model="x.gguf"), []) == "llama"
    assert workers.pool_inflight(O(), ["0"], None) == workers.DEVICE_INFLIGHT == 64
    assert workers.pool_inflight(O(), [], None) == 1
    assert workers.pool_inflight(O(n_gpu_layers=99), ["0"], None) == 1
    with pytest.raises(NacritError):
        workers.pool_inflight(O(backend="llama"), [], 2)
    assert workers.files_at_once(O(), "compress", 2) == workers.FILES_AT_ONCE == 8
    assert [workers.files_at_once(O(), "compress", 1),          # one file: nothing to share
            workers.files_at_once(O(), "decompress", 9),        # may need llama.cpp
            workers.files_at_once(O(neural=False), "compress", 9),
            workers.files_at_once(O(backend="llama"), "compress", 9)] == [1, 1, 1, 1]
    a = workers.assign(1, ["0"], 1, inflight=64)[0]
    assert a.describe() == "worker 0: cuda:0, threads 1, 64 segments in flight"
    assert workers.worker_options(O(), a, "compress").backend == "device"
    assert workers.worker_options(O(), workers.assign(1, [], 1)[0], "decompress").backend == \
        "portable"


# ---------------------------------------------------------------- a worker that dies
DIES = "NACRITH_TEST_WORKER_DIES"           # test hook: nacrith.workers._doomed


def test_a_task_that_kills_its_worker_runs_alone_on_retry(monkeypatch):
    """3 tasks in flight per worker, one of which kills it: the two beside it are retried (and
    succeed), the killer is then tried alone, so it fails after MAX_RETRIES retries without
    using up its neighbours' retries; the pool goes on."""
    monkeypatch.setenv(DIES, "KILLME")
    opts = workers.api.Options(neural=False, threads=1)
    blocks = [b"alpha beta " * 30, b"xKILLMEx " * 30, b"gamma delta " * 30, b"eps " * 40]
    pool = workers.LocalPool(1, [], opts, "compress", inflight=3)
    try:
        pool.wait_ready()
        assert pool.slots == 3
        futures = [pool.submit("encode", b) for b in blocks]
        for i in (0, 2, 3):
            assert futures[i].result(timeout=300) == \
                workers.api.code_segment(blocks[i], workers.api.normalized(opts))
        with pytest.raises(NacritError) as e:
            futures[1].result(timeout=300)
        assert str(e.value) == \
            "worker died on this task 3 times (last: nacrith-worker-0 killed by SIGKILL)"
        assert len(pool.deaths) == 3
    finally:
        pool.close()


def test_pool_replaces_a_dead_worker_retries_its_task_but_not_a_task_error(monkeypatch):
    """LocalPool alone, zstd only (no model): the first worker SIGKILLs itself on its first task,
    a new one codes it (same result as in-process); a task that kills every worker fails after
    MAX_RETRIES retries and the pool goes on; a task that raises is not retried."""
    monkeypatch.setenv(DIES, "first")
    opts = workers.api.Options(neural=False, threads=1)
    block, doomed = b"alpha beta " * 30, b"xKILLMEx " * 30
    pool = workers.LocalPool(1, [], opts, "compress")
    try:
        pool.wait_ready()
        monkeypatch.setenv(DIES, "KILLME")             # for the workers started from now on
        got = pool.submit("encode", block).result(timeout=120)
        assert got == workers.api.code_segment(block, workers.api.normalized(opts))
        assert (pool.deaths, pool.generation) == (["nacrith-worker-0 killed by SIGKILL"], [1])
        with pytest.raises(NacritError) as e:
            pool.submit("encode", doomed).result(timeout=300)
        assert str(e.value) == \
            "worker died on this task 3 times (last: nacrith-worker-0 killed by SIGKILL)"
        assert (len(pool.deaths), pool.generation) == (4, [3])
        with pytest.raises(NacritError) as e:
            pool.submit("bogus", block).result(timeout=120)
        assert str(e.value) == "unknown task 'bogus'"
        assert pool.submit("encode", block).result(timeout=120) == got
        assert (len(pool.deaths), pool.generation) == (4, [4])  # the bogus task: no death
    finally:
        pool.close()
    assert not pool.procs[0].is_alive()


def _deaths(stderr: bytes) -> list:
    return [x for x in stderr.decode().splitlines() if "replaced by a new worker" in x]


def test_dead_workers_are_replaced_and_the_batch_is_byte_identical(tmp_path, reference,
                                                                    monkeypatch):
    """Both first workers die on their first task, in compress -r and in decompress -r: the
    tasks are retried on new workers, the archives equal a single-process run's, the manifest
    is complete, every byte is restored, and -v names each death."""
    monkeypatch.setitem(ENV, DIES, "first")
    files = _files()
    d = _tree(tmp_path / "d", files)
    r = run("-r", "-v", "--workers", "2", *NEURAL, "--manifest", "m.jsonl", "d", cwd=tmp_path,
            timeout=600)
    assert r.returncode == 0, r.stderr
    assert sorted(_deaths(r.stderr)) == [
        f"nacrith-worker-{i} killed by SIGKILL: replaced by a new worker, its task retried"
        for i in (0, 1)], r.stderr
    assert _archives(d) == reference
    m = _manifest(tmp_path / "m.jsonl")
    assert sorted(x["path"] for x in m) == sorted(f"d/{n}" for n in files)
    assert all("error" not in x for x in m)
    for name in files:
        (d / name).unlink()
    r = run("-d", "-r", "-v", "--workers", "2", "--threads", "1", "d", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(_deaths(r.stderr)) == 2, r.stderr
    assert {n: (d / n).read_bytes() for n in files} == files


def test_a_task_that_kills_every_worker_fails_its_file_only(tmp_path, reference, monkeypatch):
    """A segment on which every worker dies: that file fails after 2 retries (one line, an error
    line in the manifest, no output, no temp file), the others complete, exit 1; alone, the same
    file is one error line and exit 1, no traceback."""
    monkeypatch.setitem(ENV, DIES, "KILLME")
    reason = "worker died on this task 3 times (last: nacrith-worker-{} killed by SIGKILL)"
    bad = b"Nothing to see here. KILLME. " * 8
    d = _tree(tmp_path / "d", {**_files(), "bad.txt": bad})
    r = run("-r", "--workers", "2", *NEURAL, "--manifest", "m.jsonl", "d", cwd=tmp_path,
            timeout=600)
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 1 and len(lines) == 2, r.stderr
    assert lines[0] in [f"nacrith: d/bad.txt: {reason.format(i)}" for i in (0, 1)], lines
    assert lines[1].startswith("4 files compressed, 1 failed; "), lines
    assert _archives(d) == reference
    m = {x["path"]: x for x in _manifest(tmp_path / "m.jsonl")}
    assert len(m) == 5 and m["d/bad.txt"] == {"path": "d/bad.txt",
                                             "error": lines[0].split(": ", 2)[2]}
    assert [p for p in d.rglob("*") if p.name.startswith(".")] == []
    assert (d / "bad.txt").read_bytes() == bad

    r = run("--workers", "1", "--threads", "1", "bad.txt", cwd=d, timeout=600)
    assert one_error(r, "bad.txt") == reason.format(0)
    assert "bad.txt.nc" not in listing(d) and not [n for n in listing(d) if n.endswith(".tmp")]


# ---------------------------------------------------------------- bench --devices
def test_bench_reports_one_row_per_device_each_seeing_only_its_device(tmp_path):
    """Fake devices on CPU: each worker runs with CUDA_VISIBLE_DEVICES = its device (as reported
    from inside the worker) and codes the same text; the total adds the rows up."""
    text = corpus("alice29.txt")[2000:2300]
    put(tmp_path, "t.txt", text)
    r = run("bench", "--devices", "0,1", "--backend", "portable", "--threads", "1", "--file",
            "t.txt", "--json", cwd=tmp_path, timeout=600)
    assert (r.returncode, r.stderr) == (0, b""), r.stderr
    rep = json.loads(r.stdout)
    rows = rep["workers"]
    assert [(x["worker"], x["device"], x["cuda_visible_devices"], x["threads"], x["bytes"],
             x["in_flight"]) for x in rows] == [(0, "0", "0", 1, 300, 1), (1, "1", "1", 1, 300, 1)]
    assert (rep["text"], rep["bytes"]) == ("t.txt", 300)
    assert rows[0]["tokens"] == rows[1]["tokens"] > 50             # same text, same tokens
    for x in rows:
        assert x["tokens_per_s"] == round(x["tokens"] / x["seconds"], 1)
        assert 200 << 20 < x["peak_rss"] < 2 << 30                  # the model is in there
    t = rep["total"]
    assert (t["bytes"], t["tokens"], t["seconds"], t["peak_rss"]) == (
        600, 2 * rows[0]["tokens"], max(x["seconds"] for x in rows),
        rows[0]["peak_rss"] + rows[1]["peak_rss"])


def test_bench_inflight_codes_that_many_copies_at_once(tmp_path):
    """--inflight 2: the worker codes two copies of the text at once through one shared engine;
    its row counts both (twice the bytes and tokens of one coding)."""
    put(tmp_path, "t.txt", corpus("alice29.txt")[2000:2200])
    r = run("bench", "--inflight", "2", "--threads", "1", "--file", "t.txt", "--json",
            cwd=tmp_path, timeout=600)
    assert (r.returncode, r.stderr) == (0, b""), r.stderr
    rep = json.loads(r.stdout)
    (row,) = rep["workers"]
    assert (row["device"], row["in_flight"], row["bytes"], rep["bytes"]) == ("cpu", 2, 400, 200)
    assert row["tokens"] % 2 == 0 and row["tokens"] > 60
    assert rep["total"]["bytes"] == 400 and rep["total"]["tokens"] == row["tokens"]


def test_bench_table_round_robin_and_a_missing_file(tmp_path):
    """3 workers on 2 fake devices, the built-in text, the table form; a missing --file is one
    error line before any worker starts."""
    r = run("bench", "--workers", "3", "--devices", "0,1", "--backend", "portable", "--threads",
            "1", cwd=tmp_path, timeout=600)
    assert (r.returncode, r.stderr) == (0, b""), r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0] == (f"<built-in text>: {len(workers.BENCH_TEXT)} bytes per coding, each "
                        "worker codes it --inflight times at once")
    assert lines[1].split() == ["worker", "device", "CUDA_VISIBLE_DEVICES", "in", "flight",
                                "tokens", "seconds", "tokens/s", "bytes/s", "peak", "RSS"]
    assert [x.split()[:3] for x in lines[2:]] == [
        ["0", "cuda:0", "0"], ["1", "cuda:1", "1"], ["2", "cuda:0", "0"], ["total", "3", "workers"]]
    r = run("bench", "--file", "nope.txt", cwd=tmp_path)
    assert one_error(r, "nope.txt") == "No such file or directory"


# ---------------------------------------------------------------- batch: manifest, failure
def test_batch_failure_does_not_stop_the_others(tmp_path):
    """An existing output (no -f) fails that file only: one line, an error line in the manifest,
    the others compressed, exit 1; symbolic links and our temp files are not inputs."""
    d = tmp_path / "d"
    _tree(d, {"a.txt": b"alpha " * 100, "b/c.txt": b"gamma " * 50, "b/d.txt": b"delta"})
    put(d / "b", "c.txt.nc", b"not mine")
    os.symlink("a.txt", d / "link")
    put(d, ".a.txt.nc.abcd1234.tmp", b"left by a killed run")
    r = run("-r", "--no-neural", "--manifest", "m.jsonl", "d", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.decode().splitlines()[0] == \
        "nacrith: d/b/c.txt.nc: already exists (use -f to overwrite)"
    assert r.stderr.decode().splitlines()[1].startswith(
        "2 files compressed, 1 failed; 605 -> ")
    assert (d / "b" / "c.txt.nc").read_bytes() == b"not mine"
    m = _manifest(tmp_path / "m.jsonl")
    assert [x["path"] for x in m] == ["d/a.txt", "d/b/c.txt", "d/b/d.txt"]
    assert m[1] == {"path": "d/b/c.txt", "error": "already exists (use -f to overwrite)"}
    import hashlib
    assert m[0]["sha256"] == hashlib.sha256(b"alpha " * 100).hexdigest()
    assert (m[0]["size"], m[0]["archive"], m[0]["method"]) == (600, "d/a.txt.nc", "zstd")
    assert m[0]["archive_size"] == (d / "a.txt.nc").stat().st_size
    assert m[0]["bpb"] == round(m[0]["archive_size"] * 8 / 600, 4)
    assert not (d / "link.nc").exists()


def _children(pid: int) -> list:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _gone(pids, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for q in pids:
            try:
                state = Path(f"/proc/{q}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(q)
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_kill_in_the_middle_then_resume_loses_and_redoes_nothing(tmp_path, reference):
    """SIGKILL the batch once two files are in the manifest: the workers die with it; --resume
    then finishes: every archive identical to a single-process one, the two finished archives
    untouched (same inode, same mtime), no temp file left, one manifest line per file."""
    files = {**_files(), **{f"more/t{i}.txt": corpus("lcet10.txt")[i * 300:(i + 1) * 300]
                            for i in range(4)}}
    d = _tree(tmp_path / "d", files)
    args = ("-r", "--workers", "2", *NEURAL, "--manifest", "m.jsonl", "d")
    p = popen(*args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    man = tmp_path / "m.jsonl"
    deadline = time.monotonic() + 300
    kids = []
    while not (man.exists() and len([x for x in man.read_text().splitlines()
                                      if x.endswith("}")]) >= 2):
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < deadline
        kids = _children(p.pid) or kids
        time.sleep(0.05)
    kids = _children(p.pid) or kids
    p.kill()
    p.wait()
    assert _gone(kids), "workers outlived their parent"
    before = {x["path"]: x for x in _manifest(man)}
    assert len(before) < len(files), "finished before the kill"
    kept = {x["archive"]: (os.stat(tmp_path / x["archive"]).st_ino,
                           os.stat(tmp_path / x["archive"]).st_mtime_ns)
            for x in before.values()}
    r = run(*args, "--resume", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    summary = r.stderr.decode()
    assert summary.startswith(f"{len(files) - len(before)} files compressed, "
                              f"{len(before)} already done, 0 failed; "), summary
    for a, ident in kept.items():
        st = os.stat(tmp_path / a)
        assert (st.st_ino, st.st_mtime_ns) == ident, f"{a} was redone"
    assert not [n for n in os.listdir(tmp_path) + [q.name for q in d.rglob("*")]
                if n.endswith(".tmp")]
    m = _manifest(man)
    assert sorted(x["path"] for x in m) == sorted(f"d/{n}" for n in files)
    assert all("error" not in x for x in m)
    got = _archives(d)
    assert {k: v for k, v in got.items() if k in reference} == reference
    r = run("test", "-r", "-q", "--threads", "1", "d", cwd=tmp_path, timeout=600)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), r.stderr
    r = run("-r", "--resume", "--no-neural", "--manifest", "m.jsonl", "d", cwd=tmp_path)
    assert r.stderr.decode().startswith(f"0 files compressed, {len(files)} already done, "
                                        "0 failed;"), r.stderr
    assert len(_manifest(man)) == len(files)


def test_resume_ignores_a_torn_line_and_replaces_a_stale_archive(tmp_path):
    d = _tree(tmp_path / "d", {"a": b"one " * 50, "b": b"two " * 50})
    r = run("-r", "-q", "--no-neural", "--manifest", "m.jsonl", "d", cwd=tmp_path)
    assert r.returncode == 0
    man = tmp_path / "m.jsonl"
    man.write_bytes(man.read_bytes() + b'{"path": "d/c", "si')      # killed mid-line
    (d / "b").write_bytes(b"changed " * 30)                          # archive now stale
    r = run("-r", "--resume", "--no-neural", "--manifest", "m.jsonl", "d", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.decode().startswith("1 files compressed, 1 already done, 0 failed;")
    lines = man.read_text().splitlines()
    assert lines[2] == '{"path": "d/c", "si' and json.loads(lines[3])["path"] == "d/b"
    assert run("-dc", "d/b.nc", cwd=tmp_path).stdout == b"changed " * 30


# ---------------------------------------------------------------- signals
def test_ctrl_c_terminates_workers_and_removes_temp_files(tmp_path):
    d = _tree(tmp_path, {"a.txt": corpus("alice29.txt")[:3000], "b.txt": corpus("asyoulik.txt")[:3000]})
    p = popen("--workers", "2", "--threads", "1", "a.txt", "b.txt", cwd=d,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not any(n.endswith(".tmp") for n in listing(d)):
        assert p.poll() is None, p.stderr.read()       # exited: reading stderr cannot block
        if time.monotonic() > deadline:
            p.kill()
            raise AssertionError("no temp file after 300 s")
        time.sleep(0.05)
    kids = _children(p.pid)
    assert len(kids) >= 2
    time.sleep(1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert (p.returncode, err) == (130, b"nacrith: interrupted\n")
    assert listing(d) == {"a.txt", "b.txt"}
    assert _gone(kids)


def test_ctrl_c_during_files_at_once_removes_temp_files(tmp_path):
    """-r without --workers codes its files at once in one process (hub.py): Ctrl-C while both
    are being coded ends the run with 130 at once (the waiting coders are cancelled), no temp
    file and no archive left."""
    d = _tree(tmp_path, {"a.txt": corpus("alice29.txt")[:3000],
                         "b.txt": corpus("asyoulik.txt")[:3000]})
    p = popen("-r", "--threads", "1", ".", cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while sum(n.endswith(".tmp") for n in listing(d)) < 2:
        assert p.poll() is None, p.stderr.read()
        if time.monotonic() > deadline:
            p.kill()
            raise AssertionError("no temp files after 300 s")
        time.sleep(0.05)
    time.sleep(6)                                   # the model loaded, both files coding
    assert p.poll() is None, p.stderr.read()
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert (p.returncode, err) == (130, b"nacrith: interrupted\n")
    assert time.monotonic() - t < 10
    assert listing(d) == {"a.txt", "b.txt", "nacrith-manifest.jsonl"}


# ---------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_address():
    """One local Ray (2 CPUs) for every Ray test here; each CLI run joins it as a client."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        for env in (os.environ, ENV):   # a throw-away local cluster: no token to share
            mp.setitem(env, "RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


def test_ray_engine_makes_the_same_archives(tmp_path, reference, ray_address):
    """The CLI on a local Ray, 2 threaded actors coding 2 segments at once each (--inflight 2,
    one shared engine per actor): the same archives as one process."""
    d = _tree(tmp_path / "d", _files())
    r = run("-r", "--engine", "ray", "--address", ray_address, "--workers", "2",
            "--inflight", "2", *NEURAL,
            "--manifest", "m.jsonl", "d", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stderr.decode().startswith("4 files compressed, 0 failed;"), r.stderr
    assert _archives(d) == reference
    assert len(_manifest(tmp_path / "m.jsonl")) == 4


def test_ray_engine_tests_and_restores_the_batch(tmp_path, reference, ray_address):
    """test -r and decompress -r on Ray actors, from the single-process archives: every
    archive OK, every original byte restored."""
    files = _files()
    d = tmp_path / "d"
    for name, blob in reference.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(blob)
    ray_args = ("--engine", "ray", "--address", ray_address, "--workers", "2", "--threads", "1")
    r = run("test", "-r", *ray_args, "d", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.decode().splitlines()) == sorted(f"d/{n}.nc: OK" for n in files)
    assert r.stderr.decode().startswith("4 files OK, 0 failed in "), r.stderr
    r = run("decompress", "-r", *ray_args, "d", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stderr.decode().startswith("4 files restored, 0 failed in "), r.stderr
    assert {n: (d / n).read_bytes() for n in files} == files
    assert _archives(d) == reference                # decompress keeps the archives
