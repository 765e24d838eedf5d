"""deploy/README.md stays true: its links resolve and its alert table is alerts.yml's alerts."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .deploy_helpers import DEPLOY, PROMETHEUS

README = DEPLOY / "README.md"


def _anchors(path: Path) -> set[str]:
    out = set()
    for line in path.read_text().splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_relative_links_resolve() -> None:
    for doc in (README, DEPLOY / "clickhouse" / "README.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            assert resolved.exists(), f"{doc.name}: link {target} points nowhere"
            if anchor:
                assert anchor in _anchors(resolved), f"{doc.name}: no section #{anchor} in {resolved.name}"


def test_alert_table_lists_every_alert_with_its_for_and_severity() -> None:
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\| (AutomagikTelemetry\w+) \|[^|]*\| ([^|]*) \| (\w+) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2).strip() or "0m", m.group(3))
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"]: (str(r["for"]), r["labels"]["severity"]) for g in doc["groups"] for r in g["rules"]}
    assert rows == alerts
