"""Hybrid segmentation: cut one input into text runs (for the neural coder) and binary runs.

Invariants:
- `split_runs(data)` returns run lengths alternating text, binary, text, ... (the first text
  run may be empty, every other run is non-empty) that add up to len(data), or None when the
  input has no binary run worth cutting out (plain text: the neural coder alone; or no text
  run worth coding neurally);
- a tar stream (ustar headers at 512-byte boundaries) is walked member by member: each header
  block and each member's zero padding is binary, each member's content is text when it looks
  like text, and what follows the last header (the end blocks) is binary;
- elsewhere, binary runs are the stretches (at least MIN_BINARY bytes) of 64-byte blocks with
  NUL bytes or dense control bytes; text runs shorter than MIN_TEXT are folded into the binary
  around them; text with only stray binary blocks gets no cut (the caller's fallback codes it).
The cut is only a proposal: the encoder codes the hybrid candidate and keeps it only when it is
smaller than the other candidates (api.code_segment), so a poor cut costs time, never ratio.
"""
from __future__ import annotations

BLOCK = 64                 # granularity of the generic text/binary classification
MIN_TEXT = 256             # shorter text runs are not worth a neural run of their own
MIN_BINARY = 256           # shorter binary stretches (a stray NUL) do not make a binary run
_CTRL = bytes(c for c in range(32) if c not in (9, 10, 12, 13, 27))
_TABLE = bytes.maketrans(_CTRL, b"\x00" * len(_CTRL))


def _binary_block(b: bytes) -> bool:
    """NUL bytes, or more than 1 in 16 control bytes."""
    if b"\x00" in b:
        return True
    return b.translate(_TABLE).count(0) * 16 > len(b)


def looks_text(b: bytes) -> bool:
    return bool(b) and not any(_binary_block(b[i:i + BLOCK]) for i in range(0, len(b), BLOCK))


def _tar_members(data: bytes):
    """(start, end) of each tar member's content, or None if data is not a ustar stream."""
    if len(data) < 512 or data[257:262] != b"ustar":
        return None
    out, pos, n = [], 0, len(data)
    while pos + 512 <= n and data[pos + 257:pos + 262] == b"ustar":
        field = data[pos + 124:pos + 136].split(b"\x00", 1)[0].strip()
        try:
            size = int(field, 8) if field else 0
        except ValueError:
            return out or None
        kind = data[pos + 156:pos + 157]
        start = pos + 512
        if kind in (b"0", b"\x00", b"7") and size:      # regular files carry content
            out.append((start, min(n, start + size)))
        pos = start + (size + 511) // 512 * 512
    return out


def _generic(data: bytes):
    """(start, end) text stretches of data by 64-byte blocks; binary stretches shorter than
    MIN_BINARY do not cut a text stretch (so text with stray NULs has no binary run at all)."""
    out, start = [], None
    for i in range(0, len(data), BLOCK):
        if _binary_block(data[i:i + BLOCK]):
            if start is not None:
                out.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        out.append((start, len(data)))
    merged: list = []
    for a, b in out:
        if merged and a - merged[-1][1] < MIN_BINARY:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    if merged and merged[0][0] < MIN_BINARY:
        merged[0] = (0, merged[0][1])
    if merged and len(data) - merged[-1][1] < MIN_BINARY:
        merged[-1] = (merged[-1][0], len(data))
    if len(merged) == 1 and merged[0] == (0, len(data)):
        return []                           # no binary run worth cutting out
    return merged


def split_runs(data: bytes):
    """Run lengths [text, binary, text, ...] of data, or None (see the module invariants)."""
    members = _tar_members(data)
    texts = [(a, b) for a, b in members if looks_text(data[a:b])] if members is not None \
        else _generic(data)
    texts = [(a, b) for a, b in texts if b - a >= MIN_TEXT]
    if not texts:
        return None
    segs, pos = [], 0
    for a, b in texts:
        if a > pos:
            segs.append([False, a - pos])
        segs.append([True, b - a])
        pos = b
    if pos < len(data):
        segs.append([False, len(data) - pos])
    merged: list = []
    for kind, n in segs:
        if merged and merged[-1][0] == kind:
            merged[-1][1] += n
        else:
            merged.append([kind, n])
    runs = ([] if merged[0][0] else [0]) + [n for _, n in merged]
    return runs if len(runs) >= 2 else None
