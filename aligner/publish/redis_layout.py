"""The Redis key layout of published alignments, in one place: the publisher writes it, the client reads it.

Key layout (``NS`` = namespace, default ``dynalign``; ``{A|B}`` = the two network names sorted, a Redis Cluster
hash tag, so every key of one pair, all its versions included, lives in one slot)::

    NS:pairs                          SET     "A|B" for every aligned pair
    NS:{A|B}:seq                      STRING  the last version number handed out (INCR)
    NS:{A|B}:current                  STRING  the version readers should use
    NS:{A|B}:retained                 ZSET    the versions still kept, the last ``retain`` (member = score = version)
    NS:{A|B}:v:<ver>:meta             HASH    snapshot, end_time, published_at, worker, k, digest,
                                              nodes:<net> (alive nodes), changed:<net> (how many changed)
    NS:{A|B}:v:<ver>:top:<SRC>        HASH    field = node id in network SRC,
                                              value = JSON [[candidate id in the other network, score], ...] best first
    NS:{A|B}:v:<ver>:changed:<SRC>    SET     node ids of SRC whose candidates changed, when too many for the stream
    NS:{A|B}:versions                 STREAM  one entry per version: version, snapshot, end_time, published_at, worker,
                                              and per SRC changed:<SRC> (count) and changed_nodes:<SRC> (JSON list,
                                              up to CHANGED_INLINE ids) or changed_key:<SRC> (the SET above)

Versions count publications of a pair (1, 2, 3, ...); the meta says which snapshot and event time a version
reflects. How a version is written and made current atomically: :mod:`aligner.publish.redis_publisher`.

A top-k is one HASH field rather than a sorted set per node: one node's candidates are one O(1) ``HGET``, many
nodes' one ``HMGET``, a whole direction ``HSCAN``; and a version stays a handful of keys, so writing, flipping
and retiring it costs O(keys), where per-node sorted sets would cost two keys per node and version.

A node *changed* when its ranked candidate ids differ from the pair's previous version (see the publisher).
With redis-cli alone::

    redis-cli GET 'dynalign:{offline|online}:current'                  # -> 7
    redis-cli HGET 'dynalign:{offline|online}:v:7:top:online' 17        # -> [["9",0.93],["4",0.71],...]
    redis-cli XREAD BLOCK 0 STREAMS 'dynalign:{offline|online}:versions' '$'   # wait for the next version
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snapshots.snapshot import pair_key

BATCH_FIELDS = 2000  # hash fields or set members per command: big versions go out in several


def pair_tag(net_a: str, net_b: str) -> str:
    """The hash-tagged key prefix part for a pair.

    >>> pair_tag("online", "offline")
    '{offline|online}'
    """
    a, b = pair_key(net_a, net_b)
    return "{" + f"{a}|{b}" + "}"


def pairs_key(namespace: str) -> str:
    """The SET of every aligned pair (``"A|B"``)."""
    return f"{namespace}:pairs"


@dataclass(frozen=True)
class PairKeys:
    """The keys of one pair, all in one Redis Cluster slot.

    >>> keys = PairKeys.of("dynalign", "online", "offline")
    >>> keys.pair, keys.current, keys.top(7, "online")
    ('offline|online', 'dynalign:{offline|online}:current', 'dynalign:{offline|online}:v:7:top:online')
    """

    base: str  # NS:{A|B}
    nets: tuple[str, str]  # A, B

    @classmethod
    def of(cls, namespace: str, net_a: str, net_b: str) -> PairKeys:
        return cls(f"{namespace}:{pair_tag(net_a, net_b)}", pair_key(net_a, net_b))

    @property
    def pair(self) -> str:
        """The pair as the ``pairs`` SET and publishers' results name it."""
        return "|".join(self.nets)

    @property
    def seq(self) -> str:
        return f"{self.base}:seq"

    @property
    def current(self) -> str:
        return f"{self.base}:current"

    @property
    def retained(self) -> str:
        return f"{self.base}:retained"

    @property
    def versions(self) -> str:
        return f"{self.base}:versions"

    def meta(self, version: int) -> str:
        return f"{self.base}:v:{version}:meta"

    def top(self, version: int, src: str) -> str:
        return f"{self.base}:v:{version}:top:{src}"

    def changed(self, version: int, src: str) -> str:
        return f"{self.base}:v:{version}:changed:{src}"

    def of_version(self, version: int) -> list[str]:
        """Every key a version may have: what retiring it deletes."""
        return [self.meta(version), *(key for net in self.nets for key in (self.top(version, net),
                                                                           self.changed(version, net)))]


def as_text(value: Any) -> Any:
    """Redis replies as str whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value
