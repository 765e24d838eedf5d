"""The systemd units as packaged: valid (systemd-analyze verify), hardened (exposure <= 2.5), consistent."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from deb_host import CLIENT_GROUP, PACKAGE, SERVICE, SOCKET, UNIT_DIR, USER, Deb, run, unit_settings

from automagik_telemetry_agent.config import SETTINGS_BY_KEY

MAX_EXPOSURE = 2.5
UNITS = Path("lib/systemd/system")


def exposure(unit: Path) -> tuple[float, int, str]:
    """``systemd-analyze security --offline=true`` of a unit file: (overall exposure, exit code, output)."""
    result = run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            f"--threshold={int(MAX_EXPOSURE * 10)}",
            "--no-pager",
            unit.name,
        ],
        check=False,
        cwd=unit.parent,
    )
    output = result.stdout + result.stderr
    match = re.search(rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)", output)
    assert match, f"no exposure level in:\n{output}"
    return float(match.group(1)), result.returncode, output


def test_installed_units_pass_systemd_analyze_verify_without_a_warning(installed: Deb) -> None:
    # verify needs the real ExecStart= binary, hence on the installed units. It exits 0 even for an
    # unknown key or a bad value (only a warning), so any output fails the test.
    result = run(
        ["systemd-analyze", "verify", "--man=no", str(UNIT_DIR / SOCKET), str(UNIT_DIR / SERVICE)], check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_service_exposure_level_is_at_most_2_5(deb_tree: Path) -> None:
    level, code, output = exposure(deb_tree / UNITS / SERVICE)
    assert level <= MAX_EXPOSURE and code == 0, output


def test_exposure_check_fails_for_the_service_without_its_sandbox(deb_tree: Path, tmp_path: Path) -> None:
    # The check above must be able to fail: the same unit minus its "sandbox" block scores far above.
    text = (deb_tree / UNITS / SERVICE).read_text()
    weak = tmp_path / SERVICE
    weak.write_text(text.split("# ---- sandbox")[0] + "\n[Install]\nWantedBy=multi-user.target\n")
    level, code, output = exposure(weak)
    assert level > MAX_EXPOSURE and code != 0, output


def test_service_has_the_required_lifecycle_and_sandbox_settings(deb_tree: Path) -> None:
    s = unit_settings((deb_tree / UNITS / SERVICE).read_text())
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["Restart"] == "on-failure" and "2" in one["RestartPreventExitStatus"].split()
    # The supervisor replaces a hung child after agent.heartbeat_timeout; systemd's watchdog (the whole
    # service) must leave it that chance: at least twice that timeout (docs/operations.md, systemd).
    assert float(one["WatchdogSec"].rstrip("s")) >= 2 * SETTINGS_BY_KEY["agent.heartbeat_timeout"].default
    assert float(one["TimeoutStopSec"].rstrip("s")) > SETTINGS_BY_KEY["agent.stop_timeout"].default + 2
    assert one["ExecStart"].split()[:2] == ["/usr/bin/automagik-telemetry", "agent"]
    assert (one["User"], one["Group"]) == (USER, USER)
    assert one["StateDirectory"] == PACKAGE
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "MemoryDenyWriteExecute",
        "RestrictNamespaces",
        "LockPersonality",
        "RestrictSUIDSGID",
        "RestrictRealtime",
    ):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert s["SystemCallFilter"][0] == "@system-service"
    assert one["CapabilityBoundingSet"] == ""
    assert one["UMask"] == "0027"
    assert "MemoryMax" in one


def test_socket_is_the_agents_default_path_group_writable_by_the_client_group(deb_tree: Path) -> None:
    s = {k: v[-1] for k, v in unit_settings((deb_tree / UNITS / SOCKET).read_text()).items()}
    assert s["ListenSequentialPacket"] == SETTINGS_BY_KEY["socket.path"].default
    assert (s["SocketGroup"], s["SocketMode"]) == (CLIENT_GROUP, "0660")


def test_service_runtime_directory_is_below_the_socket_directory_never_the_same(deb_tree: Path) -> None:
    # systemd chowns a RuntimeDirectory= recursively and deletes it when the service stops: were it the
    # socket's directory, a stop would delete agent.sock and a start would hand it to the service's
    # group (systemd#8635). The control socket must be in the service's own directory.
    sock = {k: v[-1] for k, v in unit_settings((deb_tree / UNITS / SOCKET).read_text()).items()}
    service = {k: v[-1] for k, v in unit_settings((deb_tree / UNITS / SERVICE).read_text()).items()}
    socket_dir = Path(sock["ListenSequentialPacket"]).parent
    runtime_dirs = [Path("/run") / d for d in service["RuntimeDirectory"].split()]
    assert runtime_dirs and all(socket_dir in d.parents for d in runtime_dirs), (socket_dir, runtime_dirs)
    conf = tomllib.loads((deb_tree / "etc/automagik-telemetry/agent.toml").read_text())
    control = Path(conf["socket"]["control_path"])
    assert any(control.parent == d for d in runtime_dirs), (control, runtime_dirs)


def test_sysusers_declares_the_service_user_and_the_client_group(deb_tree: Path) -> None:
    lines = [
        line.split()
        for line in (deb_tree / f"usr/lib/sysusers.d/{PACKAGE}.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ["u", USER] in [line[:2] for line in lines]
    assert ["g", CLIENT_GROUP] in [line[:2] for line in lines]


def test_systemd_analyze_is_the_debian_12_one() -> None:
    # --offline security (and its --threshold) needs systemd >= 250; Debian 12 has 252.
    version = int(run(["systemd-analyze", "--version"]).stdout.split()[1])
    assert version >= 250
