"""The ingest process (the supervisor's ``ingest`` child): the WAL writer and the epoll loop on the lent socket.

Run by hand (no supervisor) it reads its own configuration and binds ``socket.path`` itself.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable

from .. import exitcodes
from ..config import AgentConfig
from ..lifecycle.run import ChildContext, run_child
from ..logs import set_level
from ..wal import WalError, WalOptions, WalWriter
from .metrics import collect_ingest
from .redact import RedactRules
from .server import IngestOptions, IngestServer, IngestSetupError

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(load: Callable[[], AgentConfig], listen_fd: int | None = None) -> int:
    """The ingest process's main; ``listen_fd`` is the listening socket inherited from the supervisor."""
    return run_child("ingest", load, lambda context: _serve(context, listen_fd))


def _serve(context: ChildContext, listen_fd: int | None) -> int:
    config, link = context.config, context.link
    servers: list[IngestServer] = []
    if link is not None:
        link.start_reporting(
            loop_age=lambda: time.monotonic() - servers[0].last_turn if servers else 0.0,
            collect=lambda: collect_ingest(servers[0]) if servers else {},
            on_config=lambda new: set_level(new["log.level"]),
        )
    wal_options = WalOptions(
        segment_bytes=config["wal.segment_size"],
        max_bytes=config["wal.max_size"],
        min_free_bytes=config["wal.min_free"],
        disk_policy=config["wal.disk_policy"],
    )
    try:
        writer = WalWriter(config["wal.dir"], wal_options).open()
    except WalError as exc:
        return context.fail(exitcodes.CONFIG, str(exc))
    except OSError as exc:
        return context.fail(exitcodes.CONFIG, f"cannot use WAL directory {config['wal.dir']}: {exc.strerror}")
    options = IngestOptions(
        socket_path=config["socket.path"],
        socket_mode=config["socket.mode"],
        max_connections=config["socket.max_connections"],
        fsync=config["wal.fsync"],
        fsync_interval_s=config["wal.fsync_interval_ms"] / 1000,
        fsync_bytes=config["wal.fsync_bytes"],
        listen_fd=listen_fd,
        redact=RedactRules.from_config(config["redact.keys"], config["redact.pii"]),
    )
    server = IngestServer(options, writer)
    try:
        server.listen()
    except IngestSetupError as exc:
        writer.close()
        return context.fail(exitcodes.CONFIG, str(exc))
    servers.append(server)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.request_stop())
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file size limit is an EFBIG error, not a kill
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the supervisor, through the channel
    try:
        server.serve_forever(on_ready=context.ready)
    except OSError as exc:
        log.critical("WAL storage failed, stopping: %s", exc)
        if link is not None:
            link.fail(f"WAL storage failed: {exc}")
        return exitcodes.IO_ERROR
    finally:
        writer.close()
    return exitcodes.OK
