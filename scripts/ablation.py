#!/usr/bin/env python3
"""Ablation of the ensemble mixer: bpb per file for LLM only, each component alone on top of the
LLM, and the full ensemble, on each text's first 2 KB and 8 KB and the whole slice (the short
rows are prefixes of the same run: coding is causal); plus the per-token cost of the non-LLM
part.

The LLM is the slow part, so its logits are cached: the first run over a file slice writes
<cache>/<file>-<bytes>.logits.npy (float32, 196 KB per token for SmolLM2: ~200 MB per 1000
tokens) with the tokens; every later run evaluates the mixer configurations offline against the
cache through the same compiled predict/update kernels the coder uses (mixer.LaneModel.costs),
so the numbers are the coded sizes of the token streams (escapes and container headers aside).

    python scripts/ablation.py                                   # 16 KB of each text, threads 1
    python scripts/ablation.py --files alice29.txt --bytes 0     # whole file
    python scripts/ablation.py --set bias_lr=200000 --set match=0  # override DEFAULTS
    python scripts/ablation.py --files '' --repeat xargs.1       # a file concatenated with itself
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nacrith import api, models  # noqa: E402
from nacrith.coder import Encoder  # noqa: E402
from nacrith.mixer import DEFAULTS, PRESETS, LaneModel, MixParams  # noqa: E402
from nacrith.neural import lockstep  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
TEXTS = ["alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt", "cp.html", "fields.c",
         "grammar.lsp", "xargs.1"]
OFF = dict(ngram=0, match=0, bias_lr=0, temp_lr=0, boost_lr=0)


def configs(full: MixParams) -> dict:
    """LLM only, preset 1 (the first ensemble), each component alone on top of the LLM (with the
    preset-only parts of full that apply), full."""
    return {
        "LLM only": MixParams(),
        "preset 1": PRESETS[1],
        "preset 2": PRESETS[2],
        "preset 3": PRESETS[3],
        "+n-gram": replace(full, **dict(OFF, ngram=full.ngram, boost_lr=full.boost_lr)),
        "+match": replace(full, **dict(OFF, match=full.match, boost_lr=full.boost_lr)),
        "+bias": replace(full, **dict(OFF, bias_lr=full.bias_lr, temp_lr=full.temp_lr)),
        "no guard": replace(full, guard=0),
        "full": full,
    }


_engine = None
_opts = None


def cached(name: str, data: bytes, cache: Path, opts: api.Options):
    """(logits memmap [n, V] float32, tokens int64[n]) for data, computing them once."""
    global _engine
    stem = cache / f"{name}-{len(data)}"
    lp, tp, mp, np_, hp = (Path(f"{stem}.{x}") for x in ("logits.npy", "tokens.npy", "json",
                                                         "lens.npy", "hidden.npy"))
    if not (lp.is_file() and tp.is_file() and mp.is_file() and hp.is_file()):
        if _engine is None:
            _engine = api.get_engine(models.resolve(opts.model), opts)
        toks, _ = _engine.tokenizer.tokenize(data)
        n, V = len(toks), _engine.backend.n_vocab
        mm = np.lib.format.open_memmap(lp, mode="w+", dtype=np.float32, shape=(max(n, 1), V))
        be = _engine.backend
        be.keep_hidden = True               # the portable engine's final hidden states
        hid = np.zeros((max(n, 1), getattr(getattr(be, "m", None), "d_model", 1)), np.float32)

        def code(lane, t, row):
            mm[t] = row
            if be.hidden is not None:
                hid[t] = be.hidden[0]
            return int(toks[t])

        t0 = time.perf_counter()
        lockstep(_engine.backend, 1, lambda lane, t: t < n, code)
        mm.flush()
        del mm
        np.save(tp, np.asarray(toks, dtype=np.int64))
        np.save(hp, hid)
        np.save(np_, np.array([len(_engine.tokenizer.pieces[t]) for t in toks], dtype=np.int64))
        mp.write_text(json.dumps({"bytes": len(data), "tokens": n,
                                  "llm_tok_s": n / max(time.perf_counter() - t0, 1e-9)}))
    return np.load(lp, mmap_mode="r"), np.load(tp).astype(np.int64)


def lane(mp: MixParams, V: int, n: int) -> LaneModel:
    """A fresh lane model (the column bias needs the model's token pieces: loads the model)."""
    global _engine
    if mp.col_lr and _engine is None:
        _engine = api.get_engine(models.resolve(_opts.model), _opts)
    return LaneModel(mp, V, n, _engine.column_table if mp.col_lr else None)


def bits_of(mp: MixParams, logits, toks) -> np.ndarray:
    """Cost in bits of each token."""
    f = lane(mp, logits.shape[1], len(toks)).costs(logits, toks)
    return 24 - np.log2(f.astype(np.float64))


PREFIXES = (2048, 8192)     # bytes: the short-file rows


def per_token_ms(mp: MixParams | None, logits, toks, reps: int = 3) -> float:
    """Best-of-reps wall time per token of the whole coding kernel (in-RAM logits)."""
    best = float("inf")
    for _ in range(reps):
        enc = Encoder()
        lm = lane(mp, logits.shape[1], len(toks)) if mp is not None else None
        t0 = time.perf_counter()
        if lm is None:
            for t in range(len(toks)):
                enc.encode_logits(logits[t], int(toks[t]))
        else:
            for t in range(len(toks)):
                lm.encode(enc, logits[t], int(toks[t]))
        best = min(best, (time.perf_counter() - t0) / len(toks))
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", default=",".join(TEXTS))
    ap.add_argument("--bytes", type=int, default=16384, help="slice length (0 = whole file)")
    ap.add_argument("--cache", default="/tmp/nacrith-logits", help="logits cache directory")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a DEFAULTS hyperparameter of the full ensemble")
    ap.add_argument("--timing-tokens", type=int, default=1500)
    ap.add_argument("--repeat", default="xargs.1",
                    help="file (sliced by --bytes) concatenated with itself: cost of each copy; "
                         "'' to skip")
    a = ap.parse_args()
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    global _opts
    opts = _opts = api._options(None, {"threads": a.threads, "model": a.model})
    full = replace(DEFAULTS, **{k: int(v) for k, v in (s.split("=", 1) for s in a.set)})
    full.validate()
    cfgs = configs(full)
    print(f"full ensemble: {full}")
    print(f"{'file':18s} {'bytes':>7s} {'tokens':>6s} " + " ".join(f"{c:>9s}" for c in cfgs)
          + "   full vs LLM")
    timing = None
    for name in filter(None, a.files.split(",")):
        data = (CORPUS / name).read_bytes()
        if a.bytes:
            data = data[:a.bytes]
        logits, toks = cached(name, data, cache, opts)
        costs = {c: bits_of(mp, logits, toks) for c, mp in cfgs.items()}
        ends = np.cumsum(np.load(cache / f"{name}-{len(data)}.lens.npy"))
        for lim in [p for p in PREFIXES if p < len(data)] + [len(data)]:
            k = ends <= lim          # the tokens that end within the first lim bytes
            row = {c: b[k].sum() / lim for c, b in costs.items()}
            label = name if lim == len(data) else f"{name}[:{lim // 1024}K]"
            print(f"{label:18s} {lim:7d} {int(k.sum()):6d} "
                  + " ".join(f"{row[c]:9.4f}" for c in cfgs)
                  + f"   {100 * (row['full'] / row['LLM only'] - 1):+6.2f}%", flush=True)
        if timing is None and len(toks) >= 200:
            n = min(len(toks), a.timing_tokens)
            timing = (np.ascontiguousarray(logits[:n]), toks[:n])
    if a.repeat:
        once = (CORPUS / a.repeat).read_bytes()
        if a.bytes:
            once = once[:a.bytes]
        data = once * 2
        logits, toks = cached(a.repeat + "-x2", data, cache, opts)
        lens = np.load(cache / f"{a.repeat}-x2-{len(data)}.lens.npy")
        second = np.cumsum(lens) > len(once)    # tokens ending in the second copy
        for c in ("LLM only", "+match", "full"):
            f = lane(cfgs[c], logits.shape[1], len(toks)).costs(logits, toks)
            bits = 24 - np.log2(f.astype(np.float64))
            print(f"{a.repeat} x2, {c:8s}: first copy {bits[~second].sum() / len(once):.4f} bpb, "
                  f"second copy {bits[second].sum() / len(once):.4f} bpb")
        if timing is None:
            n = min(len(toks), a.timing_tokens)
            timing = (np.ascontiguousarray(logits[:n]), toks[:n])
    if timing is not None:
        lg, tk = timing
        base = per_token_ms(None, lg, tk)
        ens = per_token_ms(full, lg, tk)
        print(f"\nper-token coding kernel, V={lg.shape[1]}, {len(tk)} tokens: LLM-only coder "
              f"{base:.3f} ms, full ensemble {ens:.3f} ms (the non-LLM cost per token; "
              f"+{ens - base:.3f} ms over the LLM-only coder)")


if __name__ == "__main__":
    main()
