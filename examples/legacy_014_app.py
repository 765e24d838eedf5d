"""Example: an application written for automagik-telemetry 0.1.4, unchanged.

This is how 0.1.4's README had apps configure and use the client: a ``TelemetryConfig`` naming the
ClickHouse backend, ``AutomagikTelemetry(config)`` positionally, ``track_event`` with a ``StandardEvents``
name, ``track_metric``, ``track_log`` and ``track_error``. Under 0.2 the same code sends to the host's
agent (``AUTOMAGIK_TELEMETRY_SOCKET``); the destination fields are accepted and logged once where they
live now (the agent's configuration; docs/migrating-from-0.1.md). Prints one JSON line with what it sent.
"""

from __future__ import annotations

import argparse
import json

from automagik_telemetry import AutomagikTelemetry, LogSeverity, MetricType, StandardEvents, TelemetryConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=10, help="orders to 'place' (10)")
    args = parser.parse_args()

    config = TelemetryConfig(
        project_name="legacy-shop",
        version="1.4.0",
        backend="clickhouse",
        clickhouse_endpoint="http://localhost:8123",
        clickhouse_database="telemetry",
        batch_size=50,
    )
    telemetry = AutomagikTelemetry(config)

    failed = 0
    for order in range(args.orders):
        telemetry.track_event(StandardEvents.FEATURE_USED, {"feature": "checkout", "order": order})
        telemetry.track_metric("orders.placed", 1, MetricType.COUNTER, {"shop": "main"})
        telemetry.track_metric("order.value", 10.0 + order, MetricType.GAUGE, {"shop": "main"})
        telemetry.track_log(f"order {order} placed", LogSeverity.INFO, {"order": order})
        if order % 5 == 4:
            try:
                raise ValueError(f"payment declined for order {order}")
            except ValueError as error:
                telemetry.track_error(error, {"order": order, "operation": "payment"})
                failed += 1
    delivered = telemetry.flush()
    print(
        json.dumps(
            {
                "events": args.orders,
                "errors": failed,
                "metric_points": 2 * args.orders,
                "logs": args.orders,
                "delivered": delivered,
            }
        )
    )


if __name__ == "__main__":
    main()
