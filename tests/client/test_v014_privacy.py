"""automagik_telemetry.privacy behaves as in 0.1.4: every expected value below was produced by 0.1.4 itself.

Deliberate deviations from 0.1.4 are grouped at the end, each test saying what 0.1.4 did instead.
"""

from __future__ import annotations

from typing import Any

import pytest

from automagik_telemetry.privacy import (
    DEFAULT_CONFIG,
    SENSITIVE_KEYS,
    Patterns,
    PrivacyConfig,
    detect_pii,
    hash_value,
    redact_sensitive_keys,
    sanitize_email,
    sanitize_phone,
    sanitize_telemetry_data,
    sanitize_value,
    truncate_string,
)

HASH = PrivacyConfig(strategy="hash")
REDACT = PrivacyConfig(strategy="redact")
TRUNCATE = PrivacyConfig(strategy="truncate")
UNKNOWN = PrivacyConfig(strategy="bogus")  # type: ignore[arg-type]


# --- PrivacyConfig, constants -----------------------------------------------------------------------


def test_privacy_config_defaults_to_hashing_1000_characters_and_the_redacted_marker() -> None:
    config = PrivacyConfig()
    assert (config.strategy, config.max_string_length, config.redaction_text) == ("hash", 1000, "[REDACTED]")
    assert repr(config) == "PrivacyConfig(strategy='hash', max_string_length=1000, redaction_text='[REDACTED]')"
    assert config == DEFAULT_CONFIG


def test_sensitive_keys_are_the_thirteen_words_of_0_1_4_in_order() -> None:
    assert SENSITIVE_KEYS == [
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "access_token",
        "refresh_token",
        "private_key",
        "credit_card",
        "ssn",
        "social_security",
    ]


# --- hash_value -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sensitive-data", "sha256:c75b548d1c65c22b"),
        ("", "sha256:e3b0c44298fc1c14"),
        ("ção 🚀", "sha256:17fc084c1cabf1f9"),
        ("user@example.com", "sha256:b4c9a289323b21a0"),
    ],
)
def test_hash_value_is_sha256_prefix_plus_first_16_hex_digits_of_the_utf8_digest(value: str, expected: str) -> None:
    assert hash_value(value) == expected
    assert len(hash_value(value)) == len("sha256:") + 16


def test_hash_value_is_deterministic_and_distinguishes_values() -> None:
    assert hash_value("a") == hash_value("a")
    assert hash_value("a") != hash_value("b")


# --- detect_pii and Patterns ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "call +1-555-555-5555",
        "(555) 555-5555",
        "+44 20 7946 0958",
        "mail user@example.com",
        "sk_live_abcdefghijklmnopqrstuvwxyz",
        "Bearer abcdefghijklmnopqrstuvwx123",
        "card 4111-1111-1111-1111",
        "host 192.168.1.1",
        "/home/alice/x",
        "/Users/bob",
        "C:\\Users\\carol",
    ],
)
def test_detect_pii_finds_every_kind_of_pii(text: str) -> None:
    assert detect_pii(text) is True


@pytest.mark.parametrize("text", ["Hello world", "", "version 1.2.3", "x@y.c", "sk_test_short", "/home/"])
def test_detect_pii_is_false_for_text_without_pii(text: str) -> None:
    assert detect_pii(text) is False


@pytest.mark.parametrize("value", [None, 5555555555, 1.5, ["user@example.com"], b"user@example.com"])
def test_detect_pii_is_false_for_any_non_string(value: Any) -> None:
    assert detect_pii(value) is False


def test_patterns_match_the_spans_0_1_4_matches() -> None:
    assert [m.group(0) for m in Patterns.PHONE.finditer("a 555-555-5555 b +44 20 7946 0958 c 123456789")] == [
        "555-555-5555",
        "+44 20 7946 0958",
        "123456789",
    ]
    assert Patterns.EMAIL.findall("x a.b+c@d-e.example.org, x@y.c") == ["a.b+c@d-e.example.org"]
    assert [
        m.group(0) for m in Patterns.API_KEY.finditer("k=SK_TEST_abcdefghij0123456789 apikey=ABCDEFGHIJKLMNOPQRST")
    ] == ["SK_TEST_abcdefghij0123456789"]
    assert [m.group(0) for m in Patterns.CREDIT_CARD.finditer("4111 1111 1111 1111 and 4111111111111111")] == [
        "4111 1111 1111 1111",
        "4111111111111111",
    ]
    assert Patterns.IPV4.findall("999.999.999.999 1.2.3") == ["999.999.999.999"]
    assert Patterns.USER_PATH.findall("/HOME/x-1/y d:\\users\\Q_2\\z") == ["/HOME/x-1", "d:\\users\\Q_2"]


def test_card_numbers_accept_any_unicode_digit_while_other_patterns_need_ascii_digits() -> None:
    arabic_indic = "\u0664" * 16
    assert Patterns.CREDIT_CARD.search(arabic_indic)
    assert not Patterns.PHONE.search(arabic_indic)
    assert not Patterns.IPV4.search("\u0661.\u0661.\u0661.\u0661")


def test_patterns_keep_the_capture_groups_of_0_1_4() -> None:
    assert [p.groups for p in (Patterns.PHONE, Patterns.API_KEY, Patterns.EMAIL, Patterns.IPV4)] == [6, 1, 0, 0]
    match = Patterns.PHONE.search("+1 (555) 123-4567")
    assert match is not None
    assert match.groups()[:4] == ("+1 ", "555", "123", "4567")


# --- sanitize_phone ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (None, "Call sha256:7f0bc773627ab704 now"),
        (HASH, "Call sha256:7f0bc773627ab704 now"),
        (REDACT, "Call [REDACTED] now"),
        (TRUNCATE, "Call XXX-XXX-XXXX now"),
        (UNKNOWN, "Call +1-555-555-5555 now"),
    ],
)
def test_sanitize_phone_hashes_redacts_or_masks_per_strategy(config: PrivacyConfig | None, expected: str) -> None:
    assert sanitize_phone("Call +1-555-555-5555 now", config) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(555) 555-5555", "sha256:66219f90355c665e"),
        ("555.555.5555", "sha256:02ecddaf1473d031"),
        ("+44 20 7946 0958", "sha256:8326724cd3e7c541"),
        ("order 123456789", "order sha256:15e2b0d3c33891eb"),
    ],
)
def test_sanitize_phone_recognises_north_american_and_international_formats(text: str, expected: str) -> None:
    assert sanitize_phone(text) == expected


def test_sanitize_phone_replaces_every_number_and_leaves_other_text_alone() -> None:
    assert sanitize_phone("a 555-555-5555 and 555-555-5556") == "a sha256:89a0af94167fe6b9 and sha256:3198eb472237565b"
    assert sanitize_phone("a 555-555-5555 and 555-555-5556", REDACT) == "a [REDACTED] and [REDACTED]"
    assert sanitize_phone("no digits here", REDACT) == "no digits here"


def test_sanitize_phone_uses_the_configured_redaction_text() -> None:
    assert sanitize_phone("555-555-5555", PrivacyConfig(strategy="redact", redaction_text="<phone>")) == "<phone>"


# --- sanitize_email ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (None, "Contact: sha256:8076f84830ff13d8 now"),
        (HASH, "Contact: sha256:8076f84830ff13d8 now"),
        (REDACT, "Contact: [REDACTED] now"),
        (TRUNCATE, "Contact: Jo***@mail.example.org now"),
        (UNKNOWN, "Contact: John.Doe+tag@mail.example.org now"),
    ],
)
def test_sanitize_email_hashes_redacts_or_masks_per_strategy(config: PrivacyConfig | None, expected: str) -> None:
    assert sanitize_email("Contact: John.Doe+tag@mail.example.org now", config) == expected


def test_truncated_email_keeps_at_most_two_characters_of_the_local_part() -> None:
    assert sanitize_email("user@example.com", TRUNCATE) == "us***@example.com"
    assert sanitize_email("a@b.co", TRUNCATE) == "a***@b.co"
    assert sanitize_email("two a@b.io, cd@e.fr", TRUNCATE) == "two a***@b.io, cd***@e.fr"


def test_sanitize_email_needs_a_top_level_domain_of_two_letters() -> None:
    assert sanitize_email("x@y.c", REDACT) == "x@y.c"
    assert sanitize_email("a@b.co", REDACT) == "[REDACTED]"


# --- truncate_string --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        ("Very long string...", 10, "Very lo..."),
        ("abc", 3, "abc"),
        ("abcd", 3, "..."),
        ("abcd", 4, "abcd"),
        ("abcde", 4, "a..."),
        ("", 0, ""),
        ("x" * 1001, 1000, "x" * 997 + "..."),
    ],
)
def test_truncate_string_keeps_short_strings_and_cuts_long_ones_to_exactly_the_limit_with_dots(
    value: str, limit: int, expected: str
) -> None:
    assert truncate_string(value, limit) == expected


# --- sanitize_value ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key sk_live_abcdefghijklmnopqrstuvwxyz", "key [REDACTED]"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwx123", "Authorization: [REDACTED]"),
        ("api_key_ABCDEFGHIJKLMNOPQRST1234", "[REDACTED]"),
        ("SK_TEST_abcdefghij0123456789", "[REDACTED]"),
        ("sk_live_111111111111111111111111", "[REDACTED]"),
        ("apikey=ABCDEFGHIJKLMNOPQRST", "apikey=ABCDEFGHIJKLMNOPQRST"),
        ("from 192.168.1.1 to 10.0.0.255", "from sha256:c5eb5a4cc76a5cdb to sha256:26feaae483b6267c"),
        ("999.999.999.999", "sha256:a464c3cbffb2d7f0"),
        ("version 1.2.3", "version 1.2.3"),
        ("Error at /home/alice/project/file.ts", "Error at /[USER_PATH]/project/file.ts"),
        ("/Users/Bob-Smith/Desktop", "/[USER_PATH]/Desktop"),
        ("C:\\Users\\carol\\AppData", "/[USER_PATH]\\AppData"),
        ("mixed user@x.com 555-123-4567 /home/u", "mixed sha256:cf509b75924abd94 sha256:d36e83082288d9f2 /[USER_PATH]"),
        ("hello world", "hello world"),
    ],
)
def test_sanitize_value_scrubs_every_kind_of_pii_in_a_string_with_the_default_hash_strategy(
    text: str, expected: str
) -> None:
    assert sanitize_value(text) == expected


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (REDACT, "mixed [REDACTED] [REDACTED] /[USER_PATH]"),
        (TRUNCATE, "mixed us***@x.com XXX-XXX-XXXX /[USER_PATH]"),
        (UNKNOWN, "mixed user@x.com 555-123-4567 /[USER_PATH]"),
    ],
)
def test_sanitize_value_applies_the_strategy_to_phones_and_emails_but_always_masks_paths(
    config: PrivacyConfig, expected: str
) -> None:
    assert sanitize_value("mixed user@x.com 555-123-4567 /home/u", config) == expected


@pytest.mark.parametrize("config", [REDACT, TRUNCATE, UNKNOWN])
def test_ip_addresses_become_x_x_x_x_with_any_strategy_but_hash(config: PrivacyConfig) -> None:
    assert sanitize_value("ip 10.0.0.1", config) == "ip X.X.X.X"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (None, "card sha256:fa625b03d6bbd2cf-1111"),
        (REDACT, "card [REDACTED]-1111"),
        (TRUNCATE, "card XXX-XXX-XXXX-1111"),
        (UNKNOWN, "card [REDACTED]"),
    ],
)
def test_card_numbers_are_mostly_consumed_by_the_phone_pass_which_runs_first(
    config: PrivacyConfig | None, expected: str
) -> None:
    assert sanitize_value("card 4111-1111-1111-1111", config) == expected


def test_card_numbers_in_non_ascii_digits_are_redacted_whatever_the_strategy() -> None:
    assert sanitize_value("\u0664" * 16) == "[REDACTED]"
    assert (
        sanitize_value("c \u0664\u0661\u0661\u0661-1111-1111-1111", REDACT) == "c \u0664\u0661\u0661\u0661-[REDACTED]"
    )


def test_api_keys_are_redacted_before_the_phone_pattern_can_hash_their_digits() -> None:
    assert sanitize_value("sk_live_5555555555abcdefghijkl") == "[REDACTED]"


def test_strings_are_truncated_before_scrubbing_so_cut_off_pii_is_never_seen() -> None:
    assert sanitize_value("user@example.com and more text", PrivacyConfig(max_string_length=10)) == "user@ex..."
    assert sanitize_value("user@example.com and more", PrivacyConfig(max_string_length=19)) == (
        "sha256:b4c9a289323b21a0..."
    )
    long_text = sanitize_value("x" * 1005)
    assert long_text == "x" * 997 + "..."


def test_scrubbing_may_make_a_string_longer_than_max_string_length() -> None:
    result = sanitize_value("a" * 980 + " user@example.com")
    assert result == "a" * 980 + " sha256:b4c9a289323b21a0"
    assert len(result) > DEFAULT_CONFIG.max_string_length


@pytest.mark.parametrize("value", [None, 0, 7, -1.5, True, False])
def test_none_numbers_and_booleans_pass_through_unchanged(value: Any) -> None:
    result = sanitize_value(value)
    assert result == value
    assert type(result) is type(value)


def test_tuples_sets_bytes_and_other_objects_are_returned_as_is_without_scrubbing() -> None:
    for value in [("user@example.com",), {"user@example.com"}, b"user@example.com", object()]:
        assert sanitize_value(value) is value


def test_lists_and_dicts_are_copied_with_values_scrubbed_recursively_and_keys_untouched() -> None:
    data: dict[str, Any] = {
        "a": ["user@example.com", 5, None, {"b": "10.0.0.1"}],
        "n": 1.5,
        "t": True,
        "user@example.com": "k",
    }
    result = sanitize_value(data)
    assert result == {
        "a": ["sha256:b4c9a289323b21a0", 5, None, {"b": "sha256:f5047344122f0dee"}],
        "n": 1.5,
        "t": True,
        "user@example.com": "k",
    }
    assert data["a"][0] == "user@example.com"  # the input is not modified


def test_sanitize_value_without_config_follows_the_module_default_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DEFAULT_CONFIG, "strategy", "redact")
    assert sanitize_value("a@b.co") == "[REDACTED]"
    assert sanitize_phone("555-555-5555") == "[REDACTED]"


# --- redact_sensitive_keys --------------------------------------------------------------------------


def test_redact_sensitive_keys_matches_key_substrings_case_insensitively_in_nested_dicts() -> None:
    data: dict[str, Any] = {
        "username": "john",
        "Password": "x",
        "user_token": "t",
        "tokens_used": 3,
        "classname": "C",
        "nested": {"api_key": "k", "deep": {"SECRET_x": 1}, "ok": 2},
        "items": [{"password": "p"}],
    }
    assert redact_sensitive_keys(data, SENSITIVE_KEYS) == {
        "username": "john",
        "Password": "[REDACTED]",
        "user_token": "[REDACTED]",
        "tokens_used": "[REDACTED]",
        "classname": "[REDACTED]",  # contains "ssn"
        "nested": {"api_key": "[REDACTED]", "deep": {"SECRET_x": "[REDACTED]"}, "ok": 2},
        "items": [{"password": "p"}],  # lists are not entered
    }
    assert data["Password"] == "x"


def test_redact_sensitive_keys_lower_cases_the_given_words_and_uses_the_redaction_text() -> None:
    config = PrivacyConfig(redaction_text="***")
    assert redact_sensitive_keys({"a": 1, "MyPassWord": 2}, ["PASSWORD"], config) == {"a": 1, "MyPassWord": "***"}


def test_redact_sensitive_keys_with_no_words_copies_the_dict() -> None:
    data = {"password": "p", "inner": {"token": "t"}}
    result = redact_sensitive_keys(data, [])
    assert result == data
    assert result is not data


# --- sanitize_telemetry_data ------------------------------------------------------------------------


def test_sanitize_telemetry_data_redacts_sensitive_keys_then_scrubs_the_remaining_strings() -> None:
    data = {
        "user": {"email": "test@example.com", "password": "secret"},
        "message": "Error at /home/user/project/file.ts",
    }
    assert sanitize_telemetry_data(data) == {
        "user": {"email": "sha256:973dfe463ec85785", "password": "[REDACTED]"},
        "message": "Error at /[USER_PATH]/project/file.ts",
    }
    assert sanitize_telemetry_data(data, REDACT)["user"] == {"email": "[REDACTED]", "password": "[REDACTED]"}
    assert sanitize_telemetry_data(data, TRUNCATE)["user"] == {"email": "te***@example.com", "password": "[REDACTED]"}


def test_sanitize_telemetry_data_does_not_redact_keys_inside_lists_but_still_scrubs_their_strings() -> None:
    assert sanitize_telemetry_data({"items": [{"password": "p@ss"}], "id": "user@x.com"}) == {
        "items": [{"password": "p@ss"}],
        "id": "sha256:cf509b75924abd94",
    }


# --- deliberate deviations from 0.1.4 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [("abcdef", 2, ".."), ("abcdef", 1, "."), ("abcdef", 0, ""), ("abcdef", -1, ""), ("", -5, "")],
)
def test_a_limit_below_three_gives_only_dots_and_never_exceeds_the_limit(value: str, limit: int, expected: str) -> None:
    # 0.1.4 sliced with a negative index: truncate_string("abcdef", 2) == "abcde..." (longer than the input).
    assert truncate_string(value, limit) == expected


@pytest.mark.parametrize("text", ["a@b.co", "555-555-5555", "sk_live_abcdefghijklmnopqrstuvwxyz"])
@pytest.mark.parametrize("redaction", ["\\1", "\\g<0>", "a\\b"])
def test_the_redaction_text_is_inserted_verbatim_even_with_backslashes(text: str, redaction: str) -> None:
    # 0.1.4 used it as a re.sub template: "\\g<0>" re-inserted the PII itself, "\\1" could raise re.error.
    assert sanitize_value(text, PrivacyConfig(strategy="redact", redaction_text=redaction)) == redaction


def test_non_string_keys_are_matched_by_their_str_instead_of_raising() -> None:
    # 0.1.4 raised AttributeError ("'int' object has no attribute 'lower'").
    assert sanitize_telemetry_data({1: "x", None: "user@x.com", ("password",): "p"}) == {  # type: ignore[dict-item]
        1: "x",
        None: "sha256:cf509b75924abd94",
        ("password",): "[REDACTED]",
    }
