"""Each command's --help shows the settings it uses: `query` and `schema apply` no agent-only flags."""

from __future__ import annotations

import contextlib
import io

import pytest

from automagik_telemetry_agent.cli import build_parser


def _help(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return out.getvalue()


@pytest.mark.parametrize("argv", [("query",), ("schema", "apply")])
def test_commands_that_read_only_the_sink_offer_only_the_sink_settings(argv: tuple[str, ...]) -> None:
    text = _help(*argv)
    assert "--clickhouse-endpoint" in text and "--embedded" in text
    for agent_only in ("--fsync", "--segment-size", "--socket", "--wal-dir", "--metrics-listen", "--batch-size"):
        assert agent_only not in text, agent_only


def test_the_agent_offers_every_setting() -> None:
    text = _help("agent")
    for flag in ("--fsync", "--segment-size", "--socket", "--wal-dir", "--clickhouse-endpoint", "--batch-size"):
        assert flag in text, flag
