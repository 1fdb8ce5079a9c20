"""zstd-style argv for the typer app: `nacrith -dc FILE` -> `decompress -d -c FILE`.

Invariants: only rewrites (never interprets) arguments: mode flags (-d, -t, -l, -z) pick the
command when none is named, combined short flags are split (-kf -> -k -f), -1..-9 / --fast /
--best become --level N; an option's value and everything after `--` pass untouched. A
conflict of modes, or no input with stdin a terminal, is a usage error (exit 2).
"""
import sys
from typing import List

from . import runner as R

PROG = R.PROG
COMMANDS = ("compress", "decompress", "info", "test", "bench")
# zstd-style mode flags that select a subcommand when none is named (removed from argv).
MODE_FLAGS = {"-z": "compress", "--compress": "compress", "-d": "decompress",
              "--decompress": "decompress", "--uncompress": "decompress", "-t": "test",
              "--test": "test", "-l": "info", "--list": "info"}
SHORT_FLAGS = set("cdfklqrtvzhV")           # single-letter flags that take no value
SHORT_VALUE = set("o")                     # single-letter options that take a value
LEVEL_FLAGS = {"--fast": "1", "--best": "9"}  # and -1 .. -9: all become --level N
VALUE_OPTS = {"-o", "--output", "--model", "--threads", "--ctx", "--lanes", "--gpu-layers",
              "--skip", "--level",
              "--workers", "--devices", "--engine", "--address", "--manifest", "--segment-size",
              "--file"}
USAGE = f"Usage: {PROG} [compress|decompress|info|test|bench] [OPTIONS] [FILE]..."


def _usage_exit(message: str) -> None:
    sys.stderr.write(f"{USAGE}\nTry '{PROG} -h' for help.\n\nError: {message}\n")
    raise R.Stop(2)


def _expand_short(args: List[str]) -> List[str]:
    """-dc -> -d -c; -kfo OUT / -kfoOUT -> -k -f -o OUT; -9, --best -> --level 9. Unknown
    letters: left for click."""
    out, value_next, dashdash = [], False, False
    for a in args:
        if dashdash or value_next:
            out.append(a)
            value_next = False
            continue
        if a == "--":
            dashdash = True
            out.append(a)
            continue
        if a in LEVEL_FLAGS:
            out += ["--level", LEVEL_FLAGS[a]]
            continue
        if len(a) >= 2 and a[0] == "-" and a[1] != "-":
            parts, ok = [], True
            for i, ch in enumerate(a[1:], 1):
                if ch in "123456789":
                    parts += ["--level", ch]
                elif ch in SHORT_FLAGS:
                    parts.append("-" + ch)
                elif ch in SHORT_VALUE:
                    parts.append("-" + ch)
                    if a[i + 1:]:
                        parts.append(a[i + 1:])
                    else:
                        value_next = True
                    break
                else:
                    ok = False
                    break
            if ok:
                out += parts
                continue
            value_next = False
        out.append(a)
        value_next = a in VALUE_OPTS
    return out


def shim(argv: List[str]) -> List[str]:
    """Turn zstd-style argv (no command, mode flags) into typer's `COMMAND [OPTIONS] [FILE]...`."""
    args = list(argv)
    if not args:
        if R.isatty(sys.stdin):
            _usage_exit("no input FILE and standard input is a terminal")
        return ["compress"]
    if args[0] in COMMANDS:
        return [args[0]] + _expand_short(args[1:])
    if args[0] in ("-h", "--help", "-V", "--version"):
        return args
    modes, rest, value_next, dashdash = [], [], False, False
    for a in _expand_short(args):
        if dashdash or value_next:
            rest.append(a)
            value_next = False
            continue
        if a == "--":
            dashdash = True
        elif a in MODE_FLAGS:
            modes.append(MODE_FLAGS[a])
            continue
        value_next = a in VALUE_OPTS
        rest.append(a)
    if len(set(modes)) > 1:
        _usage_exit("conflicting modes: " + ", ".join(dict.fromkeys(modes)))
    return [modes[0] if modes else "compress"] + rest
