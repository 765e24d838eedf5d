"""Ingest: the socket server that takes clients' RECORDS messages into the WAL and acknowledges what is
durable (:mod:`.server`), the client-reported counters, its metrics dict, and its process entry point."""
