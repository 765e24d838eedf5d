"""Parsers of configuration values: each takes what a TOML file, an env var or a flag gives and returns
the value, or raises ValueError saying what is wrong (the loader prefixes where it was set)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from typing import Any

#: Bytes of an AF_UNIX socket path, without the terminating NUL (sun_path is 108 bytes on Linux).
SUN_PATH_MAX = 107

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "ti": 1024**4,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_size(value: Any) -> int:
    """Bytes from 1048576, "64MiB", "1 GB" (decimal units are powers of 1000, binary of 1024)."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 64MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size (examples: 1048576, 64MiB, 2GB)")
    return int(match.group(1)) * _SIZE_FACTORS[(match.group(2) or "").lower()]


def parse_duration(value: Any) -> float:
    """Seconds from 1.5, "50ms", "2s", "5m", "1h"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 50ms")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration (examples: 50ms, 2s, 5m)")
    return float(match.group(1)) * _DURATION_FACTORS[match.group(2)]


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


def parse_float(minimum: float = 0.0) -> Callable[[Any], float]:
    """A number of at least ``minimum`` (an int or a float, or text of one)."""

    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number") from None
        if not number >= minimum or number == float("inf"):
            raise ValueError(f"must be a finite number of at least {minimum:g}")
        return number

    return parse


def parse_int(minimum: int = 0) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a whole number") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}")
        return number

    return parse


def parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return text

    return parse


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_identifier(value: Any) -> str:
    """A plain ClickHouse name (database, table): the shipper splices it into SQL, so nothing else."""
    text = parse_str(value)
    if not _IDENTIFIER.fullmatch(text):
        raise ValueError(f"{text!r} is not a plain name (letters, digits and _, not starting with a digit)")
    return text


def parse_url(value: Any) -> str:
    """An http(s)://host[:port][/path] URL without credentials, query string or fragment.

    Credentials in the URL would end up in logs and ``ps`` output, and a query string would be a
    second place for settings; both are refused with what to use instead. The message never
    repeats a password.
    """
    text = parse_str(value).strip()
    try:
        parsed = urllib.parse.urlsplit(text)
        port = parsed.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port (example: http://localhost:8123)") from None
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"{text!r} is not an http:// or https:// URL (example: http://localhost:8123)")
    if parsed.username is not None or parsed.password is not None:
        raise ValueError(
            "the URL must not carry credentials: remove 'user:password@' and set --username "
            "and --password-file (clickhouse.username, clickhouse.password_file)"
        )
    if not parsed.hostname:
        raise ValueError(f"{text!r} has no host (example: http://localhost:8123)")
    if port == 0:
        raise ValueError(f"{text!r} has port 0 (example: http://localhost:8123)")
    if parsed.query or parsed.fragment or text.endswith(("?", "#")):
        raise ValueError(
            "the URL must not have a query string or fragment: remove '?...' (credentials go in "
            "--username and --password-file, the target in --database and --table)"
        )
    return text


def parse_urls(value: Any) -> str:
    """One or more endpoint URLs (each as :func:`parse_url`): a comma-separated string or a TOML list, kept as
    one comma-separated string (:func:`split_urls` gives the tuple). Duplicates are refused."""
    items = value if isinstance(value, list | tuple) else parse_str(value).split(",")
    urls = [parse_url(item).rstrip("/") for item in items if parse_str(item).strip()]
    if not urls:
        raise ValueError("no endpoint given (example: http://localhost:8123, or several separated by commas)")
    seen = [u for i, u in enumerate(urls) if u in urls[:i]]
    if seen:
        raise ValueError(f"{seen[0]} is listed twice")
    return ",".join(urls)


def split_urls(value: str) -> tuple[str, ...]:
    """The endpoints of a :func:`parse_urls` value, in the order given (the first is preferred)."""
    return tuple(u for u in value.split(",") if u)


def parse_optional_identifier(value: Any) -> str:
    """A plain ClickHouse name (see :func:`parse_identifier`), or "" for none."""
    text = parse_str(value).strip()
    return parse_identifier(text) if text else ""


def parse_mode(value: Any) -> int:
    """A file mode from 0o660, 432, or "0660"."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        try:
            mode = int(str(value), 8)
        except ValueError:
            raise ValueError(f"{value!r} is not an octal file mode like 0660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value!r} is not a file mode")
    return mode


_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d{1,5})$")


def split_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9479"`` -> ("127.0.0.1", 9479); ``"[::1]:9479"`` -> ("::1", 9479). ValueError if malformed."""
    match = _LISTEN.match(value.strip())
    port = int(match.group("port")) if match else -1
    if not match or port > 65535:
        raise ValueError(
            f"{value!r} is not host:port (examples: 127.0.0.1:9479, [::1]:9479, 0.0.0.0:9479; "
            'port 0 = any free port; "" turns the endpoint off)'
        )
    return match.group("v6") or match.group("host"), port


def parse_listen(value: Any) -> str:
    """A listen address "host:port" (IPv6 as "[::1]:port"), or "" for none."""
    text = parse_str(value).strip()
    if text:
        split_listen(text)
    return text
