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

# skip is the confidence-skip threshold / 2^16 (0.90, 0.95, 0.98). Level 9: Gemma-3 at ctx 32768
# on the portable engine (auto), whose sliding-window layers keep only their window's rows;
# swa_full=False gives `--backend llama` llama.cpp's small SWA cache, which reaches ctx 32768 at
# ctx 8192's full-cache speed (docs/benchmarks.md, "gemma3 preset"); without SWA (SmolLM2) or
# on the portable engine swa_full does nothing
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
