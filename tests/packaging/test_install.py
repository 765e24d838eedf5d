"""The package on a real host: ``dpkg -i``, the installed agent against ClickHouse, remove/upgrade/purge.

These tests run dpkg on the machine itself (as root; see conftest.py). On this kind of machine systemd
is not PID 1: the maintainer scripts must then do everything except starting units (deb-systemd-helper
still enables them), which is what is checked here; the units themselves run in
test_systemd_container.py.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import textwrap
from pathlib import Path

import deb_host
from agent_process import RawClient, record_line, run_cli, wait_until
from deb_host import (
    CLIENT_GROUP,
    COMMAND,
    CONF_DIR,
    CONFFILE,
    REPO,
    SERVICE,
    SOCKET,
    STATE_DIR,
    UNIT_DIR,
    USER,
    VENV,
    Deb,
    InstalledAgent,
    clean_env,
    installed_python,
    run,
)

WANTS = {
    SOCKET: Path("/etc/systemd/system/sockets.target.wants") / SOCKET,
    SERVICE: Path("/etc/systemd/system/multi-user.target.wants") / SERVICE,
}


def test_install_creates_the_users_the_state_directory_and_enables_both_units(installed: Deb) -> None:
    user = pwd.getpwnam(USER)
    assert (user.pw_dir, user.pw_shell) == (str(STATE_DIR), "/usr/sbin/nologin")
    assert user.pw_uid < 1000, "a system user"
    grp.getgrnam(CLIENT_GROUP)
    st = STATE_DIR.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, user.pw_gid, 0o750)
    # deb-systemd-helper enables units even when systemd is not running (they start at the next boot).
    for unit, link in WANTS.items():
        assert link.is_symlink() and link.resolve() == (UNIT_DIR / unit).resolve(), link
    assert Path(COMMAND).resolve() == VENV / "bin/automagik-telemetry"
    result = run([COMMAND, "--help"], env=clean_env())
    assert "agent" in result.stdout


def test_installed_package_runs_its_own_code_and_leaves_the_dev_venv_alone(installed: Deb) -> None:
    dev_venv = REPO / ".venv"
    before = deb_host.tree_digest(dev_venv / "bin") | {"pyvenv.cfg": (dev_venv / "pyvenv.cfg").read_text()}
    deb_host.install(installed.path)  # once more: an install must not write outside its own paths
    after = deb_host.tree_digest(dev_venv / "bin") | {"pyvenv.cfg": (dev_venv / "pyvenv.cfg").read_text()}
    assert before == after
    dev = run([str(dev_venv / "bin/python"), "-c", "import automagik_telemetry_agent as m; print(m.__file__)"])
    assert dev.stdout.startswith(str(REPO / "daemon")), dev.stdout
    packaged = installed_python("import sys, automagik_telemetry_agent as m; print(m.__file__); print(sys.path)")
    module, path = packaged.stdout.splitlines()
    assert module.startswith(str(VENV / "lib/python3.11/site-packages/")), module
    assert str(REPO) not in path


def test_default_config_file_passes_config_check(installed: Deb) -> None:
    for args in ([], ["--config", str(CONFFILE)]):
        result = run([COMMAND, "config", "check", *args], env=clean_env(), check=False)
        assert result.returncode == 0, result.stderr
        assert f"file {CONFFILE}" in result.stdout  # the file was read, not skipped
        assert "sink = 'clickhouse'" in result.stdout


def test_installed_agent_as_its_user_ships_client_spans_to_clickhouse(
    installed: Deb, run_dir: Path, clickhouse: object, clickhouse_db: str
) -> None:
    url = clickhouse.url  # type: ignore[attr-defined]
    applied = run(
        [
            COMMAND,
            "schema",
            "apply",
            "--config",
            str(CONFFILE),
            "--clickhouse-endpoint",
            url,
            "--database",
            clickhouse_db,
        ],
        env=clean_env(),
    )
    assert "applied migrations" in applied.stdout
    socket_path = run_dir / "agent.sock"
    env = clean_env()
    control_env = deb_host.installed_setting_env("socket.control_path")
    if control_env:  # the package's config puts it in the unit's RuntimeDirectory, absent without systemd
        env[control_env] = str(run_dir / "control.sock")
    spans = 300
    # WAL in the default place, /var/lib/automagik-telemetry/wal: the postinst made it writable for the user.
    with InstalledAgent(
        socket_path,
        "--sink",
        "clickhouse",
        "--clickhouse-endpoint",
        url,
        "--database",
        clickhouse_db,
        "--metrics-listen",
        "",
        "--wal-min-free",
        "0",
        "--batch-wait",
        "0.2",
        env=env,
    ) as agent:
        client = installed_python(
            textwrap.dedent(f"""
            from automagik_telemetry import AutomagikTelemetry
            telemetry = AutomagikTelemetry("packaging-test", "1.0")
            for i in range({spans}):
                with telemetry.span(f"packaged-span-{{i}}", {{"i": i}}):
                    pass
            print(telemetry.flush(timeout=20))
            telemetry.shutdown()
        """),
            env=clean_env(AUTOMAGIK_TELEMETRY_SOCKET=str(socket_path)),
        )
        assert client.stdout.strip() == "True", client.stdout + client.stderr
        count = f"SELECT count() FROM {clickhouse_db}.traces WHERE span_name LIKE 'packaged-span-%'"

        def shipped() -> bool:
            assert agent.running, f"the installed agent exited; stderr:\n{agent.stderr}"
            return int(clickhouse.query(count)) == spans  # type: ignore[attr-defined]

        wait_until(shipped, timeout=60, message=f"{spans} spans in ClickHouse")
        code = agent.stop()
    assert code == 0, agent.stderr
    owner = pwd.getpwnam(USER).pw_uid
    segments = list((STATE_DIR / "wal").glob("*.seg"))
    assert segments and all(p.stat().st_uid == owner for p in segments)


def _fill_wal(run_dir: Path, tag: str) -> None:
    """Three acknowledged records in the default WAL, written by the installed agent as its user."""
    env = clean_env()
    control_env = deb_host.installed_setting_env("socket.control_path")
    if control_env:
        env[control_env] = str(run_dir / "control.sock")
    with (
        InstalledAgent(
            run_dir / "agent.sock", "--sink", "none", "--metrics-listen", "", "--wal-min-free", "0", env=env
        ) as agent,
        RawClient(str(run_dir / "agent.sock")) as client,
    ):
        for seq in (1, 2, 3):
            client.send_records([record_line(f"{tag}-{seq}")], seq=seq)
        assert client.wait_ack(3, timeout=10), agent.stderr


def test_remove_and_upgrade_keep_the_wal_and_edited_config_purge_deletes_them(
    installed: Deb, run_dir: Path, tmp_path: Path
) -> None:
    _fill_wal(run_dir, "lifecycle")
    wal = deb_host.tree_digest(STATE_DIR)
    assert any(name.startswith("wal/") and name.endswith(".seg") for name in wal), wal
    edited = CONFFILE.read_text() + "\n# edited by the packaging tests: an upgrade must keep this line\n"
    CONFFILE.write_text(edited)
    uid = pwd.getpwnam(USER).pw_uid

    deb_host.install(installed.path)  # the same version again: dpkg runs the upgrade path
    assert (deb_host.status(), deb_host.tree_digest(STATE_DIR), CONFFILE.read_text()) == ("installed", wal, edited)

    newer = deb_host.repack(installed, f"{installed.version}+test1", tmp_path)
    deb_host.install(newer)
    assert deb_host.installed_version() == f"{installed.version}+test1"
    assert (deb_host.tree_digest(STATE_DIR), CONFFILE.read_text()) == (wal, edited)
    assert pwd.getpwnam(USER).pw_uid == uid

    deb_host.dpkg("--remove", "automagik-telemetry")
    assert deb_host.status() == "config-files"
    assert not Path(COMMAND).exists() and not (UNIT_DIR / SERVICE).exists() and not VENV.exists()
    assert deb_host.tree_digest(STATE_DIR) == wal
    assert CONFFILE.read_text() == edited
    verify = run_cli("wal", "verify", str(STATE_DIR / "wal"))  # the repository's code: the command is gone
    assert verify.returncode == 0, verify.stdout + verify.stderr

    deb_host.install(installed.path)  # back from "removed": state and config are picked up again
    assert (deb_host.status(), deb_host.tree_digest(STATE_DIR), CONFFILE.read_text()) == ("installed", wal, edited)

    deb_host.dpkg("--purge", "automagik-telemetry")
    assert deb_host.status() == "not-installed"
    assert not STATE_DIR.exists() and not CONF_DIR.exists()
    assert not any(os.path.lexists(link) for link in WANTS.values())
    pwd.getpwnam(USER)  # kept on purge (Debian policy: its ids must not be reused)
