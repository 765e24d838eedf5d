"""The OTLP/HTTP receiver: the ``otlp`` child of the supervisor (docs/otlp.md).

It turns ``POST /v1/traces|logs|metrics`` (protobuf or JSON, gzip or not) into the same RECORDS
messages the Python client sends, hands them to ingest over the agent socket, and answers 200 only
after ingest acknowledged every one of them as durable in the WAL.
"""
