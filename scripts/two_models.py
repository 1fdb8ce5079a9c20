#!/usr/bin/env python3
"""Issue 15 item 4: would a mixture of SmolLM2 and Gemma-3 beat the better of the two by enough
to pay for running both?

The two models tokenize differently, so their predictions can only be mixed where both
tokenizations have a boundary (mostly word starts: both put the space in front of the word).
This script takes each model's cost in bits of every token of a text (bare model, and the full
ensemble on top of it as the coder codes it), sums them into the segments between common token
boundaries and mixes the two models per segment, linearly, with a two-expert Bayes weight and a
fixed share alpha: P(seg) = w P_a(seg) + (1 - w) P_b(seg). A coder that mixes byte by byte can do
at least this well where the segment probabilities are each model's marginals; the figures here
use the canonical tokenization's probability (a lower bound of the marginal), so they estimate,
not bound, what a byte-level mixture would code. They are not archives: no coder runs.

SmolLM2's costs come from scripts/ablation.py's logits cache (--cache-a, the portable engine at
the default window); Gemma-3's costs come from llama.cpp with logits for every position
(bench.token_bits: the coder's window --ctx-b, slide ctx / 4, the small SWA cache as at level 9)
through the same ensemble kernels, and are cached in --cache-b.

    python scripts/two_models.py --bytes 8192 --cache-a /work/cache/c8
    python scripts/two_models.py --files alice29.txt --bytes 0 --cache-a /work/cache/cw
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import ablation  # noqa: E402
import bench  # noqa: E402
from nacrith import api, models  # noqa: E402
from nacrith.mixer import DEFAULTS, MixParams  # noqa: E402

ALPHAS = (0.0, 0.01, 0.1, 0.4, 0.7, 1.0)


def costs_a(name: str, data: bytes, cache: Path, threads: int, out: Path):
    """SmolLM2 (ablation cache): (bits bare, bits full ensemble, byte length) per token; the
    costs are kept in out (reading a whole file's logits takes minutes)."""
    f = out / f"{name}-{len(data)}.smollm2.npz"
    if f.is_file():
        z = np.load(f)
        return z["bare"], z["full"], z["lens"]
    ablation._opts = opts = api._options(None, {"threads": threads})
    logits, toks = ablation.cached(name, data, cache, opts)
    lens = np.load(cache / f"{name}-{len(data)}.lens.npy")
    bare, full = (ablation.bits_of(mp, logits, toks) for mp in (MixParams(), DEFAULTS))
    np.savez(f, bare=bare, full=full, lens=lens)
    return bare, full, lens


def costs_b(name: str, data: bytes, cache: Path, threads: int, ctx: int):
    """Gemma-3 through llama.cpp at the coder's window (ctx, slide ctx / 4, n_keep 1), every
    position's logits per decode (bench.token_bits): the same three arrays."""
    f = cache / f"{name}-{len(data)}-ctx{ctx}.gemma.npz"
    if f.is_file():
        z = np.load(f)
        return z["bare"], z["full"], z["lens"]
    opts = api._options(None, {"threads": threads, "model": "gemma3", "backend": "llama",
                               "ctx": ctx, "slide": ctx // 4, "n_keep": 1, "swa_full": False})
    eng = api.get_engine(models.resolve("gemma3"), opts)
    assert not eng.tokenizer.tokenize(data)[1], "escapes: not measured here"
    t0 = time.perf_counter()
    bits, toks = bench.token_bits(eng, data, ctx, ctx // 4, {"bare": MixParams(), "full": DEFAULTS})
    lens = np.array([len(eng.tokenizer.pieces[t]) for t in toks], dtype=np.int64)
    np.savez(f, bare=bits["bare"], full=bits["full"], lens=lens)
    print(f"  gemma3 {name}: {len(toks)} tokens, {time.perf_counter() - t0:.0f} s",
          file=sys.stderr, flush=True)
    return bits["bare"], bits["full"], lens


def segments(cost, lens, bounds):
    """Sum per-token costs into the segments ending at the sorted byte offsets `bounds`."""
    ends = np.cumsum(lens)
    idx = np.searchsorted(bounds, ends)         # segment of each token (its end <= bound)
    return np.bincount(idx, weights=cost, minlength=len(bounds))


def mix(ca, cb, alpha: float) -> float:
    """Total bits of the per-segment linear mixture, Bayes weight with fixed share alpha."""
    total, la, lb = 0.0, np.log(0.5), np.log(0.5)       # log weights
    ln2 = np.log(2.0)
    for x, y in zip(ca, cb):
        a, b = la - x * ln2, lb - y * ln2               # log of w_k P_k(seg)
        m = max(a, b)
        s = m + np.log(np.exp(a - m) + np.exp(b - m))
        total -= s / ln2
        la, lb = a - s, b - s                           # posterior
        if alpha:
            wa = (1 - alpha) * np.exp(la) + alpha / 2
            la, lb = np.log(wa), np.log(1 - wa)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", default=",".join(ablation.TEXTS))
    ap.add_argument("--bytes", type=int, default=8192, help="slice length (0 = whole file)")
    ap.add_argument("--cache-a", default="/tmp/nacrith-logits")
    ap.add_argument("--cache-b", default="/tmp/nacrith-gemma")
    ap.add_argument("--ctx-b", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    cb_dir = Path(a.cache_b)
    cb_dir.mkdir(parents=True, exist_ok=True)
    print(f"{'file':14s} {'bytes':>7s} {'segs':>6s} | {'S bare':>7s} {'S ens':>7s} {'G bare':>7s}"
          f" {'G ens':>7s} | " + " ".join(f"mix a={x:<5g}" for x in ALPHAS)
          + " | bare mix   best mix vs better")
    for name in filter(None, a.files.split(",")):
        data = (ablation.CORPUS / name).read_bytes()
        if a.bytes:
            data = data[:a.bytes]
        sa_bare, sa_full, la = costs_a(name, data, Path(a.cache_a), a.threads, cb_dir)
        gb_bare, gb_full, lb = costs_b(name, data, cb_dir, a.threads, a.ctx_b)
        assert la.sum() == lb.sum() == len(data)
        bounds = np.intersect1d(np.cumsum(la), np.cumsum(lb))
        n8 = len(data)              # bits -> bits per byte
        seg = {k: segments(c, l, bounds) for k, (c, l) in
               {"sb": (sa_bare, la), "sf": (sa_full, la), "gb": (gb_bare, lb),
                "gf": (gb_full, lb)}.items()}
        row = {k: v.sum() / n8 for k, v in seg.items()}
        mixes = [mix(seg["sf"], seg["gf"], x) / n8 for x in ALPHAS]
        bare = min(mix(seg["sb"], seg["gb"], x) for x in ALPHAS) / n8
        better = min(row["sf"], row["gf"])
        print(f"{name:14s} {len(data):7d} {len(bounds):6d} | {row['sb']:7.4f} {row['sf']:7.4f} "
              f"{row['gb']:7.4f} {row['gf']:7.4f} | "
              + " ".join(f"{m:11.4f}" for m in mixes)
              + f" | {bare:7.4f}   {100 * (min(mixes) / better - 1):+6.2f}%", flush=True)


if __name__ == "__main__":
    main()
