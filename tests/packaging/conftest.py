"""Fixtures of the Debian package tests (helpers: deb_host.py).

* ``deb``: the package, built once per session with ``make deb`` (about 25 s with a cached
  wheelhouse; the first build downloads the wheels).
* ``deb_tree``: the package's files, extracted with ``dpkg-deb -x``.
* ``host``: this machine, made ready for ``dpkg -i``: root, no installation that is not the tests'
  own; purged at the end of the session.
* ``installed``: the package installed (installs it if a previous test removed or purged it).
* ``run_dir``: a fresh directory in /tmp owned by the package's user (sockets of a hand-run agent).

Needs root for dpkg: skipped when not root, except under CI (CI runs as root, so there it fails).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # deb_host.py
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: agent_process.py, conftest's IN_CI

import deb_host
from deb_host import Deb


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.packaging)


@pytest.fixture(scope="session")
def deb() -> Deb:
    built = deb_host.build()
    print(f"\nmake deb: {built.path.name} in {built.build_seconds:.1f} s")
    return built


@pytest.fixture(scope="session")
def deb_tree(deb: Deb, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("deb-tree")
    deb_host.run(["dpkg-deb", "--extract", str(deb.path), str(tree)])
    return tree


@pytest.fixture(scope="session")
def host() -> Iterator[None]:
    if os.geteuid() != 0:
        message = "the Debian package tests install the package with dpkg: run them as root"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    lock = deb_host.HostLock().acquire()  # another test session on this host waits, not clobbers
    foreign = deb_host.foreign_installation()
    if foreign:
        lock.release()
        pytest.fail(foreign)
    deb_host.purge()  # what an interrupted earlier run left
    try:
        yield
    finally:
        try:
            deb_host.purge()
        finally:
            lock.release()


@pytest.fixture
def installed(host: None, deb: Deb) -> Deb:
    if deb_host.status() != "installed" or deb_host.installed_version() != deb.version:
        deb_host.install(deb.path)
    return deb


@pytest.fixture
def run_dir(installed: Deb) -> Iterator[Path]:
    path = deb_host.service_user_dir("at-pkg-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
