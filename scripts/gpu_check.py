"""GPU check of the portable engine's device backend (nacrith/portable/device.py), offline.

    python scripts/gpu_check.py                 # on a CUDA machine: the full check, ~3-5 min
    python scripts/gpu_check.py --sim --ctx 8 --slide 2 --n-keep 2 --steps 7 --check-lanes 2 \
        --text-bytes 8                          # CPU only: the CUDA simulator, tiny model (CI)

Needs numpy, numba, numba-cuda (and, for the tensor-core matrix products, torch + triton), plus
the pure wheels gguf and zstandard... no model file: it writes a random GGUF with SmolLM2-135M's
shapes (30 layers, d 576, 9/3 heads, ff 1536, vocab 49152; --sim: the tests' tiny shapes).

1. logits: the device engine against the CPU engine, every feed of a run with slides (ctx 128,
   slide 32) and groups of 1-4 tokens, at 1, 4 and 64 lanes, and lane 0 of the device batch
   against a 1-lane device engine: the number of differing logits;
2. archives: a text coded with the device engine and decoded with the CPU engine and the
   reverse (neural.encode_segment / decode_lanes, LLM-only coding); payload bytes compared;
   continuous batching (nacrith/hub.py): 6 texts (--batch-texts) coded at once through one
   device backend, each payload against the text coded alone on the CPU, then all decoded at
   once (not with --sim: the simulator is slow; tests/test_hub.py decodes through the hub on
   the CPU);
3. the ensemble on the device (mixer/device.py; slow under --sim: tests/test_device.py checks it
   on real logits instead): a text in 3 lanes coded with the device engine and every lane's
   mixer, CDF and coder on the device, for mix preset 4 with the confidence skip and preset 5
   (a block of threads per lane) without and with it,
   against the CPU engine with the CPU's mixer: payloads compared, then decoded crosswise; and
   (not with --sim) the batching check of 2. with the hub's coder on the device;
4. speed (not with --sim): tokens/s of the device forward pass (logits left on the device) at
   each --lanes count, ctx 2048, windows at fill 0, 1024 and 2040, and the peak device memory;
   then the host's share: the same steps with the logits copied to the host; and the device
   coder alone (V 49152, random logits on the device; preset 4 a thread per lane, preset 5 a
   block of 64 / 128 / 256 threads per lane) at each --lanes count that fits, encode and decode
   ms per step, with its device memory per lane;
5. end to end (also with --sim, slowly; skip it with --skip e2e): at each --e2e-lanes count, a
   tree of 2 x lanes small texts and one text cut into lanes segments, coded then decoded a
   thread per file through one shared device backend with the coder on the device (preset 5):
   bytes/s each way, the device's share of the time (the rest is the host) and the round trip.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMOL = dict(n_layer=30, d=576, n_head=9, n_kv=3, n_ff=1536, n_vocab=49152)
TINY = dict(n_layer=2, d=64, n_head=2, n_kv=1, n_ff=64, n_vocab=320)   # the simulator: small


def _name(cuda):
    n = cuda.get_current_device().name
    return n.decode() if isinstance(n, bytes) else str(n)


def byte_tokenizer(b):
    """tokenize(): one token per byte where a single-byte piece exists (ExactTokenizer escapes
    the rest); enough to drive the coder on a random model without llama.cpp."""
    one = {}
    for t in range(b.n_vocab):
        p = b.piece(t)
        if len(p) == 1 and p[0] not in one:
            one[p[0]] = t
    b.tokenize = lambda data: np.array([one.get(c, 0) for c in data], np.int32)
    from nacrith.tokenizer import ExactTokenizer
    return ExactTokenizer(b)


def check_logits(path, lanes, steps, DB, PB, win):
    """Differing logits between the CPU engine and the device engine over `steps` feeds, and
    between lane 0 of the device batch and a 1-lane device engine fed lane 0's groups."""
    kw = dict(lanes=lanes, threads=os.cpu_count() or 1, **win)
    cpu, dev = PB(path, **kw), DB(path, **kw)
    alone = DB(path, **{**kw, "lanes": 1})
    rng = np.random.default_rng(lanes)
    sizes = [1, 1, 2, 1, 3, 1, 4, 1]
    diff = fed = 0
    t_cpu = t_dev = 0.0
    for k in range(steps):
        n = sizes[k % len(sizes)]
        groups = [[int(t) for t in rng.integers(0, cpu.n_vocab, n)] for _ in range(lanes)]
        if k == 0:
            groups = [[cpu.bos] + g[1:] for g in groups]
        t0 = time.perf_counter()
        a = cpu.feed(list(range(lanes)), groups)
        t1 = time.perf_counter()
        b = dev.feed(list(range(lanes)), groups)
        t2 = time.perf_counter()
        t_cpu += t1 - t0
        t_dev += t2 - t1
        diff += int((a != b).sum()) + (a.shape != b.shape)
        diff += int((alone.feed([0], groups[:1])[0] != b[0]).sum())
        fed += lanes * n
    slides = int(cpu.off.sum() // win["slide"])
    assert np.array_equal(cpu.off, dev.off) and np.array_equal(cpu.pos, dev.pos)
    return diff, fed, slides, t_cpu, t_dev


def check_archives(path, DB, PB, win, nbytes):
    from nacrith import neural
    text = ((b"It was the best of times, it was the worst of times, it was the age of wisdom, "
             b"it was the age of foolishness. \xff\x00 CRLF\r\n") * 8)[:nbytes]
    kw = dict(lanes=4, threads=1, **win)
    out = {}
    engines = {}
    for name, cls in (("cpu", PB), ("device", DB)):
        b = cls(path, **kw)
        engines[name] = SimpleNamespace(backend=b, tokenizer=byte_tokenizer(b))
    for enc, dec in (("device", "cpu"), ("cpu", "device")):
        engines[enc].backend.reset()
        lanes = neural.encode_segment(engines[enc], text, 4, len(text))
        engines[dec].backend.reset()
        back = neural.decode_lanes(engines[dec], lanes)
        out[enc] = (b"".join(p for _, p in lanes), back == text)
    same = out["cpu"][0] == out["device"][0]
    return same, out["device"][1], out["cpu"][1], len(out["cpu"][0]), len(text)


def check_batching(path, DB, PB, win, nbytes, n=6, decode=True, device_coder=False):
    """Continuous batching (nacrith/hub.py): n texts of 1-3 lanes coded at once, started at
    different times, through one device backend with room for min(5, n + 1) lanes (later ones
    wait for lanes), with the ensemble (multi-token catch-up groups): each payload against the same
    text coded alone on a CPU engine of its own; then all decoded at once through the hub.
    device_coder: the hub codes every coder's lanes on the device too (hub.DeviceLanes)."""
    import threading
    from nacrith import hub, neural
    from nacrith.mixer import DEFAULTS as mix, column_table
    base = (b"Lanes of other files share each step; none of them may change a bit of this "
            b"one. \r\n\x00\xff ") * 8
    texts = [base[i:i + nbytes + 3 * i] for i in range(n)]
    lanes = [1 + i % 3 for i in range(n)]
    kw = dict(threads=1, group=mix.skip_cap + 1, **win)

    def engine(cls, k):
        b = cls(path, lanes=k, **kw)
        t = byte_tokenizer(b)
        return SimpleNamespace(backend=b, tokenizer=t, column_table=column_table(t.pieces),
                               params={})
    ref = [neural.encode_segment(engine(PB, k), t, k, len(t), mix=mix)
           for t, k in zip(texts, lanes)]
    shared = engine(DB, min(5, n + 1))
    shared.backend.codes_on_device = device_coder
    h = hub.Hub(shared)
    got, back = [None] * n, [None] * n

    def code(i):
        time.sleep(0.05 * i)
        e = h.engine_for(lanes[i])
        got[i] = neural.encode_segment(e, texts[i], lanes[i], len(texts[i]), mix=mix)
        if decode:
            back[i] = neural.decode_lanes(e, ref[i], mix=mix)
    threads = [threading.Thread(target=code, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (h.coder is not None) == device_coder
    return got == ref, (back == texts) if decode else None, h.batches


def check_coder(path, DB, PB, win, nbytes):
    """The ensemble coded on the device (mixer/device.py: every lane's mixer, 24-bit CDF and
    arithmetic coder on the device: a thread per lane, or for preset 5 a block of threads per
    lane) against the CPU's LaneModels, for mix preset 4 with the confidence skip on (its skip
    kernels too) and preset 5 without and with it: payloads compared, then the device's
    lanes decoded on the CPU and the CPU's on the device.  {preset: (same, d2c, c2d)}."""
    from nacrith import neural
    from nacrith.mixer import MixParams, column_table
    text = ((b"the cat sat on the mat; the cat sat on the hat. \r\n\x00\xff " * 12)
            + b"It was the best of times, it was the worst of times.")[:nbytes]
    out = {}
    for name, params in (("4+skip", {"mix_preset": 4, "skip": 32768, "skip_cap": 3}),
                         ("5", {"mix_preset": 5}),
                         ("5+skip", {"mix_preset": 5, "skip": 32768, "skip_cap": 3})):
        mix = MixParams.from_params(params)
        kw = dict(lanes=3, threads=1, group=mix.skip_cap + 1, **win)
        eng = {}
        for side, cls in (("cpu", PB), ("device", DB)):
            b = cls(path, **kw)
            if side == "device":
                b.codes_on_device = True              # opt-in (portable/device.py)
            t = byte_tokenizer(b)
            eng[side] = SimpleNamespace(backend=b, tokenizer=t, params={},
                                        column_table=column_table(t.pieces))
        assert eng["device"].backend.codes_on_device and not getattr(
            eng["cpu"].backend, "codes_on_device", False)
        lanes = {side: neural.encode_segment(e, text, 3, len(text), mix=mix)
                 for side, e in eng.items()}
        d2c = neural.decode_lanes(eng["cpu"], lanes["device"], mix=mix) == text
        c2d = neural.decode_lanes(eng["device"], lanes["cpu"], mix=mix) == text
        out[name] = (lanes["cpu"] == lanes["device"], d2c, c2d,
                     sum(len(p) for _, p in lanes["cpu"]))
    return out


def _per_step(cuda, steps, step):
    """(seconds per call of step(t) over t = 1 .. steps - 1, step(0)'s result: the warm-up that
    compiles)."""
    first = step(0)
    cuda.synchronize()
    t0 = time.perf_counter()
    for t in range(1, steps):
        step(t)
    cuda.synchronize()
    return (time.perf_counter() - t0) / (steps - 1), first


CODER_VARIANTS = (("4", 4, None), ("5/64", 5, 64), ("5/128", 5, 128), ("5/256", 5, 256))


def coder_speed(lanes_list, n_vocab, steps):
    """tokens/s of the device coder alone (mixer/device.py, no skip) at each lane count that
    fits, for preset 4 (a thread per lane) and preset 5 (a block of 64, 128, 256 threads per
    lane): random logits already on the device, `steps` encode steps, then as many decode steps;
    the lanes are also capped by LaneBatch.lanes_that_fit.  Rows (variant, lanes, encode s/step,
    decode s/step, MiB per lane) or (variant, lanes, why not)."""
    from nacrith.mixer import PRESETS
    from nacrith.mixer.device import LaneBatch
    cuda = __import__("nacrith.gpu", fromlist=["x"]).numba_cuda()
    rng = np.random.default_rng(0)
    tcol = np.zeros((3, n_vocab), np.int32)
    rows = []
    for name, pid, threads in CODER_VARIANTS:
        mp = PRESETS[pid]
        for n in lanes_list:
            fit = LaneBatch.lanes_that_fit(mp, n_vocab, steps)
            if n > fit:
                rows.append((name, n, f"does not fit ({fit} lanes fit)"))
                continue
            logits = cuda.to_device((rng.standard_normal((n, n_vocab)) * 4).astype(np.float32))
            syms = rng.integers(0, n_vocab, (steps, n))
            lanes = list(range(n))
            b = LaneBatch(mp, n_vocab, n, steps, tcol, threads=threads)
            te, _ = _per_step(cuda, steps, lambda t: b.encode(logits, lanes, [], syms[t]))
            d = LaneBatch(mp, n_vocab, n, steps, tcol, threads=threads)
            d.start_decode(dict(enumerate(b.finish(lanes))))
            td, first = _per_step(cuda, steps, lambda t: d.decode(logits, lanes, []))
            if not np.array_equal(first, syms[0]):
                rows.append((name, n, "MISMATCH: decoded symbols differ"))
                continue
            rows.append((name, n, te, td, LaneBatch.bytes_per_lane(mp, n_vocab, steps) / 2**20))
            b = d = None                            # their device memory, before the next row
    return rows


def split(dev, lanes, reps):
    """ms per step of the matrix products alone and of attention alone (fill 1024), launched
    eagerly (so each includes its launch cost)."""
    from numba import cuda
    dev.pos[:] = 1024
    dev.forward(list(range(lanes)), [[1]] * lanes)
    st = dev._step_views(lanes, lanes)
    b = dev.b

    def mats():
        for l in range(dev.m.n_layer):
            dev._mm(st, dev.wqkv[l], st.qD, st.qkv, 0)
            dev._mm(st, dev.wo[l], st.qN, st.x, 1)
            dev._mm(st, dev.wgu[l], st.qD, st.gu, 0)
            dev._mm(st, dev.wdn[l], st.qF, st.x, 1)
        dev._mm(st, dev.out, st.qS, st.logits, 2)

    def attn():
        for l in range(dev.m.n_layer):
            c = dev.layer_views[l]
            st.L.attend(st.qq, st.dq, c[7], c[4], c[8], c[6], st.lane, st.slot, dev.kq_scale,
                        b["sc"], b["pp"], st.att)
    out = []
    for f in (mats, attn):
        f()
        cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        cuda.synchronize()
        out.append((time.perf_counter() - t0) / reps * 1e3)
    return out


def speed(path, lanes_list, steps, DB):
    from numba import cuda
    from nacrith.portable.device import GRAPH_AFTER
    from nacrith.portable.model import load
    m = load(path)
    rows = []
    for lanes in lanes_list:
        try:
            dev = DB(path, ctx=2048, lanes=lanes, slide=512, n_keep=1, model=m)
        except Exception as e:           # out of memory, ...
            rows.append((lanes, f"failed: {type(e).__name__}: {e}"))
            continue
        ls = list(range(lanes))
        rng = np.random.default_rng(0)
        res = {}
        for fill in (0, 1024, 2040):
            dev.pos[:] = fill
            toks = [[int(t)] for t in rng.integers(0, m.n_vocab, lanes)]
            for _ in range(GRAPH_AFTER + 1):                   # warm-up: compiles, captures
                dev.forward(ls, toks)
            cuda.synchronize()
            dev.pos[:] = fill
            t0 = time.perf_counter()
            for _ in range(steps):
                dev.forward(ls, toks)
            cuda.synchronize()
            dt = (time.perf_counter() - t0) / steps
            dev.pos[:] = fill
            t0 = time.perf_counter()
            for _ in range(steps):
                dev.feed(ls, toks)
            dt2 = (time.perf_counter() - t0) / steps
            res[fill] = (lanes / dt, dt * 1e3, lanes / dt2)
        free, total = cuda.current_context().get_memory_info()
        print(f"  {lanes} lanes: CUDA graphs {'on' if dev.graphs else 'off'}"
              f"{'' if dev.graph_error is None else ' (' + dev.graph_error[:300] + ')'}",
              flush=True)
        res["split"] = split(dev, lanes, steps)
        rows.append((lanes, res, (total - free) / 2**30))
        del dev
        import gc
        gc.collect()
    return rows


E2E_TEXT = (b"It was the best of times, it was the worst of times, it was the age of wisdom, it "
            b"was the age of foolishness, it was the epoch of belief, it was the epoch of "
            b"incredulity, it was the season of Light, it was the season of Darkness.\n")


def end_to_end(path, DB, lanes_list, win, nbytes, budget=240.0):
    """Text per GPU through continuous batching with the coder on the device (nacrith/hub.py,
    mixer/device.py; mix preset 5, a block of threads per lane): at each lane count, a tree of
    2 x lanes small texts of ~nbytes each, then one text of lanes x nbytes cut into lanes
    segments, each coded as one lane in a thread of its own through one shared device backend,
    then all decoded the same way.  The split: the time in the device forward pass and the
    coder's launches (synchronised) against the wall time; the rest is the host (the hub's
    batching, the coders' threads).  Tokens are bytes here (the random model's byte
    tokenizer); SmolLM2's tokenizer takes ~4 bytes of English per token.  Rows (lanes, files,
    bytes, compress s, its device s, decompress s, its device s, round trip ok, steps, where the
    coder ran) or
    (lanes, why not); once a row took more than `budget` seconds the larger ones are left out."""
    import threading
    from nacrith import hub, neural
    from nacrith.mixer import PRESETS, column_table
    from nacrith.mixer import device as MD
    cuda = __import__("nacrith.gpu", fromlist=["x"]).numba_cuda()
    mix = PRESETS[5]
    rows, took = [], 0.0
    for L in lanes_list:
        if took > budget:
            rows.append((L, f"left out: a smaller row took {took:.0f} s"))
            continue
        texts = [(b"file %d: " % i + E2E_TEXT * (nbytes // len(E2E_TEXT) + 2))[
            i % 50:i % 50 + nbytes + i % 97] for i in range(2 * L)]
        big = (E2E_TEXT * (L * nbytes // len(E2E_TEXT) + 1))[:L * nbytes]
        texts += [big[i * nbytes:(i + 1) * nbytes] for i in range(L)]
        try:
            b = DB(path, lanes=L, threads=1, group=1, **win)
        except Exception as e:                          # out of memory, ...
            rows.append((L, f"failed: {type(e).__name__}: {e}"))
            continue
        b.codes_on_device = True
        t = byte_tokenizer(b)
        h = hub.Hub(SimpleNamespace(backend=b, tokenizer=t, params={},
                                    column_table=column_table(t.pieces)))
        dev = [0.0]

        def timed(f):
            def g(*a, **k):
                t0 = time.perf_counter()
                r = f(*a, **k)
                cuda.synchronize()
                dev[0] += time.perf_counter() - t0
                return r
            return g
        b.forward = timed(b.forward)
        old = MD.LaneBatch.encode, MD.LaneBatch.decode
        MD.LaneBatch.encode, MD.LaneBatch.decode = timed(old[0]), timed(old[1])
        payloads = [None] * len(texts)
        back = [None] * len(texts)

        def run(work):
            nxt = iter(range(len(texts)))
            lock = threading.Lock()

            def worker():
                e = h.engine_for(1)
                while True:
                    with lock:
                        i = next(nxt, None)
                    if i is None:
                        return
                    work(e, i)
            ths = [threading.Thread(target=worker) for _ in range(L)]
            dev[0] = 0.0
            t0 = time.perf_counter()
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            return time.perf_counter() - t0, dev[0]

        def enc(e, i):
            payloads[i] = neural.encode_segment(e, texts[i], 1, len(texts[i]), mix=mix)

        def dec(e, i):
            back[i] = neural.decode_lanes(e, payloads[i], mix=mix)
        try:
            tc, dc = run(enc)
            steps = h.batches
            td, dd = run(dec)
        finally:
            MD.LaneBatch.encode, MD.LaneBatch.decode = old
        n = sum(len(x) for x in texts)
        took = tc + td
        where = "device" if h.coder is not None else "host (the coder's lanes did not fit)"
        rows.append((L, len(texts), n, tc, dc, td, dd, back == texts, steps, where))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sim", action="store_true", help="CUDA simulator, tiny model (CPU only)")
    ap.add_argument("--steps", type=int, default=520, help="feeds per logits check")
    ap.add_argument("--lanes", default="1,64,256,1024,4096", help="speed rows")
    ap.add_argument("--check-lanes", default="1,4,64", help="lane counts of the logits check")
    ap.add_argument("--ctx", type=int, default=128, help="window of the logits/archive checks")
    ap.add_argument("--slide", type=int, default=32)
    ap.add_argument("--n-keep", type=int, default=1)
    ap.add_argument("--text-bytes", type=int, default=714, help="size of the archive check's text")
    ap.add_argument("--speed-steps", type=int, default=5)
    ap.add_argument("--batch-texts", type=int, default=6, help="texts of the batching check")
    ap.add_argument("--coder-bytes", type=int, default=600, help="text of the coder check")
    ap.add_argument("--coder-steps", type=int, default=8, help="steps of the coder speed rows")
    ap.add_argument("--e2e-lanes", default="256,1024,4096", help="end-to-end rows")
    ap.add_argument("--e2e-bytes", type=int, default=256, help="bytes of each end-to-end file")
    ap.add_argument("--e2e-ctx", type=int, default=2048, help="window of the end-to-end rows")
    ap.add_argument("--skip", default="",
                    help="comma list of parts to skip: logits,archives,batching,coder,"
                         "coder-speed,e2e,speed")
    a = ap.parse_args(argv)
    if a.sim:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    skip = set(a.skip.split(","))
    from nacrith.portable import PortableBackend
    from nacrith.portable.device import DeviceBackend, _cuda
    from nacrith.portable.tiny import write_tiny_llama
    cuda = _cuda()
    print(f"device: {'CUDA simulator' if a.sim else _name(cuda)}"
          f" | numba {__import__('numba').__version__}", flush=True)
    tmp = Path(tempfile.mkdtemp())
    shapes = TINY if a.sim else SMOL
    t0 = time.perf_counter()
    path = str(write_tiny_llama(tmp / "random.gguf", seed=1, **shapes))
    print(f"random GGUF {shapes} written in {time.perf_counter() - t0:.1f} s", flush=True)
    ok = True
    win = dict(ctx=a.ctx, slide=a.slide, n_keep=a.n_keep)
    if "logits" not in skip:
        print(f"ctx {a.ctx}, slide {a.slide}; differing: CPU vs device, and lane 0 vs alone")
        print("| lanes | feeds | tokens | slides | differing logits | CPU s | device s |")
        print("|---|---|---|---|---|---|---|")
        for lanes in [int(x) for x in a.check_lanes.split(",")]:
            diff, fed, slides, tc, td = check_logits(path, lanes, a.steps, DeviceBackend,
                                                     PortableBackend, win)
            ok &= diff == 0
            print(f"| {lanes} | {a.steps} | {fed} | {slides} | {diff} | {tc:.1f} | {td:.1f} |",
                  flush=True)
    if "archives" not in skip:
        same, d2c, c2d, nbytes, ntext = check_archives(path, DeviceBackend, PortableBackend, win,
                                                       a.text_bytes)
        ok &= same and d2c and c2d
        print(f"archives: device payload == cpu payload: {same} ({nbytes} bytes for {ntext}); "
              f"device->cpu round trip: {d2c}; cpu->device round trip: {c2d}", flush=True)
    if "batching" not in skip:
        same, back, batches = check_batching(path, DeviceBackend, PortableBackend, win,
                                             a.text_bytes, a.batch_texts, decode=not a.sim)
        ok &= same and back is not False
        dec = "not checked (--sim)" if back is None else back
        print(f"continuous batching: {a.batch_texts} texts at once on one device backend == "
              f"each alone on the CPU: {same}; decoded at once: {dec} ({batches} device feeds)",
              flush=True)
    if not a.sim and "batching" not in skip and "coder" not in skip:
        same, back, batches = check_batching(path, DeviceBackend, PortableBackend, win,
                                             a.text_bytes, a.batch_texts, device_coder=True)
        ok &= same and back is not False
        print(f"continuous batching, coder on the device too: {a.batch_texts} texts at once == "
              f"each alone on the CPU: {same}; decoded at once: {back} ({batches} steps)",
              flush=True)
    if "coder" not in skip:
        for name, (same, d2c, c2d, nb) in check_coder(path, DeviceBackend, PortableBackend, win,
                                                      a.coder_bytes).items():
            ok &= same and d2c and c2d
            print(f"ensemble on the device, mix preset {name}: device payload == cpu payload: "
                  f"{same} ({nb} bytes); device->cpu round trip: {d2c}; cpu->device round trip: "
                  f"{c2d}", flush=True)
    if not a.sim and "coder-speed" not in skip:
        print(f"device coder alone (V {SMOL['n_vocab']}; preset 4: a thread per lane, "
              f"preset 5/T: a block of T threads per lane):")
        print("| preset | lanes | encode ms/step | encode tok/s | decode ms/step | decode tok/s | "
              "MiB per lane |")
        print("|---|---|---|---|---|---|---|")
        for row in coder_speed([int(x) for x in a.lanes.split(",")], SMOL["n_vocab"],
                               a.coder_steps):
            if isinstance(row[2], str):
                ok &= not row[2].startswith("MISMATCH")
                print(f"| {row[0]} | {row[1]} | {row[2]} |")
                continue
            name, n, te, td, mib = row
            print(f"| {name} | {n} | {te * 1e3:.1f} | {n / te:.0f} | {td * 1e3:.1f} | "
                  f"{n / td:.0f} | {mib:.1f} |", flush=True)
    if "e2e" not in skip:
        print(f"end to end, coder on the device (mix preset 5, a block of threads per lane), "
              f"ctx {a.e2e_ctx}: 2 x lanes files of ~{a.e2e_bytes} bytes, then one text of lanes "
              f"x {a.e2e_bytes} bytes in lanes segments; a thread per file, one shared backend; "
              f"tokens = bytes (the random model's byte tokenizer)")
        print("| lanes | files | bytes | compress bytes/s | device share | decompress bytes/s | "
              "device share | round trip | steps | coder on |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        e2e_win = dict(ctx=a.e2e_ctx, slide=max(1, a.e2e_ctx // 4), n_keep=1)
        for row in end_to_end(path, DeviceBackend, [int(x) for x in a.e2e_lanes.split(",")],
                              e2e_win, a.e2e_bytes):
            if isinstance(row[1], str):
                print(f"| {row[0]} | {row[1]} |")
                continue
            L, nf, n, tc, dc, td, dd, rt, steps, where = row
            ok &= rt
            print(f"| {L} | {nf} | {n} | {n / tc:.0f} | {dc / tc:.0%} | {n / td:.0f} | "
                  f"{dd / td:.0%} | {rt} | {steps} | {where} |", flush=True)
    if not a.sim and "speed" not in skip:
        lanes = [int(x) for x in a.lanes.split(",")]
        from nacrith.portable.device import _use_triton
        print(f"speed, ctx 2048, matrix products on "
              f"{'Triton int8 tensor cores' if _use_triton() else 'numba (no Triton)'}:")
        print("| lanes | tok/s fill 0 | ms/step | tok/s fill 1024 | ms/step | tok/s fill 2040 "
              "| ms/step | tok/s fill 1024 with logits to host | device GiB used | "
              "matrices ms | attention ms (fill 1024) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in speed(path, lanes, a.speed_steps, DeviceBackend):
            if isinstance(row[1], str):
                print(f"| {row[0]} | {row[1]} |")
                continue
            n, res, gib = row
            print(f"| {n} | " + " | ".join(f"{res[f][0]:.0f} | {res[f][1]:.1f}"
                                           for f in (0, 1024, 2040))
                  + f" | {res[1024][2]:.0f} | {gib:.1f} | {res['split'][0]:.1f} | "
                  f"{res['split'][1]:.1f} |", flush=True)
    print("ALL OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
