"""The first-run telemetry consent prompt, compatible with the ``automagik_telemetry.opt_in`` module of 0.1.4.

A user's decision is shared by every Automagik tool and stored in their home directory:

* ``~/.automagik/telemetry_preference``: written with ``enabled`` when the user opts in. When read, the
  stripped, lower-cased content ``true``, ``yes``, ``1`` or ``enabled`` means "opted in", anything else
  "opted out".
* ``~/.automagik-no-telemetry``: an empty marker created when the user opts out; it wins over everything.
* ``AUTOMAGIK_TELEMETRY_ENABLED``: set to any value, it counts as a decision (``true``, ``1``, ``yes``,
  ``on``, case-insensitive, mean "opted in").

The home directory is resolved on every call (``Path.home()``, i.e. ``$HOME`` on POSIX), never cached.
The prompt is only shown when stdin and stdout are both terminals and no CI variable is set; file errors
are swallowed, so consent handling can never break the application.

Stdlib only.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

__all__ = [
    "TelemetryOptIn",
    "legacy_telemetry_enabled",
    "prompt_user_if_needed",
    "should_prompt_user",
]

_ENABLED_ENV = "AUTOMAGIK_TELEMETRY_ENABLED"
_CI_ENV_VARS = ("CI", "GITHUB_ACTIONS", "TRAVIS", "JENKINS", "GITLAB_CI", "CIRCLECI")
_DEVELOPMENT_ENVIRONMENTS = ("development", "dev", "test", "testing")
_PREFERENCE_YES = frozenset({"true", "yes", "1", "enabled"})
_ENV_YES = frozenset({"true", "1", "yes", "on"})
_ANSWER_YES = frozenset({"y", "yes"})
_STORED_OPT_IN = "enabled"

# ANSI SGR parameters.
_BOLD, _DIM = "1", "2"
_RED, _GREEN, _YELLOW, _BLUE, _CYAN = "91", "92", "93", "94", "96"

#: Inner width, in terminal columns, of the box around the prompt's title.
_BOX_WIDTH = 59


def _env_says_yes(raw: str) -> bool:
    return raw.lower() in _ENV_YES


def _is_tty(stream: TextIO | None) -> bool:
    """``stream.isatty()``, and ``False`` for a missing, closed or odd stream instead of an exception."""
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except (OSError, ValueError):
        return False


def _running_in_ci() -> bool:
    return any(os.getenv(name) for name in _CI_ENV_VARS)


def _columns(text: str) -> int:
    """Terminal columns taken by ``text``: wide (e.g. emoji, CJK) characters count 2, combining marks 0."""
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


class TelemetryOptIn:
    """Ask once, remember forever: the consent state of the current user (all methods are class-level).

    ``_get_preference_file``, ``_get_opt_out_file`` and ``_is_interactive`` are the seams tests patch.
    """

    @classmethod
    def _get_preference_file(cls) -> Path:
        return Path.home() / ".automagik" / "telemetry_preference"

    @classmethod
    def _get_opt_out_file(cls) -> Path:
        return Path.home() / ".automagik-no-telemetry"

    @classmethod
    def has_user_decided(cls) -> bool:
        """Whether a preference file, an opt-out file or ``AUTOMAGIK_TELEMETRY_ENABLED`` exists."""
        return (
            cls._get_preference_file().exists()
            or cls._get_opt_out_file().exists()
            or os.getenv(_ENABLED_ENV) is not None
        )

    @classmethod
    def get_user_preference(cls) -> bool | None:
        """``True`` (opted in), ``False`` (opted out) or ``None`` (no decision yet).

        Sources, first applicable wins: the opt-out file (``False``); a readable preference file; the
        environment variable.
        """
        if cls._get_opt_out_file().exists():
            return False
        stored = cls._read_preference_file()
        if stored is not None:
            return stored.strip().lower() in _PREFERENCE_YES
        raw = os.getenv(_ENABLED_ENV)
        return None if raw is None else _env_says_yes(raw)

    @classmethod
    def _read_preference_file(cls) -> str | None:
        path = cls._get_preference_file()
        if not path.exists():
            return None
        try:
            return path.read_text(encoding="utf-8")
        except Exception:
            return None

    @classmethod
    def save_preference(cls, enabled: bool) -> None:
        """Record the decision in the home directory; never raises (a failed write is simply lost).

        Opting in removes the opt-out file and writes ``enabled`` to the preference file (creating
        ``~/.automagik``); opting out creates the opt-out file and removes the preference file.
        """
        try:
            preference = cls._get_preference_file()
            opt_out = cls._get_opt_out_file()
            if enabled:
                if opt_out.exists():
                    opt_out.unlink()
                preference.parent.mkdir(parents=True, exist_ok=True)
                preference.write_text(_STORED_OPT_IN, encoding="utf-8")
            else:
                opt_out.touch()
                if preference.exists():
                    preference.unlink()
        except Exception:
            pass

    @classmethod
    def _supports_color(cls) -> bool:
        if sys.platform == "win32":
            try:
                import platform

                return int(platform.version().split(".")[0]) >= 10
            except Exception:
                return False
        if not _is_tty(sys.stdout):
            return False
        term = os.getenv("TERM", "")
        return term not in ("", "dumb")

    @classmethod
    def _colorize(cls, text: str, color_code: str) -> str:
        if cls._supports_color():
            return f"\033[{color_code}m{text}\033[0m"
        return text

    @classmethod
    def _banner(cls, project_name: str) -> str:
        paint: Callable[[str, str], str] = cls._colorize

        def bullets(mark: str, color: str, items: tuple[str, ...]) -> list[str]:
            return [f"  {paint(mark, color)} {item}" for item in items]

        title = f"  Help Improve {project_name}! 🚀"
        padding = " " * max(_BOX_WIDTH - _columns(title), 0)
        lines = [
            "",
            "╔" + "═" * _BOX_WIDTH + "╗",
            "║" + paint(title, f"{_BOLD};{_CYAN}") + padding + "║",
            "╚" + "═" * _BOX_WIDTH + "╝",
            "",
            f"We'd love your help making {paint(project_name, _BOLD)} better for everyone.",
            "",
            f"{paint('📊 What we collect', f'{_BOLD};{_GREEN}')} (if you opt-in):",
            *bullets(
                "✓",
                _GREEN,
                (
                    "Feature usage (which commands/APIs you use)",
                    "Performance metrics (how fast things run)",
                    "Error reports (when things break)",
                    "Anonymous usage patterns",
                ),
            ),
            "",
            paint("🔒 What we DON'T collect:", f"{_BOLD};{_RED}"),
            *bullets(
                "✗",
                _RED,
                (
                    "Your messages or personal data",
                    "API keys or credentials",
                    "User identities (everything is anonymized)",
                    "File contents or business logic",
                ),
            ),
            "",
            paint("🌐 Your data, your control:", f"{_BOLD};{_BLUE}"),
            f"  • Data sent to: {paint('telemetry.namastex.ai', _CYAN)} (open-source dashboard)",
            "  • You can self-host: See docs/telemetry.md",
            f"  • Opt-out anytime: Set {paint('AUTOMAGIK_TELEMETRY_ENABLED=false', _YELLOW)}",
            f"  • View what's sent: Use {paint('--telemetry-verbose', _YELLOW)} flag",
            "",
            f"{paint('More info:', _DIM)} https://docs.automagik.ai/privacy",
            "",
        ]
        return "\n".join(lines)

    @classmethod
    def prompt_user(cls, project_name: str = "Automagik") -> bool:
        """The user's decision, asking for it first if there is none yet and the session is interactive.

        Already decided: the stored preference (``False`` if it cannot be read). Not interactive:
        ``False``, without asking or storing anything. Otherwise the explanation is printed, the answer
        ``y``/``yes`` (any case) opts in and anything else, Ctrl-C or end of input opts out; the answer
        is stored with ``save_preference``.
        """
        if cls.has_user_decided():
            return cls.get_user_preference() is True
        if not cls._is_interactive():
            return False

        print(cls._banner(project_name))
        declined = cls._colorize("✅ Telemetry disabled.", f"{_BOLD};{_YELLOW}")
        try:
            answer = input(cls._colorize("Enable telemetry? [y/N]: ", f"{_BOLD};{_CYAN}"))
            enabled = answer.strip().lower() in _ANSWER_YES
            cls.save_preference(enabled)
            if enabled:
                print(f"\n{cls._colorize('✅ Thank you!', f'{_BOLD};{_GREEN}')} Telemetry enabled.")
                print("   Your anonymous usage data will help improve Automagik.\n")
            else:
                print(f"\n{declined}")
                hint = cls._colorize("export AUTOMAGIK_TELEMETRY_ENABLED=true", _CYAN)
                print(f"   You can enable it later with: {hint}\n")
            return enabled
        except (KeyboardInterrupt, EOFError):
            print(f"\n\n{declined}")
            cls.save_preference(False)
            return False

    @staticmethod
    def _is_interactive() -> bool:
        """Both stdin and stdout are terminals and none of the usual CI variables is set (non-empty)."""
        return _is_tty(sys.stdin) and _is_tty(sys.stdout) and not _running_in_ci()


def should_prompt_user(project_name: str = "Automagik") -> bool:
    """Whether ``prompt_user_if_needed`` would ask: no decision yet and an interactive session.

    ``project_name`` is accepted for symmetry and not used.
    """
    return not TelemetryOptIn.has_user_decided() and TelemetryOptIn._is_interactive()


def prompt_user_if_needed(project_name: str = "Automagik") -> bool:
    """``TelemetryOptIn.prompt_user(project_name)``: whether telemetry should be enabled."""
    return TelemetryOptIn.prompt_user(project_name)


def legacy_telemetry_enabled() -> bool:
    """Whether 0.1.4's ``AutomagikTelemetry`` would have started enabled, from the environment alone.

    The rules, in order: ``AUTOMAGIK_TELEMETRY_ENABLED`` set decides (``true``/``1``/``yes``/``on``,
    case-insensitive, without stripping, enable); otherwise the opt-out file, a CI variable and
    ``ENVIRONMENT`` in development/dev/test/testing all disable, and so does the default (opt-in only).
    The stored prompt preference is not consulted. The net effect: enabled only by an explicit variable.
    """
    raw = os.getenv(_ENABLED_ENV)
    if raw is not None:
        return _env_says_yes(raw)
    if TelemetryOptIn._get_opt_out_file().exists():
        return False
    if _running_in_ci():
        return False
    if os.getenv("ENVIRONMENT") in _DEVELOPMENT_ENVIRONMENTS:
        return False
    return False
