"""automagik_telemetry.opt_in keeps 0.1.4's consent rules, files and prompt (all checked against 0.1.4).

HOME points at a fresh tmp_path in every test: the real home directory is never read or written.
"""

from __future__ import annotations

import builtins
import io
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest

from automagik_telemetry import opt_in
from automagik_telemetry.opt_in import (
    TelemetryOptIn,
    legacy_telemetry_enabled,
    prompt_user_if_needed,
    should_prompt_user,
)

CI_VARS = ["CI", "GITHUB_ACTIONS", "TRAVIS", "JENKINS", "GITLAB_CI", "CIRCLECI"]
ENABLED = "AUTOMAGIK_TELEMETRY_ENABLED"


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private, empty HOME and an environment without any consent, CI or terminal variable."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in [*CI_VARS, ENABLED, "ENVIRONMENT", "TERM"]:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def preference_file(home: Path) -> Path:
    return home / ".automagik" / "telemetry_preference"


def opt_out_file(home: Path) -> Path:
    return home / ".automagik-no-telemetry"


def write_preference(home: Path, content: str | bytes) -> None:
    path = preference_file(home)
    path.parent.mkdir(exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool, bool], FakeStream]:
    """``terminal(stdin_tty, stdout_tty)`` installs fake std streams and returns the fake stdout."""

    def install(stdin_tty: bool = True, stdout_tty: bool = True) -> FakeStream:
        out = FakeStream(stdout_tty)
        monkeypatch.setattr(sys, "stdin", FakeStream(stdin_tty))
        monkeypatch.setattr(sys, "stdout", out)
        return out

    return install


@pytest.fixture
def answer(monkeypatch: pytest.MonkeyPatch) -> Callable[[str | type[BaseException]], list[str]]:
    """``answer(reply)`` makes ``input()`` return ``reply`` (or raise it); returns the list of prompts shown."""

    def install(reply: str | type[BaseException]) -> list[str]:
        prompts: list[str] = []

        def fake_input(prompt: object = "") -> str:
            prompts.append(str(prompt))
            sys.stdout.write(str(prompt))
            if isinstance(reply, str):
                return reply
            raise reply()

        monkeypatch.setattr(builtins, "input", fake_input)
        return prompts

    return install


def no_input(prompt: object = "") -> str:
    raise AssertionError("the user must not be asked")


# --- files ------------------------------------------------------------------------------------------


def test_decision_files_live_in_the_home_directory_resolved_at_call_time(
    home: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert TelemetryOptIn._get_preference_file() == home / ".automagik" / "telemetry_preference"
    assert TelemetryOptIn._get_opt_out_file() == home / ".automagik-no-telemetry"
    other = tmp_path_factory.mktemp("other-home")
    monkeypatch.setenv("HOME", str(other))
    assert TelemetryOptIn._get_opt_out_file() == other / ".automagik-no-telemetry"
    TelemetryOptIn.save_preference(False)
    assert opt_out_file(other).exists() and not opt_out_file(home).exists()


# --- has_user_decided -------------------------------------------------------------------------------


def test_nobody_has_decided_in_an_empty_home_without_the_variable() -> None:
    assert TelemetryOptIn.has_user_decided() is False
    assert TelemetryOptIn.get_user_preference() is None


def test_a_preference_file_with_any_content_is_a_decision(home: Path) -> None:
    write_preference(home, "whatever")
    assert TelemetryOptIn.has_user_decided() is True


def test_the_opt_out_file_is_a_decision(home: Path) -> None:
    opt_out_file(home).touch()
    assert TelemetryOptIn.has_user_decided() is True


@pytest.mark.parametrize("value", ["", "true", "false", "garbage"])
def test_the_enabled_variable_set_to_any_value_is_a_decision(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENABLED, value)
    assert TelemetryOptIn.has_user_decided() is True


# --- get_user_preference ----------------------------------------------------------------------------


def test_the_opt_out_file_wins_over_the_preference_file_and_the_variable(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_preference(home, "enabled")
    monkeypatch.setenv(ENABLED, "true")
    opt_out_file(home).touch()
    assert TelemetryOptIn.get_user_preference() is False


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("enabled", True),
        ("true", True),
        (" TRUE \n", True),
        ("yes", True),
        ("1", True),
        ("on", False),
        ("no", False),
        ("", False),
        ("disabled", False),
    ],
)
def test_the_preference_file_means_opted_in_only_for_true_yes_1_or_enabled(
    home: Path, monkeypatch: pytest.MonkeyPatch, content: str, expected: bool
) -> None:
    write_preference(home, content)
    monkeypatch.setenv(ENABLED, "false" if expected else "true")  # the file wins over the variable
    assert TelemetryOptIn.get_user_preference() is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("On", True),
        (" true", False),
        ("", False),
        ("0", False),
        ("false", False),
        ("enabled", False),
    ],
)
def test_without_files_the_variable_decides_without_stripping_blanks(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    monkeypatch.setenv(ENABLED, value)
    assert TelemetryOptIn.get_user_preference() is expected


@pytest.mark.parametrize("broken", ["directory", "invalid-utf8"])
def test_an_unreadable_preference_file_falls_back_to_the_variable(
    home: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    if broken == "directory":
        preference_file(home).mkdir(parents=True)
    else:
        write_preference(home, b"\xff\xfe")
    assert TelemetryOptIn.has_user_decided() is True
    assert TelemetryOptIn.get_user_preference() is None
    monkeypatch.setenv(ENABLED, "yes")
    assert TelemetryOptIn.get_user_preference() is True


# --- save_preference --------------------------------------------------------------------------------


def test_opting_in_writes_enabled_to_the_preference_file_and_removes_the_opt_out_file(home: Path) -> None:
    opt_out_file(home).touch()
    TelemetryOptIn.save_preference(True)
    assert preference_file(home).read_text() == "enabled"
    assert not opt_out_file(home).exists()
    assert TelemetryOptIn.get_user_preference() is True


def test_opting_out_creates_an_empty_opt_out_file_and_removes_the_preference_file(home: Path) -> None:
    write_preference(home, "enabled")
    TelemetryOptIn.save_preference(False)
    assert opt_out_file(home).read_bytes() == b""
    assert not preference_file(home).exists()
    assert preference_file(home).parent.is_dir()
    assert TelemetryOptIn.get_user_preference() is False


def test_opting_in_twice_and_out_twice_is_harmless(home: Path) -> None:
    for enabled in (True, True, False, False, True):
        TelemetryOptIn.save_preference(enabled)
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == [
        ".automagik",
        ".automagik/telemetry_preference",
    ]


def test_saving_never_raises_when_the_home_directory_is_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_directory = tmp_path / "plain-file"
    not_a_directory.write_text("x")
    monkeypatch.setenv("HOME", str(not_a_directory))
    TelemetryOptIn.save_preference(True)
    TelemetryOptIn.save_preference(False)
    assert not_a_directory.read_text() == "x"


# --- _is_interactive and should_prompt_user ---------------------------------------------------------


@pytest.mark.parametrize(("stdin_tty", "stdout_tty"), [(True, False), (False, True), (False, False)])
def test_a_session_is_not_interactive_unless_both_stdin_and_stdout_are_terminals(
    terminal: Callable[[bool, bool], FakeStream], stdin_tty: bool, stdout_tty: bool
) -> None:
    terminal(stdin_tty, stdout_tty)
    assert TelemetryOptIn._is_interactive() is False
    assert should_prompt_user() is False


def test_a_terminal_session_outside_ci_is_interactive(
    terminal: Callable[[bool, bool], FakeStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal(True, True)
    monkeypatch.setenv("ENVIRONMENT", "test")  # only the client's enabled rule looks at ENVIRONMENT
    monkeypatch.setenv("CI", "")  # empty CI variables do not count
    assert TelemetryOptIn._is_interactive() is True
    assert should_prompt_user("Forge") is True


@pytest.mark.parametrize("name", CI_VARS)
@pytest.mark.parametrize("value", ["true", "1", "false"])
def test_any_non_empty_ci_variable_makes_the_session_non_interactive(
    terminal: Callable[[bool, bool], FakeStream], monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    terminal(True, True)
    monkeypatch.setenv(name, value)
    assert TelemetryOptIn._is_interactive() is False


def test_should_prompt_user_is_false_once_the_user_has_decided(
    terminal: Callable[[bool, bool], FakeStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal(True, True)
    monkeypatch.setenv(ENABLED, "false")
    assert should_prompt_user() is False


# --- prompt_user ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decide", "expected"),
    [("opt-out-file", False), ("enabled-file", True), ("variable-true", True), ("variable-off", False)],
)
def test_a_decided_user_gets_the_stored_answer_without_being_asked(
    home: Path,
    terminal: Callable[[bool, bool], FakeStream],
    monkeypatch: pytest.MonkeyPatch,
    decide: str,
    expected: bool,
) -> None:
    out = terminal(True, True)
    monkeypatch.setattr(builtins, "input", no_input)
    if decide == "opt-out-file":
        opt_out_file(home).touch()
    elif decide == "enabled-file":
        write_preference(home, "enabled")
    else:
        monkeypatch.setenv(ENABLED, "true" if expected else "off")
    assert TelemetryOptIn.prompt_user() is expected
    assert prompt_user_if_needed("Hive") is expected
    assert out.getvalue() == ""


def test_an_unreadable_preference_without_the_variable_counts_as_no(
    home: Path, terminal: Callable[[bool, bool], FakeStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal(True, True)
    monkeypatch.setattr(builtins, "input", no_input)
    preference_file(home).mkdir(parents=True)
    assert TelemetryOptIn.prompt_user() is False


def test_a_non_interactive_session_is_never_asked_and_nothing_is_stored(
    home: Path, terminal: Callable[[bool, bool], FakeStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = terminal(False, True)
    monkeypatch.setattr(builtins, "input", no_input)
    assert prompt_user_if_needed() is False
    assert out.getvalue() == ""
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("reply", ["y", "Y", "yes", " YES "])
def test_answering_yes_opts_in_and_stores_it(
    home: Path,
    terminal: Callable[[bool, bool], FakeStream],
    answer: Callable[[str | type[BaseException]], list[str]],
    reply: str,
) -> None:
    out = terminal(True, True)
    prompts = answer(reply)
    assert TelemetryOptIn.prompt_user("Forge") is True
    assert prompts == ["Enable telemetry? [y/N]: "]
    assert preference_file(home).read_text() == "enabled"
    assert out.getvalue().endswith(
        "Enable telemetry? [y/N]: \n✅ Thank you! Telemetry enabled.\n"
        "   Your anonymous usage data will help improve Automagik.\n\n"
    )
    assert should_prompt_user() is False


@pytest.mark.parametrize("reply", ["n", "", "no", "yess", "sure"])
def test_any_other_answer_opts_out_and_stores_it(
    home: Path,
    terminal: Callable[[bool, bool], FakeStream],
    answer: Callable[[str | type[BaseException]], list[str]],
    reply: str,
) -> None:
    out = terminal(True, True)
    answer(reply)
    assert prompt_user_if_needed("Forge") is False
    assert opt_out_file(home).exists() and not preference_file(home).exists()
    assert out.getvalue().endswith(
        "Enable telemetry? [y/N]: \n✅ Telemetry disabled.\n"
        "   You can enable it later with: export AUTOMAGIK_TELEMETRY_ENABLED=true\n\n"
    )


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, EOFError])
def test_ctrl_c_or_end_of_input_opts_out_and_stores_it(
    home: Path,
    terminal: Callable[[bool, bool], FakeStream],
    answer: Callable[[str | type[BaseException]], list[str]],
    interruption: type[BaseException],
) -> None:
    out = terminal(True, True)
    answer(interruption)
    assert TelemetryOptIn.prompt_user() is False
    assert opt_out_file(home).exists()
    assert out.getvalue().endswith("Enable telemetry? [y/N]: \n\n✅ Telemetry disabled.\n")


EXPLANATION_AFTER_THE_TITLE = """\
╚═══════════════════════════════════════════════════════════╝

We'd love your help making Forge better for everyone.

📊 What we collect (if you opt-in):
  ✓ Feature usage (which commands/APIs you use)
  ✓ Performance metrics (how fast things run)
  ✓ Error reports (when things break)
  ✓ Anonymous usage patterns

🔒 What we DON'T collect:
  ✗ Your messages or personal data
  ✗ API keys or credentials
  ✗ User identities (everything is anonymized)
  ✗ File contents or business logic

🌐 Your data, your control:
  • Data sent to: telemetry.namastex.ai (open-source dashboard)
  • You can self-host: See docs/telemetry.md
  • Opt-out anytime: Set AUTOMAGIK_TELEMETRY_ENABLED=false
  • View what's sent: Use --telemetry-verbose flag

More info: https://docs.automagik.ai/privacy

Enable telemetry? [y/N]: """


def test_the_prompt_explains_what_is_collected_exactly_as_0_1_4_did(
    terminal: Callable[[bool, bool], FakeStream], answer: Callable[[str | type[BaseException]], list[str]]
) -> None:
    out = terminal(True, True)
    answer("n")
    TelemetryOptIn.prompt_user("Forge")
    lines = out.getvalue().split("\n")
    assert lines[:2] == ["", "╔═══════════════════════════════════════════════════════════╗"]
    assert lines[2].startswith("║  Help Improve Forge! 🚀 ") and lines[2].endswith("║")
    assert "\n".join(lines[3:]).startswith(EXPLANATION_AFTER_THE_TITLE)


def test_the_prompt_uses_ansi_colours_only_on_a_terminal_with_a_capable_term(
    terminal: Callable[[bool, bool], FakeStream],
    answer: Callable[[str | type[BaseException]], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = terminal(True, True)
    prompts = answer("y")
    monkeypatch.setenv("TERM", "xterm-256color")
    TelemetryOptIn.prompt_user("Forge")
    assert prompts == ["\033[1;96mEnable telemetry? [y/N]: \033[0m"]
    text = out.getvalue()
    assert "\033[1;96m  Help Improve Forge! 🚀\033[0m" in text
    assert "We'd love your help making \033[1mForge\033[0m better for everyone." in text
    assert "  \033[92m✓\033[0m Feature usage" in text and "  \033[91m✗\033[0m API keys" in text
    assert "\033[2mMore info:\033[0m https://docs.automagik.ai/privacy" in text
    assert text.endswith(
        "\n\033[1;92m✅ Thank you!\033[0m Telemetry enabled.\n"
        "   Your anonymous usage data will help improve Automagik.\n\n"
    )


@pytest.mark.parametrize(("term", "stdout_tty"), [(None, True), ("", True), ("dumb", True), ("xterm", False)])
def test_colours_are_off_without_term_with_a_dumb_term_or_off_a_terminal(
    terminal: Callable[[bool, bool], FakeStream],
    monkeypatch: pytest.MonkeyPatch,
    term: str | None,
    stdout_tty: bool,
) -> None:
    terminal(True, stdout_tty)
    if term is not None:
        monkeypatch.setenv("TERM", term)
    assert TelemetryOptIn._supports_color() is False
    assert TelemetryOptIn._colorize("text", "1;96") == "text"


# --- the client's enabled rule of 0.1.4 -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("YES", True), ("on", True), ("1", True), (" true", False), ("0", False)]
)
def test_legacy_enabled_follows_the_variable_whatever_files_ci_or_environment_say(
    home: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    opt_out_file(home).touch()
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("ENVIRONMENT", "development")
    monkeypatch.setenv(ENABLED, value)
    assert legacy_telemetry_enabled() is expected


@pytest.mark.parametrize("environment", [None, "development", "dev", "test", "testing", "production"])
def test_legacy_enabled_is_false_without_the_variable_even_after_opting_in_at_the_prompt(
    monkeypatch: pytest.MonkeyPatch, environment: str | None
) -> None:
    TelemetryOptIn.save_preference(True)
    if environment is not None:
        monkeypatch.setenv("ENVIRONMENT", environment)
    assert legacy_telemetry_enabled() is False


# --- deliberate deviations from 0.1.4 ---------------------------------------------------------------


def _columns(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


@pytest.mark.parametrize("project", ["Forge", "Automagik", "日本"])
def test_the_title_box_is_aligned_in_terminal_columns(
    terminal: Callable[[bool, bool], FakeStream],
    answer: Callable[[str | type[BaseException]], list[str]],
    project: str,
) -> None:
    # 0.1.4 padded by code points, so the wide rocket emoji pushed the right border 3 columns too far.
    out = terminal(True, True)
    answer("n")
    TelemetryOptIn.prompt_user(project)
    top, title, bottom = out.getvalue().split("\n")[1:4]
    assert _columns(top) == _columns(title) == _columns(bottom) == 61


@pytest.mark.parametrize("missing", ["stdin", "stdout"])
def test_a_missing_std_stream_means_non_interactive_instead_of_an_error(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    # 0.1.4 raised AttributeError (e.g. under pythonw, where sys.stdin is None).
    monkeypatch.setattr(sys, "stdin", FakeStream(True))
    monkeypatch.setattr(sys, "stdout", FakeStream(True))
    monkeypatch.setattr(sys, missing, None)
    assert TelemetryOptIn._is_interactive() is False
    assert prompt_user_if_needed() is False


def test_the_module_exports_its_public_names() -> None:
    assert set(opt_in.__all__) == {
        "TelemetryOptIn",
        "legacy_telemetry_enabled",
        "prompt_user_if_needed",
        "should_prompt_user",
    }
