#!/usr/bin/env python3
"""Peak memory of neural compression of one full segment, without coding all of it.

Input is processed one segment (4 MiB by default) at a time and every per-segment structure
(tokens, escapes, lane models, coder buffers) is allocated when the segment starts, so the peak
RSS of a 100 MB input is the peak of its first full segment. This probe builds a 4 MiB text from
the corpus, starts compressing it with the given options, stops after --tokens coded tokens and
prints VmHWM (the kernel's peak RSS of this process).

    python scripts/rss_probe.py --threads 1 --lanes 1
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nacrith import api  # noqa: E402


class _Stop(Exception):
    pass


def vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lanes", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=3000)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    corpus = ROOT.parent / "shared" / "corpus"
    text = b"".join((corpus / n).read_bytes() for n in
                    ("alice29.txt", "lcet10.txt", "plrabn12.txt", "asyoulik.txt"))
    seg = api.Options().segment_size
    data = (text * (seg // len(text) + 1))[:seg]
    seen = [0]

    def progress(n):
        seen[0] += n
        if seen[0] >= args.tokens:
            raise _Stop

    try:
        api.compress_stream(io.BytesIO(data), io.BytesIO(), progress=progress, threads=args.threads,
                            lanes=args.lanes, model=args.model)
    except _Stop:
        pass
    print(f"segment {len(data)} bytes, lanes {args.lanes}: stopped after {seen[0]} tokens; "
          f"peak RSS (VmHWM) {vm('VmHWM')} MiB, now {vm('VmRSS')} MiB")


if __name__ == "__main__":
    main()
