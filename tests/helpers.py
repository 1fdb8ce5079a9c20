"""Shared test helpers: corpus location and running nacrith in a fresh process."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


def corpus(name: str, n: int | None = None) -> bytes:
    p = CORPUS / name
    if not p.is_file():
        pytest.skip(f"corpus file {p} not found (expected ../shared/corpus beside the repo)")
    data = p.read_bytes()
    return data[:n] if n else data


def fresh_python(code: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run code in a new interpreter (nothing shared with the test process but files)."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          timeout=timeout, cwd=REPO)
