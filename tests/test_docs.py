"""The user documentation holds together: every relative link in README.md and docs/*.md
resolves (file and #anchor), the README stays short, and its set-up section names exactly two
commands that are targets of the Makefile. Pure text checks, no model."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 250

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")          # [text](target), not images
FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    h = re.sub(r"`", "", heading.strip().lower())
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not fenced:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            result.add(s if n == 0 else f"{s}-{n}")
    return result


def links(path: Path) -> list[str]:
    return LINK.findall(_prose(path.read_text(encoding="utf-8")))


def _broken(path: Path) -> list[str]:
    bad = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):       # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.is_file():
            bad.append(f"{target} (no file {dest})")
        elif anchor and anchor not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {dest.name})")
    return bad


def test_docs_exist():
    names = {p.name for p in DOCS}
    assert {"benchmarks.md", "architecture.md", "measurements.md"} <= names, names


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(path):
    assert links(path), f"{path.name} links nowhere"
    assert _broken(path) == []


def test_the_checker_sees_broken_links(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n## Second part\n[ok](#second-part) [ok2](a.md#top)\n"
                                   "[gone](missing.md) [bad](#nowhere) `[code](x.md)`\n"
                                   "```\n[fenced](y.md)\n```\n")
    assert _broken(tmp_path / "a.md") == [
        f"missing.md (no file {tmp_path / 'missing.md'})", "#nowhere (no heading #nowhere in a.md)"]
    assert slug("GPUs: the portable engine on CUDA") == "gpus-the-portable-engine-on-cuda"
    assert slug("Ratio work on short files (issue 15)") == "ratio-work-on-short-files-issue-15"


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES})"


def makefile_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_./$()-][^:=\s]*(?:\s+[^:=\s]+)*)\s*:(?!=)", line)
        if m and not line.startswith("\t"):
            targets.update(t for t in m.group(1).split() if not t.startswith("."))
    return targets


def setup_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Set-up\b.*?\n```[a-z]*\n(.*?)\n```", text, re.S | re.M)
    assert m, "README.md has no '## Set-up' section with a code block"
    lines = [ln.split("#", 1)[0].strip() for ln in m.group(1).splitlines()]
    return [ln for ln in lines if ln]


def test_makefile_targets_parse():
    t = makefile_targets()
    assert {"install", "demo", "test", "bench", "clean"} <= t, t
    assert "PY" not in t and "BIN" not in t                 # variable assignments are not targets


def test_setup_is_two_make_targets():
    cmds = setup_commands()
    assert len(cmds) == 2, cmds
    targets = makefile_targets()
    for cmd in cmds:
        words = cmd.split()
        assert words[0] == "make" and len(words) == 2, cmd
        assert words[1] in targets, f"{cmd}: no target {words[1]!r} in Makefile"
    assert cmds == ["make demo", "make test"]
