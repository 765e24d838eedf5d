"""Logging set-up for agent processes: one line per event on stderr (journald captures it)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "info", process: str = "agent") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {process}[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
