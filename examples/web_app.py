"""Example: a small web app (stdlib wsgiref, so it runs anywhere) with a span per request.

A WSGI middleware wraps every request in a SERVER span ``http.request`` (method, route, status); the
handlers add child spans. ``/fail`` raises: the span records the exception and status ERROR, and the
client gets a 500. Any WSGI framework (Flask, Django, ...) takes the same middleware; the stdlib
server keeps the example free of dependencies.

    AUTOMAGIK_TELEMETRY_SOCKET=/path/to/agent.sock python examples/web_app.py --port 8000
    AUTOMAGIK_TELEMETRY_SOCKET=/path/to/agent.sock python examples/web_app.py --self-test 60

``--self-test N`` serves on a free port, sends itself N requests, stops, and prints one JSON line with
what it sent (used by the tests and as a quick check).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from automagik_telemetry import AutomagikTelemetry, SpanKind, StatusCode

telemetry = AutomagikTelemetry("example-web", "1.0.0")
ITEMS = {str(i): f"item {i}" for i in range(10)}

StartResponse = Callable[..., Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/":
        body, status = b"hello\n", "200 OK"
    elif path.startswith("/items/"):
        with telemetry.span("db.lookup", {"item.id": path.rsplit("/", 1)[-1]}, kind=SpanKind.CLIENT):
            item = ITEMS.get(path.rsplit("/", 1)[-1])
        body, status = ((item + "\n").encode(), "200 OK") if item else (b"no such item\n", "404 Not Found")
    elif path == "/fail":
        raise RuntimeError("the handler failed")
    else:
        body, status = b"not found\n", "404 Not Found"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def traced(wsgi_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """WSGI middleware: one SERVER span per request; an exception becomes a 500 and an ERROR span."""

    def middleware(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        route = "/items/{id}" if path.startswith("/items/") else path
        with telemetry.span(
            "http.request",
            {"http.method": environ.get("REQUEST_METHOD", "GET"), "http.route": route},
            kind=SpanKind.SERVER,
        ) as span:
            statuses: list[str] = []

            def record_status(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
                statuses.append(status)
                return start_response(status, headers, *exc)

            try:
                body = list(wsgi_app(environ, record_status))
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, str(exc))
                span.set_attribute("http.status_code", 500)
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
                return [b"internal error\n"]
            span.set_attribute("http.status_code", int(statuses[-1].split()[0]))
            return body

    return middleware


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:  # one line per request would drown the example's output
        pass


def self_test(requests: int) -> None:
    server = make_server("127.0.0.1", 0, traced(app), handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    paths = ["/", "/items/3", "/items/42", "/fail"]
    sent: Counter[str] = Counter()
    errors = 0
    for i in range(requests):
        path = paths[i % len(paths)]
        try:
            urllib.request.urlopen(base + path, timeout=5).read()
        except urllib.error.HTTPError as exc:
            exc.read()
        sent["http.request"] += 1
        if path.startswith("/items/"):
            sent["db.lookup"] += 1
        errors += path == "/fail"
    server.shutdown()
    thread.join()
    durable = telemetry.flush(timeout=10)
    print(
        json.dumps(
            {"spans": sum(sent.values()), "errors": errors, "by_name": dict(sorted(sent.items())), "durable": durable}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--self-test", type=int, metavar="N", help="send N requests to itself, print what was sent")
    args = parser.parse_args()
    if args.self_test is not None:
        self_test(args.self_test)
        return
    with make_server("127.0.0.1", args.port, traced(app)) as server:
        print(f"serving on http://127.0.0.1:{server.server_port} (/, /items/<id>, /fail); Ctrl-C stops")
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


if __name__ == "__main__":
    main()
