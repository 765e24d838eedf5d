"""deploy/compose cannot run here (no Docker), so it is checked against the rest of the repository: every file
it mounts or copies exists, the agent's config loads with the real config loader and agrees with the
Prometheus target, the ClickHouse users, Grafana's data sources and the dashboards; every environment
variable it gives the agent is a real setting; its commands are real subcommands; its ClickHouse init
script, run with a stand-in clickhouse-client, sends exactly the rendered user SQL."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_process import run_cli

from automagik_telemetry_agent.clickhouse.schema import MIGRATIONS_ENV
from automagik_telemetry_agent.config import ENV_PREFIX, SETTINGS, load_config, split_listen

from .deploy_helpers import COMPOSE, GRAFANA, REPO, TRACES_DASHBOARD, USERS, load_json, variables

AGENT_IMAGE_SERVICES = ("schema", "agent", "example")
SETTING_ENV = {s.env_name: s for s in SETTINGS}
OTHER_AGENT_ENV = {MIGRATIONS_ENV, ENV_PREFIX + "CONFIG"}
CLIENT_ENV = set(
    re.findall(r'"(AUTOMAGIK_TELEMETRY_[A-Z_]+)"', (REPO / "client/automagik_telemetry/settings.py").read_text())
)
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[?-][^}]*)?\}")


def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


def services() -> dict[str, Any]:
    return compose()["services"]


def env_of(service: str, fill: str = "x") -> dict[str, str]:
    """A service's environment with ``${VAR...}`` interpolations replaced by ``fill``."""
    return {k: _INTERPOLATION.sub(fill, str(v)) for k, v in (services()[service].get("environment") or {}).items()}


def binds(service: str) -> dict[str, Path]:
    """Container path -> repository path of a service's bind mounts (named volumes left out)."""
    out = {}
    for volume in services()[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (COMPOSE / source).resolve()
    return out


def named_volumes(service: str) -> dict[str, str]:
    """Volume name -> container path."""
    out = {}
    for volume in services()[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/")):
            out[source] = target
    return out


def agent_toml() -> Path:
    command = services()["agent"]["command"]
    return binds("agent")[command[command.index("--config") + 1]]


def agent_config() -> Any:
    return load_config(str(agent_toml()), env=env_of("agent"))


def dockerfile() -> str:
    return (COMPOSE / "Dockerfile").read_text()


def test_every_file_compose_mounts_or_builds_from_exists() -> None:
    for name, service in services().items():
        for target, source in binds(name).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert REPO in source.parents, f"{name}: {source} is outside the repository"
        if "build" in service:
            context = (COMPOSE / service["build"]["context"]).resolve()
            assert context == REPO
            assert (context / service["build"]["dockerfile"]).resolve() == COMPOSE / "Dockerfile"
    for name in compose()["volumes"]:
        assert any(name in named_volumes(s) for s in services()), f"volume {name} is not used"


def test_dockerfile_copies_what_the_package_build_and_the_services_need() -> None:
    copies = {}
    for line in dockerfile().splitlines():
        if line.startswith("COPY "):
            *sources, target = line.split()[1:]
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                copies[source.rstrip("/")] = target
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {
        "pyproject.toml",
        project["project"]["readme"],
        *project["tool"]["setuptools"]["packages"]["find"]["where"],
    }
    assert needed <= set(copies), f"the image build needs {sorted(needed - set(copies))}"
    env = dict(re.findall(r"^ENV (\w+)=(\S+)", dockerfile(), re.MULTILINE))
    assert set(env) <= OTHER_AGENT_ENV | set(SETTING_ENV), env
    assert env[MIGRATIONS_ENV] == copies["deploy/clickhouse"]  # where `schema apply` finds the migrations
    example = services()["example"]["entrypoint"][-1]
    assert example.startswith(copies["examples"] + "/")
    assert (REPO / "examples" / example.removeprefix(copies["examples"] + "/")).is_file()


def test_agent_environment_names_are_real_settings() -> None:
    for name in AGENT_IMAGE_SERVICES:
        for key in env_of(name):
            if key.startswith(ENV_PREFIX):
                allowed = SETTING_ENV.keys() | OTHER_AGENT_ENV | (CLIENT_ENV if name == "example" else set())
                assert key in allowed, f"{name}: {key} is not an agent setting's environment variable"
    assert {"AUTOMAGIK_TELEMETRY_SOCKET", "AUTOMAGIK_TELEMETRY_ENABLED"} <= CLIENT_ENV


def test_agent_commands_are_real_subcommands() -> None:
    entrypoint = shlex.split(re.search(r"^ENTRYPOINT (.*)$", dockerfile(), re.MULTILINE).group(1).replace('"', ""))
    entrypoint = [w.strip("[],") for w in entrypoint]
    assert entrypoint == ["automagik-telemetry"]
    default = [w.strip('[]",') for w in re.search(r"^CMD (.*)$", dockerfile(), re.MULTILINE).group(1).split()]
    for command in (default, services()["schema"]["command"], services()["agent"]["command"]):
        words = [w for w in command if not w.startswith("-") and not w.startswith("/") and not w.isdigit()]
        done = run_cli(*words, "--help")
        assert done.returncode == 0, f"automagik-telemetry {' '.join(words)}: {done.stderr}"


def test_agent_config_loads_and_agrees_with_prometheus_clickhouse_and_the_socket_volume() -> None:
    config = agent_config()
    assert config.sources["clickhouse.password"] == "env"  # from .env, never from the file
    assert config["sink"] == "clickhouse"
    # Prometheus scrapes the agent's container on its metrics port.
    host, port = split_listen(config["metrics.listen"])
    assert host == "0.0.0.0"
    scrape = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [f"agent:{port}"]
    # The endpoint is the clickhouse service's HTTP port.
    endpoint = urllib.parse.urlsplit(config["clickhouse.endpoint"])
    assert endpoint.hostname == "clickhouse" and endpoint.hostname in services()
    assert any(p.endswith(f":{endpoint.port}") for p in services()["clickhouse"]["ports"])
    # Socket and WAL live on the named volumes, and the example app sends to the same socket path.
    socket_dir = os.path.dirname(config["socket.path"])
    assert named_volumes("agent")["agent-socket"] == socket_dir
    assert named_volumes("example")["agent-socket"] == socket_dir
    assert env_of("example")["AUTOMAGIK_TELEMETRY_SOCKET"] == config["socket.path"]
    assert config["wal.dir"].startswith(named_volumes("agent")["agent-wal"] + "/")
    assert config["socket.mode"] == 0o666  # other containers' users must be able to connect
    # The host install's scrape config uses the agent's default metrics.listen.
    default_listen = next(s.default for s in SETTINGS if s.key == "metrics.listen")
    host_scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    assert host_scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [default_listen]


def test_schema_service_config_loads_as_the_clickhouse_admin() -> None:
    config = load_config(None, env=env_of("schema", fill="admin-pw"))
    assert urllib.parse.urlsplit(config["clickhouse.endpoint"]).hostname == "clickhouse"
    assert config["clickhouse.username"] == services()["clickhouse"]["environment"]["CLICKHOUSE_USER"]
    admin = services()["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"]
    assert services()["schema"]["environment"]["AUTOMAGIK_TELEMETRY_CLICKHOUSE_PASSWORD"] == admin
    agent = agent_config()
    assert (config["clickhouse.database"], config["clickhouse.table"]) == (
        agent["clickhouse.database"],
        agent["clickhouse.table"],
    )


def test_env_example_lists_every_variable_compose_needs() -> None:
    text = (COMPOSE / "compose.yaml").read_text()
    needed = set(_INTERPOLATION.findall(text))
    listed = set(re.findall(r"^(\w+)=", (COMPOSE / "env.example").read_text(), re.MULTILINE))
    assert needed == listed


def test_clickhouse_init_script_sends_the_rendered_users(tmp_path: Path) -> None:
    """Run deploy/compose/clickhouse-init.sh with a stand-in clickhouse-client that records its input; the
    users mount (/automagik-users) is pointed at deploy/clickhouse/users."""
    assert binds("clickhouse")["/automagik-users"] == USERS
    init_target = next(t for t, s in binds("clickhouse").items() if s == COMPOSE / "clickhouse-init.sh")
    assert init_target.startswith("/docker-entrypoint-initdb.d/") and init_target.endswith(".sh")
    fake = tmp_path / "bin" / "clickhouse-client"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "ARGS $*" >> {tmp_path}/calls\ncat >> {tmp_path}/calls\n')
    fake.chmod(0o755)
    script = (COMPOSE / "clickhouse-init.sh").read_text().replace("/automagik-users", str(USERS))
    env = {
        **env_of("clickhouse"),
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "CLICKHOUSE_PASSWORD": "adm",
        "AGENT_CLICKHOUSE_PASSWORD": "agent-pw",
        "GRAFANA_CLICKHOUSE_PASSWORD": "grafana-pw",
    }
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text()
    agent_hash = hashlib.sha256(b"agent-pw").hexdigest()
    grafana_hash = hashlib.sha256(b"grafana-pw").hexdigest()
    assert f"CREATE USER IF NOT EXISTS automagik_agent IDENTIFIED WITH sha256_hash BY '{agent_hash}'" in calls
    assert f"CREATE USER IF NOT EXISTS grafana IDENTIFIED WITH sha256_hash BY '{grafana_hash}'" in calls
    assert "GRANT INSERT, SELECT ON telemetry.traces TO automagik_agent" in calls
    assert calls.count("ARGS --host 127.0.0.1 --user admin --password adm --multiquery") == 2
    assert "agent-pw" not in calls and "grafana-pw" not in calls
    # The users it creates are the ones the agent and Grafana log in as.
    assert agent_config()["clickhouse.username"] == "automagik_agent"
    # A failing client stops the script (the container's first start fails loudly, not half set up).
    fake.write_text("#!/bin/sh\ncat >/dev/null\nexit 3\n")
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0


def test_grafana_provisioning_matches_the_services_and_the_dashboards() -> None:
    grafana = binds("grafana")
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/automagik-telemetry.yml").read_text())
    by_type = {d["type"]: d for d in datasources["datasources"]}
    dashboard_vars = variables(load_json(TRACES_DASHBOARD))
    clickhouse = by_type[dashboard_vars["datasource"]["query"]]
    assert clickhouse["jsonData"]["host"] == "clickhouse" and clickhouse["jsonData"]["protocol"] == "http"
    assert any(p.endswith(f":{clickhouse['jsonData']['port']}") for p in services()["clickhouse"]["ports"])
    assert clickhouse["jsonData"]["username"] == "grafana"  # created by clickhouse-init.sh
    password_var = re.fullmatch(r"\$\{(\w+)\}", clickhouse["secureJsonData"]["password"]).group(1)
    assert password_var in services()["grafana"]["environment"]
    config = agent_config()
    assert clickhouse["jsonData"]["defaultDatabase"] == config["clickhouse.database"]
    assert dashboard_vars["database"]["query"] == config["clickhouse.database"]
    assert dashboard_vars["table"]["query"] == config["clickhouse.table"]
    prometheus = urllib.parse.urlsplit(by_type["prometheus"]["url"])
    assert prometheus.hostname == "prometheus"
    assert any(p.endswith(f":{prometheus.port}") for p in services()["prometheus"]["ports"])
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/automagik-telemetry.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert grafana[path] == GRAFANA / "dashboards"
    assert grafana["/etc/grafana/provisioning/datasources"] == GRAFANA / "provisioning/datasources"
    assert grafana["/etc/grafana/provisioning/dashboards"] == GRAFANA / "provisioning/dashboards"


@pytest.mark.parametrize("service", ["clickhouse", "prometheus", "grafana"])
def test_published_ports_are_loopback_only(service: str) -> None:
    for port in services()[service].get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"{service} publishes {port} beyond this host"
    assert "ports" not in services()["agent"]  # metrics stay inside the compose network
