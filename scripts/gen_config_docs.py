#!/usr/bin/env python3
"""Print the agent settings table of docs/configuration.md from the code's SETTINGS.

    PYTHONPATH=client:daemon python3 scripts/gen_config_docs.py

Paste the output between the "generated" markers of docs/configuration.md whenever
``daemon/automagik_telemetry_agent/config.py`` changes.
"""

from __future__ import annotations

import os
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "client"), os.path.join(ROOT, "daemon")]

from automagik_telemetry_agent.config import (  # noqa: E402
    SETTINGS,
    Setting,
    parse_bool,
    parse_duration,
    parse_mode,
    parse_size,
)

_BINARY_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def _size_text(value: int) -> str:
    for unit, factor in _BINARY_UNITS:
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def _duration_text(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def _default_text(setting: Setting) -> str:
    value: Any = setting.default
    if setting.parse is parse_size:
        return f"`{_size_text(value)}` ({value} bytes)" if value else "`0`"
    if setting.parse is parse_mode:
        return f"`{value:04o}`"
    if setting.parse is parse_duration:
        return f"`{_duration_text(value)}`"
    if setting.parse is parse_bool:
        return "`true`" if value else "`false`"
    if value == "":
        return '`""` (empty)'
    return f"`{value}`"


def _toml_text(setting: Setting) -> str:
    section, _, name = setting.key.rpartition(".")
    value: Any = setting.default
    if setting.parse is parse_size:
        literal = f'"{_size_text(value)}"' if value else "0"
    elif setting.parse is parse_mode:
        literal = f'"{value:04o}"'
    elif setting.parse is parse_duration:
        literal = f'"{_duration_text(value)}"'
    elif setting.parse is parse_bool:
        literal = "true" if value else "false"
    elif isinstance(value, str):
        literal = f'"{value}"'
    else:
        literal = str(value)
    if not section:  # a top-level key: it must come before the first [table] of the file
        return f"`{name} = {literal}` (top level)"
    return f"`[{section}]` `{name} = {literal}`"


def _escape(text: str) -> str:
    return text.replace("|", "/").replace("<", "&lt;").replace(">", "&gt;")


def main() -> None:
    print("| key | TOML form | env var | flag | default | meaning |")
    print("|---|---|---|---|---|---|")
    for setting in SETTINGS:
        print(f"| `{setting.key}` | {_toml_text(setting)} | `{setting.env_name}` | `{setting.flag_name}` "
              f"| {_default_text(setting)} | {_escape(setting.help)} |")


if __name__ == "__main__":
    main()
