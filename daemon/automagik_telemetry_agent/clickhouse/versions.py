"""What a ClickHouse server's version says it supports: the ``SELECT version()`` answer parsed, and the
:class:`~.sink.Capabilities` the HTTP sink detects from it (request compression, dedup tokens, async
inserts).
"""

from __future__ import annotations

import itertools

from .sink import Capabilities

__all__ = ["server_capabilities", "version_parts", "version_tuple"]

ZSTD_MIN_VERSION = (21, 1)
DEDUP_TOKEN_MIN_VERSION = (22, 2)
ASYNC_INSERT_MIN_VERSION = (21, 11)
#: Async inserts with tokens registered them against the wrong partition (silent loss) before 26.3.17.65.
ASYNC_INSERT_TOKEN_MIN_VERSION = (26, 3, 17, 65)


def version_parts(version: str) -> tuple[int, ...]:
    """``"26.3.17.65"`` -> (26, 3, 17, 65); the numbers up to the first non-digit ("24.8.1.2-lts" -> (24, 8, 1, 2))."""
    parts: list[int] = []
    for part in version.strip().split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(part):
            break
    return tuple(parts)


def version_tuple(version: str) -> tuple[int, int]:
    """``(major, minor)`` of ``version``; ``(0, 0)`` when it does not start with two numbers."""
    parts = version.strip().split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


def server_capabilities(version: str) -> Capabilities:
    """The capabilities of a server answering ``version`` to ``SELECT version()``."""
    vt = version_tuple(version)
    return Capabilities(
        version,
        vt >= ZSTD_MIN_VERSION,
        vt >= DEDUP_TOKEN_MIN_VERSION,
        async_insert=vt >= ASYNC_INSERT_MIN_VERSION,
        async_insert_with_token=version_parts(version) >= ASYNC_INSERT_TOKEN_MIN_VERSION,
    )
