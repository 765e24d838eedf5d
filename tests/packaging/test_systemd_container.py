"""The packaged units under a real systemd (252, booted in a container, see container.py).

What only systemd can show: the socket unit owns the stable path with the client group's permissions;
the service reaches READY=1 and feeds the watchdog from inside the full sandbox; an application user
in the client group gets its spans into ClickHouse and other users are refused; stopping the service
keeps the socket (RuntimeDirectory= layout); the maintainer scripts restart the service on upgrade
without touching the socket, and keep the WAL on remove.

Skipped, with the reason, only when this host cannot boot a container at all.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import deb_host
import pytest
from agent_process import wait_until
from container import ContainerUnavailable, SystemdContainer
from deb_host import CLIENT_GROUP, COMMAND, CONFFILE, SERVICE, SOCKET, USER, VENV, Deb, clean_env, run

SOCKET_PATH = "/run/automagik-telemetry/agent.sock"
MEMBER, STRANGER = "at-app-member", "at-app-stranger"
WATCHDOG_S = 3
DEB_DIR = "/srv/automagik-telemetry-test"


@pytest.fixture(scope="module")
def ch_database(clickhouse: Any) -> Iterator[str]:
    with clickhouse.scratch_database("pkg") as name:
        yield name


@pytest.fixture(scope="module")
def box(
    host: None, deb: Deb, clickhouse: Any, ch_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SystemdContainer]:
    """The package installed on the host, the schema applied, a container booted on top; the service is
    configured (drop-in) to ship to the test ClickHouse, with a short watchdog."""
    if deb_host.status() != "installed" or deb_host.installed_version() != deb.version:
        deb_host.install(deb.path)
    run(
        [
            COMMAND,
            "schema",
            "apply",
            "--config",
            str(CONFFILE),
            "--clickhouse-endpoint",
            clickhouse.url,
            "--database",
            ch_database,
        ],
        env=clean_env(),
    )
    settings = {
        "clickhouse.endpoint": clickhouse.url,
        "clickhouse.database": ch_database,
        "shipper.batch_wait": "0.2",
        "metrics.listen": "127.0.0.1:0",
    }
    env_lines = []
    for key, value in settings.items():
        name = deb_host.installed_setting_env(key)
        assert name, f"the installed agent has no setting {key}"
        env_lines.append(f"Environment={name}={value}")
    workdir = Path(tmp_path_factory.mktemp("container")) / "fs"
    container = SystemdContainer(workdir)
    try:
        container.start()
    except ContainerUnavailable as exc:
        pytest.skip(f"this host cannot boot a systemd container: {exc}")
    try:
        dropin = container.path(f"/etc/systemd/system/{SERVICE}.d/test.conf")
        dropin.parent.mkdir(parents=True)
        dropin.write_text("[Service]\n" + "\n".join(env_lines) + f"\nWatchdogSec={WATCHDOG_S}s\n")
        container.run(["systemctl", "daemon-reload"])
        # A policy-rc.d that forbids service actions (images and CI hosts often ship one; bootstrap.sh
        # uses one too) would turn the maintainer scripts' start/restart into no-ops: not in this box.
        container.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
        container.run(["useradd", "--system", "--no-create-home", "--groups", CLIENT_GROUP, MEMBER])
        container.run(["useradd", "--system", "--no-create-home", STRANGER])
        # Not /tmp: the container's systemd mounts a tmpfs there.
        container.path(DEB_DIR).mkdir(parents=True)
        (container.path(DEB_DIR) / deb.path.name).write_bytes(deb.path.read_bytes())
        yield container
    finally:
        if container.init_pid:
            print(f"==== {SERVICE} journal ====\n{container.journal(SERVICE)[-6000:]}")
        container.stop()


def started(box: SystemdContainer) -> dict[str, str]:
    """Start the service (a no-op when it runs); its state once systemd has READY=1."""
    box.run(["systemctl", "start", SERVICE], timeout=150)
    return box.show(
        SERVICE,
        "ActiveState",
        "SubState",
        "MainPID",
        "NRestarts",
        "StatusText",
        "User",
        "WatchdogUSec",
        "ExecMainStatus",
    )


def send_spans(box: SystemdContainer, user: str, tag: str, count: int) -> str:
    """``count`` spans through the real client library (the package's copy) as ``user``; flush()'s result."""
    code = textwrap.dedent(f"""
        from automagik_telemetry import AutomagikTelemetry
        telemetry = AutomagikTelemetry("packaging-container-test", "1.0")
        for i in range({count}):
            with telemetry.span("{tag}-%d" % i):
                pass
        print(telemetry.flush(timeout=20))
        telemetry.shutdown()
    """)
    result = box.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", str(VENV / "bin/python"), "-c", code],
        timeout=90,
    )
    return result.stdout.strip()


def shipped(clickhouse: Any, database: str, tag: str) -> int:
    return int(clickhouse.query(f"SELECT count() FROM {database}.traces WHERE span_name LIKE '{tag}-%'"))


def test_socket_unit_listens_at_the_stable_path_for_the_client_group_only(box: SystemdContainer) -> None:
    assert box.show(SOCKET, "ActiveState")["ActiveState"] == "active"
    owner = box.run(["stat", "-c", "%U:%G %a %F", SOCKET_PATH]).stdout.strip()
    assert owner == f"root:{CLIENT_GROUP} 660 socket"
    assert box.run(["stat", "-c", "%U %a", str(Path(SOCKET_PATH).parent)]).stdout.strip() == "root 755"


def test_service_reaches_ready_as_its_user_inside_the_sandbox(box: SystemdContainer) -> None:
    state = started(box)
    assert (state["ActiveState"], state["SubState"], state["User"]) == ("active", "running", USER), state
    assert state["StatusText"], "the supervisor sends STATUS="
    status = box.run(["cat", f"/proc/{state['MainPID']}/status"]).stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # SystemCallFilter= (and MemoryDenyWriteExecute=) applied
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    children = wait_until(
        lambda: box.run(["pgrep", "-P", state["MainPID"]], check=False).stdout.split(),
        timeout=10,
        message="the supervisor's children",
    )
    cgroup = box.run(["cat", f"/proc/{state['MainPID']}/cgroup"]).stdout
    assert len(children) == 3, "ingest, shipper and the OTLP receiver"
    for child in children:  # same cgroup: KillMode=mixed and MemoryMax= cover them
        assert box.run(["cat", f"/proc/{child}/cgroup"]).stdout == cgroup
        assert box.run(["stat", "-c", "%U", f"/proc/{child}"]).stdout.strip() == USER


def test_client_group_member_gets_spans_into_clickhouse_and_a_stranger_is_refused(
    box: SystemdContainer, clickhouse: Any, ch_database: str
) -> None:
    started(box)
    assert send_spans(box, MEMBER, "member", 200) == "True"
    wait_until(
        lambda: shipped(clickhouse, ch_database, "member") == 200,
        timeout=60,
        message="the member's 200 spans in ClickHouse",
    )
    probe = (
        "import socket\ns = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        f"try:\n    s.connect({SOCKET_PATH!r})\n    print('connected')\n"
        "except PermissionError:\n    print('refused')\n"
    )
    refused = box.run(
        [
            "setpriv",
            f"--reuid={STRANGER}",
            f"--regid={STRANGER}",
            "--init-groups",
            str(VENV / "bin/python"),
            "-c",
            probe,
        ]
    )
    assert refused.stdout.strip() == "refused"


def test_agent_processes_log_structured_journal_entries(box: SystemdContainer) -> None:
    # systemd-python is bundled: each process tags its entries (the shipper logs its totals when it stops).
    started(box)
    box.run(["systemctl", "restart", SERVICE], timeout=150)
    out = box.run(
        ["journalctl", "--no-pager", "-o", "json", "-t", "automagik-telemetry", "--output-fields=PROCESS,MESSAGE"]
    ).stdout
    processes = {json.loads(line).get("PROCESS") for line in out.splitlines() if line.strip()}
    assert {"supervisor", "shipper"} <= processes, processes


def test_watchdog_is_fed_while_the_agent_is_healthy(box: SystemdContainer) -> None:
    state = started(box)
    assert state["WatchdogUSec"] == f"{WATCHDOG_S}s"
    time.sleep(WATCHDOG_S * 2.5)
    after = box.show(SERVICE, "ActiveState", "MainPID", "NRestarts")
    assert (after["ActiveState"], after["MainPID"], after["NRestarts"]) == (
        "active",
        state["MainPID"],
        state["NRestarts"],
    ), box.journal(SERVICE)[-3000:]


def test_watchdog_restarts_the_service_when_a_child_hangs(box: SystemdContainer) -> None:
    # The other side of the test above: a frozen ingest stops the supervisor's pings, and with a watchdog
    # this short systemd acts before the supervisor would replace the child (agent.heartbeat_timeout).
    state = started(box)
    ingest = box.run(["pgrep", "-P", state["MainPID"], "-f", "automagik_telemetry_agent ingest"]).stdout.split()
    box.run(["kill", "-STOP", *ingest])
    wait_until(
        lambda: box.show(SERVICE, "NRestarts")["NRestarts"] != state["NRestarts"],
        timeout=60,
        message="a watchdog restart",
    )
    assert "Watchdog timeout" in box.journal(SERVICE)
    again = started(box)
    assert again["ActiveState"] == "active" and again["MainPID"] != state["MainPID"]


def test_status_command_reaches_the_control_socket_in_the_runtime_directory(box: SystemdContainer) -> None:
    started(box)
    result = box.run([COMMAND, "status", "--json"], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"running"' in result.stdout


def test_reload_keeps_the_process_and_config_check_works_while_it_runs(box: SystemdContainer) -> None:
    state = started(box)
    box.run(["systemctl", "reload", SERVICE], timeout=60)  # ExecReload=: SIGHUP, RELOADING=1 ... READY=1
    after = box.show(SERVICE, "ActiveState", "MainPID", "NRestarts")
    assert (after["ActiveState"], after["MainPID"], after["NRestarts"]) == (
        "active",
        state["MainPID"],
        state["NRestarts"],
    )
    # What agent.toml tells the admin to run before applying a change.
    check = box.run([COMMAND, "config", "check", "--no-runtime"], check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_stopping_the_service_keeps_the_socket_and_a_client_starts_it_again(
    box: SystemdContainer, clickhouse: Any, ch_database: str
) -> None:
    started(box)
    inode = box.run(["stat", "-c", "%i", SOCKET_PATH]).stdout
    box.run(["systemctl", "stop", SERVICE], timeout=90)
    assert box.show(SERVICE, "ActiveState", "Result") == {"ActiveState": "inactive", "Result": "success"}
    assert box.run(["stat", "-c", "%i %G", SOCKET_PATH]).stdout.split() == [inode.strip(), CLIENT_GROUP]
    assert box.run(["test", "-e", "/run/automagik-telemetry/private"], check=False).returncode == 1
    # Socket activation: the next client's connection starts the service again, on the same socket.
    assert send_spans(box, MEMBER, "reactivated", 50) == "True"
    assert box.show(SERVICE, "ActiveState")["ActiveState"] == "active"
    wait_until(
        lambda: shipped(clickhouse, ch_database, "reactivated") == 50,
        timeout=60,
        message="50 spans after socket activation",
    )


def test_upgrade_restarts_the_service_but_never_the_socket(box: SystemdContainer, deb: Deb) -> None:
    before = started(box)
    socket_since = box.show(SOCKET, "ActiveEnterTimestampMonotonic")
    inode = box.run(["stat", "-c", "%i", SOCKET_PATH]).stdout
    box.run(["dpkg", "--install", f"{DEB_DIR}/{deb.path.name}"], timeout=120)
    after = box.show(SERVICE, "ActiveState", "MainPID")
    assert after["ActiveState"] == "active" and after["MainPID"] != before["MainPID"], "restarted after upgrade"
    assert box.show(SOCKET, "ActiveEnterTimestampMonotonic") == socket_since
    assert box.run(["stat", "-c", "%i", SOCKET_PATH]).stdout == inode


def test_remove_stops_both_units_keeps_the_wal_and_purge_deletes_it(
    box: SystemdContainer, clickhouse: Any, ch_database: str
) -> None:
    started(box)
    assert send_spans(box, MEMBER, "before-remove", 10) == "True"
    wait_until(
        lambda: shipped(clickhouse, ch_database, "before-remove") == 10,
        timeout=60,
        message="10 spans before the remove",
    )
    wal_before = box.run(["ls", "/var/lib/automagik-telemetry/wal"]).stdout.split()
    box.run(["dpkg", "--remove", "automagik-telemetry"], timeout=120)
    for unit in (SERVICE, SOCKET):
        assert box.show(unit, "ActiveState")["ActiveState"] in ("inactive", "failed"), unit
    assert box.run(["test", "-e", SOCKET_PATH], check=False).returncode == 1, "RemoveOnStop= removes the socket"
    wal_after = box.run(["ls", "/var/lib/automagik-telemetry/wal"]).stdout.split()
    assert [f for f in wal_before if f.endswith(".seg")] and set(wal_before) <= set(wal_after) | {"LOCK"}
    box.run(["dpkg", "--purge", "automagik-telemetry"], timeout=120)
    assert box.run(["test", "-e", "/var/lib/automagik-telemetry"], check=False).returncode == 1
