"""The event contract: every op parses, every event round-trips, and every kind of bad input is refused
with a reason a user can act on (the reason is what the dead-letter file shows)."""

from __future__ import annotations

import json
import time

import pytest

from stream.events import (
    ADD_ANCHOR,
    ADD_EDGE,
    REMOVE_ANCHOR,
    REMOVE_EDGE,
    SET_ATTR,
    EventLimits,
    InvalidEvent,
    parse_event,
)

EDGE = {"op": "add_edge", "time": 1_700_000_000, "net": "online", "u": 1, "v": 2}
ANCHOR = {"op": "add_anchor", "time": 1_700_000_000, "net": "online", "node": "a", "to": "offline", "to_node": "b"}
ATTR = {"op": "set_attr", "time": 1_700_000_000, "net": "online", "node": 7, "attrs": [0.5, 1, -2]}


def with_(base: dict, **changes) -> dict:
    """``base`` with fields changed; a value of ``...`` removes the field."""
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not ...}


def reason(payload, limits: EventLimits | None = None) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(payload, limits) if limits else parse_event(payload)
    assert caught.value.reason == str(caught.value)
    return caught.value.reason


# ------------------------------------------------------------------------------------------------ accepted


def test_edges():
    e = parse_event(json.dumps(with_(EDGE, weight=2.5, id="e-1")))
    assert (e.op, e.time, e.net, e.u, e.v, e.weight, e.id) == (ADD_EDGE, 1.7e9, "online", "1", "2", 2.5, "e-1")
    r = parse_event(with_(EDGE, op="remove_edge", u="x", v="y"))
    assert (r.op, r.u, r.v, r.weight) == (REMOVE_EDGE, "x", "y", 1.0)


def test_attrs_as_vector_and_as_named_fields():
    v = parse_event(ATTR)
    assert (v.op, v.u, v.attrs, v.named_attrs) == (SET_ATTR, "7", (0.5, 1.0, -2.0), False)
    n = parse_event(with_(ATTR, attrs={"zeta": 1, "age": 31.5}))
    assert n.attrs == (("age", 31.5), ("zeta", 1.0)) and n.named_attrs


def test_anchors():
    a = parse_event(ANCHOR)
    assert (a.op, a.net, a.u, a.to, a.v) == (ADD_ANCHOR, "online", "a", "offline", "b")
    assert parse_event(with_(ANCHOR, op="remove_anchor")).op == REMOVE_ANCHOR


@pytest.mark.parametrize(
    "time, expected",
    [
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000.0),
        ("2023-11-14T22:13:20", 1_700_000_000.0),  # no offset means UTC, whatever the host's zone
        (1_700_000_000.25, 1_700_000_000.25),
        (0, 0.0),
    ],
)
def test_times(time, expected):
    assert parse_event(with_(EDGE, time=time)).time == expected


def test_iso_time_without_offset_is_utc_on_any_host(monkeypatch):
    monkeypatch.setenv("TZ", "EST+5")  # a POSIX zone string: needs no tz database
    time.tzset()
    try:
        assert parse_event(with_(EDGE, time="2023-11-14T22:13:20")).time == 1_700_000_000.0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_ids_are_strings_whatever_their_wire_type():
    e = parse_event(with_(EDGE, u=5, v="05", id=12))
    assert (e.u, e.v, e.id) == ("5", "05", "12")
    assert parse_event(with_(EDGE, id=None)).id is None


def test_bytes_and_text_payloads_agree():
    text = json.dumps(with_(EDGE, u="café", v="naïve"))
    assert parse_event(text) == parse_event(text.encode("utf-8")) == parse_event(json.loads(text))


@pytest.mark.parametrize(
    "payload",
    [
        with_(EDGE, weight=3.0, id="x"),
        with_(EDGE, op="remove_edge"),
        ATTR,
        with_(ATTR, attrs={"b": 2, "a": 1}),
        ANCHOR,
        with_(ANCHOR, op="remove_anchor", id="r"),
        with_(EDGE, time="2023-11-14T22:13:20Z"),
    ],
)
def test_round_trip(payload):
    e = parse_event(payload)
    assert parse_event(e.to_dict()) == e
    assert parse_event(e.to_json()) == e


# ------------------------------------------------------------------------------------------------ refused


@pytest.mark.parametrize(
    "payload, expected",
    [
        ("{not json", "not valid JSON"),
        ('{"op": "add_edge"} trailing', "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
        ('{"u": 1' + "0" * 5000 + "}", "not valid JSON"),  # beyond Python's integer-parsing limit
        ("[1, 2]", "an event must be a JSON object, got array"),
        ('"add_edge"', "an event must be a JSON object, got string"),
        ("null", "an event must be a JSON object, got null"),
        (b"\xff\xfe{}", "payload is not UTF-8"),
        ("", "empty payload"),
        (b"  \n", "empty payload"),
        (42, "payload must be JSON text or an object, got int"),
    ],
)
def test_malformed_payloads(payload, expected):
    assert reason(payload).startswith(expected)


def test_ops():
    assert reason(with_(EDGE, op="teleport")).startswith("unknown op 'teleport' (expected one of add_anchor")
    assert reason(with_(EDGE, op=3)) == "field 'op' must be a string, got int"
    assert reason(with_(EDGE, op=None)) == "field 'op' must be a string, got null"
    assert reason(with_(EDGE, op=...)) == "missing field 'op'"


@pytest.mark.parametrize(
    "base, field",
    [(EDGE, f) for f in ("time", "net", "u", "v")]
    + [(ATTR, f) for f in ("time", "net", "node", "attrs")]
    + [(ANCHOR, f) for f in ("time", "net", "node", "to", "to_node")],
)
def test_each_missing_field(base, field):
    assert reason(with_(base, **{field: ...})) == f"{base['op']}: missing field {field!r}"


def test_several_missing_and_unknown_fields():
    assert reason(with_(ANCHOR, to=..., to_node=...)) == "add_anchor: missing fields 'to', 'to_node'"
    assert reason(with_(EDGE, colour="red")) == "add_edge: unknown field 'colour'"
    assert reason(with_(EDGE, a=1, b=2)) == "add_edge: unknown fields 'a', 'b'"
    assert reason(with_(EDGE, op="remove_edge", weight=2)) == "remove_edge: unknown field 'weight'"


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"time": True}, "field 'time' must be unix seconds or ISO-8601, got boolean"),
        ({"time": None}, "field 'time' must be unix seconds or ISO-8601, got null"),
        ({"time": "yesterday"}, "field 'time' must be unix seconds or ISO-8601, got 'yesterday'"),
        ({"time": "1700000000"}, "field 'time' must be unix seconds or ISO-8601, got '1700000000'"),
        ({"u": [1]}, "field 'u' must be a string or an integer, got array"),
        ({"v": 2.0}, "field 'v' must be a string or an integer, got float"),
        ({"u": True}, "field 'u' must be a string or an integer, got boolean"),
        ({"u": ""}, "field 'u' must not be empty"),
        ({"u": "\ud800"}, "field 'u' is not valid Unicode: surrogates not allowed at character 0"),
        ({"net": {"name": "x"}}, "field 'net' must be a network name"),
        ({"net": "two words"}, "field 'net' must be a network name"),
        ({"net": "x" * 65}, "field 'net' must be a network name"),
        ({"weight": "heavy"}, "field 'weight' must be a number, got string"),
        ({"weight": True}, "field 'weight' must be a number, got boolean"),
        ({"id": ["x"]}, "field 'id' must be a string or an integer, got array"),
    ],
)
def test_wrong_types(changes, expected):
    assert reason(with_(EDGE, **changes)).startswith(expected)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_literals(literal):
    assert reason(f'{{"op": "add_edge", "time": {literal}, "net": "a", "u": 1, "v": 2}}') == (
        f"non-finite number {literal} is not allowed"
    )
    attrs = f'{{"op": "set_attr", "time": 1, "net": "a", "node": 1, "attrs": [1, {literal}]}}'
    assert reason(attrs) == f"non-finite number {literal} is not allowed"


def test_non_finite_numbers_in_decoded_objects():
    nan, inf = float("nan"), float("inf")
    assert reason(with_(EDGE, time=nan)) == "field 'time' must be finite, got nan"
    assert reason(with_(ATTR, attrs=[1.0, inf])) == "field 'attrs[1]' must be finite, got inf"
    assert reason(with_(ATTR, attrs={"x": nan})) == "field 'attrs.x' must be finite, got nan"
    assert reason(with_(EDGE, weight=-inf)) == "field 'weight' must be finite, got -inf"
    # An integer too large for a float is as useless as infinity (and must not raise OverflowError).
    assert reason(with_(EDGE, time=10**400)) == "field 'time' must be finite, got inf"
    assert reason(with_(ATTR, attrs=[-(10**400)])) == "field 'attrs[0]' must be finite, got -inf"


def test_absurd_sizes():
    limits = EventLimits(max_payload_bytes=100, max_attr_dim=3, max_node_id_chars=8)
    big = json.dumps(with_(EDGE, id="x" * 200))
    assert reason(big, limits) == f"payload of {len(big)} characters exceeds the limit of 100"
    assert reason(big.encode(), limits) == f"payload of {len(big)} bytes exceeds the limit of 100"
    assert reason(with_(ATTR, attrs=[1, 2, 3, 4]), limits) == (
        "field 'attrs' has 4 values, more than the limit of 3"
    )
    assert reason(with_(ATTR, attrs={"a": 1, "b": 2, "c": 3, "d": 4}), limits) == (
        "field 'attrs' has 4 fields, more than the limit of 3"
    )
    assert reason(with_(EDGE, u="n" * 9), limits) == "field 'u' has 9 characters, more than the limit of 8"
    assert reason(with_(ATTR, attrs=[1e13])) == "field 'attrs[0]' = 1e+13 is beyond the limit of ±1e+12"
    assert reason(with_(EDGE, id="i" * 257)) == "field 'id' has 257 characters, more than the limit of 256"


def test_attr_shapes():
    assert reason(with_(ATTR, attrs=[])) == "field 'attrs' must not be empty"
    assert reason(with_(ATTR, attrs={})) == "field 'attrs' must not be empty"
    assert reason(with_(ATTR, attrs="1,2")).startswith("field 'attrs' must be an array of numbers or an object")
    assert reason(with_(ATTR, attrs=[1, "2"])) == "field 'attrs[1]' must be a number, got string"
    assert reason(with_(ATTR, attrs={"bad name": 1})).startswith("attribute name 'bad name' must be")


def test_semantic_mistakes():
    assert reason(with_(EDGE, u=3, v="3")) == "add_edge: self-loop on node '3' (u == v)"
    assert reason(with_(ANCHOR, to="online")) == (
        "add_anchor: an anchor joins two different networks, got net == to == 'online'"
    )
    assert reason(with_(EDGE, weight=0)) == "add_edge: 'weight' must be > 0, got 0.0 (use remove_edge to delete)"
    assert reason(with_(EDGE, weight=-1.5)).startswith("add_edge: 'weight' must be > 0, got -1.5")
    assert reason(with_(EDGE, time=1_700_000_000_000)) == (
        "field 'time' = 1.7e+12 is outside [0, 1e+11] unix seconds (milliseconds by mistake?)"
    )
    assert reason(with_(EDGE, time=-1)).startswith("field 'time' = -1 is outside")
    assert reason(with_(EDGE, time="1900-01-01T00:00:00Z")).startswith("field 'time' = -2.20899e+09 is outside")
