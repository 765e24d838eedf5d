"""A child process's life under the supervisor: the channel's format, the child's link and reporter,
its liveness, and :func:`~.run.run_child`, the one start-up path of the ingest and shipper processes."""
