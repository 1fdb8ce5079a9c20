#!/usr/bin/env python3
"""Issue 23 item 2, measured before it is built: what does a byte-level mixture of SmolLM2 and
Gemma-3 code, and how many model calls does it need?

A byte coder must give, before each byte, a model's probability of every next byte given the
bytes so far, with a state that the decoder rebuilds from the decoded bytes alone. Here each
model keeps a small beam of tokenizations of the bytes since its last anchor (the tokens all
hypotheses agree on, fed to the model for good). A hypothesis h holds its tokens since the
anchor, the bytes p of its partial token, the model's distribution C at its last boundary and
its weight P(tokens); its mass is W_h = P(tokens) M(p), M(q) the mass under C of the tokens that
start with q. The next byte b has

    P(b) = sum_h P(tokens_h) [ M(p + b) + P(t = p) F'(b) ] / sum_h W_h

where F' is the first-byte mass of the distribution after p as a token (a model call, kept
only if that branch lives). Each h then branches into "p + b goes on" and "p ended, b starts
the next token"; branches lighter than REL x the heaviest are dropped, at most K stay. K = 1
keeps the heavier branch only. This is a proper distribution at every byte and a function of the
bytes alone, so it codes; summed over every tokenization (K, REL unbounded) it would be each
model's exact byte-level probability of the text. Bare models (no ensemble), compared with their
own token-level cost of the canonical tokenization (llama.cpp's tokenizer) in the same run.

The two models' byte probabilities are mixed linearly, with a two-expert Bayes weight and a
fixed share alpha. Control tokens are left out of M; every byte also gets EPS / 256 (a byte no
hypothesis reaches costs ~ log2(256 / EPS) bits, and the heaviest hypothesis takes the longest
token prefixes of its bytes: "dead").

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
import bisect
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nacrith import models  # noqa: E402
from nacrith.portable.backend import PortableBackend  # noqa: E402
from nacrith.portable.ggufio import Reader  # noqa: E402
from nacrith.portable.vocab import BYTE, CONTROL, NORMAL  # noqa: E402
from two_models import ablation, mix  # noqa: E402  (segment mixing: the same Bayes weight)

FILES = ("alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt", "fields.c", "xargs.1")
EPS = 2.0 ** -12
ALPHAS = (0.01, 0.05, 0.2, 0.5, 1.0)


def _succ(q: bytes):
    q = q.rstrip(b"\xff")
    return None if not q else q[:-1] + bytes([q[-1] + 1])


class Hyp:
    __slots__ = ("toks", "p", "C", "w")

    def __init__(self, toks, p, C, w):
        self.toks, self.p, self.C, self.w = toks, p, C, w


class Track:
    """One model: its vocabulary sorted by bytes (the tokens starting with q are a range), a
    lane holding the anchor's tokens, probes that feed a hypothesis's tokens and roll back."""

    def __init__(self, preset: str, ctx: int, threads: int):
        path = str(models.resolve(preset))
        self.b = PortableBackend(path, ctx=ctx, lanes=1, threads=threads, slide=ctx // 4,
                                 n_keep=1, swa_rows=ctx)
        V = self.b.n_vocab
        types = Reader(path).fields.get("tokenizer.ggml.token_type") or [NORMAL] * V
        pieces = [self.b.piece(t) for t in range(V)]
        use = [t for t in range(V) if pieces[t] and int(types[t]) != CONTROL]
        use.sort(key=lambda t: (pieces[t], int(types[t]) == BYTE, t))
        self.order = np.array(use, np.int64)
        self.S = [pieces[t] for t in use]
        self.fb = np.array([bisect.bisect_left(self.S, bytes([c])) for c in range(256)]
                           + [len(self.S)])
        self.calls = 0

    def rng(self, q: bytes):
        lo = bisect.bisect_left(self.S, q)
        s = _succ(q)
        return lo, (len(self.S) if s is None else bisect.bisect_left(self.S, s))

    def mass(self, C, q: bytes) -> float:
        lo, hi = self.rng(q)
        return C[hi] - C[lo]

    def exact(self, C, q: bytes) -> float:
        return C[bisect.bisect_right(self.S, q)] - C[bisect.bisect_left(self.S, q)]

    def tok(self, q: bytes):
        lo = bisect.bisect_left(self.S, q)
        return int(self.order[lo]) if lo < len(self.S) and self.S[lo] == q else None

    def dist(self, lg):
        """Cumulative mass over the sorted usable tokens (C[hi] - C[lo]: a range's mass)."""
        lg = lg.astype(np.float64)
        C = np.concatenate([[0.0], np.cumsum(np.exp(lg[self.order] - lg.max()))])
        return C / C[-1]

    def weight(self, h) -> float:
        """W_h: hypothesis h's mass (its weight times its open token's prefix mass)."""
        return h.w * (self.mass(h.C, h.p) if h.p else 1.0)

    def _room(self, n: int) -> None:
        """Slide the anchor lane before a feed of n tokens would (a probe never slides)."""
        while self.b.pos[0] + n > self.b.ctx:
            self.b._slide(0)

    def probe(self, toks) -> np.ndarray:
        """C after the anchor and toks (fed, then rolled back)."""
        self.calls += 1
        self._room(len(toks))
        lg = self.b.feed([0], [list(toks)])[0]
        self.b.pos[0] -= len(toks)
        return self.dist(lg)

    def commit(self, toks):
        """Feed toks to the anchor lane for good."""
        self.calls += 1
        self._room(len(toks))
        return self.dist(self.b.feed([0], [list(toks)])[0])

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

    def branch(self, H, bb: bytes, probes: dict):
        """The next byte bb after hypotheses H: (its mass, the mass of H, the branches that
        take it); probes: the distributions after a hypothesis's ended token, by tokens."""
        Z = num = 0.0
        nxt = []
        for h in H:
            Z += self.weight(h)
            q = h.p + bb
            cont = h.w * self.mass(h.C, q)
            if cont > 0:
                num += cont
                nxt.append(Hyp(h.toks, q, h.C, h.w))
            t = self.tok(h.p) if h.p else None
            E = self.exact(h.C, h.p) if t is not None else 0.0
            if E > 0:
                key = h.toks + (t,)
                if key not in probes:
                    probes[key] = self.probe(key)
                end = h.w * E * self.mass(probes[key], bb)
                num += end
                if end > 0:
                    nxt.append(Hyp(key, bb, probes[key], h.w * E))
        return num, Z, nxt

    def beam(self, data: bytes, K: int, rel: float, lag: int, last=False):
        """Per byte the model's probability of it (without EPS), and dead ends; last: also
        the probabilities of all 256 bytes after data (a check: they sum to 1)."""
        self.b.reset()
        C0 = self.commit([self.b.bos])
        H = [Hyp((), b"", C0, 1.0)]
        n = len(data)
        prob = np.zeros(n)
        dead = 0
        for i, byte in enumerate(data):
            bb = bytes([byte])
            num, Z, nxt = self.branch(H, bb, {})
            prob[i] = num / Z
            if not nxt:                         # dead: the heaviest, longest token prefixes
                dead += 1
                h = max(H, key=self.weight)
                toks, rest, w, C = h.toks, h.p + bb, h.w, h.C
                while self.mass(C, rest) == 0:
                    k = len(rest) - 1
                    while self.tok(rest[:k]) is None:
                        k -= 1
                    w *= self.exact(C, rest[:k])
                    toks = toks + (self.tok(rest[:k]),)
                    C = self.probe(toks)
                    rest = rest[k:]
                nxt = [Hyp(toks, rest, C, w)]
            mw = [self.weight(h) for h in nxt]
            top = max(mw)
            keep = sorted((j for j in range(len(nxt)) if mw[j] >= rel * top),
                          key=lambda j: (-mw[j], len(nxt[j].toks)))[:K]
            H = [nxt[j] for j in keep]
            if max(len(h.toks) for h in H) > lag:       # the heaviest's first token wins
                H = [h for h in H if h.toks[:1] == H[0].toks[:1]]
            for h in H:
                h.w /= top
            # the anchor moves over the tokens every hypothesis shares
            k = 0
            while all(len(h.toks) > k for h in H) and len({h.toks[k] for h in H}) == 1:
                k += 1
            if k:
                common = H[0].toks[:k]
                C = self.commit(common)
                for h in H:
                    h.toks = h.toks[k:]
                    if not h.toks:
                        h.C = C
        if last:
            probes = {}
            Z = self.branch(H, b"\0", probes)[1]
            return prob, dead, np.array([self.branch(H, bytes([b]), probes)[0] / Z
                                         for b in range(256)])
        return prob, dead


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
    ap.add_argument("--out", type=Path, default=Path("/tmp/bytemix"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tracks, rows = {}, []
    for name in a.files:
        data = (ablation.CORPUS / name).read_bytes()
        data = data[:a.bytes] if a.bytes else data
        res = {}
        for m in ("smollm2", "gemma3"):
            ctx = a.ctx_g or a.ctx if m == "gemma3" else a.ctx
            f = a.out / f"{name}-{len(data)}-ctx{ctx}-K{a.beam}-r{a.rel:g}-l{a.lag}.{m}.npz"
            if not f.is_file() and m not in a.models:
                continue
            if not f.is_file():
                if m not in tracks:
                    tracks[m] = Track(m, ctx, a.threads)
                t = tracks[m]
                t0 = time.perf_counter()
                t.calls = 0
                prob, dead = t.beam(data, a.beam, a.rel, a.lag)
                calls, sec = t.calls, time.perf_counter() - t0
                canon = t.canonical(data)
                print(f"  {m} {name}: {sec:.0f} s, {calls} calls", file=sys.stderr, flush=True)
                np.savez(f, prob=prob, dead=dead, calls=calls, canonical=canon, sec=sec)
            res[m] = dict(np.load(f))
        if len(res) < 2:
            continue
        A, B = res["smollm2"], res["gemma3"]
        ca, cb = (-np.log2((1 - EPS) * r["prob"] + EPS / 256) for r in (A, B))   # bits
        row = dict(name=name, n=len(data), tA=float(A["canonical"]), tB=float(B["canonical"]),
                   bA=ca.sum(), bB=cb.sum(), cA=int(A["calls"]),
                   cB=int(B["calls"]), dA=int(A["dead"]), dB=int(B["dead"]))
        for al in ALPHAS:
            row[al] = mix(ca, cb, al)           # two_models' segments, here single bytes
        rows.append(row)
    if not rows:
        return
    rows.append({k: ("all" if k == "name" else sum(r[k] for r in rows)) for k in rows[0]})
    print(f"beam K={a.beam}, rel={a.rel:g}, lag {a.lag}, ctx {a.ctx} / {a.ctx_g or a.ctx}: "
          "bpb of the bare models (tok: canonical tokens; byte: the byte coder), mixtures, "
          "best mix / Gemma-3's tokens, calls per byte")
    print(f"{'file':13s} {'S tok':>6s} {'S byte':>6s} {'G tok':>6s} {'G byte':>6s} "
          + " ".join(f"{'a=' + str(al):>7s}" for al in ALPHAS)
          + f" {'best/G':>6s} {'calls S':>7s} {'calls G':>7s} dead")
    for r in rows:
        n = r["n"]
        best = min(r[al] for al in ALPHAS)
        print(f"{r['name']:13s} {r['tA'] / n:6.4f} {r['bA'] / n:6.4f} {r['tB'] / n:6.4f} "
              f"{r['bB'] / n:6.4f} " + " ".join(f"{r[al] / n:7.4f}" for al in ALPHAS)
              + f" {best / r['tB']:6.4f} {r['cA'] / n:7.3f} {r['cB'] / n:7.3f}"
              f" {r['dA']}/{r['dB']}")


if __name__ == "__main__":
    main()
