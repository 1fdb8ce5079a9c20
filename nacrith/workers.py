"""Local worker processes: N processes, each loading the model once, pinned to a device.

Invariants:
- workers are started with the 'spawn' method (llama.cpp's OpenMP pool does not survive fork),
  from the thread that owns the pool (the CLI's main thread); a replacement for a dead worker
  from worker i's feeder thread (PR_SET_PDEATHSIG follows the creating thread, so it also dies
  when the pool closes);
- worker i runs with `assign(n, devices, threads)[i]`: its environment (CUDA_VISIBLE_DEVICES)
  and its Options (threads, n_gpu_layers, main_gpu). That function is pure, so the device logic
  is tested without a GPU;
- every worker uses the same thread count, and a task's result depends only on its data and the
  options (api.code_segment / api.decode_segment): an archive is byte-identical whatever the
  number of workers, for the same --threads and segment size (a GPU build gives other logits
  than a CPU one: compare like with like);
- `imap` keeps at most `window` tasks of one stream in flight (bounded memory) and yields
  results in submission order, whichever worker finished first;
- workers ignore SIGINT (the parent decides), are killed by `terminate()`, and die with the
  parent (PR_SET_PDEATHSIG on Linux; a worker also exits when its parent is gone);
- a worker that dies is replaced (same Assignment) and its task retried, at most
  LocalPool.MAX_RETRIES times per task; then that task fails with NacritError, never a hang.
"""
from __future__ import annotations

import collections
import ctypes
import itertools
import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import CancelledError, Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from . import api, hub, models
from .errors import NacritError

POLL = 0.01                     # s: a feeder with room for tasks looks for new ones this often
MAX_DEFAULT_THREADS = 4         # as api.default_threads("llama"): more rarely helps a 135M model
GPU_ALL_LAYERS = 999            # n_gpu_layers when a device is given and --gpu-layers is not
DEVICE_INFLIGHT = 64            # segments per GPU worker by default (--inflight)
FILES_AT_ONCE = 8               # files at once of -r without --workers (portable engine, CPU)


@dataclass
class Assignment:
    """What one worker gets: its device, environment and llama.cpp placement/threads."""
    index: int
    device: str                 # "cpu" or a CUDA device id
    threads: int
    n_gpu_layers: int = 0
    main_gpu: int = 0
    env: dict = field(default_factory=dict)
    inflight: int = 1           # segments coded at once, their lanes batched (nacrith/hub.py)

    def describe(self) -> str:
        where = "cpu" if self.device == "cpu" else f"cuda:{self.device}"
        s = f"worker {self.index}: {where}, threads {self.threads}"
        return s + (f", {self.inflight} segments in flight" if self.inflight > 1 else "")


def parse_devices(spec: str | None) -> list[str]:
    """'0,1' -> ['0', '1']; None/'' / 'cpu' -> [] (CPU only)."""
    if not spec or spec.strip().lower() == "cpu":
        return []
    devs = [d.strip() for d in spec.split(",")]
    if any(not d.isdigit() for d in devs):
        raise NacritError(f"--devices: expected GPU ids like 0,1 (got {spec!r})")
    return devs


def split_threads(n_workers: int, threads: int | None, cpus: int | None = None) -> int:
    """Threads per worker: the explicit value, else the CPUs split between the workers (at most
    4 like the single-process default, at least 1)."""
    if threads:
        return threads
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, cpus // max(1, n_workers)))


def worker_threads(opts: api.Options, n_workers: int = 1) -> int | None:
    """Threads per CPU worker when the options give none: the portable engine's default
    (api.default_threads) within the worker's share of the CPUs; None for llama.cpp, whose
    workers split the CPUs (split_threads)."""
    if opts.threads:
        return opts.threads
    backend = pool_backend(opts, [])
    if backend != "portable":
        return None
    return min(api.default_threads(backend), split_threads(n_workers, None))


def assign(n_workers: int, devices: list[str], threads: int | None, n_gpu_layers: int = 0,
           cpus: int | None = None, inflight: int = 1) -> list[Assignment]:
    """Round-robin workers over devices. With devices, worker i sees only its GPU
    (CUDA_VISIBLE_DEVICES=dev, so main_gpu is 0 inside it) and offloads all layers unless
    --gpu-layers says otherwise; without, workers share the CPUs (threads split). Each worker
    codes `inflight` segments at once."""
    if n_workers < 1:
        raise NacritError("--workers must be >= 1")
    if inflight < 1:
        raise NacritError("--inflight must be >= 1")
    t = split_threads(n_workers, threads, cpus)
    out = []
    for i in range(n_workers):
        if devices:
            dev = devices[i % len(devices)]
            out.append(Assignment(i, dev, t, n_gpu_layers or GPU_ALL_LAYERS, 0,
                                  {"CUDA_VISIBLE_DEVICES": dev}, inflight))
        else:
            out.append(Assignment(i, "cpu", t, 0, 0, {"CUDA_VISIBLE_DEVICES": ""}, inflight))
    return out


def pool_backend(opts: api.Options, devices: list[str]) -> str:
    """The engine workers run: the one asked for; else ("auto") api.auto_backend's on the CPU;
    with devices the portable engine on the GPUs ("device") for the default model unless
    --gpu-layers asks for llama.cpp's offload, llama.cpp offloaded for other models (the
    device engine runs the llama architecture only, not Gemma-3). The two-model coder (level 9,
    --model2) runs on the CPU only: with devices it is an error, not a silent CPU run."""
    if devices and opts.model2 is not None:
        raise NacritError("--devices: the two-model coder (--model2, level 9) runs on the CPU "
                          "only; use -8 (Gemma-3 alone) on GPUs")
    if opts.backend != "auto":
        return opts.backend
    b = api.auto_backend(opts.model, opts.n_gpu_layers)
    if devices and b == "portable":
        return "device" if opts.model in (None, models.DEFAULT) else "llama"
    return b


def default_inflight(backend: str) -> int:
    """Segments a worker codes at once when --inflight is not given: DEVICE_INFLIGHT on a GPU
    (a step of one lane leaves the device idle), 1 on the CPU."""
    return DEVICE_INFLIGHT if backend == "device" else 1


def files_at_once(opts: api.Options, mode: str, n_files: int) -> int:
    """Files `compress -r` codes at once in its own process (no --workers): FILES_AT_ONCE when
    the portable engine codes them on the CPU, sharing one engine (hub.py; measured: 1.54x one
    at a time on 8 small corpus texts, docs/benchmarks.md), else 1. Not for decompress/test:
    an archive may need llama.cpp, whose engines cannot be shared (one per thread)."""
    if mode != "compress" or n_files < 2 or not opts.neural or \
            pool_backend(opts, []) != "portable":
        return 1
    return FILES_AT_ONCE


def pool_inflight(opts: api.Options, devices: list[str], inflight: int | None) -> int:
    """Segments each worker codes at once: --inflight, else default_inflight. More than one
    needs the portable engine (its lanes are independent: nacrith/hub.py)."""
    backend = pool_backend(opts, devices)
    if inflight is None:
        return default_inflight(backend)
    if inflight > 1 and backend == "llama":
        raise NacritError("--inflight above 1 needs the portable engine (llama.cpp codes one "
                          "segment per worker at a time)")
    return inflight


def worker_options(opts: api.Options, a: Assignment, mode: str) -> api.Options:
    """The Options a worker codes with (compress: normalised, so the archive records them)."""
    backend = pool_backend(opts, [] if a.device == "cpu" else [a.device])
    o = replace(opts, threads=a.threads, n_gpu_layers=a.n_gpu_layers, main_gpu=a.main_gpu,
                backend=backend)
    return api.normalized(o) if mode == "compress" else o


def run_task(kind: str, arg, o: api.Options, cache: dict):
    """One task, as every engine (local workers, Ray actors) runs it."""
    if kind == "encode":
        return api.code_segment(arg, o)
    if kind == "decode":
        return api.decode_segment(*arg, o, cache=cache)
    if kind == "bench":                             # `copies` codings at once (--inflight)
        copies = max(1, hub.lanes() // o.lanes)
        api.code_segment(arg[:64], o)               # warm-up: first-call costs out of the timing
        tokens: list = []
        t0 = time.perf_counter()
        if copies == 1:
            api.code_segment(arg, o, progress=tokens.append)
        else:
            with ThreadPoolExecutor(copies) as ex:
                list(ex.map(lambda _: api.code_segment(arg, o, progress=tokens.append),
                            range(copies)))
        return {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "tokens": sum(tokens), "seconds": time.perf_counter() - t0,
                "peak_rss": peak_rss(), "copies": copies}
    raise NacritError(f"unknown task {kind!r}")


def bench(pool: "LocalPool", data: bytes) -> dict:
    """`nacrith bench`: every worker of a loaded pool codes `data` at the same time (one task
    pinned to each, timed after a warm-up; a worker with --inflight N codes N copies at once);
    a row per worker and the total: every worker's bytes and tokens over the slowest worker's
    time, the sum of the peaks."""
    if api.looks_binary(data):
        raise NacritError("not text: the bench codes text with the model")
    futures = [pool.submit("bench", data, slot=a.index) for a in pool.assignments]
    rows = []
    for a, f in zip(pool.assignments, futures):
        r = f.result()
        rows.append({"worker": a.index, "device": a.device,
                     **_rates(len(data) * r["copies"], r), "threads": a.threads,
                     "in_flight": r["copies"], "cuda_visible_devices": r["cuda_visible_devices"]})
    total = {"tokens": sum(r["tokens"] for r in rows), "seconds": max(r["seconds"] for r in rows),
             "peak_rss": sum(r["peak_rss"] for r in rows)}
    return {"bytes": len(data), "workers": rows,
            "total": _rates(sum(r["bytes"] for r in rows), total)}


def _rates(n_bytes: int, r: dict) -> dict:
    s = max(round(r["seconds"], 3), 0.001)
    return {"bytes": n_bytes, "tokens": r["tokens"], "seconds": s,
            "tokens_per_s": round(r["tokens"] / s, 1), "bytes_per_s": round(n_bytes / s, 1),
            "peak_rss": r["peak_rss"]}


def peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM. Not ru_maxrss, which survives exec, so a spawned
    worker would report its parent's peak if that was higher (fallback where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load(o: api.Options, mode: str) -> int:
    """Load the model for compression up front (each worker once); peak RSS in bytes."""
    if mode == "compress" and o.neural:
        try:
            api.get_engine(models.resolve(o.model), o, o.mix_params())
        except NacritError:
            pass                            # reported by the first task that needs the model
    return peak_rss()


def portable_error(e: BaseException) -> BaseException:
    """An exception that survives pickling, with the same one-line meaning."""
    if isinstance(e, (NacritError, OSError)):
        return e
    return NacritError(f"internal error in worker ({type(e).__name__}: {e})")


# ---------------------------------------------------------------- worker process
def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))          # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _doomed(generation: int, kind: str, arg) -> bool:
    """Test hook (tests/test_scale.py), off unless NACRITH_TEST_WORKER_DIES is set: "first"
    kills each worker of the first generation on its first task; any other text kills every
    worker given a block to encode that contains it."""
    spec = os.environ.get("NACRITH_TEST_WORKER_DIES")
    if not spec:
        return False
    if spec == "first":
        return generation == 0
    return kind == "encode" and spec.encode() in arg


def _portable(task) -> bool:
    """A decode task (frame, payload, model descriptor, ...) of a portable-engine archive."""
    from .frames import E_PORTABLE
    return getattr(task[2], "engine", None) == E_PORTABLE


class Tasks:
    """run_task for one worker (process or Ray actor) coding `inflight` tasks at once, each in a
    thread of its own: the portable engine shared (hub.enable: lanes for `inflight` segments),
    a decoding cache per thread; llama.cpp archives decode one at a time with one engine."""

    def __init__(self, o: api.Options, inflight: int):
        self.o, self.many = o, inflight > 1
        if self.many:
            hub.enable(inflight * o.lanes)
        self.local = threading.local()
        self.serial = threading.Lock()
        self.shared: dict = {}

    def run(self, kind: str, arg):
        if self.many and kind == "decode" and not _portable(arg):
            with self.serial:
                return run_task(kind, arg, self.o, self.shared)
        return run_task(kind, arg, self.o, self.local.__dict__.setdefault("cache", {}))


def _worker(a: Assignment, opts: api.Options, mode: str, conn, parent: int,
            generation: int) -> None:
    """Worker process: tasks (id, kind, arg) in, (id, ok, result) out; with a.inflight > 1
    each task runs in a thread of its own, the engine shared (nacrith/hub.py)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent:
        return
    os.environ.update(a.env)
    o = worker_options(opts, a, mode)
    tasks, sending = Tasks(o, a.inflight), threading.Lock()
    conn.send(load(o, mode))

    def do(tid, kind, arg):
        try:
            msg = (tid, True, tasks.run(kind, arg))
        except BaseException as e:          # noqa: BLE001 - the parent reports it per file
            msg = (tid, False, portable_error(e))
        with sending:
            conn.send(msg)
    threads = ThreadPoolExecutor(a.inflight, "nacrith-task") if a.inflight > 1 else None
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None or os.getppid() != parent:
            return
        tid, kind, arg = item
        if _doomed(generation, kind, arg):
            os.kill(os.getpid(), signal.SIGKILL)
        if threads is None:
            do(tid, kind, arg)
        else:
            threads.submit(do, tid, kind, arg)


# ---------------------------------------------------------------- the pool
@dataclass
class _Task:
    future: Future
    kind: str
    arg: object
    slot: int | None = None                 # only this worker may run it (bench)
    deaths: int = 0                         # workers that died holding it


def _exit_reason(p) -> str:
    code = p.exitcode
    if code is not None and code < 0:
        try:
            return f"{p.name} killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"{p.name} exit status {code}"


class LocalPool:
    """N spawned worker processes, one pipe and one feeding thread each (no semaphores, so
    nothing leaks when the process exits on a signal); thread-safe `submit`.

    A worker that dies (SIGKILL, OOM, crash) after loading is replaced by a fresh one with the
    same Assignment, and the task it held is queued again, up to MAX_RETRIES times per task
    (tasks are pure: a retried segment gives the same bytes); then that task fails with
    NacritError and the others go on. An exception raised by a task is its result, never retried.
    A worker that dies before it has loaded fails the whole pool (wait_ready raises)."""

    name = "local"
    MAX_RETRIES = 2

    def __init__(self, n_workers: int, devices: list[str], opts: api.Options, mode: str,
                 inflight: int | None = None):
        threads = worker_threads(opts, n_workers) if not devices else opts.threads
        self.assignments = assign(n_workers, devices, threads, opts.n_gpu_layers,
                                  inflight=pool_inflight(opts, devices, inflight))
        self.opts, self.mode = opts, mode
        self.ctx = mp.get_context("spawn")
        self.cond = threading.Condition()
        self.tasks: collections.deque = collections.deque()
        self.ready: dict[int, int] = {}         # worker index -> peak RSS after loading
        self.error: BaseException | None = None
        self.closed = False
        self.procs: list = [None] * len(self.assignments)
        self.conns: list = [None] * len(self.assignments)
        self.generation = [0] * len(self.assignments)
        self.deaths: list[str] = []             # why each replaced worker ended (-v reports them)
        for i in range(self.n):
            self._spawn(i)
        self.feeders = [threading.Thread(target=self._feed, args=(i,), daemon=True)
                        for i in range(self.n)]
        for t in self.feeders:
            t.start()

    @property
    def n(self) -> int:
        return len(self.procs)

    @property
    def slots(self) -> int:
        """Tasks the workers run at once."""
        return sum(a.inflight for a in self.assignments)

    def _spawn(self, i: int) -> None:
        mine, theirs = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker, name=f"nacrith-worker-{i}", daemon=True,
                             args=(self.assignments[i], self.opts, self.mode, theirs,
                                   os.getpid(), self.generation[i]))
        p.start()
        theirs.close()
        self.procs[i], self.conns[i] = p, mine

    def wait_ready(self) -> dict[int, int]:
        """Block until every worker has loaded its model; {worker index: peak RSS bytes}."""
        while len(self.ready) < self.n and self.error is None:
            threading.Event().wait(0.05)
        if self.error is not None:
            raise self.error
        return dict(self.ready)

    def submit(self, kind: str, arg, slot: int | None = None) -> Future:
        t = _Task(Future(), kind, arg, slot)
        self._put(t)
        return t.future

    def imap(self, kind: str, items, window: int | None = None):
        return ordered(self.submit, kind, items, window or self.slots + 1)

    def _put(self, t: _Task) -> None:
        with self.cond:
            if self.error is None:
                self.tasks.append(t)
                self.cond.notify_all()
                return
        _settle(t.future, self.error, False)

    def _take(self, i: int, wait: bool, alone: bool) -> _Task | None:
        """The oldest task worker i may run (alone=False: none that has killed a worker, which
        runs with nothing beside it); None once the pool is closing or failed, or (wait=False)
        when there is none now."""
        with self.cond:
            while self.error is None:
                for t in self.tasks:
                    if t.slot in (None, i) and (alone or not t.deaths):
                        self.tasks.remove(t)
                        return t
                if not wait:
                    return None
                self.cond.wait()
        return None

    def _feed(self, i: int) -> None:
        """Worker i's feeder: up to its `inflight` tasks at the worker at once, so tasks go to
        whichever worker has room. A task that has killed a worker runs alone (with nothing
        else in flight), so one bad segment cannot use up the others' retries."""
        try:
            self.ready[i] = self.conns[i].recv()
        except (EOFError, OSError):
            if not self.closed:
                self._fail(NacritError(f"{self._reap(i)} while loading"))
            return
        room = self.assignments[i].inflight
        held: dict[int, _Task] = {}             # task id -> task, at the worker now
        ids = itertools.count()
        while True:
            try:
                while len(held) < room and not any(t.deaths for t in held.values()):
                    t = self._take(i, wait=not held, alone=not held)
                    if t is None:
                        break
                    if not t.deaths and not t.future.set_running_or_notify_cancel():
                        continue
                    if self.conns[i] is None:       # after a death (nothing held): a new one
                        try:
                            self._respawn(i)
                        except (EOFError, OSError, CancelledError):
                            if self.closed:
                                _settle(t.future, CancelledError(), False)
                                return
                            self._died(i, [t])
                            continue
                    tid = next(ids)
                    held[tid] = t
                    self.conns[i].send((tid, t.kind, t.arg))
                if not held:
                    return                          # closing or failed
                if len(held) < room and not self.conns[i].poll(POLL):
                    continue                        # room for more: look for new tasks
                tid, ok, value = self.conns[i].recv()
            except (EOFError, OSError, CancelledError):
                if self.closed:
                    for t in held.values():
                        _settle(t.future, CancelledError(), False)
                    return
                self._died(i, list(held.values()))
                held.clear()
                continue
            _settle(held.pop(tid).future, value, ok)

    def _died(self, i: int, held: list) -> None:
        """Worker i died holding `held`: each is queued again, or fails after MAX_RETRIES."""
        why = self._reap(i)
        self.deaths.append(why)
        for t in held:
            t.deaths += 1
            if t.deaths > self.MAX_RETRIES:
                _settle(t.future, NacritError(
                    f"worker died on this task {t.deaths} times (last: {why})"), False)
            else:
                self._put(t)

    def _reap(self, i: int) -> str:
        """Worker i is gone (or its pipe is): make sure of it; why it ended."""
        p = self.procs[i]
        p.join(1)
        if p.is_alive():
            p.kill()
            p.join()
        if self.conns[i] is not None:
            self.conns[i].close()
            self.conns[i] = None
        return _exit_reason(p)

    def _respawn(self, i: int) -> None:
        with self.cond:
            if self.closed:
                raise CancelledError
            self.generation[i] += 1
            self._spawn(i)
        self.ready[i] = self.conns[i].recv()

    def _fail(self, err: BaseException) -> None:
        """No more tasks: every waiting one fails with err."""
        with self.cond:
            if self.error is None:
                self.error = err
            tasks, self.tasks = self.tasks, collections.deque()
            self.cond.notify_all()
        for t in tasks:
            _settle(t.future, err, False)

    def close(self) -> None:
        """Normal end: workers finish and exit."""
        with self.cond:
            if self.closed:
                return
            self.closed = True
        self._fail(CancelledError())
        for t in self.feeders:
            t.join()
        for c in self.conns:
            try:
                if c is not None:
                    c.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
        self._close_conns()

    def terminate(self) -> None:
        """Interrupted: kill every worker now; tasks in flight fail with CancelledError."""
        with self.cond:
            if self.closed:
                return
            self.closed = True
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join()
        self._fail(CancelledError())
        for t in self.feeders:
            t.join()
        self._close_conns()

    def _close_conns(self) -> None:
        for c in self.conns:
            if c is not None:
                c.close()


def _settle(f: Future, value, ok: bool) -> None:
    """Resolve f unless it was cancelled meanwhile (by `ordered` giving up on it)."""
    try:
        if ok:
            f.set_result(value)
        else:
            f.set_exception(value)
    except InvalidStateError:
        pass


def ordered(submit, kind: str, items, window: int):
    """Submit items lazily, at most `window` in flight; yield (item, result) in item order."""
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append((item, submit(kind, item)))
            if len(pending) >= window:
                item0, f = pending.popleft()
                yield item0, f.result()
        while pending:
            item0, f = pending.popleft()
            yield item0, f.result()
    finally:
        for _, f in pending:
            f.cancel()


# `nacrith bench` without --file: about 2 KB of plain English prose (written for this project).
BENCH_TEXT = b"""\
The archive room was on the third floor, at the end of a corridor that smelled of dust and warm
paper. Every morning the keeper unlocked the door, opened the two tall windows, and looked at the
shelves as a gardener looks at a field. There were boxes of letters, ledgers bound in green cloth,
maps folded so many times that their creases had become roads of their own, and a long row of
notebooks that nobody had opened in forty years.

People came to ask for things. A student wanted the minutes of a meeting held before the war; an
old man wanted to know whether his grandmother had really owned the mill by the river; a lawyer
needed a signature, and only the signature, and left without reading a word around it. The keeper
found what they asked for, wrote each request in a book of requests, and put every box back where
it had been, because a box in the wrong place is a box that does not exist.

In the evenings, when the room was quiet, the keeper read. Not the important documents, which were
already listed and described, but the small ones: a shopping list tucked into a prayer book, a
child's drawing of a horse on the back of an invoice, a note that said only "back at six, the key
is under the stone". These, the keeper thought, were what the archive was really for. Anyone can
keep a treaty. It takes patience to keep a Tuesday.

One winter the roof leaked. Water ran down the wall behind the third row of shelves and the
keeper spent a night moving boxes by lamplight, drying pages between sheets of blotting paper,
counting and recounting. Nothing was lost. In the morning the keeper wrote in the book of
requests, in the same careful hand as always: "Roof. Third row. All saved." Then the windows were
opened, the dust began to settle again, and the first visitor of the day knocked at the door,
asking for a map of a village that no longer had a name.
"""
