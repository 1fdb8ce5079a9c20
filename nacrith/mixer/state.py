"""State of one lane's ensemble: named tuples of arrays, one per component, that the kernels take.

Invariants: a State is created by new_state (every table zero or at its documented start value)
at segment start and changes only inside the compiled kernels; the kernels reach every array by
field name, never by position, so adding a field cannot shift another; Config is immutable (the
settings derived from MixParams, ints and floats exactly as the kernels use them); the lane
scalars live in two small arrays indexed by the I_* / S_* names below.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .params import (APM_N, BIAS_G0, COL_NB, FRAC_SCALE, ISUM_MAX_V, LR_SCALE, MAX_ORDER,
                     MIX_LLM_BUCKETS, MIX_MATCH_BUCKETS, N_MBUCKETS, SLOTS, MixParams)

# Lane.ist slots (ints of the lane state)
I_T, I_MPTR, I_MLEN, I_SET, I_MPRED, I_NCAND, I_HAVEP, I_Y, I_APMT, I_APMI, I_SET2, I_COL, \
    I_GT, I_N = range(14)
# Lane.fst slots (floats of the lane state)
S_TAU, S_INVS, S_A, S_EL, S_MC, S_IZ, S_APMR, S_APMP, S_SO, S_PN, S_GW, S_RINVS, \
    S_N = range(13)

MIX_Z0 = 4.0           # initial z of the LLM input (the others start at 0)


class Config(NamedTuple):
    """Settings of the lane (from MixParams; 0 = component off)."""
    ng: int             # n-gram orders 1..ng
    ng_bits: int        # log2 buckets per order table
    ng_lim: int         # a bucket's counts are halved above this
    m_min: int          # match model context length
    m_bits: int         # log2 entries of the match table
    m_lim: int          # match hit/miss counts are halved above this
    bias: int           # bias head: 1 plain steps, 2 AdaGrad
    temp: int           # 1: temperature learned
    K: int              # mixer inputs: LLM, n-gram orders, match model
    nsets: int          # weight sets of the first selector
    boost: int          # 1: log-linear candidate boost
    apm: int            # 1: SSE of the top token
    mix2: int           # 1: second weight set
    sb: int             # 1: n-gram slot biases
    col: int            # 1: column bias
    bias_lr: float
    temp_lr: float
    mix_lr: float
    floor: float        # mixer weight floor
    ng_esc: float       # escape mass per distinct token
    boost_lr: float
    apm_lr: float
    apm_w: float
    sb_lr: float
    col_lr: float
    guard: int          # 1: final ensemble-vs-bare-LLM switch
    guard_a: float      # its first fixed-share rate a0 (token t: a0 / (1 + t a0))
    isum: int           # 1: vocabulary-wide sums on a fixed grid (exact, order-free)


class Lane(NamedTuple):
    ist: np.ndarray     # int64[I_N]
    fst: np.ndarray     # float64[S_N]
    hist: np.ndarray    # int32[n_tokens]: the tokens coded so far
    p: np.ndarray       # float64[V]: exp(x - max x) of the last prediction
    xbuf: np.ndarray    # float64[max(V, 16)]: x; scratch of _update


class NGram(NamedTuple):
    tag: np.ndarray     # int64[N, buckets]: check tag of each bucket
    tok: np.ndarray     # int32[N, buckets, slots]
    cnt: np.ndarray     # int32[N, buckets, slots]
    b: np.ndarray       # float32[N, buckets, slots]: slot biases ((1, 1, 1) when off)
    bkt: np.ndarray     # int64[MAX_ORDER]: bucket of order o+1 in this step, -1 if none
    hit: np.ndarray     # int64[MAX_ORDER]: 1 if that bucket's tag matched


class Match(NamedTuple):
    table: np.ndarray   # int64[2^m_bits]: 1 + index of the token after a context, 0 = empty
    cnt: np.ndarray     # float64[N_MBUCKETS, 2]: hit / miss counts per match-length bucket


class Bias(NamedTuple):
    b: np.ndarray       # float64[V] log-space bias ([1] when off)
    r: np.ndarray       # float64[V] AdaGrad 1 / sqrt(G) ([1] when off)


class Mix(NamedTuple):
    z: np.ndarray       # float64[nsets (+ nsets2), K]: weight logits (set-2 rows after)
    w: np.ndarray       # float64[K] (mix2: [3K]: w, w of set 1, w of set 2)
    beta: np.ndarray    # float64[nsets, K]: boost coefficients


class Preds(NamedTuple):
    """This step's predictions of the sparse models k = 1 .. K-1 (row 0, the LLM, unused)."""
    tok: np.ndarray     # int64[K, slots]
    c: np.ndarray       # float64[K, slots]: explicit probabilities
    n: np.ndarray       # int64[K]: entries used
    e: np.ndarray       # float64[K]: escape mass
    s: np.ndarray       # int64[K, slots]: n-gram slot of each entry


class Cands(NamedTuple):
    tok: np.ndarray     # int64[K slots + 1]: candidate tokens of this step
    x: np.ndarray       # float64: their sparse mass, then P
    g: np.ndarray       # float64: boosted P'


class Sse(NamedTuple):
    t: np.ndarray       # float64[contexts * APM_N]: adaptive table
    nodes: np.ndarray   # float64[APM_N]: squash of the fixed stretch nodes


class Col(NamedTuple):
    b: np.ndarray       # float64[2 COL_NB]: column biases
    g: np.ndarray       # float64[2 COL_NB]: AdaGrad sums
    q: np.ndarray       # float64[2 COL_NB]: q mass per bucket of this step
    tcol: np.ndarray    # int32[3, V]: column_table of the model ((3, 1) when off)


class Guard(NamedTuple):
    r: np.ndarray       # float64[V]: exp(l - max l) of the bare LLM's last row ([1] when off)


class State(NamedTuple):
    cfg: Config
    lane: Lane
    ng: NGram
    match: Match
    bias: Bias
    mix: Mix
    preds: Preds
    cands: Cands
    sse: Sse
    col: Col
    guard: Guard


def column_table(pieces) -> np.ndarray:
    """int32[3, V] for the column bias, from each token's bytes: [0] the bytes before its first
    line break (CR or LF; all of them if none, capped at COL_NB), [1] 1 if it has a line break,
    [2] the bytes after its last line break."""
    t = np.zeros((3, len(pieces)), dtype=np.int32)
    for i, pc in enumerate(pieces):
        cut = [j for j in (pc.find(b"\n"), pc.find(b"\r")) if j >= 0]
        if cut:
            t[0, i] = min(min(cut), COL_NB)
            t[1, i] = 1
            t[2, i] = min(len(pc) - 1 - max(pc.rfind(b"\n"), pc.rfind(b"\r")), COL_NB)
        else:
            t[0, i] = min(len(pc), COL_NB)
    return t


def config(mp: MixParams) -> Config:
    N = int(mp.ngram)
    M = 1 if mp.match else 0
    return Config(
        ng=N, ng_bits=int(mp.ngram_bits) if N else 0, ng_lim=int(mp.ngram_limit),
        m_min=int(mp.match), m_bits=int(mp.match_bits) if M else 0, m_lim=int(mp.match_limit),
        bias=(2 if mp.bias_ada else 1) if mp.bias_lr else 0, temp=1 if mp.temp_lr else 0,
        K=1 + N + M, nsets=(N + 1) * MIX_MATCH_BUCKETS * MIX_LLM_BUCKETS,
        boost=1 if mp.boost_lr else 0, apm=1 if mp.apm_lr else 0, mix2=1 if mp.mix2 else 0,
        sb=1 if mp.slot_lr and N else 0, col=1 if mp.col_lr else 0,
        bias_lr=mp.bias_lr / LR_SCALE, temp_lr=mp.temp_lr / LR_SCALE,
        mix_lr=mp.mix_lr / LR_SCALE, floor=mp.mix_floor / FRAC_SCALE,
        ng_esc=mp.ngram_esc / FRAC_SCALE, boost_lr=mp.boost_lr / LR_SCALE,
        apm_lr=mp.apm_lr / LR_SCALE, apm_w=mp.apm_w / FRAC_SCALE, sb_lr=mp.slot_lr / LR_SCALE,
        col_lr=mp.col_lr / LR_SCALE, guard=1 if mp.guard else 0,
        guard_a=mp.guard / FRAC_SCALE, isum=1 if mp.isum else 0)


def new_state(mp: MixParams, V: int, n_tokens: int, tcol=None) -> State:
    """Fresh state (SSE nodes and table still to be filled by the apm_init kernel)."""
    if mp.isum and V > ISUM_MAX_V:
        from ..errors import NacritError
        raise NacritError(f"mixer preset 5 sums at most {ISUM_MAX_V} vocabulary entries exactly")
    cfg = config(mp)
    N, K, nsets = cfg.ng, cfg.K, cfg.nsets
    nsets2 = (N + 1) * 3 * 4 * 3 if mp.mix2 else 0
    nb = 1 << mp.ngram_bits if N else 1
    sl = mp.ngram_slots if mp.ngram_slots else SLOTS
    g0 = mp.bias_g0 / FRAC_SCALE if mp.bias_g0 else BIAS_G0
    fst = np.zeros(S_N, dtype=np.float64)
    fst[S_TAU] = 1.0
    fst[S_GW] = 0.5                 # guard: prior weight of the ensemble
    z = np.zeros((nsets + nsets2, K), dtype=np.float64)
    z[:, 0] = MIX_Z0
    ncol = 2 * COL_NB if mp.col_lr else 1
    return State(
        cfg=cfg,
        lane=Lane(ist=np.zeros(I_N, dtype=np.int64), fst=fst,
                  hist=np.zeros(max(1, n_tokens), dtype=np.int32),
                  p=np.zeros(V, dtype=np.float64), xbuf=np.zeros(max(V, 16), dtype=np.float64)),
        ng=NGram(tag=np.zeros((max(N, 1), nb), dtype=np.int64),
                 tok=np.zeros((max(N, 1), nb, sl), dtype=np.int32),
                 cnt=np.zeros((max(N, 1), nb, sl), dtype=np.int32),
                 b=np.zeros((N, nb, sl) if cfg.sb else (1, 1, 1), dtype=np.float32),
                 bkt=np.zeros(MAX_ORDER, dtype=np.int64), hit=np.zeros(MAX_ORDER, dtype=np.int64)),
        match=Match(table=np.zeros(1 << mp.match_bits if mp.match else 1, dtype=np.int64),
                    cnt=np.zeros((N_MBUCKETS, 2), dtype=np.float64)),
        bias=Bias(b=np.zeros(V if mp.bias_lr else 1, dtype=np.float64),
                  r=np.full(V if mp.bias_ada else 1, 1.0 / np.sqrt(g0))),
        mix=Mix(z=z, w=np.zeros(3 * K if mp.mix2 else K, dtype=np.float64),
                beta=np.zeros((nsets, K), dtype=np.float64)),
        preds=Preds(tok=np.zeros((K, sl), dtype=np.int64), c=np.zeros((K, sl), dtype=np.float64),
                    n=np.zeros(K, dtype=np.int64), e=np.ones(K, dtype=np.float64),
                    s=np.zeros((K, sl), dtype=np.int64)),
        cands=Cands(tok=np.zeros(K * sl + 1, dtype=np.int64),
                    x=np.zeros(K * sl + 1, dtype=np.float64),
                    g=np.zeros(K * sl + 1, dtype=np.float64)),
        sse=Sse(t=np.zeros((N + 1) * MIX_MATCH_BUCKETS * 4 * APM_N if mp.apm_lr else APM_N),
                nodes=np.zeros(APM_N)),
        col=Col(b=np.zeros(ncol), g=np.ones(ncol), q=np.zeros(ncol),
                tcol=tcol if mp.col_lr else np.zeros((3, 1), dtype=np.int32)),
        guard=Guard(r=np.zeros(V if mp.guard else 1, dtype=np.float64)))
