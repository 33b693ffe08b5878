"""The fast validation route: the plain, well-formed event shape recognised and built without a word of reason.

Validation runs once per ingested event (tens of thousands per second), and nearly every event has the same plain
shape: exact ``str``/``int``/``float`` types, values in range, no unknown fields. :func:`fast_event` accepts
only that shape and builds the :class:`Event` directly; for anything else, valid or not, it returns None and the
full route (:func:`stream.event_checks.validate`) decides and words the reason. It never accepts what the full
route refuses, nor builds a different event (``tests/stream/test_events.py`` checks both on many generated
payloads).

>>> fast_event({"op": "add_edge", "time": 5, "net": "a", "u": 1, "v": "2"}, EventLimits())
Event(op='add_edge', time=5.0, net='a', u='1', v='2', to=None, weight=1.0, attrs=None, id=None)
>>> fast_event({"op": "add_edge", "time": 5, "net": "a", "u": 1, "v": 1}, EventLimits()) is None  # a self-loop
True
"""

from __future__ import annotations

from math import isfinite
from typing import Any, Callable

import orjson

from stream.event_model import (
    ADD_ANCHOR,
    ADD_EDGE,
    COMMON_REQUIRED,
    NAME_PATTERN,
    OP_FIELDS,
    REMOVE_ANCHOR,
    REMOVE_EDGE,
    SET_ATTR,
    Event,
    EventLimits,
)

# orjson decodes strictly (valid UTF-8 only, no lone surrogates, no NaN/Infinity); the one value it decodes
# differently is an integer beyond 64 bits (a float, not an int), which the fast route never accepts where
# that difference could matter: ids must be str or int, and numbers that large are beyond every limit (for
# custom limits both decoders round them to the same float).
fast_loads = orjson.loads
FastDecodeError = orjson.JSONDecodeError

# op -> (number of required fields, op and time included; whether a 'weight' may be present)
_FAST_FORMS = {op: (len(COMMON_REQUIRED) + len(required), "weight" in optional)
               for op, (required, optional) in OP_FIELDS.items()}

_NAMES_SEEN: set[str] = set()  # network and attribute names that matched NAME_PATTERN: a few, seen millions of times
_NAMES_SEEN_MAX = 4096


def fast_event(obj: dict, limits: EventLimits) -> Event | None:
    """The event ``obj`` describes if it has the plain well-formed shape, else None (the full route decides).

    Accepts exactly what :func:`stream.event_checks.validate` accepts for such objects, and returns an equal
    event. The fields every op shares are checked here, the op's own by its builder in ``_BY_OP``.
    """
    op = obj.get("op")
    if type(op) is not str:
        return None
    form = _FAST_FORMS.get(op)
    if form is None:
        return None
    required, may_weigh = form
    # Field names: the right count with every required one present means no unknown field.
    if len(obj) != required + ("id" in obj) + (may_weigh and "weight" in obj):
        return None
    try:
        time, net = obj["time"], obj["net"]
        kind = type(time)
        if kind is int:
            time = float(time)
        elif kind is not float:
            return None
        if not (isfinite(time) and limits.min_time <= time <= limits.max_time):
            return None
        if type(net) is not str or not _plain_name(net):
            return None
        event_id = obj.get("id")
        if event_id is not None:
            event_id = _plain_text(event_id, limits.max_event_id_chars)
            if event_id is None:
                return None
        return _BY_OP[op](obj, op, time, net, event_id, limits)
    except (KeyError, OverflowError, ValueError):  # a missing field; an int beyond float or str conversion
        return None


def _edge(obj: dict, op: str, time: float, net: str, event_id: str | None, limits: EventLimits) -> Event | None:
    max_chars = limits.max_node_id_chars
    u, v = obj["u"], obj["v"]
    # ASCII string ids, by far the most common, checked here; _plain_text handles the rest
    if not (type(u) is str and 0 < len(u) <= max_chars and u.isascii()):
        u = _plain_text(u, max_chars)
    if not (type(v) is str and 0 < len(v) <= max_chars and v.isascii()):
        v = _plain_text(v, max_chars)
    if u is None or v is None or u == v:
        return None
    weight = 1.0
    if op == ADD_EDGE and "weight" in obj:
        given = _plain_number(obj["weight"], limits)
        if given is None or not given > 0.0:
            return None
        weight = given
    return _new_event(op, time, net, u, v, None, weight, None, event_id)


def _attributes(obj: dict, op: str, time: float, net: str, event_id: str | None, limits: EventLimits) -> Event | None:
    u = _plain_text(obj["node"], limits.max_node_id_chars)
    attrs = _plain_attrs(obj["attrs"], limits)
    if u is None or attrs is None:
        return None
    return _new_event(op, time, net, u, None, None, 1.0, attrs, event_id)


def _anchor(obj: dict, op: str, time: float, net: str, event_id: str | None, limits: EventLimits) -> Event | None:
    u = _plain_text(obj["node"], limits.max_node_id_chars)
    to, v = obj["to"], _plain_text(obj["to_node"], limits.max_node_id_chars)
    if u is None or type(to) is not str or not _plain_name(to) or to == net or v is None:
        return None
    return _new_event(op, time, net, u, v, to, 1.0, None, event_id)


_BY_OP: dict[str, Callable[[dict, str, float, str, str | None, EventLimits], Event | None]] = {
    ADD_EDGE: _edge, REMOVE_EDGE: _edge, SET_ATTR: _attributes, ADD_ANCHOR: _anchor, REMOVE_ANCHOR: _anchor,
}


def _plain_name(name: str) -> bool:
    """Whether ``name`` (a str) is a valid network or attribute name, remembering the few valid ones."""
    if name in _NAMES_SEEN:
        return True
    if not NAME_PATTERN.match(name):
        return False
    if len(_NAMES_SEEN) >= _NAMES_SEEN_MAX:
        _NAMES_SEEN.clear()
    _NAMES_SEEN.add(name)
    return True


def _plain_text(x: Any, max_chars: int) -> str | None:
    """``x`` as the full route's text check would return it, or None where it would refuse it or the type is
    unusual."""
    kind = type(x)
    if kind is str:
        if not 0 < len(x) <= max_chars:
            return None
        if not x.isascii():
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return None
        return x
    if kind is int:
        s = str(x)
        return s if len(s) <= max_chars else None
    return None


def _plain_number(x: Any, limits: EventLimits) -> float | None:
    """``x`` as the full route's number check would return it, or None where it would refuse it or the type is
    unusual."""
    kind = type(x)
    if kind is int:
        x = float(x)
    elif kind is not float:
        return None
    return x if isfinite(x) and -limits.max_abs_value <= x <= limits.max_abs_value else None


def _plain_attrs(x: Any, limits: EventLimits) -> tuple[float, ...] | tuple[tuple[str, float], ...] | None:
    """``x`` as the full route's attribute check would return it, or None where it would refuse it or the type
    is unusual."""
    kind = type(x)
    if (kind is not list and kind is not dict) or not x or len(x) > limits.max_attr_dim:
        return None
    if kind is list:
        values = []
        for value in x:
            number = _plain_number(value, limits)
            if number is None:
                return None
            values.append(number)
        return tuple(values)
    out = []
    for name, value in x.items():
        value = _plain_number(value, limits)
        if value is None or type(name) is not str or not _plain_name(name):
            return None
        out.append((name, value))
    return tuple(sorted(out))


def _event_builder() -> Callable[..., Event]:
    """A constructor for :class:`Event` taking every field positionally, about twice as fast as ``Event(...)``:
    the dataclass's frozen ``__init__`` goes through ``object.__setattr__`` once per field; this sets the slots
    through their descriptors. Only for values already validated (it skips nothing else: Event has no checks)."""
    new = object.__new__
    setters = tuple(Event.__dict__[name].__set__ for name in Event.__dataclass_fields__)
    (op_, time_, net_, u_, v_, to_, weight_, attrs_, id_) = setters

    def build(op: str, time: float, net: str, u: str, v: str | None, to: str | None, weight: float,
              attrs: Any, event_id: str | None) -> Event:
        event = new(Event)
        op_(event, op)
        time_(event, time)
        net_(event, net)
        u_(event, u)
        v_(event, v)
        to_(event, to)
        weight_(event, weight)
        attrs_(event, attrs)
        id_(event, event_id)
        return event

    return build


_new_event = _event_builder()
