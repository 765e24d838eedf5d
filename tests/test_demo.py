"""`make demo` (scripts/demo.py) runs end to end and its summary matches what the example sent."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_summary_matches_what_the_example_workers_sent() -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"spans sent (\d+), durable in the WAL (\d+), errors (\d+) \(sent (\d+)\)", result.stdout)
    assert match, result.stdout
    sent, durable, errors, errors_sent = map(int, match.groups())
    assert sent == durable == 4 * (500 * 2 + 1)
    assert errors == errors_sent > 0
    assert "demo: OK" in result.stdout
