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
