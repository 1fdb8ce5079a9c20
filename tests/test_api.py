"""Library API: threads, atomic file helpers, typed options and results, error classes."""
import hashlib
import io
import os
import subprocess
import sys
import threading

import pytest

import nacrith
from nacrith import engine

from helpers import REPO, corpus


@pytest.fixture(scope="module")
def texts():
    """Four different short texts (250-300 bytes each)."""
    return [corpus("alice29.txt")[2000:2250], corpus("xargs.1")[2000:2250],
            corpus("fields.c")[:300], corpus("alice29.txt")[9000:9280]]


def run_threads(fn, items):
    """fn(item) in one thread per item, started together; results (or exceptions) in order."""
    out = [None] * len(items)
    go = threading.Barrier(len(items))

    def body(i):
        go.wait()
        try:
            out[i] = fn(items[i])
        except BaseException as e:      # noqa: BLE001 - reported by the assertion below
            out[i] = e
    ts = [threading.Thread(target=body, args=(i,)) for i in range(len(items))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(600)
    assert not any(t.is_alive() for t in ts)
    return out


# ---------------------------------------------------------------- threads
def test_four_threads_compress_and_decompress_at_once(texts):
    """4 threads x different texts, the same settings (so the same engine key): every archive
    equals the one-thread archive and decodes to its exact bytes, also 4 at once."""
    single = [nacrith.compress(t, threads=1) for t in texts]
    assert all(nacrith.info(io.BytesIO(b))["segments"][0]["method"] == "neural" for b in single)
    blobs = run_threads(lambda t: nacrith.compress(t, threads=1), texts)
    assert blobs == single
    back = run_threads(nacrith.decompress, single)
    assert back == texts


def test_engine_pool_leases_one_engine_per_thread_and_bounds_idle():
    """Unit test of nacrith.engine with stand-in engines: no two threads ever hold the same
    engine, a held engine is never dropped, at most max_idle idle ones are kept."""
    pool = engine.EnginePool(max_idle=2)
    made, held, lock = [], set(), threading.Lock()
    errors = []

    def load():
        e = object()
        made.append(e)
        return e

    def body(key):
        for _ in range(50):
            with pool.scope():
                e = pool.get(key, load)
                with lock:
                    if id(e) in held:
                        errors.append("shared")
                    held.add(id(e))
                assert pool.get(key, load) is e         # same thread, same key: same engine
                with lock:
                    held.discard(id(e))
    ts = [threading.Thread(target=body, args=(k % 2,)) for k in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    assert len(pool.idle) <= 2 and pool.held() is None
    with pool.scope():
        a = pool.get("a", load)
        b = pool.get("b", load)     # another key: "a" goes back to idle first
        assert a is not b and pool.held() is b
        assert any(e is a for _, e in pool.idle)


# ---------------------------------------------------------------- files
TEXT = b"The same text, again and again; a file worth keeping.\n" * 40


def test_compress_file_refuses_its_own_input_and_keeps_it(tmp_path):
    a = tmp_path / "a.txt"
    a.write_bytes(TEXT)
    os.link(a, tmp_path / "hard.txt")
    for src, dst in [(a, a), (str(a), str(tmp_path / "." / "a.txt")), (a, tmp_path / "hard.txt")]:
        with pytest.raises(nacrith.NacritError) as e:
            nacrith.compress_file(src, dst, neural=False)
        assert str(e.value) == f"{src}: input and output are the same file"
        with pytest.raises(nacrith.NacritError, match="input and output are the same file"):
            nacrith.decompress_file(src, dst)
    assert a.read_bytes() == TEXT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "hard.txt"]


def test_file_helpers_are_atomic_and_leave_nothing_on_error(tmp_path):
    a = tmp_path / "a.txt"
    a.write_bytes(TEXT)
    r = nacrith.compress_file(a, neural=False)             # default output: a.txt.nc
    blob = (tmp_path / "a.txt.nc").read_bytes()
    assert r == nacrith.CompressResult(len(TEXT), len(blob), ("zstd",))
    assert blob == nacrith.compress(TEXT, neural=False)
    with pytest.raises(nacrith.BadOption, match="ctx must be a multiple of 256"):
        nacrith.compress_file(a, tmp_path / "bad.nc", ctx=1000)
    with pytest.raises(nacrith.BadOption, match="unknown option 'preset'"):
        nacrith.compress_file(a, tmp_path / "bad.nc", preset=9)
    with pytest.raises(nacrith.BadOption, match="level must be an integer 1..9"):
        nacrith.compress_file(a, tmp_path / "bad.nc", level=10)
    (tmp_path / "broken.nc").write_bytes(blob[:-3] + b"\0\0\0")
    (tmp_path / "keep.txt").write_bytes(b"precious")
    with pytest.raises(nacrith.CorruptArchive):
        nacrith.decompress_file(tmp_path / "broken.nc", tmp_path / "keep.txt")
    with pytest.raises(nacrith.CorruptArchive):
        nacrith.decompress_file(tmp_path / "broken.nc", tmp_path / "new.txt")
    assert (tmp_path / "keep.txt").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "a.txt.nc", "broken.nc",
                                                          "keep.txt"]
    r = nacrith.decompress_file(tmp_path / "a.txt.nc", tmp_path / "keep.txt")   # replaced
    assert r == nacrith.DecompressResult(len(TEXT), len(blob), 1)
    assert (tmp_path / "keep.txt").read_bytes() == TEXT
    with pytest.raises(nacrith.NacritError, match="no .nc suffix"):
        nacrith.decompress_file(a)


def test_write_all_handles_short_none_and_zero_writes():
    from nacrith.fileio import OutputError, write_all

    class Raw:
        def __init__(self, script):
            self.script, self.data = list(script), bytearray()

        def write(self, b):
            n = self.script.pop(0) if self.script else len(b)
            if n is None:
                return None
            self.data += bytes(b[:n])
            return n

        def fileno(self):
            return os.open(os.devnull, os.O_WRONLY)     # select() says writable at once

    f = Raw([3, None, 1, None, 2])
    assert write_all(f, b"0123456789") == 10 and f.data == b"0123456789"
    with pytest.raises(OSError, match="Input/output error"):
        write_all(Raw([2, 0]), b"0123456789")           # 0: an error, not an endless loop
    with pytest.raises(OutputError) as e:
        write_all(Raw([0]), b"x", "out.nc")
    assert e.value.filename == "out.nc" and isinstance(e.value, OSError)


# ---------------------------------------------------------------- incremental objects
def test_compressor_output_equals_compress_of_the_whole():
    data = bytes(range(256)) * 8 + TEXT * 3
    for seg in (1000, 4096, 1 << 20):
        ref = nacrith.compress(data, neural=False, segment_size=seg)
        for step in (1, 333, 1000, len(data)):
            c = nacrith.Compressor(neural=False, segment_size=seg)
            parts = [c.compress(data[i:i + step]) for i in range(0, len(data), step)]
            assert b"".join(parts) + c.flush() == ref
            assert c.result.original_size == len(data) and c.result.archive_size == len(ref)
    empty = nacrith.Compressor(neural=False)
    assert empty.flush() == nacrith.compress(b"", neural=False)
    with pytest.raises(ValueError):
        empty.compress(b"x")


def test_decompressor_any_chunking_eof_and_unused_data():
    data = TEXT * 5 + bytes(range(256))
    blob = nacrith.compress(data, neural=False, segment_size=700)
    for step in (1, 7, 64, len(blob)):
        d = nacrith.Decompressor()
        out = b"".join(d.decompress(blob[i:i + step]) for i in range(0, len(blob), step))
        assert out == data and d.eof and d.unused_data == b"" and d.segments == -(-len(data) // 700)
    d = nacrith.Decompressor()
    assert d.decompress(blob + b"tail") == data and d.unused_data == b"tail"
    with pytest.raises(EOFError):
        d.decompress(b"more")
    d = nacrith.Decompressor()
    assert data.startswith(d.decompress(blob[:-1]))  # every complete segment, not the end
    assert not d.eof and d.needs_input
    bad = bytearray(blob)
    bad[40] ^= 1
    with pytest.raises(nacrith.CorruptArchive):
        nacrith.Decompressor().decompress(bytes(bad))


def test_open_binary_and_text_modes(tmp_path):
    p = tmp_path / "t.nc"
    with nacrith.open(p, "wb", neural=False, segment_size=500) as f:
        assert isinstance(f, io.BufferedIOBase) and f.writable() and not f.readable()
        for i in range(0, len(TEXT), 100):
            f.write(TEXT[i:i + 100])
    assert p.read_bytes() == nacrith.compress(TEXT, neural=False, segment_size=500)
    with nacrith.open(p) as f:
        assert f.read(5) == TEXT[:5] and f.read1(10) == TEXT[5:15]
        assert f.read() == TEXT[15:] and f.read() == b""
    buf = io.BytesIO()
    with nacrith.open(buf, "wt", encoding="utf-8", newline="\r\n", neural=False) as f:
        f.write("héllo\nwörld\n")
        f.flush()
        assert not buf.closed
    buf.seek(0)
    assert nacrith.decompress(buf.getvalue()) == "héllo\r\nwörld\r\n".encode()
    with nacrith.open(io.BytesIO(buf.getvalue()), "rt", encoding="utf-8") as f:
        assert f.readlines() == ["héllo\n", "wörld\n"]
    with pytest.raises(nacrith.BadOption):
        nacrith.open(p, "rw")
    with pytest.raises(nacrith.BadOption):
        nacrith.open(p, "rb", encoding="utf-8")
    with pytest.raises(FileExistsError):
        nacrith.open(p, "xb")                 # x: never replaces


def test_open_for_writing_leaves_nothing_when_the_block_fails(tmp_path):
    p = tmp_path / "t.nc"
    with pytest.raises(KeyError):
        with nacrith.open(p, "wb", neural=False) as f:
            f.write(TEXT)
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []
    buf = io.BytesIO()
    with pytest.raises(KeyError):
        with nacrith.open(buf, "wb", neural=False) as f:
            f.write(TEXT)
            raise KeyError("boom")
    # the first segment is held back until the archive's layout is known: nothing was written,
    # and what a reader sees is never a valid archive of partial data
    assert buf.getvalue() == b""
    with pytest.raises(nacrith.CorruptArchive, match="not a nacrith archive"):
        nacrith.decompress(buf.getvalue())
    with pytest.raises(nacrith.CorruptArchive, match="not a nacrith archive"):
        nacrith.open(io.BytesIO(buf.getvalue())).read()
    buf = io.BytesIO()                             # the framed layout: several segments written
    with pytest.raises(KeyError):
        with nacrith.open(buf, "wb", neural=False, segment_size=256) as f:
            f.write(TEXT)
            raise KeyError("boom")
    assert buf.getvalue()[:4] == b"NAC\x85"
    with pytest.raises(nacrith.CorruptArchive, match="truncated"):
        nacrith.decompress(buf.getvalue())         # no end frame: never a valid partial archive
    with pytest.raises(nacrith.CorruptArchive, match="truncated"):
        nacrith.open(io.BytesIO(buf.getvalue())).read()


# ---------------------------------------------------------------- options, results, errors
def test_option_keywords_are_exactly_the_options_fields():
    import dataclasses
    from nacrith.library import OptionArgs
    assert list(OptionArgs.__annotations__) == [f.name for f in dataclasses.fields(nacrith.Options)]
    blob = nacrith.compress(TEXT, nacrith.Options(neural=False))     # an Options still works
    assert blob == nacrith.compress(TEXT, neural=False)
    with pytest.raises(nacrith.BadOption, match="unknown option 'ctxx'"):
        nacrith.compress(TEXT, ctxx=512)
    with pytest.raises(nacrith.BadOption, match="lanes must be <="):
        nacrith.compress(TEXT, lanes=10 ** 6)
    with pytest.raises(nacrith.BadOption, match="ctx must be an integer"):
        nacrith.compress(TEXT, ctx="2048")
    with pytest.raises(TypeError):
        nacrith.compress(TEXT, nacrith.Options(), nacrith.Options())


def test_error_classes_callers_can_branch_on(tmp_path):
    for cls in (nacrith.CorruptArchive, nacrith.ModelUnavailable, nacrith.ModelMismatch,
                nacrith.BadOption):
        assert issubclass(cls, nacrith.NacritError) and issubclass(cls, ValueError)
        assert cls.__doc__
    blob = nacrith.compress(TEXT, neural=False)
    for damaged in (blob[:-1], b"NOPE" + blob[4:], blob + b"x", blob[:5]):
        with pytest.raises(nacrith.CorruptArchive):
            nacrith.decompress(damaged)
    with pytest.raises(nacrith.CorruptArchive):
        nacrith.info(io.BytesIO(blob[:-2]))
    with pytest.raises(nacrith.ModelUnavailable, match="model not found: nope.gguf"):
        nacrith.compress(TEXT, model="nope.gguf")


def test_model_mismatch_is_its_own_class(tmp_path, texts):
    blob = nacrith.compress(texts[0], threads=1)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF not the model")
    with pytest.raises(nacrith.ModelMismatch, match="archive was made with model"):
        nacrith.decompress(blob, model=other)
    r = nacrith.compress_stream(io.BytesIO(texts[0]), io.BytesIO(), threads=1)
    assert r.methods == ("neural",) and r.segments == 1 and r.archive_size == len(blob)


def test_neural_compressor_and_fresh_processes_make_the_same_bytes(texts):
    """Encode determinism: two fresh processes, this one, and the incremental Compressor all
    produce the same archive bytes."""
    ref = nacrith.compress(texts[2], threads=1)
    c = nacrith.Compressor(threads=1)
    assert c.compress(texts[2][:100]) + c.compress(texts[2][100:]) + c.flush() == ref
    code = ("import sys, hashlib, nacrith\n"
            "print(hashlib.sha256(nacrith.compress(sys.stdin.buffer.read(), threads=1))"
            ".hexdigest())\n")
    digests = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", code], input=texts[2], capture_output=True,
                           timeout=600, cwd=REPO)
        assert r.returncode == 0, r.stderr.decode()
        digests.append(r.stdout.decode().strip())
    assert digests == [hashlib.sha256(ref).hexdigest()] * 2


def test_public_names_have_docstrings():
    for name in nacrith.__all__:
        if name != "__version__":
            assert getattr(nacrith, name).__doc__, name
    assert (REPO / "nacrith" / "py.typed").is_file()


def test_default_threads_per_backend(monkeypatch):
    """The default thread count by measurement (docs/benchmarks.md, 2026-12-06): min(2, cpus)
    for the portable engine (within each worker's share of the CPUs in a pool), 1 for the
    device engine, min(4, cpus) for llama.cpp; an explicit count always wins."""
    from nacrith import api, workers
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert api.normalized().threads == 2                       # SmolLM2: the portable engine
    assert api.normalized(backend="portable").threads == 2
    assert api.normalized(backend="llama").threads == 4
    assert api.default_threads("device") == 1
    assert api.normalized(backend="portable", threads=3).threads == 3
    assert workers.worker_threads(api.Options()) == 2
    assert workers.worker_threads(api.Options(), 8) == 2
    assert workers.worker_threads(api.Options(), 16) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert api.normalized().threads == 1
    assert workers.worker_threads(api.Options(), 2) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert workers.worker_threads(api.Options(backend="llama")) is None   # split the CPUs
    assert workers.worker_threads(api.Options(threads=2)) == 2
