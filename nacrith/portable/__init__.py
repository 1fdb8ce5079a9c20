"""Portable integer inference engine: logits defined bit for bit by formats/ENGINE.md.

PortableBackend has the interface of nacrith.backend.Backend; ENGINE_VERSION names the
arithmetic (any change to a logit bit needs a new version); fingerprint() -> "portable-<v>".
"""
from .backend import ENGINE_VERSION, PortableBackend, fingerprint

__all__ = ["ENGINE_VERSION", "PortableBackend", "fingerprint"]
