"""One invocation of the command line as a library call: checks before anything starts, the
pool's lifecycle, then the files, a -r batch or a solid archive (run), or the bench.

Invariants: every check that can refuse the invocation (terminal policy, coding options, the
manifest, the pool) happens before any file is touched, and a refusal is one line
`nacrith: WHAT: reason` with exit 1 (usage errors are cli.py's, exit 2); a started pool is
terminated on any exception and closed on success; a signal turns into its exit status
(runner.stop_for_signal). On a terminal without -q, a -r job has one progress.Bar over the
bytes and files of the whole job (job.bar). Imports go down only: cli -> invocation -> batch ->
runner -> progress.
"""
from __future__ import annotations

import json
import sys
from typing import List, Optional

from . import api
from . import runner as R
from .errors import NacritError


class Refusal(Exception):
    """An invocation refused before any file: `line` is the message after `nacrith: `."""

    def __init__(self, line: str):
        super().__init__(line)
        self.line = line


def setup_error(e: Exception) -> str:
    """The one line for a failure before any file: the option, manifest or pool, and why."""
    if isinstance(e, Refusal):
        return e.line
    if isinstance(e, OSError):
        return f"{e.filename}: {R.strerror(e)}" if e.filename else R.strerror(e)
    return R.oneline(e)


def check_options(job: R.Job) -> None:
    """The coding options, checked here in the parent (workers would each fail on them)."""
    try:
        if job.mode == "compress":
            api.normalized(job.opts)
        elif job.mode != "info":
            api.decode_options(job.opts)
    except NacritError as e:
        raise Refusal(f"bad option: {R.oneline(e)}") from None


def size(text: str) -> Optional[int]:
    """Bytes of a size like 4M, 512K, 1GiB (None if it is not one, or < 1)."""
    t = text.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        n = int(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        return None
    return n if n >= 1 else None


def ray_address(a: str) -> bool:
    """A Ray address Ray can use: auto, or [ray://]HOST:PORT with a port 1..65535 (checked
    here, so a typo fails at once instead of Ray retrying a connection for minutes)."""
    if a == "auto":
        return True
    host, _, port = a.removeprefix("ray://").rpartition(":")
    return bool(host) and port.isdigit() and 1 <= int(port) <= 65535


def version() -> str:
    """`nacrith --version`: the package, the portable engine, the archive formats written and
    read (frames.py: versions 4 and up; container.py: the earlier ones)."""
    from . import __version__
    from . import container as C
    from . import frames as F
    from .portable import ENGINE_VERSION
    reads = sorted(set(range(C.LLM_ONLY_VERSION, C.VERSION + 1)) | set(F.READ_VERSIONS))
    return (f"{R.PROG} {__version__}\n"
            f"portable engine version {ENGINE_VERSION}\n"
            f"archive format: writes version {F.VERSION} ({F.BYTEMIX_VERSION} with --model2, "
            f"{F.ISUM_VERSION} with --mix-preset 5), "
            f"reads versions {_spans(reads)}")


def _spans(ns: List[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    out: List[str] = []
    for n in ns:
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def _terminate(job: R.Job) -> None:
    """After an exception: stop the pool; a received signal becomes its exit status."""
    if job.pool is not None:
        job.pool.terminate()
    if R.received:       # typer would turn a KeyboardInterrupt into a silent exit 130
        raise R.stop_for_signal() from None


def run(job: R.Job, files: List[str]) -> int:
    """Check the invocation (bad options, manifest and pool failures are one line, exit 1)
    before any pool starts or any file is touched; then run the files. Returns the status."""
    writes_stdout = job.mode in ("compress", "decompress") and (
        job.stdout or job.output == "-" or (job.output is None and "-" in files))
    if job.mode == "compress" and writes_stdout and not job.force and R.isatty(sys.stdout):
        R.err("stdout is a terminal; refusing to write compressed data (use -f to force)")
        return 1
    if job.mode != "compress" and "-" in files and not job.force and R.isatty(sys.stdin):
        R.err("stdin is a terminal; refusing to read compressed data"
              + (" (use -f to force)" if job.mode == "decompress" else ""))
        return 1
    if job.rm and (job.stdout or job.output == "-") and not job.quiet:
        R.err("--rm ignored when writing to standard output")
    try:
        check_options(job)
        if job.recursive and not job.solid:
            from .batch import Batch
            job.batch = Batch(job, files)
            if job.workers is None and job.engine == "local":
                from . import hub
                from .workers import files_at_once
                job.files_at_once = files_at_once(job.opts, job.mode, len(job.batch.files))
                if job.files_at_once > 1:
                    hub.enable(job.files_at_once * job.opts.lanes)
        if job.mode != "info" and (job.workers or job.engine == "ray"):
            job.pool = R.start_pool(job)
    except (Refusal, NacritError, OSError) as e:
        if job.batch is not None:
            job.batch.abandon()
        R.err(setup_error(e))
        return 1
    try:
        if job.solid:
            failed = R.guarded(job, job.output, lambda _: R.solid_compress(job, files)) is not None
        else:
            failed = job.batch.run() if job.batch is not None else R.run_files(job, files)
    except BaseException:
        _terminate(job)
        raise
    finally:
        if job.files_at_once > 1:
            from . import hub
            hub.disable()
    R.close_pool(job)
    return 1 if failed else 0


def bench(job: R.Job, file: Optional[str], as_json: bool) -> int:
    """`nacrith bench`: every worker of the pool codes the same text at once; print the report."""
    from . import workers as W
    name = file or "<built-in text>"
    try:
        if file is None:
            data = W.BENCH_TEXT
        else:
            with open(file, "rb") as f:
                data = f.read(job.opts.segment_size)
    except OSError as e:
        R.err(f"{file}: {R.strerror(e)}")
        return 1
    try:
        check_options(job)
        job.pool = R.start_pool(job)
        report = W.bench(job.pool, data)
    except (Refusal, NacritError, OSError) as e:
        R.err(e.line if isinstance(e, Refusal) else f"{name}: "
              + (R.strerror(e) if isinstance(e, OSError) else R.oneline(e)))
        if job.pool is not None:
            job.pool.terminate()
        return 1
    except BaseException:
        _terminate(job)
        raise
    R.close_pool(job)
    if as_json:
        R.say(json.dumps({"text": name, **report}))
        return 0
    rows = [(str(r["worker"]), r["device"] if r["device"] == "cpu" else f"cuda:{r['device']}",
             str(r["cuda_visible_devices"]), r) for r in report["workers"]]
    rows.append(("total", f"{len(rows)} workers", "",
                 {**report["total"], "in_flight": sum(r["in_flight"] for r in report["workers"])}))
    R.say(f"{name}: {report['bytes']} bytes per coding, each worker codes it --inflight times "
          "at once")
    R.say(f"{'worker':<7} {'device':<10} {'CUDA_VISIBLE_DEVICES':<20} {'in flight':>9} "
          f"{'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'bytes/s':>9} {'peak RSS':>9}")
    for w, dev, cvd, r in rows:
        R.say(f"{w:<7} {dev:<10} {cvd:<20} {r['in_flight']:>9} {r['tokens']:>7} "
              f"{r['seconds']:>8.2f} {r['tokens_per_s']:>9.1f} {r['bytes_per_s']:>9.1f} "
              f"{r['peak_rss'] / 2**20:>5.0f} MiB")
    return 0
