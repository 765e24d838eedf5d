"""deploy/README.md stays true: its links resolve and its alert table is alerts.yml's alerts."""

from __future__ import annotations

import re

import yaml
from doc_links import broken_links

from .deploy_helpers import DEPLOY, PROMETHEUS

README = DEPLOY / "README.md"


def test_relative_links_resolve() -> None:
    for doc in (README, DEPLOY / "clickhouse" / "README.md"):
        assert broken_links(doc) == []


def test_alert_table_lists_every_alert_with_its_for_and_severity() -> None:
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\| (AutomagikTelemetry\w+) \|[^|]*\| ([^|]*) \| (\w+) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2).strip() or "0m", m.group(3))
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"]: (str(r["for"]), r["labels"]["severity"]) for g in doc["groups"] for r in g["rules"]}
    assert rows == alerts
