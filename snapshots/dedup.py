"""Which offered events are redeliveries, which reuse an id for different content, and which are new.

Real sources redeliver (at-least-once Kafka, restarted file readers), so an event whose ``(net, id)`` was seen
among the last ``dedup_capacity`` ids with the same content is dropped. Remembering the content (a digest) and
not only the id is what stops a forger: an event reusing a valid event's id with other content is refused, not
taken for a redelivery, so it cannot make the valid one vanish unseen. Its own module because its memory is
bounded, travels with checkpoints and has a history of formats of its own (ids once unscoped, without digests).
"""

from __future__ import annotations

import hashlib
from collections import deque
from enum import Enum
from typing import Any

from stream.events import Event

REFUSED = b""  # the digest remembered for an id whose event the graph refused: it never took effect


class Verdict(Enum):
    """What an event that is not new is (:meth:`RedeliveryFilter.check` gives ``None`` for a new one: an enum
    member per event would cost more than the check)."""

    DUPLICATE = "duplicate"  # a redelivery of an event seen before: drop it
    REUSED = "reused"  # an id seen before with different content: refuse it


class RedeliveryFilter:
    """The last ``capacity`` ``(net, id)`` keys offered, each with the digest of its event's content."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._seen: dict[tuple[str, str], bytes] = {}
        self._order: deque[tuple[str, str]] = deque()  # oldest first: forgotten first
        self._legacy_ids: set[str] = set()  # ids from a state written before ids were scoped: duplicates, whatever net

    def check(self, event: Event) -> Verdict | None:
        """What ``event`` is, ``None`` if it is new (never seen, or seen only with an event the graph refused);
        a new id is remembered from here on. An event without an id is always new."""
        event_id = event.id
        if event_id is None:
            return None
        key = (event.net, event_id)
        digest = _content_digest(event)
        seen = self._seen.get(key)
        if seen is None and self._legacy_ids and event_id in self._legacy_ids:
            seen = digest
        if seen == REFUSED:  # the graph refused the event that came with this id: it never took effect
            self._seen[key] = digest
            return None
        if seen is not None:
            return Verdict.DUPLICATE if seen == digest else Verdict.REUSED
        self._remember(key, digest)
        return None

    def refused(self, event: Event) -> None:
        """The graph refused ``event``: a corrected resend under the same id must not be taken for a forgery."""
        key = (event.net, event.id)
        if event.id is not None and key in self._seen:
            self._seen[key] = REFUSED

    def to_state(self) -> dict[str, Any]:
        return {"seen": [[net, event_id, self._seen[(net, event_id)].hex()] for net, event_id in self._order],
                "seen_ids": sorted(self._legacy_ids)}

    @classmethod
    def from_state(cls, state: dict[str, Any], capacity: int) -> RedeliveryFilter:
        """The filter of :meth:`to_state`; a smaller ``capacity`` than it had forgets the oldest ids."""
        restored = cls(capacity)
        for net, event_id, digest in state.get("seen", ()):
            restored._remember((str(net), str(event_id)), bytes.fromhex(digest))
        # Written before ids were scoped per network: their network and content are unknown, so any event
        # reusing one is taken for a redelivery, as it was then.
        restored._legacy_ids = set(map(str, state["seen_ids"]))
        return restored

    def _remember(self, key: tuple[str, str], digest: bytes) -> None:
        self._seen[key] = digest
        self._order.append(key)
        if len(self._order) > self.capacity:
            del self._seen[self._order.popleft()]


def reused_id_reason(event: Event) -> str:
    return (f"event id {event.id!r} was used before in network {event.net!r} by a different event (a reused or "
            f"forged id): the first one was applied, this one is not")


def _content_digest(event: Event) -> bytes:
    """What a redelivery repeats exactly: every field but the id, hashed so that finding a different event with
    the same digest is out of reach (a forger who could would make a valid event vanish as a duplicate)."""
    # The network is part of the key, not of the content. repr of each field: a node id holding the separator
    # cannot make two events read alike.
    text = (f"{event.op}\x1f{event.time!r}\x1f{event.u!r}\x1f{event.v!r}\x1f{event.to!r}\x1f{event.weight!r}"
            f"\x1f{event.attrs!r}")
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).digest()
