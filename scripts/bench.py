#!/usr/bin/env python3
"""Benchmark: nacrith vs the model's own cross-entropy vs classic compressors, in one run.

For each file prints original size, nacrith size, bpb, compress/decompress tokens/s, the raw
llama.cpp decode throughput of the same model/settings measured in the same run (a plain loop
feeding one token per llama_decode, with the same KV slide) with the ratio nacrith/raw, the
model's cross-entropy in bpb from that raw loop, and gzip -9 / bzip2 -9 / xz -9e / zstd -19.

    python scripts/bench.py                       # alice29.txt whole + 16 KB of the other texts
    python scripts/bench.py --files alice29.txt --ctx-chart 1024,2048,4096,8192
    python scripts/bench.py --model gemma3 --files alice29.txt --alice-bytes 49152 \
        --ctx-chart 2048,8192,32768 --swa-full on,off      # each ctx with both SWA caches
    python scripts/bench.py --model gemma3 --threads 2 --step-probe 8192:on,32768:off

--backends llama,portable compares the inference backends in one run, same settings: per text
slice (--bytes, default 8 KB here; 0 = whole files) the LLM-only bpb (cross-entropy of the
backend's own logits, one token per feed, i.e. the LLM-only coder's call pattern) with its
tokens/s, the full-ensemble archive bpb and compress tokens/s (nacrith.compress), and per
backend single-sequence tokens/s at window fills (--fills) and the lanes sweep (--lanes-sweep,
compress tokens/s of alice29's slice).  Each (backend, text) runs in its own child process,
backends alternating text by text so both see the same machine load; peak RSS is that child's
ru_maxrss.

    python scripts/bench.py --backends llama,portable --threads 2 [--bytes 0] [--lanes-sweep 1,4]
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import io
import math
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nacrith import api, models  # noqa: E402
from nacrith.mixer import DEFAULTS, LaneModel, MixParams  # noqa: E402
from nacrith.neural import lockstep, split_lanes  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
TEXTS = ["alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt", "cp.html", "fields.c",
         "grammar.lsp", "xargs.1"]


def classic(data: bytes) -> dict:
    return {
        "gzip-9": len(gzip.compress(data, 9)),
        "bzip2-9": len(bz2.compress(data, 9)),
        "xz-9e": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)),
        "zstd-19": len(zstandard.ZstdCompressor(level=19).compress(data)),
    }


def raw_llm(engine, data: bytes) -> tuple[float, float, int]:
    """Plain llama.cpp loop over the exact tokens, split into the engine's lanes and decoded in
    lockstep (one token per lane per llama_decode): (cross-entropy bits, seconds, tokens)."""
    toks = [engine.tokenizer.tokenize(part)[0] for part in split_lanes(data, engine.backend.lanes)]
    bits = 0.0

    def code(lane, t, row):
        nonlocal bits
        x = row.astype(np.float64)
        m = x.max()
        tok = toks[lane][t]
        bits += (m + math.log(np.exp(x - m).sum()) - x[tok]) / math.log(2)
        return int(tok)

    t0 = time.perf_counter()
    counts = [len(t) for t in toks]
    lockstep(engine.backend, len(counts), lambda lane, t: t < counts[lane], code)
    return bits, time.perf_counter() - t0, sum(len(t) for t in toks)


def token_bits(engine, data: bytes, ctx: int, slide: int, mixes: dict):
    """({name: float64[n], the coded bits of each of data's n tokens}, tokens int64[n]) for each
    MixParams in mixes (MixParams() = the LLM alone) with the KV window (ctx, slide, n_keep 1):
    the tokens are fed in chunks whose size divides slide, with logits for every token, each
    chunk after the slides the coder would make before it, so every token attends to exactly the
    positions it has in nacrith's one-token-per-step decode (the logits agree to float rounding;
    the coder's own loop is too slow to chart several ctx)."""
    B, L = engine.backend, engine.backend.L
    toks = np.asarray(engine.tokenizer.tokenize(data)[0], dtype=np.int64)
    n, V = len(toks), B.n_vocab
    chunk = math.gcd(slide, ctx, B.n_batch)
    feed = np.concatenate([[B.bos], toks[:-1]])
    lanes = {k: LaneModel(mp, V, n, engine.column_table if mp.col_lr else None)
             for k, mp in mixes.items()}
    bits = {k: np.zeros(n, dtype=np.float64) for k in mixes}
    B.reset()
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        while B.pos[0] + m > ctx:
            B._slide(0)
        for j in range(m):
            B._tok[j], B._pos[j], B._logit[j] = feed[i + j], B.pos[0] + j, 1
            B.batch.seq_id[j][0] = 0
        B.pos[0] += m
        B.batch.n_tokens = m
        if L.llama_decode(B.lctx, B.batch) != 0:
            raise SystemExit("llama_decode failed")
        lg = np.ctypeslib.as_array(L.llama_get_logits(B.lctx), shape=(m, V))
        for k, lm in lanes.items():
            f = lm.costs(lg, toks[i:i + m])
            bits[k][i:i + m] = 24.0 - np.log2(f.astype(np.float64))
    B.reset()
    return bits, toks


def window_bits(engine, data: bytes, ctx: int, slide: int, mixes: dict) -> tuple[dict, int]:
    """({name: coded bits of data's tokens}, token count): token_bits summed."""
    bits, toks = token_bits(engine, data, ctx, slide, mixes)
    return {k: float(b.sum()) for k, b in bits.items()}, len(toks)


def steady_tps(engine, ctx: int, slide: int, probes: int = 4, steps: int = 32) -> float:
    """Single-sequence tokens/s once the window is full: the window then holds between
    ctx - slide and ctx positions, so single-token decodes are timed at `probes` fills spread
    evenly over that range (reached by batched prefill) and averaged."""
    B = engine.backend
    per_tok = []
    B.reset()
    for k in range(probes):         # fills increase by slide / probes >= steps: no reset between
        fill = ctx - slide + (2 * k + 1) * slide // (2 * probes) - steps // 2
        while B.pos[0] < fill:
            B.feed([0], [[B.bos] * min(B.n_batch, fill - int(B.pos[0]), ctx - 1)])
        t0 = time.perf_counter()
        for _ in range(steps):
            B.step([0], [B.bos])
        per_tok.append((time.perf_counter() - t0) / steps)
    B.reset()
    return 1.0 / (sum(per_tok) / len(per_tok))


def ctx_chart(opts: api.Options, files, load, ctxs, swas=(None,)) -> None:
    """bpb (LLM only and the default ensemble) and steady single-sequence speed per ctx, and per
    swa_full setting within each ctx (llama.cpp backend; "-" when the model has no SWA)."""
    print("\n| ctx | slide | swa_full | file | bytes | tokens | LLM bpb | ensemble bpb | "
          "steady raw tok/s | seconds |\n|---|---|---|---|---|---|---|---|---|---|")
    for ctx in ctxs:
        for swa in swas:
            t0 = time.perf_counter()
            o = api._options(opts, {"ctx": ctx, "slide": max(1, ctx // 4), "n_keep": 1,
                                    "swa_full": swa})
            eng = api.get_engine(models.resolve(o.model), o)
            shown = {None: "-", True: "on", False: "off"}[getattr(eng.backend, "swa_full", None)]
            tps = steady_tps(eng, o.ctx, o.slide)
            for name in files:
                data = load(name)
                bits, n = window_bits(eng, data, o.ctx, o.slide,
                                      {"llm": MixParams(), "ens": DEFAULTS})
                print(f"| {ctx} | {o.slide} | {shown} | {name} | {len(data)} | {n} | "
                      f"{bits['llm'] / len(data):.4f} | {bits['ens'] / len(data):.4f} | "
                      f"{tps:.1f} | {time.perf_counter() - t0:.0f} |", flush=True)
            eng.backend.close()         # one window's KV cache at a time (ctx 32768: ~600 MB)


def step_probe(opts: api.Options, configs, steps: int = 16, rounds: int = 12) -> None:
    """Single-token tok/s of several llama.cpp contexts at once (ctx, swa_full): each filled to
    ctx - slide/2 by batched prefill, then rounds of `steps` decodes rotate over them, so every
    context sees the same machine load; median and best round per context."""
    import statistics
    from nacrith.backend import Backend
    path, bs = str(models.resolve(opts.model)), {}
    for ctx, swa in configs:
        slide = max(1, ctx // 4)
        B = Backend(path, ctx=ctx, lanes=1, threads=opts.threads, slide=slide, n_keep=1,
                    swa_full=swa)
        t0, fill = time.perf_counter(), ctx - slide // 2
        while B.pos[0] < fill:
            B.feed([0], [[B.bos] * min(B.n_batch, fill - int(B.pos[0]))])
        print(f"# ctx {ctx} swa_full {'on' if swa else 'off'}: prefill of {fill} tokens "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        bs[ctx, swa] = B
    keys, per = list(bs), {k: [] for k in bs}
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            t0 = time.perf_counter()
            for _ in range(steps):
                bs[k].step([0], [bs[k].bos])
            per[k].append(steps / (time.perf_counter() - t0))
    print("\n| ctx | swa_full | median tok/s | best round tok/s |\n|---|---|---|---|")
    for (ctx, swa), v in per.items():
        print(f"| {ctx} | {'on' if swa else 'off'} | {statistics.median(v):.1f} | "
              f"{max(v):.1f} |")


def cli(*args: str, stdin=None) -> bytes:
    r = subprocess.run([sys.executable, "-m", "nacrith", *args], stdin=stdin,
                       capture_output=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"nacrith {' '.join(args)} failed: {r.stderr.decode()}")
    return r.stdout


def bench_file(name: str, data: bytes, opts: api.Options, decompress: bool) -> dict:
    """Raw LLM loop in this process; compress and decompress through the CLI, each in its own
    process (so the round trip is the real one; times include ~1-2 s of start-up)."""
    engine = api.get_engine(models.resolve(opts.model), opts)
    ce_bits, raw_s, n_tok = raw_llm(engine, data)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / name
        src.write_bytes(data)
        flags = ["--threads", str(opts.threads), "--ctx", str(opts.ctx), "--lanes", str(opts.lanes)]
        if opts.model:
            flags += ["--model", str(opts.model)]
        if opts.skip:
            flags += ["--skip", repr(opts.skip / 65536)]
        warm = Path(tmp) / "warm-up.txt"        # compiles/loads the Numba kernels of these
        warm.write_bytes(data[:400] * 2)         # flags, so no timed run pays for compilation
        cli("compress", "-q", "-f", *flags, str(warm))
        cli("decompress", "-q", "-c", str(warm) + ".nc")
        t0 = time.perf_counter()
        cli("compress", "-q", *flags, str(src))
        c_s = time.perf_counter() - t0
        blob = (Path(tmp) / (name + ".nc")).read_bytes()
        payload = sum(s["compressed"] for s in api.scan(io.BytesIO(blob)).segments)
        row = {"file": name, "bytes": len(data), "tokens": n_tok, "nc": len(blob),
               "bpb": 8 * len(blob) / len(data), "payload_bpb": 8 * payload / len(data),
               "ce_bpb": ce_bits / len(data), "raw_tps": n_tok / raw_s, "c_tps": n_tok / c_s}
        if decompress:
            t0 = time.perf_counter()
            out = cli("decompress", "-q", "-c", str(Path(tmp) / (name + ".nc")))
            row["d_tps"] = n_tok / (time.perf_counter() - t0)
            row["roundtrip"] = "ok" if out == data else "FAIL"
    row.update({k: 8 * v / len(data) for k, v in classic(data).items()})
    return row


def nll_bits(row, tok) -> float:
    x = np.asarray(row, np.float64)
    m = x.max()
    return (m + math.log(np.exp(x - m).sum()) - x[tok]) / math.log(2)


def fill_window(b, toks, fill: int) -> list:
    """Reset engine b's lane 0 and feed it `fill` tokens (toks repeated, 256 per feed); the token
    sequence, whose items from index `fill` on are the ones to probe with."""
    b.reset()
    seq = toks * (b.ctx // max(1, len(toks)) + 2)
    for i in range(0, fill, 256):
        b.feed([0], [seq[i:min(fill, i + 256)]])
    return seq


def backend_child(job: dict) -> dict:
    """One (backend, text) measurement in this fresh process (see the module docstring)."""
    import nacrith
    from nacrith.backend import Backend
    from nacrith.portable import PortableBackend
    data = job["data"].encode("latin-1")
    th, ctx = job["threads"], job["ctx"]
    kw = dict(ctx=ctx, lanes=1, threads=th, slide=ctx // 4, n_keep=1)
    path = str(models.resolve(job.get("model")))
    b = (PortableBackend if job["backend"] == "portable" else Backend)(path, **kw)
    toks = [int(t) for t in b.tokenize(data)]
    nbytes = sum(len(b.piece(t)) for t in toks)
    warm = dict(backend=job["backend"], threads=th, ctx=ctx, model=job.get("model"))
    nacrith.compress(data[:600], **warm)            # Numba cache / model load outside the timing
    b.feed([0], [[b.bos]])
    res = {"tokens": len(toks)}
    b.reset()
    bits, prev, t0 = 0.0, b.bos, time.perf_counter()
    for t in toks:
        bits += nll_bits(b.feed([0], [[prev]])[0], t)
        prev = t
    res["llm_tps"] = len(toks) / (time.perf_counter() - t0)
    res["llm_bpb"] = bits / nbytes
    t0 = time.perf_counter()
    blob = nacrith.compress(data, **warm)
    res["c_tps"] = len(toks) / (time.perf_counter() - t0)
    res["ens_bpb"] = 8 * len(blob) / len(data)
    if job.get("verify"):
        res["roundtrip"] = nacrith.decompress(blob, threads=th) == data
    for fill in job.get("fills", []):
        if fill + job["probe"] > ctx:
            continue
        seq = fill_window(b, toks, fill)
        t0 = time.perf_counter()
        for t in seq[fill:fill + job["probe"]]:
            b.feed([0], [[t]])
        res[f"tps@{fill}"] = job["probe"] / (time.perf_counter() - t0)
    for k in job.get("lanes", []):
        n = len(nacrith.compress(data[:1000], **warm, lanes=k))
        t0 = time.perf_counter()
        n = len(nacrith.compress(data, **warm, lanes=k))
        res[f"c_tps@lanes{k}"] = len(toks) / (time.perf_counter() - t0)
        res[f"bpb@lanes{k}"] = 8 * n / len(data)
    b.close() if hasattr(b, "close") else None
    res["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def stage_profile(args, data: bytes) -> None:
    """--stages: where one token's time goes in the portable engine, single lane, at each window
    fill (--fills), this process, --threads.  The engine's team kernel counts the CPU's cycles
    per stage on each thread (a stage includes waiting for the stage's last chunk); the calling
    thread's are shown, in ms; "Python" is the rest of the feed (planning, RoPE tables, the
    team's start).  Then one nacrith.compress of the text: engine time vs the host's (mixer,
    CDF, coder, Python)."""
    import nacrith
    from nacrith.portable import PortableBackend
    from nacrith.portable import kernels as K
    from nacrith.portable.team import cycles
    th = args.threads or api.default_threads("portable")
    b = PortableBackend(str(models.resolve(None)), ctx=args.ctx, lanes=1, threads=th,
                        slide=args.ctx // 4, n_keep=1)
    toks = [int(t) for t in b.tokenize(data)]
    import numba

    @numba.njit
    def now():
        return cycles()
    c0, t0 = now(), time.perf_counter()
    time.sleep(0.2)
    hz = (now() - c0) / (time.perf_counter() - t0)
    if hz <= 0:
        print("\n# --stages needs the x86 time-stamp counter")
        return
    fills = [int(v) for v in args.fills.split(",") if v]
    rows = []
    b.feed([0], [[b.bos]])
    for fill in fills:
        if fill + args.probe > args.ctx:
            continue
        best = None
        for _ in range(3):
            seq = fill_window(b, toks, fill)
            b.clock = np.zeros((th, len(K.STAGES)), np.int64)
            t = time.perf_counter()
            for tok in seq[fill:fill + args.probe]:
                b.feed([0], [[tok]])
            tot = (time.perf_counter() - t) / args.probe
            if best is None or tot < best[0]:
                best = (tot, b.clock[0] / hz / args.probe)
            b.clock = None
        rows.append((fill, *best))
    print(f"\n# portable engine, 1 lane, threads {th}, ctx {args.ctx}; ms per token (best of 3 "
          f"runs of {args.probe} tokens), stages as seen by the calling thread")
    print("| fill | token ms | tok/s | " + " | ".join(K.STAGES) + " | Python |")
    print("|---|---|---|" + "---|" * (len(K.STAGES) + 1))
    for fill, tot, st in rows:
        print(f"| {fill} | {tot * 1e3:.2f} | {1 / tot:.1f} | "
              + " | ".join(f"{v * 1e3:.2f}" for v in st) + f" | {(tot - st.sum()) * 1e3:.2f} |")
    feed_t = [0.0]
    feed = PortableBackend.feed

    def counted(self, *a):
        t = time.perf_counter()
        r = feed(self, *a)
        feed_t[0] += time.perf_counter() - t
        return r
    PortableBackend.feed = counted
    try:
        nacrith.compress(data[:300], backend="portable", threads=th, ctx=args.ctx)  # same engine
        feed_t[0] = 0.0
        t = time.perf_counter()
        nacrith.compress(data, backend="portable", threads=th, ctx=args.ctx)
        wall = time.perf_counter() - t
    finally:
        PortableBackend.feed = feed
    n = len(toks)
    print(f"\n# nacrith.compress of {len(data)} bytes ({n} tokens, coded and verified): "
          f"{wall:.2f} s, engine {feed_t[0]:.2f} s ({feed_t[0] / wall:.0%}), host (mixer, CDF, "
          f"coder, Python) {wall - feed_t[0]:.2f} s = {(wall - feed_t[0]) / (2 * n) * 1e3:.2f} ms "
          "per coded token")


def compare_backends(args, files, load) -> None:
    names = [n for n in args.backends.split(",") if n]
    ths = {be: args.threads or api.default_threads(be) for be in names}   # each backend's default
    fills = [int(f) for f in args.fills.split(",") if f]
    rows = {}
    for i, name in enumerate(files):
        data = load(name)
        for be in names:
            job = {"backend": be, "data": data.decode("latin-1"), "threads": ths[be], "ctx": args.ctx,
                   "model": args.model,
                   "probe": args.probe, "verify": not args.no_decompress,
                   "fills": fills if i == 0 else [],
                   "lanes": [int(k) for k in args.lanes_sweep.split(",") if k] if i == 0 else []}
            r = subprocess.run([sys.executable, __file__, "--_child"], input=json.dumps(job).encode(),
                               capture_output=True, cwd=ROOT)
            if r.returncode != 0:
                raise SystemExit(f"{be} on {name} failed: {r.stderr.decode()[-2000:]}")
            rows[be, name] = {"bytes": len(data), **json.loads(r.stdout.decode().splitlines()[-1])}
            print(f"# {be} {name}: {rows[be, name]}", file=sys.stderr, flush=True)
    a, b = (names + names)[:2]
    print("\n| file | bytes | tokens | " + " | ".join(
        f"{be} LLM bpb | {be} ensemble bpb | {be} LLM tok/s | {be} compress tok/s" for be in names)
        + f" | ensemble bpb {b}/{a} | compress speed {b}/{a} |\n|" + "---|" * (3 + 4 * len(names) + 2))
    for name in files:
        r = [rows[be, name] for be in names]
        cells = [name, str(r[0]["bytes"]), str(r[0]["tokens"])]
        for x in r:
            cells += [f"{x['llm_bpb']:.4f}", f"{x['ens_bpb']:.4f}", f"{x['llm_tps']:.1f}",
                      f"{x['c_tps']:.1f}"]
        ra, rb = rows[a, name], rows[b, name]
        cells += [f"{rb['ens_bpb'] / ra['ens_bpb']:.4f}", f"{rb['c_tps'] / ra['c_tps']:.2f}x"]
        print("| " + " | ".join(cells) + " |")
    tot = {be: sum(rows[be, n]["tokens"] / rows[be, n]["c_tps"] for n in files) for be in names}
    ens = {be: sum(rows[be, n]["ens_bpb"] * rows[be, n]["bytes"] for n in files) for be in names}
    print(f"| all | {sum(rows[a, n]['bytes'] for n in files)} | {sum(rows[a, n]['tokens'] for n in files)}"
          f" | {' | '.join('-' for _ in range(4 * len(names)))} | {ens[b] / ens[a]:.4f} | "
          f"{tot[a] / tot[b]:.2f}x |")
    extra = sorted({k for (be, n), r in rows.items() for k in r if "@" in k},
                   key=lambda k: (k.split("@")[0], int(k.split("@")[1].replace("lanes", ""))))
    print(f"\n| measure ({files[0]} slice) | " + " | ".join(names) + f" | {b}/{a} |\n|"
          + "---|" * (len(names) + 2))
    for k in extra:
        v = [rows[be, files[0]].get(k) for be in names]
        if None not in v:
            fmt = "{:.4f}" if k.startswith("bpb") else "{:.1f}"
            print(f"| {k} | " + " | ".join(fmt.format(x) for x in v) + f" | {v[-1] / v[0]:.3f} |")
    rss = {be: max(rows[be, n]["rss_mib"] for n in files) for be in names}
    rt = {be: {rows[be, n].get("roundtrip") for n in files} for be in names}
    print("| peak RSS MiB | " + " | ".join(f"{rss[be]:.0f}" for be in names) + " | - |")
    print("| round trips | " + " | ".join("not run" if None in rt[be] else "FAIL" if False in rt[be]
                                          else "ok" for be in names) + " | - |")
    print(f"\n# threads {', '.join(f'{be} {t}' for be, t in ths.items())}, ctx {args.ctx}, slide {args.ctx // 4}, n_keep 1, lanes 1 unless "
          "stated; tok/s = tokens per second of the llama.cpp tokenisation; speed ratios from the "
          "same run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", default=",".join(TEXTS))
    ap.add_argument("--bytes", type=int, default=16384,
                    help="slice length for files other than alice29.txt (0 = whole file)")
    ap.add_argument("--alice-bytes", type=int, default=0, help="slice of alice29.txt (0 = whole)")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--slide", type=int, default=512)
    ap.add_argument("--n-keep", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--lanes", type=int, default=1)
    ap.add_argument("--model", default=None)
    ap.add_argument("--no-decompress", action="store_true")
    ap.add_argument("--ctx-chart", default="", help="comma list of ctx values (slide ctx/4): bpb "
                    "of the LLM and the ensemble, and steady single-sequence tok/s, per ctx")
    ap.add_argument("--swa-full", default="", help="on, off or on,off: llama.cpp's full-size "
                    "cache for sliding-window layers (Gemma-3; default: llama.cpp's, on); a "
                    "list runs --ctx-chart with each")
    ap.add_argument("--step-probe", default="", help="comma list of CTX:on|off (swa_full): "
                    "single-token tok/s of those llama.cpp contexts at a full window, timed in "
                    "rounds that rotate over them (same load for each)")
    ap.add_argument("--keep-sweep", default="", help="comma list of n_keep values (raw LLM loop)")
    ap.add_argument("--lanes-sweep", default="", help="comma list of lane counts: raw lockstep "
                    "llama.cpp throughput vs nacrith compress/decompress throughput and bpb")
    ap.add_argument("--skip-sweep", default="", help="comma list of confidence-skip thresholds "
                    "(0 = off): bpb and speed against the raw single-sequence loop")
    ap.add_argument("--repeat", type=int, nargs="?", const=2, default=1, metavar="N",
                    help="each file concatenated N times (--repeat alone: 2)")
    ap.add_argument("--backends", default="", help="comma list (llama,portable): compare the "
                    "inference backends in one run (module docstring)")
    ap.add_argument("--fills", default="0,1024", help="window fills for --backends speed probes")
    ap.add_argument("--probe", type=int, default=32, help="tokens timed per fill (--backends)")
    ap.add_argument("--stages", action="store_true", help="per-stage profile of the portable "
                    "engine at the window fills (--fills) and the host's share (stage_profile)")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(backend_child(json.loads(sys.stdin.read()))))
        return
    if args.backends and "--bytes" not in sys.argv:
        args.bytes = args.alice_bytes = 8192
    swas = [{"on": True, "off": False}[v] for v in args.swa_full.split(",") if v] or [None]
    opts = api._options(None, dict(model=args.model, ctx=args.ctx, slide=args.slide,
                                   n_keep=args.n_keep, threads=args.threads, lanes=args.lanes,
                                   swa_full=swas[0]))
    print(f"# machine: {platform.machine()}, {platform.processor() or '?'}, "
          f"{__import__('os').cpu_count()} cpus; python {platform.python_version()}")
    print(f"# model: {models.resolve(opts.model).name}; ctx {opts.ctx}, slide {opts.slide}, "
          f"n_keep {opts.n_keep}, threads {opts.threads}, lanes {opts.lanes}, "
          f"swa_full {args.swa_full or 'default (on)'}")
    files = [f for f in args.files.split(",") if f]

    def load(name):
        data = (CORPUS / name).read_bytes()
        n = args.alice_bytes if name == "alice29.txt" and not args.backends else args.bytes
        data = data[:n] if n else data
        return data * args.repeat

    if args.backends:
        compare_backends(args, files, load)
        return

    if args.stages:
        stage_profile(args, (CORPUS / files[0]).read_bytes()[:args.bytes or None])
        return

    if args.ctx_chart:
        ctx_chart(opts, files, load, [int(c) for c in args.ctx_chart.split(",")], swas)
        return

    if args.step_probe:
        step_probe(opts, [(int(c), v == "on") for c, v in
                          (x.split(":") for x in args.step_probe.split(","))])
        return

    if args.keep_sweep:
        print("\n| n_keep | file | bytes | LLM bpb | raw tok/s |\n|---|---|---|---|---|")
        for value in [int(c) for c in args.keep_sweep.split(",")]:
            o = api._options(opts, {"n_keep": value})
            eng = api.get_engine(models.resolve(o.model), o)
            for name in files:
                data = load(name)
                bits, s, n = raw_llm(eng, data)
                print(f"| {value} | {name} | {len(data)} | {bits / len(data):.4f} | "
                      f"{n / s:.1f} |", flush=True)
        return

    if args.lanes_sweep:
        print("\n| lanes | file | bytes | bpb | raw lockstep tok/s | compress tok/s | ratio | "
              "decompress tok/s | d/c time |\n|---|---|---|---|---|---|---|---|---|")
        for k in [int(c) for c in args.lanes_sweep.split(",")]:
            o = api._options(opts, {"lanes": k})
            for name in files:
                r = bench_file(name, load(name), o, True)
                print(f"| {k} | {name} | {r['bytes']} | {r['bpb']:.4f} | {r['raw_tps']:.1f} | "
                      f"{r['c_tps']:.1f} | {r['c_tps'] / r['raw_tps']:.3f} | {r['d_tps']:.1f} | "
                      f"{r['c_tps'] / r['d_tps']:.3f} |", flush=True)
        return

    if args.skip_sweep:
        print("\n| skip | file | bytes | bpb | raw tok/s | compress tok/s | speed-up vs raw | "
              "decompress tok/s | d/c time |\n|---|---|---|---|---|---|---|---|---|")
        for p in [float(c) for c in args.skip_sweep.split(",")]:
            o = api._options(opts, {"skip": round(p * 65536) or None})
            for name in files:
                r = bench_file(name, load(name), o, True)
                assert r["roundtrip"] == "ok", name
                print(f"| {p or 'off'} | {name} | {r['bytes']} | {r['bpb']:.4f} | "
                      f"{r['raw_tps']:.1f} | {r['c_tps']:.1f} | {r['c_tps'] / r['raw_tps']:.3f} | "
                      f"{r['d_tps']:.1f} | {r['c_tps'] / r['d_tps']:.3f} |", flush=True)
        return

    cols = ["file", "bytes", "tokens", "nc", "bpb", "payload_bpb", "ce_bpb", "raw_tps", "c_tps", "d_tps",
            "roundtrip", "gzip-9", "bzip2-9", "xz-9e", "zstd-19"]
    print("\n| " + " | ".join(cols) + " | ratio c/raw |")
    print("|" + "---|" * (len(cols) + 1))
    for name in files:
        row = bench_file(name, load(name), opts, not args.no_decompress)
        cells = [f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, "-"))
                 for c in cols]
        print("| " + " | ".join(cells) + f" | {row['c_tps'] / row['raw_tps']:.3f} |", flush=True)
    rss = max(resource.getrusage(w).ru_maxrss for w in
              (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    print(f"\n# peak RSS {rss:.0f} MiB (largest process); bpb = whole archive bits per input byte, payload_bpb = "
          "coded payload only, ce_bpb = the model's cross-entropy (raw llama.cpp loop); "
          "tps = tokens/s; ratio = nacrith compress tps / raw llama.cpp tps")


if __name__ == "__main__":
    main()
