"""Reading published alignments back from Redis: candidates of a version, the versions stream, and following it.

What users import (``from aligner import AlignmentClient``), with the light client install: nothing of the
``service`` extra. It reads the layout :mod:`aligner.publish.redis_layout` describes; each read comes from one
version, never from one half written or being retired.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import redis
from redis.exceptions import AuthenticationError, AuthorizationError

from aligner.publish.redis_layout import BATCH_FIELDS, PairKeys, as_text, pairs_key

# A follower's socket read outlasts its XREAD BLOCK by this much, so an idle wait ends with Redis's empty reply and
# only a connection that really stopped answering times out (redis-py 8's default read timeout equals the 5 s block).
FOLLOW_READ_GRACE_S = 5.0
FOLLOW_BACKOFF_S = (0.1, 5.0)  # reconnect delays of a follower: first, then doubling up to the last

# The logger's name as before the client had a module of its own: it is in every JSON log line.
log = logging.getLogger("aligner.publish.redis_alignments")


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
        return sorted(tuple(as_text(p).split("|", 1)) for p in self.r.smembers(pairs_key(self.ns)))

    def current_version(self, net: str, to: str) -> int | None:
        v = self.r.get(self._keys(net, to).current)
        return None if v is None else int(v)

    def versions(self, net: str, to: str) -> list[int]:
        """The retained versions, oldest first."""
        # redis-py types zrange's members as maybe (member, score) pairs, withscores or not
        return [int(v) for v in self.r.zrange(self._keys(net, to).retained, 0, -1)]  # type: ignore[arg-type]

    def meta(self, net: str, to: str, version: int | None = None) -> dict[str, str]:
        version = self.current_version(net, to) if version is None else version
        if version is None:
            return {}
        raw = self.r.hgetall(self._keys(net, to).meta(version))
        return {as_text(k): as_text(v) for k, v in raw.items()}

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
        keys = self._keys(net, to)
        for _ in range(3):  # the pointed-to version can be retired between the two reads; then re-read the pointer
            v = self.current_version(net, to) if version is None else version
            if v is None:
                return None
            # One MULTI/EXEC: the meta and the fields come from one version, never from one being retired.
            pipe = self.r.pipeline(transaction=True)
            pipe.hgetall(keys.meta(v))
            for start in range(0, len(nodes), BATCH_FIELDS):
                pipe.hmget(keys.top(v, net), nodes[start:start + BATCH_FIELDS])
            meta, *chunks = pipe.execute()
            if meta:
                values = [raw for chunk in chunks for raw in chunk]
                candidates = {node: [Candidate(str(c), float(s)) for c, s in json.loads(raw)]
                              for node, raw in zip(nodes, values) if raw}
                return VersionRead(v, {as_text(k): as_text(x) for k, x in meta.items()}, candidates)
            if version is not None:
                return None
        return None

    def announcements(self, net: str, to: str, after: str = "0", count: int | None = None) -> list[Announcement]:
        """Versions announced after stream id ``after`` ("0": every entry the stream still holds), oldest first."""
        # redis-py types XRANGE's reply, and each entry's fields, as maybe None; XRANGE always answers a list
        entries: list[tuple[Any, dict]] = self.r.xrange(  # type: ignore[assignment]
            self._keys(net, to).versions, min=f"({after}" if after != "0" else "-", max="+", count=count)
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
        key = self._keys(net, to).versions
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
                        last = as_text(newest[0][0]) if newest else "0-0"
                    wait_ms = max(1, int(1000 * (block_s if left is None else min(block_s, left))))
                    # redis-py's XReadResponse also covers RESP3's map; this connection speaks RESP2: a list of
                    # [stream, entries]
                    replies: list[list[Any]] = reader.xread(  # type: ignore[assignment]
                        {key: last}, block=wait_ms, count=100) or []
                    entries = [(as_text(i), self._announcement(i, e, reader)) for _, batch in replies for i, e in batch]
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

    def _keys(self, net: str, to: str) -> PairKeys:
        return PairKeys.of(self.ns, net, to)

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
        entry = {as_text(k): as_text(v) for k, v in entry.items()}
        changed: dict[str, list[str] | None] = {}
        for name, value in entry.items():
            kind, _, src = name.partition(":")
            if kind == "changed_nodes":
                changed[src] = json.loads(value)
            elif kind == "changed_key":
                members = [as_text(m) for m in (r or self.r).smembers(value)]
                changed[src] = sorted(members) if members or entry.get(f"changed:{src}") == "0" else None
        return Announcement(as_text(entry_id), int(entry["version"]), int(entry["snapshot"]), float(entry["end_time"]),
                            float(entry.get("published_at", 0.0)), changed)
