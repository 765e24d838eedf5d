"""The metrics dict: what a child reports about itself, and how a sample (a name with labels) is keyed.

::

    {"counters":     {sample: number},        # cumulative since the child process started
     "gauges":       {sample: number},        # current values
     "histograms":   {name: {"bounds": [...], "counts": [... per bucket, not cumulative, last = +Inf],
                             "sum": float}},
     "info":         {name: str},             # e.g. agent_id, last_error (not all become labels)
     "max_counters": {sample: number}}        # sums of cumulative counts reported by *others* (clients)

A *sample* is a full Prometheus name, with labels in text-format syntax when it has any:
``automagik_telemetry_ingest_rejected_messages_total{reason="bad_magic"}`` (:func:`sample`).
"""

from __future__ import annotations

import re
from typing import Any

MetricsDict = dict[str, Any]

_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def sample(name: str, **labels: str) -> str:
    """The metrics-dict key of a sample: ``name`` or ``name{a="x",b="y"}``."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def parse_sample(key: str) -> tuple[str, dict[str, str]]:
    """Inverse of :func:`sample`; ValueError if ``key`` is not one."""
    name, brace, rest = key.partition("{")
    if not brace:
        return key, {}
    if not rest.endswith("}"):
        raise ValueError(f"bad sample key {key!r}")
    body, labels, pos = rest[:-1], {}, 0
    while pos < len(body):
        match = _LABEL.match(body, pos)
        if not match:
            raise ValueError(f"bad sample key {key!r}")
        labels[match.group(1)] = _unescape(match.group(2))
        pos = match.end()
    return name, labels


def empty() -> MetricsDict:
    """A metrics dict with nothing in it."""
    return {"counters": {}, "gauges": {}, "histograms": {}, "info": {}, "max_counters": {}}
