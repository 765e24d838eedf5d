"""Every kind of configuration error stops `agent` and `config check` with exit 2 and ONE stderr line.

The line must name the setting the way the user set it (TOML key and file, env var, or flag) and
say what to fix. Each case runs the real CLI as a subprocess, both commands, from a clean
environment (no AUTOMAGIK_TELEMETRY_* leaking in). A valid configuration is the control: `config
check` exits 0 on it, so a case cannot pass because everything fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agent_process import AgentProcess, agent_env

COMMANDS = (("agent",), ("config", "check"))


@dataclass
class Case:
    toml: str = ""
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    expect: tuple[str, ...] = ()  # substrings of the one stderr line
    preexec: Callable[[], None] | None = None


def run(
    tmp_path: Path, command: tuple[str, ...], case: Case, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "agent.toml"
    config.write_text(case.toml)
    base = [
        "--config",
        str(config),
        "--socket",
        str(tmp_path / "run" / "agent.sock"),
        "--wal-dir",
        str(tmp_path / "wal"),
        "--sink",
        "none",
        "--metrics-listen",
        "",
        "--wal-min-free",
        "0",
    ]
    argv = [sys.executable, "-m", "automagik_telemetry_agent", *command, *base, *case.flags]
    return subprocess.run(
        argv,
        env=agent_env(case.env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=case.preexec,
        cwd="/",
    )


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], expect: tuple[str, ...]) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"exit {result.returncode}, stderr: {result.stderr!r}"
    assert len(lines) == 1, f"expected one stderr line, got: {result.stderr!r}"
    for text in expect:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert "Traceback" not in result.stderr
    return lines[0]


CASES = {
    "unknown_toml_key_with_suggestion": Case(
        toml='[wal]\nfsinc = "off"\n', expect=("unknown key 'wal.fsinc'", "did you mean 'wal.fsync'?")
    ),
    "bad_url_credentials_in_endpoint": Case(
        toml='[clickhouse]\nendpoint = "http://agent:s3cret@localhost:8123"\n',
        expect=("clickhouse.endpoint (file ", "must not carry credentials", "--password-file"),
    ),
    "bad_url_not_http": Case(
        flags=["--clickhouse-endpoint", "localhost:8123"],
        expect=("--clickhouse-endpoint", "is not an http:// or https:// URL"),
    ),
    "bad_url_query_string": Case(
        env={"AUTOMAGIK_TELEMETRY_CLICKHOUSE_ENDPOINT": "http://localhost:8123/?user=x"},
        expect=("AUTOMAGIK_TELEMETRY_CLICKHOUSE_ENDPOINT", "query string"),
    ),
    "bad_size": Case(flags=["--wal-max-size", "4 lots"], expect=("--wal-max-size", "is not a size", "64MiB")),
    "bad_duration_in_toml": Case(
        toml='[shipper]\nretry_max = "10 minutes"\n', expect=("shipper.retry_max (file ", "is not a duration", "5m")
    ),
    "bad_env_var_value": Case(
        env={"AUTOMAGIK_TELEMETRY_FSYNC": "sometimes"},
        expect=("AUTOMAGIK_TELEMETRY_FSYNC", "'sometimes' is not one of always, interval, off"),
    ),
    "bad_flag_value": Case(flags=["--max-connections", "0"], expect=("--max-connections", "must be at least 1")),
    "relation_retry_base_over_retry_max": Case(
        flags=["--retry-base", "2m"], expect=("--retry-base", "longer than shipper.retry_max")
    ),
    "relation_max_size_below_two_segments": Case(
        toml='[wal]\nmax_size = "64MiB"\n', expect=("wal.max_size (file ", "at least twice wal.segment_size")
    ),
    "socket_path_too_long": Case(
        flags=["--socket", "/tmp/" + "s" * 120], expect=("--socket", "at most 107", "shorter path")
    ),
    "bad_table_name": Case(flags=["--table", "traces;drop"], expect=("--table", "not a plain name")),
}


@pytest.mark.parametrize("command", COMMANDS, ids=["agent", "config_check"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_config_error_exits_2_with_one_line_naming_the_setting(
    tmp_path: Path, command: tuple[str, ...], name: str
) -> None:
    case = CASES[name]
    assert_one_line_exit_2(run(tmp_path, command, case), case.expect)


def test_valid_config_passes_config_check(tmp_path: Path) -> None:
    result = run(tmp_path, ("config", "check"), Case(toml='[wal]\nfsync = "off"\n'))
    assert result.returncode == 0, result.stderr
    assert "wal.fsync = 'off'  (file " in result.stdout
    assert "wal.dir = " in result.stdout and "(flag)" in result.stdout


def _without_dac_override() -> None:
    """In the child before exec: drop root's power to write where file modes say no.

    Removing CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set keeps them out of the
    exec'd program: it runs as uid 0 but obeys permission bits like any user.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(121)


@pytest.mark.parametrize("command", COMMANDS, ids=["agent", "config_check"])
def test_unwritable_wal_dir_exits_2_naming_wal_dir(tmp_path: Path, command: tuple[str, ...]) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    preexec = _without_dac_override if os.geteuid() == 0 else None  # root writes anywhere otherwise
    case = Case(
        flags=["--wal-dir", str(parent / "wal")],
        preexec=preexec,
        expect=("--wal-dir", f"cannot create it: {parent} is not writable by user", "chown/chmod"),
    )
    assert_one_line_exit_2(run(tmp_path, command, case), case.expect)


def test_wal_dir_under_a_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    case = Case(
        flags=["--wal-dir", str(tmp_path / "file" / "wal")],
        expect=("--wal-dir", f"{tmp_path / 'file'} is not a directory"),
    )
    assert_one_line_exit_2(run(tmp_path, ("config", "check"), case), case.expect)


@pytest.mark.parametrize("command", COMMANDS, ids=["agent", "config_check"])
def test_socket_path_in_use_by_a_live_agent_exits_2_with_its_pid(tmp_path: Path, command: tuple[str, ...]) -> None:
    with AgentProcess(tmp_path / "first", metrics_listen="") as first:
        case = Case(
            flags=["--socket", first.socket_path],
            expect=("--socket", f"{first.socket_path} is in use by a running agent (pid {first.pid})", "stop it first"),
        )
        assert_one_line_exit_2(run(tmp_path, command, case), case.expect)
        assert first.running


def test_stale_socket_file_is_not_an_error(tmp_path: Path) -> None:
    import socket

    (tmp_path / "run").mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(tmp_path / "run" / "agent.sock"))
    stale.close()  # the file stays, nobody listens
    result = run(tmp_path, ("config", "check"), Case())
    assert result.returncode == 0, result.stderr


def test_no_runtime_skips_host_checks(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    wal = str(tmp_path / "file" / "wal")
    assert run(tmp_path, ("config", "check"), Case(flags=["--wal-dir", wal, "--no-runtime"])).returncode == 0
    case = Case(flags=["--wal-dir", wal], expect=("--wal-dir", "is not a directory"))
    assert_one_line_exit_2(run(tmp_path, ("config", "check"), case), case.expect)


@pytest.mark.parametrize("command", COMMANDS, ids=["agent", "config_check"])
def test_wal_dir_of_a_running_agent_exits_2(tmp_path: Path, command: tuple[str, ...]) -> None:
    with AgentProcess(tmp_path / "first", metrics_listen="") as first:
        case = Case(
            flags=["--wal-dir", first.wal_dir],  # its own socket, the other agent's WAL
            expect=(
                "--wal-dir",
                f"the WAL directory {first.wal_dir} is in use by another running agent (pid ",
                "give this one its own --wal-dir",
            ),
        )
        assert_one_line_exit_2(run(tmp_path, command, case), case.expect)
        assert first.running


@pytest.mark.parametrize("command", COMMANDS, ids=["agent", "config_check"])
def test_unreadable_password_file_exits_2(tmp_path: Path, command: tuple[str, ...]) -> None:
    missing = tmp_path / "no-such-password"
    case = Case(
        flags=["--sink", "clickhouse", "--password-file", str(missing)],
        expect=("--password-file", f"cannot read the password file {missing}: No such file or directory"),
    )
    assert_one_line_exit_2(run(tmp_path, command, case), case.expect)


def test_config_check_of_the_running_agents_own_config_passes_with_a_note(tmp_path: Path) -> None:
    """The usual step before a reload: checking the file of the agent that runs (same socket, same WAL)."""
    with AgentProcess(tmp_path / "first", metrics_listen="") as first:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "automagik_telemetry_agent",
                "config",
                "check",
                "--config",
                os.devnull,
                "--socket",
                first.socket_path,
                "--wal-dir",
                first.wal_dir,
                "--sink",
                "none",
                "--wal-min-free",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=agent_env(),
        )
        assert result.returncode == 0, result.stderr
        assert f"the agent running as pid {first.pid} uses this socket and WAL" in result.stderr
        assert first.running
