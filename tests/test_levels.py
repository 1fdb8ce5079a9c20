"""Compression levels (nacrith/levels.py): the exact settings of each level, explicit options
over a level, the CLI flags (-1..-9, --fast, --best), and archives that record the settings
used (a level is never needed to decode). Short texts only."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nacrith
from nacrith import api, cli, levels

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
TEXT = (b"Alice was beginning to get very tired of sitting by her sister on the bank, and of "
        b"having nothing to do: once or twice she had peeped into the book her sister was "
        b"reading, but it had no pictures or conversations in it, 'and what is the use of a "
        b"book,' thought Alice, 'without pictures or conversations?'\n")


def test_level_table_is_pinned():
    assert levels.DEFAULT == 6 and (levels.FAST, levels.BEST) == (1, 9)
    assert levels.LEVELS == {
        1: dict(lanes=4, ctx=512, skip=58982), 2: dict(lanes=4, ctx=1024, skip=62259),
        3: dict(lanes=2, ctx=1024, skip=62259), 4: dict(lanes=2, ctx=2048, skip=64225),
        5: dict(lanes=1, ctx=2048, skip=64225), 6: {}, 7: dict(ctx=4096),
        8: dict(ctx=32768, model="gemma3", swa_full=False),
        9: dict(ctx=32768, model="gemma3", swa_full=False, model2="smollm2", ctx2=8192)}


@pytest.mark.parametrize("level", sorted(levels.LEVELS))
def test_each_level_maps_to_its_options(level):
    o = api.normalized(level=level)
    for k, v in levels.LEVELS[level].items():
        assert getattr(o, k) == v
    assert o.slide == o.ctx // 4 and o.skip_cap == (api.DEFAULT_SKIP_CAP if o.skip else None)
    assert o.backend == api.auto_backend(o.model)       # portable for the presets on the CPU
    assert o.threads == api.default_threads(o.backend)  # min(2, cpus) for the portable engine
    derived = {"level", "slide", "skip_cap", "backend", "threads"}
    rest = {k for k in vars(api.Options()) if k not in levels.LEVELS[level]} - derived
    assert {k: getattr(o, k) for k in rest} == {k: getattr(api.normalized(), k) for k in rest}


def test_default_level_is_the_default_options():
    a, b = api.normalized(level=levels.DEFAULT), api.normalized()
    a.level = None
    assert a == b


def test_explicit_options_override_the_level():
    o = api.normalized(level=1, ctx=2048)               # a keyword wins, even the default value
    assert (o.ctx, o.lanes, o.skip) == (2048, 4, 58982)
    o = api.normalized(api.Options(level=1, lanes=2))   # a non-default Options field wins
    assert (o.ctx, o.lanes) == (512, 2)
    o = api.normalized(api.normalized(level=1))         # normalizing again changes nothing
    assert (o.ctx, o.lanes, o.skip) == (512, 4, 58982)
    o = api.at_level(9, model="smollm2", ctx=2048)
    assert (o.model, o.ctx, o.level) == ("smollm2", 2048, None)
    for bad in (0, 10, True, "9"):
        with pytest.raises(nacrith.BadOption, match="level"):
            api.normalized(level=bad)


def test_level_9_is_the_two_model_coder_unless_options_rule_it_out():
    o = api.normalized(level=9)
    assert (o.model, o.ctx, o.model2, o.ctx2, o.backend, o.lanes) == \
        ("gemma3", 32768, "smollm2", 8192, "portable", 1)
    assert api.normalized(o) == o                       # normalizing again changes nothing
    for kw in (dict(model="gemma3"), dict(lanes=1), dict(backend="portable"),
               dict(backend="auto"), dict(ctx2=4096), dict(n_gpu_layers=0)):
        assert api.normalized(level=9, **kw).model2 == "smollm2", kw
        assert api.at_level(9, **kw).model2 == "smollm2", kw
    # what the two-model coder cannot run drops its second model, never an error
    for kw, model in ((dict(model="smollm2"), "smollm2"), (dict(lanes=2), "gemma3"),
                      (dict(backend="llama"), "gemma3"), (dict(n_gpu_layers=1), "gemma3")):
        for o in (api.normalized(level=9, **kw), api.normalized(api.at_level(9, **kw)),
                  api.normalized(api.Options(level=9, **kw))):
            assert (o.model2, o.ctx2, o.model, o.ctx) == (None, 8192, model, 32768), kw
    # an explicit second model is kept, and so is its error where it cannot run
    with pytest.raises(nacrith.BadOption, match="model2 codes on the portable engine"):
        api.normalized(level=9, model2="smollm2", lanes=2)
    o = api.normalized(level=8)
    assert (o.model, o.ctx, o.model2, o.backend) == ("gemma3", 32768, None, "portable")


def test_two_model_coder_on_devices_is_a_clear_error():
    from nacrith import workers
    with pytest.raises(nacrith.NacritError, match=r"^--devices: the two-model coder .* -8"):
        workers.pool_backend(api.at_level(9), ["0"])
    assert workers.pool_backend(api.at_level(8), ["0"]) == "llama"
    assert workers.pool_backend(api.at_level(9), []) == "portable"


def test_cli_level_flags_become_level_options():
    assert cli.shim(["-9", "-c", "f"]) == ["compress", "--level", "9", "-c", "f"]
    assert cli.shim(["-k3f", "f"]) == ["compress", "-k", "--level", "3", "-f", "f"]
    assert cli.shim(["--fast", "f"]) == ["compress", "--level", "1", "f"]
    assert cli.shim(["compress", "--best", "f"]) == ["compress", "--level", "9", "f"]
    assert cli.shim(["-d", "--skip", "-1"])[-2:] == ["--skip", "-1"]   # a value, not a level


def _cli(*args, cwd, input=b""):
    return subprocess.run([sys.executable, "-m", "nacrith", *args], cwd=cwd, env=ENV, input=input,
                          capture_output=True, timeout=600)


def test_cli_level_recorded_and_decodes_without_it(tmp_path):
    r = _cli("-1", "-c", "--threads", "1", cwd=tmp_path, input=TEXT)
    assert r.returncode == 0, r.stderr
    m = api.info(io.BytesIO(r.stdout))["model"]
    assert (m["lanes"], m["ctx"], m["skip"]) == (4, 512, 58982)
    d = _cli("-dc", cwd=tmp_path, input=r.stdout)
    assert d.returncode == 0 and d.stdout == TEXT
    # explicit options win over the level, even when they equal the defaults
    r = _cli("--best", "--model", "smollm2", "--ctx", "2048", "--lanes", "2", "-c", "--threads",
             "1", cwd=tmp_path, input=TEXT[:200])
    assert r.returncode == 0, r.stderr
    m = api.info(io.BytesIO(r.stdout))["model"]
    assert (m["name"].startswith("SmolLM2"), m["ctx"], m["lanes"]) == (True, 2048, 2)
    assert "swa_full" not in m                  # level 9's swa_full: SmolLM2 has no SWA
    assert nacrith.decompress(r.stdout) == TEXT[:200]


def test_cli_bad_level_is_a_usage_error(tmp_path):
    r = _cli("compress", "--level", "0", "-c", cwd=tmp_path, input=TEXT)
    assert r.returncode == 2 and b"--level" in r.stderr
