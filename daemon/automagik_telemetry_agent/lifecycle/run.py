"""The one start-up path of a child process (``ingest``, ``shipper``): :func:`run_child`.

Under the supervisor a child finds its channel (:func:`~.link.connect`), takes the configuration the
supervisor validated, and reports; started by hand it loads its own configuration and prints
``ready`` on stderr. Either way it logs as its own process, and a failed start ends with one line,
which the supervisor also receives as the child's last words and quotes if it gives up.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .. import exitcodes
from ..config import AgentConfig, ConfigError
from ..logs import setup_logging
from .link import SupervisorGone, SupervisorLink, connect


@dataclass
class ChildContext:
    """What a child's main function gets: its name, configuration and (under a supervisor) its link."""

    name: str
    config: AgentConfig
    link: SupervisorLink | None

    @property
    def supervised(self) -> bool:
        return self.link is not None

    def fail(self, code: int, message: str) -> int:
        """End a failed start: the supervisor quotes ``message`` when it gives up; returns ``code``."""
        if self.link is not None:
            self.link.fail(message)
        return exitcodes.die(code, message)

    def ready(self) -> None:
        """Say this child is ready: a report to the supervisor, or ``ready`` on stderr when standalone."""
        if self.link is not None:
            self.link.ready()
        else:
            print("ready", file=sys.stderr, flush=True)


def run_child(name: str, load: Callable[[], AgentConfig], main: Callable[[ChildContext], int]) -> int:
    """Start child ``name`` and run ``main`` with its context; the exit code.

    ``load`` reads the configuration when no supervisor hands one over (it may raise ConfigError). Under
    a supervisor SIGHUP is ignored: reloads arrive through the channel.
    """
    try:
        link = connect(name)
    except SupervisorGone:
        return exitcodes.FAILURE
    try:
        config = link.config if link is not None and link.config is not None else load()
    except ConfigError as exc:
        return ChildContext(name, AgentConfig({}, {}), link).fail(exitcodes.CONFIG, f"config error: {exc}")
    setup_logging(config["log.level"], name)
    if link is not None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor sends reloads through the channel
    return main(ChildContext(name, config, link))
