"""Named exit codes of every automagik-telemetry command (documented in docs/operations.md).

The supervisor reads its children's codes too: CONFIG and UNAVAILABLE from a child mean "restarting
me will not help", so it gives up (CHILD_FAILED) instead of spinning in a restart loop.
"""

import sys

OK = 0
FAILURE = 1  # the command ran and found a problem (e.g. `wal verify` found corruption)
CONFIG = 2  # bad configuration or usage: fix the config, restarting will not help
CHILD_FAILED = 3  # `agent`: a child process could not start (bad config, or it died before it was ready)
UNAVAILABLE = 69  # EX_UNAVAILABLE: a needed optional component (extra) is not installed
IO_ERROR = 74  # EX_IOERR: the WAL's storage failed (e.g. fsync error); recovery runs at next start


def die(code: int, message: str) -> int:
    """End a command the way every failure an operator can fix ends: one line on stderr, a named code."""
    print(f"automagik-telemetry: {message}", file=sys.stderr)
    return code
