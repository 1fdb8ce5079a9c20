"""Compression levels: -1 (fastest) .. -9 (smallest), like gzip/xz/zstd.

Invariants: a level is only a shorthand for encoder settings (api.Options fields); the archive
records the settings actually used (ctx, lanes, skip, the model), never the level, so no level
is needed to decode and a table change never affects old archives. Level DEFAULT is exactly
the default Options. Options given explicitly together with a level override its values; a
level's second model (level 9's two-model coder) is dropped with them when they ask for what
that coder cannot run (another first model, more than one lane, llama.cpp or GPU layers), so
`-9 --model smollm2` is SmolLM2 alone at level 9's window, never an error.
Measured with scripts/bench_levels.py and scripts/byte_mix.py (docs/benchmarks.md, "Levels").
"""
from __future__ import annotations

DEFAULT = 6
FAST, BEST = 1, 9

# skip is the confidence-skip threshold / 2^16 (0.90, 0.95, 0.98). Level 8: Gemma-3 at ctx 32768
# on the portable engine (auto), whose sliding-window layers keep only their window's rows;
# swa_full=False gives `--backend llama` llama.cpp's small SWA cache, which reaches ctx 32768 at
# ctx 8192's full-cache speed (docs/benchmarks.md, "gemma3 preset"); without SWA (SmolLM2) or
# on the portable engine swa_full does nothing. Level 9: the byte-level two-model coder
# (bytemix.py), Gemma-3 at ctx 32768 with SmolLM2 at ctx 8192 (the whole alice29.txt 3.4% under
# level 8; 2.8-4.3x slower on the same thread: docs/benchmarks.md, "Whole files")
LEVELS: dict[int, dict] = {
    1: dict(lanes=4, ctx=512, skip=58982),
    2: dict(lanes=4, ctx=1024, skip=62259),
    3: dict(lanes=2, ctx=1024, skip=62259),
    4: dict(lanes=2, ctx=2048, skip=64225),
    5: dict(lanes=1, ctx=2048, skip=64225),
    6: dict(),
    7: dict(ctx=4096),
    8: dict(ctx=32768, model="gemma3", swa_full=False),
    9: dict(ctx=32768, model="gemma3", swa_full=False, model2="smollm2", ctx2=8192),
}


def settings(level: int, given: dict | None = None) -> dict:
    """The Options fields level `level` sets (a copy), less its second model when the options
    `given` explicitly (name -> value) rule the two-model coder out; ValueError outside 1..9."""
    if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS:
        raise ValueError(f"level must be an integer 1..9 (got {level!r})")
    s = dict(LEVELS[level])
    g = given or {}
    if "model2" in s and "model2" not in g and (
            g.get("model", s["model"]) != s["model"] or g.get("lanes", 1) != 1 or
            g.get("backend", "auto") not in ("auto", "portable") or g.get("n_gpu_layers") or
            g.get("mix_preset") is not None):
        del s["model2"], s["ctx2"]
    return s
