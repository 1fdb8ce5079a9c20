"""Solid archives (nacrith/solid.py): a file tree in one archive, restored safely."""
import io
import os
from pathlib import Path

import pytest
import xxhash

import nacrith
from nacrith import api, frames as F, solid

from helpers import corpus, fresh_python

FAST = api.Options(neural=False)


def make_tree(root):
    (root / "src" / "sub").mkdir(parents=True)
    (root / "src" / "a.txt").write_bytes(corpus("alice29.txt", 3000))
    (root / "src" / "sub" / "f.c").write_bytes(corpus("fields.c", 2500))
    (root / "src" / "sub" / "g.c").write_bytes(corpus("fields.c", 5000)[2500:])
    (root / "src" / "empty").write_bytes(b"")
    (root / "src" / "bin.dat").write_bytes(bytes(range(256)) * 4)
    os.chmod(root / "src" / "sub" / "g.c", 0o640)
    os.utime(root / "src" / "a.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return root / "src"


def build(tmp_path, opts=FAST, block=1000):
    src = make_tree(tmp_path)
    arc = tmp_path / "t.nc"
    with open(arc, "wb") as f:
        stats = solid.compress_tree([str(src)], f, opts, block=block)
    return src, arc, stats


def same_tree(a, b):
    for d, _, names in os.walk(a):
        for n in names:
            p = os.path.join(d, n)
            q = os.path.join(b, os.path.relpath(p, a))
            assert open(p, "rb").read() == open(q, "rb").read(), p
            sp, sq = os.stat(p), os.stat(q)
            # mtimes are kept in whole seconds (like ustar and gzip)
            assert (sp.st_mode, sp.st_mtime_ns // 10**9 * 10**9) == (sq.st_mode, sq.st_mtime_ns), p
    assert sorted(os.path.relpath(os.path.join(d, n), a) for d, _, ns in os.walk(a) for n in ns) \
        == sorted(os.path.relpath(os.path.join(d, n), b) for d, _, ns in os.walk(b) for n in ns)


def test_tree_round_trip_with_modes_and_mtimes(tmp_path):
    src, arc, stats = build(tmp_path)
    assert stats["files"] == 5
    blob = arc.read_bytes()
    assert blob[:4] == b"NAC\x95"                           # solid layout, version 5
    assert blob[4] == 5                                     # the compact index frame
    # similar files adjacent: by extension, then path
    assert [e.path for e in solid.listing(io.BytesIO(blob))] == [
        "src/empty", "src/sub/f.c", "src/sub/g.c", "src/bin.dat", "src/a.txt"]
    r = solid.extract(str(arc), str(tmp_path / "out"), FAST)
    assert r == {"files": 5, "blocks_decoded": 10, "blocks": 10}     # 9024 bytes
    same_tree(src, tmp_path / "out" / "src")


def test_listing_and_info_load_no_model(tmp_path, monkeypatch):
    _, arc, _ = build(tmp_path)

    def forbidden(*a, **k):
        raise AssertionError("model loaded")
    monkeypatch.setattr(api, "get_engine", forbidden)
    entries = solid.listing(open(arc, "rb"))
    assert {e.path: e.size for e in entries}["src/sub/g.c"] == 2500
    assert entries[-1].mtime_ns == 1_600_000_000_000_000_000        # whole seconds
    d = nacrith.info(open(arc, "rb"))
    assert d["layout"] == "solid" and d["original_size"] == sum(e.size for e in entries)


def test_plain_decompress_refuses_a_solid_archive(tmp_path):
    _, arc, _ = build(tmp_path)
    with pytest.raises(nacrith.NacritError, match="this is a solid archive of a file tree"):
        nacrith.decompress(arc.read_bytes())


def test_one_file_decodes_only_its_blocks(tmp_path, monkeypatch):
    src, arc, _ = build(tmp_path)
    calls = []
    real = api.decode_segment

    def counting(frame, *a, **k):
        calls.append(a[2])                                  # segment index
        return real(frame, *a, **k)
    monkeypatch.setattr(api, "decode_segment", counting)
    r = solid.extract(str(arc), str(tmp_path / "one"), FAST, only="src/sub/g.c")
    # g.c is bytes 2500..5000 of the stream (after empty and f.c): blocks 2, 3, 4 of 1000
    assert r == {"files": 1, "blocks_decoded": 3, "blocks": 3} and calls == [2, 3, 4]
    assert (tmp_path / "one" / "src" / "sub" / "g.c").read_bytes() == \
        (src / "sub" / "g.c").read_bytes()
    assert [p.name for p in (tmp_path / "one" / "src").iterdir()] == ["sub"]
    with pytest.raises(nacrith.NacritError, match="src/nope: not in the archive"):
        solid.extract(str(arc), str(tmp_path / "one"), FAST, only="src/nope")


def test_existing_file_is_kept_without_force(tmp_path):
    _, arc, _ = build(tmp_path)
    out = tmp_path / "out"
    (out / "src").mkdir(parents=True)
    (out / "src" / "a.txt").write_bytes(b"mine")
    with pytest.raises(nacrith.NacritError, match=r"src/a.txt: already exists \(use -f"):
        solid.extract(str(arc), str(out), FAST)
    assert (out / "src" / "a.txt").read_bytes() == b"mine"
    solid.extract(str(arc), str(out), FAST, force=True)
    assert (out / "src" / "a.txt").read_bytes() == corpus("alice29.txt", 3000)


def test_symlinked_directory_in_the_target_is_refused(tmp_path):
    _, arc, _ = build(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    (out / "src").mkdir(parents=True)
    os.symlink(outside, out / "src" / "sub")
    with pytest.raises(nacrith.NacritError, match="src/sub: cannot restore into it"):
        solid.extract(str(arc), str(out), FAST)
    assert list(outside.iterdir()) == []


def hostile(tmp_path, paths):
    """A solid archive whose index lists `paths` (checks valid), content 'x' per file."""
    entries = [solid.Entry(p, 1, 0o644, 0, xxhash.xxh3_64_intdigest(b"x")) for p in paths]
    out = io.BytesIO()
    w = api.ArchiveWriter(out, FAST, index=solid.pack_index(entries, 1000))
    data = b"x" * len(paths)
    w.add(data, api.code_segment(data, api.normalized(FAST)))
    w.finish()
    p = tmp_path / "h.nc"
    p.write_bytes(out.getvalue())
    return p


@pytest.mark.parametrize("paths, message", [
    (["../evil"], "unsafe path '../evil'"),
    (["/etc/evil"], "unsafe path '/etc/evil'"),
    (["a/../../evil"], "unsafe path 'a/../../evil'"),
    (["a/./b"], "unsafe path 'a/./b'"),
    (["a//b"], "unsafe path 'a//b'"),
    (["a\\..\\evil"], "unsafe path"),
    (["a\x00b"], "unsafe path"),
    ([""], "unsafe path ''"),
    (["a", "a"], "lists 'a' twice"),
    (["a", "a/b"], "lists 'a/b' under a file"),
    (["a/b", "a"], "lists 'a' twice (or as a file and a directory)"),
])
def test_hostile_paths_are_refused_and_nothing_is_written(tmp_path, paths, message):
    p = hostile(tmp_path, paths)
    out = tmp_path / "deep" / "out"
    with pytest.raises(nacrith.NacritError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("\\..", r"\\\\..")):
        solid.extract(str(p), str(out), FAST)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "evil").exists()
    assert not out.exists() or list(out.iterdir()) == []
    with pytest.raises(nacrith.NacritError):
        solid.listing(open(p, "rb"))


def test_damaged_index_is_caught(tmp_path):
    _, arc, _ = build(tmp_path)
    blob = bytearray(arc.read_bytes())
    blob[14] ^= 0x40                                        # inside the compressed index
    with pytest.raises(nacrith.NacritError, match=r"corrupt frame 0 \(index checksum mismatch\)"):
        nacrith.info(io.BytesIO(bytes(blob)))
    for n in range(0, len(blob), 37):
        with pytest.raises(nacrith.NacritError):
            solid.listing(io.BytesIO(bytes(arc.read_bytes()[:n])))


def test_neural_solid_tree_decodes_in_a_fresh_process(tmp_path):
    """The default settings: text files coded neurally, the context carried across files inside
    a block; a fresh interpreter restores the exact tree."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "one.txt").write_bytes(corpus("alice29.txt", 700))
    (src / "two.txt").write_bytes(corpus("alice29.txt", 1400)[700:])
    arc = tmp_path / "t.nc"
    with open(arc, "wb") as f:
        solid.compress_tree([str(src)], f, api.Options(threads=1))
    layout, desc, segs, _ = F.scan_bytes(arc.read_bytes())
    assert layout == F.L_SOLID and [s.method for s in segs] == [F.L_NEURAL]
    r = fresh_python("import sys; from nacrith import solid, api; "
                     "print(solid.extract(sys.argv[1], sys.argv[2], api.Options(threads=1)))",
                     str(arc), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr.decode()
    same_tree(src, tmp_path / "out" / "src")


def _cli(*args, cwd):
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "nacrith", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, timeout=1500)


def test_cli_solid_workers_byte_identical_and_restore(tmp_path):
    """`compress -r --solid DIR -o OUT.nc`: 1 process and 2 workers give the same bytes; `info`
    lists the files; `-d -o DIR` restores the tree, `--file` one file; usage errors exit 2."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_bytes(corpus("alice29.txt", 1100))
    (src / "b.c").write_bytes(corpus("fields.c", 900))
    (src / "z.bin").write_bytes(bytes(range(256)) * 3)
    common = ("--threads", "1", "--segment-size", "1K")
    r1 = _cli("compress", "-r", "--solid", "src", "-o", "one.nc", *common, cwd=tmp_path)
    r2 = _cli("compress", "-r", "--solid", "src", "-o", "two.nc", "--workers", "2", *common,
              cwd=tmp_path)
    assert r1.returncode == 0 and r2.returncode == 0, (r1.stderr, r2.stderr)
    one, two = (tmp_path / "one.nc").read_bytes(), (tmp_path / "two.nc").read_bytes()
    assert one == two
    segs = F.scan_bytes(one)[2]
    assert len(segs) == 3 and {s.method for s in segs} >= {F.L_NEURAL}
    r = _cli("info", "one.nc", cwd=tmp_path)
    out = r.stdout.decode()
    assert "  layout       solid\n" in out and "  files        3\n" in out
    assert "src/d/a.txt" in out and "src/z.bin" in out
    r = _cli("-d", "one.nc", "-o", "out", "--threads", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    same_tree(src, tmp_path / "out" / "src")
    r = _cli("-d", "one.nc", "-o", "part", "--file", "src/b.c", "--threads", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "part" / "src").iterdir()] == ["b.c"]
    r = _cli("-d", "one.nc", "-o", "out", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.decode().startswith("nacrith: one.nc: src/")
    assert "already exists (use -f to overwrite)" in r.stderr.decode()
    r = _cli("compress", "--solid", "src", cwd=tmp_path)
    assert r.returncode == 2 and b"--solid writes one archive" in r.stderr


def test_fuzz_solid_archives(tmp_path):
    """600 damaged solid archives (bit flips anywhere, in the index frame above all; truncations;
    crafted indexes with hostile lengths behind valid checks): listing and a dry extraction end
    in NacritError or the exact files, never another exception; nothing is written outside."""
    import random
    _, arc, _ = build(tmp_path)
    blob = arc.read_bytes()
    want = {e.path: e.xxh3 for e in solid.listing(io.BytesIO(blob))}
    rng = random.Random(5)
    outcomes = {"ok": 0, "error": 0}
    for i in range(600):
        b = bytearray(blob)
        kind = i % 4
        if kind == 3:                           # random raw index bytes behind a valid check
            raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
            start = 4
            end = start + len(F.pack_index_frame(solid.pack_index(solid.listing(
                io.BytesIO(blob)), 1000)))
            b = bytearray(blob[:start] + F.pack_index_frame(raw) + blob[end:])
        elif kind == 0:
            for _ in range(rng.randint(1, 3)):
                pos = rng.randrange(4, 80) if rng.random() < 0.7 else rng.randrange(len(b))
                b[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del b[rng.randrange(len(b)):]
        else:                                   # a hostile index with a valid frame check
            entries = [solid.Entry(rng.choice(["a", "b/c", "x" * rng.randint(1, 300)]),
                                   rng.choice([0, 1, 9024, 1 << 40]), 0o644, 0, 0)
                       for _ in range(rng.randint(1, 4))]
            raw = solid.pack_index(entries, rng.choice([1, 1000, 1 << 26]))
            start = 4
            end = start + len(F.pack_index_frame(solid.pack_index(solid.listing(
                io.BytesIO(blob)), 1000)))
            b = bytearray(blob[:start] + F.pack_index_frame(raw) + blob[end:])
        p = tmp_path / "f.nc"
        p.write_bytes(bytes(b))
        try:
            got = {e.path: e.xxh3 for e in solid.listing(io.BytesIO(bytes(b)))}
            solid.extract(str(p), str(tmp_path / "never"), FAST, dry=True)
            assert got == want
            outcomes["ok"] += 1
        except nacrith.NacritError as e:
            assert str(e) and "\n" not in str(e)
            outcomes["error"] += 1
    assert not (tmp_path / "never").exists()
    assert outcomes["error"] > 400, outcomes


def test_fuzz_the_first_index_packing():
    # frame 06 (golden v4-solid-index1): bit flips and truncations of the index region are
    # refused or list exactly the original files
    import random
    blob = (Path(__file__).resolve().parents[1] / "formats/golden/v4-solid-index1.nc").read_bytes()
    want = [(e.path, e.size, e.xxh3) for e in solid.listing(io.BytesIO(blob))]
    assert len(want) == 4 and all(e.check_bits == 64 for e in solid.listing(io.BytesIO(blob)))
    rng = random.Random(6)
    errors = 0
    for i in range(400):
        b = bytearray(blob)
        if i % 2:
            b[rng.randrange(3, 120)] ^= 1 << rng.randrange(8)
        else:
            del b[rng.randrange(len(b)):]
        try:
            got = [(e.path, e.size, e.xxh3) for e in solid.listing(io.BytesIO(bytes(b)))]
            assert got == want
        except nacrith.NacritError as e:
            assert str(e) and "\n" not in str(e)
            errors += 1
    assert errors == 400
