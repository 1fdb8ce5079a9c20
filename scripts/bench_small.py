#!/usr/bin/env python3
"""Small-files benchmark: archive sizes of short texts and of a tree of small files.

Held-out inputs from this machine (nothing in them was tuned for): a license text
(/usr/share/common-licenses), a package-manager log (/var/log/dpkg.log), JSON (a botocore/boto3
data file) and Python source (the interpreter's standard library), cut to 100 B, 300 B, 1 KB,
4 KB and 16 KB; and a tree of 8 small standard-library modules, as per-file archives (`-r`),
as a solid archive (`--solid`, when available) and as a `tar cf -` stream through one archive.
Every archive is decoded and compared byte for byte. Reference: zstd -19 (with the CLI's
content checksum) and xz -9e of the same bytes, in the same run.

    python scripts/bench_small.py [--json]
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import lzma
import os
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import nacrith  # noqa: E402
from nacrith import solid  # noqa: E402

SIZES = [100, 300, 1024, 4096, 16384]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TREE = ["colorsys.py", "bisect.py", "keyword.py", "stringprep.py", "sched.py", "this.py",
        "struct.py", "fnmatch.py", "getopt.py", "glob.py", "shlex.py", "textwrap.py"]


def sources() -> dict:
    out = {}
    lic = Path("/usr/share/common-licenses/Apache-2.0")
    if lic.is_file():
        out["license"] = lic.read_bytes()
    log = Path("/var/log/dpkg.log")
    if log.is_file():
        out["log"] = log.read_bytes()
    js = sorted(glob.glob(str(Path(sysconfig.get_paths()["purelib"]) / "boto3" / "data" / "*" /
                              "*" / "resources-1.json")))
    if js:
        out["json"] = Path(js[0]).read_bytes()
    out["code"] = (STDLIB / "textwrap.py").read_bytes()
    return out


def ref_sizes(data: bytes) -> tuple[int, int]:
    z = zstandard.ZstdCompressor(level=19, write_checksum=True).compress(data)
    x = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    return len(z), len(x)


def tree_files(n: int = 8) -> dict:
    files, total = {}, 0
    for name in TREE:
        p = STDLIB / name
        if p.is_file() and total < 5000 * n:
            files[name] = p.read_bytes()
            total += len(files[name])
        if len(files) == n:
            break
    return files


def tar_of(files: dict) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo("tree/" + name)
            info.size, info.mtime, info.mode = len(data), 1700000000, 0o644
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


VERIFY = True


def coded(data: bytes) -> int:
    blob = nacrith.compress(data)
    if VERIFY:
        assert nacrith.decompress(blob) == data
    return len(blob)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="300 B and 1 KB of the license and the log, a 4-file tree, the tree "
                         "archives not decoded (the test suite checks those round trips)")
    a = ap.parse_args(argv)
    global VERIFY
    sizes, kinds, n_tree = SIZES, None, 8
    if a.quick:
        sizes, kinds, n_tree = [300, 1024], ("license", "log"), 4
    rows = []
    for kind, src in sources().items():
        if kinds and kind not in kinds:
            continue
        for n in sizes:
            data = src[:n]
            if len(data) < n:
                continue
            z, x = ref_sizes(data)
            rows.append({"input": f"{kind} {n} B", "bytes": n, "nacrith": coded(data),
                         "zstd19": z, "xz9e": x})
    files = tree_files(n_tree)
    if a.quick:
        VERIFY = False
    total = sum(len(d) for d in files.values())
    per_file = sum(coded(d) for d in files.values())
    rows.append({"input": f"tree of {len(files)} .py files, per-file archives", "bytes": total,
                 "nacrith": per_file, "zstd19": sum(ref_sizes(d)[0] for d in files.values()),
                 "xz9e": sum(ref_sizes(d)[1] for d in files.values())})
    cat = b"".join(files.values())
    rows.append({"input": "the same files concatenated, one archive", "bytes": len(cat),
                 "nacrith": coded(cat), "zstd19": ref_sizes(cat)[0], "xz9e": ref_sizes(cat)[1]})
    tar = tar_of(files)
    rows.append({"input": "`tar cf -` of the tree, one archive", "bytes": len(tar),
                 "nacrith": coded(tar), "zstd19": ref_sizes(tar)[0], "xz9e": ref_sizes(tar)[1]})
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "tree").mkdir()
        for name, data in files.items():
            (Path(d) / "tree" / name).write_bytes(data)
        out = io.BytesIO()
        solid.compress_tree([str(Path(d) / "tree")], out)
        with open(Path(d) / "t.nc", "wb") as f:
            f.write(out.getvalue())
        if VERIFY:
            solid.extract(str(Path(d) / "t.nc"), str(Path(d) / "x"))
            assert all((Path(d) / "x" / "tree" / n).read_bytes() == b for n, b in files.items())
    rows.append({"input": "the tree as one `--solid` archive", "bytes": total,
                 "nacrith": len(out.getvalue()), "zstd19": ref_sizes(tar)[0],
                 "xz9e": ref_sizes(tar)[1]})
    corpus = ROOT.parent / "shared" / "corpus"
    for name in () if a.quick else ("kennedy.xls", "ptt5", "sum"):
        if (corpus / name).is_file():
            data = (corpus / name).read_bytes()
            rows.append({"input": f"binary: {name}", "bytes": len(data), "nacrith": coded(data),
                         "zstd19": ref_sizes(data)[0], "xz9e": ref_sizes(data)[1]})
    data = os.urandom(65536)
    rows.append({"input": "binary: 64 KiB random", "bytes": len(data), "nacrith": coded(data),
                 "zstd19": ref_sizes(data)[0], "xz9e": ref_sizes(data)[1]})
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| input | bytes | nacrith | bpb | zstd -19 | xz -9e | nacrith / zstd | nacrith / xz |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['input']} | {r['bytes']} | {r['nacrith']} | {8 * r['nacrith'] / r['bytes']:.3f}"
              f" | {r['zstd19']} | {r['xz9e']} | {r['nacrith'] / r['zstd19']:.2f} | "
              f"{r['nacrith'] / r['xz9e']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
