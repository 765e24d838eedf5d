"""What clients report about themselves (CLIENT_STATS): their loss counters, summed over client instances."""

from __future__ import annotations

import json
from collections import Counter

MAX_CLIENT_INSTANCES = 10_000
#: Client counters are attacker-controlled JSON: bound the distinct names, their length and the values,
#: so that the agent's STATS reply (which carries their totals) always fits in one message.
MAX_CLIENT_COUNTER_NAMES = 256
MAX_CLIENT_COUNTER_NAME_LEN = 64
MAX_CLIENT_COUNTER_VALUE = 2**63 - 1


class ClientCounters:
    """Client-reported counters (CLIENT_STATS), summed over client instances, monotonic.

    A client instance reports cumulative counters; the agent keeps the latest report per instance
    and folds instances it must forget (bounded memory) into ``retired``.
    """

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, int]] = {}
        self.retired: Counter[str] = Counter()
        self.names: dict[str, str] = {}  # every counter name kept so far (interned)

    def report(self, payload: bytes) -> bool:
        try:
            data = json.loads(payload)
        except ValueError:
            return False
        if not isinstance(data, dict) or not isinstance(data.get("instance"), str):
            return False
        counters = {
            self._name(k): v
            for k, v in data.items()
            if isinstance(v, int)
            and not isinstance(v, bool)
            and 0 <= v <= MAX_CLIENT_COUNTER_VALUE
            and len(k) <= MAX_CLIENT_COUNTER_NAME_LEN
            and (k in self.names or len(self.names) < MAX_CLIENT_COUNTER_NAMES)
        }
        instance = data["instance"][:64]
        previous = self.latest.pop(instance, {})
        # Cumulative counters never go down; keep the max so a reordered report cannot subtract.
        self.latest[instance] = {k: max(v, previous.get(k, 0)) for k, v in (previous | counters).items()}
        while len(self.latest) > MAX_CLIENT_INSTANCES:
            oldest = next(iter(self.latest))
            self.retired.update(self.latest.pop(oldest))
        return True

    def _name(self, name: str) -> str:
        return self.names.setdefault(name, name)

    def totals(self) -> dict[str, int]:
        total = Counter(self.retired)
        for counters in self.latest.values():
            total.update(counters)
        return dict(total)
