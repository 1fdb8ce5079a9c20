#!/usr/bin/env python3
"""Probe of context-dependent online adaptation from the portable engine's final hidden states
(issue 15, item 1): is there coding gain the ensemble does not already take?

Reads the caches of scripts/ablation.py (logits, tokens and the final hidden states, which it
stores when the backend is the portable engine) and evaluates offline, in float64, two
adaptations of the bare LLM, alone and stacked with the default ensemble:

- head: dynamic evaluation of the output layer restricted to a sparse delta, W' = W + dW with
  dW_v += lr (y_v - p_v) h/|h| for the coded token and every token with p_v > pthr (the tokens
  whose row moved are scored with dW h every step); stacked = the ensemble coding its rows;
- cache: the continuous cache of Grave et al. (2017): p_c(w) ~ sum over earlier positions i with
  token w of exp(theta (cos(h_t, h_i) - 1)), mixed as (1 - lam) p + lam p_c.

    python scripts/ablation.py --bytes 8192 --threads 2      # fills the cache first
    python scripts/hidden_probe.py --bytes 8192

Research only: nothing here codes. Results are in the README ("Ratio work on short files").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from numba import njit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import ablation  # noqa: E402
from nacrith import api  # noqa: E402
from nacrith.mixer import DEFAULTS  # noqa: E402


@njit(cache=True)
def _softmax_row(a):
    m = a.max()
    e = np.exp(a - m)
    return e / e.sum()


@njit(cache=True)
def head_adapt(logits, hid, toks, lr, pthr, adapted):
    """Per-token probability of the coded token under the sparse dynamic head; adapted[t] = the
    adapted row (log-probabilities, float32) for stacking the ensemble on top."""
    n, V = logits.shape
    D = hid.shape[1]
    dW = np.zeros((V, D))
    moved = np.zeros(V, np.bool_)
    rows = np.empty(V, np.int64)
    nr = 0
    out = np.empty(n)
    for t in range(n):
        z = hid[t] / (np.sqrt((hid[t] * hid[t]).sum()) + 1e-9)
        a = logits[t].astype(np.float64)
        for k in range(nr):
            a[rows[k]] += (dW[rows[k]] * z).sum()
        p = _softmax_row(a)
        y = toks[t]
        out[t] = p[y]
        adapted[t] = np.log(np.maximum(p, 1e-300)).astype(np.float32)
        for v in np.nonzero(p > pthr)[0]:
            if not moved[v]:
                moved[v] = True
                rows[nr] = v
                nr += 1
            dW[v] -= lr * p[v] * z
        if not moved[y]:
            moved[y] = True
            rows[nr] = y
            nr += 1
        dW[y] += lr * z
    return out


@njit(cache=True)
def neural_cache(hid, toks, theta, win):
    """Per-token cache probability of the coded token (0 before any history)."""
    n, D = hid.shape
    hn = np.empty((n, D))
    for t in range(n):
        hn[t] = hid[t] / (np.sqrt((hid[t] * hid[t]).sum()) + 1e-9)
    out = np.zeros(n)
    for t in range(1, n):
        lo = max(0, t - win)
        w = np.empty(t - lo)
        for i in range(lo, t):
            w[i - lo] = theta * ((hn[t] * hn[i]).sum() - 1.0)
        w = np.exp(w - w.max())
        py = 0.0
        for i in range(lo, t):
            if toks[i] == toks[t]:
                py += w[i - lo]
        out[t] = py / w.sum()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", default=",".join(ablation.TEXTS))
    ap.add_argument("--bytes", type=int, default=8192)
    ap.add_argument("--cache", default="/tmp/nacrith-logits")
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--pthr", type=float, default=0.002)
    ap.add_argument("--theta", type=float, default=30.0)
    ap.add_argument("--lam", type=float, default=0.03)
    ap.add_argument("--win", type=int, default=4096)
    a = ap.parse_args()
    ablation._opts = api._options(None, {"threads": 1})
    print(f"{'file':14s} {'tokens':>6s} {'LLM':>7s} {'head':>8s} {'cache':>8s} {'ensemble':>9s} "
          f"{'ens+head':>9s} {'ens+cache':>9s}   (bpb; % vs LLM)")
    for name in filter(None, a.files.split(",")):
        data = (ablation.CORPUS / name).read_bytes()
        data = data[:a.bytes] if a.bytes else data
        stem = Path(a.cache) / f"{name}-{len(data)}"
        if not Path(f"{stem}.hidden.npy").is_file():
            print(f"{name}: no hidden-state cache (run scripts/ablation.py with the portable "
                  "engine first)")
            continue
        logits = np.ascontiguousarray(np.load(f"{stem}.logits.npy", mmap_mode="r"))
        hid = np.load(f"{stem}.hidden.npy").astype(np.float64)
        toks = np.load(f"{stem}.tokens.npy")
        lg = logits.astype(np.float64)
        m = lg.max(1, keepdims=True)
        e = np.exp(lg - m)
        p_llm = e[np.arange(len(toks)), toks] / e.sum(1)
        del lg, e
        f = ablation.lane(DEFAULTS, logits.shape[1], len(toks)).costs(logits, toks)
        p_ens = f.astype(np.float64) / 2 ** 24
        adapted = np.empty_like(logits)
        p_head = head_adapt(logits, hid, toks, a.lr, a.pthr, adapted)
        p_c = neural_cache(hid, toks, a.theta, a.win)
        # stacked: the ensemble coding the adapted rows (its own bias head on), and the cache
        # mixed linearly into the ensemble's coded probability
        f = ablation.lane(DEFAULTS, logits.shape[1], len(toks)).costs(adapted, toks)
        rows = {"LLM": p_llm, "head": p_head, "cache": (1 - a.lam) * p_llm + a.lam * p_c,
                "ensemble": p_ens, "ens+head": f.astype(np.float64) / 2 ** 24,
                "ens+cache": (1 - a.lam) * p_ens + a.lam * p_c}
        bits = {k: -np.log2(np.maximum(v, 1e-300)).sum() / len(data) for k, v in rows.items()}
        print(f"{name:14s} {len(toks):6d} {bits['LLM']:7.4f} "
              + " ".join(f"{bits[k]:.4f}({100 * (bits[k] / bits['LLM'] - 1):+.2f}%)"
                         for k in ("head", "cache", "ensemble", "ens+head", "ens+cache")),
              flush=True)


if __name__ == "__main__":
    main()
