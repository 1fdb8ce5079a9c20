"""Ray engine: the same per-segment tasks as nacrith.workers, run by Ray actors on a cluster.

Invariants:
- one actor per worker, each loading the model once (in its constructor) with the Options of
  `workers.worker_options` for its `workers.assign` slot, so an archive is byte-identical to
  one made by local workers with the same --threads and segment size (tests/test_scale.py);
- tasks are `workers.run_task` (pure functions of their data and the options), so Ray may
  re-run them: actors restart after a worker failure (max_restarts) and a task in flight is
  retried (max_task_retries) without changing any byte;
- results are consumed in submission order (`workers.ordered`), so archives and the manifest
  are written exactly as with local workers;
- Ray is optional (`pip install 'nacrith[ray]'`): it is imported only when this engine is used.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading

from . import api, workers
from .errors import NacritError

MAX_RESTARTS = 3
MAX_TASK_RETRIES = 3
READY_TIMEOUT = 600             # seconds for every actor to load its model (or get resources)


class _Coder:
    """Ray actor body: one model, many tasks."""

    def __init__(self, a: workers.Assignment, opts: api.Options, mode: str):
        os.environ.update({k: v for k, v in a.env.items() if k != "CUDA_VISIBLE_DEVICES"})
        self.o = workers.worker_options(opts, a, mode)
        self.mode = mode
        self.tasks = workers.Tasks(self.o, a.inflight)      # a threaded actor: a.inflight at once
        self.rss = workers.load(self.o, mode)

    def ready(self) -> int:
        return self.rss

    def run(self, kind: str, arg):
        try:
            return self.tasks.run(kind, arg)
        except BaseException as e:      # noqa: BLE001 - reported per file by the driver
            raise workers.portable_error(e) from None


def _ray():
    try:
        import ray
    except ImportError:
        raise NacritError("--engine ray needs Ray: pip install 'nacrith[ray]'") from None
    return ray


class RayPool:
    """N actors on the cluster at `address` (None: start a local Ray); thread-safe `submit`."""

    name = "ray"

    def __init__(self, n_workers: int | None, devices: list[str], opts: api.Options, mode: str,
                 address: str | None = None, inflight: int | None = None):
        ray = self.ray = _ray()
        self.started = not ray.is_initialized()
        if self.started:
            pkg = os.path.dirname(os.path.abspath(__file__))
            try:            # ship this nacrith package to the actors (py_modules)
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                         include_dashboard=False, configure_logging=False,
                         runtime_env={"py_modules": [pkg]})
            except Exception as e:      # noqa: BLE001 - ConnectionError, RuntimeError, ...
                lines = str(e).strip().splitlines()
                raise NacritError(f"cannot start or reach Ray{f' at {address}' if address else ''}"
                                  f" ({type(e).__name__}: {lines[-1] if lines else ''})") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = n_workers or max(1, len(devices) or cpus)
        self.assignments = workers.assign(n, devices, opts.threads, opts.n_gpu_layers, cpus,
                                          workers.pool_inflight(opts, devices, inflight))
        actor = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)(_Coder)
        self.actors = []
        for a in self.assignments:
            res = {"num_cpus": a.threads, "num_gpus": 1 if a.device != "cpu" else 0,
                   "max_concurrency": a.inflight}
            self.actors.append(actor.options(**res).remote(a, opts, mode))
        self.load = [0] * len(self.actors)
        self.lock = threading.Lock()
        self.ids = itertools.count()

    @property
    def n(self) -> int:
        return len(self.actors)

    @property
    def slots(self) -> int:
        """Tasks the actors run at once."""
        return sum(a.inflight for a in self.assignments)

    def wait_ready(self) -> dict[int, int]:
        try:
            return dict(enumerate(self.ray.get([a.ready.remote() for a in self.actors],
                                               timeout=READY_TIMEOUT)))
        except self.ray.exceptions.GetTimeoutError:
            raise NacritError(f"Ray workers not ready after {READY_TIMEOUT} s: does the cluster "
                              f"have {self.n} x {self.assignments[0].threads} CPUs"
                              + (" and the GPUs" if self.assignments[0].device != "cpu" else "")
                              + " free?") from None
        except Exception as e:          # noqa: BLE001 - a Ray error: one line
            raise NacritError(f"Ray workers failed to start ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None

    def submit(self, kind: str, arg):
        with self.lock:                 # least-loaded actor
            i = min(range(self.n), key=lambda j: self.load[j])
            self.load[i] += 1
        f = self.actors[i].run.remote(kind, arg).future()

        def done(_, i=i):
            with self.lock:
                self.load[i] -= 1
        f.add_done_callback(done)
        return _Unwrapped(f)

    def imap(self, kind: str, items, window: int | None = None):
        return workers.ordered(self.submit, kind, items, window or self.slots + 1)

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:           # noqa: BLE001
                pass
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False

    terminate = close


class _Unwrapped:
    """A Ray future whose errors come out as the task's own exception (NacritError, OSError)."""

    def __init__(self, f):
        self.f = f

    def result(self):
        try:
            return self.f.result()
        except Exception as e:          # noqa: BLE001
            unwrap = getattr(e, "as_instanceof_cause", None)
            cause = getattr(e, "cause", None) or (unwrap() if unwrap else e)
            if isinstance(cause, (NacritError, OSError)):
                raise cause from None
            for base in type(e).__mro__:
                if issubclass(base, NacritError) and base is not type(e):
                    raise NacritError(str(e).splitlines()[-1]) from None
            raise NacritError(f"Ray task failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None

    def cancel(self):
        return self.f.cancel()
