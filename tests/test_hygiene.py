"""Guards of the test suite itself: the same archive bytes from two fresh processes, and a
suite that skips (never errors at import) when ../shared/corpus is missing."""
import io
import os
import subprocess
import sys

import pytest

import nacrith
from helpers import REPO, fresh_python
from nacrith import models

TEXT = (b"Down, down, down. Would the fall never come to an end? 'I wonder how many miles I've "
        b"fallen by this time?' she said aloud. 'I must be getting somewhere near the centre "
        b"of the earth.'\n")
ENCODE = "import sys, nacrith; sys.stdout.buffer.write(nacrith.compress(sys.stdin.buffer.read()))"


def _model_missing() -> bool:
    try:
        models.resolve(None)
    except nacrith.NacritError:
        return True
    return False


@pytest.mark.skipif(_model_missing(), reason="default model not installed")
def test_encode_is_deterministic_across_fresh_processes():
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    runs = [subprocess.run([sys.executable, "-c", ENCODE], input=TEXT, capture_output=True,
                           timeout=900, cwd=REPO, env=env) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert runs[0].stdout == runs[1].stdout
    assert nacrith.info(io.BytesIO(runs[0].stdout))["segments"][0]["method"] == "neural"
    assert nacrith.decompress(runs[0].stdout) == TEXT


def test_suite_collects_without_the_corpus():
    code = ("import sys, pathlib; sys.path.insert(0, 'tests'); import helpers; "
            "helpers.CORPUS = pathlib.Path('/nonexistent/corpus'); import pytest; "
            "sys.exit(pytest.main(['-q', '--collect-only', '-p', 'no:cacheprovider', 'tests']))")
    r = fresh_python(code, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()[-3000:]


def test_every_subpackage_is_shipped():
    # pyproject lists packages explicitly: a new subpackage missing there would be absent from
    # a wheel while every test run from the source tree still passes
    import tomllib
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "nacrith").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
