"""Portable engine vs llama.cpp: cross-entropy (bpb) and single-sequence speed, same run.

Both backends get the same llama.cpp tokens of a corpus slice, one token per feed (the LLM-only
coder's call pattern); CE = mean -log2 p(next token) from numpy log-softmax of each backend's
logits, divided by bytes.  Speed is measured at a couple of window fills: tokens/s over a run of
--probe tokens after the window holds `fill` tokens.

    python scripts/bench_portable.py [--bytes 8192] [--ctx 2048] [--threads 2]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from nacrith import models
from nacrith.backend import Backend
from nacrith.portable import PortableBackend

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def nll_bits(lg, t):
    lg = np.asarray(lg, np.float64)
    m = lg.max()
    return (m + np.log(np.exp(lg - m).sum()) - lg[t]) / np.log(2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", default=str(CORPUS / "alice29.txt"))
    ap.add_argument("--bytes", type=int, default=8192)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fills", default="0,1024", help="window fills for the speed probes")
    ap.add_argument("--probe", type=int, default=64)
    a = ap.parse_args()
    path = str(models.resolve(None))
    data = Path(a.file).read_bytes()[:a.bytes]
    kw = dict(ctx=a.ctx, lanes=1, threads=a.threads, slide=a.ctx // 4, n_keep=1)
    backends = {"llama.cpp": Backend(path, **kw), "portable": PortableBackend(path, **kw)}
    toks = [int(t) for t in backends["llama.cpp"].tokenize(data)]
    nbytes = sum(len(backends["llama.cpp"].piece(t)) for t in toks)
    backends["portable"].feed([0], [[0]])          # compile / load from Numba's cache
    res = {}
    for name, b in backends.items():
        b.reset()
        tot, prev = 0.0, b.bos
        t0 = time.perf_counter()
        for t in toks:
            tot += nll_bits(b.feed([0], [[prev]])[0], t)
            prev = t
        dt = time.perf_counter() - t0
        res[name] = {"bpb": tot / nbytes, "ce_tps": len(toks) / dt}
        for fill in [int(f) for f in a.fills.split(",")]:
            if fill + a.probe > a.ctx:
                continue
            b.reset()
            seq = (toks * (fill // max(1, len(toks)) + 2))[:fill + a.probe]
            for i in range(0, fill, 256):            # fill the window in batches
                g = seq[i:min(fill, i + 256)]
                if g:
                    b.feed([0], [g])
            t0 = time.perf_counter()
            for t in seq[fill:fill + a.probe]:
                b.feed([0], [[t]])
            res[name][f"tps@{fill}"] = a.probe / (time.perf_counter() - t0)
    print(f"{Path(a.file).name}[:{a.bytes}]: {len(toks)} tokens, ctx {a.ctx}, "
          f"threads {a.threads}")
    for name, r in res.items():
        print(f"  {name:10s} " + "  ".join(f"{k} {v:.4f}" if k == "bpb" else f"{k} {v:.1f}"
                                           for k, v in r.items()))
    p, l = res["portable"], res["llama.cpp"]
    print(f"  bpb ratio portable/llama.cpp {p['bpb'] / l['bpb']:.4f}  "
          + "  ".join(f"speed ratio {k} {p[k] / l[k]:.2f}x" for k in p if k != "bpb"))


if __name__ == "__main__":
    main()
