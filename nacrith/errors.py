"""The one public error class.

Invariant: every failure the library reports on purpose (bad archive, wrong model, bad option,
I/O problem on a named file) is a NacritError carrying a one-line, human-readable reason.
"""


class NacritError(ValueError):
    """Raised for corrupt or truncated archives, mismatched models/settings and bad options."""
