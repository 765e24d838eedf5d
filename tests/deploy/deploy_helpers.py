"""What the deploy tests share: paths, the dashboards' queries, a Grafana/ClickHouse-plugin interpolator and
a PromQL reader small enough to trust.

The interpolator does what Grafana and grafana-clickhouse-datasource do to a panel's SQL before ClickHouse
sees it, for the subset the dashboards use (anything else raises, so a new macro or variable format has to be
taught here on purpose):

* template variables first (Grafana's frontend): ``${name}``, ``$name`` and ``${name:singlequote}``; a
  multi-value variable set to "All" with a custom ``allValue`` is replaced by that value *unformatted*
  (Grafana skips formatting of custom all values), otherwise by every value;
* then the plugin's macros (its pkg/macros/macros.go): ``$__timeFilter(col)`` ->
  ``col >= toDateTime(FROM) AND col <= toDateTime(TO)``, ``$__interval_s`` -> the interval in whole
  seconds, ``$__fromTime`` / ``$__toTime`` -> ``toDateTime(N)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
GRAFANA = DEPLOY / "grafana"
TRACES_DASHBOARD = GRAFANA / "dashboards" / "automagik-telemetry-traces.json"
AGENT_DASHBOARD = GRAFANA / "dashboards" / "automagik-telemetry-agent.json"
LOGS_DASHBOARD = GRAFANA / "dashboards" / "automagik-telemetry-logs.json"
METRICS_DASHBOARD = GRAFANA / "dashboards" / "automagik-telemetry-metrics.json"
PROMETHEUS = DEPLOY / "prometheus"
COMPOSE = DEPLOY / "compose"
USERS = DEPLOY / "clickhouse" / "users"
PREFIX = "automagik_telemetry_"

#: The value Grafana stores for "All" in a multi-value variable.
ALL = "$__all"


def load_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Query:
    """One query of a dashboard: a panel target or a variable's query."""

    where: str  # "panel 'Title' target A" or "variable service"
    text: str  # rawSql or expr
    panel: dict[str, Any] | None = None
    target: dict[str, Any] | None = None


def dashboard_queries(dashboard: Mapping[str, Any], field: str) -> list[Query]:
    """Every ``field`` ("rawSql" or "expr") of the panels' targets and of the query variables."""
    out = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get(field):
                out.append(
                    Query(f"panel {panel['title']!r} target {target.get('refId')}", target[field], panel, target)
                )
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]
            text = query.get("rawSql" if field == "rawSql" else "query") if isinstance(query, dict) else query
            if text:
                out.append(Query(f"variable {var['name']}", text))
    return out


def variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


# ------------------------------------------------------------------------------------------ interpolation
class InterpolationError(AssertionError):
    pass


_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)")
_MACRO = re.compile(r"\$__(\w+)(?:\(([^()]*)\))?")


def _singlequote(value: str) -> str:
    """Grafana's ``singlequote`` format: quotes escaped with a backslash, nothing else."""
    return "'" + value.replace("'", "\\'") + "'"


def interpolate(
    sql: str,
    dashboard: Mapping[str, Any],
    values: Mapping[str, str | Sequence[str]],
    time_from: int,
    time_to: int,
    interval_s: int,
) -> str:
    """``sql`` as ClickHouse receives it when the dashboard's variables hold ``values`` (a list, or ALL)."""
    defs = variables(dashboard)

    def variable(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        fmt = m.group(2)
        if name not in defs:
            raise InterpolationError(f"{name!r} is not a variable of the dashboard (in {sql!r})")
        if name not in values:
            raise InterpolationError(f"the test gave no value for variable {name!r}")
        value = values[name]
        d = defs[name]
        if value == ALL:
            if not d.get("includeAll"):
                raise InterpolationError(f"variable {name!r} has no All option")
            if d.get("allValue"):
                return str(d["allValue"])  # Grafana does not format a custom all value
            raise InterpolationError(f"variable {name!r}: All without allValue needs every value; give them")
        items = [value] if isinstance(value, str) else list(value)
        if fmt == "singlequote":
            return ",".join(_singlequote(v) for v in items)
        if fmt is not None:
            raise InterpolationError(f"format {fmt!r} of {name!r} is not taught to the test")
        if len(items) != 1:
            raise InterpolationError(f"{name!r} is multi-valued but used without a format")
        return items[0]

    def macro(m: re.Match[str]) -> str:
        name, arg = m.group(1), m.group(2)
        if name == "timeFilter" and arg:
            col = arg.strip()
            return f"{col} >= toDateTime({time_from}) AND {col} <= toDateTime({time_to})"
        if name == "interval_s" and arg is None:
            return str(max(int(interval_s), 1))
        if name in ("fromTime", "toTime") and arg is None:
            return f"toDateTime({time_from if name == 'fromTime' else time_to})"
        raise InterpolationError(f"macro $__{name} is not taught to the test (in {sql!r})")

    text = _VARIABLE.sub(variable, sql)
    text = _MACRO.sub(macro, text)
    if "$" in text:
        raise InterpolationError(f"left over after interpolation: {text!r}")
    return text


# ------------------------------------------------------------------------------------------------ PromQL
_METRIC = re.compile(r"\b(" + PREFIX + r"[A-Za-z0-9_]+)\b")
_SELECTOR = re.compile(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def metric_names(expr: str) -> set[str]:
    """Every ``automagik_telemetry_*`` identifier in a PromQL expression (string literals excluded)."""
    return set(_METRIC.findall(_STRING.sub('""', expr)))


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """``[(metric, [(label, op, value), ...]), ...]`` for every ``metric{...}`` in ``expr``."""
    out = []
    for m in _SELECTOR.finditer(expr):
        body, matchers, pos = m.group(2), [], 0
        while pos < len(body):
            mm = _MATCHER.match(body, pos)
            if mm is None:
                raise AssertionError(f"cannot read the label matchers {body!r} in {expr!r}")
            matchers.append((mm.group(1), mm.group(2), mm.group(3)))
            pos = mm.end()
        out.append((m.group(1), matchers))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Label names in ``by (...)``, ``without (...)``, ``on (...)`` ... clauses."""
    labels: set[str] = set()
    for m in _GROUPING.finditer(expr):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return labels


def legend_labels(legend: str) -> set[str]:
    return set(_LEGEND.findall(legend or ""))


def grafana_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced by values Prometheus accepts."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$job", ".*")
        .replace("$instance", ".*")
    )
