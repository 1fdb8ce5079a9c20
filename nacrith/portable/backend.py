"""PortableBackend: the llama.cpp Backend interface over the portable integer engine.

Invariants (on top of kernels.py's):
- same call semantics as nacrith.backend.Backend: every lane starts empty, `feed` gives each
  listed lane its tokens at its next positions and returns logits (float32, integers of 2^-16)
  for the last token of each group; a lane that cannot take its group first slides: positions
  [n_keep, n_keep+slide) are dropped and later ones move down by `slide`;
- positions: a lane has an offset o (sum of its slides); the token in slot p is rotated for the
  absolute position p + o, so a slide only moves cache rows (their rotation stays right
  relative to later queries); the n_keep kept slots keep their un-rotated keys and are
  re-rotated to j + o after each slide, exactly as if they had been written at that position;
- the logits of a token depend only on its lane's history, never on the thread count, on other
  lanes, or on how tokens were grouped into feed calls;
- sliding-window layers (Gemma-3) keep only the rows their window can reach: slot j >= n_keep of
  a lane lives in row j - base[lane] of their own cache (kc2 ...; rows < n_keep: the kept
  slots), so the rows of a window are consecutive; before a feed that would run past the last
  row the lane's rows are compacted (base moves up to where the window of its first new token
  starts), a slide lowers base (moving rows only when it would go below 0). Rows hold exactly
  the keys and values a full cache holds at those slots, so the logits are the same bits as
  with a full-size cache (tested with swa_rows=ctx);
- decoding needs no llama.cpp: only `tokenize` imports it (lazily).
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import NacritError
from . import kernels as K
from .mathx import rope_table, rope_turns
from .model import load
from .team import Team

ENGINE_VERSION = 1
_NO_CLOCK = np.zeros((0, len(K.STAGES)), np.int64)


def fingerprint() -> str:
    return f"portable-{ENGINE_VERSION}"


class PortableBackend:
    def __init__(self, path: str, *, ctx: int, lanes: int, threads: int, slide: int, n_keep: int,
                 group: int = 1, swa_rows: int | None = None, **ignored):
        if not 1 <= n_keep < ctx or not 1 <= slide <= ctx - n_keep:
            raise NacritError(f"bad window settings (ctx={ctx}, slide={slide}, n_keep={n_keep})")
        if lanes < 1 or threads < 1:
            raise NacritError("lanes and threads must be >= 1")
        self.path = str(path)
        self.ctx, self.lanes = ctx, lanes
        self.threads = min(threads, os.cpu_count() or 1)        # at most one per CPU
        self.slide, self.n_keep, self.group = slide, n_keep, group
        m = self.m = load(self.path)
        self.n_vocab, self.bos = m.n_vocab, m.bos
        self._pieces = m.pieces
        self.turns = rope_turns(m.rope_base, m.n_rot)
        # the sliding-window layers' RoPE (gemma3: another base); None: every layer uses turns
        self.turns_swa = rope_turns(m.rope_base_swa, m.n_rot) if m.swa.any() else None
        self.kq_scale = np.float32(1.0 / math.sqrt(m.head_dim))
        L, hd, nkv = m.n_layer, m.head_dim, m.n_kv
        swa = m.swa != 0
        self.li = np.zeros(L, np.int64)                 # each layer's index in its cache set
        self.li[swa] = np.arange(swa.sum())
        self.li[~swa] = np.arange((~swa).sum())
        # sliding-window rows: the kept slots, two windows and a group (compaction every ~window
        # tokens); never more than ctx (then nothing is ever compacted)
        rows = min(ctx, swa_rows or n_keep + 2 * m.window + group) if swa.any() else 0
        self.kc, self.vc, self.kd, self.vd = self._cache(int((~swa).sum()), ctx)
        self.kc2, self.vc2, self.kd2, self.vd2 = self._cache(int(swa.sum()), rows)
        self.base = np.zeros(lanes, dtype=np.int64)     # slot j >= n_keep: row j - base
        self.kraw = np.zeros((L, lanes, n_keep, nkv * hd), np.float32)
        self.pos = np.zeros(lanes, dtype=np.int64)
        self.off = np.zeros(lanes, dtype=np.int64)
        self._tok = None
        self.keep_hidden = False    # True: feed() also leaves the final hidden states in .hidden
        self.hidden = None
        self._teams = None
        self.clock = None          # int64 [threads, len(K.STAGES)]: a stage profile (bench)
        self.reset()

    def fingerprint(self) -> str:
        return fingerprint()

    @property
    def swa_rows(self) -> int:
        """Rows per lane of the sliding-window layers' cache (0: the model has none)."""
        return self.kd2.shape[3]

    def _cache(self, n_layers, rows):
        """Zeroed int8 keys, values and their float32 scales for n_layers layers of `rows`."""
        m = self.m
        shape = (n_layers, self.lanes, m.n_kv, rows)
        return (np.zeros(shape[:3] + (rows * m.head_dim,), np.int8),
                np.zeros(shape[:3] + (rows * m.head_dim,), np.int8),
                np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    def _move(self, lane, arrs, a, b, dst):
        """Rows [a, b) of lane in the cache set `arrs` move to rows [dst, dst + b - a)."""
        hd = self.m.head_dim
        for arr, w in zip(arrs, (hd, hd, 1, 1)):
            x = arr[:, lane]
            x[:, :, dst * w:(dst + b - a) * w] = x[:, :, a * w:b * w].copy()

    def _swa_room(self, lane: int, n: int) -> None:
        """Before lane's next n tokens: rows for them and for the window of the first, compacting
        (or, for a group longer than the rows allow, enlarging) the sliding-window cache."""
        k, W, pos, b = self.n_keep, self.m.window, int(self.pos[lane]), int(self.base[lane])
        if not self.swa_rows or pos + n - b <= self.swa_rows:
            return
        if n > self.swa_rows - W - k + 1:               # a long group: more rows for every lane
            rows = min(self.ctx, k + 2 * W + n)
            old = (self.kc2, self.vc2, self.kd2, self.vd2)
            self.kc2, self.vc2, self.kd2, self.vd2 = new = self._cache(len(old[2]), rows)
            for o, x in zip(old, new):
                x[..., :o.shape[-1]] = o
            if pos + n - b <= rows:
                return
        nb = max(0, pos - W + 1 - k)                    # row k: the first new token's window
        self._move(lane, (self.kc2, self.vc2, self.kd2, self.vd2), k + nb - b, pos - b, k)
        self.base[lane] = nb

    def _team(self) -> Team:
        """This process's team of self.threads threads (a forked child starts its own)."""
        t = self._teams
        if t is None or t.pid != os.getpid():
            t = self._teams = Team(self.threads)
        return t

    def reset(self, lanes=None) -> None:
        """Empty every lane's window, or only those of `lanes` (a shared engine: hub.py)."""
        sel = slice(None) if lanes is None else lanes
        self.pos[sel] = 0
        self.off[sel] = 0
        self.base[sel] = 0

    def _cs(self, apos, turns=None):
        turns = self.turns if turns is None else turns
        cs = np.empty((len(apos), self.m.n_rot // 2, 2), np.float32)
        for i, p in enumerate(apos):
            rope_table(int(p), turns, cs[i])
        return cs

    def _tables(self, apos):
        """(every layer's RoPE table, the sliding-window layers' one) for positions apos."""
        cs = self._cs(apos)
        return cs, self._cs2(apos, cs)

    def _cs2(self, apos, cs):
        """The sliding-window layers' table for positions apos (cs itself when they share it)."""
        return cs if self.turns_swa is None else self._cs(apos, self.turns_swa)

    def _slide(self, lane: int) -> None:
        k, s, n = self.n_keep, self.slide, int(self.pos[lane])
        # only reachable with slide > pos - n_keep (slide close to ctx): drop what there is,
        # never let a slot index go below n_keep (the kernels do not bounds-check)
        s = min(s, n - k)
        self._move(lane, (self.kc, self.vc, self.kd, self.vd), k + s, n, k)
        b = int(self.base[lane]) - s            # the sliding-window rows stay where they are ...
        if b < 0 and self.swa_rows:             # ... unless base would go below 0
            self._move(lane, (self.kc2, self.vc2, self.kd2, self.vd2), k - b, n - s - b, k)
        self.base[lane] = max(b, 0)
        self.pos[lane] -= s
        self.off[lane] += s
        apos = [j + int(self.off[lane]) for j in range(k)]
        cs = self._cs(apos)
        cs2 = self._cs2(apos, cs)
        m = self.m
        for layer in range(m.n_layer):
            c, w = self.li[layer], m.swa[layer]
            K.rerotate(self.kraw[layer, lane], (self.kc2 if w else self.kc)[c, lane],
                       (self.kd2 if w else self.kd)[c, lane], k, m.n_kv, m.head_dim, m.n_rot,
                       cs2 if w else cs, m.arch == "gemma3")

    def step(self, lanes, tokens) -> np.ndarray:
        return self.feed(lanes, [[t] for t in tokens])

    def feed(self, lanes, groups) -> np.ndarray:
        """Feed groups[i] to lanes[i]; logits of the last token of each group, (len, n_vocab)."""
        toks, lane_of, slot_of, cs, sel = self._plan(lanes, groups)
        m = self.m
        x = np.empty((len(toks), m.d_model), np.float32)
        out = np.empty((len(sel), self.n_vocab), np.float32)
        self._team().run(K.feed_team, K.team_phases(m.n_layer),
                         *self.team_args(toks, lane_of, slot_of, cs, sel, x, out))
        if self.keep_hidden:
            self.hidden = np.empty((len(sel), m.d_model), np.float32)
            K.final_hidden(x, sel, m.out_norm, m.eps, self.hidden)
        return out

    def team_args(self, toks, lane_of, slot_of, cs, sel, x, out, att_chunk=K.ATT_CHUNK,
                  whole_heads=K.WHOLE_HEADS, nth=None) -> tuple:
        """kernels.feed_team's arguments after (tid, nth, bar) for one planned feed by a team of
        nth threads (default: this backend's), cs the pair of RoPE tables of _plan: att_chunk
        and whole_heads split attention (speed only)."""
        m = self.m
        e, a, o, gu, dn, h = m.embd, m.wqkv, m.wo, m.wgu, m.wdn, m.out
        n32, n8, ni32, ni64 = K.team_scratch(len(toks), slot_of, m.d_model, m.n_head, m.n_kv,
                                             m.head_dim, dn.d.shape[2] // 16 * 32, att_chunk,
                                             whole_heads, self.threads if nth is None else nth,
                                             m.window)
        cs, cs2 = cs
        return (toks, e.kind, e.q, e.d, e.m, x, lane_of, slot_of, cs, m.attn_norm, m.ffn_norm,
                m.eps, m.kinds, a.q, a.d, a.m, o.q, o.d, o.m, gu.q, gu.d, gu.m, dn.q, dn.d, dn.m,
                self._kv(lane_of, slot_of), self.n_keep, m.n_head, m.n_kv,
                m.head_dim, m.n_rot, self.kq_scale, sel, m.out_norm, h.kind, h.q, h.d, h.m, out,
                np.empty(n32, np.float32), np.empty(n8, np.int8), np.empty(ni32, np.int32),
                np.empty(ni64, np.int64), self.clock if self.clock is not None else _NO_CLOCK,
                att_chunk, whole_heads, K.arch(m, cs, cs2))

    def _kv(self, lane_of, slot_of) -> K.KV:
        """kernels.KV for tokens at slot_of of lanes lane_of (their sliding-window rows)."""
        slot2 = np.where(slot_of >= self.n_keep, slot_of - self.base[lane_of], slot_of)
        return K.KV(self.kc, self.kd, self.vc, self.vd, self.kc2, self.kd2, self.vc2, self.vd2,
                    self.li, slot2, self.kraw)

    def _plan(self, lanes, groups):
        """Slide lanes as needed and assign slots: (tokens, lane_of, slot_of, RoPE tables,
        indices of the tokens whose logits are returned)."""
        toks, lane_of, slot_of, apos, sel = [], [], [], [], []
        if len(set(lanes)) < len(lanes):
            raise NacritError("a lane twice in one feed")
        for lane, g in zip(lanes, groups):
            n = len(g)
            if not 1 <= n <= self.ctx - self.n_keep or not 0 <= lane < self.lanes:
                raise NacritError(f"batch of {n} tokens for lane {lane} does not fit")
            while self.pos[lane] + n > self.ctx:
                self._slide(lane)
            self._swa_room(lane, n)
            for t in g:
                t = int(t)
                if not 0 <= t < self.n_vocab:
                    raise NacritError(f"token {t} out of range")
                toks.append(t)
                lane_of.append(lane)
                slot_of.append(int(self.pos[lane]))
                apos.append(int(self.pos[lane] + self.off[lane]))
                self.pos[lane] += 1
            sel.append(len(toks) - 1)
        return (np.array(toks, np.int64), np.array(lane_of, np.int64),
                np.array(slot_of, np.int64), self._tables(apos), np.array(sel, np.int64))

    def piece(self, token: int) -> bytes:
        return self._pieces[token]

    def tokenize(self, text: bytes) -> np.ndarray:
        """llama.cpp's tokenizer (encoding side only; imported lazily, vocabulary only)."""
        if self._tok is None:
            from ..backend import _llama
            from .._signals import blocked
            L = _llama()
            mp = L.llama_model_default_params()
            mp.vocab_only = True
            with blocked():
                model = L.llama_model_load_from_file(self.path.encode(), mp)
            if not model:
                raise NacritError(f"{self.path}: llama.cpp cannot load the vocabulary")
            self._tok = (L, model, L.llama_model_get_vocab(model))
        from ..backend import llama_tokenize
        L, _, vocab = self._tok
        return llama_tokenize(L, vocab, text)

    def close(self) -> None:
        if self._teams is not None and self._teams.pid == os.getpid():
            self._teams.close()
        self._teams = None
        if self._tok is not None:
            L, model, _ = self._tok
            L.llama_model_free(model)
            self._tok = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
