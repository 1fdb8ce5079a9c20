"""A team of threads for the portable engine's feeds: one entry per thread per feed, the work
of each step cut into chunks that threads claim, workers that block (not spin) between feeds.

Why not Numba's prange (OpenMP) as before: a single-lane decode step is ~6 ms of work cut by ~400 data
dependencies (each product needs the whole previous step).  As OpenMP parallel regions,
sleeping workers (OMP_WAIT_POLICY=PASSIVE, needed on shared machines) take tens of microseconds
to wake at every region; spinning ones (ACTIVE) burn a core whenever nacrith is not computing;
and a static split waits for the slowest thread, one that the OS has descheduled included.
Here the team's threads are plain Python threads that enter one compiled function per feed
(`kernel(tid, nth, bar, *args)`, GIL released).  Every step ("phase" p, numbered in the same
order by every thread) has n chunks; a thread claims chunks (claim: its own contiguous part
first, then what is left of the others') until none is left, counts each one it finishes in
the phase's word of `bar`, and waits until all n are finished (pause, then sched_yield) before
the next phase.  A thread that is late (descheduled, still unboxing its arguments) finds the
chunks taken and catches up without work: no thread ever waits for a particular other thread,
only for chunks that were claimed, so any one thread alone completes a feed.  Measured on a
2-core VM: 1.4-1.6x one thread's speed idle, 1.15-1.2x slower than one thread beside a busy
process (static splits: 4x slower there).

Invariants:
- a chunk's numbers are computed by the same functions whichever thread claims it, each output
  element by exactly one chunk: the split changes who computes an element, never its value;
- chunks of phase p read only what earlier phases wrote (each waits for the previous phase);
- `bar` belongs to one feed (Team.run allocates it): a worker still walking through a finished
  feed's phases touches only that feed's counters and claims nothing.
"""
from __future__ import annotations

import os
import platform
import threading

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..errors import NacritError

_i32, _i64 = ir.IntType(32), ir.IntType(64)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
_POSIX = os.name == "posix"
SPINS = 1 << 14                  # pause-spins before a waiting thread starts yielding its core


def _slot(context, builder, aryty, ary, i):
    a = context.make_array(aryty)(context, builder, ary)
    return builder.gep(a.data, [i])


@intrinsic
def atomic_add(typingctx, arr, i, v):
    """arr[i] += v atomically (int64, sequentially consistent); returns the old value."""
    sig = types.int64(arr, i, v)

    def codegen(context, builder, sig, args):
        p = _slot(context, builder, sig.args[0], args[0], args[1])
        return builder.atomic_rmw("add", p, context.cast(builder, args[2], sig.args[2],
                                                         types.int64), "seq_cst")

    return sig, codegen


@intrinsic
def atomic_load(typingctx, arr, i):
    """arr[i] read atomically (int64, acquire): never hoisted out of a wait loop."""
    sig = types.int64(arr, i)

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_slot(context, builder, sig.args[0], args[0], args[1]),
                                   "acquire", 8)

    return sig, codegen


@intrinsic
def relax(typingctx, hard):
    """One wait step: the `pause` hint (x86), and with `hard` sched_yield (POSIX)."""
    sig = types.void(types.boolean)

    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        if _POSIX:
            with builder.if_then(args[0]):
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_i32, []),
                                                    "sched_yield")
                builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def cycles(typingctx):
    """The CPU's time-stamp counter (x86 rdtsc; 0 elsewhere): stage profiles only."""
    sig = types.int64()

    def codegen(context, builder, sig, args):
        if not _X86:
            return ir.Constant(_i64, 0)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_i64, []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])

    return sig, codegen


@njit(nogil=True, cache=True)
def tick(clk, tid, stage, t0):
    """With a profile array clk [threads, stages] (not [0, k]): add the cycles since t0 to
    clk[tid, stage] and return now."""
    if clk.shape[0] == 0:
        return t0
    t = cycles()
    clk[tid, stage] += t - t0
    return t


@njit(nogil=True, cache=True)
def claim(bar, p, n, tid, nth):
    """The next unclaimed chunk of phase p (of n), or -1 when none is left.

    The chunks are cut into nth contiguous parts, one per thread.  A thread takes the chunks of
    its own part from the front, in order (one stream through memory per thread, its counter
    rarely touched by another core); when its part is empty it takes the other parts' chunks
    from their back (far from where their owner reads: two threads reading neighbouring rows
    defeat the hardware prefetchers).  A part's word counts taken-from-front in its low 32 bits
    and taken-from-back in the high ones, so one atomic add claims without a race."""
    for k in range(nth):
        q = tid + k if tid + k < nth else tid + k - nth
        lo, hi = share(n, q, nth)
        w = (p * (nth + 1) + q) * 8
        old = atomic_load(bar, w)
        if (old & 0xFFFFFFFF) + (old >> 32) >= hi - lo:
            continue
        old = atomic_add(bar, w, 1 if k == 0 else 1 << 32)
        f = old & 0xFFFFFFFF
        b = old >> 32
        if f + b < hi - lo:
            return lo + f if k == 0 else hi - 1 - b
    return -1


@njit(nogil=True, cache=True)
def next_chunk(bar, p, n, tid, nth):
    """Mark the chunk just computed as finished, then claim the next one."""
    atomic_add(bar, (p * (nth + 1) + nth) * 8, 1)
    return claim(bar, p, n, tid, nth)


@njit(nogil=True, cache=True)
def wait(bar, p, n, nth):
    """Wait until all n chunks of phase p are finished; returns the next phase's number."""
    spins = 0
    while atomic_load(bar, (p * (nth + 1) + nth) * 8) < n:
        relax(spins >= SPINS)
        spins += 1
    return p + 1


@njit(nogil=True, cache=True)
def share(n, c, nc):
    """Chunk c's contiguous part [lo, hi) of range(n) cut into nc chunks (sizes differ by at
    most one)."""
    return n * c // nc, n * (c + 1) // nc


class Team:
    """nth threads for kernels of the form kernel(tid, nth, bar, *args): the calling thread is
    tid 0, nth - 1 daemon workers the others.  run() returns when the calling thread has seen
    every phase finished; a worker may still be leaving that feed's kernel (claiming nothing).
    close() ends the workers; run() after it runs on the calling thread alone."""

    def __init__(self, nth: int):
        self.nth = nth
        self.pid = os.getpid()
        self._job = None
        self._go = [threading.Semaphore(0) for _ in range(nth - 1)]
        self._lock = threading.Lock()
        self.failed = None
        from .._signals import blocked
        with blocked():                 # workers never take the CLI's signals (_signals.py)
            for tid in range(1, nth):
                threading.Thread(target=self._work, args=(tid,), daemon=True,
                                 name=f"nacrith-team-{tid}").start()

    def _work(self, tid: int) -> None:
        go = self._go[tid - 1]
        while True:
            go.acquire()
            if self._job is None:       # close()
                return
            fn, args = self._job
            try:
                fn(tid, self.nth, *args)
            except BaseException as e:  # noqa: BLE001 - reported by the next run()
                self.failed = e

    def close(self) -> None:
        """End the workers (each leaves after the feed it may still be in)."""
        with self._lock:
            self._job = None
            for g in self._go:
                g.release()
            self._go = []

    def run(self, fn, phases: int, *args) -> None:
        """fn(tid, nth, bar, *args) on every thread of the team, bar fresh counters for
        `phases` phases; returns when the calling thread's call returns (all phases done)."""
        with self._lock:
            if self.failed is not None:
                e, self.failed = self.failed, None
                raise NacritError(f"portable engine worker failed: {e!r}")
            args = (np.zeros(8 * (self.nth + 1) * phases, np.int64), *args)
            self._job = (fn, args)
            for g in self._go:
                g.release()
            fn(0, self.nth, *args)
