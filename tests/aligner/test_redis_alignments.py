"""Publishing and reading alignments against a real redis-server."""

import json

import numpy as np
import redis

from aligner.update import AlignmentUpdate, PairTopK
from aligner.redis_alignments import AlignmentClient, RedisPublisher


def make_update(version: int, shift: int = 0) -> AlignmentUpdate:
    ids_a = ("a0", "a1", "a2")
    ids_b = ("b0", "b1", "b2", "b3")
    ab = PairTopK("netA", "netB", np.array([0, 1, 2]), np.array([[(i + shift) % 4, (i + 1) % 4] for i in range(3)]),
                  np.array([[0.9, 0.5]] * 3, dtype=np.float32))
    ba = PairTopK("netB", "netA", np.array([0, 1, 3]), np.array([[0, 1], [1, 2], [2, 0]]),
                  np.array([[0.8, 0.1]] * 3, dtype=np.float32))
    return AlignmentUpdate(version, 1000.0 * version, {"netA": ids_a, "netB": ids_b}, [ab, ba])


def test_publish_then_query_both_directions(redis_url):
    r = redis.Redis.from_url(redis_url)
    RedisPublisher(r).publish(make_update(1))
    client = AlignmentClient.from_url(redis_url)
    assert client.pairs() == [("netA", "netB")]
    assert client.current_version("netB", "netA") == 1
    top = client.top("a1", "netA", "netB")
    assert [c.node for c in top] == ["b1", "b2"] and top[0].score == 0.9
    assert [c.node for c in client.top("b3", "netB", "netA", k=1)] == ["a2"]
    assert client.top("b2", "netB", "netA") == []  # not alive in that version: no candidates
    assert client.meta("netA", "netB")["snapshot"] == "1"
    # The layout is readable with plain commands (what the README promises redis-cli users).
    assert r.get("dynalign:{netA|netB}:current") == b"1"
    assert json.loads(r.hget("dynalign:{netA|netB}:v:1:top:netA", "a0"))[0] == ["b0", 0.9]


def test_versions_are_retained_then_dropped(redis_url):
    r = redis.Redis.from_url(redis_url)
    pub = RedisPublisher(r, retain=2)
    for v in (1, 2, 3, 4):
        pub.publish(make_update(v, shift=v))
    client = AlignmentClient.from_url(redis_url)
    assert client.current_version("netA", "netB") == 4
    assert client.versions("netA", "netB") == [3, 4]
    assert client.top("a0", "netA", "netB", version=3)[0].node == "b3"
    assert r.keys("dynalign:{netA|netB}:v:1:*") == [] and r.keys("dynalign:{netA|netB}:v:2:*") == []
    entries = r.xrange("dynalign:{netA|netB}:versions")
    assert [int(e[1][b"version"]) for e in entries] == [1, 2, 3, 4]


def test_republishing_a_version_is_idempotent(redis_url):
    r = redis.Redis.from_url(redis_url)
    pub = RedisPublisher(r)
    pub.publish(make_update(5))
    before = r.hgetall("dynalign:{netA|netB}:v:5:top:netA")
    pub.publish(make_update(5))
    assert r.hgetall("dynalign:{netA|netB}:v:5:top:netA") == before
    assert AlignmentClient.from_url(redis_url).versions("netA", "netB") == [5]


def test_all_keys_of_a_pair_share_one_cluster_slot(redis_url):
    r = redis.Redis.from_url(redis_url)
    RedisPublisher(r).publish(make_update(1))
    keys = [k.decode() for k in r.keys("dynalign:{*")]
    assert len(keys) >= 5 and all("{netA|netB}" in k for k in keys)
