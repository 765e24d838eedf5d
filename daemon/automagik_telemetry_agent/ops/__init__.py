"""The operator's tools behind ``status``, ``doctor`` and ``send-test``: what they check and how they say it."""
