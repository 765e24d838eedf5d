"""Every metric the dashboards and alerts use is one the agent really exposes, with the labels they assume.

The exposed names come from a real exposition, not from a list: a real IngestServer and WalWriter take real
client traffic, a real Shipper ships it to the test ClickHouse, and metrics.AgentMetrics merges what
collect_ingest/collect_shipper report, exactly as the supervisor does, into the text a scrape returns. In
a second test, the same checks run on a real `automagik-telemetry agent`'s /metrics.

Checked for every PromQL expression of deploy/grafana/dashboards/automagik-telemetry-agent.json and
deploy/prometheus/alerts.yml: each ``automagik_telemetry_*`` name is an exposed sample name (histograms as
``_bucket``/``_sum``/``_count``, counters with ``_total``); each label a selector matches on exists on that
metric and, for ``=`` matchers, has that value; every ``by (...)`` label and every ``{{label}}`` of a legend
exists on the metrics the expression reads (or is a target label Prometheus adds: job, instance).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_process import AgentProcess, run_cli, wait_until
from metrics.traffic import scrape, send_known_traffic
from prometheus_client.parser import text_string_to_metric_families
from shipper.shipper_helpers import ShipperThread, apply_schema, fast_options, make_sink, span, write_wal

from automagik_telemetry_agent.clickhouse.failover import FailoverSink
from automagik_telemetry_agent.clickhouse.load import sample_load
from automagik_telemetry_agent.ingest.metrics import collect_ingest
from automagik_telemetry_agent.ingest.otlp.dedup import DurableParts
from automagik_telemetry_agent.ingest.otlp.forward import IngestLink
from automagik_telemetry_agent.ingest.otlp.http import HttpOptions, HttpServer
from automagik_telemetry_agent.ingest.otlp.metrics import collect_otlp
from automagik_telemetry_agent.ingest.otlp.receiver import Receiver
from automagik_telemetry_agent.ingest.server import IngestOptions, IngestServer
from automagik_telemetry_agent.metrics.catalogue import CATALOGUE
from automagik_telemetry_agent.metrics.exposition import AgentMetrics
from automagik_telemetry_agent.shipper.insert_policy import InsertPolicy, PolicyMode, PolicySettings
from automagik_telemetry_agent.shipper.loop import Shipper
from automagik_telemetry_agent.shipper.metrics import collect_shipper
from automagik_telemetry_agent.wal import WalOptions, WalWriter, read_cursor

from .deploy_helpers import (
    AGENT_DASHBOARD,
    PREFIX,
    PROMETHEUS,
    dashboard_queries,
    grouping_labels,
    legend_labels,
    load_json,
    metric_names,
    selectors,
)

pytestmark = pytest.mark.clickhouse
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series

#: {sample name: {label: {values}}} of an exposition.
Exposed = dict[str, dict[str, set[str]]]


def exposed(text: str) -> Exposed:
    out: Exposed = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = out.setdefault(s.name, {})
            for k, v in s.labels.items():
                labels.setdefault(k, set()).add(v)
    return out


def used_expressions() -> list[tuple[str, str, str]]:
    """``(where, expr, legend)`` of every PromQL expression in the agent dashboard and the alert rules."""
    out = [
        (q.where, q.text, (q.target or {}).get("legendFormat", ""))
        for q in dashboard_queries(load_json(AGENT_DASHBOARD), "expr")
    ]
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            out.append((f"alert {rule['alert']}", rule["expr"], ""))
    return out


def problems(samples: Exposed) -> list[str]:
    """What the dashboards and alerts use that ``samples`` do not have (empty = all is well)."""
    found = []
    for where, expr, legend in used_expressions():
        names = metric_names(expr)
        available = set(TARGET_LABELS)
        for name in names:
            if name not in samples:
                found.append(f"{where}: {name} is not exposed")
                continue
            available |= set(samples[name])
        for name, matchers in selectors(expr):
            if not name.startswith(PREFIX) or name not in samples:
                continue
            for label, op, value in matchers:
                if label in TARGET_LABELS:
                    continue
                if label not in samples[name]:
                    found.append(f"{where}: {name} has no label {label!r}")
                elif op == "=" and value not in samples[name][label]:
                    found.append(
                        f"{where}: {name}{{{label}={value!r}}} never occurs (values: {sorted(samples[name][label])})"
                    )
        if names:
            for label in (grouping_labels(expr) | legend_labels(legend)) - available:
                found.append(f"{where}: label {label!r} is not on {sorted(names)}")
    return found


# -------------------------------------------------------------------------------------- the exposition
@pytest.fixture(scope="module")
def exposition(clickhouse: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The /metrics text of an AgentMetrics fed by a real ingest (with traffic) and a real shipper (that
    shipped it to the 18.16 test server)."""
    tmp = tmp_path_factory.mktemp("exposition")
    wal_dir = tmp / "wal"
    sock_dir = tempfile.mkdtemp(prefix="at-deploy-", dir="/tmp")  # AF_UNIX paths are short
    metrics = AgentMetrics()
    writer = WalWriter(str(wal_dir), WalOptions(min_free_bytes=0)).open()
    server = IngestServer(IngestOptions(socket_path=os.path.join(sock_dir, "agent.sock")), writer)
    server.listen()
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="deploy-ingest")
    thread.start()
    try:
        send_known_traffic(server.options.socket_path, valid=20)
        metrics.observe("ingest", 1001, collect_ingest(server))
    finally:
        server.request_stop()
        thread.join(10)
        writer.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    last = write_wal(wal_dir, [[span(5000), b"{not json", span(5001)]])[-1]  # one dead letter
    database = f"deploy_metrics_{os.getpid()}"
    clickhouse.query(f"CREATE DATABASE IF NOT EXISTS {database}")
    try:
        apply_schema(clickhouse, database)
        # Through a failover sink (its endpoint metrics) and under the fleet policy fed two real readings of
        # the server (its gauges appear from the second one on).
        sink = FailoverSink([make_sink(clickhouse, database)])
        policy = InsertPolicy(PolicySettings(PolicyMode.FLEET))
        shipper = Shipper(str(wal_dir), sink, fast_options(tmp), policy=policy)
        with ShipperThread(shipper) as t:
            wait_until(lambda: read_cursor(str(wal_dir)).seq == last, 30, message="the WAL shipped")
            t.stop()
        for at in (0.0, 1.0):
            reading = sample_load(sink)
            assert reading is not None and not reading.slow
            policy.observe(at, reading)
        metrics.observe("shipper", 1002, collect_shipper(shipper, sink))
        http = HttpServer(HttpOptions(), Receiver(IngestLink(server.options.socket_path), DurableParts()))
        metrics.observe("otlp", 1003, collect_otlp(http, http.handler, DurableParts()))  # type: ignore[arg-type]
        yield metrics.exposition()
    finally:
        metrics.close()
        clickhouse.ensure_running()
        clickhouse.query(f"DROP DATABASE IF EXISTS {database}")


def test_the_exposition_covers_the_whole_catalogue(exposition: str) -> None:
    """Guards the fixture itself: if a metric only appears after an event, the traffic above must cause it."""
    samples = exposed(exposition)
    for name, d in CATALOGUE.items():
        expected = [name + s for s in ("_bucket", "_sum", "_count")] if d.kind == "histogram" else [name]
        for sample in expected:
            assert sample in samples, f"{sample} missing from the exposition"


def test_dashboards_and_alerts_use_only_exposed_metrics_and_labels(exposition: str) -> None:
    samples = exposed(exposition)
    used = set().union(*(metric_names(expr) for _, expr, _ in used_expressions()))
    assert len(used) >= 25, sorted(used)
    assert problems(samples) == []


def test_the_check_catches_a_renamed_metric_and_a_wrong_label(exposition: str) -> None:
    """The check above can fail: remove one metric, or one label value, and it reports exactly that."""
    samples = exposed(exposition)
    broken = {k: v for k, v in samples.items() if k != PREFIX + "wal_unshipped_bytes"}
    assert any("wal_unshipped_bytes is not exposed" in p for p in problems(broken))
    broken = {k: dict(v) for k, v in samples.items()}
    broken[PREFIX + "shipper_insert_failures_total"]["class"] = {"transient", "bad_data"}
    assert any("class='config'" in p for p in problems(broken))
    broken = {k: dict(v) for k, v in samples.items()}
    del broken[PREFIX + "wal_dropped_spans_total"]["reason"]
    assert any("label 'reason'" in p or "no label 'reason'" in p for p in problems(broken))


def test_a_running_agent_exposes_what_dashboards_and_alerts_use(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    with AgentProcess(
        tmp_path,
        metrics_listen="127.0.0.1:0",
        sink="clickhouse",
        clickhouse_endpoint=clickhouse.url,
        database=clickhouse_db,
        batch_wait="200ms",
    ).start() as agent:

        def status() -> dict[str, Any]:
            done = run_cli("status", "--json", "--config", agent.config_path, "--socket", agent.socket_path)
            return json.loads(done.stdout) if done.returncode == 0 else {}

        port = wait_until(
            lambda: (status().get("metrics") or {}).get("metrics_port"),
            20,
            message="status --json to show the metrics port",
        )
        t = send_known_traffic(agent.socket_path, valid=10)

        def shipped() -> Any:
            samples = scrape(port)
            rows = samples.get((PREFIX + "shipper_rows_total", frozenset()), 0)
            return samples if rows == t.spans else None

        wait_until(shipped, 30, interval=0.2, message="the spans shipped, in the scrape")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    assert problems(exposed(text)) == []
