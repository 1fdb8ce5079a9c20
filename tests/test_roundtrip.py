"""Neural round trips with the real default model, decoded in a fresh process."""
import hashlib
import math

import numpy as np
import zstandard
import pytest

import nacrith
from nacrith import api, frames as F, models
from nacrith.neural import lockstep

from helpers import corpus, decoded_in_fresh_process, fresh_python

PROSE = (b"It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith,\n"
         b"his chin nuzzled into his breast in an effort to escape the vile wind, slipped quickly\n"
         b"through the glass doors of Victory Mansions, though not quickly enough to prevent a swirl\n"
         b"of gritty dust from entering along with him. The hallway smelt of boiled cabbage and old\n"
         b"rag mats. At one end of it a coloured poster, too large for indoor display, had been\n"
         b"tacked to the wall. It depicted simply an enormous face, more than a metre wide.\n")

CASES = {
    "empty": lambda: b"",
    "one_byte": lambda: b"a",
    "all_bytes": lambda: bytes(range(256)),
    "invalid_utf8": lambda: PROSE[:300] + b" caf\xc3\xa9 \xff\xfe broken \xc3( \xed\xa0\x80 " + PROSE[300:],
    "crlf": lambda: PROSE.replace(b"\n", b"\r\n"),
    "special_tokens": lambda: PROSE[:200] + b" <|endoftext|> then <|im_start|>assistant\n<|im_end|> "
                              + PROSE[200:],
    "control_bytes": lambda: PROSE[:100] + b"\x04" + PROSE[100:400] + b"\x1d\x13" + PROSE[400:],
    "alice_1k": lambda: corpus("alice29.txt", 1024),
    "fields_1k": lambda: corpus("fields.c", 1024),
    "xargs_1k": lambda: corpus("xargs.1", 1024),
    "kennedy_xls": lambda: corpus("kennedy.xls"),
    "tar": lambda: tar_of({"a.txt": corpus("alice29.txt", 800), "f.c": corpus("fields.c", 600),
                           "x.1": corpus("xargs.1", 500)}),
}


def tar_of(files: dict) -> bytes:
    import io
    import tarfile
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1700000000
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()
TEXTUAL = ["invalid_utf8", "crlf", "special_tokens", "control_bytes", "alice_1k", "fields_1k",
           "xargs_1k"]


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    d = tmp_path_factory.mktemp("rt")
    out = {}
    for name, make in CASES.items():
        data = make()
        blob = nacrith.compress(data)
        (d / f"{name}.nc").write_bytes(blob)
        out[name] = (data, blob, d / f"{name}.nc")
    return out


def test_text_goes_neural_binary_falls_back(archives):
    from nacrith.portable import ENGINE_VERSION
    for name in TEXTUAL:
        data, blob, _ = archives[name]
        layout, desc, segs, _ = F.scan_bytes(blob)
        assert layout == F.L_NEURAL and len(segs) == 1, name
        # the default model is registered preset 1: no SHA-256, no parameters in the archive;
        # its default engine is the portable one
        assert desc == F.Descriptor(1, F.E_PORTABLE, ENGINE_VERSION, {}), name
        assert models.registered(1)[1] == models.sha256(models.resolve(None))
    assert F.scan_bytes(archives["kennedy_xls"][1])[0] == F.L_ZSTD
    # a tar stream: the members' contents are coded neurally, headers and padding with zstd
    data, blob, _ = archives["tar"]
    layout, _, segs, _ = F.scan_bytes(blob)
    assert layout == F.L_HYBRID
    h = F.unpack_hybrid(segs[0].body, len(data), "x")
    assert h.text_len == 800 + 600 + 500 and h.bin_method == F.L_ZSTD
    assert h.runs[:2] == [0, 512] and h.runs[2] == 800
    assert len(blob) < 0.5 * len(zstandard.ZstdCompressor(level=19).compress(data))
    assert F.scan_bytes(archives["empty"][1])[2][0].orig_len == 0


def test_no_archive_exceeds_the_bound(archives):
    for name, (data, blob, _) in archives.items():
        assert len(blob) <= len(data) + api.HEADER_BOUND, name


def test_text_compresses_well(archives):
    data, blob, _ = archives["alice_1k"]
    assert 8 * len(blob) / len(data) < 1.9          # xz -9e: 652 bytes, 5.1 bpb on this slice


def test_decode_in_fresh_process(archives):
    names = list(archives)
    code = ("import sys, hashlib, nacrith\n"
            "for p in sys.argv[1:]:\n"
            "    print(hashlib.sha256(nacrith.decompress(open(p, 'rb').read())).hexdigest())\n")
    r = fresh_python(code, *[str(archives[n][2]) for n in names])
    assert r.returncode == 0, r.stderr.decode()
    got = r.stdout.decode().split()
    assert got == [hashlib.sha256(archives[n][0]).hexdigest() for n in names]


def test_deterministic_encoding(archives):
    data, blob, _ = archives["special_tokens"]
    assert nacrith.compress(data) == blob


def test_sliding_window_nondefault_settings_fresh_process(tmp_path):
    # ctx 256 / slide 64 forces many KV slides (with BOS kept) on ~550 tokens
    data = corpus("fields.c", 1600)
    blob = nacrith.compress(data, ctx=256, slide=64, n_keep=4, threads=1)
    assert F.scan_bytes(blob)[1].params == {"ctx": 256, "n_keep": 4}     # slide = ctx / 4
    blob = nacrith.compress(data, ctx=256, slide=32, n_keep=4, threads=1)
    assert F.scan_bytes(blob)[1].params == {"ctx": 256, "slide": 32, "n_keep": 4}
    p = tmp_path / "f.nc"
    p.write_bytes(blob)
    assert decoded_in_fresh_process(p) == data


def test_coded_size_matches_model_cross_entropy():
    """The coder + 24-bit CDF lose < 1% against the model's own cross-entropy."""
    data = corpus("alice29.txt", 1500)
    opts = api._options(None, {})
    engine = api.get_engine(models.resolve(None), opts)
    toks, esc = engine.tokenizer.tokenize(data)
    assert esc == []
    bits = 0.0

    def code(lane, t, row):
        nonlocal bits
        x = row.astype(np.float64)
        m = x.max()
        bits += (m + math.log(np.exp(x - m).sum()) - x[toks[t]]) / math.log(2)
        return int(toks[t])

    lockstep(engine.backend, 1, lambda lane, t: t < len(toks), code)
    seg = F.scan_bytes(nacrith.compress(data, opts, mixer=False))[2][0]
    assert seg.body[0] == 0                         # no escapes: the rest is the coded stream
    stream_bits = 8 * (len(seg.body) - 1)
    assert stream_bits <= bits * 1.01 + 16, (stream_bits, bits)


def test_wrong_model_is_refused(tmp_path, archives):
    blob = archives["crlf"][1]
    fake = tmp_path / "other.gguf"
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(nacrith.NacritError, match="archive was made with model SmolLM2-135M-Instruct.Q4_1.gguf "):
        nacrith.decompress(blob, model=str(fake))


def test_every_lane_count_decodes_in_fresh_process(tmp_path):
    # K = 1, 2, 3, 5, 16 lanes (one sequence each, lockstep; 4 lanes: test_portable's host
    # child) with the default ensemble, on 400 + 30 K bytes of text (neural beats zstd plus the
    # model frame; 10+ tokens per lane); one fresh interpreter decodes all the archives
    text = PROSE.replace(b"\n", b"\r\n") + corpus("fields.c", 300)
    datas, paths = [], []
    for k in (1, 2, 3, 5, 16):
        data = text[:400 + 30 * k]
        blob = nacrith.compress(data, threads=1, lanes=k, ctx=256, slide=64)
        layout, desc, segs, _ = F.scan_bytes(blob)
        assert layout == F.L_NEURAL, k
        lanes = F.unpack_neural(segs[0].body, len(data), k, "x").lanes
        assert len(lanes) == k and all(len(pay) > 1 for _, pay in lanes)
        assert sum(orig for orig, _ in lanes) == len(data)
        datas.append(data)
        paths.append(tmp_path / f"k{k}.nc")
        paths[-1].write_bytes(blob)
    code = ("import sys, hashlib, nacrith\n"
            "for p in sys.argv[1:]:\n"
            "    print(hashlib.sha256(nacrith.decompress(open(p, 'rb').read(), threads=1))"
            ".hexdigest())\n")
    r = fresh_python(code, *map(str, paths))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == [hashlib.sha256(d).hexdigest() for d in datas]


LICENSE_300 = (b"Permission is hereby granted, free of charge, to any person obtaining a copy of this "
               b"software and associated documentation files (the \"Software\"), to deal in the "
               b"Software without restriction, including without limitation the rights to use, copy, "
               b"modify, merge, publish, distribute, sublicense, and/or sell copies.\n")[:300]


@pytest.mark.parametrize("backend", ["auto", "llama"])
def test_compact_frame_field_by_field(backend):
    """A default archive of a 300-byte text: 4-byte header, descriptor (model id 1, engine, no
    parameters: the portable engine (the default for SmolLM2) + its version varint, 2 bytes;
    llama.cpp + its 16-bit build hash, 3 bytes), varint length, escape count, the coded stream,
    content check, archive check: 17 (portable) / 18 (llama.cpp) bytes around the stream (<= 20
    for any size below 2^28), and at most half of zstd -19's size (the CLI's frame: magic,
    size, checksum)."""
    import struct
    import xxhash
    import zstandard
    from nacrith.portable import ENGINE_VERSION
    data = LICENSE_300
    assert len(data) == 300
    blob = nacrith.compress(data, backend=backend)
    assert blob[:4] == b"NAC\x25"                      # layout 2 (neural), version 5
    if backend == "auto":
        assert blob[4] == 1 << 3 | F.E_PORTABLE << 1    # model 1, engine 2, no parameters
        assert blob[5] == ENGINE_VERSION == 1
        p = 6
    else:
        engine = api.get_engine(models.resolve(None), api.normalized(backend="llama"))
        assert blob[4] == 1 << 3 | F.E_LLAMA << 1       # model 1, engine 1, no parameters
        assert blob[5:7] == struct.pack("<H", F.fingerprint_hash(engine.fingerprint))
        p = 7
    assert blob[p:p + 2] == bytes([300 & 0x7F | 0x80, 300 >> 7])
    assert blob[p + 2] == 0                             # no escapes
    stream = blob[p + 3:-8]
    assert blob[-8:-4] == struct.pack("<I", xxhash.xxh3_64_intdigest(data) & 0xFFFFFFFF)
    assert blob[-4:] == struct.pack("<I", xxhash.xxh32_intdigest(blob[:-4]))
    assert len(blob) - len(stream) == (17 if backend == "auto" else 18)
    z = zstandard.ZstdCompressor(level=19, write_checksum=True).compress(data)
    assert len(blob) <= len(z) / 2, (len(blob), len(z))
    assert nacrith.decompress(blob) == data
