"""Sizes and durations written for humans (log lines, ``status``, ``doctor``, systemd's STATUS=)."""

from __future__ import annotations

_SIZE_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def size_text(n: float | None) -> str:
    """``0 B``, ``512 B``, ``4.0 KiB``, ``1.5 GiB``."""
    if not n:
        return "0 B"
    for unit, factor in _SIZE_UNITS:
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)} B"


def duration_text(seconds: float | None) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12.3s``: two units at most; ``-`` for unknown."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    parts = [(int(s // 86400), "d"), (int(s % 86400 // 3600), "h"), (int(s % 3600 // 60), "m"), (int(s % 60), "s")]
    first = next(i for i, (n, _) in enumerate(parts) if n)
    return " ".join(f"{n}{unit}" for n, unit in parts[first : first + 2])
