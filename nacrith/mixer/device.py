"""The coder's per-token work on a CUDA device: the ensemble, its 24-bit frequencies and the
arithmetic coder of many lanes at once, one device thread per lane, the same bits as the CPU.

One source of truth: the device kernels call the CPU's own compiled steps (kernels.enc_step /
enc_skip_step / dec_kernel / dec_skip_kernel / skip_conf_kernel, coder._finish /
_dec_init_kernel: ensemble._predict, coder._encode_symbol, ensemble._update, ...); numba-cuda
compiles a CPU @njit function's Python for the device, so there is no second copy of any of it.
What makes the bits the same:
- gpu.numba_cuda() compiles every kernel with NVVM's -fma=0 and fastmath off: each float
  multiply / add / subtract is a separate round-to-nearest `.rn` instruction, divisions and
  square roots are `div.rn` / `sqrt.rn`, nothing is flushed to zero (tests/test_device.py fails
  on any fma, .ftz or .approx in the PTX of these kernels, and shows NVVM fusing them without
  the rule);
- the mixer takes no libm function (its exp is cdf._exp_nonpos; math.sqrt is IEEE's sqrt) and
  every reduction is the CPU's own loop in its own order, run by the one thread of the lane;
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
every coder in flight on a shared engine, one launch a step).  Not here yet: a block of threads
per lane over preset 5's order-free vocabulary sums (one thread per lane runs the vocabulary
passes serially, latency-bound: issue 22 measured ~50 ms a step at 256-4096 lanes for three
such passes).
"""
from __future__ import annotations

import os
import types
import typing

import numpy as np

from .. import coder as _coder
from ..errors import NacritError
from . import kernels as K
from . import state as _state
from .params import MixParams

TPB = 64                        # threads (lanes) per block
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


KERNELS = (k_encode, k_decode, k_finish, k_dec_init)


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
             "FINISH": _coder._finish, "DINIT": _coder._dec_init_kernel}
    if simulated():                 # the simulator's kernels are Python: they call the CPU steps
        steps = {k: _on_host_arrays(f) for k, f in steps.items()}
    genv = dict(globals(), cuda=cuda, VIEW=cuda.jit(device=True)(env["_lane_view"]), **steps)
    return {f.__name__: cuda.jit(types.FunctionType(f.__code__, genv, f.__name__))
            for f in KERNELS}


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
            "k_finish": (i8, i64_2, u8_2),
            "k_dec_init": (i8, i64_2, u8_2)}


class LaneBatch:
    """The ensemble and coder state of `lanes` lanes on the device, each coding one sequence of
    at most n_tokens tokens (encode or decode, one direction per batch)."""

    def __init__(self, mp: MixParams, n_vocab: int, lanes: int, n_tokens: int, tcol=None):
        from ..gpu import numba_cuda
        self.cuda = cuda = numba_cuda()
        self.k = kernels()
        if mp.col_lr and (tcol is None or tcol.shape != (3, n_vocab)):
            raise ValueError("the column bias needs the token column table of the model")
        fresh = _state.new_state(mp, n_vocab, n_tokens, tcol)
        K.init_kernel(fresh)
        self.lanes, self.n_vocab, self.n_tokens = lanes, n_vocab, n_tokens
        self._grid = _grid(lanes)
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
        self.k["k_encode"][self._grid](
            self.SS, logits, row_of, self.cuda.to_device(syms), mode, self.freqs, self.st,
            self.buf, self.dconf)
        self.conf = self.dconf.copy_to_host()

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
        self.k["k_decode"][self._grid](
            self.SS, logits, row_of, mode, self.freqs, self.st, self.data, self.out,
            self.dconf)
        self.conf = self.dconf.copy_to_host()
        return self.out.copy_to_host()


def simulated() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
