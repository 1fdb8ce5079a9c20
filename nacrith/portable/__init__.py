"""Portable integer inference engine: logits defined bit for bit by formats/ENGINE.md.

PortableBackend has the interface of nacrith.backend.Backend; ENGINE_VERSION names the
arithmetic (any change to a logit bit needs a new version); fingerprint() -> "portable-<v>".
"""
import os

# Idle OpenMP workers sleep instead of spinning: the engine launches many short parallel regions
# and spinning workers on a shared machine made 2 threads 10x slower than 1.  Speed only: the
# logits never depend on threading.  Must be set before Numba's OpenMP pool starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .backend import ENGINE_VERSION, PortableBackend, fingerprint  # noqa: E402

__all__ = ["ENGINE_VERSION", "PortableBackend", "fingerprint"]
