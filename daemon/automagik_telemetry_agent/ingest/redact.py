"""Host-wide redaction rules, applied by ingest to every RECORDS message before it is written to the WAL.

An operator can enforce privacy on the host whatever the applications do (their client's privacy setting
is theirs; docs/configuration.md ``redact.*``). Two rules, off by default (then nothing is parsed):

* ``redact.keys``: the value of every attribute (resource, span, event, link, log, data point, and inside
  ``kvlistValue`` maps) whose key contains one of these words, case-insensitively, becomes
  ``{"stringValue": "[REDACTED]"}`` (0.1.4's sensitive-key rule; ``redact.keys = "default"`` is its list);
* ``redact.pii``: every string value (``stringValue`` anywhere, log bodies included, and span status
  messages) is rewritten with the client's privacy patterns, strategy ``redact``: e-mail addresses, phone
  numbers, API keys, card numbers, IPv4 addresses, home-directory paths.

A line that is not JSON is left as it is (the shipper dead-letters it); the line count never changes, so
the message stays what the client sent, rewritten. Each value changed is counted
(``automagik_telemetry_ingest_redacted_values_total``). Stdlib ``json``: ingest runs without the ``agent``
extra (only the shipper and the OTLP receiver need orjson).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from automagik_telemetry.privacy import SENSITIVE_KEYS, PrivacyConfig, sanitize_value

REDACTED = "[REDACTED]"
#: ``sanitize_value`` truncates before it rewrites; the agent must not shorten what it keeps.
_PII = PrivacyConfig(strategy="redact", max_string_length=1 << 30, redaction_text=REDACTED)


@dataclass(frozen=True)
class RedactRules:
    keys: tuple[str, ...] = ()  # lower-case words
    pii: bool = False

    @property
    def active(self) -> bool:
        return bool(self.keys) or self.pii

    @classmethod
    def from_config(cls, keys: str, pii: bool) -> RedactRules:
        words = SENSITIVE_KEYS if keys.strip().lower() == "default" else keys.split(",")
        return cls(tuple(w.strip().lower() for w in words if w.strip()), pii)


class Redactor:
    def __init__(self, rules: RedactRules) -> None:
        self.rules = rules
        self.redacted = 0  # values changed, cumulative

    def apply(self, payload: bytes) -> bytes:
        """The payload (resource line + record lines) with the rules applied, every line still one line."""
        lines = payload.split(b"\n")
        changed = False
        for i, line in enumerate(lines):
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:  # not JSON (or not UTF-8): the shipper's business
                continue
            before = self.redacted
            obj = self._walk(obj)
            if self.redacted != before:
                lines[i] = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
                changed = True
        return b"\n".join(lines) if changed else payload

    def _walk(self, x: Any) -> Any:
        if type(x) is dict:
            key = x.get("key")
            if type(key) is str and "value" in x and self._sensitive(key):
                if x["value"] != {"stringValue": REDACTED}:
                    self.redacted += 1
                return {**x, "value": {"stringValue": REDACTED}}
            out = {}
            for k, v in x.items():
                if self.rules.pii and type(v) is str and k in ("stringValue", "message"):
                    clean = sanitize_value(v, _PII)
                    if clean != v:
                        self.redacted += 1
                    out[k] = clean
                else:
                    out[k] = self._walk(v)
            return out
        if type(x) is list:
            return [self._walk(v) for v in x]
        return x

    def _sensitive(self, key: str) -> bool:
        lowered = key.lower()
        return any(word in lowered for word in self.rules.keys)
