"""A fake agent for the client tests: a real ``SOCK_SEQPACKET`` listener speaking protocol v1.

Runs in a thread of the test process (``FakeAgent``), or as its own process
(``python3 fake_agent.py PATH MODE`` with ``client/`` on PYTHONPATH; prints ``ready`` once
listening) so a test can SIGSTOP it. ``pause()`` stops reading at run time, ``resume()`` restarts.

Modes:
  ``ack``        read every message; after each burst, one coalesced ACK of the highest RECORDS seq
  ``reject``     read every message; REJECT each RECORDS message with ``reject_reason``
  ``silent``     read every message, never answer
  ``no_read``    accept connections but never read them (the client's socket buffer fills up)
  ``no_accept``  listen, never accept
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from automagik_telemetry.protocol import (
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    MessageType,
    check_records_payload,
    decode_header,
    encode,
)

MODES = ("ack", "reject", "silent", "no_read", "no_accept")


@dataclass
class Received:
    """One RECORDS message as the agent saw it."""

    connection: int
    seq: int
    resource: dict[str, Any]
    records: list[dict[str, Any]]
    kind: int = 1  # RecordKind: 1 spans, 2 log records, 3 metric data points


@dataclass
class _Conn:
    number: int
    sock: socket.socket
    highest_seq: int = 0
    seqs: list[int] = field(default_factory=list)


class FakeAgent:
    """Listens at ``path`` (replacing a stale socket file) and serves it from a daemon thread."""

    def __init__(self, path: str, mode: str = "ack", reject_reason: str = "disk_full") -> None:
        if mode not in MODES:
            raise ValueError(mode)
        self.path = path
        self.mode = mode
        self.reject_reason = reject_reason
        self.messages: list[Received] = []
        self.client_stats: list[dict[str, Any]] = []
        self.connections = 0
        self.errors: list[str] = []
        self._conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._paused = threading.Event()
        if os.path.exists(path):
            os.unlink(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(path)
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        if mode != "no_accept":
            self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="fake-agent", daemon=True)
        self._thread.start()

    # -- inspection ----------------------------------------------------------------------------

    def spans(self) -> list[dict[str, Any]]:
        return self.records(1)

    def records(self, kind: int) -> list[dict[str, Any]]:
        """Every record of ``kind`` received so far, in order."""
        with self._lock:
            return [record for message in self.messages if message.kind == kind for record in message.records]

    def wait_for_spans(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` spans arrived; return them all (maybe fewer on timeout)."""
        return self.wait_for_records(1, count, timeout)

    def wait_for_records(self, kind: int, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` records of ``kind`` arrived; return them all (maybe fewer)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(len(m.records) for m in self.messages if m.kind == kind) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        return self.records(kind)

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    # -- lifecycle -----------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop reading (and accepting): like a stalled agent, the clients' socket buffers fill up."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def close(self) -> None:
        """Stop serving, close every connection and the listener, remove the socket file."""
        self._stop.set()
        self._thread.join(5)
        for conn in self._conns:
            conn.sock.close()
        self._listener.close()
        self._selector.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __enter__(self) -> FakeAgent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- serving -------------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self._paused.is_set():
                time.sleep(0.01)
                continue
            for key, _ in self._selector.select(0.02):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._read(key.data)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            with self._changed:
                self.connections += 1
                conn = _Conn(self.connections, sock)
                self._conns.append(conn)
                self._changed.notify_all()
            if self.mode != "no_read":
                self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        burst_seq = 0
        while True:
            try:
                data = conn.sock.recv(MAX_MESSAGE_SIZE + 1)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._selector.unregister(conn.sock)
                conn.sock.close()
                break
            try:
                header = decode_header(data)
                payload = data[HEADER_SIZE:]
                if header.type == MessageType.RECORDS:
                    check_records_payload(payload, header.count)
            except Exception as exc:
                with self._changed:
                    self.errors.append(repr(exc))
                continue
            with self._changed:
                conn.seqs.append(header.seq)
                if header.type == MessageType.CLIENT_STATS:
                    self.client_stats.append(json.loads(payload))
                elif header.type == MessageType.RECORDS:
                    lines = payload.decode().split("\n")[:-1]
                    if self.mode != "reject":
                        self.messages.append(
                            Received(
                                conn.number,
                                header.seq,
                                json.loads(lines[0]),
                                [json.loads(line) for line in lines[1:]],
                                header.kind,
                            )
                        )
                    burst_seq = header.seq
                self._changed.notify_all()
            if header.type == MessageType.RECORDS and self.mode == "reject":
                conn.sock.send(encode(MessageType.REJECT, self.reject_reason.encode(), seq=header.seq))
        if burst_seq and self.mode == "ack":
            with contextlib.suppress(OSError):
                conn.sock.send(encode(MessageType.ACK, seq=burst_seq))


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its final value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    agent = FakeAgent(path, mode)
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        agent.close()


if __name__ == "__main__":
    main()
