#!/usr/bin/env python3
"""Compression levels (nacrith/levels.py): bpb and speed of each on alice29.txt.

By default the first 16 KB of alice29.txt (the whole file is too slow for nine settings on a
small machine; --bytes 0 for all of it). Per level: archive bpb (archive bytes * 8 / input
bytes), seconds, tokens/s, bytes/s and speed relative to the default level measured in the same run;
each level is warmed up (model loaded, kernels compiled) on a short text before it is timed,
and --verify decodes every archive and checks it. Prints a markdown table.

    python scripts/bench_levels.py [--bytes 16384] [--threads 1] [--levels 1,2,..] [--verify]
"""
import argparse
import io
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import nacrith  # noqa: E402
from nacrith import levels  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"


def run(data: bytes, level: int, threads: int):
    tokens = []
    out = io.BytesIO()
    t = time.perf_counter()
    nacrith.compress_stream(io.BytesIO(data), out, level=level, threads=threads,
                            progress=tokens.append)
    return out.getvalue(), time.perf_counter() - t, sum(tokens)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", type=int, default=16384, help="input prefix (0: whole file)")
    ap.add_argument("--file", default=str(CORPUS / "alice29.txt"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--levels", default=",".join(map(str, levels.LEVELS)))
    ap.add_argument("--verify", action="store_true", help="decode each archive and compare")
    a = ap.parse_args()
    data = Path(a.file).read_bytes()
    data = data[:a.bytes] if a.bytes else data
    want = [int(x) for x in a.levels.split(",")]
    if levels.DEFAULT not in want:
        want.append(levels.DEFAULT)
    rows = {}
    for lv in want:
        try:
            run(data[:300], lv, a.threads)                       # warm-up: load + compile
            blob, sec, tok = run(data, lv, a.threads)
        except nacrith.NacritError as e:
            print(f"level {lv}: {e}", file=sys.stderr, flush=True)
            continue
        if a.verify:
            assert nacrith.decompress(blob, threads=a.threads) == data, lv
        rows[lv] = (len(blob), sec, tok)
        print(f"level {lv}: {len(blob)} bytes, {len(blob) * 8 / len(data):.4f} bpb, "
              f"{sec:.1f} s, {tok / sec:.1f} tokens/s, {len(data) / sec:.1f} bytes/s",
              file=sys.stderr, flush=True)
    base = rows.get(levels.DEFAULT)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    date = subprocess.run(["date", "-u", "+%Y-%m-%d"], capture_output=True, text=True).stdout
    print(f"{Path(a.file).name}, first {len(data)} bytes; threads={a.threads}; {cpu}; "
          f"{date.strip()}\n")
    print("| level | settings | archive bytes | bpb | seconds | tokens/s | bytes/s | speed vs 6 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for lv, (size, sec, tok) in sorted(rows.items()):
        st = ", ".join(f"{k}={v}" for k, v in levels.LEVELS[lv].items()) or "defaults"
        rel = f"{base[1] / sec:.2f}x" if base else "-"
        print(f"| {lv}{' (--fast)' if lv == levels.FAST else ''}"
              f"{' (--best)' if lv == levels.BEST else ''} | {st} | {size} | "
              f"{size * 8 / len(data):.4f} | {sec:.1f} | {tok / sec:.1f} | {len(data) / sec:.1f} | "
              f"{rel} |")


if __name__ == "__main__":
    main()
