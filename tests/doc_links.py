"""Relative Markdown links and their #anchors: every doc test checks its pages' links the same way."""

from __future__ import annotations

import re
from pathlib import Path

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"#{1,6}\s+(.*)")


def anchors(path: Path) -> set[str]:
    """GitHub-style anchors of the headings in ``path``."""
    out = set()
    for line in path.read_text().splitlines():
        m = _HEADING.match(line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def broken_links(doc: Path) -> list[str]:
    """Every relative link in ``doc`` that points at no file, or at a section its target lacks."""
    broken = []
    for target in _LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        if not resolved.exists():
            broken.append(f"{doc.name}: link {target} points nowhere")
        elif anchor and anchor not in anchors(resolved):
            broken.append(f"{doc.name}: link {target}: no section #{anchor} in {resolved.name}")
    return broken
