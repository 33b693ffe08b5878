"""What an event is, apart from how a payload becomes one: the ops and the fields each takes, the names allowed,
the limits, the error, and the immutable :class:`Event` with its canonical wire form.

Both validation routes (:mod:`stream.event_checks`, :mod:`stream.event_fast_route`) build on this module and
:mod:`stream.events` puts them together, so the vocabulary sits below all three.

>>> Event(op=ADD_EDGE, time=5.0, net="a", u="1", v="2", weight=0.5).to_json()
'{"op":"add_edge","time":5.0,"net":"a","u":"1","v":"2","weight":0.5}'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_string
from math import isfinite
from typing import Any, TypeGuard

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

# Fields each op requires / allows, in wire names.
COMMON_REQUIRED = ("op", "time")
COMMON_OPTIONAL = ("id",)
OP_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
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
        return _named(self.attrs)

    def to_dict(self) -> dict[str, Any]:
        """The canonical wire form; ``parse_event(e.to_dict()) == e``."""
        d: dict[str, Any] = {"op": self.op, "time": self.time, "net": self.net}
        if self.op in (ADD_EDGE, REMOVE_EDGE):
            d["u"], d["v"] = self.u, self.v
            if self.op == ADD_EDGE and self.weight != 1.0:
                d["weight"] = self.weight
        elif self.op == SET_ATTR:
            d["node"] = self.u
            attrs = self.attrs
            d["attrs"] = dict(attrs) if _named(attrs) else list(attrs or ())
        else:
            d["node"], d["to"], d["to_node"] = self.u, self.to, self.v
        if self.id is not None:
            d["id"] = self.id
        return d

    def to_json(self) -> str:
        """``to_dict()`` as compact JSON, exactly as ``json.dumps(..., separators=(",", ":"))`` writes it.

        Written directly rather than through ``json.dumps``, byte for byte the same: it runs once per event.
        """
        time, weight = self.time, self.weight
        if type(time) is not float or type(weight) is not float or not isfinite(time) or not isfinite(weight):
            return _dumps(self.to_dict())  # ints, NaN, subclasses: events built by hand; let json decide
        try:
            if self.op in (ADD_EDGE, REMOVE_EDGE):
                v = self.v
                if v is None:
                    return _dumps(self.to_dict())
                body = f',"u":{_json_string(self.u)},"v":{_json_string(v)}'
                if self.op == ADD_EDGE and weight != 1.0:
                    body += f',"weight":{weight!r}'
            elif self.op == SET_ATTR:
                body = f',"node":{_json_string(self.u)},"attrs":{_json_attrs(self.attrs)}'
            else:
                to, v = self.to, self.v
                if to is None or v is None:
                    return _dumps(self.to_dict())
                body = f',"node":{_json_string(self.u)},"to":{_json_string(to)},"to_node":{_json_string(v)}'
            tail = "}" if self.id is None else f',"id":{_json_string(self.id)}}}'
            return f'{{"op":{_json_string(self.op)},"time":{time!r},"net":{_json_string(self.net)}{body}{tail}'
        except (TypeError, _NotPlain):  # a field of another type than parse_event makes
            return _dumps(self.to_dict())


def _named(
    attrs: tuple[float, ...] | tuple[tuple[str, float], ...] | None,
) -> TypeGuard[tuple[tuple[str, float], ...]]:
    """Whether ``attrs`` are named fields (``(name, value)`` pairs) rather than a vector."""
    if not attrs:
        return False
    return isinstance(attrs[0], tuple)


class _NotPlain(Exception):
    """An attribute value :meth:`Event.to_json` leaves to ``json.dumps``."""


def _json_attrs(attrs: Any) -> str:
    """Attributes as ``json.dumps`` writes ``to_dict()["attrs"]``, for plain finite floats only."""
    if attrs and isinstance(attrs[0], tuple):
        parts = []
        for name, value in dict(attrs).items():  # as to_dict: a repeated name keeps its first place, last value
            if type(value) is not float or not isfinite(value):
                raise _NotPlain
            parts.append(f"{_json_string(name)}:{value!r}")
        return "{" + ",".join(parts) + "}"
    for value in attrs or ():
        if type(value) is not float or not isfinite(value):
            raise _NotPlain
    return "[" + ",".join(map(float.__repr__, attrs or ())) + "]"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
