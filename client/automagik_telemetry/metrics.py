"""Metrics: instruments that aggregate in the process, and the data points the sender ships.

``client.counter(...)``, ``up_down_counter``, ``gauge`` and ``histogram`` return instruments whose
``add``/``set``/``record`` cost a lock and a dict update: they aggregate per attribute set and the
sender thread exports one data point per series every ``metrics_interval`` (and at flush and exit),
never a record per call. Counters are cumulative (OTLP aggregation temporality 2, from the
instrument's creation), histograms have explicit buckets with count, sum, min and max. An
instrument keeps at most ``max_series`` attribute sets; later ones are folded into one overflow
series (attribute ``otel.metric.overflow = true``) and counted.

``track_metric`` (automagik-telemetry 0.1.4's API) is the other way in: one data point per call.
"""

# ruff: noqa: UP031  (%-templates, like span.py: the sender thread writes every record line)
from __future__ import annotations

import abc
import bisect
import enum
import itertools
import math
import threading
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring
from time import time_ns
from typing import ClassVar

from .attributes import key_values
from .protocol import RecordKind

#: The OpenTelemetry SDK's default explicit bucket boundaries.
DEFAULT_BOUNDARIES: tuple[float, ...] = (0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000)
OVERFLOW_ATTRIBUTES: dict[str, object] = {"otel.metric.overflow": True}
CUMULATIVE = 2  # OTLP AggregationTemporality
_quote = encode_basestring


class MetricType(enum.Enum):
    """The kinds ``track_metric`` takes, as in automagik-telemetry 0.1.4."""

    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


def metric_type_of(value: MetricType | str) -> MetricType:
    """A member, or its value in any case; anything else is GAUGE (as 0.1.4 did)."""
    if isinstance(value, MetricType):
        return value
    if isinstance(value, str):
        try:
            return MetricType(value.strip().lower())
        except ValueError:
            return MetricType.GAUGE
    return MetricType.GAUGE


class PointKind(enum.Enum):
    GAUGE = "gauge"
    SUM = "sum"
    HISTOGRAM = "histogram"


def _number(value: float) -> str:
    """A data point value: ``asInt`` for ints, ``asDouble`` for finite floats (JSON has no NaN)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return '"asInt":%d' % value
    real = float(value)
    return '"asDouble":%s' % (repr(real) if math.isfinite(real) else "0.0")


class MetricPoint:
    """One data point of one metric (a record of kind METRIC); ``to_line`` is its OTLP/JSON ``Metric``."""

    __slots__ = (
        "attributes",
        "bounds",
        "bucket_counts",
        "count",
        "description",
        "kind",
        "maximum",
        "minimum",
        "monotonic",
        "name",
        "start_ns",
        "time_ns",
        "unit",
        "value",
    )

    record_kind: ClassVar[RecordKind] = RecordKind.METRIC

    def __init__(
        self,
        name: str,
        kind: PointKind,
        attributes: Mapping[str, object] | None,
        start_ns: int,
        time_unix_ns: int,
        *,
        value: float = 0,
        unit: str = "",
        description: str = "",
        monotonic: bool = False,
        count: int = 0,
        minimum: float = 0.0,
        maximum: float = 0.0,
        bounds: Sequence[float] = (),
        bucket_counts: Sequence[int] = (),
    ) -> None:
        self.name, self.kind, self.attributes = name, kind, attributes
        self.start_ns, self.time_ns = start_ns, time_unix_ns
        self.value, self.unit, self.description, self.monotonic = value, unit, description, monotonic
        self.count, self.minimum, self.maximum = count, minimum, maximum
        self.bounds, self.bucket_counts = bounds, bucket_counts

    def to_line(self, max_length: int) -> bytes:
        attributes = key_values(self.attributes, max_length)
        times = '"startTimeUnixNano":%d,"timeUnixNano":%d' % (self.start_ns, self.time_ns)
        if self.kind is PointKind.HISTOGRAM:
            point = (
                '{%s,"count":%d,"sum":%s,"min":%s,"max":%s,"explicitBounds":[%s],"bucketCounts":[%s],"attributes":%s}'
                % (
                    times,
                    self.count,
                    _float(self.value),
                    _float(self.minimum),
                    _float(self.maximum),
                    ",".join(_float(b) for b in self.bounds),
                    ",".join(str(int(n)) for n in self.bucket_counts),
                    attributes,
                )
            )
            data = '"histogram":{"dataPoints":[%s],"aggregationTemporality":%d}' % (point, CUMULATIVE)
        else:
            point = '{%s,%s,"attributes":%s}' % (times, _number(self.value), attributes)
            if self.kind is PointKind.SUM:
                data = '"sum":{"dataPoints":[%s],"aggregationTemporality":%d,"isMonotonic":%s}' % (
                    point,
                    CUMULATIVE,
                    "true" if self.monotonic else "false",
                )
            else:
                data = '"gauge":{"dataPoints":[%s]}' % point
        line = '{"name":%s,"unit":%s,"description":%s,%s}\n' % (
            _quote(self.name[:max_length]),
            _quote(self.unit[:256]),
            _quote(self.description[:max_length]),
            data,
        )
        return line.encode("utf-8", "replace")


def _float(value: float) -> str:
    real = float(value)
    return repr(real) if math.isfinite(real) else "0.0"


def single_point(
    name: str, value: float, metric_type: MetricType, attributes: Mapping[str, object] | None
) -> MetricPoint:
    """``track_metric``'s data point: a gauge, a monotonic cumulative sum, or a one-value histogram."""
    now = time_ns()
    if metric_type is MetricType.COUNTER:
        return MetricPoint(name, PointKind.SUM, attributes, now, now, value=value, monotonic=True)
    if metric_type is MetricType.HISTOGRAM:
        real = float(value)
        return MetricPoint(
            name,
            PointKind.HISTOGRAM,
            attributes,
            now,
            now,
            value=real,
            count=1,
            minimum=real,
            maximum=real,
            bounds=(),
            bucket_counts=(1,),
        )
    return MetricPoint(name, PointKind.GAUGE, attributes, now, now, value=value)


def _series_key(attributes: Mapping[str, object] | None) -> tuple[tuple[str, object], ...]:
    """A hashable key of an attribute set (order-independent; unhashable values by their repr)."""
    if not attributes:
        return ()
    try:
        key = tuple(sorted(attributes.items()))
        hash(key)
        return key
    except TypeError:
        return tuple(sorted((str(k), repr(v)) for k, v in attributes.items()))


class Instrument(abc.ABC):
    """What every instrument shares: identity, the series table with its cap, the lock."""

    point_kind: ClassVar[PointKind] = PointKind.GAUGE
    monotonic: ClassVar[bool] = False

    def __init__(self, name: str, unit: str = "", description: str = "", max_series: int = 2000) -> None:
        self.name, self.unit, self.description = str(name), str(unit), str(description)
        self.max_series = max_series
        self.start_ns = time_ns()
        self.overflowed = 0  # measurements folded into the overflow series
        self.errors = 0
        self._lock = threading.Lock()
        self._attributes: dict[tuple[tuple[str, object], ...], Mapping[str, object] | None] = {}

    def _key(self, attributes: Mapping[str, object] | None) -> tuple[tuple[str, object], ...]:
        """The series ``attributes`` belong to (call with the lock held): its own, or the overflow one."""
        key = _series_key(attributes)
        if key not in self._attributes:
            if len(self._attributes) >= self.max_series:
                self.overflowed += 1
                key = (("otel.metric.overflow", True),)
                self._attributes.setdefault(key, OVERFLOW_ATTRIBUTES)
                return key
            self._attributes[key] = dict(attributes) if attributes else None
        return key

    def reset(self) -> None:
        """After fork, in the child: a new lock and no series (the parent reports its own)."""
        self._lock = threading.Lock()
        self._attributes = {}
        self.start_ns = time_ns()
        self._clear()

    @abc.abstractmethod
    def _clear(self) -> None:
        """Forget every series' state (each instrument keeps its own kind)."""

    @abc.abstractmethod
    def collect(self, now: int) -> list[MetricPoint]:
        """One data point per series, as of ``now``."""


class _Sum(Instrument):
    point_kind = PointKind.SUM

    def __init__(self, name: str, unit: str = "", description: str = "", max_series: int = 2000) -> None:
        super().__init__(name, unit, description, max_series)
        self._sums: dict[tuple[tuple[str, object], ...], float] = {}

    def add(self, value: float, attributes: Mapping[str, object] | None = None) -> None:
        """Add ``value`` to the series of ``attributes``; never raises."""
        try:
            if self.monotonic and not value >= 0:
                self.errors += 1  # a counter only goes up (OpenTelemetry drops negative adds too)
                return
            with self._lock:
                key = self._key(attributes)
                self._sums[key] = self._sums.get(key, 0) + value
        except Exception:
            self.errors += 1

    def _clear(self) -> None:
        self._sums = {}

    def collect(self, now: int) -> list[MetricPoint]:
        with self._lock:
            items = [(self._attributes[k], v) for k, v in self._sums.items()]
        return [
            MetricPoint(
                self.name,
                PointKind.SUM,
                attrs,
                self.start_ns,
                now,
                value=v,
                unit=self.unit,
                description=self.description,
                monotonic=self.monotonic,
            )
            for attrs, v in items
        ]


class Counter(_Sum):
    """A monotonic cumulative sum: ``add(value >= 0, attributes)``."""

    monotonic = True


class UpDownCounter(_Sum):
    """A non-monotonic cumulative sum: ``add(value, attributes)``, value may be negative."""

    monotonic = False


class Gauge(Instrument):
    """The last value set per series: ``set(value, attributes)``."""

    def __init__(self, name: str, unit: str = "", description: str = "", max_series: int = 2000) -> None:
        super().__init__(name, unit, description, max_series)
        self._values: dict[tuple[tuple[str, object], ...], tuple[float, int]] = {}

    def set(self, value: float, attributes: Mapping[str, object] | None = None) -> None:
        """Set the series of ``attributes`` to ``value``; never raises."""
        try:
            now = time_ns()
            with self._lock:
                self._values[self._key(attributes)] = (value, now)
        except Exception:
            self.errors += 1

    def _clear(self) -> None:
        self._values = {}

    def collect(self, now: int) -> list[MetricPoint]:
        with self._lock:
            items = [(self._attributes[k], v, t) for k, (v, t) in self._values.items()]
        return [
            MetricPoint(self.name, PointKind.GAUGE, attrs, t, t, value=v, unit=self.unit, description=self.description)
            for attrs, v, t in items
        ]


class _Buckets:
    __slots__ = ("count", "counts", "maximum", "minimum", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf


class Histogram(Instrument):
    """Explicit-bucket histogram per series: ``record(value, attributes)``; a bucket holds values
    ``<= its bound`` (OTLP), the last one everything above the last bound."""

    point_kind = PointKind.HISTOGRAM

    def __init__(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        boundaries: Sequence[float] | None = None,
        max_series: int = 2000,
    ) -> None:
        super().__init__(name, unit, description, max_series)
        bounds = tuple(float(b) for b in (DEFAULT_BOUNDARIES if boundaries is None else boundaries))
        if any(not math.isfinite(b) for b in bounds) or any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError(
                f"histogram {name!r}: boundaries must be finite and strictly increasing, got {boundaries!r}"
            )
        self.boundaries = bounds
        self._series: dict[tuple[tuple[str, object], ...], _Buckets] = {}

    def record(self, value: float, attributes: Mapping[str, object] | None = None) -> None:
        """Count ``value`` in the series of ``attributes``; never raises (NaN is counted as an error)."""
        try:
            real = float(value)
            if math.isnan(real):
                self.errors += 1
                return
            index = bisect.bisect_left(self.boundaries, real)
            with self._lock:
                key = self._key(attributes)
                buckets = self._series.get(key)
                if buckets is None:
                    buckets = self._series[key] = _Buckets(len(self.boundaries) + 1)
                buckets.counts[index] += 1
                buckets.count += 1
                buckets.total += real
                if real < buckets.minimum:
                    buckets.minimum = real
                if real > buckets.maximum:
                    buckets.maximum = real
        except Exception:
            self.errors += 1

    def _clear(self) -> None:
        self._series = {}

    def collect(self, now: int) -> list[MetricPoint]:
        with self._lock:
            items = [
                (self._attributes[k], b.count, b.total, b.minimum, b.maximum, list(b.counts))
                for k, b in self._series.items()
            ]
        return [
            MetricPoint(
                self.name,
                PointKind.HISTOGRAM,
                attrs,
                self.start_ns,
                now,
                value=total,
                unit=self.unit,
                description=self.description,
                count=count,
                minimum=lo,
                maximum=hi,
                bounds=self.boundaries,
                bucket_counts=counts,
            )
            for attrs, count, total, lo, hi, counts in items
        ]


class MetricsRegistry:
    """A client's instruments (one per name and kind), collected together."""

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self._lock = threading.Lock()
        self._instruments: dict[tuple[str, type[Instrument]], Instrument] = {}

    def get(self, cls: type[Instrument], name: str, unit: str, description: str, **extra: object) -> Instrument:
        """The instrument of ``cls`` called ``name``: the existing one, or a new one."""
        with self._lock:
            found = self._instruments.get((name, cls))
            if found is None:
                found = cls(name, unit, description, max_series=self.max_series, **extra)
                self._instruments[(name, cls)] = found
            return found

    def collect(self) -> list[MetricPoint]:
        """One data point per series of every instrument, as of now."""
        now = time_ns()
        with self._lock:
            instruments = list(self._instruments.values())
        points: list[MetricPoint] = []
        for instrument in instruments:
            points += instrument.collect(now)
        return points

    def overflowed(self) -> int:
        with self._lock:
            return sum(i.overflowed for i in self._instruments.values())

    def errors(self) -> int:
        with self._lock:
            return sum(i.errors for i in self._instruments.values())

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        for instrument in self._instruments.values():
            instrument.reset()
