"""The shipper: WAL -> frozen batches -> a sink, committing the WAL cursor only on success; the dead-letter
file and its replay, one bisection for both, pacing, the in-flight record, and its process entry point."""
