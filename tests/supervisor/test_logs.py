"""Where agent processes log: the journal (structured) only when stderr *is* the journal, else stderr."""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from automagik_telemetry_agent.logs import journal_sender, journal_wanted, set_level, setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _stream_id(stream: Any) -> str:
    st = os.fstat(stream.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_is_chosen_only_when_journal_stream_names_our_stderr() -> None:
    with tempfile.TemporaryFile("w+") as stderr, tempfile.TemporaryFile("w+") as other:
        assert journal_wanted(stderr, {"JOURNAL_STREAM": _stream_id(stderr)})
        assert not journal_wanted(stderr, {"JOURNAL_STREAM": _stream_id(other)})  # e.g. 2> file in a service
        assert not journal_wanted(stderr, {})
        assert not journal_wanted(io.StringIO(), {"JOURNAL_STREAM": "1:2"})  # no fd at all


def test_journal_entries_carry_identifier_process_priority_and_code_location() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryFile("w+") as stderr:
        target = setup_logging(
            "info",
            "shipper",
            stream=stderr,
            env={"JOURNAL_STREAM": _stream_id(stderr)},
            sender=lambda message, **fields: sent.append((message, fields)),
        )
        assert target == "journal"
        logging.getLogger("automagik_telemetry_agent.shipper").warning("table %s is missing", "t")
        logging.getLogger("x").debug("below the level: not sent")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("x").exception("it failed")
        stderr.seek(0)
        assert stderr.read() == ""  # nothing duplicated on stderr
    (message, fields), (_, failed) = sent
    assert message == "table t is missing"
    assert fields["SYSLOG_IDENTIFIER"] == "automagik-telemetry"
    assert fields["PROCESS"] == "shipper"
    assert fields["PRIORITY"] == "4"
    assert fields["LOGGER"] == "automagik_telemetry_agent.shipper"
    assert fields["CODE_FUNC"] == "test_journal_entries_carry_identifier_process_priority_and_code_location"
    assert failed["PRIORITY"] == "3" and "ValueError: boom" in failed["EXCEPTION"]


def test_without_the_journal_lines_go_to_stderr_with_the_process_name() -> None:
    stderr = io.StringIO()
    assert setup_logging("info", "ingest", stream=stderr, env={}, sender=lambda *a, **k: None) == "stderr"
    logging.getLogger("automagik_telemetry_agent.ingest.server").info("hello")
    assert f"ingest[{os.getpid()}] INFO automagik_telemetry_agent.ingest.server: hello" in stderr.getvalue()


def test_without_systemd_python_stderr_is_used_even_under_journald(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_systemd(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "systemd" or name.startswith("systemd."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_systemd)
    assert journal_sender() is None
    with tempfile.TemporaryFile("w+") as stderr:
        assert (
            setup_logging("info", "supervisor", stream=stderr, env={"JOURNAL_STREAM": _stream_id(stderr)}) == "stderr"
        )


def test_log_level_changes_live() -> None:
    stderr = io.StringIO()
    setup_logging("warning", "ingest", stream=stderr, env={})
    logging.getLogger("x").info("hidden")
    set_level("debug")
    logging.getLogger("x").debug("shown")
    assert "hidden" not in stderr.getvalue() and "shown" in stderr.getvalue()
