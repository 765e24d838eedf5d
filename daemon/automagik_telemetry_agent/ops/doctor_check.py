"""One check of ``doctor``: its status (``ok``, ``warn``, ``FAIL``), its line and, unless ok, its fix."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

__all__ = ["FAIL", "OK", "WARN", "AddCheck", "Check", "Status"]


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


OK, WARN, FAIL = Status.OK, Status.WARN, Status.FAIL


@dataclass(frozen=True, slots=True)
class Check:
    status: Status
    name: str
    detail: str
    fix: str = ""

    def lines(self) -> list[str]:
        out = [f"{self.status:<5} {self.name}: {self.detail}"]
        if self.fix and self.status != OK:
            out.append(f"      fix: {self.fix}")
        return out


class AddCheck(Protocol):
    """Records a check's result (``Doctor.add``)."""

    def __call__(self, status: Status, name: str, detail: str, fix: str = "") -> Check: ...
