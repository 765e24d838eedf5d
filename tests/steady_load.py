"""A steady load of spans into a real agent's socket, from a thread (shared by the outage and failover tests)."""

from __future__ import annotations

import threading
import time

from agent_process import RawClient
from shipper.shipper_helpers import RESOURCE, span

RATE = 250  # spans per second, 5 per message


class SteadyLoad:
    """Spans into the agent's socket at ``rate`` per second (``per_message`` per RECORDS message), each with
    its own span id, from a thread; ACKs are read as they come. :meth:`stop` waits for the last ACK."""

    def __init__(self, socket_path: str, rate: int = RATE, per_message: int = 5, first: int = 0) -> None:
        self.client = RawClient(socket_path, timeout=10)
        self.interval = per_message / rate
        self.per_message = per_message
        self.next_span = first
        self.seq = 0
        self.sent = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="steady-load")

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()

    def _run(self) -> None:
        deadline = time.monotonic()
        try:
            while not self._stop.is_set():
                lines = [span(self.next_span + k) for k in range(self.per_message)]
                self.seq += 1
                self.client.send_records(lines, seq=self.seq, resource=RESOURCE)
                self.next_span += self.per_message
                self.sent += self.per_message
                self.client.drain(timeout=0)
                deadline += self.interval
                self._stop.wait(max(0.0, deadline - time.monotonic()))
        except BaseException as exc:  # surfaced by stop()
            self._error = exc

    def stop(self, ack_timeout: float = 20.0) -> int:
        """Stop sending; every span sent is acknowledged (asserted); the number sent."""
        self._stop.set()
        self._thread.join(10)
        if self._error is not None:
            raise self._error
        assert self.client.wait_ack(self.seq, timeout=ack_timeout), f"ACK of message {self.seq} missing"
        return self.sent
