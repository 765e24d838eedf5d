"""What `make deb` builds: the files, the metadata and the private virtualenv (checked with dpkg-deb)."""

from __future__ import annotations

import email.parser
import os
import re
import subprocess
import tomllib
from pathlib import Path

from deb_host import COMMAND, CONFFILE, PACKAGE, REPO, SERVICE, SOCKET, VENV, Deb, run

SITE = VENV / "lib/python3.11/site-packages"


def test_package_is_named_after_the_pyproject_version_and_the_host_architecture(deb: Deb) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    assert deb.path == REPO / "dist" / f"{PACKAGE}_{version}_{arch}.deb"
    assert (deb.field("Package"), deb.field("Version"), deb.field("Architecture")) == (PACKAGE, version, arch)


def test_package_ships_the_command_units_sysusers_and_default_config(deb: Deb) -> None:
    files = deb.files()
    for path in (
        f"/lib/systemd/system/{SERVICE}",
        f"/lib/systemd/system/{SOCKET}",
        f"/usr/lib/sysusers.d/{PACKAGE}.conf",
        str(CONFFILE),
        f"{VENV}/bin/{PACKAGE}",
        "/usr/share/doc/automagik-telemetry/README.packaging.md",
        "/usr/share/doc/automagik-telemetry/copyright",
        "/usr/share/automagik-telemetry/clickhouse/legacy/0001_traces.sql",  # for `schema apply`
        "/usr/share/automagik-telemetry/clickhouse/modern/0001_traces.sql",
    ):
        assert path in files, f"{path} is not in the package"
    assert files[COMMAND].startswith("l"), "/usr/bin/automagik-telemetry should link into the venv"
    assert deb.control_file("conffiles").split() == [str(CONFFILE)]


def test_package_ships_nothing_under_var_or_run_so_dpkg_never_removes_the_wal(deb: Deb) -> None:
    # dpkg deletes on remove what the package shipped; the WAL's directory is made by postinst and
    # systemd instead, and only postrm's purge branch deletes it (tests/packaging/test_install.py).
    shipped = [p for p in deb.files() if p.startswith(("/var", "/run"))]
    assert shipped == []


def test_package_depends_on_debian_python_3_11_libsystemd_and_a_sysusers_provider(deb: Deb) -> None:
    depends = [d.strip() for d in deb.field("Depends").split(",")]
    assert "python3.11" in depends
    assert "systemd | systemd-standalone-sysusers | systemd-sysusers" in depends
    assert "ca-certificates" in depends
    # systemd-python's _journal.so is linked against the system's libsystemd (dpkg-shlibdeps finds it).
    assert any(d.startswith("libsystemd0") for d in depends), depends


def test_venv_is_relocated_to_its_installed_path(deb_tree: Path) -> None:
    venv = deb_tree / VENV.relative_to("/")
    assert (venv / f"bin/{PACKAGE}").read_text().splitlines()[0] == f"#!{VENV}/bin/python"
    assert os.readlink(venv / "bin/python3.11") == "../../../bin/python3.11"  # /usr/bin/python3.11
    cfg = dict(line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines())
    assert cfg["home"] == "/usr/bin"
    assert cfg["include-system-site-packages"] == "false"
    # Nothing may name the build's staging directory (.../debian/automagik-telemetry/usr/lib/...).
    found = subprocess.run(
        ["grep", "-rlaF", f"/debian/{PACKAGE}{VENV}", str(deb_tree)], capture_output=True, text=True, check=False
    )
    assert found.stdout == "", f"files still naming the staging directory:\n{found.stdout}"


def test_venv_holds_the_agent_and_its_dependencies_precompiled_and_no_pip(deb_tree: Path) -> None:
    site = deb_tree / SITE.relative_to("/")
    names = {p.name for p in site.iterdir()}
    for module in (
        "automagik_telemetry",
        "automagik_telemetry_agent",
        "orjson",
        "zstandard",
        "requests",
        "prometheus_client",
        "certifi",
        "systemd",
    ):
        assert module in names, f"{module} missing from the venv"
    assert not {n for n in names if re.match(r"(pip|setuptools|wheel)(-|$)", n)}, "build tools in the venv"
    # Byte-compiled at build time: the service cannot write .pyc files under ProtectSystem=strict.
    cached = list((site / "automagik_telemetry_agent/cli/__pycache__").glob("__init__.cpython-311.pyc"))
    assert cached, "automagik_telemetry_agent is not byte-compiled"
    assert os.readlink(site / "certifi/cacert.pem") == "/etc/ssl/certs/ca-certificates.crt"


def test_every_bundled_distribution_is_pinned_in_packaging_requirements_at_its_pin(deb_tree: Path) -> None:
    site = deb_tree / SITE.relative_to("/")
    installed = {}
    for meta in site.glob("*.dist-info/METADATA"):
        fields = email.parser.Parser().parsestr(meta.read_text(), headersonly=True)  # any header order
        installed[fields["Name"].lower().replace("_", "-")] = fields["Version"]
    pins = dict(
        line.lower().split("==")
        for line in (REPO / "packaging/requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert installed.pop(PACKAGE) == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert installed == {name: pins.get(name) for name in installed}
