"""Unit tests of automagik_telemetry_agent.clickhouse.metric_rows: OTLP Metric lines -> rows (one per data point)."""

from __future__ import annotations

import copy
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automagik_telemetry_agent.clickhouse.metric_rows import metric_row_keys, transform_metric
from automagik_telemetry_agent.clickhouse.rows import Profile, Resource, encode_rows, parse_resource
from automagik_telemetry_agent.clickhouse.scalars import MAX_START_NS, MIN_START_NS, TransformError

START = 1729620000000000000  # 2024-10-22 18:00:00 UTC
TIME = 1729627200123456789  # 2024-10-22 20:00:00.123456789 UTC
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
U64_MAX = (1 << 64) - 1


def sv(s: str) -> dict[str, Any]:
    return {"stringValue": s}


def kv(key: str, value: Any) -> dict[str, Any]:
    return {"key": key, "value": value}


def line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


RESOURCE_OBJ = {
    "attributes": [
        kv("service.name", sv("shop")),
        kv("host.name", sv("web-01")),
        kv("process.pid", {"intValue": "4242"}),
        kv("telemetry.sdk.name", sv("automagik-telemetry")),
    ]
}
RESOURCE_COLUMNS = {
    "service_name": "shop",
    "project_name": "",
    "project_version": "",
    "environment": "",
    "hostname": "web-01",
    "os_type": "",
    "os_version": "",
    "runtime_name": "",
    "runtime_version": "",
    "sdk_version": "",
}
RESOURCE_REST = {"process.pid": "4242", "telemetry.sdk.name": "automagik-telemetry"}
NO_HISTOGRAM = {
    "histogram_count": 0,
    "histogram_sum": 0.0,
    "histogram_min": 0.0,
    "histogram_max": 0.0,
    "histogram_bucket_counts": [],
    "histogram_explicit_bounds": [],
}


def point(**over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "startTimeUnixNano": START,
        "timeUnixNano": TIME,
        "asInt": 7,
        "attributes": [kv("http.route", sv("/checkout")), kv("status", {"intValue": 200})],
    }
    for key, value in over.items():
        if value is ...:
            p.pop(key, None)
        else:
            p[key] = value
    return p


def hpoint(**over: Any) -> dict[str, Any]:
    p = point(asInt=..., **over)
    defaults = {
        "count": "6",
        "sum": 1.25,
        "min": 0.01,
        "max": 0.75,
        "bucketCounts": ["1", 2, "3"],
        "explicitBounds": [0.1, 0.5],
    }
    return {**{k: v for k, v in defaults.items() if k not in over}, **{k: v for k, v in p.items()}}


def metric(kind: str = "gauge", points: list[dict[str, Any]] | None = None, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"dataPoints": [point()] if points is None else points}
    if kind in ("sum", "histogram"):
        data["aggregationTemporality"] = 2
    if kind == "sum":
        data["isMonotonic"] = True
    m: dict[str, Any] = {
        "name": "http.server.requests",
        "unit": "{request}",
        "description": "Requests served",
        kind: data,
        "scope": {"name": "shop.metrics", "version": "1.0"},
    }
    for key, value in over.items():
        if value is ...:
            m.pop(key, None)
        else:
            m[key] = value
    return m


def with_data(kind: str, **data_over: Any) -> dict[str, Any]:
    """A metric of ``kind`` whose data object gets ``data_over`` (``...`` removes a member)."""
    m = metric(kind, [hpoint()] if kind == "histogram" else None)
    for key, value in data_over.items():
        if value is ...:
            m[kind].pop(key, None)
        else:
            m[kind][key] = value
    return m


@pytest.fixture(scope="module")
def resource() -> Resource:
    return parse_resource(line(RESOURCE_OBJ))


def rows_of(m: dict[str, Any] | bytes, resource: Resource, profile: Profile = Profile.MODERN) -> list[dict[str, Any]]:
    return transform_metric(m if isinstance(m, bytes) else line(m), resource, profile)


def one(m: dict[str, Any], resource: Resource, profile: Profile = Profile.MODERN) -> dict[str, Any]:
    (row,) = rows_of(m, resource, profile)
    return row


def refused(m: dict[str, Any] | bytes, resource: Resource) -> str:
    """The reason both profiles give for refusing ``m`` (they must agree)."""
    raw = m if isinstance(m, bytes) else line(m)
    reasons = set()
    for profile in Profile:
        with pytest.raises(TransformError) as e:
            transform_metric(raw, resource, profile)
        assert str(e.value) == e.value.reason
        reasons.add(e.value.reason)
    (reason,) = reasons
    return reason


# ----------------------------------------------------------------------------------------- full rows


def test_a_sum_point_becomes_the_documented_modern_row(resource: Resource) -> None:
    assert rows_of(metric("sum"), resource) == [
        {
            "timestamp": "2024-10-22 20:00:00.123456789",
            "timestamp_ns": TIME,
            "start_timestamp_ns": START,
            "metric_name": "http.server.requests",
            "metric_type": "SUM",
            "metric_unit": "{request}",
            "metric_description": "Requests served",
            "is_monotonic": 1,
            "aggregation_temporality": "CUMULATIVE",
            "value_int": 7,
            "value_double": 7.0,
            **NO_HISTOGRAM,
            **RESOURCE_COLUMNS,
            "scope_name": "shop.metrics",
            "scope_version": "1.0",
            "attributes": {"http.route": "/checkout", "status": "200"},
            "resource_attributes": RESOURCE_REST,
        }
    ]


def test_a_histogram_point_becomes_the_documented_legacy_row(resource: Resource) -> None:
    m = metric("histogram", [hpoint()], name="http.server.duration", unit="s", description="", scope=...)
    assert rows_of(m, resource, Profile.LEGACY) == [
        {
            "timestamp": "2024-10-22 20:00:00",
            "timestamp_ns": TIME,
            "start_timestamp_ns": START,
            "metric_name": "http.server.duration",
            "metric_type": "HISTOGRAM",
            "metric_unit": "s",
            "metric_description": "",
            "is_monotonic": 0,
            "aggregation_temporality": "CUMULATIVE",
            "value_int": 0,
            "value_double": 0.0,
            "histogram_count": 6,
            "histogram_sum": 1.25,
            "histogram_min": 0.01,
            "histogram_max": 0.75,
            "histogram_bucket_counts": [1, 2, 3],
            "histogram_explicit_bounds": [0.1, 0.5],
            **RESOURCE_COLUMNS,
            "scope_name": "",
            "scope_version": "",
            "attribute_keys": ["http.route", "status"],
            "attribute_values": ["/checkout", "200"],
            "resource_keys": sorted(RESOURCE_REST),
            "resource_values": [RESOURCE_REST[k] for k in sorted(RESOURCE_REST)],
        }
    ]


@pytest.mark.parametrize("kind", ["gauge", "sum", "histogram"])
def test_every_row_fills_exactly_the_columns_metric_row_keys_names(kind: str, resource: Resource) -> None:
    m = metric(kind, [hpoint()] if kind == "histogram" else None)
    for profile in Profile:
        assert set(one(m, resource, profile)) == metric_row_keys(profile)
    assert metric_row_keys(Profile.MODERN) - metric_row_keys(Profile.LEGACY) == {"attributes", "resource_attributes"}
    assert metric_row_keys(Profile.LEGACY) - metric_row_keys(Profile.MODERN) == {
        "attribute_keys",
        "attribute_values",
        "resource_keys",
        "resource_values",
    }


def test_a_minimal_gauge_gets_empty_defaults(resource: Resource) -> None:
    m = {"name": "g", "gauge": {"dataPoints": [{"timeUnixNano": str(TIME), "asDouble": 0.5}]}}
    assert one(m, parse_resource(b"{}")) == {
        "timestamp": "2024-10-22 20:00:00.123456789",
        "timestamp_ns": TIME,
        "start_timestamp_ns": 0,
        "metric_name": "g",
        "metric_type": "GAUGE",
        "metric_unit": "",
        "metric_description": "",
        "is_monotonic": 0,
        "aggregation_temporality": "UNSPECIFIED",
        "value_int": 0,
        "value_double": 0.5,
        **NO_HISTOGRAM,
        **dict.fromkeys(RESOURCE_COLUMNS, ""),
        "scope_name": "",
        "scope_version": "",
        "attributes": {},
        "resource_attributes": {},
    }


def test_rows_encode_as_json_lines_that_read_back_equal(resource: Resource) -> None:
    rows = rows_of(metric("histogram", [hpoint(), hpoint(timeUnixNano=TIME + 1)]), resource)
    rows += rows_of(metric("gauge", [point(asInt=..., asDouble=0.1)]), resource, Profile.LEGACY)
    body = encode_rows(rows)
    assert body.count(b"\n") == 3
    assert [orjson.loads(x) for x in body.splitlines()] == rows


# ------------------------------------------------------------------------------------- data points


def test_several_data_points_become_several_rows_in_order(resource: Resource) -> None:
    points = [
        point(timeUnixNano=TIME + i, asInt=i, attributes=[kv("n", {"intValue": i})], startTimeUnixNano=START + i)
        for i in range(5)
    ]
    for profile in Profile:
        rows = rows_of(metric("sum", points), resource, profile)
        assert [(r["timestamp_ns"], r["start_timestamp_ns"], r["value_int"]) for r in rows] == [
            (TIME + i, START + i, i) for i in range(5)
        ]
        attributes = [
            r["attributes"]
            if profile is Profile.MODERN
            else dict(zip(r["attribute_keys"], r["attribute_values"], strict=True))
            for r in rows
        ]
        assert attributes == [{"n": str(i)} for i in range(5)]
        # The metric's own members are the same in each row.
        assert {
            (r["metric_name"], r["metric_type"], r["aggregation_temporality"], r["is_monotonic"]) for r in rows
        } == {("http.server.requests", "SUM", "CUMULATIVE", 1)}


def test_a_metric_without_data_points_gives_no_rows(resource: Resource) -> None:
    for kind in ("gauge", "sum", "histogram"):
        for profile in Profile:
            assert rows_of(metric(kind, []), resource, profile) == []


def test_one_bad_data_point_refuses_the_whole_line(resource: Resource) -> None:
    points = [point(), point(asInt="x"), point()]
    assert refused(metric("gauge", points), resource) == "invalid asInt: not a signed 64-bit integer"
    not_an_object: Any = 5
    assert refused(metric("gauge", [point(), not_an_object]), resource) == "invalid dataPoints[1]: not an object"
    bad_attribute = [point(), point(attributes=[kv("a", {"intValue": "z"})])]
    assert refused(metric("gauge", bad_attribute), resource) == "dataPoints[1].attributes['a']: invalid intValue"


# --------------------------------------------------------------------------------------- the values


@pytest.mark.parametrize(
    ("value", "value_int", "value_double"),
    [
        ({"asInt": 7}, 7, 7.0),
        ({"asInt": "7"}, 7, 7.0),
        ({"asInt": "-42"}, -42, -42.0),
        ({"asInt": 0}, 0, 0.0),
        ({"asInt": I64_MIN}, I64_MIN, float(I64_MIN)),
        ({"asInt": str(I64_MAX)}, I64_MAX, float(I64_MAX)),
        ({"asInt": 2**53 + 1}, 2**53 + 1, float(2**53)),  # value_int is exact, value_double the nearest double
        ({"asDouble": 0.1}, 0, 0.1),
        ({"asDouble": -2.5}, 0, -2.5),
        ({"asDouble": 3}, 0, 3.0),
        ({"asDouble": "0.25"}, 0, 0.25),
        ({"asDouble": "-1e300"}, 0, -1e300),
        ({"asDouble": 5e-324}, 0, 5e-324),
        ({"asDouble": "NaN"}, 0, 0.0),
        ({"asDouble": "Infinity"}, 0, 0.0),
        ({"asDouble": "-Infinity"}, 0, 0.0),
        ({"asInt": 3, "asDouble": 9.5}, 3, 3.0),  # asInt wins
    ],
)
def test_gauge_and_sum_values_go_to_value_double_and_integers_also_to_value_int(
    value: dict[str, Any], value_int: int, value_double: float, resource: Resource
) -> None:
    for kind in ("gauge", "sum"):
        for profile in Profile:
            row = one(metric(kind, [{**point(asInt=...), **value}]), resource, profile)
            assert (row["value_int"], row["value_double"]) == (value_int, value_double)
            assert type(row["value_int"]) is int and type(row["value_double"]) is float
            assert {k: row[k] for k in NO_HISTOGRAM} == NO_HISTOGRAM


@pytest.mark.parametrize(
    "value", [1.5, "1.5", "1e3", "", " 1", True, None, [1], {}, str(I64_MAX + 1), str(I64_MIN - 1)]
)
def test_an_asint_that_is_not_a_signed_64_bit_integer_is_refused(value: Any, resource: Resource) -> None:
    reason = refused(metric("gauge", [point(asInt=value)]), resource)
    assert reason == "invalid asInt: not a signed 64-bit integer"


@pytest.mark.parametrize("value", ["x", "", "nan", "inf", "0x10", " 1", True, None, [1.0], {}])
def test_an_asdouble_that_is_not_a_number_is_refused(value: Any, resource: Resource) -> None:
    reason = refused(metric("gauge", [point(asInt=..., asDouble=value)]), resource)
    assert reason == "invalid asDouble: not a number"


def test_a_gauge_or_sum_point_without_a_value_is_refused(resource: Resource) -> None:
    for kind in ("gauge", "sum"):
        assert refused(metric(kind, [point(asInt=...)]), resource) == "data point without asInt or asDouble"


# -------------------------------------------------------------------------------- kinds and members


def test_a_gauge_has_no_temporality_and_is_not_monotonic_whatever_it_says(resource: Resource) -> None:
    for temporality in (..., 1, 2, "whatever", [1]):
        m = with_data("gauge", aggregationTemporality=temporality, isMonotonic="maybe")
        row = one(m, resource)
        assert (row["metric_type"], row["aggregation_temporality"], row["is_monotonic"]) == ("GAUGE", "UNSPECIFIED", 0)


@pytest.mark.parametrize("kind", ["sum", "histogram"])
@pytest.mark.parametrize(
    ("temporality", "name"),
    [
        (0, "UNSPECIFIED"),
        (1, "DELTA"),
        (2, "CUMULATIVE"),
        ("UNSPECIFIED", "UNSPECIFIED"),
        ("DELTA", "DELTA"),
        ("CUMULATIVE", "CUMULATIVE"),
        ("AGGREGATION_TEMPORALITY_UNSPECIFIED", "UNSPECIFIED"),
        ("AGGREGATION_TEMPORALITY_DELTA", "DELTA"),
        ("AGGREGATION_TEMPORALITY_CUMULATIVE", "CUMULATIVE"),
        (..., "UNSPECIFIED"),
    ],
)
def test_the_temporality_may_be_its_number_or_its_name(
    kind: str, temporality: Any, name: str, resource: Resource
) -> None:
    for profile in Profile:
        row = one(with_data(kind, aggregationTemporality=temporality), resource, profile)
        assert row["aggregation_temporality"] == name


@pytest.mark.parametrize("kind", ["sum", "histogram"])
@pytest.mark.parametrize("temporality", [3, -1, "cumulative", "2", "", True, False, 1.0, 2.0, None, [1], {}, {"a": 1}])
def test_an_unknown_temporality_is_refused(kind: str, temporality: Any, resource: Resource) -> None:
    assert refused(with_data(kind, aggregationTemporality=temporality), resource) == "invalid aggregationTemporality"


@pytest.mark.parametrize(("monotonic", "is_monotonic"), [(True, 1), (False, 0), (..., 0)])
def test_a_sum_is_monotonic_only_when_it_says_so(monotonic: Any, is_monotonic: int, resource: Resource) -> None:
    for profile in Profile:
        row = one(with_data("sum", isMonotonic=monotonic), resource, profile)
        assert (row["metric_type"], row["is_monotonic"]) == ("SUM", is_monotonic)


@pytest.mark.parametrize("monotonic", ["true", 1, 0, None, [True]])
def test_an_is_monotonic_that_is_not_a_boolean_is_refused(monotonic: Any, resource: Resource) -> None:
    assert refused(with_data("sum", isMonotonic=monotonic), resource) == "invalid isMonotonic: not a boolean"


def test_a_histogram_is_never_monotonic(resource: Resource) -> None:
    assert one(with_data("histogram", isMonotonic=True), resource)["is_monotonic"] == 0


@pytest.mark.parametrize("kind", ["exponentialHistogram", "summary"])
def test_exponential_histograms_and_summaries_are_refused_with_a_clear_reason(kind: str, resource: Resource) -> None:
    data = {"dataPoints": [{"timeUnixNano": TIME, "count": 1, "sum": 1.0}], "aggregationTemporality": 2}
    reason = f"{kind} metrics are not stored (the schema has no columns for them)"
    assert refused({"name": "rpc.duration", kind: data}, resource) == reason
    # Also next to a kind that is stored: the line is refused, not half stored.
    assert refused({"name": "rpc.duration", kind: data, "gauge": {"dataPoints": [point()]}}, resource) == reason


@pytest.mark.parametrize(
    ("m", "reason"),
    [
        ({"name": "x"}, "a metric needs exactly one of gauge, sum, histogram"),
        (
            {"name": "x", "gauge": {"dataPoints": []}, "sum": {"dataPoints": []}},
            "a metric needs exactly one of gauge, sum, histogram",
        ),
        ({"name": "x", "gauge": []}, "invalid gauge: no dataPoints list"),
        ({"name": "x", "gauge": {}}, "invalid gauge: no dataPoints list"),
        ({"name": "x", "gauge": None}, "invalid gauge: no dataPoints list"),
        ({"name": "x", "sum": {"dataPoints": {}}}, "invalid sum: no dataPoints list"),
        ({"name": "x", "histogram": {"dataPoints": None}}, "invalid histogram: no dataPoints list"),
        ({"name": "x", "gauge": {"dataPoints": [1]}}, "invalid dataPoints[0]: not an object"),
        ({"gauge": {"dataPoints": []}}, "missing name"),
        ({"name": "", "gauge": {"dataPoints": []}}, "missing name"),
        ({"name": 5, "gauge": {"dataPoints": []}}, "missing name"),
        ({"name": "x", "unit": 5, "gauge": {"dataPoints": []}}, "invalid unit/description: not strings"),
        ({"name": "x", "description": None, "gauge": {"dataPoints": []}}, "invalid unit/description: not strings"),
        ({"name": "x", "scope": "s", "gauge": {"dataPoints": []}}, "invalid scope: not an object"),
        (
            {"name": "x", "scope": {"version": 1}, "gauge": {"dataPoints": []}},
            "invalid scope: name and version must be strings",
        ),
    ],
)
def test_a_malformed_metric_is_refused_with_the_reason(m: dict[str, Any], reason: str, resource: Resource) -> None:
    assert refused(m, resource) == reason


@pytest.mark.parametrize(
    ("scope", "name", "version"),
    [
        (..., "", ""),
        (None, "", ""),
        ({}, "", ""),
        ({"name": "meter"}, "meter", ""),
        ({"name": "m", "version": "2"}, "m", "2"),
    ],
)
def test_the_scope_gives_its_name_and_version(scope: Any, name: str, version: str, resource: Resource) -> None:
    for profile in Profile:
        row = one(metric("gauge", scope=scope), resource, profile)
        assert (row["scope_name"], row["scope_version"]) == (name, version)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff", b'{"name": NaN}', b"[]", b"null", b'"m"', b"1"])
def test_a_line_that_is_not_a_json_object_is_refused(raw: bytes, resource: Resource) -> None:
    assert refused(raw, resource) in ("invalid JSON", "not a JSON object")


def test_unknown_members_are_ignored_and_member_order_does_not_matter(resource: Resource) -> None:
    m = metric("sum")
    extra = {**m, "metadata": [kv("x", sv("y"))], "sum": {**m["sum"], "extra": 1}}
    extra["sum"]["dataPoints"] = [{**point(), "flags": 1, "exemplars": [{"asDouble": 1.0}]}]
    shuffled = dict(reversed(list(m.items())))
    for profile in Profile:
        assert (
            rows_of(extra, resource, profile) == rows_of(shuffled, resource, profile) == rows_of(m, resource, profile)
        )


# --------------------------------------------------------------------------------------------- times


@pytest.mark.parametrize("start", [..., 0, "0", None])
def test_the_start_time_is_optional_and_0_when_absent(start: Any, resource: Resource) -> None:
    for profile in Profile:
        assert one(metric("sum", [point(startTimeUnixNano=start)]), resource, profile)["start_timestamp_ns"] == 0


@pytest.mark.parametrize("time", [..., 0, "0", None])
def test_the_time_of_a_data_point_is_required(time: Any, resource: Resource) -> None:
    assert refused(metric("gauge", [point(timeUnixNano=time)]), resource) == "missing timeUnixNano"


@pytest.mark.parametrize(
    ("ns", "modern_text", "legacy_text"),
    [
        (MIN_START_NS, "1970-01-01 00:00:01.000000000", "1970-01-01 00:00:01"),
        (MAX_START_NS, "2105-12-31 23:59:59.999999999", "2105-12-31 23:59:59"),
        (str(TIME), "2024-10-22 20:00:00.123456789", "2024-10-22 20:00:00"),
    ],
)
def test_the_accepted_time_range_and_its_text_in_each_profile(
    ns: Any, modern_text: str, legacy_text: str, resource: Resource
) -> None:
    m = metric("gauge", [point(timeUnixNano=ns, startTimeUnixNano=ns)])
    modern_row, legacy_row = one(m, resource), one(m, resource, Profile.LEGACY)
    assert modern_row["timestamp"] == modern_text and legacy_row["timestamp"] == legacy_text
    assert modern_row["timestamp_ns"] == legacy_row["timestamp_ns"] == legacy_row["start_timestamp_ns"] == int(ns)


@pytest.mark.parametrize("member", ["timeUnixNano", "startTimeUnixNano"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1, "{} out of DateTime range"),
        (MIN_START_NS - 1, "{} out of DateTime range"),
        (MAX_START_NS + 1, "{} out of DateTime range"),
        (str(U64_MAX), "{} out of DateTime range"),
        (str(U64_MAX + 1), "invalid {}: not an unsigned 64-bit integer"),
        (-1, "invalid {}: not an unsigned 64-bit integer"),
        (1.7e18, "invalid {}: not an unsigned 64-bit integer"),
        ("x", "invalid {}: not an unsigned 64-bit integer"),
        (True, "invalid {}: not an unsigned 64-bit integer"),
    ],
)
def test_a_time_out_of_range_or_not_an_integer_is_refused(
    member: str, value: Any, reason: str, resource: Resource
) -> None:
    assert refused(metric("gauge", [point(**{member: value})]), resource) == reason.format(member)


# ----------------------------------------------------------------------------------------- histograms


def test_a_histogram_point_fills_the_histogram_columns_and_zero_values(resource: Resource) -> None:
    p = hpoint(
        count=U64_MAX, sum="-2.5", min=-3, max="1e300", bucketCounts=[0, str(U64_MAX), 5], explicitBounds=[-1.5, "0.1"]
    )
    for profile in Profile:
        row = one(metric("histogram", [p]), resource, profile)
        assert {k: row[k] for k in NO_HISTOGRAM} | {
            "value_int": row["value_int"],
            "value_double": row["value_double"],
        } == {
            "histogram_count": U64_MAX,
            "histogram_sum": -2.5,
            "histogram_min": -3.0,
            "histogram_max": 1e300,
            "histogram_bucket_counts": [0, U64_MAX, 5],
            "histogram_explicit_bounds": [-1.5, 0.1],
            "value_int": 0,
            "value_double": 0.0,
        }
        assert all(type(b) is float for b in row["histogram_explicit_bounds"])


def test_a_histogram_without_sum_min_max_or_buckets_gets_zeros_and_empty_arrays(resource: Resource) -> None:
    p = {"timeUnixNano": TIME, "count": 3}
    row = one(metric("histogram", [p]), resource)
    assert {k: row[k] for k in NO_HISTOGRAM} == {**NO_HISTOGRAM, "histogram_count": 3}
    row = one(metric("histogram", [{"timeUnixNano": TIME}]), resource)
    assert {k: row[k] for k in NO_HISTOGRAM} == NO_HISTOGRAM


@pytest.mark.parametrize("member", ["sum", "min", "max"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_histogram_sum_min_or_max_is_stored_as_0(member: str, value: str, resource: Resource) -> None:
    row = one(metric("histogram", [hpoint(**{member: value})]), resource)
    assert row[f"histogram_{member}"] == 0.0


@pytest.mark.parametrize(
    ("counts", "bounds"),
    [([5], []), ([1, 2], [1.0]), ([1, 2, 3, 4], [0.1, 0.2, 0.3]), ([], [])],
)
def test_bucket_counts_have_one_entry_more_than_the_bounds_or_both_are_empty(
    counts: list[int], bounds: list[float], resource: Resource
) -> None:
    row = one(metric("histogram", [hpoint(bucketCounts=counts, explicitBounds=bounds)]), resource)
    assert (row["histogram_bucket_counts"], row["histogram_explicit_bounds"]) == (counts, bounds)


@pytest.mark.parametrize(
    ("counts", "bounds"),
    [([], [1.0]), ([1], [1.0]), ([1, 2, 3], [1.0]), ([1, 2], []), ([1, 2], [1.0, 2.0])],
)
def test_bucket_counts_and_bounds_of_other_lengths_are_refused(
    counts: list[int], bounds: list[float], resource: Resource
) -> None:
    reason = refused(metric("histogram", [hpoint(bucketCounts=counts, explicitBounds=bounds)]), resource)
    assert reason == "bucketCounts must have one more entry than explicitBounds"


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"bucketCounts": [1, -1, 2]}, "invalid bucketCounts/explicitBounds: not unsigned integers / finite numbers"),
        ({"bucketCounts": [1, 1.5, 2]}, "invalid bucketCounts/explicitBounds: not unsigned integers / finite numbers"),
        ({"bucketCounts": [1, "x", 2]}, "invalid bucketCounts/explicitBounds: not unsigned integers / finite numbers"),
        (
            {"bucketCounts": [1, str(U64_MAX + 1), 2]},
            "invalid bucketCounts/explicitBounds: not unsigned integers / finite numbers",
        ),
        (
            {"explicitBounds": [0.1, "NaN"]},
            "invalid bucketCounts/explicitBounds: not unsigned integers / finite numbers",
        ),
        (
            {"explicitBounds": ["Infinity", 0.5]},
            "invalid bucketCounts/explicitBounds: not unsigned integers / finite numbers",
        ),
        (
            {"explicitBounds": [0.1, True]},
            "invalid bucketCounts/explicitBounds: not unsigned integers / finite numbers",
        ),
        (
            {"explicitBounds": [0.1, None]},
            "invalid bucketCounts/explicitBounds: not unsigned integers / finite numbers",
        ),
        ({"bucketCounts": {"0": 1}}, "invalid bucketCounts/explicitBounds: not lists"),
        ({"explicitBounds": "0.1,0.5"}, "invalid bucketCounts/explicitBounds: not lists"),
        ({"bucketCounts": None}, "invalid bucketCounts/explicitBounds: not lists"),
        ({"count": -1}, "invalid count: not an unsigned 64-bit integer"),
        ({"count": 1.5}, "invalid count: not an unsigned 64-bit integer"),
        ({"count": None}, "invalid count: not an unsigned 64-bit integer"),
        ({"sum": "x"}, "invalid sum: not a number"),
        ({"min": True}, "invalid min: not a number"),
        ({"max": [1]}, "invalid max: not a number"),
    ],
)
def test_malformed_histogram_members_are_refused(over: dict[str, Any], reason: str, resource: Resource) -> None:
    assert refused(metric("histogram", [hpoint(**over)]), resource) == reason


# --------------------------------------------------------------------------------------- hypothesis

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    _json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_int_like = st.one_of(
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.integers(min_value=MIN_START_NS, max_value=MAX_START_NS),
    st.integers(min_value=-(1 << 65), max_value=1 << 65).map(str),
    st.sampled_from(["", "-", "0", "1.5", "1e3", " 1", "0x10", "NaN", "Infinity", "-Infinity", "٣"]),
    st.floats(),
    json_values,
)
_attrs = st.one_of(
    st.lists(
        st.one_of(
            st.builds(
                lambda k, v: {"key": k, "value": v},
                st.text(max_size=5),
                st.one_of(
                    st.builds(lambda s: {"stringValue": s}, st.text(max_size=5)),
                    st.builds(lambda i: {"intValue": i}, _int_like),
                    json_values,
                ),
            ),
            json_values,
        ),
        max_size=3,
    ),
    json_values,
)
_point = st.fixed_dictionaries(
    {},
    optional={
        "timeUnixNano": _int_like,
        "startTimeUnixNano": _int_like,
        "asInt": _int_like,
        "asDouble": _int_like,
        "attributes": _attrs,
        "count": _int_like,
        "sum": _int_like,
        "min": _int_like,
        "max": _int_like,
        "bucketCounts": st.one_of(st.lists(_int_like, max_size=4), json_values),
        "explicitBounds": st.one_of(st.lists(_int_like, max_size=3), json_values),
    },
)
_data = st.fixed_dictionaries(
    {},
    optional={
        "dataPoints": st.one_of(st.lists(st.one_of(_point, json_values), max_size=3), json_values),
        "aggregationTemporality": st.one_of(
            st.integers(-1, 3), st.sampled_from(["DELTA", "AGGREGATION_TEMPORALITY_CUMULATIVE", "x"]), json_values
        ),
        "isMonotonic": st.one_of(st.booleans(), json_values),
    },
)
metric_like = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=8), json_values),
        "unit": st.one_of(st.text(max_size=4), json_values),
        "description": st.one_of(st.text(max_size=4), json_values),
        "scope": st.one_of(
            st.fixed_dictionaries({}, optional={"name": json_values, "version": json_values}), json_values
        ),
        "gauge": st.one_of(_data, json_values),
        "sum": st.one_of(_data, json_values),
        "histogram": st.one_of(_data, json_values),
        "summary": json_values,
        "exponentialHistogram": json_values,
    },
)


def _check_only_transform_errors(raw: bytes, resource: Resource) -> None:
    for profile in Profile:
        try:
            rows = transform_metric(raw, resource, profile)
        except TransformError as e:
            assert e.reason and len(e.reason) < 200
        else:
            assert type(rows) is list
            for row in rows:
                assert set(row) == metric_row_keys(profile)
                assert MIN_START_NS <= row["timestamp_ns"] <= MAX_START_NS
                assert row["metric_type"] in ("GAUGE", "SUM", "HISTOGRAM")
                assert row["aggregation_temporality"] in ("UNSPECIFIED", "DELTA", "CUMULATIVE")
                floats = [row["value_double"], row["histogram_sum"], row["histogram_min"], row["histogram_max"]]
                assert all(math.isfinite(x) for x in floats + row["histogram_explicit_bounds"])
                counts, bounds = row["histogram_bucket_counts"], row["histogram_explicit_bounds"]
                assert len(counts) == len(bounds) + 1 if counts or bounds else True
            body = encode_rows(rows)  # whatever transforms must encode
            assert [orjson.loads(x) for x in body.splitlines()] == rows


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_transform_error(raw: bytes) -> None:
    _check_only_transform_errors(raw, parse_resource(line(RESOURCE_OBJ)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(json_values)
def test_arbitrary_json_only_raises_transform_error(value: Any) -> None:
    _check_only_transform_errors(orjson.dumps(value), parse_resource(line(RESOURCE_OBJ)))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(metric_like, st.sampled_from(["bare", "over_gauge", "over_sum", "over_histogram"]))
def test_metric_shaped_json_only_raises_transform_error(m: dict[str, Any], mode: str) -> None:
    if mode != "bare":  # start from a valid metric so that the later members are reached too
        kind = mode.removeprefix("over_")
        base = metric(kind, [hpoint()] if kind == "histogram" else None)
        m = copy.deepcopy(m)
        for other in ("gauge", "sum", "histogram"):
            if other != kind:
                m.pop(other, None)
        m = {**base, **m}
    _check_only_transform_errors(line(m), parse_resource(line(RESOURCE_OBJ)))


def test_a_value_of_thousands_of_digits_is_a_transform_error(resource: Resource) -> None:
    with pytest.raises(TransformError):  # not int()'s ValueError past 4300 digits
        transform_metric(line(metric("gauge", [point(asInt="1" * 5000)])), resource, Profile.MODERN)
