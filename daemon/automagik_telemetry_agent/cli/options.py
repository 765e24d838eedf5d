"""What every command shares: the setting flags it accepts (only those it uses) and loading its configuration.

Each command names the settings it accepts as flags as a :data:`Scope`; its ``--help`` lists exactly those.
Commands that read only where the data went (``query``, ``schema apply``) take the sink's settings; the
agent, its children and the operator's commands about a running agent (``status``, ``doctor``,
``send-test``, ``dead-letter``, ``config check``) take every setting, so the flags that started an agent
also find it. Every setting can still come from the TOML file and the environment whatever the command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .. import exitcodes
from ..config import SETTINGS, AgentConfig, ConfigError, load_config

#: The keys of the settings a command uses.
Scope = frozenset[str]
#: A command's function: the parsed arguments -> exit code.
Command = Callable[[argparse.Namespace], int]
#: argparse's ``add_subparsers()`` result (its class is private to argparse).
Subparsers = Any


def scope(*prefixes: str) -> Scope:
    """The settings whose key is one of ``prefixes`` or starts with one ending in ``.``."""
    return frozenset(
        s.key for s in SETTINGS if any(s.key == p or (p.endswith(".") and s.key.startswith(p)) for p in prefixes)
    )


ALL = scope(*(s.key for s in SETTINGS))
SINK = scope("sink", "embedded.", "clickhouse.")
#: The agent's own flags: the agent, its children, and the commands about a running agent.
AGENT = ALL


def add_setting_flags(parser: argparse.ArgumentParser, keys: Scope = ALL) -> None:
    """``--config`` and the flag of every setting in ``keys`` (in the settings table's order)."""
    parser.add_argument("--config", help="TOML config file (default /etc/automagik-telemetry/agent.toml if present)")
    for setting in SETTINGS:
        if setting.key in keys:
            parser.add_argument(
                setting.flag_name,
                dest="setting:" + setting.key,
                default=None,
                metavar="VALUE",
                help=f"{setting.help} [env {setting.env_name}]",
            )


def flags(args: argparse.Namespace) -> dict[str, object]:
    """The settings given as flags: ``{key: value}``."""
    return {k.split(":", 1)[1]: v for k, v in vars(args).items() if k.startswith("setting:")}


def loader(args: argparse.Namespace) -> Callable[[], AgentConfig]:
    """Loads this command's configuration (file, env, its flags) when called; ConfigError if invalid."""
    given = flags(args)
    return lambda: load_config(args.config, given)


def load(args: argparse.Namespace) -> AgentConfig | int:
    """The configuration, or the exit code after saying (one line) why it is invalid."""
    try:
        return loader(args)()
    except ConfigError as exc:
        return exitcodes.die(exitcodes.CONFIG, f"config error: {exc}")
