"""Reliability guards: bounded lengths, determinism across thread counts and backends, model-frame
parameters that must be refused before a model is built, and bounded memory on large inputs.

Tests that need the default model skip when it is not installed. Tests marked xfail(strict=True)
document gaps in core modules (nacrith/api.py, container.py, neural.py) with the fix described in
their reason; they start failing (XPASS) once the gap is closed, so the marker gets removed."""
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import zstandard

import nacrith
from nacrith import api, models
from nacrith import container as C

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "formats" / "golden"
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
ENV.pop("NACRITH_DEBUG", None)
MANIFEST = {line.split()[2]: (line.split()[0], int(line.split()[1]))
            for line in (GOLDEN / "MANIFEST.txt").read_text().splitlines() if line.strip()}

TEXT = (b"Alice was beginning to get very tired of sitting by her sister on the bank, and of "
        b"having nothing to do: once or twice she had peeped into the book her sister was "
        b"reading, but it had no pictures or conversations in it, 'and what is the use of a "
        b"book,' thought Alice 'without pictures or conversations?' So she was considering in "
        b"her own mind.\n")


def model_missing():
    try:
        models.resolve(None)
    except nacrith.NacritError as e:
        return str(e)
    return None


needs_model = pytest.mark.skipif(model_missing() is not None,
                                 reason=f"default model not installed: {model_missing()}")


def py(code: str, *args, input=None, timeout=900, env=None) -> subprocess.CompletedProcess:
    """A fresh interpreter: nothing shared with the test process but files and pipes."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          input=input, capture_output=True, timeout=timeout,
                          env={**ENV, **(env or {})}, cwd=REPO)


def frames(blob: bytes):
    """[(frame object, raw bytes incl. payload)] of a valid archive, after its 10-byte header."""
    f = io.BytesIO(blob)
    C.read_file_header(f)
    out, i = [], 0
    while True:
        a = f.tell()
        fr = C.read_frame(f, i)
        i += 1
        if isinstance(fr, C.Segment):
            C.read_payload(f, fr, i - 1)
        out.append((fr, blob[a:f.tell()]))
        if isinstance(fr, C.End):
            return out


def header(version: int = 1) -> bytes:
    return C.FileHeader(version).pack()


def varint(v: int) -> bytes:
    b = bytearray()
    C.put_varint(b, v)
    return bytes(b)


def raw_segment(method: int, orig_len: int, payload_len: int, lanes=None, orig_hash=0,
                payload_hash=0, lane_count=None) -> bytes:
    """A segment frame header with arbitrary (even out-of-range) varints and a valid checksum."""
    b = bytes([C.FRAME_SEGMENT, method]) + varint(orig_len) + varint(payload_len)
    b += struct.pack("<QI", orig_hash, payload_hash)
    if method == C.NEURAL:
        lanes = lanes or []
        b += varint(len(lanes) if lane_count is None else lane_count)
        for ln in lanes:
            b += b"".join(varint(v) for v in ln)
    return b + struct.pack("<I", C.hash32(b))


def raw_end(total: int, total_hash: int = 0) -> bytes:
    b = bytes([C.FRAME_END]) + varint(total) + struct.pack("<Q", total_hash)
    return b + struct.pack("<I", C.hash32(b))


# ---------------------------------------------------------------- bounded lengths
LIMIT_MB = 768          # address-space limit of the decoding process (RLIMIT_AS)
RSS_MB = 150            # peak RSS allowed while refusing every hostile length below

RUNNER = """
    import io, json, resource, sys
    lim = int(sys.argv[1]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    def hwm_mb():  # VmHWM resets at exec; ru_maxrss would carry over pytest's own peak
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    import nacrith
    class Pipe:
        def __init__(self, f): self.f = f
        def read(self, n=-1): return self.f.read(n)
        def seekable(self): return False
    res = {}
    for path in sys.argv[2:]:
        for streaming in (False, True):
            with open(path, "rb") as f:
                try:
                    nacrith.decompress_stream(Pipe(f) if streaming else f, io.BytesIO())
                    r = "decoded"
                except nacrith.NacritError as e:
                    r = "NacritError: " + str(e)
                except BaseException as e:
                    r = type(e).__name__ + ": " + str(e)
            res[path.rsplit("/", 1)[-1] + (" [stream]" if streaming else "")] = r
    print(json.dumps({"results": res,
                      "maxrss_mb": hwm_mb()}))
"""


def run_limited(tmp_path, cases: dict) -> dict:
    paths = []
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        paths.append(tmp_path / name)
    r = py(RUNNER, LIMIT_MB, *paths, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return json.loads(r.stdout)


HOSTILE = {
    # a stored segment claiming 4 GiB (the format's maximum), then 3 MiB and EOF
    "stored_4GiB_truncated": (header() + raw_segment(C.STORED, 1 << 32, 1 << 32)
                              + b"x" * (3 << 20), "truncated archive (in segment 0 payload)"),
    "payload_len_over_limit": (header() + raw_segment(C.ZSTD, 10, C.MAX_SEGMENT + (1 << 20) + 1),
                               "out of range"),
    "orig_len_over_limit": (header() + raw_segment(C.ZSTD, C.MAX_SEGMENT + 1, 10),
                            "out of range"),
    "orig_len_2^63": (header() + raw_segment(C.STORED, (1 << 63) - 1, (1 << 63) - 1),
                      "out of range"),
    "total_len_over_limit": (header() + raw_end(C.MAX_TOTAL + 1), "out of range"),
    "total_len_huge_no_segments": (header() + raw_end(C.MAX_TOTAL), "add up|does not match"),
    "lane_count_257": (header() + raw_segment(C.NEURAL, 10, 10, lanes=[(10, 1, 0, 10)],
                                              lane_count=257), "out of range"),
    "lane_table_256_huge": (header() + raw_segment(C.NEURAL, 1 << 32, 1 << 20,
                                                   lanes=[(1 << 32, 1 << 32, 1 << 32, 1 << 32)]
                                                   * 256), "do not add up"),
    "varint_11_bytes": (header() + bytes([C.FRAME_SEGMENT, C.STORED]) + b"\xff" * 10 + b"\x01",
                        "varint too long"),
    "end_then_4GiB_claim": (header() + raw_end(0, C.hash64(b"")) + raw_segment(C.STORED, 1 << 32, 1 << 32),
                            "data after end frame"),
}


def test_hostile_lengths_fail_cleanly_with_bounded_memory(tmp_path):
    """Frames with huge varint lengths and valid frame checksums: a clear NacritError, from a
    file and from a pipe, in a process limited to 768 MiB of address space, peak RSS < 150 MB."""
    out = run_limited(tmp_path, {k: v[0] for k, v in HOSTILE.items()})
    for name, (_, expect) in HOSTILE.items():
        for key in (name, name + " [stream]"):
            got = out["results"][key]
            assert got.startswith("NacritError: "), (key, got)
            assert any(e in got for e in expect.split("|")), (key, got)
    assert out["maxrss_mb"] < RSS_MB, out


def _zstd_segment_archive(zframe: bytes, orig_len: int) -> bytes:
    seg = C.Segment(C.ZSTD, orig_len, len(zframe), 0, C.hash32(zframe))
    return header() + seg.pack() + zframe + raw_end(orig_len)


def _zstd_claiming(content_size: int) -> bytes:
    z = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(b"hello " * 20)
    assert z[4] & 0xC0 == 0 and not z[4] & 0x20        # no content size, window byte present
    fhd = 0xC0 | (z[4] & 0x3F)                           # 8-byte frame content size
    return z[:4] + bytes([fhd]) + z[5:6] + struct.pack("<Q", content_size) + z[6:]


def test_zstd_payload_cannot_force_a_huge_allocation(tmp_path):
    no_size = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(b"hi " * 50)
    cases = {
        "zstd_no_content_size_4GiB": _zstd_segment_archive(no_size, 1 << 32),
        "zstd_claims_1TiB": _zstd_segment_archive(_zstd_claiming(1 << 40), 150),
        "zstd_claims_3GiB": _zstd_segment_archive(_zstd_claiming(3 << 30), 1 << 32),
        "zstd_claims_2^63": _zstd_segment_archive(_zstd_claiming((1 << 63) - 1), 150),
    }
    out = run_limited(tmp_path, cases)
    bad = {k: v for k, v in out["results"].items() if not v.startswith("NacritError: ")}
    assert bad == {}, out
    assert out["maxrss_mb"] < RSS_MB, out


# ---------------------------------------------------------------- model-frame parameters
class _Built(BaseException):
    pass


@pytest.fixture
def no_model(monkeypatch):
    """find_by_sha answers without hashing anything; building an engine is forbidden and records
    the options it was asked for."""
    seen = []

    def get_engine(path, opts, mix=None):
        seen.append(opts)
        raise _Built()

    monkeypatch.setattr(models, "find_by_sha", lambda digest, name, hint: Path("model.gguf"))
    monkeypatch.setattr(api, "get_engine", get_engine)
    return seen


def _golden_with(name: str, **params) -> bytes:
    blob = (GOLDEN / name).read_bytes()
    fr = frames(blob)
    m = fr[0][0]
    for k, v in params.items():
        if v is None:
            m.params.pop(k, None)
        else:
            m.params[k] = v
    return blob[:10] + m.pack() + b"".join(raw for _, raw in fr[1:])


def _refused_before_engine(blob: bytes, seen: list, **kw) -> str:
    try:
        nacrith.decompress(blob, **kw)
    except nacrith.NacritError as e:
        assert seen == [], "NacritError only after the engine was requested"
        return str(e)
    except _Built:
        raise AssertionError(f"engine requested with ctx={seen[0].ctx} lanes={seen[0].lanes} "
                             f"threads={seen[0].threads}") from None
    raise AssertionError("decoded")


def test_intact_model_frame_reaches_the_engine(no_model):
    """Control for the tests below: an untouched golden archive does request the engine."""
    with pytest.raises(_Built):
        nacrith.decompress((GOLDEN / "v1-neural-1lane.nc").read_bytes())
    assert no_model[0].ctx == 2048 and no_model[0].lanes == 1


@pytest.mark.parametrize("missing", ["ctx", "slide", "n_keep", "lanes", "bos", "threads"])
def test_model_frame_missing_parameter_is_refused(no_model, missing):
    blob = _golden_with("v1-neural-1lane.nc", **{missing: None})
    msg = _refused_before_engine(blob, no_model)
    assert missing in msg


@pytest.mark.parametrize("params", [{"ctx": 1 << 30}, {"ctx": 1000}, {"lanes": 256},
                                    {"ctx": 1 << 16, "lanes": 64}, {"threads": 100000},
                                    {"threads": 600}, {"slide": 1 << 31}, {"n_keep": 1 << 31}],
                         ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_hostile_model_parameters_refused_before_engine(no_model, params):
    """A 255-byte archive must not be able to make the decoder build a huge llama.cpp context or
    start thousands of threads: such parameters are refused before the engine is built."""
    blob = _golden_with("v1-neural-1lane.nc", **params)
    _refused_before_engine(blob, no_model)


def test_segment_with_more_lanes_than_the_model_frame(no_model):
    one = frames((GOLDEN / "v1-neural-1lane.nc").read_bytes())
    three = frames((GOLDEN / "v1-neural-3lanes.nc").read_bytes())
    blob = header() + one[0][1] + three[1][1] + three[2][1]      # lanes=1, segment K=3
    _refused_before_engine(blob, no_model)


def test_lane_token_count_is_bounded_by_its_stream(no_model):
    one = frames((GOLDEN / "v1-neural-1lane.nc").read_bytes())
    payload = b"\x00" + b"\x55" * 4                    # no escapes, 4-byte coded stream
    seg = C.Segment(C.NEURAL, 1 << 32, len(payload), 0, C.hash32(payload),
                    [C.Lane(1 << 32, 1 << 32, 1, 4)])
    blob = header() + one[0][1] + seg.pack() + payload + raw_end(1 << 32)
    _refused_before_engine(blob, no_model)


def _v4_golden_with(name: str, **params) -> bytes:
    """A version-4 golden single-layout archive whose descriptor gets these parameters (None:
    removed), every check recomputed."""
    from nacrith import frames as F
    blob = (GOLDEN / name).read_bytes()
    layout, version = F.header_fields(blob)
    desc, seg = F.read_single(io.BytesIO(blob[4:]), layout, F.SINGLE_LIMIT, version)
    for k, v in params.items():
        if v is None:
            desc.params.pop(k, None)
        else:
            desc.params[k] = v
    return F.pack_single(seg, desc)


def test_v4_intact_descriptor_reaches_the_engine(no_model):
    with pytest.raises(_Built):
        nacrith.decompress((GOLDEN / "v4-neural.nc").read_bytes())
    assert no_model[0].ctx == 2048 and no_model[0].lanes == 1 and no_model[0].slide == 512


@pytest.mark.parametrize("params", [{"ctx": 1 << 30}, {"ctx": 1000}, {"lanes": 256},
                                    {"ctx": 1 << 16, "lanes": 64}, {"slide": 1 << 31},
                                    {"n_keep": 1 << 31}, {"mix_preset": 99}, {"ngram": 100},
                                    {"skip": 1 << 20}, {"ctx": 256}],
                         ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_v4_hostile_parameters_refused_before_engine(no_model, params):
    """ctx 256 alone leaves slide = 64 but a 2048-sized default n_keep is fine: refused only
    where a bound is broken; every such descriptor is refused before an engine is built."""
    if params == {"ctx": 256}:                        # control: a valid small window
        with pytest.raises(_Built):
            nacrith.decompress(_v4_golden_with("v4-neural.nc", **params))
        assert no_model[0].slide == 64
        return
    _refused_before_engine(_v4_golden_with("v4-neural.nc", **params), no_model)


@pytest.mark.parametrize("key", ["threads", "cdf_bits"])
def test_v4_descriptor_refuses_version3_only_keys(no_model, key):
    msg = _refused_before_engine(_v4_golden_with("v4-neural.nc", **{key: 1}), no_model)
    assert msg == f"corrupt archive header (parameter {key} not allowed or repeated)"


def test_preset5_is_version9s_and_only_its(no_model):
    """The ensemble's preset 5 (exact sums) is what version 9 means: refused in a version-5
    descriptor, and a version-9 one must name it (absent = 5) and may not have the two-model
    keys; all refused before a model loads."""
    with pytest.raises(_Built):                        # control: the intact golden
        nacrith.decompress((GOLDEN / "v9-isum.nc").read_bytes())
    no_model.clear()
    tail = " archive: preset 5 is version 9's, and only its)"
    assert _refused_before_engine(_v4_golden_with("v5-neural.nc", mix_preset=5), no_model) == \
        "corrupt model frame (mixer preset 5 in a version-5" + tail
    for preset in (4, 0):
        assert _refused_before_engine(_v4_golden_with("v9-isum.nc", mix_preset=preset),
                                      no_model) == \
            f"corrupt model frame (mixer preset {preset} in a version-9" + tail
    assert _refused_before_engine(_v4_golden_with("v9-isum.nc", ctx2=256), no_model) == \
        "corrupt archive header (parameter ctx2 not allowed or repeated)"


def test_v4_descriptor_refuses_version5_keys_and_v5_takes_them(no_model):
    # key 22 (guard) exists from version 5 on; the same descriptor in a v5 archive is fine
    msg = _refused_before_engine(_v4_golden_with("v4-neural.nc", guard=1311), no_model)
    assert msg == "corrupt archive header (parameter guard not allowed or repeated)"
    from nacrith import frames as F
    desc, seg = F.read_single(io.BytesIO((GOLDEN / "v5-neural.nc").read_bytes()[4:]), F.L_NEURAL,
                              F.SINGLE_LIMIT, 5)
    desc.params["guard"] = 0
    with pytest.raises(_Built):
        nacrith.decompress(F.pack_single(seg, desc))


# ---------------------------------------------------------------- determinism guards
@needs_model
@pytest.mark.parametrize("enc_threads, dec_threads", [(2, 1), (1, 2)])
def test_thread_count_does_not_change_the_decoded_bytes(tmp_path, enc_threads, dec_threads):
    """Encode ~300 bytes with one thread count, decode in a new process with the other: the exact
    bytes come back (version 4 does not record the thread count: it does not change the logits).

    OMP_WAIT_POLICY=PASSIVE: llama.cpp's OpenMP threads otherwise spin at every barrier, and on a
    busy 2-core machine this 300-byte encode took 143-214 s instead of ~3 s (same bytes)."""
    enc = py("""
        import sys, nacrith
        sys.stdout.buffer.write(nacrith.compress(sys.stdin.buffer.read(), threads=int(sys.argv[1])))
    """, str(enc_threads), input=TEXT, env={"OMP_WAIT_POLICY": "PASSIVE"})
    assert enc.returncode == 0, enc.stderr.decode()[-2000:]
    blob = enc.stdout
    info = nacrith.info(io.BytesIO(blob))
    assert info["segments"][0]["method"] == "neural" and "threads" not in info["model"]
    dec = py("""
        import hashlib, json, sys, nacrith
        try:
            out = nacrith.decompress(sys.stdin.buffer.read(), threads=int(sys.argv[1]))
            print(json.dumps({"sha": hashlib.sha256(out).hexdigest(), "n": len(out)}))
        except nacrith.NacritError as e:
            print(json.dumps({"error": str(e)}))
    """, str(dec_threads), input=blob, env={"OMP_WAIT_POLICY": "PASSIVE"})
    assert dec.returncode == 0, dec.stderr.decode()[-2000:]
    res = json.loads(dec.stdout)
    assert res == {"sha": hashlib.sha256(TEXT).hexdigest(), "n": len(TEXT)}


def _altered_backend(fp: str) -> str:
    parts = fp.split(" ")
    parts[0] = "0.0.1"
    if len(parts) >= 3:
        parts[2] = format(int(parts[2], 16) ^ 1, "x")       # one CPU feature differs
    return " ".join(parts)


@needs_model
def test_backend_fingerprint_mismatch_is_refused_then_ignore_backend_decodes(tmp_path):
    """A model frame whose backend fingerprint differs (frame checksum recomputed) is refused
    with a message naming the differences and how to proceed; ignore_backend=True decodes it,
    the checksums still verifying the result. Also through the CLI (one line, exit 1)."""
    name = "v1-neural-escapes.nc"
    sha, size = MANIFEST[name]
    r = py("""
        import hashlib, io, json, sys
        import nacrith
        from nacrith import backend, container as C
        sys.path.insert(0, "tests")
        from test_reliability import frames, _altered_backend
        blob = open(sys.argv[1], "rb").read()
        fr = frames(blob)
        m = fr[0][0]
        here = backend.fingerprint()
        m.backend = _altered_backend(here)
        bad = blob[:10] + m.pack() + b"".join(raw for _, raw in fr[1:])
        open(sys.argv[2], "wb").write(bad)
        res = {"here": here, "made": fr[0][0].backend, "theirs": m.backend}
        try:
            nacrith.decompress(bad, threads=1)
            res["refused"] = None
        except nacrith.NacritError as e:
            res["refused"] = str(e)
        try:
            out = nacrith.decompress(bad, threads=1, ignore_backend=True)
            res["sha"] = hashlib.sha256(out).hexdigest()
        except nacrith.NacritError as e:
            res["sha"] = str(e)
        print(json.dumps(res))
    """, GOLDEN / name, tmp_path / "x.nc")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    res = json.loads(r.stdout)
    msg = res["refused"]
    assert msg is not None, res
    here_version = res["here"].split(" ")[0]
    assert f"llama-cpp-python 0.0.1 vs {here_version} here" in msg, msg
    assert "features" in msg and "--ignore-backend" in msg, msg
    if res["made"] == res["here"]:
        assert res["sha"] == sha
    else:
        # a build that cannot reproduce the golden's logits (golden: cpu-avx512): the checksums
        # turn the wrong logits into a clear error, never into other bytes
        assert res["sha"] == sha or res["sha"].startswith("segment 1 (at byte offset 0) does "
                                                           "not "), res["sha"]
    cli = subprocess.run([sys.executable, "-m", "nacrith", "-d", "--threads", "1", "x.nc"],
                         cwd=tmp_path, env=ENV, capture_output=True, timeout=600)
    err = cli.stderr.decode()
    assert cli.returncode == 1 and err.count("\n") == 1 and err.startswith("nacrith: x.nc: ")
    assert "0.0.1" in err and "--ignore-backend" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nc"]


# ---------------------------------------------------------------- large inputs
STREAM = """
    import hashlib, random, resource, subprocess, sys, threading, json
    mode, size_mb, variety, archive = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]

    def blocks(total):
        # text-like bytes with a NUL every few KiB: binary-flagged, so no model is ever loaded
        rng = random.Random(5)
        words = [bytes(rng.choice(b"etaoinshrdlucmfwyp") for _ in range(rng.randint(1, 9)))
                 for _ in range(2000)]
        base = bytearray()
        while len(base) < (1 << 20):
            base += rng.choice(words) + (b"\\n" if rng.random() < 0.1 else b" ")
            if len(base) % 4096 < 10:
                base += b"\\x00"
        base = bytes(base[:1 << 20])
        sent = i = 0
        while sent < total:
            if variety:                     # every MiB rotated differently: segments differ
                k = (i * 7919) % len(base)
                blk = base[k:] + base[:k]
            else:                           # highly compressible (fast at zstd level 19)
                blk = base[:65536] * 16
            blk = blk[:total - sent]
            yield blk
            sent += len(blk)
            i += 1

    h_in, h_out, n_out = hashlib.sha256(), hashlib.sha256(), 0
    if mode == "c":
        p = subprocess.Popen([sys.executable, "-m", "nacrith", "-c", "-q"], stdin=subprocess.PIPE,
                             stdout=open(archive, "wb"), stderr=subprocess.PIPE)
        def feed():
            for b in blocks(size_mb << 20):
                h_in.update(b)
                p.stdin.write(b)
            p.stdin.close()
        t = threading.Thread(target=feed)
        t.start()
        err = p.stderr.read()
        t.join()
    else:
        for b in blocks(size_mb << 20):
            h_in.update(b)
        p = subprocess.Popen([sys.executable, "-m", "nacrith", "-dc", archive],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while b := p.stdout.read(1 << 20):
            h_out.update(b)
            n_out += len(b)
        err = p.stderr.read()
    rc = p.wait()
    print(json.dumps({"rc": rc, "stderr": err.decode()[-500:], "in": h_in.hexdigest(),
                      "out": h_out.hexdigest(), "n_out": n_out,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}))
"""
PEAK_RSS_MB = 256       # bound for compress and decompress, whatever the input size


def _stream_roundtrip(tmp_path, size_mb: int, variety: bool):
    archive = tmp_path / "big.nc"
    c = py(STREAM, "c", size_mb, int(variety), archive, timeout=7200)
    assert c.returncode == 0, c.stderr.decode()[-2000:]
    rc = json.loads(c.stdout)
    assert (rc["rc"], rc["stderr"]) == (0, ""), rc
    segs = nacrith.info(open(archive, "rb"))["segments"]
    assert len(segs) == -(-(size_mb << 20) // (4 << 20))
    assert {s["method"] for s in segs} <= {"zstd", "stored"}
    d = py(STREAM, "d", size_mb, int(variety), archive, timeout=7200)
    assert d.returncode == 0, d.stderr.decode()[-2000:]
    rd = json.loads(d.stdout)
    assert (rd["rc"], rd["stderr"]) == (0, ""), rd
    assert rd["n_out"] == size_mb << 20 and rd["out"] == rd["in"]
    print(f"{size_mb} MiB via stdin: archive {archive.stat().st_size} bytes, peak RSS compress "
          f"{rc['maxrss_mb']} MB, decompress {rd['maxrss_mb']} MB")
    assert rc["maxrss_mb"] < PEAK_RSS_MB and rd["maxrss_mb"] < PEAK_RSS_MB, (rc, rd)


def test_64MiB_stream_compresses_with_bounded_memory(tmp_path):
    """64 MiB of compressible, binary-flagged text through `nacrith -c` (stdin -> stdout) and
    back through `nacrith -dc`: exact bytes, peak RSS of each process < 256 MB (segments are
    4 MiB; the zstd level-19 context dominates, ~170 MB measured)."""
    _stream_roundtrip(tmp_path, 64, variety=False)


@pytest.mark.skipif(os.environ.get("NACRITH_LONG") != "1",
                    reason="1 GiB at zstd level 19 takes ~5 min on 2 cores: set NACRITH_LONG=1")
def test_1GiB_stream_compresses_with_bounded_memory(tmp_path):
    _stream_roundtrip(tmp_path, 1024, variety=True)


MISMATCH = """
    import sys, nacrith
    from nacrith import backend, container as C
    sys.path.insert(0, "tests")
    from test_reliability import frames
    blob = open(sys.argv[1], "rb").read()
    fr = frames(blob)
    m, seg = fr[0][0], fr[1][0]
    m.backend = backend.fingerprint()            # "made on this build" (the golden: cpu-avx512)
    m.params["threads"] = 2                      # "made with 2 threads"
    seg.orig_hash ^= 1                           # ... and the decoded segment does not verify
    payload = fr[1][1][len(seg.pack()):]
    bad = blob[:10] + m.pack() + seg.pack() + payload + fr[2][1]
    try:
        nacrith.decompress(bad, threads=1)
        print("decoded")
    except nacrith.NacritError as e:
        print(e)
"""


@needs_model
def test_segment_mismatch_message_names_the_thread_counts():
    """A neural segment that fails its checksum when decoded with threads=1 from an archive made
    with threads=2: the message gives the segment, its byte offset, both thread counts and the
    option to retry with."""
    r = py(MISMATCH, GOLDEN / "v1-neural-escapes.nc")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    msg = r.stdout.decode().strip()
    assert "at byte offset 0" in msg, msg
    assert "threads=1" in msg and "threads=2" in msg and "--threads 2" in msg, msg
