"""The coder's per-token work on a CUDA device: the ensemble, its 24-bit frequencies and the
arithmetic coder of many lanes at once, the same bits as the CPU.  Two ways: one device thread
per lane (every preset), or a block of threads per lane for the presets whose vocabulary sums are
exact (cfg.isum, preset 5): one thread per lane runs the vocabulary passes serially, a chain of
~150k dependent loads per step that no number of lanes hides (issue 22 measured ~50 ms a step at
256-4096 lanes for three such passes); the block splits each pass over its threads.

One source of truth: the device kernels call the CPU's own compiled functions (kernels.enc_step /
enc_skip_step / dec_kernel / dec_skip_kernel / skip_conf_kernel, coder._finish /
_dec_init_kernel; for the block kernels the pieces ensemble._predict and sparse._skip_predict are
made of: the *_rows passes over rows range(t, V, nt), the serial _mid / _q_fix / _skip_tail,
coder._encode_range, ensemble._update); numba-cuda compiles a CPU @njit function's Python for
the device, so there is no second copy of any of it.  The block kernels' own code is barriers,
the broadcast of a few scalars through shared memory and the order-free reductions between the
passes (max, first index of the max, sums of terms on the isum grid, integer sums: any split
gives the same bits) — and one atomic add of a grid value per token into its column bucket.
What makes the bits the same:
- gpu.numba_cuda() compiles every kernel with NVVM's -fma=0 and fastmath off: each float
  multiply / add / subtract is a separate round-to-nearest `.rn` instruction, divisions and
  square roots are `div.rn` / `sqrt.rn`, nothing is flushed to zero (tests/test_device.py fails
  on any fma, .ftz or .approx in the PTX of these kernels, and shows NVVM fusing them without
  the rule);
- the mixer takes no libm function (its exp is cdf._exp_nonpos; math.sqrt is IEEE's sqrt);
  with a thread per lane every reduction is the CPU's own loop in its own order; with a block
  per lane only the exact ones are split (the serial pieces run on thread 0);
- the steps never allocate: the CPU kernels grow the output buffer before a step
  (coder._reserve), the device's buffers are sized for 4 bytes per token (the coder emits at
  most 26 bits per symbol); a byte past a full buffer is dropped and counted, and finish()
  raises for that lane, never returns a cut stream.

State of L lanes (LaneBatch): every array of mixer/state.py's named tuples with a leading lane
axis, on the device; ``_lane_view`` (generated from state.py's field lists, so a new field needs
no edit here) is lane l's State of row views.  A lane is (re)started by copying a fresh
state into its rows; lanes are independent, so a lane's bits do not depend on its neighbours,
the lane count or which lanes are active (tests: device vs CPU under the CUDA simulator, and
the PTX checks).

Users: neural.OwnDevice (a device engine of a coder's own) and hub.DeviceLanes (the lanes of
every coder in flight on a shared engine, one launch a step).
"""
from __future__ import annotations

import os
import types
import typing

import numpy as np

from .. import coder as _coder
from ..errors import NacritError
from . import ensemble as E
from . import kernels as K
from . import sparse as _sparse
from . import state as _state
from .params import MixParams
from .state import I_COL, S_RINVS

TPB = 64                        # threads (lanes) per block of the one-thread-per-lane kernels
BT = 256                        # most threads per lane of the block kernels (preset 5)
_BYTES_PER_TOKEN = 4            # output room per token (>= 26 bits, the coder's bound) ...
_BYTES_SLACK = 16               # ... plus the finish bits and the last byte


def _parts() -> dict:
    """{field of State: its named-tuple class}."""
    return typing.get_type_hints(_state.State)


def _arrays(S) -> dict:
    """{field: its named tuple of arrays} of a State, every field but cfg (Config)."""
    return {name: part for name, part in S._asdict().items()
            if not isinstance(part, _state.Config)}


def _view_source() -> str:
    """def _lane_view(SS, l): State(cfg=SS.cfg, lane=Lane(ist=SS.lane.ist[l], ...), ...)."""
    parts = []
    for name, cls in _parts().items():
        if cls is _state.Config:
            parts.append(f"{name}=SS.{name}")
        else:
            fields = ", ".join(f"{f}=SS.{name}.{f}[l]" for f in cls._fields)
            parts.append(f"{name}={cls.__name__}({fields})")
    return "def _lane_view(SS, l):\n    return State(" + ", ".join(parts) + ")\n"


# ---------------------------------------------------------------- kernels (one thread per lane)
# Written against the globals cuda, VIEW and the CPU steps ENC, DEC, ENC_SKIP, DEC_SKIP, CONF,
# FINISH, DINIT, bound in _compile.  mode[lane]: 0 idle this step, 1 coded with the logits row
# row_of[lane], 2 coded without the LLM (the confidence skip); after its step a lane's skip
# confidence for the next step goes to conf[lane] (the host decides the skips from it).

def k_encode(SS, logits, row_of, syms, mode, freqs, st, buf, conf):
    lane = cuda.grid(1)                                                        # noqa: F821
    if lane < mode.shape[0] and mode[lane] != 0:
        S = VIEW(SS, lane)                                                     # noqa: F821
        if mode[lane] == 1:
            ENC(st[lane], buf[lane], logits[row_of[lane]], syms[lane], freqs[lane], S)  # noqa
        else:
            ENC_SKIP(st[lane], buf[lane], syms[lane], freqs[lane], S)          # noqa: F821
        conf[lane] = CONF(S)                # the next step's skip confidence   # noqa: F821


def k_decode(SS, logits, row_of, mode, freqs, st, data, out, conf):
    lane = cuda.grid(1)                                                        # noqa: F821
    if lane < mode.shape[0] and mode[lane] != 0:
        S = VIEW(SS, lane)                                                     # noqa: F821
        if mode[lane] == 1:
            out[lane] = DEC(st[lane], data[lane], logits[row_of[lane]], freqs[lane], S)  # noqa
        else:
            out[lane] = DEC_SKIP(st[lane], data[lane], freqs[lane], S)         # noqa: F821
        conf[lane] = CONF(S)                                                   # noqa: F821


def k_finish(act, st, buf):
    lane = cuda.grid(1)                                                        # noqa: F821
    if lane < act.shape[0] and act[lane] != 0:
        FINISH(st[lane], buf[lane])                                            # noqa: F821


def k_dec_init(act, st, data):
    lane = cuda.grid(1)                                                        # noqa: F821
    if lane < act.shape[0] and act[lane] != 0:
        DINIT(st[lane], data[lane])                                            # noqa: F821


# ------------------------------------------------------ kernels (a block of threads per lane)
# For the presets with exact vocabulary sums (cfg.isum, preset 5): block `lane` codes lane `lane`
# with nt <= BT threads.  The row passes of ensemble._predict / sparse._skip_predict (the *_rows
# pieces: the CPU's own functions over rows range(t, V, nt)) run on every thread; the serial
# pieces (_bias_pre is read by all, _x_post, _mid, _q_fix, _skip_tail, the coder, _update) on
# thread 0; between them the order-free reductions below: max, the first index of the max, sums
# of values on the isum grid (exact: any split, the same double) and of integers.  Written against
# the globals cuda, BT and the CPU functions bound in _compile (upper case).

def b_put(sh, v, t):
    """sh[t] = v, between barriers (the previous user of sh is done; every value is there)."""
    cuda.syncthreads()                                                         # noqa: F821
    sh[t] = v
    cuda.syncthreads()                                                         # noqa: F821


def b_sum(sh, v, t, nt):
    """The block's sum of every thread's v (int64, or float64 on the isum grid: exact)."""
    b_put(sh, v, t)
    s = sh[0]
    for j in range(1, nt):
        s += sh[j]
    return s


def b_max(sh, v, t, nt):
    """The block's max of every thread's v, ignoring NaN."""
    b_put(sh, v, t)
    m = sh[0]
    for j in range(1, nt):
        m = sh[j] if sh[j] > m else m
    return m


def b_min(sh, v, t, nt):
    """The block's min of every thread's v (int64)."""
    b_put(sh, v, t)
    m = sh[0]
    for j in range(1, nt):
        m = sh[j] if sh[j] < m else m
    return m


def d_cq_rows(S, lo, hi, st):
    """ensemble._cq_rows with an atomic add (threads share buckets; exact on the isum grid)."""
    p, cq, tcol, col = S.lane.p, S.col.q, S.col.tcol, S.lane.ist[I_COL]
    for i in range(lo, hi, st):
        cuda.atomic.add(cq, COL_BUCKET(tcol, i, col), p[i])                   # noqa: F821


def b_predict(logits, S, freqs, t, nt, shf, shi, bf, bi):
    """ensemble._predict of one lane by its block (the same bits: module docstring)."""
    cfg, fst, p, xbuf = S.cfg, S.lane.fst, S.lane.p, S.lane.xbuf
    n = logits.shape[0]
    kind, y, step, by, G = BIAS_PRE(S)                                         # noqa: F821
    cuda.syncthreads()                      # every thread has read what pass 1 writes  # noqa
    X_ROWS(logits, S, kind, y, step, by, t, n, nt)                             # noqa: F821
    m = b_max(shf, MAX_ROWS(xbuf, t, n, nt), t, nt)                            # noqa: F821
    if t == 0:
        X_POST(S, kind, y, G)                                                  # noqa: F821
    EXP_ROWS(xbuf, m, p, t, n, nt, 1)                                          # noqa: F821
    arg = 0
    if m != -np.inf and m != np.inf:
        arg = b_min(shi, FIRST_ROWS(xbuf, m, t, n, nt), t, nt)                 # noqa: F821
    s = b_sum(shf, SUM_ROWS(p, t, n, nt), t, nt)                              # noqa: F821
    el = 0.0
    if cfg.temp != 0:
        el = b_sum(shf, PL_ROWS(p, logits, t, n, nt), t, nt)                  # noqa: F821
    if cfg.col != 0:
        cq = S.col.q
        for j in range(t, cq.shape[0], nt):
            cq[j] = 0.0
        cuda.syncthreads()                                                     # noqa: F821
        CQ_ROWS(S, t, n, nt)                                                   # noqa: F821
    rs = 1.0
    if cfg.guard != 0:
        r = S.guard.r
        mg = b_max(shf, MAX_ROWS(logits, t, n, nt), t, nt)                     # noqa: F821
        EXP_ROWS(logits, mg, r, t, n, nt, 1)                                   # noqa: F821
        rs = b_sum(shf, SUM_ROWS(r, t, n, nt), t, nt)                         # noqa: F821
    cuda.syncthreads()                      # every row of passes 1-3 is written  # noqa: F821
    if t == 0:
        if cfg.guard != 0:
            fst[S_RINVS] = 1.0 / rs
        aqi, iz, so, pn, T, ncand = MID(S, arg, s, el)                         # noqa: F821
        aq, gq = Q_SCALES(S, aqi, iz, so, T, n)                                # noqa: F821
        bf[0] = aq
        bf[1] = gq
        bf[2] = so
        bf[3] = pn
        bi[0] = T
        bi[1] = ncand
    cuda.syncthreads()                                                         # noqa: F821
    aq, gq = bf[0], bf[1]
    tot = b_sum(shi, Q_ROWS(S, freqs, aq, gq, t, n, nt), t, nt)               # noqa: F821
    if t == 0:
        Q_FIX(S, freqs, arg, bf[2], bf[3], bi[0], bi[1], gq, tot)              # noqa: F821
    cuda.syncthreads()                                                         # noqa: F821


def b_skip_predict(S, freqs, t, nt, bi):
    """sparse._skip_predict of one lane by its block."""
    n = freqs.shape[0]
    if t == 0:
        fu, hit = SKIP_HEAD(S, n)                                              # noqa: F821
        bi[0] = fu
        bi[1] = hit
    cuda.syncthreads()                                                         # noqa: F821
    fu = bi[0]
    for i in range(t, n, nt):
        freqs[i] = fu
    cuda.syncthreads()                                                         # noqa: F821
    if t == 0:
        SKIP_TAIL(S, freqs, fu, bi[1])                                         # noqa: F821
    cuda.syncthreads()                                                         # noqa: F821


def b_lane_predict(SS, logits, row_of, mode, freqs, lane, t, nt, shf, shi, bf, bi):
    """Lane `lane`'s State, its frequencies of this step written (with the LLM's row or, mode
    2, without it)."""
    S = VIEW(SS, lane)                                                         # noqa: F821
    if mode[lane] == 1:
        b_predict(logits[row_of[lane]], S, freqs[lane], t, nt, shf, shi, bf, bi)
    else:
        b_skip_predict(S, freqs[lane], t, nt, bi)
    return S


def b_learn(S, sym, logits, row_of, mode, lane, conf):
    """Thread 0, after coding sym: learn it, write the next step's skip confidence."""
    if mode[lane] == 1:
        UPDATE(S, sym, np.float64(logits[row_of[lane], sym]))                  # noqa: F821
    else:
        LEARN(S, sym)                                                          # noqa: F821
    conf[lane] = SKIP_CONF(S)                                                  # noqa: F821


def kb_encode(SS, logits, row_of, syms, mode, freqs, st, buf, conf):
    lane = cuda.blockIdx.x                                                     # noqa: F821
    t, nt = cuda.threadIdx.x, cuda.blockDim.x                                  # noqa: F821
    if lane >= mode.shape[0] or mode[lane] == 0:
        return                                      # the whole block: no barrier is skipped
    shf = cuda.shared.array(BT, np.float64)                                    # noqa: F821
    shi = cuda.shared.array(BT, np.int64)                                      # noqa: F821
    bf = cuda.shared.array(4, np.float64)                                      # noqa: F821
    bi = cuda.shared.array(4, np.int64)                                        # noqa: F821
    S = b_lane_predict(SS, logits, row_of, mode, freqs, lane, t, nt, shf, shi, bf, bi)
    f, sym = freqs[lane], syms[lane]
    c_lo = b_sum(shi, ISUM_ROWS(f, t, sym, nt), t, nt)                        # noqa: F821
    if t == 0:
        ENC_RANGE(st[lane], buf[lane], c_lo, c_lo + f[sym])                    # noqa: F821
        b_learn(S, sym, logits, row_of, mode, lane, conf)


def kb_decode(SS, logits, row_of, mode, freqs, st, data, out, conf):
    lane = cuda.blockIdx.x                                                     # noqa: F821
    t, nt = cuda.threadIdx.x, cuda.blockDim.x                                  # noqa: F821
    if lane >= mode.shape[0] or mode[lane] == 0:
        return
    shf = cuda.shared.array(BT, np.float64)                                    # noqa: F821
    shi = cuda.shared.array(BT, np.int64)                                      # noqa: F821
    bf = cuda.shared.array(4, np.float64)                                      # noqa: F821
    bi = cuda.shared.array(4, np.int64)                                        # noqa: F821
    S = b_lane_predict(SS, logits, row_of, mode, freqs, lane, t, nt, shf, shi, bf, bi)
    # the symbol whose range holds count: thread t sums its chunk of ch symbols, thread 0 finds
    # the chunk and walks it (coder._find_from)
    f = freqs[lane]
    n = f.shape[0]
    ch = (n + nt - 1) // nt
    lo = t * ch
    b_put(shi, ISUM_ROWS(f, lo, min(n, lo + ch), 1), t)                        # noqa: F821
    if t == 0:
        count = DEC_COUNT(st[lane])                                            # noqa: F821
        j, base = 0, 0
        while j < nt - 1 and (j + 1) * ch < n and count >= base + shi[j]:
            base += shi[j]
            j += 1
        s, c_lo = FIND_FROM(f, j * ch, base, count)                            # noqa: F821
        DEC_UPDATE(st[lane], data[lane], c_lo, c_lo + f[s])                    # noqa: F821
        out[lane] = s
        b_learn(S, s, logits, row_of, mode, lane, conf)


KERNELS = (k_encode, k_decode, k_finish, k_dec_init, kb_encode, kb_decode)
BLOCK_HELPERS = (b_put, b_sum, b_max, b_min, b_predict, b_skip_predict, b_lane_predict,
                 b_learn)


def _compile() -> dict:
    """{name: compiled kernel}; the kernels' globals hold numba.cuda itself (the simulator swaps
    it for its own) and the CPU's compiled steps; gpu.numba_cuda() installs the -fma=0 rule."""
    from ..gpu import numba_cuda
    cuda = numba_cuda()
    env = {c.__name__: c for c in _parts().values()}
    env["State"] = _state.State
    exec(_view_source(), env)
    steps = {"ENC": K.enc_step, "DEC": K.dec_kernel, "ENC_SKIP": K.enc_skip_step,
             "DEC_SKIP": K.dec_skip_kernel, "CONF": K.skip_conf_kernel,
             "FINISH": _coder._finish, "DINIT": _coder._dec_init_kernel,
             # the block kernels' pieces (ensemble.py, sparse.py, coder.py)
             "BIAS_PRE": E._bias_pre, "X_ROWS": E._x_rows, "X_POST": E._x_post,
             "MAX_ROWS": E._max_rows, "EXP_ROWS": E._exp_rows, "FIRST_ROWS": E._first_rows,
             "SUM_ROWS": E._sum_rows, "ISUM_ROWS": E._isum_rows, "PL_ROWS": E._pl_rows,
             "MID": E._mid, "Q_SCALES": E._q_scales, "Q_ROWS": E._q_rows, "Q_FIX": E._q_fix,
             "SKIP_HEAD": _sparse._skip_head, "SKIP_TAIL": _sparse._skip_tail,
             "UPDATE": E._update, "LEARN": _sparse._learn_sparse,
             "SKIP_CONF": _sparse._skip_conf, "COL_BUCKET": E._col_bucket,
             "ENC_RANGE": _coder._encode_range, "DEC_COUNT": _coder._dec_count,
             "DEC_UPDATE": _coder._dec_update, "FIND_FROM": _coder._find_from}
    sim = simulated()
    if sim:                         # the simulator's kernels are Python: they call the CPU steps
        steps = {k: _on_host_arrays(f) for k, f in steps.items()}
        # its threads take turns (a compiled call holds the GIL): the CPU's += is atomic there
        steps["CQ_ROWS"] = _on_host_arrays(E._cq_rows)
    genv = dict(globals(), cuda=cuda, VIEW=cuda.jit(device=True)(env["_lane_view"]), **steps)

    def bind(f):
        return types.FunctionType(f.__code__, genv, f.__name__)
    for f in BLOCK_HELPERS + (() if sim else (d_cq_rows,)):
        genv["CQ_ROWS" if f is d_cq_rows else f.__name__] = cuda.jit(device=True)(bind(f))
    return {f.__name__: cuda.jit(bind(f)) for f in KERNELS}


def _host(x):
    """The numpy array under a simulator array (named tuples element-wise)."""
    if isinstance(x, tuple):
        return type(x)(*(_host(v) for v in x)) if hasattr(x, "_fields") else x
    while "_item" in getattr(x, "__dict__", ()):
        x = x.__dict__["_item"]
    return x._ary if "_ary" in getattr(x, "__dict__", ()) else x


def _on_host_arrays(step):
    def call(*args):
        return step(*(_host(a) for a in args))
    return call


_KERNELS = {}


def kernels() -> dict:
    if "k_encode" not in _KERNELS:
        _KERNELS.update(_compile())
    return _KERNELS


def _grid(n: int) -> tuple:
    """(blocks, threads per block) for n lanes (small batches: one block of n threads)."""
    t = min(TPB, n)
    return (n + t - 1) // t, t


def signatures(mp: MixParams) -> dict:
    """{kernel name: argument types} of the device kernels for mix params mp (tests: PTX)."""
    from numba import typeof
    fresh = _state.new_state(mp, 8, 8, np.zeros((3, 8), np.int32))
    SS = typeof(_state.State(cfg=fresh.cfg, **{
        name: type(part)(*(np.zeros((1,) + a.shape, a.dtype) for a in part))
        for name, part in _arrays(fresh).items()}))
    a = {dt: typeof(np.zeros(1, dt)) for dt in (np.int8, np.int64, np.float64)}
    a2 = {dt: typeof(np.zeros((1, 1), dt)) for dt in (np.float32, np.int64, np.uint8)}
    i8, i64, f64 = a[np.int8], a[np.int64], a[np.float64]
    f32_2, i64_2, u8_2 = a2[np.float32], a2[np.int64], a2[np.uint8]
    return {"k_encode": (SS, f32_2, i64, i64, i8, i64_2, i64_2, u8_2, f64),
            "k_decode": (SS, f32_2, i64, i8, i64_2, i64_2, u8_2, i64, f64),
            "kb_encode": (SS, f32_2, i64, i64, i8, i64_2, i64_2, u8_2, f64),
            "kb_decode": (SS, f32_2, i64, i8, i64_2, i64_2, u8_2, i64, f64),
            "k_finish": (i8, i64_2, u8_2),
            "k_dec_init": (i8, i64_2, u8_2)}


class LaneBatch:
    """The ensemble and coder state of `lanes` lanes on the device, each coding one sequence of
    at most n_tokens tokens (encode or decode, one direction per batch)."""

    def __init__(self, mp: MixParams, n_vocab: int, lanes: int, n_tokens: int, tcol=None,
                 threads: int | None = None):
        """threads: per lane with exact vocabulary sums (mp.isum: the block kernels; default BT,
        under the simulator 4); other presets run one thread per lane."""
        from ..gpu import numba_cuda
        self.cuda = cuda = numba_cuda()
        self.k = kernels()
        if mp.col_lr and (tcol is None or tcol.shape != (3, n_vocab)):
            raise ValueError("the column bias needs the token column table of the model")
        fresh = _state.new_state(mp, n_vocab, n_tokens, tcol)
        K.init_kernel(fresh)
        self.lanes, self.n_vocab, self.n_tokens = lanes, n_vocab, n_tokens
        self._grid = _grid(lanes)
        self.threads = 0
        if mp.isum:
            self.threads = threads or (4 if simulated() else BT)
            if not 1 <= self.threads <= BT:
                raise ValueError(f"threads per lane must be 1..{BT}")
        parts = _arrays(fresh)
        self._fresh = [cuda.to_device(a) for part in parts.values() for a in part]
        self.SS = _state.State(cfg=fresh.cfg, **{
            name: type(part)(*(cuda.device_array((lanes,) + a.shape, dtype=a.dtype)
                               for a in part)) for name, part in parts.items()})
        self._rows = [a for name in parts for a in getattr(self.SS, name)]
        self.freqs = cuda.device_array((lanes, n_vocab), dtype=np.int64)
        self.st = cuda.to_device(np.zeros((lanes, 8), dtype=np.int64))
        cap = _BYTES_PER_TOKEN * n_tokens + _BYTES_SLACK
        self.buf = cuda.to_device(np.zeros((lanes, cap), dtype=np.uint8))
        self.data = cuda.to_device(np.zeros((lanes, cap), dtype=np.uint8))
        self.out = cuda.device_array(lanes, dtype=np.int64)
        self.dconf = cuda.to_device(np.zeros(lanes, dtype=np.float64))
        self.conf = np.zeros(lanes, dtype=np.float64)     # host copy, after each step
        self._nologits = cuda.to_device(np.zeros((1, n_vocab), dtype=np.float32))
        self.reset(range(lanes))

    @staticmethod
    def bytes_per_lane(mp: MixParams, n_vocab: int, n_tokens: int) -> int:
        """Device bytes one lane takes: its state (mixer/state.py's arrays; ~30 MiB for preset
        4 at V = 49152, mostly the n-gram tables), its frequencies, its output and input
        stream buffers and its scalars."""
        fresh = _state.new_state(mp, n_vocab, n_tokens, np.zeros((3, n_vocab), np.int32))
        state = sum(a.nbytes for part in _arrays(fresh).values() for a in part)
        return state + 8 * n_vocab + 2 * (_BYTES_PER_TOKEN * n_tokens + _BYTES_SLACK) + 80

    @staticmethod
    def lanes_that_fit(mp: MixParams, n_vocab: int, n_tokens: int, free: int | None = None,
                       share: float = 0.9) -> int:
        """How many lanes fit in `share` of the device's free memory now (or of `free` bytes)."""
        if free is None:
            from ..gpu import numba_cuda
            free = numba_cuda().current_context().get_memory_info()[0]
        if free == float("inf"):                          # the simulator
            return 1 << 30
        return int(free * share) // LaneBatch.bytes_per_lane(mp, n_vocab, n_tokens)

    def reset(self, lanes) -> None:
        """Fresh ensemble state and an empty encoder (coder.Encoder's start) for these lanes."""
        st0 = np.zeros(8, dtype=np.int64)
        st0[_coder.E_HIGH] = _coder.TOP
        for lane in lanes:
            for rows, a in zip(self._rows, self._fresh):
                rows[lane].copy_to_device(a)
            self.st[lane].copy_to_device(st0)
            self.conf[lane] = 0.0                       # a fresh state's: no match yet
        self.dconf.copy_to_device(self.conf)

    def _flags(self, lanes, value=1, out=None):
        a = np.zeros(self.lanes, dtype=np.int8) if out is None else out
        a[np.asarray(list(lanes), dtype=np.int64)] = value
        return a

    def _plan(self, logits, need, skipped, rows=None):
        """(logits on the device, row_of, mode) of one step: lane need[i] takes row i of logits
        (row rows[i] where given)."""
        if need:
            if isinstance(logits, np.ndarray):
                logits = self.cuda.to_device(np.ascontiguousarray(logits, dtype=np.float32))
            if logits.shape[1] != self.n_vocab or (rows is None and
                                                   logits.shape[0] != len(need)):
                raise ValueError(f"logits must be [{len(need)}, {self.n_vocab}]")
        else:
            logits = self._nologits
        row_of = np.zeros(self.lanes, dtype=np.int64)
        row_of[np.asarray(need, dtype=np.int64)] = np.arange(len(need)) if rows is None else rows
        mode = self._flags(skipped, 2, self._flags(need))
        return logits, self.cuda.to_device(row_of), self.cuda.to_device(mode)

    def skip_conf(self) -> np.ndarray:
        """The confidence-skip probability of every lane ([self.lanes] float64), as its last
        step (or its reset) left it: what the CPU's LaneModel.skip_conf gives before the next."""
        return self.conf

    def encode(self, logits, need, skipped, syms, rows=None) -> None:
        """Code syms[l] for every lane l of need (with row i of logits for need[i]: [len(need),
        V] float32, host or device) and of skipped (without the LLM), then learn it."""
        syms = np.ascontiguousarray(syms, dtype=np.int64)
        if syms.shape != (self.lanes,) or syms.min(initial=0) < 0 or \
                syms.max(initial=0) >= self.n_vocab:
            raise ValueError(f"symbols must be [{self.lanes}] in [0, {self.n_vocab})")
        logits, row_of, mode = self._plan(logits, need, skipped, rows)
        self._launch("encode", self.SS, logits, row_of, self.cuda.to_device(syms), mode,
                     self.freqs, self.st, self.buf, self.dconf)
        self.conf = self.dconf.copy_to_host()

    def _launch(self, what, *args) -> None:
        """k_<what> (a thread per lane) or kb_<what> (a block of self.threads per lane; where the
        device cannot give a block that many registers, half as many threads, down to 32: the
        bits do not depend on the thread count, and a launch refused for resources ran nothing)."""
        if not self.threads:
            self.k["k_" + what][self._grid](*args)
            return
        while True:
            try:
                self.k["kb_" + what][self.lanes, self.threads](*args)
                return
            except Exception as e:
                if "OUT_OF_RESOURCES" not in str(e) or self.threads <= 32:
                    raise
                self.threads //= 2

    def finish(self, lanes) -> list:
        """Terminate the streams of `lanes`; their coded bytes, in that order."""
        self.k["k_finish"][self._grid](self.cuda.to_device(self._flags(lanes)), self.st,
                                       self.buf)
        st = self.st.copy_to_host()
        out = []
        for lane in lanes:
            n = int(st[lane, _coder.E_NBYTES])
            if n > self.buf.shape[1]:                 # cannot happen (module docstring)
                raise NacritError(f"device lane {lane}: coded stream outgrew its buffer")
            out.append(self.buf[lane, :n].copy_to_host().tobytes() if n else b"")
        return out

    def start_decode(self, streams: dict) -> None:
        """Load {lane: coded bytes} and start those lanes' decoders (a stream longer than a lane
        holds cannot come from a valid lane of this length: a clear error)."""
        for lane, b in streams.items():
            if len(b) > self.data.shape[1]:
                raise NacritError(f"corrupt lane: {len(b)} coded bytes for at most "
                                  f"{self.n_tokens} tokens")
            row = np.zeros(self.data.shape[1], np.uint8)     # zero bits past the end
            row[:len(b)] = np.frombuffer(b, dtype=np.uint8)
            self.data[lane].copy_to_device(row)
        self.k["k_dec_init"][self._grid](
            self.cuda.to_device(self._flags(streams)), self.st, self.data)

    def decode(self, logits, need, skipped, rows=None) -> np.ndarray:
        """Decode one symbol for every lane of need and skipped (as encode), then learn it;
        [self.lanes] int64, 0 for the other lanes."""
        logits, row_of, mode = self._plan(logits, need, skipped, rows)
        self.out.copy_to_device(np.zeros(self.lanes, dtype=np.int64))
        self._launch("decode", self.SS, logits, row_of, mode, self.freqs, self.st, self.data,
                     self.out, self.dconf)
        self.conf = self.dconf.copy_to_host()
        return self.out.copy_to_host()


def simulated() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
