"""PII scrubbing for telemetry payloads, compatible with the ``automagik_telemetry.privacy`` module of 0.1.4.

Two independent passes are available:

* ``redact_sensitive_keys``: replaces the *value* of every dict entry whose key contains one of a list of
  words (``SENSITIVE_KEYS`` by default in ``sanitize_telemetry_data``), at any dict depth.
* ``sanitize_value``: rewrites every string (inside lists and dicts too) where a regex of ``Patterns``
  finds an API key, a phone number, an e-mail address, a card number, an IPv4 address or a home-directory
  path. What replaces a match depends on ``PrivacyConfig.strategy``.

Hashes are ``"sha256:"`` followed by the first 16 hex digits of the SHA-256 of the UTF-8 text, so the same
value always gives the same token and can still be counted or joined on.

Stdlib only.
"""

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DEFAULT_CONFIG",
    "SENSITIVE_KEYS",
    "Patterns",
    "PrivacyConfig",
    "SanitizationStrategy",
    "detect_pii",
    "hash_value",
    "redact_sensitive_keys",
    "sanitize_email",
    "sanitize_phone",
    "sanitize_telemetry_data",
    "sanitize_value",
    "truncate_string",
]

SanitizationStrategy = Literal["hash", "redact", "truncate"]

_HASH_PREFIX = "sha256:"
_HASH_HEX_DIGITS = 16
_ELLIPSIS = "..."
_MASKED_PHONE = "XXX-XXX-XXXX"
_MASKED_IPV4 = "X.X.X.X"
_MASKED_USER_PATH = "/[USER_PATH]"
_EMAIL_KEPT_CHARS = 2


@dataclass
class PrivacyConfig:
    """How ``sanitize_*`` rewrite what they find.

    ``strategy``: ``"hash"`` replaces a phone number, e-mail or IPv4 address by its ``hash_value``;
    ``"redact"`` by ``redaction_text`` (IPv4: ``X.X.X.X``); ``"truncate"`` masks it (phone:
    ``XXX-XXX-XXXX``, e-mail: first two characters of the local part then ``***@domain``, IPv4:
    ``X.X.X.X``). API keys and card numbers are always replaced by ``redaction_text``, home-directory
    paths always by ``/[USER_PATH]``.

    ``max_string_length``: ``sanitize_value`` first truncates longer strings (see ``truncate_string``).
    """

    strategy: SanitizationStrategy = "hash"
    max_string_length: int = 1000
    redaction_text: str = "[REDACTED]"


#: Used whenever a function's ``config`` is ``None`` (looked up at call time).
DEFAULT_CONFIG = PrivacyConfig()


class Patterns:
    """The compiled regular expressions behind ``detect_pii`` and ``sanitize_value``.

    They are deliberately broad: a false positive costs a scrubbed value, a false negative leaks PII.
    Every digit class is ASCII ``[0-9]`` except in ``CREDIT_CARD``, which accepts any Unicode digit.
    """

    PHONE = re.compile(
        r"""
        # North-American: optional +1, area code (optionally in parentheses), 3 + 4 digits.
        (\+?1[-.\s]?)?  \(?([0-9]{3})\)?  [-.\s]?([0-9]{3})  [-.\s]?([0-9]{4})
        |
        # International: optional +CC prefix, 2-4 digit area code (optionally in parentheses),
        # then 3-4 and 4 digits.
        (\+?[0-9]{1,3}[-.\s]?)?  (\([0-9]{2,4}\)|[0-9]{2,4})  [-.\s]?[0-9]{3,4}  [-.\s]?[0-9]{4}
        """,
        re.VERBOSE,
    )

    EMAIL = re.compile(
        r"""
        [a-zA-Z0-9._%+-]+  @  [a-zA-Z0-9.-]+  \.[a-zA-Z]{2,}
        """,
        re.VERBOSE,
    )

    API_KEY = re.compile(
        r"""
        \b
        ( [sp]k_(?:live|test)_    # Stripe-style secret / publishable keys
        | bearer\s+               # HTTP bearer tokens
        | api[_-]?key[_-]?        # api_key... / apikey... / api-key-...
        )
        [a-zA-Z0-9_-]{20,}
        \b
        """,
        re.VERBOSE | re.IGNORECASE,
    )

    CREDIT_CARD = re.compile(
        r"""
        \b (?:\d{4}[-\s]?){3} \d{4} \b
        """,
        re.VERBOSE,
    )

    IPV4 = re.compile(
        r"""
        \b (?:[0-9]{1,3}\.){3} [0-9]{1,3} \b
        """,
        re.VERBOSE,
    )

    USER_PATH = re.compile(
        r"""
        /(?:home|users)/[a-z0-9_-]+      # Unix and macOS home directories
        |
        [a-z]:\\users\\[a-z0-9_-]+       # Windows profile directories
        """,
        re.VERBOSE | re.IGNORECASE,
    )


#: Key words whose entries ``sanitize_telemetry_data`` redacts (case-insensitive substring match).
SENSITIVE_KEYS = [
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

_DETECTORS = (
    Patterns.PHONE,
    Patterns.EMAIL,
    Patterns.API_KEY,
    Patterns.CREDIT_CARD,
    Patterns.IPV4,
    Patterns.USER_PATH,
)


def _resolve(config: PrivacyConfig | None) -> PrivacyConfig:
    return DEFAULT_CONFIG if config is None else config


def _literal(text: str) -> Callable[[re.Match[str]], str]:
    """A ``re.sub`` replacement that inserts ``text`` verbatim (no backslash or group expansion)."""
    return lambda _match: text


def _hash_match(match: re.Match[str]) -> str:
    return hash_value(match.group(0))


def _mask_email(match: re.Match[str]) -> str:
    local, _, domain = match.group(0).partition("@")
    return f"{local[:_EMAIL_KEPT_CHARS]}***@{domain}"


def hash_value(value: str) -> str:
    """``"sha256:"`` + the first 16 hex digits of the SHA-256 of ``value`` encoded as UTF-8."""
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()
    return _HASH_PREFIX + digest[:_HASH_HEX_DIGITS]


def detect_pii(value: str) -> bool:
    """Whether any of ``Patterns`` matches somewhere in ``value``; ``False`` for a non-string."""
    if not isinstance(value, str):
        return False
    return any(pattern.search(value) is not None for pattern in _DETECTORS)


def _sanitize_matches(
    pattern: re.Pattern[str], mask: Callable[[re.Match[str]], str], value: str, config: PrivacyConfig | None
) -> str:
    """``value`` with every match of ``pattern`` hashed, redacted or (strategy ``truncate``) ``mask``-ed;
    unchanged under an unknown strategy."""
    strategy = _resolve(config)
    if strategy.strategy == "hash":
        return pattern.sub(_hash_match, value)
    if strategy.strategy == "redact":
        return pattern.sub(_literal(strategy.redaction_text), value)
    if strategy.strategy == "truncate":
        return pattern.sub(mask, value)
    return value


def sanitize_phone(value: str, config: PrivacyConfig | None = None) -> str:
    """``value`` with every phone number hashed, redacted or masked as ``XXX-XXX-XXXX``.

    An unknown strategy leaves ``value`` unchanged.
    """
    return _sanitize_matches(Patterns.PHONE, _literal(_MASKED_PHONE), value, config)


def sanitize_email(value: str, config: PrivacyConfig | None = None) -> str:
    """``value`` with every e-mail address hashed, redacted or masked (``jo***@example.com``).

    An unknown strategy leaves ``value`` unchanged.
    """
    return _sanitize_matches(Patterns.EMAIL, _mask_email, value, config)


def truncate_string(value: str, max_length: int) -> str:
    """``value`` if it has at most ``max_length`` characters, else cut so that, with ``...`` appended,
    it is exactly ``max_length`` long.

    A limit below 3 leaves no room for any of the original text: the result is the first
    ``max_length`` dots of ``...`` (empty for 0 or less).
    """
    if len(value) <= max_length:
        return value
    if max_length < len(_ELLIPSIS):
        return _ELLIPSIS[: max(max_length, 0)]
    return value[: max_length - len(_ELLIPSIS)] + _ELLIPSIS


def _scrub_text(text: str, config: PrivacyConfig | None) -> str:
    settings = _resolve(config)
    redaction = _literal(settings.redaction_text)
    text = truncate_string(text, settings.max_string_length)
    # API keys go first: the phone regex would otherwise eat digit runs inside a key.
    text = Patterns.API_KEY.sub(redaction, text)
    text = sanitize_phone(text, config)
    text = sanitize_email(text, config)
    text = Patterns.CREDIT_CARD.sub(redaction, text)
    text = Patterns.IPV4.sub(_hash_match if settings.strategy == "hash" else _literal(_MASKED_IPV4), text)
    return Patterns.USER_PATH.sub(_MASKED_USER_PATH, text)


def sanitize_value(value: Any, config: PrivacyConfig | None = None) -> Any:
    """``value`` with PII scrubbed from every string in it.

    Strings are truncated to ``max_string_length`` and then rewritten; lists and dicts are copied with
    their items (dict values, not keys) sanitized recursively; everything else (``None``, numbers,
    booleans, tuples, sets, other objects) is returned as is.
    """
    if isinstance(value, str):
        return _scrub_text(value, config)
    if isinstance(value, list):
        return [sanitize_value(item, config) for item in value]
    if isinstance(value, dict):
        return {key: sanitize_value(item, config) for key, item in value.items()}
    return value


def _is_sensitive(key: object, words: list[str]) -> bool:
    lowered_key = (key if isinstance(key, str) else str(key)).lower()
    return any(word.lower() in lowered_key for word in words)


def redact_sensitive_keys(obj: dict[str, Any], keys: list[str], config: PrivacyConfig | None = None) -> dict[str, Any]:
    """A copy of ``obj`` where the value of each key containing one of ``keys`` (case-insensitively) is
    replaced by ``redaction_text``; nested dicts are processed the same way, lists are not entered.
    """
    redaction_text = _resolve(config).redaction_text
    redacted: dict[str, Any] = {}
    for key, item in obj.items():
        if _is_sensitive(key, keys):
            redacted[key] = redaction_text
        elif isinstance(item, dict):
            redacted[key] = redact_sensitive_keys(item, keys, config)
        else:
            redacted[key] = item
    return redacted


def sanitize_telemetry_data(data: dict[str, Any], config: PrivacyConfig | None = None) -> dict[str, Any]:
    """``redact_sensitive_keys`` with ``SENSITIVE_KEYS``, then ``sanitize_value`` on the result."""
    scrubbed: dict[str, Any] = sanitize_value(redact_sensitive_keys(data, SENSITIVE_KEYS, config), config)
    return scrubbed
