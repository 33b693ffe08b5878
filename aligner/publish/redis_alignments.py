"""Alignments in Redis: the publisher the service writes with, and the client users read with.

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
reflects. A version's keys are written first (with a TTL, so a publisher dying half-way leaves nothing behind),
then one MULTI/EXEC makes them permanent, moves ``current``, retires versions beyond ``retain`` and appends the
stream entry: readers never see half an update, and a reader holding an older version finds it until it is
retired. The flip is guarded with WATCH: a version never replaces a newer one (two workers handing a pair over).
Publishing the same snapshot with the same content again (a replay after a crash) is a no-op.

A top-k is one HASH field rather than a sorted set per node: one node's candidates are one O(1) ``HGET``, many
nodes' one ``HMGET``, a whole direction ``HSCAN``; and a version stays a handful of keys, so writing, flipping
and retiring it costs O(keys), where per-node sorted sets would cost two keys per node and version.

A node *changed* when its ranked candidate ids differ from the pair's previous version published by this
process (it appeared, disappeared or its ranking moved); scores alone drifting do not count. The first version
a publisher writes after it starts lists every node. With redis-cli alone::

    redis-cli GET 'dynalign:{offline|online}:current'                  # -> 7
    redis-cli HGET 'dynalign:{offline|online}:v:7:top:online' 17        # -> [["9",0.93],["4",0.71],...]
    redis-cli XREAD BLOCK 0 STREAMS 'dynalign:{offline|online}:versions' '$'   # wait for the next version
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import orjson
import redis
from redis.exceptions import AuthenticationError, AuthorizationError

from aligner.logs import iso_time
from aligner.update import AlignmentUpdate, PairTopK
from snapshots.snapshot import pair_key

BATCH_FIELDS = 2000
CHANGED_INLINE = 1000  # changed node ids listed in the stream entry itself; more go to a SET
PENDING_TTL_S = 3600  # a version whose flip never came (publisher died) expires after this
STREAM_MAXLEN = 10_000
# A follower's socket read outlasts its XREAD BLOCK by this much, so an idle wait ends with Redis's empty reply and
# only a connection that really stopped answering times out (redis-py 8's default read timeout equals the 5 s block).
FOLLOW_READ_GRACE_S = 5.0
FOLLOW_BACKOFF_S = (0.1, 5.0)  # reconnect delays of a follower: first, then doubling up to the last

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Announcement:
    """One entry of a pair's ``versions`` stream. ``changed[src]`` lists the nodes of network ``src`` whose
    candidates changed, or is None when the list was retired with its version before it was read."""

    stream_id: str
    version: int
    snapshot: int
    end_time: float
    published_at: float
    changed: dict[str, list[str] | None]


@dataclass(frozen=True)
class VersionRead:
    """Candidates of some nodes as one version holds them, read in one transaction with that version's meta
    (``snapshot``, ``end_time``, ``published_at``, ...). ``candidates`` holds only the nodes that have some."""

    version: int
    meta: dict[str, str]
    candidates: dict[str, list[Candidate]]


@dataclass
class _Direction:
    """One direction of one pair, ready to write: its HASH fields, its digest, and what changed."""

    src: str
    fields: dict[str, bytes]  # node -> JSON [[candidate, score], ...]
    ranking: dict[str, int]  # node -> hash of its ranked candidate ids, to find changed nodes next time
    changed: list[str]
    digest: str  # of the fields, to recognise a replay of what is already published


class RedisPublisher:
    """Writes :class:`AlignmentUpdate` s as atomic versions (see the module docstring for the layout).

    ``worker`` names the publishing process in each version's meta (useful when workers hand pairs over).
    """

    def __init__(self, client: redis.Redis, namespace: str = "dynalign", retain: int = 3, worker: str = ""):
        self.r = client
        self.ns = namespace
        self.retain = max(1, retain)
        self.worker = worker
        self._rankings: dict[tuple[str, str], dict[str, int]] = {}  # (tag, src) -> last published ranking

    def publish(self, update: AlignmentUpdate) -> dict[str, int]:
        """Publish one update; returns ``{"A|B": version}`` for every pair in it (the current version of a pair
        whose publication was a no-op). Raises :class:`redis.RedisError` if Redis is unreachable; retrying with
        the same update then finishes the pairs not yet done."""
        by_pair: dict[str, list[PairTopK]] = {}
        for topk in update.pairs:
            by_pair.setdefault(pair_tag(topk.src, topk.dst), []).append(topk)
        return {tag.strip("{}"): self._publish_pair(tag, topks, update) for tag, topks in by_pair.items()}

    def _publish_pair(self, tag: str, topks: list[PairTopK], update: AlignmentUpdate) -> int:
        base = f"{self.ns}:{tag}"
        directions = [self._direction(tag, t, update) for t in topks]
        digest = hashlib.sha1("".join(sorted(d.digest for d in directions)).encode()).hexdigest()
        current = self.r.get(f"{base}:current")
        if current is not None:
            snapshot, old_digest = self.r.hmget(f"{base}:v:{int(current)}:meta", ["snapshot", "digest"])
            if snapshot is not None and int(snapshot) == update.snapshot_id and _text(old_digest) == digest:
                self._remember(tag, directions)
                return int(current)

        version = int(self.r.incr(f"{base}:seq"))
        prefix = f"{base}:v:{version}"
        keys = [f"{prefix}:meta"]
        published_at = time.time()
        # Unix seconds for programs, ISO-8601 UTC beside them for the person reading HGETALL or XRANGE.
        times = {"end_time": update.end_time, "end_time_iso": iso_time(update.end_time),
                 "published_at": published_at, "published_at_iso": iso_time(published_at, precision="seconds")}
        meta: dict[str, Any] = {
            "snapshot": update.snapshot_id, **times, "worker": self.worker, "digest": digest,
            "k": int(topks[0].candidates.shape[1]) if len(topks[0].candidates) else 0,
        }
        entry: dict[str, Any] = {"version": version, "snapshot": update.snapshot_id, **times, "worker": self.worker}
        pipe = self.r.pipeline(transaction=False)
        for d in directions:
            key = f"{prefix}:top:{d.src}"
            keys.append(key)
            items = list(d.fields.items())
            for start in range(0, len(items), BATCH_FIELDS):
                pipe.hset(key, mapping=dict(items[start:start + BATCH_FIELDS]))
            meta[f"nodes:{d.src}"] = len(d.fields)
            meta[f"changed:{d.src}"] = entry[f"changed:{d.src}"] = len(d.changed)
            if len(d.changed) <= CHANGED_INLINE:
                entry[f"changed_nodes:{d.src}"] = json.dumps(d.changed, separators=(",", ":"))
            else:
                changed_key = f"{prefix}:changed:{d.src}"
                keys.append(changed_key)
                for start in range(0, len(d.changed), BATCH_FIELDS):
                    pipe.sadd(changed_key, *d.changed[start:start + BATCH_FIELDS])
                entry[f"changed_key:{d.src}"] = changed_key
        pipe.hset(keys[0], mapping=meta)
        for key in keys:
            pipe.expire(key, PENDING_TTL_S)
        pipe.execute()
        if self._flip(base, version, keys, entry):
            self.r.sadd(f"{self.ns}:pairs", tag.strip("{}"))  # another slot: not part of the transaction
            self._remember(tag, directions)
        return version

    def _flip(self, base: str, version: int, keys: list[str], entry: dict[str, Any]) -> bool:
        """Make ``version`` current in one transaction; False (and its keys dropped) if a newer one already is."""
        nets = base.split("{", 1)[1].rstrip("}").split("|")
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(f"{base}:current", f"{base}:retained")
                    current = pipe.get(f"{base}:current")
                    if current is not None and int(current) > version:
                        pipe.multi()
                        pipe.delete(*keys)
                        pipe.execute()
                        return False
                    old = [int(v) for v in pipe.zrange(f"{base}:retained", 0, -1)]
                    keep = sorted(set(old) | {version})[-self.retain:]
                    pipe.multi()
                    for key in keys:
                        pipe.persist(key)
                    pipe.set(f"{base}:current", version)
                    pipe.zadd(f"{base}:retained", {str(version): version})
                    for v in old:
                        if v not in keep:
                            pipe.zrem(f"{base}:retained", str(v))
                            pipe.delete(f"{base}:v:{v}:meta", *(f"{base}:v:{v}:{kind}:{n}"
                                                                 for n in nets for kind in ("top", "changed")))
                    pipe.xadd(f"{base}:versions", entry, maxlen=STREAM_MAXLEN, approximate=True)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def _direction(self, tag: str, t: PairTopK, update: AlignmentUpdate) -> _Direction:
        src_ids = update.node_ids[t.src]
        dst_ids = np.asarray(update.node_ids[t.dst], dtype=object)
        before = self._rankings.get((tag, t.src))
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

    def _remember(self, tag: str, directions: list[_Direction]) -> None:
        for d in directions:
            self._rankings[(tag, d.src)] = d.ranking


class AlignmentClient:
    """Read alignments back: ``AlignmentClient.from_url("redis://...").top("17", "online", "offline")``.

    Configuration is explicit: a URL (``redis://``, ``rediss://`` for TLS, ``redis://user:password@host``) or a
    client. :meth:`follow` waits for new versions on the pair's stream, so readers need not poll.
    """

    def __init__(self, client: redis.Redis, namespace: str = "dynalign"):
        self.r = client
        self.ns = namespace

    @classmethod
    def from_url(cls, url: str, namespace: str = "dynalign", **options: Any) -> AlignmentClient:
        """``options`` go to ``redis.Redis.from_url`` (timeouts, ``ssl_ca_certs``, ...)."""
        return cls(redis.Redis.from_url(url, decode_responses=True, **options), namespace)

    def pairs(self) -> list[tuple[str, str]]:
        return sorted(tuple(_text(p).split("|", 1)) for p in self.r.smembers(f"{self.ns}:pairs"))

    def current_version(self, net: str, to: str) -> int | None:
        v = self.r.get(f"{self.ns}:{pair_tag(net, to)}:current")
        return None if v is None else int(v)

    def versions(self, net: str, to: str) -> list[int]:
        """The retained versions, oldest first."""
        return [int(v) for v in self.r.zrange(f"{self.ns}:{pair_tag(net, to)}:retained", 0, -1)]

    def meta(self, net: str, to: str, version: int | None = None) -> dict[str, str]:
        version = self.current_version(net, to) if version is None else version
        if version is None:
            return {}
        raw = self.r.hgetall(f"{self.ns}:{pair_tag(net, to)}:v:{version}:meta")
        return {_text(k): _text(v) for k, v in raw.items()}

    def top(self, node: str, net: str, to: str, k: int | None = None, version: int | None = None) -> list[Candidate]:
        """Best candidates in ``to`` for ``node`` of ``net`` (empty if the node is not aligned)."""
        got = self.read([node], net, to, version)
        cands = got.candidates.get(str(node), []) if got else []
        return cands[:k] if k else cands

    def top_many(self, nodes: list[str], net: str, to: str, version: int | None = None) -> dict[str, list[Candidate]]:
        got = self.read(nodes, net, to, version)
        return got.candidates if got else {}

    def read(self, nodes: Sequence[str], net: str, to: str, version: int | None = None) -> VersionRead | None:
        """The candidates of ``nodes`` (of ``net``, in ``to``) in the current version, or in ``version``; None
        when the pair has no current version or ``version`` is not retained (:meth:`versions` says which are)."""
        nodes = [str(n) for n in nodes]
        prefix = f"{self.ns}:{pair_tag(net, to)}"
        for _ in range(3):  # the pointed-to version can be retired between the two reads; then re-read the pointer
            v = self.current_version(net, to) if version is None else version
            if v is None:
                return None
            # One MULTI/EXEC: the meta and the fields come from one version, never from one being retired.
            pipe = self.r.pipeline(transaction=True)
            pipe.hgetall(f"{prefix}:v:{v}:meta")
            for start in range(0, len(nodes), BATCH_FIELDS):
                pipe.hmget(f"{prefix}:v:{v}:top:{net}", nodes[start:start + BATCH_FIELDS])
            meta, *chunks = pipe.execute()
            if meta:
                values = [raw for chunk in chunks for raw in chunk]
                candidates = {node: [Candidate(str(c), float(s)) for c, s in json.loads(raw)]
                              for node, raw in zip(nodes, values) if raw}
                return VersionRead(v, {_text(k): _text(x) for k, x in meta.items()}, candidates)
            if version is not None:
                return None
        return None

    def announcements(self, net: str, to: str, after: str = "0", count: int | None = None) -> list[Announcement]:
        """Versions announced after stream id ``after`` ("0": every entry the stream still holds), oldest first."""
        entries = self.r.xrange(f"{self.ns}:{pair_tag(net, to)}:versions", min=f"({after}" if after != "0" else "-",
                                max="+", count=count)
        return [self._announcement(entry_id, entry) for entry_id, entry in entries]

    def follow(self, net: str, to: str, after: str = "$", block_s: float = 5.0,
               timeout_s: float | None = None) -> Iterator[Announcement]:
        """Announcements of new versions as they come (``after="0"`` replays what the stream holds first, a
        stream id resumes after that entry), for as long as the caller iterates; stop by leaving the loop.

        ``timeout_s``: the iteration ends once no new version came for that long (default: wait for ever).
        A dropped connection (Redis restarted, the connection killed) is reopened with backoff and the stream
        read again after the last entry delivered, so no version is missed or repeated; with ``timeout_s`` the
        last connection error is raised if Redis stays away past it. Redis unreachable when following starts, or
        refusing the credentials, raises at once. Each ``XREAD`` blocks at most ``block_s``, and the socket
        waits a little longer than that, so a connection that stopped answering is noticed within seconds.
        """
        key = f"{self.ns}:{pair_tag(net, to)}:versions"
        reader = self._follow_client(block_s)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay, last = FOLLOW_BACKOFF_S[0], after
        try:
            reader.ping()  # unreachable or refused from the start: a mistake to report, not an outage to wait out
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                try:
                    if last == "$":  # a concrete id, so that a reconnection resumes exactly here
                        newest = reader.xrevrange(key, count=1)
                        last = _text(newest[0][0]) if newest else "0-0"
                    wait_ms = max(1, int(1000 * (block_s if left is None else min(block_s, left))))
                    replies = reader.xread({key: last}, block=wait_ms, count=100) or []
                    entries = [(_text(i), self._announcement(i, e, reader)) for _, batch in replies for i, e in batch]
                except (AuthenticationError, AuthorizationError):  # ConnectionErrors that no retry mends
                    raise
                except (redis.ConnectionError, redis.TimeoutError) as e:
                    if deadline is not None and time.monotonic() + delay >= deadline:
                        raise
                    log.log(logging.WARNING if delay == FOLLOW_BACKOFF_S[0] else logging.DEBUG,
                            "lost the connection following %s: %s; reconnecting in %.1f s", key, e, delay)
                    time.sleep(delay)
                    delay = min(2 * delay, FOLLOW_BACKOFF_S[1])
                    continue
                if delay != FOLLOW_BACKOFF_S[0]:
                    log.info("following %s again after %s", key, last)
                delay = FOLLOW_BACKOFF_S[0]
                for entry_id, announcement in entries:
                    last = entry_id
                    yield announcement
                if entries and timeout_s is not None:
                    deadline = time.monotonic() + timeout_s
        finally:
            reader.connection_pool.disconnect()

    def _follow_client(self, block_s: float) -> redis.Redis:
        """A connection of its own for :meth:`follow`, with every option of this client's (address, credentials,
        TLS, the URL's options), except a read timeout too short for its blocking reads."""
        pool = self.r.connection_pool
        options = dict(pool.connection_kwargs)
        # redis-py 8 keeps the read timeout the client was made with under "orig_socket_timeout" and applies its
        # 5 s default when "socket_timeout" is absent, so absent does not mean "none": every quiet XREAD then
        # timed out and reconnected. Always set it, longer than a blocking read lasts (a read timeout that never
        # fires would hide a connection that stopped answering).
        given = [float(options[k]) for k in ("socket_timeout", "orig_socket_timeout") if options.get(k) is not None]
        timeout = max([*given, block_s + FOLLOW_READ_GRACE_S])
        options["socket_timeout"] = timeout
        if "orig_socket_timeout" in options:
            options["orig_socket_timeout"] = timeout
        return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **options))

    def _announcement(self, entry_id: Any, entry: dict, r: redis.Redis | None = None) -> Announcement:
        entry = {_text(k): _text(v) for k, v in entry.items()}
        changed: dict[str, list[str] | None] = {}
        for name, value in entry.items():
            kind, _, src = name.partition(":")
            if kind == "changed_nodes":
                changed[src] = json.loads(value)
            elif kind == "changed_key":
                members = [_text(m) for m in (r or self.r).smembers(value)]
                changed[src] = sorted(members) if members or entry.get(f"changed:{src}") == "0" else None
        return Announcement(_text(entry_id), int(entry["version"]), int(entry["snapshot"]), float(entry["end_time"]),
                            float(entry.get("published_at", 0.0)), changed)


def _text(value: Any) -> Any:
    """Redis replies as str whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value
