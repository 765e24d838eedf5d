"""docs/architecture.md's module tables name every module of the tree, and only modules that exist; the
daemon's top level stays small."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = {"Client": ROOT / "client" / "automagik_telemetry", "Agent": ROOT / "daemon" / "automagik_telemetry_agent"}


def _tables() -> dict[str, set[str]]:
    """The modules each section's table names (``config/`` with its files in parentheses counts for them)."""
    named: dict[str, set[str]] = {}
    section = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"### (Client|Agent):", line)
        if heading:
            section = heading.group(1)
            named[section] = set()
        elif line.startswith("## "):
            section = None
        elif section and line.startswith("| `"):
            first_cell = line.split("|")[1]
            paths = re.findall(r"`([^`]+)`", first_cell)
            package = next((p for p in paths if p.endswith("/")), None)
            for path in paths:
                if path.endswith("/"):
                    continue
                named[section].add(f"{package}{path}" if package and "/" not in path else path)
    return named


def _tree(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "__pycache__" not in p.parts
        and p.name not in ("__main__.py",)
        and not (p.name == "__init__.py" and p.parent != root and len(p.read_text(encoding="utf-8")) < 1000)
        and not (p.name == "__init__.py" and p.parent == root)
    }


def test_the_module_tables_name_every_module_and_only_modules_that_exist() -> None:
    tables = _tables()
    assert set(tables) == set(PACKAGES)
    for section, root in PACKAGES.items():
        tree = _tree(root)
        assert tables[section] - tree == set(), f"{section}: the table names modules that do not exist"
        assert tree - tables[section] == set(), f"{section}: modules missing from docs/architecture.md"


def test_the_daemon_top_level_holds_at_most_ten_modules_besides_its_packages() -> None:
    top = [p.name for p in PACKAGES["Agent"].glob("*.py")]
    assert len(top) <= 10, sorted(top)


def test_no_document_points_outside_the_repository() -> None:
    for doc in [
        *ROOT.joinpath("docs").glob("*.md"),
        *PACKAGES["Agent"].rglob("*.py"),
        *PACKAGES["Client"].rglob("*.py"),
    ]:
        text = doc.read_text(encoding="utf-8")
        assert "/work/" not in text and "../shared" not in text, doc
