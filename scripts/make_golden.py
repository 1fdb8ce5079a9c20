#!/usr/bin/env python3
"""Write formats/golden/*.nc: one archive per format feature, and MANIFEST.txt with the SHA-256
of each original. Run once per format version; never rewrite an existing version's archives
(tests/test_golden.py decodes them all, so old formats keep decoding)."""
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import nacrith  # noqa: E402
from nacrith import api  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
OUT = ROOT / "formats" / "golden"


def cases():
    alice = (CORPUS / "alice29.txt").read_bytes()
    fields = (CORPUS / "fields.c").read_bytes()
    v = 1                                   # version-1 features (LLM only, fallbacks)
    yield f"v{v}-empty", b"", {}
    noise = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(16))   # incompressible
    yield f"v{v}-stored", noise, {"neural": False}
    yield f"v{v}-zstd", (CORPUS / "kennedy.xls").read_bytes()[:20000], {}
    yield f"v{v}-multisegment", fields[:3000] + bytes(range(256)), {"neural": False,
                                                                    "segment_size": 1000}
    yield f"v{v}-neural-1lane", alice[2000:2600], {"threads": 1, "mixer": False}
    yield f"v{v}-neural-escapes", b"tab\x04\x1d caf\xc3\xa9 \xff <|endoftext|>\r\n" + alice[3000:3300], \
        {"threads": 1, "mixer": False}
    yield f"v{v}-neural-3lanes", fields[:900], {"threads": 1, "lanes": 3, "mixer": False}
    yield f"v{v}-neural-slide", fields[1000:2200], {"threads": 1, "ctx": 256, "slide": 64,
                                                     "n_keep": 2, "mixer": False}
    # version 2: the ensemble mixer (these three were written with mixer preset 1, the default then)
    yield "v2-ensemble", alice[5000:5800], {"threads": 1}
    yield "v2-ensemble-custom", fields[2200:3000] * 2, {"threads": 1, "ngram": 2, "match": 4,
                                                        "bias_lr": 0, "mix_floor": 500}
    yield "v2-ensemble-2lanes", alice[6000:6800], {"threads": 1, "lanes": 2}
    # mixer preset 2 (slot biases, second weight set, SSE): default, and keys over preset 2
    yield "v2-preset2", alice[7000:7800], {"threads": 1}
    yield "v2-preset2-custom", fields[3000:3600] * 2, {"threads": 1, "ngram": 3, "match": 4,
                                                       "boost_lr": 0, "temp_lr": 0}
    # mixer preset 3 (column bias): default, and two lanes (one column per lane)
    yield "v2-preset3", alice[9000:9800], {"threads": 1}
    yield "v2-preset3-2lanes", alice[10000:10600] + fields[4400:4800], {"threads": 1, "lanes": 2}
    # version 3: confidence skip with catch-up batches (repeats in each lane)
    yield "v3-skip", alice[7000:7500] * 2, {"threads": 1, "skip": 62259, "skip_cap": 8}
    yield "v3-skip-2lanes", alice[8000:8400] * 2 + fields[4000:4400] * 2, \
        {"threads": 1, "lanes": 2, "skip": 62259, "skip_cap": 8}
    # version 4: the compact frame (single layouts, framed layout, hybrid segments); v1-v3
    # archives are no longer written
    yield "v4-empty", b"", {}
    yield "v4-stored", noise, {"neural": False}
    yield "v4-zstd", (CORPUS / "kennedy.xls").read_bytes()[:20000], {}
    yield "v4-framed", fields[:3000] + bytes(range(256)), {"neural": False, "segment_size": 1000}
    yield "v4-neural", alice[11000:11300], {"threads": 1}
    yield "v4-neural-llm", alice[2000:2600], {"threads": 1, "mixer": False}
    yield "v4-neural-escapes", b"tab\x04\x1d caf\xc3\xa9 \xff <|endoftext|>\r\n" + alice[3000:3300], \
        {"threads": 1}
    yield "v4-neural-3lanes", fields[:900], {"threads": 1, "lanes": 3}
    yield "v4-neural-slide", fields[1000:2200], {"threads": 1, "ctx": 256, "slide": 64,
                                                 "n_keep": 2}
    yield "v4-neural-custom", fields[2200:3000] * 2, {"threads": 1, "ngram": 2, "match": 4,
                                                      "bias_lr": 0, "mix_floor": 500}
    yield "v4-skip-2lanes", alice[8000:8400] * 2 + fields[4000:4400] * 2, \
        {"threads": 1, "lanes": 2, "skip": 62259, "skip_cap": 8}
    yield "v4-framed-neural", alice[12000:12900] + bytes(range(256)) * 2, \
        {"threads": 1, "segment_size": 600}
    # the portable integer engine (formats/ENGINE.md, version 1): these decode on any machine
    yield "v4-portable", alice[14000:14600], {"threads": 1, "backend": "portable"}
    yield "v4-portable-2lanes-slide", fields[6000:7200], {"threads": 2, "backend": "portable",
                                                          "lanes": 2, "ctx": 256}
    yield "v4-hybrid", tar_of({"a.txt": alice[13000:13700], "b.c": fields[5000:5600]}), \
        {"threads": 1}
    # version 5: an absent mix_preset means preset 4 (the guard: a fixed-share switch between the
    # ensemble and the bare LLM); the default backend (portable for SmolLM2), so these decode on
    # any machine
    yield "v5-zstd", (CORPUS / "kennedy.xls").read_bytes()[:20000], {}
    yield "v5-neural", alice[11000:11300], {"threads": 1}
    yield "v5-neural-llm", alice[2000:2600], {"threads": 1, "mixer": False}
    yield "v5-guard-custom", fields[2200:3000] * 2, {"threads": 1, "ngram": 2, "match": 4,
                                                     "bias_lr": 0, "mix_floor": 500,
                                                     "guard": 20000}
    yield "v5-guard-off", alice[17000:17600], {"threads": 1, "guard": 0}
    yield "v5-skip-2lanes", alice[8000:8400] * 2 + fields[4000:4400] * 2, \
        {"threads": 1, "lanes": 2, "skip": 62259, "skip_cap": 8}
    # descriptor key 34 (swa_full 0): Gemma-3 with llama.cpp's small SWA cache (1024 cells per
    # lane at n_batch 512); ctx 1280 > 1024, so cells are reused from position 1024 and the window
    # slides at 1280; the repeats are coded fast by the confidence skip, the new text after them
    # by the LLM past both points. Needs nacrith[gemma3]
    yield "v5-gemma3-swa", alice[17000:17700] * 5 + alice[18000:19300], \
        {"threads": 1, "model": "gemma3", "backend": "llama", "ctx": 1280, "swa_full": False,
         "skip": 58982}
    # Gemma-3 on the portable engine (ENGINE.md §10: K-quant blocks, sliding-window layers): ctx
    # 1280 > its sliding-window rows (1058), so they are compacted, and the window slides at
    # 1280; decodes on any machine. Needs nacrith[gemma3]
    yield "v5-gemma3-portable", alice[19500:20200] * 5 + alice[20500:21800], \
        {"threads": 2, "model": "gemma3", "backend": "portable", "ctx": 1280, "skip": 58982}
    # version 6: the byte-level two-model coder (descriptor keys 35-41): Gemma-3 and SmolLM2's
    # byte probabilities mixed, one byte stream; windows of 256 tokens, so both lanes slide;
    # bytes SmolLM2 has no token for (\x04, \x1d). Needs nacrith[gemma3]
    # (written by the version-6 encoder; today's writes version 8 for these options)
    two = alice[22000:22700] + b"tab\x04\x1d caf\xc3\xa9 \xff <|endoftext|>\r\n" + fields[7400:7650]
    opts = {"threads": 1, "model": "gemma3", "model2": "smollm2", "ctx": 256, "ctx2": 256}
    yield "v6-bytemix-gemma3", two, opts
    # version 7: the same, bits context-mixed (bytecm.py, descriptor key 43 cm_preset; written
    # by the version-7 encoder)
    yield "v7-bytecm-gemma3", two, opts
    # version 8: the same, each model's logits with its token bias head (bytemix.py, descriptor
    # key 44 bias_ppm)
    yield "v8-bias-gemma3", two, opts
    # version 9: the ensemble's preset 5 (exact, order-free vocabulary sums); an absent
    # mix_preset means 5. With custom keys, 2 lanes and the skip; and Gemma-3's 262144-entry
    # vocabulary on the portable engine (needs nacrith[gemma3])
    yield "v9-isum", alice[11000:11300], {"threads": 1, "mix_preset": 5}
    yield "v9-isum-custom-2lanes", fields[2200:3000] * 2, \
        {"threads": 1, "mix_preset": 5, "lanes": 2, "ngram": 2, "match": 4, "guard": 20000,
         "skip": 62259, "skip_cap": 8}
    yield "v9-isum-gemma3", alice[19500:19900], {"threads": 1, "mix_preset": 5,
                                                  "model": "gemma3", "backend": "portable",
                                                  "ctx": 256}


def solid_cases():
    """Solid archives: (name, {path: bytes}, {path: mode}, options, block size)."""
    alice = (CORPUS / "alice29.txt").read_bytes()
    fields = (CORPUS / "fields.c").read_bytes()
    tree = {"t/a.txt": alice[15000:15500], "t/sub/b.c": fields[7000:7400], "t/sub/empty.txt": b"",
            "t/z.txt": alice[16000:16300]}
    modes = {"t/a.txt": 0o644, "t/sub/b.c": 0o755, "t/sub/empty.txt": 0o600, "t/z.txt": 0o644}
    # the first solid index (frame 06: zstd of 64-bit checks and ns mtimes), 3 blocks
    yield "v4-solid-index1", tree, modes, {"threads": 1}, 600
    # the compact index (frame 05: shared path prefixes, mode/mtime deltas, 32-bit checks)
    yield "v4-solid", tree, modes, {"threads": 1}, 600


def write_solid(path: Path, tree: dict, modes: dict, opts: dict, block: int) -> bytes:
    """Write the tree (fixed mtimes) as a solid archive at path; return the stream (the files'
    bytes concatenated in index order), which the manifest's SHA-256 covers."""
    import os
    import tempfile
    from nacrith import solid
    with tempfile.TemporaryDirectory() as d:
        for i, (rel, data) in enumerate(sorted(tree.items())):
            p = Path(d) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            os.chmod(p, modes[rel])
            os.utime(p, ns=(1700000000_000000000 + i * 1_500_000_000,) * 2)
        with open(path, "wb") as f:
            solid.compress_tree([str(Path(d) / "t")], f, api.normalized(**opts), block=block)
        with open(path, "rb") as f:
            entries = solid.listing(f)
        out = Path(d) / "x"
        solid.extract(str(path), str(out))
        stream = b"".join((out / e.path).read_bytes() for e in entries)
        assert stream == b"".join(tree[e.path] for e in entries)
    return stream


def tar_of(files: dict) -> bytes:
    """A deterministic ustar stream (fixed mtime, owner and mode)."""
    import io
    import tarfile
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1700000000, 0o644
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = OUT / "MANIFEST.txt"
    lines = manifest.read_text().splitlines() if manifest.exists() else []
    for name, data, opts in cases():
        path = OUT / f"{name}.nc"
        if path.exists():
            print(f"keep {path.name}")
            continue
        blob = nacrith.compress(data, **opts)
        assert nacrith.decompress(blob) == data
        path.write_bytes(blob)
        with open(path, "rb") as f:
            methods = ",".join(s["method"] for s in api.scan(f).segments) or "-"
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {len(data)}  {path.name}  {methods}")
        print(f"wrote {path.name}: {len(data)} -> {len(blob)} bytes ({methods})")
    for name, tree, modes, opts, block in solid_cases():
        path = OUT / f"{name}.nc"
        if path.exists():
            print(f"keep {path.name}")
            continue
        data = write_solid(path, tree, modes, opts, block)
        with open(path, "rb") as f:
            methods = ",".join(s["method"] for s in api.scan(f).segments) or "-"
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {len(data)}  {path.name}  {methods}")
        print(f"wrote {path.name}: {len(data)} -> {path.stat().st_size} bytes ({methods})")
    manifest.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
