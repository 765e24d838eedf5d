"""SQL text: migration files split into statements, plain identifiers and string literals for the
statements the agent builds, and the ``FORMAT TabSeparated`` answers read back; the
``execute(sql) -> text`` callable that runs them over HTTP or in chDB, and :class:`SchemaError`, what
the schema code raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["Executor", "SchemaError", "identifier", "one_line", "quote", "split_statements", "tsv_rows"]

#: ``execute(sql) -> text``: runs one statement and returns its output (the SQL names the format).
Executor = Callable[[str], str]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SchemaError(RuntimeError):
    """The schema cannot be brought up to date safely (changed migration, mixed profiles, bad files)."""


def identifier(name: str) -> str:
    """``name`` if it is a plain ClickHouse identifier (safe to splice into SQL), else ValueError."""
    if type(name) is not str or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain identifier ([A-Za-z_][A-Za-z0-9_]*): {name!r}")
    return name


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``exc``'s text on one line, cut to ``limit`` characters (18.16 repeats the cause of a failed remote())."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(value: str) -> str:
    """``value`` as a single-quoted ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_TSV_ESCAPES = {"t": "\t", "n": "\n", "\\": "\\", "'": "'", "0": "\0", "r": "\r", "b": "\b", "f": "\f"}


def tsv_rows(text: str) -> list[list[str]]:
    """``FORMAT TabSeparated`` output as rows of unescaped fields (blank lines skipped)."""
    rows = []
    for line in text.splitlines():
        if not line:
            continue
        rows.append([re.sub(r"\\(.)", lambda m: _TSV_ESCAPES.get(m.group(1), m.group(1)), f) for f in line.split("\t")])
    return rows


def split_statements(sql: str) -> list[str]:
    """Split SQL text on top-level ``;``, dropping comments; quotes and comments may contain ``;``.

    Understands ``'...'`` strings (``\\`` escapes and doubled quotes), ``"..."`` and backquoted
    identifiers, ``--`` and ``#`` line comments and nestable ``/* */`` block comments. Returns the
    non-empty statements without their ``;``, surrounding whitespace and blank lines removed.
    """
    statements: list[str] = []
    buf: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            j = i + 1
            while j < n:
                d = sql[j]
                if d == "\\":
                    j += 2
                    continue
                if d == c:
                    if j + 1 < n and sql[j + 1] == c:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            if j >= n:
                raise SchemaError(f"unterminated {c}-quoted text in SQL")
            buf.append(sql[i : j + 1])
            i = j + 1
        elif (c == "-" and sql.startswith("--", i)) or c == "#":
            j = sql.find("\n", i)
            i = n if j < 0 else j  # keep the newline
        elif c == "/" and sql.startswith("/*", i):
            depth, j = 1, i + 2
            while depth and j < n:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:
                raise SchemaError("unterminated /* comment in SQL")
            buf.append(" ")
            i = j
        elif c == ";":
            statements.append("".join(buf))
            buf = []
            i += 1
        else:
            buf.append(c)
            i += 1
    statements.append("".join(buf))
    out = []
    for s in statements:
        lines = [line.rstrip() for line in s.splitlines()]
        text = "\n".join(line for line in lines if line.strip()).strip()
        if text:
            out.append(text)
    return out
