"""Error classes.

Invariant: every failure the library reports on purpose (bad archive, wrong model, bad option,
I/O problem on a named file) is a NacritError carrying a one-line, human-readable reason. The
subclasses let callers branch on the kind of failure; catching NacritError still catches all.
"""


class NacritError(ValueError):
    """Base of every deliberate nacrith failure (a ValueError): the message is one line."""


class CorruptArchive(NacritError):
    """The archive is damaged, truncated, or not a nacrith archive: no checksum matched, a frame
    is malformed, or the data ends early. Retrying with other options does not help."""


class ModelUnavailable(NacritError):
    """The model asked for (a preset, a GGUF path, or the model an archive was made with) is
    not installed or cannot be loaded."""


class ModelMismatch(NacritError):
    """The model or llama.cpp backend at hand differs from the one an archive was made with
    (vocabulary, SHA-256, backend fingerprint, thread count). A backend mismatch may still
    decode with `ignore_backend=True` (checksums verify the result)."""


class BadOption(NacritError):
    """An option is out of range or unknown (ctx not a multiple of 256, lanes too large, a
    mode string open() does not know, ...)."""
