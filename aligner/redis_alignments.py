"""Alignments in Redis: the publisher the service writes with, and the client users read with.

Key layout (``NS`` = namespace, default ``dynalign``; ``{A|B}`` = the two network names sorted, as a Redis
Cluster hash tag, so every key of one pair lives in one slot)::

    NS:pairs                         SET     "A|B" for every aligned pair
    NS:{A|B}:current                 STRING  the version readers should use (the snapshot id it reflects)
    NS:{A|B}:retained                ZSET    the versions still kept (member = score = version)
    NS:{A|B}:v:<ver>:meta            HASH    snapshot, end_time, published_at, k, nodes:<net>
    NS:{A|B}:v:<ver>:top:<SRC>       HASH    field = node id in network SRC,
                                             value = JSON [[candidate id in the other network, score], ...] best first
    NS:{A|B}:versions                STREAM  one entry per published version: version, snapshot, end_time, nodes

A version's keys are all written before ``current`` moves to it, in one MULTI/EXEC together with the stream
entry, so a reader never sees half an update; the last ``retain`` versions are kept so that a reader holding an
older pointer still finds its data. With redis-cli alone::

    redis-cli GET 'dynalign:{offline|online}:current'                 # -> 7
    redis-cli HGET 'dynalign:{offline|online}:v:7:top:online' 17       # -> [["9",0.93],["4",0.71],...]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from aligner.update import AlignmentUpdate
from snapshots.snapshot import pair_key

BATCH_FIELDS = 2000


def pair_tag(net_a: str, net_b: str) -> str:
    """The hash-tagged key prefix part for a pair.

    >>> pair_tag("online", "offline")
    '{offline|online}'
    """
    a, b = pair_key(net_a, net_b)
    return "{" + f"{a}|{b}" + "}"


@dataclass(frozen=True)
class Candidate:
    node: str
    score: float


class RedisPublisher:
    """Writes :class:`AlignmentUpdate` s as atomic versions (see the module docstring for the layout)."""

    def __init__(self, client: redis.Redis, namespace: str = "dynalign", retain: int = 3):
        self.r = client
        self.ns = namespace
        self.retain = max(1, retain)

    def publish(self, update: AlignmentUpdate) -> int:
        """Publish one update; returns its version (the snapshot id). Idempotent: re-publishing a version rewrites
        the same keys with the same content."""
        version = update.snapshot_id
        by_pair: dict[str, list] = {}
        for topk in update.pairs:
            by_pair.setdefault(pair_tag(topk.src, topk.dst), []).append(topk)
        for tag, topks in by_pair.items():
            prefix = f"{self.ns}:{tag}:v:{version}"
            pipe = self.r.pipeline(transaction=False)
            nodes = {}
            for t in topks:
                key = f"{prefix}:top:{t.src}"
                pipe.delete(key)
                src_ids, dst_ids = update.node_ids[t.src], update.node_ids[t.dst]
                mapping = {}
                for row, src_index in enumerate(t.src_index.tolist()):
                    mapping[src_ids[src_index]] = json.dumps(
                        [[dst_ids[c], round(float(s), 5)] for c, s in zip(t.candidates[row].tolist(), t.scores[row].tolist())],
                        separators=(",", ":"),
                    )
                    if len(mapping) >= BATCH_FIELDS:
                        pipe.hset(key, mapping=mapping)
                        mapping = {}
                if mapping:
                    pipe.hset(key, mapping=mapping)
                nodes[f"nodes:{t.src}"] = len(t.src_index)
            meta = {"snapshot": update.snapshot_id, "end_time": update.end_time, "published_at": time.time(),
                    "k": int(topks[0].candidates.shape[1]) if len(topks[0].candidates) else 0, **nodes}
            pipe.hset(f"{prefix}:meta", mapping=meta)
            pipe.execute()
            self._flip(tag, version, meta)
        return version

    def _flip(self, tag: str, version: int, meta: dict) -> None:
        base = f"{self.ns}:{tag}"
        old = [int(v) for v in self.r.zrange(f"{base}:retained", 0, -1)]
        keep = sorted(set(old) | {version})[-self.retain:]
        drop = [v for v in old if v not in keep]
        pipe = self.r.pipeline(transaction=True)
        pipe.set(f"{base}:current", version)
        pipe.zadd(f"{base}:retained", {str(version): version})
        pipe.xadd(f"{base}:versions", {"version": version, "snapshot": meta["snapshot"], "end_time": meta["end_time"],
                                       "nodes": sum(v for k, v in meta.items() if k.startswith("nodes:"))},
                  maxlen=10_000, approximate=True)
        pipe.sadd(f"{self.ns}:pairs", tag.strip("{}"))
        nets = tag.strip("{}").split("|")
        for v in drop:
            pipe.zrem(f"{base}:retained", str(v))
            pipe.delete(f"{base}:v:{v}:meta", *(f"{base}:v:{v}:top:{n}" for n in nets))
        pipe.execute()


class AlignmentClient:
    """Read alignments back: ``AlignmentClient.from_url("redis://...").top("17", "online", "offline")``.

    Configuration is explicit: a URL (``redis://``, ``rediss://`` for TLS, ``redis://:password@host``) or a client.
    """

    def __init__(self, client: redis.Redis, namespace: str = "dynalign"):
        self.r = client
        self.ns = namespace

    @classmethod
    def from_url(cls, url: str, namespace: str = "dynalign") -> "AlignmentClient":
        return cls(redis.Redis.from_url(url, decode_responses=True), namespace)

    def pairs(self) -> list[tuple[str, str]]:
        return sorted(tuple(p.split("|", 1)) for p in self.r.smembers(f"{self.ns}:pairs"))

    def current_version(self, net: str, to: str) -> int | None:
        v = self.r.get(f"{self.ns}:{pair_tag(net, to)}:current")
        return None if v is None else int(v)

    def versions(self, net: str, to: str) -> list[int]:
        return [int(v) for v in self.r.zrange(f"{self.ns}:{pair_tag(net, to)}:retained", 0, -1)]

    def meta(self, net: str, to: str, version: int | None = None) -> dict[str, str]:
        version = self.current_version(net, to) if version is None else version
        if version is None:
            return {}
        return self.r.hgetall(f"{self.ns}:{pair_tag(net, to)}:v:{version}:meta")

    def top(self, node: str, net: str, to: str, k: int | None = None, version: int | None = None) -> list[Candidate]:
        """Best candidates in ``to`` for ``node`` of ``net`` (empty if the node is not aligned)."""
        for _ in range(3):  # the pointed-to version can be retired between the two reads; then re-read the pointer
            v = self.current_version(net, to) if version is None else version
            if v is None:
                return []
            prefix = f"{self.ns}:{pair_tag(net, to)}:v:{v}"
            pipe = self.r.pipeline(transaction=False)
            pipe.exists(f"{prefix}:meta")
            pipe.hget(f"{prefix}:top:{net}", str(node))
            exists, raw = pipe.execute()
            if exists or version is not None:
                break
        if not raw:
            return []
        cands = [Candidate(str(c), float(s)) for c, s in json.loads(raw)]
        return cands[:k] if k else cands

    def top_many(self, nodes: list[str], net: str, to: str, version: int | None = None) -> dict[str, list[Candidate]]:
        v = self.current_version(net, to) if version is None else version
        if v is None:
            return {}
        key = f"{self.ns}:{pair_tag(net, to)}:v:{v}:top:{net}"
        out = {}
        for start in range(0, len(nodes), BATCH_FIELDS):
            chunk = [str(n) for n in nodes[start:start + BATCH_FIELDS]]
            for node, raw in zip(chunk, self.r.hmget(key, chunk)):
                if raw:
                    out[node] = [Candidate(str(c), float(s)) for c, s in json.loads(raw)]
        return out
