"""deploy/prometheus: promtool accepts the configs and rules, the alerts fire when they should (promtool unit
tests), every alert carries what an operator needs, and their runbook links and commands exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_process import run_cli
from doc_links import anchors

from .deploy_helpers import (
    AGENT_DASHBOARD,
    COMPOSE,
    LOGS_DASHBOARD,
    METRICS_DASHBOARD,
    PROMETHEUS,
    REPO,
    TRACES_DASHBOARD,
    dashboard_queries,
    grafana_promql,
    iter_panels,
    load_json,
    metric_names,
)

ALERTS = PROMETHEUS / "alerts.yml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yml")
JOB = "automagik-telemetry"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: run scripts/bootstrap.sh (it installs the Debian package prometheus)")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


def test_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    done = promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules())} rules found" in done.stdout + done.stderr


def test_compose_prometheus_layout_passes_promtool(tmp_path: Path) -> None:
    """Rebuild /etc/prometheus as compose.yaml mounts it and check that (the rule file must be found there)."""
    etc = tmp_path / "etc-prometheus"
    etc.mkdir()
    for volume in compose()["services"]["prometheus"]["volumes"]:
        source, target = volume.split(":")[:2]
        if target.startswith("/etc/prometheus/"):
            shutil.copy((COMPOSE / source).resolve(), etc / target.removeprefix("/etc/prometheus/"))
    done = promtool("check", "config", "prometheus.yml", cwd=etc)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_unit_tests_pass(tmp_path: Path) -> None:
    """tests/deploy/alerts_test.yml against alerts.yml without annotations (promtool compares them verbatim;
    `promtool check rules` above validates their templates)."""
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    done = promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_every_alert_says_how_bad_what_happened_and_what_to_do() -> None:
    names = []
    for rule in rules():
        names.append(rule["alert"])
        assert rule["alert"].startswith("AutomagikTelemetry"), rule
        assert rule["expr"].strip(), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), f"{rule['alert']}: state `for` explicitly (0m is fine)"
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and "\n" not in annotations["summary"], rule["alert"]
        assert annotations["runbook"].strip() and "\n" not in annotations["runbook"].strip(), rule["alert"]
        assert annotations["runbook_url"].startswith("docs/"), rule["alert"]
    assert len(names) == len(set(names))
    for required in (
        "AgentDown",
        "ShippingFailing",
        "BacklogGrowing",
        "BacklogOld",
        "WalDroppedSpans",
        "ClientsDroppingSpans",
        "DeadLetters",
        "SignalShippingFailing",
        "SignalNotShipped",
    ):
        assert "AutomagikTelemetry" + required in names


def test_runbook_links_point_at_existing_doc_sections() -> None:
    for rule in rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        doc = REPO / path
        assert doc.is_file(), f"{rule['alert']}: {path} does not exist"
        assert anchor in anchors(doc), f"{rule['alert']}: no section #{anchor} in {path}"


def test_commands_named_in_runbooks_exist() -> None:
    commands = set()
    for rule in rules():
        for text in re.findall(r"`([^`]+)`", rule["annotations"]["runbook"]):
            m = re.match(r"automagik-telemetry((?:\s+[a-z][a-z-]*)+)", text)
            if m:
                commands.add(tuple(m.group(1).split()))
    assert commands, "the runbooks name no automagik-telemetry command"
    for words in sorted(commands):
        done = run_cli(*words, "--help")
        assert done.returncode == 0, f"`automagik-telemetry {' '.join(words)}` does not exist: {done.stderr}"


def test_job_name_matches_between_scrape_configs_alerts_and_dashboard() -> None:
    for path in (PROMETHEUS / "prometheus.yml", COMPOSE / "prometheus.yml"):
        config = yaml.safe_load(path.read_text())
        assert [job["job_name"] for job in config["scrape_configs"]] == [JOB], path
        assert config["rule_files"] == ["alerts.yml"], path
    jobs = set(re.findall(r'job\s*=~?\s*"([^"]*)"', "\n".join(rule["expr"] for rule in rules())))
    assert jobs == {JOB}


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Every expression of the agent dashboard, with Grafana's variables filled in, as recording rules:
    `promtool check rules` parses each one."""
    queries = [
        q for q in dashboard_queries(load_json(AGENT_DASHBOARD), "expr") if not q.text.startswith("label_values")
    ]
    assert len(queries) > 20
    doc = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": grafana_promql(q.text)} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(doc))
    done = promtool("check", "rules", str(tmp_path / "dashboard.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_agent_dashboard_reads_prometheus_through_the_datasource_variable_and_covers_the_essentials() -> None:
    dashboard = load_json(AGENT_DASHBOARD)
    (ds,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    used: set[str] = set()
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        for thing in (panel, *panel["targets"]):
            assert thing["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            used |= metric_names(target["expr"])
    essentials = {
        "ingest_spans_received_total",
        "wal_unshipped_bytes",
        "wal_oldest_unshipped_age_seconds",
        "shipper_rows_total",
        "shipper_retries_total",
        "shipper_insert_failures_total",
        "wal_dropped_spans_total",
        "client_dropped_spans_total",
        "shipper_dead_lettered_rows_total",
        "child_up",
        "ingest_items_received_total",
        "shipper_signal_rows_total",
        "shipper_signal_consecutive_failures",
        "shipper_signal_last_success_timestamp_seconds",
        "shipper_signal_dead_lettered_rows_total",
    }
    assert {"automagik_telemetry_" + e for e in essentials} <= used


def test_dashboards_have_unique_uids_and_panel_ids() -> None:
    uids = []
    for path in (AGENT_DASHBOARD, TRACES_DASHBOARD, LOGS_DASHBOARD, METRICS_DASHBOARD):
        dashboard = load_json(path)
        uids.append(dashboard["uid"])
        ids = [p["id"] for p in iter_panels(dashboard)]
        assert len(ids) == len(set(ids)), path.name
        assert dashboard["id"] is None  # importable into any Grafana
        for panel in iter_panels(dashboard):
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, (path.name, panel["title"])
    assert len(set(uids)) == len(uids)
