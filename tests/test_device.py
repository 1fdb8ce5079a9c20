"""The device engine (nacrith/portable/device.py, tmm.py) without a GPU.

- every device kernel compiled to PTX for sm_80 and sm_90 (numba-cuda's NVVM, Triton's
  compiler; no GPU needed): no fma, no .ftz, no .approx, no float mul/add/sub without .rn
  (a plain `mul.f32` may be contracted by ptxas), no fast division;
- the checker catches a plain `a * b + c` kernel (it can fail);
- the device kernels under the CUDA simulator equal the CPU engine on the tiny model, bit for
  bit, with slides, several lane counts and multi-token groups, and lane 0 of a batch equals
  the lane alone;
- the ensemble coder on the device (nacrith/mixer/device.py): its kernels' PTX is free of fma /
  ftz / approx only thanks to gpu.py's -fma=0 (shown), and under the simulator it writes the
  CPU's payloads on SmolLM2's logits, with and without the confidence skip.
scripts/gpu_check.py runs the same comparisons on a real GPU.
"""
import contextlib
import os
import re
import subprocess
import sys

import pytest

from helpers import CORPUS, REPO, corpus

BAD_PTX = [
    (re.compile(r"\bfma\.rn\.f(32|64)|\bfma\b[.\w]*\.f(16|32|64)"), "fma"),
    (re.compile(r"\.ftz\b"), ".ftz"),
    (re.compile(r"\.approx\b"), ".approx"),
    (re.compile(r"\bdiv\.full\b"), "div.full"),
    (re.compile(r"^\s*(mul|add|sub)\.f(32|64)\b", re.M), "float op without .rn"),
    (re.compile(r"\bmad\.[\w.]*f(32|64)"), "mad"),
]


def ptx_violations(ptx: str) -> list:
    out = []
    for rx, what in BAD_PTX:
        for m in rx.finditer(ptx):
            end = ptx.find("\n", m.end())
            line = ptx[ptx.rfind("\n", 0, m.start()) + 1: end if end >= 0 else None].strip()
            out.append(f"{what}: {line}")
    return sorted(set(out))


def _numba_cuda():
    """numba.cuda as nacrith compiles with it (gpu.py: -fma=0), or a skip."""
    try:
        from nacrith.gpu import numba_cuda
        cuda = numba_cuda()
        cuda.compile_ptx                                  # noqa: B018
        from numba.cuda import libdevice                  # noqa: F401
    except Exception as e:                                # pragma: no cover
        pytest.skip(f"numba-cuda not installed ({e}): pip install 'nacrith[gpu]'")
    return cuda


def _signatures():
    from numba import types as nt

    def A(dt, nd):
        return nt.Array(dt, nd, "A")
    f32, i8, i32, i64, b1 = nt.float32, nt.int8, nt.int32, nt.int64, nt.boolean
    return {
        "k_rope": (A(i64, 1), A(nt.uint64, 1), A(f32, 3)),
        "k_embed": (A(i64, 1), A(i8, 2), A(f32, 2), A(f32, 2), b1, A(f32, 2)),
        "k_norm_quant": (A(f32, 2), A(i64, 1), A(f32, 1), f32, A(f32, 2), A(i8, 2), A(f32, 2),
                         A(f32, 2)),
        "k_quant": (A(f32, 2), A(i8, 2), A(f32, 2), A(f32, 2)),
        "k_swiglu_quant": (A(f32, 2), A(i8, 2), A(f32, 2), A(f32, 2)),
        "k_qkv": (A(f32, 2), A(i64, 1), A(i64, 1), A(f32, 3), i64, i64, A(f32, 3), A(i8, 2),
                  A(f32, 2), A(i8, 3), A(f32, 3), A(i8, 3), A(f32, 3)),
        "k_attend": (A(i8, 2), A(f32, 2), A(i32, 3), A(f32, 3), A(i32, 3), A(f32, 3), A(i64, 1),
                     A(i64, 1), f32, A(f32, 2), A(i32, 2), A(f32, 2)),
        "k_mm": (A(i8, 2), A(f32, 2), A(f32, 2), b1, A(i8, 2), A(f32, 2), A(f32, 2), A(f32, 2),
                 i64),
        "k_slide": (A(i8, 4), A(i8, 4), A(f32, 4), A(f32, 4), i64, i64, i64, i64),
        "k_rerotate": (A(f32, 4), A(i8, 4), A(f32, 4), i64, i64, i64, A(f32, 3)),
    }


def _compile_all(cuda, cc):
    """{kernel: ptx} for every device kernel, SmolLM2's head shape, compute capability cc."""
    import numba.cuda.dispatcher as D
    from nacrith.portable import device

    class _Dev:                      # device functions compile for "the current device"
        compute_capability = cc
    old = D.get_current_device
    D.get_current_device = lambda: _Dev()
    try:
        env = device.compile_kernels("cuda", 64, 3, 3)
        sigs = _signatures()
        assert set(sigs) == {f.__name__ for f in device.KERNELS}
        out = {}
        for name, k in env.items():
            ptx, _ = cuda.compile_ptx(k.py_func, sigs[name], cc=cc)
            out[name] = ptx
        return out
    finally:
        D.get_current_device = old


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)])
def test_numba_device_kernels_ptx_has_no_contraction(cc):
    cuda = _numba_cuda()
    ptxs = _compile_all(cuda, cc)
    assert len(ptxs) == 10
    for name, ptx in ptxs.items():
        assert ".entry" in ptx, name
        assert ptx_violations(ptx) == [], name
    # the float steps are there, as round-to-nearest operations
    assert "mul.rn.f32" in ptxs["k_attend"] and "add.rn.f64" in ptxs["k_norm_quant"]
    assert "div.rn.f32" in ptxs["k_quant"] and "sqrt.rn.f64" in ptxs["k_norm_quant"]


@contextlib.contextmanager
def _without_fma_rule():
    """numba-cuda's own compile step, without gpu.py's -fma=0 (what NVVM does by default)."""
    from numba.cuda.cudadrv import nvvm
    from nacrith.gpu import numba_cuda
    numba_cuda()
    wrapped = nvvm.compile_ir
    nvvm.compile_ir = wrapped.__wrapped__
    try:
        yield
    finally:
        nvvm.compile_ir = wrapped


def test_ptx_checker_can_fail():
    cuda = _numba_cuda()
    from numba import types as nt

    def plain(out, a, b, c):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = a[i] * b[i] + c[i]
    ptx, _ = cuda.compile_ptx(plain, (nt.float32[:],) * 4, cc=(9, 0))
    assert ptx_violations(ptx) == []                # gpu.py's rule: mul.rn + add.rn
    with _without_fma_rule():
        ptx, _ = cuda.compile_ptx(plain, (nt.float32[:],) * 4, cc=(9, 0))
    assert any(v.startswith("fma") for v in ptx_violations(ptx))
    assert ptx_violations("\tmul.f32 \t%f1, %f2, %f3;\n") == \
        ["float op without .rn: mul.f32 \t%f1, %f2, %f3;"]
    assert ptx_violations("ex2.approx.ftz.f32 %f1, %f2;") == \
        [".approx: ex2.approx.ftz.f32 %f1, %f2;", ".ftz: ex2.approx.ftz.f32 %f1, %f2;"]


@pytest.mark.parametrize("cc", [80, 90])
def test_triton_matmul_ptx_has_no_contraction(cc):
    try:
        from nacrith.portable import tmm
    except Exception as e:                                # pragma: no cover
        pytest.skip(f"triton not installed ({e}): pip install 'nacrith[gpu]'")
    for q4 in (False, True):
        for mode in (0, 1, 2):
            ptx = tmm.ptx(q4, mode, cc)
            assert ptx_violations(ptx) == [], (q4, mode)
            assert "mul.rn.f32" in ptx and "add.rn.f32" in ptx
            assert ("mma.sync" in ptx or "wgmma" in ptx) and ".s8" in ptx   # int8 MMA
    # every tile shape tiles() picks compiles the same way (tiles never change a bit)
    shapes = {tmm.tiles(M, N)[:2] for M in (1, 64, 256, 1024, 4096)
              for N in (576, 960, 3072, 49152)}
    assert (16, 32) in shapes and (128, 128) in shapes
    for bm, bn in sorted(shapes):
        assert ptx_violations(tmm.ptx(True, 1, cc, bm, bn)) == [], (bm, bn)


def test_gpu_check_under_simulator():
    """scripts/gpu_check.py's emulated mode (the CUDA simulator, the tiny model): the device
    kernels equal the CPU engine bit for bit with slides (2 kept slots re-rotated), multi-token
    groups and 2 lanes, lane 0 of the batch equals the lane alone, a text coded on the
    device decodes on the CPU and the reverse, with identical payloads, and texts coded at once
    through one shared device backend (continuous batching) equal each coded alone on the CPU."""
    _numba_cuda()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-W", "ignore", "scripts/gpu_check.py", "--sim",
                        "--ctx", "8", "--slide", "2", "--n-keep", "2", "--steps", "7",
                        "--check-lanes", "2", "--text-bytes", "8", "--batch-texts", "2",
                        "--skip", "coder,e2e"],   # the simulated forward pass makes them
                                              # minutes: test_device_coder_equals_cpu_under_
                                              # simulator checks the coder; e2e is timing
                       env=env, capture_output=True, timeout=1200, cwd=REPO)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()[-3000:]
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 1, out
    lanes, feeds, tokens, slides, diff = rows[0][0], rows[0][1], rows[0][2], rows[0][3], rows[0][4]
    assert (lanes, feeds, tokens, diff) == ("| 2", "7", "26", "0"), out
    assert int(slides) >= 4, out
    assert ("archives: device payload == cpu payload: True" in out
            and "device->cpu round trip: True; cpu->device round trip: True" in out), out
    assert ("continuous batching: 2 texts at once on one device backend == each alone on the "
            "CPU: True; decoded at once: not checked (--sim)" in out), out
    assert out.rstrip().endswith("ALL OK"), out


API_CHILD = r"""
import sys
from pathlib import Path
import nacrith
from nacrith import api, frames as F, models
from nacrith.errors import NacritError
try:
    api.normalized(backend="gpu")
except nacrith.BadOption as e:
    print("bad:", e)
o = api.normalized(backend="device")
try:
    e = api.Engine(Path(models.resolve(None)), o)
except NacritError as err:
    print("error:", err)
    sys.exit(0)
d = e.descriptor(o.mix_params())
print("engine:", type(e.backend).__name__, e.fingerprint, d.engine == F.E_PORTABLE,
      e.backend.n_vocab)
"""


@pytest.mark.parametrize("sim", [True, False])
def test_api_device_backend(sim):
    """backend="device": the DeviceBackend behind the same descriptor as the portable engine
    (so its archives are portable archives); without a GPU, a clear error."""
    _numba_cuda()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    r = subprocess.run([sys.executable, "-c", API_CHILD], env=env, capture_output=True,
                       timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    out = r.stdout.decode().strip().split("\n")
    assert out[0] == ("bad: backend must be 'auto', 'llama', 'portable' or 'device' "
                      "(got 'gpu')")
    if sim:
        assert out[1] == "engine: DeviceBackend portable-1 True 49152"
    else:
        assert out[1] == "error: no CUDA device is available for the device engine"


# ---------------------------------------------------------------- the ensemble coder on the device
def _mixer_ptx(cuda, cc, fma_rule=True):
    """{kernel: ptx} of mixer/device.py's kernels for compute capability cc (preset 4's and 5's
    state types are the same); fma_rule=False compiles without gpu.py's -fma=0."""
    import numba.cuda.dispatcher as D
    from nacrith.mixer import DEFAULTS
    from nacrith.mixer import device as MD

    class _Dev:
        compute_capability = cc
    old = D.get_current_device
    D.get_current_device = lambda: _Dev()
    try:
        ks = MD._compile()                           # fresh: no device function cached
        sigs = MD.signatures(DEFAULTS)
        assert set(sigs) == set(ks) == {f.__name__ for f in MD.KERNELS}
        with contextlib.nullcontext() if fma_rule else _without_fma_rule():
            return {name: cuda.compile_ptx(k.py_func, sigs[name], cc=cc)[0]
                    for name, k in ks.items()}
    finally:
        D.get_current_device = old


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)])
def test_mixer_device_kernels_ptx_has_no_contraction(cc):
    """The ensemble, its CDF and the coder compiled for the device from the CPU's own Python:
    no fma, .ftz or .approx anywhere, and the float steps are there as .rn operations."""
    cuda = _numba_cuda()
    ptxs = _mixer_ptx(cuda, cc)
    for name, ptx in ptxs.items():
        assert ".entry" in ptx, name
        assert ptx_violations(ptx) == [], name
    for op in ("mul.rn.f64", "add.rn.f64", "sub.rn.f64", "div.rn.f64", "sqrt.rn.f64"):
        assert op in ptxs["k_encode"] and op in ptxs["k_decode"], op
    assert "fma" not in ptxs["k_encode"]
    for name in ("kb_encode", "kb_decode"):      # preset 5's block kernels: barriers, atomics
        assert "bar.sync" in ptxs[name] and "atom.global.add.f64" in ptxs[name], name


def test_mixer_ptx_contracts_without_the_fma_rule():
    """gpu.py's -fma=0 is what keeps them apart: without it NVVM fuses the same kernels'
    a * b + c into fma (so the PTX test above can fail)."""
    cuda = _numba_cuda()
    ptx = _mixer_ptx(cuda, (9, 0), fma_rule=False)["k_encode"]
    assert any(v.startswith("fma") for v in ptx_violations(ptx))


ON_DEVICE = r"""
from nacrith.gpu import numba_cuda
cuda = numba_cuda()

class OnDevice:
    '''The CPU engine as a device engine that codes on the device (logits as device arrays).'''
    codes_on_device = True
    def __init__(self, b):
        self.b = b
    def __getattr__(self, k):
        return getattr(self.b, k)
    def forward(self, lanes, groups):
        return cuda.to_device(self.b.feed(lanes, groups))
"""

DEVICE_CODER_CHILD = ON_DEVICE + r"""
import copy, sys
from pathlib import Path
import numpy as np
from nacrith import api, models, neural
from nacrith.mixer import device as MD

text = open(sys.argv[1], "rb").read()[:int(sys.argv[2])]
text = text * 6             # each lane ~twice over: the match model grows confident, skips fire
for kw in (dict(level=1), dict(level=1, mix_preset=5)):
    o = api.normalized(threads=1, lanes=3, **kw)
    mix = o.mix_params()
    e = api.Engine(Path(models.resolve(None)), o)
    d = copy.copy(e)
    d.backend = OnDevice(e.backend)
    batches = []
    old = MD.LaneBatch.encode
    def enc(self, logits, need, skipped, syms):
        batches.append((len(need), len(skipped), self.threads))
        return old(self, logits, need, skipped, syms)
    MD.LaneBatch.encode = enc
    dev = neural.encode_segment(d, text, 3, len(text), mix=mix)
    MD.LaneBatch.encode = old
    cpu = neural.encode_segment(e, text, 3, len(text), mix=mix)
    d2c = neural.decode_lanes(e, dev, mix=mix) == text
    c2d = neural.decode_lanes(d, cpu, mix=mix) == text
    print(f"preset {o.mix_preset or 4} skip {mix.skip} same {dev == cpu} d2c {d2c} c2d {c2d} "
          f"llm {sum(b[0] for b in batches)} skipped {sum(b[1] for b in batches)} "
          f"threads {max(b[2] for b in batches)} bytes {sum(len(p) for _, p in cpu)}")
"""


def test_device_coder_equals_cpu_under_simulator():
    """neural.py's device path (every lane's ensemble, CDF and coder on the device, called
    once per step for all lanes) under the CUDA simulator, on SmolLM2's real logits for
    alice29.txt's first 300 bytes 6 times over, in 3 lanes: level 1 (preset 4 with the
    confidence skip: ~100 tokens go through the device's skip kernels; a thread per lane) and
    preset 5 with the skip (the block kernels: 4 threads per lane, their row passes split 4 ways
    and the order-free reductions between them); the payloads equal the CPU's
    LaneModels' byte for byte and each side decodes the other's.
    (Under the simulator the kernels' threads call the CPU-compiled steps: this checks the lane
    views, buffers, modes and the neural.py path; the PTX tests check the device compile.)"""
    _numba_cuda()
    corpus("alice29.txt", 10)
    env = dict(os.environ, PYTHONPATH=str(REPO), NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", DEVICE_CODER_CHILD,
                        str(CORPUS / "alice29.txt"), "300"], env=env, capture_output=True,
                       timeout=1200, cwd=REPO)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()[-3000:]
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("preset")]
    assert [row[:4] for row in rows] == [["preset", "4", "skip", rows[0][3]],
                                         ["preset", "5", "skip", rows[0][3]]], out
    assert int(rows[0][3]) > 0, out
    for row in rows:
        assert row[4:10] == ["same", "True", "d2c", "True", "c2d", "True"], out
        assert 0 < int(row[-1]) < 1000, out
    skipped = [int(row[row.index("skipped") + 1]) for row in rows]
    llm = [int(row[row.index("llm") + 1]) for row in rows]
    assert min(skipped) > 0 and min(llm) > 0, out           # the LLM and skip kernels ran
    assert [row[row.index("threads") + 1] for row in rows] == ["0", "4"], out   # block


BLOCK_CHILD = r"""
import sys
from dataclasses import replace
import numpy as np
from nacrith import coder, neural
from nacrith.mixer import PRESETS, LaneModel
from nacrith.mixer import device as MD

V, T, L = 300, int(sys.argv[1]), 2
rng = np.random.default_rng(1)
text = b"the cat sat. " * 8
toks = np.array([[b for b in text[l:l + T]] for l in range(L)], np.int64)
lg = (rng.standard_normal((L, T, V)) * 3).astype(np.float32)
lg[0, 3, 7] = np.nan                        # NaN ignored by the max; a row of -inf is uniform
lg[1, 4, :] = -np.inf
lg[0, 5, :] = lg[0, 5, 11]                  # a tie everywhere: the first index is the max's
tcol = np.stack([rng.integers(0, 5, V), rng.integers(0, 2, V), np.zeros(V)]).astype(np.int32)
mp = replace(PRESETS[5], skip=30000, skip_cap=3)
thr, cap = neural._skip_rule(mp)
cpu, skips = [], []
for l in range(L):                          # the CPU, with lockstep's skip rule
    lm, enc, run, sk = LaneModel(mp, V, T, tcol), coder.Encoder(), 0, set()
    for t in range(T):
        if lm.skip_conf() >= thr and run < cap:
            lm.encode_skip(enc, toks[l, t])
            run += 1
            sk.add(t)
        else:
            lm.encode(enc, lg[l, t], toks[l, t])
            run = 0
    cpu.append(enc.finish())
    skips.append(sk)
for threads in map(int, sys.argv[2:]):
    plan = [([l for l in range(L) if t not in skips[l]], [l for l in range(L) if t in skips[l]])
            for t in range(T)]
    b = MD.LaneBatch(mp, V, L, T, tcol, threads=threads)
    for t, (need, sk) in enumerate(plan):
        b.encode(lg[need, t] if need else None, need, sk, toks[:, t])
    same = b.finish(range(L)) == cpu
    d = MD.LaneBatch(mp, V, L, T, tcol, threads=threads)
    d.start_decode(dict(enumerate(cpu)))
    back = np.stack([d.decode(lg[need, t] if need else None, need, sk)
                     for t, (need, sk) in enumerate(plan)], 1)
    print("threads", threads, "same", same, "back", bool((back == toks).all()),
          "skipped", sum(map(len, skips)))
"""


def test_block_kernels_equal_cpu_at_any_thread_count_under_simulator():
    """Preset 5's block kernels (a block of threads per lane) write the CPU's streams and decode
    them at 1, 3 and 32 threads per lane (32: the decoder's last chunks are empty), with
    the confidence skip, a NaN logit, a row of -inf and a row of ties (V 300, random logits)."""
    _numba_cuda()
    env = dict(os.environ, PYTHONPATH=str(REPO), NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", BLOCK_CHILD, "28", "1", "3", "32"],
                       env=env, capture_output=True, timeout=1200, cwd=REPO)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()[-3000:]
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("threads")]
    assert [row[:6] for row in rows] == [["threads", n, "same", "True", "back", "True"]
                                         for n in ("1", "3", "32")], out
    assert int(rows[0][-1]) > 0, out                        # the skip kernels ran


def test_block_launch_halves_threads_where_registers_run_out():
    """A block the device cannot resource (CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES) is retried with
    half the threads, down to 32 (the bits do not depend on it); other errors pass through."""
    from nacrith.mixer.device import LaneBatch
    calls = []

    class Kernel:
        def __init__(self, most):
            self.most = most                    # threads the "device" can resource

        def __getitem__(self, cfg):
            def launch(*args):
                calls.append(cfg)
                if cfg[1] > self.most:
                    raise RuntimeError("[701] Call to cuLaunchKernel results in "
                                       "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")
                if args == ("bad",):
                    raise RuntimeError("CUDA_ERROR_ILLEGAL_ADDRESS")
            return launch
    b = object.__new__(LaneBatch)
    b.k, b.lanes, b.threads = {"kb_encode": Kernel(64)}, 5, 256
    b._launch("encode", 1, 2)
    assert calls == [(5, 256), (5, 128), (5, 64)] and b.threads == 64
    with pytest.raises(RuntimeError, match="ILLEGAL_ADDRESS"):
        b._launch("encode", "bad")
    b.k["kb_encode"], b.threads = Kernel(16), 128
    with pytest.raises(RuntimeError, match="OUT_OF_RESOURCES"):
        b._launch("encode")
    assert b.threads == 32


def test_device_coder_lanes_from_free_memory():
    """A lane's device bytes are its state's arrays plus its frequencies and output buffer, and
    the lanes a device takes are what fits in a share of its free memory."""
    import numpy as np
    from nacrith.mixer import DEFAULTS, PRESETS
    from nacrith.mixer.device import LaneBatch
    from nacrith.mixer.state import new_state
    V, n = 49152, 1000
    S = new_state(DEFAULTS, V, n, np.zeros((3, V), np.int32))
    state = sum(a.nbytes for f, part in S._asdict().items() if f != "cfg" for a in part)
    per = LaneBatch.bytes_per_lane(DEFAULTS, V, n)
    assert per == state + 8 * V + 2 * (4 * n + 16) + 80
    assert 30 << 20 < per < 32 << 20                  # ~30 MiB, mostly the n-gram tables
    assert LaneBatch.bytes_per_lane(PRESETS[1], V, n) < 15 << 20
    assert LaneBatch.lanes_that_fit(DEFAULTS, V, n, free=10 * per + 1, share=1.0) == 10
    assert LaneBatch.lanes_that_fit(DEFAULTS, V, n, free=80 * 10**9) == int(72e9) // per


HUB_CODER_CHILD = ON_DEVICE + r"""
import sys, tempfile, threading, time
from pathlib import Path
from types import SimpleNamespace
sys.path.insert(0, "scripts")
from gpu_check import byte_tokenizer
from nacrith import hub, neural
from nacrith.mixer import MixParams, column_table
from nacrith.mixer import device as MD
from nacrith.portable.backend import PortableBackend
from nacrith.portable.tiny import write_tiny_llama

path = str(write_tiny_llama(Path(tempfile.mkdtemp()) / "t.gguf", n_vocab=320, n_ff=64))
mix = MixParams.from_params({"mix_preset": 4, "skip": 32768, "skip_cap": 3})
WIN = dict(ctx=16, slide=4, n_keep=2, threads=1)
TEXT = b"the cat sat on the mat; the cat sat on the hat. \r\n\x00\xff " * 10
LANES = [1, 2, 1, 3]
TEXTS = [TEXT[7 * i:100 + 40 * i] for i in range(len(LANES))]

def engine(lanes, dev):
    b = PortableBackend(path, lanes=lanes, group=mix.skip_cap + 1, **WIN)
    t = byte_tokenizer(b)
    return SimpleNamespace(backend=OnDevice(b) if dev else b, tokenizer=t, params={},
                           column_table=column_table(t.pieces))

alone = [neural.encode_segment(engine(k, False), t, k, len(t), mix=mix)
         for t, k in zip(TEXTS, LANES)]
launches = []
for name in ("encode", "decode"):
    def wrap(f, name=name):
        def call(self, logits, need, skipped, *a):
            launches.append((name, len(need), len(skipped)))
            return f(self, logits, need, skipped, *a)
        return call
    setattr(MD.LaneBatch, name, wrap(getattr(MD.LaneBatch, name)))
h = hub.Hub(engine(5, True))

def at_once(fn):
    out = [None] * len(LANES)
    def run(i):
        time.sleep(0.02 * i)
        out[i] = fn(i)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(LANES))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out

got = at_once(lambda i: neural.encode_segment(h.engine_for(LANES[i]), TEXTS[i], LANES[i],
                                              len(TEXTS[i]), mix=mix))
enc = [x for x in launches if x[0] == "encode"]
back = at_once(lambda i: neural.decode_lanes(h.engine_for(LANES[i]), alone[i], mix=mix))
dec = [x for x in launches if x[0] == "decode"]
print("hub coder", h.coder is not None, "same", got == alone, "decoded", back == TEXTS,
      "enc_launches", len(enc), "lanes", sum(n + s for _, n, s in enc),
      "skipped", sum(s for _, _, s in enc), "widest", max(n + s for _, n, s in enc),
      "dec_launches", len(dec), "free", sorted(h.free))
"""


def test_hub_device_coder_equals_each_alone_under_simulator():
    """Continuous batching with the coder on the device (hub.DeviceLanes): 4 coders of 1-3
    lanes on a shared engine of 5 lanes (one waits for lanes), each step of all of them coded
    by one launch of the hub's LaneBatch; preset 4 with the confidence skip (skipped lanes ride
    in the same launches). Every payload equals the text coded alone on the CPU's LaneModels,
    then all decode at once through the hub, and every lane is free at the end. (CPU engine's
    logits handed over as device arrays; the CUDA simulator.)"""
    _numba_cuda()
    env = dict(os.environ, PYTHONPATH=str(REPO), NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", HUB_CODER_CHILD], env=env,
                       capture_output=True, timeout=1200, cwd=REPO)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()[-3000:]
    f = out.split()
    v = {f[i]: f[i + 1] for i in range(len(f) - 1)}
    assert (v["coder"], v["same"], v["decoded"]) == ("True", "True", "True"), out
    assert int(v["skipped"]) > 0 and int(v["widest"]) > 3, out      # coders shared launches
    assert int(v["enc_launches"]) < int(v["lanes"]), out
    assert out.rstrip().endswith("free [0, 1, 2, 3, 4]"), out
