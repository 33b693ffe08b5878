"""Writing alignments to Redis as atomic versions, the service's side of :mod:`aligner.publish.redis_layout`.

A version's keys are written first (with a TTL, so a publisher dying half-way leaves nothing behind), then one
MULTI/EXEC makes them permanent, moves ``current``, retires versions beyond ``retain`` and appends the stream
entry: readers never see half an update, and a reader holding an older version finds it until it is retired.
The flip is guarded with WATCH: a version never replaces a newer one (two workers handing a pair over).
Publishing the same snapshot with the same content again (a replay after a crash) is a no-op.

A node *changed* when its ranked candidate ids differ from the pair's previous version published by this
process (it appeared, disappeared or its ranking moved); scores alone drifting do not count. The first version
a publisher writes after it starts lists every node.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np
import orjson
import redis
from redis.typing import EncodableT, FieldT

from aligner.logs import iso_time
from aligner.publish.redis_layout import BATCH_FIELDS, PairKeys, as_text, pairs_key
from aligner.update import AlignmentUpdate, PairTopK

CHANGED_INLINE = 1000  # changed node ids listed in the stream entry itself; more go to a SET
PENDING_TTL_S = 3600  # a version whose flip never came (publisher died) expires after this
STREAM_MAXLEN = 10_000


@dataclass
class _Direction:
    """One direction of one pair, ready to write: its HASH fields, its digest, and what changed."""

    src: str
    fields: dict[str, bytes]  # node -> JSON [[candidate, score], ...]
    ranking: dict[str, int]  # node -> hash of its ranked candidate ids, to find changed nodes next time
    changed: list[str]
    digest: str  # of the fields, to recognise a replay of what is already published


class RedisPublisher:
    """Writes :class:`AlignmentUpdate` s as atomic versions (see :mod:`aligner.publish.redis_layout`).

    ``worker`` names the publishing process in each version's meta (useful when workers hand pairs over).
    """

    def __init__(self, client: redis.Redis, namespace: str = "dynalign", retain: int = 3, worker: str = ""):
        self.r = client
        self.ns = namespace
        self.retain = max(1, retain)
        self.worker = worker
        self._rankings: dict[tuple[str, str], dict[str, int]] = {}  # (pair, src) -> last published ranking

    def publish(self, update: AlignmentUpdate) -> dict[str, int]:
        """Publish one update; returns ``{"A|B": version}`` for every pair in it (the current version of a pair
        whose publication was a no-op). Raises :class:`redis.RedisError` if Redis is unreachable; retrying with
        the same update then finishes the pairs not yet done."""
        by_pair: dict[PairKeys, list[PairTopK]] = {}
        for topk in update.pairs:
            by_pair.setdefault(PairKeys.of(self.ns, topk.src, topk.dst), []).append(topk)
        return {keys.pair: self._publish_pair(keys, topks, update) for keys, topks in by_pair.items()}

    def _publish_pair(self, keys: PairKeys, topks: list[PairTopK], update: AlignmentUpdate) -> int:
        directions = [self._direction(keys.pair, t, update) for t in topks]
        digest = hashlib.sha1("".join(sorted(d.digest for d in directions)).encode()).hexdigest()
        current = self.r.get(keys.current)
        if current is not None:
            snapshot, old_digest = self.r.hmget(keys.meta(int(current)), ["snapshot", "digest"])
            if snapshot is not None and int(snapshot) == update.snapshot_id and as_text(old_digest) == digest:
                self._remember(keys.pair, directions)
                return int(current)

        version = int(self.r.incr(keys.seq))
        written = [keys.meta(version)]
        published_at = time.time()
        # Unix seconds for programs, ISO-8601 UTC beside them for the person reading HGETALL or XRANGE.
        times: dict[FieldT, EncodableT] = {"end_time": update.end_time, "end_time_iso": iso_time(update.end_time),
                 "published_at": published_at, "published_at_iso": iso_time(published_at, precision="seconds")}
        meta: dict[FieldT, EncodableT] = {
            "snapshot": update.snapshot_id, **times, "worker": self.worker, "digest": digest,
            "k": int(topks[0].candidates.shape[1]) if len(topks[0].candidates) else 0,
        }
        entry: dict[FieldT, EncodableT] = {"version": version, "snapshot": update.snapshot_id, **times,
                                           "worker": self.worker}
        pipe = self.r.pipeline(transaction=False)
        for d in directions:
            key = keys.top(version, d.src)
            written.append(key)
            items = list(d.fields.items())
            for start in range(0, len(items), BATCH_FIELDS):
                pipe.hset(key, mapping=dict(items[start:start + BATCH_FIELDS]))
            meta[f"nodes:{d.src}"] = len(d.fields)
            meta[f"changed:{d.src}"] = entry[f"changed:{d.src}"] = len(d.changed)
            if len(d.changed) <= CHANGED_INLINE:
                entry[f"changed_nodes:{d.src}"] = json.dumps(d.changed, separators=(",", ":"))
            else:
                changed_key = keys.changed(version, d.src)
                written.append(changed_key)
                for start in range(0, len(d.changed), BATCH_FIELDS):
                    pipe.sadd(changed_key, *d.changed[start:start + BATCH_FIELDS])
                entry[f"changed_key:{d.src}"] = changed_key
        pipe.hset(written[0], mapping=meta)
        for key in written:
            pipe.expire(key, PENDING_TTL_S)
        pipe.execute()
        if self._flip(keys, version, written, entry):
            self.r.sadd(pairs_key(self.ns), keys.pair)  # another slot: not part of the transaction
            self._remember(keys.pair, directions)
        return version

    def _flip(self, keys: PairKeys, version: int, written: list[str], entry: dict[FieldT, EncodableT]) -> bool:
        """Make ``version`` current in one transaction; False (and its keys dropped) if a newer one already is."""
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(keys.current, keys.retained)
                    current = pipe.get(keys.current)
                    if current is not None and int(current) > version:
                        pipe.multi()
                        pipe.delete(*written)
                        pipe.execute()
                        return False
                    # redis-py types zrange's members as maybe (member, score) pairs, withscores or not
                    old = [int(v) for v in pipe.zrange(keys.retained, 0, -1)]  # type: ignore[arg-type]
                    keep = sorted(set(old) | {version})[-self.retain:]
                    pipe.multi()
                    for key in written:
                        pipe.persist(key)
                    pipe.set(keys.current, version)
                    pipe.zadd(keys.retained, {str(version): version})
                    for v in old:
                        if v not in keep:
                            pipe.zrem(keys.retained, str(v))
                            pipe.delete(*keys.of_version(v))
                    pipe.xadd(keys.versions, entry, maxlen=STREAM_MAXLEN, approximate=True)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def _direction(self, pair: str, t: PairTopK, update: AlignmentUpdate) -> _Direction:
        src_ids = update.node_ids[t.src]
        dst_ids = np.asarray(update.node_ids[t.dst], dtype=object)
        before = self._rankings.get((pair, t.src))
        fields, ranking, changed = {}, {}, []
        digest = hashlib.sha1(t.src.encode())
        # One vectorised gather and rounding, then orjson per node: this runs for every node on every publish.
        candidate_ids = dst_ids[t.candidates].tolist() if len(t.candidates) else []
        scores = np.round(t.scores.astype(np.float64), 5).tolist()
        for src_index, ids, row in zip(t.src_index.tolist(), candidate_ids, scores):
            node = src_ids[src_index]
            fields[node] = value = orjson.dumps(list(zip(ids, row)))
            digest.update(node.encode() + b"\0" + value + b"\n")
            ranking[node] = key = hash(tuple(ids))
            if before is None or before.get(node) != key:
                changed.append(node)
        if before is not None:
            changed += [node for node in before if node not in ranking]  # no longer aligned
        return _Direction(t.src, fields, ranking, changed, digest.hexdigest())

    def _remember(self, pair: str, directions: list[_Direction]) -> None:
        for d in directions:
            self._rankings[(pair, d.src)] = d.ranking
