"""Fixtures for tests that run the real agent process (helpers: tests/agent_process.py).

* ``agent``: a started :class:`AgentProcess` with default settings, or the ones a test names with
  ``@pytest.mark.agent_settings(max_connections=5, fsync="always")``.
* ``agent_factory``: ``make(**settings)`` starts more agents (each in its own directory) for tests
  that need other settings, a special WAL directory or a ``preexec_fn``.

Every agent started through them is stopped at teardown: gracefully (SIGTERM) after a passing test,
SIGKILL after a failing one; a failing test's report also shows the agent's stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: agent_process.py

from agent_process import AgentProcess


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "agent_settings(**flags): settings of the `agent` fixture's agent")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"_agent_rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"_agent_rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


@pytest.fixture
def agent_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def make(directory: Path | None = None, **settings: Any) -> AgentProcess:
        agent = AgentProcess(directory or tmp_path / f"agent{len(started)}", **settings)
        started.append(agent)
        return agent.start()

    yield make
    failed = _failed(request)
    for agent in started:
        agent.cleanup(graceful=not failed)
        if failed:
            print(f"==== agent pid {agent.proc.pid if agent.proc else '-'} stderr (last 8 KiB) ====")
            print(agent.stderr_text[-8192:])


@pytest.fixture
def agent(agent_factory: Callable[..., AgentProcess], request: pytest.FixtureRequest) -> AgentProcess:
    marker = request.node.get_closest_marker("agent_settings")
    return agent_factory(**(marker.kwargs if marker else {}))
