"""Fixtures of the ClickHouse cluster tests (helpers and API: tests/clickhouse_cluster.py).

* ``clickhouse_cluster``: a started :class:`ClickHouseCluster` -- one shard of two clickhouse-server
  18.16 replicas and one private ZooKeeper 3.8 (about 0.5 s to start).
* ``clickhouse_cluster_2shards``: the same with two shards of one replica each (started on first use).
* ``cluster_factory``: ``make(shards, replicas)`` for another layout; one cluster per layout.

All are module-scoped: a module's clusters are stopped when it ends (not kept running, about 250 MB
and a few background threads each, through the rest of the session).
* ``cluster_db``: a fresh database created ON CLUSTER on ``clickhouse_cluster``, dropped ON CLUSTER after
  the test.

After every test that used a cluster, whatever it left frozen or stopped (ZooKeeper, replicas) is thawed
and started again. Missing packages (clickhouse-server, zookeeper, java): the tests are skipped, except
under CI (CI=true), where they fail -- scripts/bootstrap.sh installs them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: clickhouse_server.py, clickhouse_cluster.py

from clickhouse_cluster import ClickHouseCluster, missing_dependencies


def _in_ci() -> bool:  # the rule of tests/conftest.py's IN_CI (not importable from here: two conftest modules)
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


class ClusterFactory:
    """``make(shards, replicas)``: a started cluster of that layout, one per layout per module."""

    def __init__(self) -> None:
        self.clusters: dict[tuple[int, int], ClickHouseCluster] = {}

    def __call__(self, shards: int = 1, replicas: int = 2) -> ClickHouseCluster:
        if (shards, replicas) not in self.clusters:
            missing = missing_dependencies()
            if missing:
                reason = "ClickHouse cluster fixture: " + "; ".join(missing)
                if _in_ci():
                    pytest.fail(f"{reason} (CI=true: a missing dependency is a failure)")
                pytest.skip(reason)
            cluster = ClickHouseCluster(shards, replicas)
            try:
                cluster.start()
            except BaseException:
                cluster.close()
                raise
            print(f"\n{cluster!r} started in {cluster.startup_seconds:.2f} s")
            self.clusters[shards, replicas] = cluster
        return self.clusters[shards, replicas]

    def close(self) -> None:
        for cluster in self.clusters.values():
            cluster.close()


@pytest.fixture(scope="module")
def cluster_factory() -> Iterator[ClusterFactory]:
    factory = ClusterFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def clickhouse_cluster(cluster_factory: ClusterFactory) -> ClickHouseCluster:
    return cluster_factory(1, 2)


@pytest.fixture(scope="module")
def clickhouse_cluster_2shards(cluster_factory: ClusterFactory) -> ClickHouseCluster:
    return cluster_factory(2, 1)


@pytest.fixture(autouse=True)
def _cluster_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """After any test that used a cluster: thaw/start what it left frozen or stopped."""
    yield
    for value in getattr(request.node, "funcargs", {}).values():
        clusters = value.clusters.values() if isinstance(value, ClusterFactory) else [value]
        for cluster in clusters:
            if isinstance(cluster, ClickHouseCluster):
                cluster.ensure_running()


@pytest.fixture
def cluster_db(clickhouse_cluster: ClickHouseCluster) -> Iterator[str]:
    with clickhouse_cluster.scratch_database() as name:
        yield name
