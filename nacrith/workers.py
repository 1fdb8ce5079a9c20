"""Local worker processes: N processes, each loading the model once, pinned to a device.

Invariants:
- workers are started with the 'spawn' method (llama.cpp's OpenMP pool does not survive fork),
  from the thread that owns the pool (the CLI's main thread);
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
  parent (PR_SET_PDEATHSIG on Linux; a worker also exits when its parent is gone); a worker that
  dies fails the tasks in flight with NacritError, never a hang.
"""
from __future__ import annotations

import collections
import ctypes
import multiprocessing as mp
import os
import queue
import signal
import threading
from concurrent.futures import CancelledError, Future, InvalidStateError
from dataclasses import dataclass, field, replace

from . import api, models
from .errors import NacritError

MAX_DEFAULT_THREADS = 4         # as api.default_threads(): more rarely helps a 135M model
GPU_ALL_LAYERS = 999            # n_gpu_layers when a device is given and --gpu-layers is not


@dataclass
class Assignment:
    """What one worker gets: its device, environment and llama.cpp placement/threads."""
    index: int
    device: str                 # "cpu" or a CUDA device id
    threads: int
    n_gpu_layers: int = 0
    main_gpu: int = 0
    env: dict = field(default_factory=dict)

    def describe(self) -> str:
        where = "cpu" if self.device == "cpu" else f"cuda:{self.device}"
        return f"worker {self.index}: {where}, threads {self.threads}"


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


def assign(n_workers: int, devices: list[str], threads: int | None, n_gpu_layers: int = 0,
           cpus: int | None = None) -> list[Assignment]:
    """Round-robin workers over devices. With devices, worker i sees only its GPU
    (CUDA_VISIBLE_DEVICES=dev, so main_gpu is 0 inside it) and offloads all layers unless
    --gpu-layers says otherwise; without, workers share the CPUs (threads split)."""
    if n_workers < 1:
        raise NacritError("--workers must be >= 1")
    t = split_threads(n_workers, threads, cpus)
    out = []
    for i in range(n_workers):
        if devices:
            dev = devices[i % len(devices)]
            out.append(Assignment(i, dev, t, n_gpu_layers or GPU_ALL_LAYERS, 0,
                                  {"CUDA_VISIBLE_DEVICES": dev}))
        else:
            out.append(Assignment(i, "cpu", t, 0, 0, {"CUDA_VISIBLE_DEVICES": ""}))
    return out


def worker_options(opts: api.Options, a: Assignment, mode: str) -> api.Options:
    """The Options a worker codes with (compress: normalised, so the archive records them)."""
    o = replace(opts, threads=a.threads, n_gpu_layers=a.n_gpu_layers, main_gpu=a.main_gpu)
    return api.normalized(o) if mode == "compress" else o


def run_task(kind: str, arg, o: api.Options, cache: dict):
    """One task, as every engine (local workers, Ray actors) runs it."""
    if kind == "encode":
        return api.code_segment(arg, o)
    if kind == "decode":
        return api.decode_segment(*arg, o, cache=cache)
    raise NacritError(f"unknown task {kind!r}")


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


def _worker(a: Assignment, opts: api.Options, mode: str, conn, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent:
        return
    os.environ.update(a.env)
    o = worker_options(opts, a, mode)
    conn.send(load(o, mode))
    cache: dict = {}
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None or os.getppid() != parent:
            return
        kind, arg = item
        try:
            conn.send((True, run_task(kind, arg, o, cache)))
        except BaseException as e:          # noqa: BLE001 - the parent reports it per file
            conn.send((False, portable_error(e)))


# ---------------------------------------------------------------- the pool
class LocalPool:
    """N spawned worker processes, one pipe and one feeding thread each (no semaphores, so
    nothing leaks when the process exits on a signal); thread-safe `submit`."""

    name = "local"

    def __init__(self, n_workers: int, devices: list[str], opts: api.Options, mode: str):
        self.assignments = assign(n_workers, devices, opts.threads, opts.n_gpu_layers)
        ctx = mp.get_context("spawn")
        self.queue: queue.Queue = queue.Queue()
        self.ready: dict[int, int] = {}         # worker index -> RSS after loading
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.closed = False
        self.procs, self.conns = [], []
        for a in self.assignments:
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_worker, name=f"nacrith-worker-{a.index}", daemon=True,
                            args=(a, opts, mode, theirs, os.getpid()))
            p.start()
            theirs.close()
            self.procs.append(p)
            self.conns.append(mine)
        self.feeders = [threading.Thread(target=self._feed, args=(i,), daemon=True)
                        for i in range(self.n)]
        for t in self.feeders:
            t.start()

    @property
    def n(self) -> int:
        return len(self.procs)

    def wait_ready(self) -> dict[int, int]:
        """Block until every worker has loaded its model; {worker index: RSS bytes}."""
        while len(self.ready) < self.n and self.error is None:
            threading.Event().wait(0.05)
        if self.error is not None:
            raise self.error
        return dict(self.ready)

    def submit(self, kind: str, arg) -> Future:
        f: Future = Future()
        with self.lock:
            if self.error is not None:
                raise self.error
            self.queue.put((f, kind, arg))
        return f

    def imap(self, kind: str, items, window: int | None = None):
        return ordered(self.submit, kind, items, window or self.n + 1)

    def _feed(self, i: int) -> None:
        """Worker i's feeder: one task at a time, so tasks go to whichever worker is free."""
        conn, f = self.conns[i], None
        try:
            self.ready[i] = conn.recv()
            while True:
                f, kind, arg = self.queue.get()
                if f is None:
                    return
                if not f.set_running_or_notify_cancel():
                    continue
                conn.send((kind, arg))
                ok, value = conn.recv()
                _settle(f, value, ok)
                f = None
        except (EOFError, OSError) as e:
            if not self.closed:
                p = self.procs[i]
                p.join(1)
                self._fail(NacritError(f"{p.name} died (exit status {p.exitcode})"
                                       if p.exitcode is not None else f"{p.name}: {e}"))
            if f is not None:
                _settle(f, self.error or CancelledError(), False)

    def _fail(self, err: BaseException) -> None:
        """No more tasks: every waiting one fails with err."""
        with self.lock:
            if self.error is None:
                self.error = err
            while True:
                try:
                    f, _, _ = self.queue.get_nowait()
                except queue.Empty:
                    break
                if f is not None:
                    _settle(f, err, False)
            for _ in self.procs:
                self.queue.put((None, None, None))

    def close(self) -> None:
        """Normal end: workers finish and exit."""
        if self.closed:
            return
        self.closed = True
        self._fail(CancelledError())
        for t in self.feeders:
            t.join()
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
        for c in self.conns:
            c.close()

    def terminate(self) -> None:
        """Interrupted: kill every worker now; tasks in flight fail with CancelledError."""
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
        for c in self.conns:
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
