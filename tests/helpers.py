"""Shared test helpers: corpus location and running nacrith in a fresh process."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "formats" / "golden"
# formats/golden/MANIFEST.txt: [sha256 of the original, its size, archive name, methods]
GOLDEN_ENTRIES = [ln.split() for ln in (GOLDEN / "MANIFEST.txt").read_text().splitlines() if ln]
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


def decoded_in_fresh_process(path, **options) -> bytes:
    """nacrith.decompress of the archive file at path, with these keyword options, in a new
    interpreter; its output (the child must exit 0)."""
    r = fresh_python("import sys, nacrith; sys.stdout.buffer.write(nacrith.decompress("
                     f"open(sys.argv[1], 'rb').read(), **{options!r}))", str(path))
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def det_logits(seed: int, v: int, scale: float = 25.0) -> np.ndarray:
    """Platform- and numpy-version-independent float32 logits (splitmix64 + IEEE * only)."""
    with np.errstate(over="ignore"):
        x = (np.arange(v, dtype=np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    u = (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    for _ in range(5):
        u = u * u                                  # u**32: LLM-like, a few large logits
    return (scale * u - 2.0).astype(np.float32)
