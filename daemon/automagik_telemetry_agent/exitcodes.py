"""Named exit codes of every automagik-telemetry command (documented in docs/operations.md)."""

OK = 0
FAILURE = 1  # the command ran and found a problem (e.g. `wal verify` found corruption)
CONFIG = 2  # bad configuration or usage: fix the config, restarting will not help
UNAVAILABLE = 69  # EX_UNAVAILABLE: a needed optional component (extra) is not installed
IO_ERROR = 74  # EX_IOERR: the WAL's storage failed (e.g. fsync error); recovery runs at next start
