"""SIGHUP's configuration merge: which changed settings apply at once (``live`` in the settings table),
and which are only reported because they need a restart (:meth:`.supervisor.Supervisor.handle_sighup`)."""

from __future__ import annotations

import logging

from ..config import AgentConfig, changed_settings

log = logging.getLogger(__name__)


def apply_live(config: AgentConfig, new: AgentConfig) -> tuple[AgentConfig, list[str], bool]:
    """``config`` with ``new``'s live settings; the live keys that changed; whether any setting changed.

    A changed setting that is not live is logged as needing a restart, and keeps its running value.
    """
    changed = changed_settings(config, new)
    live = [s.key for s in changed if s.live]
    for s in changed:
        if not s.live:
            log.warning("%s changed: needs a restart (systemctl restart automagik-telemetry)", s.key)
    if not live:
        return config, live, bool(changed)
    values = dict(config.items())
    sources = dict(config.sources)
    for key in live:
        values[key], sources[key] = new[key], new.sources[key]
    return AgentConfig(values, sources), live, True
