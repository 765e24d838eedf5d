"""Ingest's host-wide redaction rules on RECORDS payloads: which values change, that every line stays
one line, that what is not JSON is left alone, and that each change is counted."""

from __future__ import annotations

import orjson

from automagik_telemetry import protocol
from automagik_telemetry_agent.ingest.redact import REDACTED, Redactor, RedactRules


def kv(key: str, value: object) -> dict[str, object]:
    return {"key": key, "value": {"stringValue": value} if isinstance(value, str) else value}


RESOURCE = {"attributes": [kv("service.name", "shop"), kv("deploy.token", "t0k3n")]}
SPAN = {
    "traceId": "ab" * 16,
    "spanId": "cd" * 8,
    "name": "signup",
    "attributes": [
        kv("user.email", "jane.doe@example.com"),
        kv("note", "call 555-123-4567 now"),
        kv("nested", {"kvlistValue": {"values": [kv("api_key", "k-123"), kv("ok", "fine")]}}),
        kv("count", {"intValue": 3}),
    ],
    "events": [{"name": "e", "attributes": [kv("password", "hunter2")]}],
    "status": {"code": 2, "message": "mail jane.doe@example.com failed"},
}
LOG = {"body": {"stringValue": "login by jane.doe@example.com"}, "attributes": [kv("Authorization", "Bearer x")]}


def payload(*lines: object) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


def test_sensitive_keys_are_redacted_everywhere_and_counted() -> None:
    redactor = Redactor(RedactRules.from_config("password, token, api_key, authorization", pii=False))
    out = redactor.apply(payload(RESOURCE, SPAN, LOG))
    resource, span, log = (orjson.loads(line) for line in out.splitlines())
    assert resource["attributes"][1]["value"] == {"stringValue": REDACTED}
    assert span["events"][0]["attributes"][0]["value"] == {"stringValue": REDACTED}
    assert span["attributes"][2]["value"]["kvlistValue"]["values"][0]["value"] == {"stringValue": REDACTED}
    assert span["attributes"][2]["value"]["kvlistValue"]["values"][1]["value"] == {"stringValue": "fine"}
    assert log["attributes"][0]["value"] == {"stringValue": REDACTED}  # case-insensitive
    assert span["attributes"][0]["value"] == {"stringValue": "jane.doe@example.com"}  # keys only: pii off
    assert redactor.redacted == 4  # deploy.token, api_key (nested), password (event), Authorization


def test_pii_patterns_rewrite_string_values_bodies_and_status_messages() -> None:
    redactor = Redactor(RedactRules.from_config("", pii=True))
    out = redactor.apply(payload(RESOURCE, SPAN, LOG))
    text = out.decode()
    for secret in ("jane.doe@example.com", "555-123-4567"):
        assert secret not in text
    assert "hunter2" in text  # no key rule: a password without a pattern stays
    span = orjson.loads(out.splitlines()[1])
    assert span["attributes"][3]["value"] == {"intValue": 3} and span["name"] == "signup"
    assert redactor.redacted == 4  # e-mail, phone, status message, log body


def test_the_default_keys_are_014s_and_lines_and_count_are_kept_and_junk_untouched() -> None:
    redactor = Redactor(RedactRules.from_config("default", pii=True))
    raw = payload(RESOURCE, SPAN) + b"{not json\n" + payload(LOG)
    out = redactor.apply(raw)
    protocol.check_records_payload(out, 3)  # still a resource line and 3 record lines
    assert out.splitlines()[2] == b"{not json"
    assert "hunter2" not in out.decode() and "t0k3n" not in out.decode()


def test_without_rules_nothing_is_parsed_or_changed() -> None:
    rules = RedactRules.from_config("", pii=False)
    assert not rules.active
    raw = payload(RESOURCE, SPAN)
    redactor = Redactor(rules)
    assert redactor.apply(raw) == raw and redactor.redacted == 0
