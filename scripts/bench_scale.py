#!/usr/bin/env python3
"""Scaling benchmark (issue 7): 1 vs 2 workers, a batch of corpus texts, one large file split
into segments, and the Ray engine's overhead against local workers on the same job.

Every configuration runs the real CLI (`python -m nacrith compress -r ...`) in a fresh process,
so model loading per worker is included, and checks that its archives are byte-identical to
the first configuration's (same --threads per worker and segment size). Prints a Markdown table.

    python scripts/bench_scale.py                 # long form: 16 KB of each corpus text, 256 KB file
    python scripts/bench_scale.py --short         # a few KB: a smoke run that takes ~2 minutes
    python scripts/bench_scale.py --no-ray        # skip the Ray rows
    python scripts/bench_scale.py --inflight 8    # also workers coding 8 segments at once
"""
from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
TEXTS = ["alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt", "cp.html", "fields.c",
         "grammar.lsp", "xargs.1"]


def make_batch(d: Path, n: int) -> int:
    d.mkdir(parents=True)
    total = 0
    for name in TEXTS:
        data = (CORPUS / name).read_bytes()[:n]
        (d / name).write_bytes(data)
        total += len(data)
    return total


def make_big(d: Path, n: int) -> int:
    d.mkdir(parents=True)
    data = b""
    for name in ("alice29.txt", "lcet10.txt", "plrabn12.txt"):
        data += (CORPUS / name).read_bytes()
    (d / "big.txt").write_bytes(data[:n])
    return n


def run(args: list, cwd: Path, env: dict) -> float:
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "nacrith", *args], cwd=cwd, env=env,
                       capture_output=True)
    dt = time.monotonic() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{r.stderr.decode()}")
    return dt


def same_archives(a: Path, b: Path) -> bool:
    na = sorted(p.relative_to(a) for p in a.rglob("*.nc"))
    nb = sorted(p.relative_to(b) for p in b.rglob("*.nc"))
    return na == nb and all(filecmp.cmp(a / p, b / p, shallow=False) for p in na)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true", help="small slices (smoke run)")
    ap.add_argument("--slice", type=int, help="bytes of each corpus text (default 16384)")
    ap.add_argument("--big", type=int, help="bytes of the large file (default 262144)")
    ap.add_argument("--segment-size", type=int, help="segment size for the large file")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--inflight", type=int, default=0,
                    help="also rows of workers coding N segments at once (nacrith/hub.py)")
    a = ap.parse_args()
    slice_ = a.slice or (1024 if a.short else 16384)
    big = a.big or (4096 if a.short else 256 << 10)
    seg = a.segment_size or max(256, big // 8)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    work = Path(tempfile.mkdtemp(prefix="nacrith-bench-scale-"))
    rows = []
    # (label, extra CLI args): one thread per worker except the single-process 2-thread row
    # (the default on 2 cores, for reference); the portable engine's bytes do not depend on
    # threads, workers or segments in flight, so every row is compared with the first
    configs = [("1 worker x 1 thread", ["--workers", "1", "--threads", "1"]),
               ("2 workers x 1 thread", ["--workers", "2", "--threads", "1"]),
               ("1 process x 2 threads", ["--threads", "2"])]
    if a.inflight:
        configs += [(f"1 worker x 2 threads, {a.inflight} in flight",
                     ["--workers", "1", "--threads", "2", "--inflight", str(a.inflight)]),
                    (f"2 workers x 1 thread, {a.inflight} in flight",
                     ["--workers", "2", "--threads", "1", "--inflight", str(a.inflight)])]
    ray_addr = None
    if not a.no_ray:
        try:
            import ray
            os.environ["RAY_AUTH_MODE"] = env["RAY_AUTH_MODE"]
            t = time.monotonic()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            ray_start = time.monotonic() - t
            ray_addr = ray.get_runtime_context().gcs_address
            configs.append(("Ray, 2 actors x 1 thread", ["--engine", "ray", "--address",
                                                         ray_addr, "--workers", "2",
                                                         "--threads", "1"]))
        except ImportError:
            print("ray not installed: no Ray rows", file=sys.stderr)
    try:
        for job, make, n, extra in (
                ("batch: 8 corpus texts", make_batch, slice_, []),
                ("one file, segments", make_big, big, ["--segment-size", str(seg)])):
            first = None
            for label, args in configs:
                d = work / f"{job.split(':')[0].replace(' ', '_')}-{len(rows)}"
                size = make(d, n)
                dt = run(["compress", "-r", "-q", *extra, *args, "--manifest",
                          str(d) + ".jsonl", str(d)], work, env)
                out = sum(p.stat().st_size for p in d.rglob("*.nc"))
                same = "-" if first is None else ("yes" if same_archives(first, d) else "NO")
                first = first or d
                rows.append((job, label, size, dt, size / dt, out * 8 / size, same))
                print(f"{job:24} {label:26} {size:8d} B {dt:7.1f} s {size / dt:8.1f} B/s "
                      f"{out * 8 / size:.3f} bpb identical={same}", file=sys.stderr)
    finally:
        if ray_addr is not None:
            import ray
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nslice {slice_} B per text, large file {big} B in {seg} B segments; wall time "
          "includes process start and model load per worker"
          + (f"; local Ray start (not counted) {ray_start:.1f} s" if ray_addr else ""))
    print("\n| job | configuration | bytes | seconds | bytes/s | bpb | archives identical to 1 worker |")
    print("|---|---|---|---|---|---|---|")
    for job, label, size, dt, bps, bpb, same in rows:
        print(f"| {job} | {label} | {size} | {dt:.1f} | {bps:.1f} | {bpb:.3f} | {same} |")
    by = {(j, l): r for j, l, *r in ((r[0], r[1], *r[2:]) for r in rows)}
    for job in dict.fromkeys(r[0] for r in rows):
        one, two = by.get((job, configs[0][0])), by.get((job, configs[1][0]))
        if one and two:
            print(f"\n{job}: 2 workers / 1 worker throughput = {two[2] / one[2]:.2f}x", end="")
        ray_row = by.get((job, "Ray, 2 actors x 1 thread"))
        if ray_row and two:
            print(f"; Ray / local 2 workers wall time = {ray_row[1] / two[1]:.2f}x", end="")
    print()


if __name__ == "__main__":
    main()
