"""Relative links in Markdown that lead nowhere: a file not there, or an anchor no heading of
the target makes (GitHub's rule: lower case, punctuation dropped, spaces to hyphens, a
repeated heading numbered -1, -2, ...)."""

from __future__ import annotations

import re
from pathlib import Path

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(md: Path) -> set[str]:
    """The anchors the headings of ``md`` make (outside code blocks)."""
    out: set[str] = set()
    seen: dict[str, int] = {}
    for line in _FENCE.sub("", md.read_text(encoding="utf-8")).splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(files: list[Path]) -> list[str]:
    """'FILE: LINK (why)' for each relative link of ``files`` that leads nowhere."""
    bad = []
    for md in files:
        for link in _LINK.findall(_FENCE.sub("", md.read_text(encoding="utf-8"))):
            if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:, file: ...
                continue
            path, _, anchor = link.partition("#")
            target = md.parent / path if path else md
            if not target.exists():
                bad.append(f"{md}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                bad.append(f"{md}: {link} (no such heading)")
    return bad


# `test_x.py::test_y`, then `::test_z` of the same file; a bare `test_x.py` sets the file too
_TEST_REF = re.compile(r"(test_[a-z0-9_]+\.py)|::(test_\w+)")


def missing_tests(files: list[Path], tests_dir: Path) -> list[str]:
    """'FILE:LINE: REF' for each test the docs name as a claim's proof that is not there: a
    file not in ``tests_dir``, or a test function (or class) not defined in the file named
    last before it in its paragraph (or table row). A renamed or moved test left its claim
    without proof."""
    import ast

    defined: dict[str, set[str]] = {}
    for f in tests_dir.glob("test_*.py"):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        defined[f.name] = {n.name for n in ast.walk(tree) if isinstance(
            n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    bad = []
    for md in files:
        current: str | None = None
        for number, line in enumerate(md.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.startswith("|"):
                current = None  # a new paragraph or table row names its own file
            for m in _TEST_REF.finditer(line):
                where = f"{md.name}:{number}"
                if m[1]:
                    current = m[1]
                    if current not in defined:
                        bad.append(f"{where}: {current} (no such file in tests/)")
                elif current is None:
                    bad.append(f"{where}: ::{m[2]} (no file named before it)")
                elif current in defined and m[2] not in defined[current]:
                    bad.append(f"{where}: {current}::{m[2]} (not defined there)")
    return bad
