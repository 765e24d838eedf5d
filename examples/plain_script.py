"""Example: a plain script recording spans with the automagik-telemetry client.

Run it against a running agent (AUTOMAGIK_TELEMETRY_SOCKET=/path/to/agent.sock). It "imports" a few
files: a span per file with a child span per parsed chunk, a decorated function, an event, and one
failing file recorded as an error. It prints one JSON line with what it sent, so a caller can check
delivery (``automagik-telemetry query "SELECT span_name, count() FROM telemetry.traces GROUP BY 1"``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from automagik_telemetry import AutomagikTelemetry, SpanKind

telemetry = AutomagikTelemetry("example-script", "1.0.0")
sent: Counter[str] = Counter()


@telemetry.trace("checksum")
def checksum(data: bytes) -> int:
    return sum(data) % 65521


def import_file(index: int, chunks: int) -> None:
    with telemetry.span("file.import", {"file.index": index, "file.chunks": chunks}) as span:
        sent["file.import"] += 1
        for chunk in range(chunks):
            with telemetry.span("chunk.parse", {"chunk": chunk}, kind=SpanKind.INTERNAL):
                sent["chunk.parse"] += 1
                time.sleep(0.0002)
        span.set_attribute("file.checksum", checksum(bytes(range(index % 256))))
        sent["checksum"] += 1
        if index % 10 == 9:
            raise ValueError(f"file {index}: truncated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=5, help="child spans per file")
    args = parser.parse_args()
    errors = 0
    for index in range(args.files):
        try:
            import_file(index, args.chunks)
        except ValueError:
            errors += 1  # the span already recorded the exception and status ERROR
    telemetry.track_event("import.finished", {"files": args.files, "errors": errors})
    sent["import.finished"] += 1
    durable = telemetry.flush(timeout=10)  # True once every span is durable in the agent's WAL
    print(
        json.dumps(
            {"spans": sum(sent.values()), "errors": errors, "by_name": dict(sorted(sent.items())), "durable": durable}
        )
    )


if __name__ == "__main__":
    main()
