"""The event contract: what may enter dynalign, and the one place that decides.

Every source (file, stdin, Kafka) hands raw payloads to :func:`parse_event`; it either returns a validated,
immutable :class:`Event` or raises :class:`InvalidEvent` whose ``reason`` goes to the dead-letter sink with
the original payload. Nothing downstream re-validates.

Validation is on the hot path of ingestion (one call per event, tens of thousands per second), so it has two
routes to the same answer. The fast route decodes with orjson and accepts only the plain, well-formed shape
(exact ``str``/``int``/``float`` types, values in range, no unknown fields), building the :class:`Event`
directly; anything else at all, valid or not, takes the full route, which decodes with the standard library
and checks field by field, so every rejection and every reason comes from one place. The fast route never
accepts what the full route refuses, nor builds a different event (``tests/stream/test_events.py`` checks
both on many generated payloads). :meth:`Event.to_json` likewise writes the canonical line directly rather
than through ``json.dumps``, byte for byte the same.

Wire format: one JSON object per line (files, stdin) or per message value (Kafka).

>>> e = parse_event('{"op": "add_edge", "net": "online", "u": 17, "v": "42", "time": 1700000000}')
>>> e.op, e.net, e.u, e.v, e.time
('add_edge', 'online', '17', '42', 1700000000.0)
>>> parse_event('{"op": "add_anchor", "net": "a", "node": 1, "to": "b", "to_node": 9, "time": 5}').v
'9'
>>> parse_event('{"op": "teleport", "net": "a", "time": 1}')
Traceback (most recent call last):
...
stream.events.InvalidEvent: unknown op 'teleport' (expected one of add_anchor, add_edge, remove_anchor, remove_edge, set_attr)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any, Mapping

import orjson

ADD_EDGE = "add_edge"
REMOVE_EDGE = "remove_edge"
SET_ATTR = "set_attr"
ADD_ANCHOR = "add_anchor"
REMOVE_ANCHOR = "remove_anchor"
OPS = (ADD_EDGE, REMOVE_EDGE, SET_ATTR, ADD_ANCHOR, REMOVE_ANCHOR)

# Network and attribute names end up in Redis keys, file names and log lines: 1-64 of letters, digits, '_', '.',
# '-', not starting with '.' or '-' (no "." or "..", no hidden files, nothing that reads as a flag), and \Z, not $,
# so a trailing newline does not pass.
NAME_PATTERN = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}\Z")
_NAME = NAME_PATTERN

# Fields each op requires / allows, in wire names.
_COMMON_REQUIRED = ("op", "time")
_COMMON_OPTIONAL = ("id",)
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    ADD_EDGE: (("net", "u", "v"), ("weight",)),
    REMOVE_EDGE: (("net", "u", "v"), ()),
    SET_ATTR: (("net", "node", "attrs"), ()),
    ADD_ANCHOR: (("net", "node", "to", "to_node"), ()),
    REMOVE_ANCHOR: (("net", "node", "to", "to_node"), ()),
}


class InvalidEvent(ValueError):
    """A payload that breaks the contract; ``reason`` says how, in words a user can act on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class EventLimits:
    """Bounds beyond which an event is absurd rather than merely large."""

    max_payload_bytes: int = 1 << 20
    max_node_id_chars: int = 256
    max_event_id_chars: int = 256
    max_attr_dim: int = 65_536
    max_abs_value: float = 1e12
    min_time: float = 0.0
    max_time: float = 1e11  # year ~5138 in unix seconds: anything later is a unit mistake (ms, ns)


DEFAULT_LIMITS = EventLimits()


@dataclass(frozen=True, slots=True)
class Event:
    """One validated change to the networks.

    ``u``/``v`` are the edge endpoints; for ``set_attr`` ``u`` is the node; for anchors ``u`` is the node in
    ``net`` and ``v`` the node in network ``to``. ``attrs`` is a tuple of floats (a vector) or a sorted tuple
    of ``(name, value)`` pairs (named fields).
    """

    op: str
    time: float
    net: str
    u: str
    v: str | None = None
    to: str | None = None
    weight: float = 1.0
    attrs: tuple[float, ...] | tuple[tuple[str, float], ...] | None = None
    id: str | None = None

    @property
    def named_attrs(self) -> bool:
        return bool(self.attrs) and isinstance(self.attrs[0], tuple)

    def to_dict(self) -> dict[str, Any]:
        """The canonical wire form; ``parse_event(e.to_dict()) == e``."""
        d: dict[str, Any] = {"op": self.op, "time": self.time, "net": self.net}
        if self.op in (ADD_EDGE, REMOVE_EDGE):
            d["u"], d["v"] = self.u, self.v
            if self.op == ADD_EDGE and self.weight != 1.0:
                d["weight"] = self.weight
        elif self.op == SET_ATTR:
            d["node"] = self.u
            d["attrs"] = dict(self.attrs) if self.named_attrs else list(self.attrs or ())
        else:
            d["node"], d["to"], d["to_node"] = self.u, self.to, self.v
        if self.id is not None:
            d["id"] = self.id
        return d

    def to_json(self) -> str:
        """``to_dict()`` as compact JSON, exactly as ``json.dumps(..., separators=(",", ":"))`` writes it."""
        time, weight = self.time, self.weight
        if type(time) is not float or type(weight) is not float or not _finite(time) or not _finite(weight):
            return _dumps(self.to_dict())  # ints, NaN, subclasses: events built by hand; let json decide
        try:
            if self.op in (ADD_EDGE, REMOVE_EDGE):
                body = f',"u":{_json_string(self.u)},"v":{_json_string(self.v)}'
                if self.op == ADD_EDGE and weight != 1.0:
                    body += f',"weight":{weight!r}'
            elif self.op == SET_ATTR:
                body = f',"node":{_json_string(self.u)},"attrs":{_json_attrs(self.attrs)}'
            else:
                body = f',"node":{_json_string(self.u)},"to":{_json_string(self.to)},"to_node":{_json_string(self.v)}'
            tail = "}" if self.id is None else f',"id":{_json_string(self.id)}}}'
            return f'{{"op":{_json_string(self.op)},"time":{time!r},"net":{_json_string(self.net)}{body}{tail}'
        except (TypeError, _NotPlain):  # a field of another type than parse_event makes
            return _dumps(self.to_dict())


class _NotPlain(Exception):
    """An attribute value :meth:`Event.to_json` leaves to ``json.dumps``."""


def _json_attrs(attrs: Any) -> str:
    """Attributes as ``json.dumps`` writes ``to_dict()["attrs"]``, for plain finite floats only."""
    if attrs and isinstance(attrs[0], tuple):
        parts = []
        for name, value in dict(attrs).items():  # as to_dict: a repeated name keeps its first place, last value
            if type(value) is not float or not _finite(value):
                raise _NotPlain
            parts.append(f"{_json_string(name)}:{value!r}")
        return "{" + ",".join(parts) + "}"
    for value in attrs or ():
        if type(value) is not float or not _finite(value):
            raise _NotPlain
    return "[" + ",".join(map(float.__repr__, attrs or ())) + "]"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


_finite = math.isfinite


def parse_event(payload: str | bytes | Mapping[str, Any], limits: EventLimits = DEFAULT_LIMITS) -> Event:
    """Validate one payload (JSON text, bytes, or an already-decoded object) into an :class:`Event`."""
    kind = type(payload)
    if kind is bytes or kind is str:
        if len(payload) <= limits.max_payload_bytes:
            try:
                obj = _fast_loads(payload)
            except orjson.JSONDecodeError:
                pass  # the full route words the reason
            else:
                if type(obj) is dict:
                    event = _fast_event(obj, limits)
                    if event is not None:
                        return event
    elif kind is dict:
        event = _fast_event(payload, limits)
        if event is not None:
            return event
    return _validate(payload, limits)


def _validate(payload: str | bytes | Mapping[str, Any], limits: EventLimits) -> Event:
    """The full route: every check in order, each failure with its reason."""
    obj = _decode(payload, limits)
    op = obj.get("op")
    if "op" not in obj:
        raise InvalidEvent("missing field 'op'")
    if not isinstance(op, str):
        raise InvalidEvent(f"field 'op' must be a string, got {_type(op)}")
    if op not in _FIELDS:
        raise InvalidEvent(f"unknown op {op!r} (expected one of {', '.join(sorted(OPS))})")
    required, optional = _FIELDS[op]
    missing = [f for f in (*_COMMON_REQUIRED, *required) if f not in obj]
    if missing:
        raise InvalidEvent(f"{op}: missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    unknown = sorted(set(obj) - set(_COMMON_REQUIRED) - set(_COMMON_OPTIONAL) - set(required) - set(optional))
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

# orjson decodes strictly (valid UTF-8 only, no lone surrogates, no NaN/Infinity); the one value it decodes
# differently is an integer beyond 64 bits (a float, not an int), which the fast route never accepts where
# that difference could matter: ids must be str or int, and numbers that large are beyond every limit (for
# custom limits both decoders round them to the same float).
_fast_loads = orjson.loads

# op -> (number of required fields, op and time included; whether a 'weight' may be present)
_FAST_FORMS = {op: (len(_COMMON_REQUIRED) + len(required), "weight" in optional)
               for op, (required, optional) in _FIELDS.items()}

_NAMES_SEEN: set[str] = set()  # network and attribute names that matched _NAME: a few, seen millions of times
_NAMES_SEEN_MAX = 4096


def _fast_event(obj: dict, limits: EventLimits) -> Event | None:
    """The event ``obj`` describes if it has the plain well-formed shape, else None (the full route decides).

    Accepts exactly what :func:`_validate` accepts for such objects, and returns an equal event.
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
        if not (_finite(time) and limits.min_time <= time <= limits.max_time):
            return None
        if type(net) is not str or not _plain_name(net):
            return None
        event_id = obj.get("id")
        if event_id is not None:
            event_id = _plain_text(event_id, limits.max_event_id_chars)
            if event_id is None:
                return None
        if op == ADD_EDGE or op == REMOVE_EDGE:
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
            if may_weigh and "weight" in obj:
                weight = obj["weight"]
                kind = type(weight)
                if kind is int:
                    weight = float(weight)
                elif kind is not float:
                    return None
                if not (_finite(weight) and 0.0 < weight <= limits.max_abs_value):
                    return None
            return _new_event(op, time, net, u, v, None, weight, None, event_id)
        u = _plain_text(obj["node"], limits.max_node_id_chars)
        if u is None:
            return None
        if op == SET_ATTR:
            attrs = _plain_attrs(obj["attrs"], limits)
            return None if attrs is None else _new_event(op, time, net, u, None, None, 1.0, attrs, event_id)
        to, v = obj["to"], _plain_text(obj["to_node"], limits.max_node_id_chars)
        if type(to) is not str or not _plain_name(to) or to == net or v is None:
            return None
        return _new_event(op, time, net, u, v, to, 1.0, None, event_id)
    except (KeyError, OverflowError, ValueError):  # a missing field; an int beyond float or str conversion
        return None


def _plain_name(name: str) -> bool:
    """Whether ``name`` (a str) is a valid network or attribute name, remembering the few valid ones."""
    if name in _NAMES_SEEN:
        return True
    if not _NAME.match(name):
        return False
    if len(_NAMES_SEEN) >= _NAMES_SEEN_MAX:
        _NAMES_SEEN.clear()
    _NAMES_SEEN.add(name)
    return True


def _plain_text(x: Any, max_chars: int) -> str | None:
    """``x`` as :func:`_text` would return it, or None where it would refuse it or the type is unusual."""
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
    """``x`` as :func:`_number` would return it, or None where it would refuse it or the type is unusual."""
    kind = type(x)
    if kind is int:
        x = float(x)
    elif kind is not float:
        return None
    return x if _finite(x) and -limits.max_abs_value <= x <= limits.max_abs_value else None


def _plain_attrs(x: Any, limits: EventLimits) -> tuple[float, ...] | tuple[tuple[str, float], ...] | None:
    """``x`` as :func:`_attrs` would return it, or None where it would refuse it or the type is unusual."""
    kind = type(x)
    if (kind is not list and kind is not dict) or not x or len(x) > limits.max_attr_dim:
        return None
    if kind is list:
        values = tuple(_plain_number(value, limits) for value in x)
        return None if None in values else values
    out = []
    for name, value in x.items():
        value = _plain_number(value, limits)
        if value is None or type(name) is not str or not _plain_name(name):
            return None
        out.append((name, value))
    return tuple(sorted(out))


def _event_builder() -> Any:
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
    if not isinstance(x, str) or not _NAME.match(x):
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
            if not _NAME.match(name):
                raise InvalidEvent(f"attribute name {name[:80]!r} must be 1-64 letters, digits, '_', '.', '-'")
            out.append((name, _number(value, f"attrs.{name}", limits)))
        return tuple(sorted(out))
    raise InvalidEvent(f"field 'attrs' must be an array of numbers or an object of named numbers, got {_type(x)}")
