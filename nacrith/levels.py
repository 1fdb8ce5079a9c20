"""Compression levels: -1 (fastest) .. -9 (smallest), like gzip/xz/zstd.

Invariants: a level is only a shorthand for encoder settings (api.Options fields); the archive
records the settings actually used (ctx, lanes, skip, the model), never the level, so no level
is needed to decode and a table change never affects old archives. Level DEFAULT is exactly
the default Options. Options given explicitly together with a level override its values.
Measured with scripts/bench_levels.py (README, "Levels").
"""
from __future__ import annotations

DEFAULT = 6
FAST, BEST = 1, 9

# skip is the confidence-skip threshold / 2^16 (0.90, 0.95, 0.98). Level 9: Gemma-3 with
# llama.cpp's small SWA cache (swa_full off) reaches ctx 32768 at ctx 8192's full-cache speed and
# a smaller ratio (README, "gemma3 preset"); on a model without SWA, swa_full does nothing
LEVELS: dict[int, dict] = {
    1: dict(lanes=4, ctx=512, skip=58982),
    2: dict(lanes=4, ctx=1024, skip=62259),
    3: dict(lanes=2, ctx=1024, skip=62259),
    4: dict(lanes=2, ctx=2048, skip=64225),
    5: dict(lanes=1, ctx=2048, skip=64225),
    6: dict(),
    7: dict(ctx=4096),
    8: dict(ctx=8192),
    9: dict(ctx=32768, model="gemma3", swa_full=False),
}


def settings(level: int) -> dict:
    """The Options fields level `level` sets (a copy); ValueError outside 1..9."""
    if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS:
        raise ValueError(f"level must be an integer 1..9 (got {level!r})")
    return dict(LEVELS[level])
