"""docs/metrics.md documents exactly the metrics the agent exposes, with their type and labels."""

from __future__ import annotations

import re
from pathlib import Path

from automagik_telemetry_agent.metrics.catalogue import CATALOGUE, P

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(automagik_telemetry_\w+)` \| (\w+) \|([^|]*)\|", re.MULTILINE)


def test_docs_table_lists_every_metric_with_its_type_and_labels() -> None:
    rows = {m.group(1): (m.group(2), tuple(re.findall(r"`(\w+)`", m.group(3)))) for m in ROW.finditer(DOC.read_text())}
    assert set(rows) == set(CATALOGUE), "docs/metrics.md and metrics.CATALOGUE disagree"
    for name, d in CATALOGUE.items():
        assert rows[name] == (d.kind, d.labels), name


def test_every_metric_name_the_docs_mention_exists() -> None:
    text = DOC.read_text()
    known = set(CATALOGUE) | {n[len(P) :] for n in CATALOGUE}
    mentioned = set(re.findall(r"\b(?:automagik_telemetry_)?((?:ingest|wal|shipper|client|child)_[a-z_]+)", text))
    unknown = {m for m in mentioned if m not in known and re.sub(r"_(bucket|count|sum)$", "", m) not in known}
    # wal_* / shipper_* words that are settings or files rather than metrics
    assert unknown <= {"wal_size_cap", "wal_error"}, unknown
