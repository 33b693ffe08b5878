"""The full validation route: every check in order, each failure an :class:`InvalidEvent` with its reason.

This is the one place that words rejections (they go to the dead-letter sink with the payload), and the
reference the fast route (:mod:`stream.event_fast_route`) must agree with. It decodes with the standard
library, whose errors say where a payload broke.

>>> validate('{"op": "remove_edge", "net": "a", "u": 1, "v": 1, "time": 0}', EventLimits())
Traceback (most recent call last):
...
stream.event_model.InvalidEvent: remove_edge: self-loop on node '1' (u == v)
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, Mapping

from stream.event_model import (
    ADD_EDGE,
    COMMON_OPTIONAL,
    COMMON_REQUIRED,
    NAME_PATTERN,
    OP_FIELDS,
    OPS,
    REMOVE_EDGE,
    SET_ATTR,
    Event,
    EventLimits,
    InvalidEvent,
)


def validate(payload: str | bytes | Mapping[str, Any], limits: EventLimits) -> Event:
    """The event ``payload`` describes, or :class:`InvalidEvent` saying what is wrong with it first."""
    obj = _decode(payload, limits)
    op = obj.get("op")
    if "op" not in obj:
        raise InvalidEvent("missing field 'op'")
    if not isinstance(op, str):
        raise InvalidEvent(f"field 'op' must be a string, got {_type(op)}")
    if op not in OP_FIELDS:
        raise InvalidEvent(f"unknown op {op!r} (expected one of {', '.join(sorted(OPS))})")
    required, optional = OP_FIELDS[op]
    missing = [f for f in (*COMMON_REQUIRED, *required) if f not in obj]
    if missing:
        raise InvalidEvent(f"{op}: missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    unknown = sorted(set(obj) - set(COMMON_REQUIRED) - set(COMMON_OPTIONAL) - set(required) - set(optional))
    if unknown:
        raise InvalidEvent(f"{op}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}")

    time = _time(obj["time"], limits)
    event_id = None
    if obj.get("id") is not None:
        event_id = _text(obj["id"], "id", limits.max_event_id_chars)
    net = _net_name(obj["net"], "net")

    if op in (ADD_EDGE, REMOVE_EDGE):
        u = _node_id(obj["u"], "u", limits)
        v = _node_id(obj["v"], "v", limits)
        if u == v:
            raise InvalidEvent(f"{op}: self-loop on node {u!r} (u == v)")
        weight = 1.0
        if "weight" in obj:
            weight = _number(obj["weight"], "weight", limits)
            if weight <= 0:
                raise InvalidEvent(f"{op}: 'weight' must be > 0, got {weight!r} (use remove_edge to delete)")
        return Event(op=op, time=time, net=net, u=u, v=v, weight=weight, id=event_id)
    if op == SET_ATTR:
        node = _node_id(obj["node"], "node", limits)
        return Event(op=op, time=time, net=net, u=node, attrs=_attrs(obj["attrs"], limits), id=event_id)
    node = _node_id(obj["node"], "node", limits)
    to = _net_name(obj["to"], "to")
    if to == net:
        raise InvalidEvent(f"{op}: an anchor joins two different networks, got net == to == {net!r}")
    return Event(op=op, time=time, net=net, u=node, to=to, v=_node_id(obj["to_node"], "to_node", limits), id=event_id)


def _decode(payload: str | bytes | Mapping[str, Any], limits: EventLimits) -> dict[str, Any]:
    if isinstance(payload, Mapping):
        return dict(payload)
    if isinstance(payload, (bytes, bytearray, memoryview)):
        if len(payload) > limits.max_payload_bytes:
            raise InvalidEvent(f"payload of {len(payload)} bytes exceeds the limit of {limits.max_payload_bytes}")
        try:
            payload = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidEvent(f"payload is not UTF-8: {e.reason} at byte {e.start}") from None
    if not isinstance(payload, str):
        raise InvalidEvent(f"payload must be JSON text or an object, got {_type(payload)}")
    if len(payload) > limits.max_payload_bytes:
        raise InvalidEvent(f"payload of {len(payload)} characters exceeds the limit of {limits.max_payload_bytes}")
    if not payload.strip():
        raise InvalidEvent("empty payload")
    try:
        obj = _DECODER.decode(payload)
    except InvalidEvent:
        raise
    except (ValueError, RecursionError) as e:  # ValueError also covers integers of over 4300 digits
        raise InvalidEvent(f"not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {_type(obj)}")
    return obj


def _reject_constant(name: str) -> float:
    raise InvalidEvent(f"non-finite number {name} is not allowed")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # one decoder: json.loads with a hook builds one per call


def _type(x: Any) -> str:
    return {type(None): "null", bool: "boolean", dict: "object", list: "array", str: "string"}.get(
        type(x), type(x).__name__
    )


def _number(x: Any, field: str, limits: EventLimits) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise InvalidEvent(f"field {field!r} must be a number, got {_type(x)}")
    x = _float(x)
    if not math.isfinite(x):
        raise InvalidEvent(f"field {field!r} must be finite, got {x}")
    if abs(x) > limits.max_abs_value:
        raise InvalidEvent(f"field {field!r} = {x:g} is beyond the limit of ±{limits.max_abs_value:g}")
    return x


def _time(x: Any, limits: EventLimits) -> float:
    if isinstance(x, str):
        try:
            dt = datetime.fromisoformat(x.replace("Z", "+00:00"))
            # Without an offset, UTC: the host's time zone must not change what an event means.
            t = (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
        except (ValueError, OverflowError):
            raise InvalidEvent(f"field 'time' must be unix seconds or ISO-8601, got {x[:40]!r}") from None
    elif isinstance(x, bool) or not isinstance(x, (int, float)):
        raise InvalidEvent(f"field 'time' must be unix seconds or ISO-8601, got {_type(x)}")
    else:
        t = _float(x)
    if not math.isfinite(t):
        raise InvalidEvent(f"field 'time' must be finite, got {t}")
    if not limits.min_time <= t <= limits.max_time:
        raise InvalidEvent(
            f"field 'time' = {t:g} is outside [{limits.min_time:g}, {limits.max_time:g}] unix seconds "
            "(milliseconds by mistake?)"
        )
    return t


def _float(x: int | float) -> float:
    try:
        return float(x)
    except OverflowError:  # an integer beyond float range
        return math.inf if x > 0 else -math.inf


def _text(x: Any, field: str, max_chars: int) -> str:
    if isinstance(x, bool) or not isinstance(x, (str, int)):
        raise InvalidEvent(f"field {field!r} must be a string or an integer, got {_type(x)}")
    s = str(x)
    if not s:
        raise InvalidEvent(f"field {field!r} must not be empty")
    if len(s) > max_chars:
        raise InvalidEvent(f"field {field!r} has {len(s)} characters, more than the limit of {max_chars}")
    try:
        s.isascii() or s.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate from a JSON escape would break every UTF-8 writer downstream
        raise InvalidEvent(f"field {field!r} is not valid Unicode: {e.reason} at character {e.start}") from None
    return s


def _node_id(x: Any, field: str, limits: EventLimits) -> str:
    return _text(x, field, limits.max_node_id_chars)


def _net_name(x: Any, field: str) -> str:
    if not isinstance(x, str) or not NAME_PATTERN.match(x):
        shown = x if not isinstance(x, str) else x[:80]
        raise InvalidEvent(f"field {field!r} must be a network name of 1-64 letters, digits, '_', '.', '-' (not "
                           f"starting with '.' or '-'), got {shown!r}")
    return x


def _attrs(x: Any, limits: EventLimits) -> tuple[float, ...] | tuple[tuple[str, float], ...]:
    if isinstance(x, list):
        if not x:
            raise InvalidEvent("field 'attrs' must not be empty")
        if len(x) > limits.max_attr_dim:
            raise InvalidEvent(f"field 'attrs' has {len(x)} values, more than the limit of {limits.max_attr_dim}")
        return tuple(_number(value, f"attrs[{i}]", limits) for i, value in enumerate(x))
    if isinstance(x, dict):
        if not x:
            raise InvalidEvent("field 'attrs' must not be empty")
        if len(x) > limits.max_attr_dim:
            raise InvalidEvent(f"field 'attrs' has {len(x)} fields, more than the limit of {limits.max_attr_dim}")
        out = []
        for name, value in x.items():
            if not NAME_PATTERN.match(name):
                raise InvalidEvent(f"attribute name {name[:80]!r} must be 1-64 letters, digits, '_', '.', '-'")
            out.append((name, _number(value, f"attrs.{name}", limits)))
        return tuple(sorted(out))
    raise InvalidEvent(f"field 'attrs' must be an array of numbers or an object of named numbers, got {_type(x)}")
