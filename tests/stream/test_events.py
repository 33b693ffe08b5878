"""The event contract: every op parses, every event round-trips, and every kind of bad input is refused
with a reason a user can act on (the reason is what the dead-letter file shows)."""

from __future__ import annotations

import json
import time

import pytest

from stream.events import (
    ADD_ANCHOR,
    ADD_EDGE,
    DEFAULT_LIMITS,
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


# ------------------------------------------------------------------------------------ two routes, one answer

# Values that probe every check: types JSON can carry, edge cases of each limit, strings needing escapes.
ODD_VALUES = [
    None, True, False, 0, 1, -1, 7, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**25, 10**255, 10**256,
    0.0, -0.0, 0.5, 1e12, 1e12 + 1, -1e12, 1e11, 1e11 + 1, 1e-320, 1.7e9,
    "", "x", "a b", "a\nb", 'q"uote', "back\\slash", "café", "ü" * 300,
    "\u2028", "\x00", "\x7f", "é", "😀", "n" * 256, "n" * 257, "online", "offline", "x" * 64, "x" * 65, "add_edge",
    "2023-11-14T22:13:20Z", [], [1], [1.5, -2], {}, {"a": 1}, {"bad name": 1}, {"z": 1.0, "a": -3}, [[1]],
]
BASES = [EDGE, with_(EDGE, weight=2.5, id="e"), with_(EDGE, op="remove_edge", id=3), ATTR,
         with_(ATTR, attrs={"b": 2, "a": 1.5}), ANCHOR, with_(ANCHOR, op="remove_anchor", id="r")]


def variants(rng):
    """Payloads near the well-formed ones: a field changed, removed or added, in any combination."""
    for _ in range(6000):
        payload = dict(rng.choice(BASES))
        for _ in range(rng.choice((1, 1, 2, 3))):
            field = rng.choice([*payload, "id", "weight", "extra", "attrs", "to", "node", "u"])
            action = rng.random()
            if action < 0.1:
                payload.pop(field, None)
            elif action < 0.15:
                payload["op"] = rng.choice(["add_edge", "remove_edge", "set_attr", "add_anchor", "remove_anchor"])
            else:
                payload[field] = rng.choice(ODD_VALUES)
        yield payload


def outcome(parse, payload):
    """What ``parse`` makes of ``payload``: the event (with its field types) or the exception and its words."""
    try:
        return repr(parse(payload))
    except Exception as e:  # noqa: BLE001 - any exception must be the same on both routes
        return f"{type(e).__name__}: {e}"


def test_fast_route_agrees_with_full_validation():
    """Whatever the route, the same event or the same rejection, for objects, text and bytes."""
    import random

    from stream.event_checks import validate as _validate

    rng = random.Random(5)
    accepted = 0
    for payload in variants(rng):
        full = outcome(lambda p: _validate(p, DEFAULT_LIMITS), payload)
        assert outcome(parse_event, payload) == full, payload
        try:
            text = json.dumps(payload, ensure_ascii=rng.random() < 0.5)
        except ValueError:
            continue
        for wire in (text, text.encode("utf-8", "surrogatepass")):
            assert outcome(parse_event, wire) == outcome(lambda p: _validate(p, DEFAULT_LIMITS), wire), wire
        accepted += full.startswith("Event(")
    assert accepted > 300  # the well-formed shape was exercised, not only rejections


def test_fast_route_agrees_on_raw_text():
    """JSON the standard library and orjson read differently: big integers, escapes, duplicates, whitespace."""
    from stream.event_checks import validate as _validate

    texts = [
        '{"op":"add_edge","time":1,"net":"a","u":123456789012345678901234567890,"v":2}',
        '{"op":"add_edge","time":1,"net":"a","u":18446744073709551616,"v":-9223372036854775809}',
        '{"op":"add_edge","time":1e400,"net":"a","u":1,"v":2}',
        '{"op":"add_edge","time":1,"net":"a","u":"\\ud800","v":2}',
        '{"op":"add_edge","time":1,"net":"a","u":"\\ud83d\\ude00","v":"\\u0000"}',
        '{"op":"add_edge","time":1,"net":"a","u":1,"v":2,"u":3}',
        '{"op":"add_edge","time":1,"net":"a","u":1,"v":2,"v":1}',
        ' \t{"op":"add_edge","time":1,"net":"a","u":1,"v":2}\r\n',
        '\ufeff{"op":"add_edge","time":1,"net":"a","u":1,"v":2}',
        '{"op":"add_edge","time":-0.0,"net":"a","u":1,"v":2,"weight":1E-3}',
        '{"op":"add_edge","time":1,"net":"a\\n","u":1,"v":2}',
        '{"op":"add_edge","time":1,"net":"a","u":1,"v":2,"weight":17000000000000000000000.5}',
        '{"op":"set_attr","time":1,"net":"a","node":1,"attrs":[1,2.5,-0.0,1e-320,1e12]}',
        '{"op":"set_attr","time":1,"net":"a","node":1,"attrs":{"b":1,"a":2,"b":3}}',
    ]
    big = EventLimits(max_time=1e30, max_abs_value=1e30)
    for text in texts:
        for wire in (text, text.encode("utf-8", "surrogatepass"), b"\xef\xbb\xbf" + text.encode()):
            for limits in (DEFAULT_LIMITS, big):
                assert outcome(lambda p, limits=limits: parse_event(p, limits), wire) == outcome(
                    lambda p, limits=limits: _validate(p, limits), wire), (wire, limits)
    for number in ("18446744073709551617", "123456789012345678901234567.0", "98765432109876543210987"):
        text = f'{{"op":"add_edge","time":{number},"net":"a","u":1,"v":2,"weight":{number}}}'
        assert outcome(lambda p: parse_event(p, big), text) == outcome(lambda p: _validate(p, big), text)


def test_canonical_line_is_what_json_dumps_writes():
    """Event.to_json writes the line itself; it must be byte for byte json.dumps of to_dict()."""
    import random

    from stream.events import Event

    rng = random.Random(7)
    events = [parse_event(p) for p in BASES]
    for payload in variants(rng):
        try:
            events.append(parse_event(payload))
        except InvalidEvent:
            pass
    nan = float("nan")
    events += [Event("add_edge", 3, "a", "x", "y"), Event("add_edge", 1.0, "a", "x", "y", weight=2),
               Event("add_edge", nan, "a", "x", "y", weight=float("inf")), Event("set_attr", 1.0, "a", "x"),
               Event("set_attr", 1.0, "a", "x", attrs=(1, 2.5)), Event("set_attr", 1.0, "a", "x", attrs=(nan,)),
               Event("set_attr", 1.0, "a", "x", attrs=(("k", 1.0), ("j", 2), ("k", 3.0))),
               Event("add_anchor", 1.0, "a", "x", None, to="b"), Event("add_edge", 1.0, "a", "x", "y", id=5),
               Event("add_edge", 1e-320, "\u2028", "é😀", '"\\\n\x00', id="ü")]
    assert len(events) > 300
    for event in events:
        assert event.to_json() == json.dumps(event.to_dict(), separators=(",", ":")), event


@pytest.mark.parametrize("name", ["online\n", ".", "..", ".hidden", "-rf", "a/b", "x" * 65, ""])
def test_names_that_would_be_paths_flags_or_split_lines_are_refused(name):
    """Network names become Redis keys, file and folder names and log lines: "online\\n" passed `$`, and "."
    and ".." made `replay --export DIR` write into DIR/.."""
    for payload in ({"op": "add_edge", "time": 1.0, "net": name, "u": "a", "v": "b"},
                    {"op": "add_attr", "time": 1.0, "net": "a", "u": "x", "attrs": {name: 1.0}}):
        with pytest.raises(InvalidEvent):
            parse_event(json.dumps(payload))


def test_ordinary_names_still_pass():
    for name in ("online", "a.b-c_1", "_x", "9gag"):
        assert parse_event(json.dumps({"op": "add_edge", "time": 1.0, "net": name, "u": "a", "v": "b"})).net == name
