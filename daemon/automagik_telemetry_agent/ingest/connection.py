"""One client connection of the ingest server: its socket, and what it is still owed.

``pending`` holds the RECORDS messages appended to the WAL and not yet acknowledged, in order;
``outbox`` the REJECTs not sent yet (they must reach the client before any later ACK); ``ack_owed`` a
cumulative ACK that could not be sent because the client is not reading. :mod:`.replies` keeps them.
"""

from __future__ import annotations

import socket
from collections import deque


class Connection:
    __slots__ = ("ack_owed", "acked", "outbox", "peer_pid", "pending", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending: deque[tuple[int, int, int, int]] = deque()  # (wal_seq, msg_seq, items, kind), in order
        self.ack_owed = 0  # an ACK that could not be sent yet (client not reading)
        self.outbox: deque[bytes] = deque()  # REJECTs not sent yet: they must reach the client before any ACK
        self.acked = 0
        self.peer_pid = 0

    def send(self, message: bytes) -> bool:
        """Send one message without blocking; False if it was not sent."""
        try:
            self.sock.send(message)
            return True
        except (BlockingIOError, InterruptedError):
            return False  # the client is not reading; an ACK is retried, a REJECT is best effort
        except OSError:
            return False
