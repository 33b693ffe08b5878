"""The event contract: what may enter dynalign, and the one place that decides.

Every source (file, stdin, Kafka) hands raw payloads to :func:`parse_event`; it either returns a validated,
immutable :class:`Event` or raises :class:`InvalidEvent` whose ``reason`` goes to the dead-letter sink with
the original payload. Nothing downstream re-validates.

Validation is on the hot path of ingestion (one call per event, tens of thousands per second), so it has two
routes to the same answer. The fast route (:mod:`stream.event_fast_route`) decodes with orjson and accepts only
the plain, well-formed shape, building the :class:`Event` directly; anything else at all, valid or not, takes
the full route (:mod:`stream.event_checks`), which decodes with the standard library and checks field by field,
so every rejection and every reason comes from one place. What an event is, its limits and its canonical line
live in :mod:`stream.event_model`; this module is the door every source uses, and the names callers import.

Wire format: one JSON object per line (files, stdin) or per message value (Kafka).

>>> e = parse_event('{"op": "add_edge", "net": "online", "u": 17, "v": "42", "time": 1700000000}')
>>> e.op, e.net, e.u, e.v, e.time
('add_edge', 'online', '17', '42', 1700000000.0)
>>> parse_event('{"op": "add_anchor", "net": "a", "node": 1, "to": "b", "to_node": 9, "time": 5}').v
'9'
>>> parse_event('{"op": "teleport", "net": "a", "time": 1}')
Traceback (most recent call last):
...
stream.event_model.InvalidEvent: unknown op 'teleport' (expected one of add_anchor, add_edge, remove_anchor, remove_edge, set_attr)
"""

from __future__ import annotations

from typing import Any, Mapping

from stream.event_checks import validate
from stream.event_fast_route import FastDecodeError, fast_event, fast_loads
from stream.event_model import (
    ADD_ANCHOR,
    ADD_EDGE,
    DEFAULT_LIMITS,
    NAME_PATTERN,
    OPS,
    REMOVE_ANCHOR,
    REMOVE_EDGE,
    SET_ATTR,
    Event,
    EventLimits,
    InvalidEvent,
)

__all__ = ["ADD_ANCHOR", "ADD_EDGE", "DEFAULT_LIMITS", "NAME_PATTERN", "OPS", "REMOVE_ANCHOR", "REMOVE_EDGE",
           "SET_ATTR", "Event", "EventLimits", "InvalidEvent", "parse_event"]


def parse_event(payload: str | bytes | Mapping[str, Any], limits: EventLimits = DEFAULT_LIMITS) -> Event:
    """Validate one payload (JSON text, bytes, or an already-decoded object) into an :class:`Event`."""
    if type(payload) is bytes or type(payload) is str:
        if len(payload) <= limits.max_payload_bytes:
            try:
                obj = fast_loads(payload)
            except FastDecodeError:
                pass  # the full route words the reason
            else:
                if type(obj) is dict:
                    event = fast_event(obj, limits)
                    if event is not None:
                        return event
    elif type(payload) is dict:
        event = fast_event(payload, limits)
        if event is not None:
            return event
    return validate(payload, limits)
