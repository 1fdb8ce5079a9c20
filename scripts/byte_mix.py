#!/usr/bin/env python3
"""Issue 23 item 2 measured: what the byte-level mixture of SmolLM2 and Gemma-3 codes
(nacrith/bytemix.py: each model's beam of tokenizations, its docstring has the algorithm), and
how many model calls it needs.

Per model and text, the probability the byte coder gives each byte (bytemix.Track, smoothed by
its eps, from cdf.quantize's 24-bit token frequencies), its calls, dead ends and seconds, and the
bare model's cost of its canonical tokens (llama.cpp's tokenizer) for comparison; then the two
streams mixed with a two-expert Bayes weight and fixed shares alpha (bytemix codes alpha = 0.2;
the 24-bit table's floor adds about 2e-5 bits per byte to the coded size), and (column cm) the
bit mixer (nacrith/bytecm.py, the preset `--model2` and level 9 code: version 8's) run on the
saved distributions with Gemma-3 as the first model, as level 9 codes them.

    python scripts/byte_mix.py --bytes 8192 --out /work/cache/bytemix
    python scripts/byte_mix.py --bytes 32768 --ctx 8192 --files alice29.txt --models smollm2 &
    python scripts/byte_mix.py --bytes 32768 --ctx 8192 --files alice29.txt --models gemma3
    python scripts/byte_mix.py --bytes 32768 --ctx 8192 --files alice29.txt --models  # table

Results (per model and text, with their calls and seconds) are kept in --out; a run prints the
table once both models' results exist. Slides: the anchor's lane slides (ctx / 4) before a feed
would pass ctx, so a probe never slides and its roll-back is exact.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nacrith import bytecm, bytemix, cdf, models  # noqa: E402
from nacrith.portable.backend import PortableBackend  # noqa: E402
from two_models import ablation, mix  # noqa: E402  (segment mixing: the same Bayes weight)

FILES = ("alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt", "fields.c", "xargs.1")
ALPHAS = (0.01, 0.05, 0.2, 0.5, 1.0)


class Track(bytemix.Track):
    """bytemix.Track over a one-lane portable backend, plus the canonical tokens' cost."""

    def __init__(self, preset: str, ctx: int, threads: int, settings: bytemix.Settings,
                 bias_lr: float):
        path = str(models.resolve(preset))
        super().__init__(PortableBackend(path, ctx=ctx, lanes=1, threads=threads, slide=ctx // 4,
                                         n_keep=1), settings, bias_lr)

    def probs(self, data: bytes, partial: Path | None = None) -> np.ndarray:
        """P(byte i | bytes before it), smoothed by eps, as the byte coder codes them; every
        4096 bytes the prefix so far is saved to `partial`, and every byte's whole distribution
        (float32) to partial's .dist.npy (mixtures can be tried on them)."""
        self.reset()
        prob = np.empty(len(data))
        full = None if partial is None else np.lib.format.open_memmap(
            partial.with_suffix(".dist.npy"), "w+", np.float32, (len(data), 256))
        for i, c in enumerate(data):
            p = self.predict()
            prob[i] = p[c]
            if full is not None:
                full[i] = p
            self.advance(c)
            if partial is not None and (i + 1) % 4096 == 0:
                np.save(partial, prob[:i + 1])
                full.flush()
        if full is not None:
            full.flush()
        return prob

    def canonical(self, data: bytes) -> float:
        """Bits of the canonical tokenization (llama.cpp's tokenizer), bare model."""
        self.b.reset()
        toks = [int(t) for t in self.b.tokenize(data)]
        bits = 0.0
        for prev, t in zip([self.b.bos] + toks, toks):
            lg = self.b.feed([0], [[prev]])[0].astype(np.float64)
            e = np.exp(lg - lg.max())
            bits -= np.log2(e[t] / e.sum())
        return bits


def bit_mixed(data: bytes, fa: Path, fb: Path) -> float:
    """Bits of data coded by the bit mixer (bytemix.Settings's preset) from the first (fa) and
    second model's saved byte distributions (float32 copies of the coder's float64: within
    ~1e-4 bpb). The order matters: the first model's weights start the larger."""
    if not (fa.is_file() and fb.is_file()):
        return float("nan")
    n = len(data)
    da, db = (np.load(f, mmap_mode="r")[:n].astype(np.float64) for f in (fa, fb))
    out = np.zeros(8 * n, np.int64)
    cm = bytecm.new(bytecm.PRESETS[bytemix.Settings().cm], n)
    bytecm.run(cm, da, db, np.frombuffer(data, np.uint8), out)
    return float(-np.log2(out / cdf.TOTAL).sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bytes", type=int, default=8192)
    ap.add_argument("--files", nargs="*", default=list(FILES))
    ap.add_argument("--ctx", type=int, default=4096, help="SmolLM2's window (slide ctx / 4)")
    ap.add_argument("--ctx-g", type=int, default=0, help="Gemma-3's window (default: --ctx)")
    ap.add_argument("--models", nargs="*", default=["smollm2", "gemma3"],
                    help="compute only these (two processes at once); print when both exist")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--beam", type=int, default=4, help="K: hypotheses kept per model")
    ap.add_argument("--rel", type=float, default=1e-3, help="drop hypotheses under rel x best")
    ap.add_argument("--lag", type=int, default=2, help="tokens a hypothesis may hold unfed")
    ap.add_argument("--tau", type=float, default=1e-3,
                    help="probe an ended token lighter than tau x the mass only if kept")
    ap.add_argument("--bias-lr", type=float, default=None,
                    help="the models' token bias heads' rate (default: bytemix.Settings's, "
                         "Gemma-3 as the first model)")
    ap.add_argument("--no-canonical", dest="canonical", action="store_false",
                    help="skip the canonical tokens' cost (a second pass over the text)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bytemix"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    st = bytemix.Settings(beam=a.beam, rel=a.rel, lag=a.lag, tau=a.tau)
    lrs = {"gemma3": st.bias_lr if a.bias_lr is None else a.bias_lr,
           "smollm2": st.bias_lr2 if a.bias_lr is None else a.bias_lr}
    tracks, rows = {}, []
    for name in a.files:
        data = (ablation.CORPUS / name).read_bytes()
        data = data[:a.bytes] if a.bytes else data
        res, dists = {}, {}
        for m in ("smollm2", "gemma3"):
            ctx = a.ctx_g or a.ctx if m == "gemma3" else a.ctx
            f = a.out / (f"{name}-{len(data)}-ctx{ctx}-K{a.beam}-r{a.rel:g}-l{a.lag}-t{a.tau:g}"
                         + (f"-b{lrs[m]:g}" if lrs[m] else "") + f".q.{m}.npz")
            dists[m] = f.with_suffix(".partial.dist.npy")      # what probs() saves
            if not f.is_file() and m not in a.models:
                continue
            if not f.is_file():
                if m not in tracks:
                    tracks[m] = Track(m, ctx, a.threads, st, lrs[m])
                t = tracks[m]
                t0 = time.perf_counter()
                t.calls = t.dead = 0
                prob = t.probs(data, f.with_suffix(".partial.npy"))
                calls, dead, sec = t.calls, t.dead, time.perf_counter() - t0
                canon = t.canonical(data) if a.canonical else float("nan")
                print(f"  {m} {name}: {sec:.0f} s, {calls} calls", file=sys.stderr, flush=True)
                np.savez(f, prob=prob, dead=dead, calls=calls, canonical=canon, sec=sec)
            res[m] = dict(np.load(f))
        if len(res) < 2:
            continue
        A, B = res["smollm2"], res["gemma3"]
        ca, cb = (-np.log2(r["prob"]) for r in (A, B))   # bits
        row = dict(name=name, n=len(data), tA=float(A["canonical"]), tB=float(B["canonical"]),
                   bA=ca.sum(), bB=cb.sum(), cA=int(A["calls"]),
                   cB=int(B["calls"]), dA=int(A["dead"]), dB=int(B["dead"]))
        for al in ALPHAS:
            row[al] = mix(ca, cb, al)           # two_models' segments, here single bytes
        row["cm"] = bit_mixed(data, dists["gemma3"], dists["smollm2"])     # level 9's order
        rows.append(row)
    if not rows:
        return
    rows.append({k: ("all" if k == "name" else sum(r[k] for r in rows)) for k in rows[0]})
    print(f"beam K={a.beam}, rel={a.rel:g}, lag {a.lag}, tau {a.tau:g}, ctx {a.ctx} / {a.ctx_g or a.ctx}: "
          "bpb of the bare models (tok: canonical tokens; byte: the byte coder), mixtures, "
          "best mix / Gemma-3's tokens, the bit mixer (cm; Gemma-3 first), calls per byte")
    print(f"{'file':13s} {'S tok':>6s} {'S byte':>6s} {'G tok':>6s} {'G byte':>6s} "
          + " ".join(f"{'a=' + str(al):>7s}" for al in ALPHAS)
          + f" {'best/G':>6s} {'cm':>7s} {'calls S':>7s} {'calls G':>7s} dead")
    for r in rows:
        n = r["n"]
        best = min(r[al] for al in ALPHAS)
        print(f"{r['name']:13s} {r['tA'] / n:6.4f} {r['bA'] / n:6.4f} {r['tB'] / n:6.4f} "
              f"{r['bB'] / n:6.4f} " + " ".join(f"{r[al] / n:7.4f}" for al in ALPHAS)
              + f" {best / r['tB']:6.4f} {r['cm'] / n:7.4f} {r['cA'] / n:7.3f} {r['cB'] / n:7.3f}"
              f" {r['dA']}/{r['dB']}")


if __name__ == "__main__":
    main()
