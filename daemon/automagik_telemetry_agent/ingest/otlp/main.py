"""The ``otlp`` child of the supervisor: serve OTLP/HTTP on the listening sockets the supervisor lends it.

Why a process of its own and not a thread of ingest: decoding protobuf and JSON costs CPU per item
(ingest's per-message cost is a header check and a line count), and in its own process it runs on
another core beside ingest instead of taking ingest's GIL; a crash or a hang of the HTTP side never
stops the Python clients' socket path; and it is a client of ingest like any other, so "200 means
durable" rests on the same ACK as the socket protocol. The supervisor owns the listening sockets, so
exporters that connect while the receiver restarts wait in the backlog (docs/otlp.md).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from ... import exitcodes
from ...config import AgentConfig
from ...lifecycle.run import ChildContext, run_child
from ...logs import set_level
from .dedup import DurableParts
from .forward import IngestLink
from .http import HttpOptions, HttpServer
from .metrics import collect_otlp
from .receiver import Receiver

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(load: Callable[[], AgentConfig], listen_fds: list[int]) -> int:
    return run_child("otlp", load, lambda context: _serve(context, listen_fds))


def tls_context(config: AgentConfig) -> ssl.SSLContext | None:
    """The server TLS context of ``otlp.tls_cert``/``otlp.tls_key``, or None for plain HTTP."""
    if not config["otlp.tls_cert"]:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config["otlp.tls_cert"], config["otlp.tls_key"])
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(
            f"cannot use otlp.tls_cert {config['otlp.tls_cert']} with otlp.tls_key {config['otlp.tls_key']}: {why}"
        ) from None
    return context


def read_token(config: AgentConfig) -> str:
    """The bearer token of ``otlp.token_file`` (surrounding whitespace removed), or ""."""
    path = config["otlp.token_file"]
    if not path:
        return ""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read otlp.token_file {path}: {exc.strerror}") from None
    if not token:
        raise ValueError(f"otlp.token_file {path} is empty")
    return token


def check_files(config: AgentConfig) -> str:
    """What is wrong with ``otlp.token_file`` or the TLS files, or "" (the agent checks before it starts)."""
    try:
        read_token(config)
        tls_context(config)
    except (OSError, ValueError, ssl.SSLError) as exc:
        return f"OTLP receiver: {exc}"
    return ""


def http_options(config: AgentConfig, token: str) -> HttpOptions:
    return HttpOptions(
        max_connections=config["otlp.max_connections"],
        max_body=config["otlp.max_body"],
        max_buffered=config["otlp.max_buffered"],
        idle_timeout_s=config["otlp.idle_timeout"],
        header_timeout_s=config["otlp.header_timeout"],
        body_timeout_s=config["otlp.body_timeout"],
        token=token,
    )


def _serve(context: ChildContext, listen_fds: list[int]) -> int:
    config = context.config
    try:
        token = read_token(config)
        tls = tls_context(config)
    except (OSError, ValueError, ssl.SSLError) as exc:
        return context.fail(exitcodes.CONFIG, f"OTLP receiver: {exc}")
    sockets = [socket.socket(fileno=fd) for fd in listen_fds]
    if not sockets:
        return context.fail(
            exitcodes.CONFIG, "OTLP receiver: no listening socket (otlp.listen and otlp.unix_path are off)"
        )
    return asyncio.run(_main(context, sockets, token, tls))


async def _main(context: ChildContext, sockets: list[socket.socket], token: str, tls: ssl.SSLContext | None) -> int:
    config, link = context.config, context.link
    wal_dir = config["wal.dir"]
    durable = DurableParts()

    def reload_durable() -> None:
        started = time.monotonic()
        found = durable.load_wal(wal_dir)
        log.info(
            "OTLP request parts found in the newest WAL segments: %d (%.0f ms)",
            found,
            1000 * (time.monotonic() - started),
        )

    ingest = IngestLink(config["socket.path"], on_connect=reload_durable)
    receiver = Receiver(ingest, durable, ack_timeout_s=config["otlp.ack_timeout"])
    server = HttpServer(http_options(config, token), receiver)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    beat = [time.monotonic()]

    async def heartbeat() -> None:  # the loop's own progress: a wedged event loop stops it
        while True:
            beat[0] = time.monotonic()
            await asyncio.sleep(0.25)

    beating = loop.create_task(heartbeat())
    if link is not None:
        link.start_reporting(
            loop_age=lambda: time.monotonic() - beat[0],
            collect=lambda: collect_otlp(server, receiver, durable),
            on_config=lambda new: set_level(new["log.level"]),
        )
    for sock in sockets:
        await server.serve(sock, ssl=tls)
    context.ready()
    await stop.wait()
    log.info("stopping: answering the requests in progress, then closing")
    await server.close(grace_s=min(10.0, config["otlp.ack_timeout"]))
    ingest.close()
    beating.cancel()
    return exitcodes.OK
