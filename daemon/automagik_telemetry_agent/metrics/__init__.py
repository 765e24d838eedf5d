"""The agent's own metrics: the catalogue, the metrics dict children report, histograms, and the supervisor's
Prometheus exposition. Each child's collector lives next to what it reads (``ingest.metrics``,
``shipper.metrics``)."""
