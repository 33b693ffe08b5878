"""Publishing and reading alignments against a real redis-server: atomic versions, retention, the versions stream
with the changed nodes, replays, racing publishers, AUTH and TLS, and followers that outlive idle minutes, killed
connections and server restarts."""

import itertools
import json
import logging
import queue
import shutil
import ssl
import subprocess
import threading
import time

import numpy as np
import pytest
import redis

from aligner import AlignmentClient
from aligner.publish.embedded_redis import EmbeddedRedis, free_port, redis_server_binary
from aligner.publish.redis_alignments import CHANGED_INLINE, PENDING_TTL_S, RedisPublisher
from aligner.update import AlignmentUpdate, PairTopK
from tests.brokers import TcpProxy
from tests.logs import our_messages


def make_update(snapshot: int, shift: int = 0) -> AlignmentUpdate:
    ids_a = ("a0", "a1", "a2")
    ids_b = ("b0", "b1", "b2", "b3")
    ab = PairTopK("netA", "netB", np.array([0, 1, 2]), np.array([[(i + shift) % 4, (i + 1) % 4] for i in range(3)]),
                  np.array([[0.9, 0.5]] * 3, dtype=np.float32))
    ba = PairTopK("netB", "netA", np.array([0, 1, 3]), np.array([[0, 1], [1, 2], [2, 0]]),
                  np.array([[0.8, 0.1]] * 3, dtype=np.float32))
    return AlignmentUpdate(snapshot, 1000.0 * snapshot, {"netA": ids_a, "netB": ids_b}, [ab, ba])


def big_update(snapshot: int, n: int, rng: np.random.Generator) -> AlignmentUpdate:
    ids = tuple(f"n{i}" for i in range(n))
    cands = np.stack([rng.permutation(n)[:3] for _ in range(n)])
    scores = np.sort(rng.random((n, 3)).astype(np.float32), axis=1)[:, ::-1]
    pairs = [PairTopK(src, dst, np.arange(n), cands, scores) for src, dst in (("x", "y"), ("y", "x"))]
    return AlignmentUpdate(snapshot, float(snapshot), {"x": ids, "y": ids}, pairs)


def test_publish_then_query_both_directions(redis_url):
    r = redis.Redis.from_url(redis_url)
    assert RedisPublisher(r, worker="w1").publish(make_update(7)) == {"netA|netB": 1}
    client = AlignmentClient.from_url(redis_url)
    assert client.pairs() == [("netA", "netB")]
    assert client.current_version("netB", "netA") == 1
    top = client.top("a1", "netA", "netB")
    assert [c.node for c in top] == ["b1", "b2"] and top[0].score == 0.9
    assert [c.node for c in client.top("b3", "netB", "netA", k=1)] == ["a2"]
    assert client.top("b2", "netB", "netA") == []  # not alive in that version: no candidates
    meta = client.meta("netA", "netB")
    assert (meta["snapshot"], meta["end_time"], meta["worker"], meta["nodes:netA"]) == ("7", "7000.0", "w1", "3")
    assert meta["end_time_iso"] == "1970-01-01T01:56:40Z"  # what a person reading HGETALL sees beside the seconds
    assert meta["published_at_iso"].startswith(time.strftime("%Y-%m-%dT", time.gmtime()))
    (_, entry), = r.xrange("dynalign:{netA|netB}:versions")
    assert entry[b"end_time_iso"] == b"1970-01-01T01:56:40Z"
    # The layout is readable with plain commands (what the README promises redis-cli users).
    assert r.get("dynalign:{netA|netB}:current") == b"1"
    assert json.loads(r.hget("dynalign:{netA|netB}:v:1:top:netA", "a0"))[0] == ["b0", 0.9]
    assert all(r.ttl(key) == -1 for key in r.keys("dynalign:{netA|netB}:v:1:*"))  # made permanent by the flip


def test_versions_are_retained_then_dropped(redis_url):
    r = redis.Redis.from_url(redis_url)
    pub = RedisPublisher(r, retain=2)
    for snapshot in (1, 2, 3, 4):
        pub.publish(make_update(snapshot, shift=snapshot))
    client = AlignmentClient.from_url(redis_url)
    assert client.current_version("netA", "netB") == 4
    assert client.versions("netA", "netB") == [3, 4]
    assert client.top("a0", "netA", "netB", version=3)[0].node == "b3"
    assert r.keys("dynalign:{netA|netB}:v:1:*") == [] and r.keys("dynalign:{netA|netB}:v:2:*") == []
    assert [(a.version, a.snapshot, a.end_time) for a in client.announcements("netA", "netB")] == [
        (1, 1, 1000.0), (2, 2, 2000.0), (3, 3, 3000.0), (4, 4, 4000.0)]


def test_the_stream_announces_exactly_the_nodes_whose_ranking_changed(redis_url):
    r = redis.Redis.from_url(redis_url)
    pub = RedisPublisher(r)
    client = AlignmentClient.from_url(redis_url)
    pub.publish(make_update(1))
    changed = make_update(2)
    changed.pairs[0].candidates[1] = [3, 0]  # a1's ranking moves
    changed.pairs[0].scores[2] = [0.7, 0.6]  # a2's scores drift, its ranking does not: not a change
    changed.pairs[1].src_index[2] = 2  # b3 leaves the alignment, b2 joins it
    pub.publish(changed)
    first, second = client.announcements("netA", "netB")
    assert first.changed == {"netA": ["a0", "a1", "a2"], "netB": ["b0", "b1", "b3"]}  # a first version: everything
    assert second.changed == {"netA": ["a1"], "netB": ["b2", "b3"]}
    assert client.meta("netA", "netB")["changed:netB"] == "2"
    # Late readers replay from any point; followers get new versions as they come, without polling.
    assert [a.version for a in client.announcements("netA", "netB", after=first.stream_id)] == [2]
    follower = client.follow("netA", "netB", after="0", block_s=1)
    assert [a.version for a in itertools.islice(follower, 2)] == [1, 2]
    pub.publish(make_update(3))
    assert next(follower).version == 3


def test_many_changed_nodes_go_to_a_set_retired_with_their_version(redis_url):
    r = redis.Redis.from_url(redis_url)
    pub = RedisPublisher(r, retain=1)
    client = AlignmentClient.from_url(redis_url)
    n = CHANGED_INLINE + 200
    pub.publish(big_update(1, n, np.random.default_rng(0)))
    (announcement,) = client.announcements("x", "y")
    assert len(announcement.changed["x"]) == n and set(announcement.changed["x"]) == {f"n{i}" for i in range(n)}
    assert r.scard("dynalign:{x|y}:v:1:changed:x") == n
    pub.publish(big_update(2, n, np.random.default_rng(1)))
    first, _ = client.announcements("x", "y")
    assert first.changed["x"] is None  # retired with version 1: a late reader learns it must re-read everything
    assert not r.exists("dynalign:{x|y}:v:1:changed:x")


def test_replaying_a_publication_is_a_no_op(redis_url):
    r = redis.Redis.from_url(redis_url)
    RedisPublisher(r).publish(make_update(5))
    before = r.hgetall("dynalign:{netA|netB}:v:1:top:netA")
    # A restarted service (a new publisher) publishing the same snapshot with the same content: nothing new.
    assert RedisPublisher(r).publish(make_update(5)) == {"netA|netB": 1}
    assert r.hgetall("dynalign:{netA|netB}:v:1:top:netA") == before
    assert len(r.xrange("dynalign:{netA|netB}:versions")) == 1
    # The same snapshot with other content (a non-deterministic replay) is a new version.
    assert RedisPublisher(r).publish(make_update(5, shift=1)) == {"netA|netB": 2}
    assert AlignmentClient.from_url(redis_url).versions("netA", "netB") == [1, 2]


def test_a_version_never_replaces_a_newer_one(redis_url):
    """Two workers handing a pair over: the one that allocated its version first but flips last loses."""
    r = redis.Redis.from_url(redis_url)
    newer = RedisPublisher(r, worker="new owner")

    class OvertakenPublisher(RedisPublisher):
        def _flip(self, base, version, keys, entry):
            newer.publish(make_update(9, shift=2))  # overtakes between this one's writes and its flip
            return super()._flip(base, version, keys, entry)

    assert OvertakenPublisher(r, worker="old owner").publish(make_update(8)) == {"netA|netB": 1}
    client = AlignmentClient.from_url(redis_url)
    assert client.current_version("netA", "netB") == 2 and client.meta("netA", "netB")["worker"] == "new owner"
    assert r.keys("dynalign:{netA|netB}:v:1:*") == []  # the losing version's keys are gone
    assert [a.version for a in client.announcements("netA", "netB")] == [2]


def test_a_publisher_dying_before_its_flip_leaves_only_expiring_keys(redis_url):
    r = redis.Redis.from_url(redis_url)

    class DiesBeforeFlip(RedisPublisher):
        def _flip(self, base, version, keys, entry):
            raise redis.ConnectionError("connection lost")

    with pytest.raises(redis.ConnectionError):
        DiesBeforeFlip(r).publish(make_update(1))
    assert r.get("dynalign:{netA|netB}:current") is None
    ttls = [r.ttl(key) for key in r.keys("dynalign:{netA|netB}:v:1:*")]
    assert ttls and all(0 < ttl <= PENDING_TTL_S for ttl in ttls)
    # Retrying the same update publishes it whole.
    assert RedisPublisher(r).publish(make_update(1)) == {"netA|netB": 2}
    assert AlignmentClient.from_url(redis_url).top("a0", "netA", "netB")


def test_all_keys_of_a_pair_share_one_cluster_slot(redis_url):
    r = redis.Redis.from_url(redis_url)
    RedisPublisher(r).publish(make_update(1))
    keys = [k.decode() for k in r.keys("dynalign:{*")]
    assert len(keys) >= 5 and all("{netA|netB}" in k for k in keys)


@pytest.fixture
def password_server(tmp_path):
    """A redis-server that requires a password, on a free loopback port."""
    port = free_port()
    process = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--requirepass", "s3cret", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, password="s3cret")
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and process.poll() is None, "redis-server did not start"
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait()


def test_auth_and_tls_urls(password_server, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    port = password_server
    with pytest.raises(redis.AuthenticationError):
        AlignmentClient.from_url(f"redis://:wrong@127.0.0.1:{port}/0").pairs()
    RedisPublisher(redis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{port}/0")).publish(make_update(1))
    assert AlignmentClient.from_url(f"redis://default:s3cret@127.0.0.1:{port}/0").top("a0", "netA", "netB")

    # TLS: this redis-server is built without it, so a TLS-terminating relay stands in front of it.
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    relay = TcpProxy(("127.0.0.1", port), ssl_context=context)
    try:
        url = f"rediss://:s3cret@127.0.0.1:{relay.port}/0?ssl_ca_certs={cert}"
        assert AlignmentClient.from_url(url).top("a0", "netA", "netB")[0].node == "b0"
        # A follower's own connection keeps the URL's TLS and credentials.
        follower = AlignmentClient.from_url(url).follow("netA", "netB", after="0", timeout_s=2)
        assert [a.version for a in follower] == [1]
        with pytest.raises(redis.ConnectionError):  # an unverifiable certificate is refused
            AlignmentClient.from_url(f"rediss://:s3cret@127.0.0.1:{relay.port}/0").pairs()
    finally:
        relay.close()


class Follower:
    """``client.follow(...)`` in a thread, as an application runs it: announcements into a queue until version
    ``until``, and whatever it raised kept for the test to see."""

    def __init__(self, client: AlignmentClient, until: int, **options):
        self.got: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(client, until, options), daemon=True)
        self.thread.start()

    def _run(self, client: AlignmentClient, until: int, options: dict) -> None:
        try:
            for announcement in client.follow("netA", "netB", **options):
                self.got.put(announcement)
                if announcement.version >= until:
                    return
        except BaseException as e:  # noqa: BLE001 - the test asserts there was none
            self.error = e

    def versions(self, n: int, timeout_s: float = 10.0) -> list[int]:
        out = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n:
            assert self.error is None, f"the follower died: {self.error!r}"
            try:
                out.append(self.got.get(timeout=max(0.01, min(0.2, deadline - time.monotonic()))).version)
            except queue.Empty:
                assert time.monotonic() < deadline, f"only {out} within {timeout_s} s"
        return out


def test_follow_waits_longer_than_a_read_timeout_for_the_next_version(redis_url, caplog):
    """As the README shows it: no new version for 8 s (past redis-py's 5 s default read timeout, which equals
    the 5 s XREAD BLOCK), then one: the follower is still there and gets it, and it never lost its connection
    meanwhile (a read timeout as short as the block made every quiet read reconnect)."""
    pub = RedisPublisher(redis.Redis.from_url(redis_url))
    pub.publish(make_update(1))
    with caplog.at_level(logging.WARNING, logger="aligner.publish.redis_alignments"):
        follower = Follower(AlignmentClient.from_url(redis_url), until=2)
        time.sleep(8)
    assert not [m for m in our_messages(caplog.records) if "lost the connection" in m]
    assert follower.error is None and follower.thread.is_alive()
    pub.publish(make_update(2, shift=1))
    assert follower.versions(1) == [2]
    follower.thread.join(5)
    assert follower.got.empty() and follower.error is None


def test_follow_ends_after_its_timeout_and_keeps_the_urls_options(redis_url):
    RedisPublisher(redis.Redis.from_url(redis_url)).publish(make_update(1))
    client = AlignmentClient.from_url(f"{redis_url}?socket_timeout=0.5&health_check_interval=7")
    options = client.r.connection_pool.connection_kwargs
    assert (options["socket_timeout"], options["health_check_interval"]) == (0.5, 7)  # the URL's own options
    started = time.monotonic()
    # Blocking reads of 1 s on a 0.5 s read timeout: the follower's own connection waits longer than it blocks.
    assert [a.version for a in client.follow("netA", "netB", after="0", block_s=1, timeout_s=2.5)] == [1]
    assert 2.5 <= time.monotonic() - started < 5
    assert client.top("a0", "netA", "netB")  # the client's other reads keep the URL's timeout and work


def test_follow_reconnects_after_its_connection_is_killed_and_misses_nothing(redis_url, caplog):
    pub = RedisPublisher(redis.Redis.from_url(redis_url))
    pub.publish(make_update(1))
    follower = Follower(AlignmentClient.from_url(redis_url), until=3, after="0", block_s=2)
    assert follower.versions(1) == [1]
    time.sleep(0.3)  # blocked in XREAD again
    killed = redis.Redis.from_url(redis_url).client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    pub.publish(make_update(2, shift=1))  # while the follower is reconnecting
    pub.publish(make_update(3, shift=2))
    assert follower.versions(2) == [2, 3]  # nothing missed, version 1 not repeated
    follower.thread.join(5)
    assert follower.got.empty() and follower.error is None
    assert "lost the connection" in caplog.text


def test_follow_resumes_after_a_redis_restart_on_the_same_port(tmp_path, caplog):
    port = free_port()
    server = EmbeddedRedis(tmp_path, port=port).start()
    try:
        pub = RedisPublisher(redis.Redis.from_url(server.url))
        pub.publish(make_update(1))
        follower = Follower(AlignmentClient.from_url(server.url), until=2)  # from now on: version 1 is not new
        time.sleep(0.5)
        server.stop()  # SIGTERM: the server saves its data and exits
        time.sleep(1.5)  # the follower keeps trying a closed port meanwhile
        server = EmbeddedRedis(tmp_path, port=port).start()
        pub.publish(make_update(2, shift=1))  # most likely before the follower's next attempt
        assert follower.versions(1, timeout_s=15) == [2]
        follower.thread.join(5)
        assert follower.got.empty() and follower.error is None
        assert "lost the connection" in caplog.text
    finally:
        server.stop()


def test_follow_raises_at_once_when_redis_is_not_there_or_refuses_it(password_server):
    with pytest.raises(redis.ConnectionError):
        next(AlignmentClient.from_url(f"redis://127.0.0.1:{free_port()}/0").follow("netA", "netB"))
    started = time.monotonic()
    with pytest.raises(redis.AuthenticationError):
        next(AlignmentClient.from_url(f"redis://:wrong@127.0.0.1:{password_server}/0").follow("netA", "netB"))
    assert time.monotonic() - started < 2  # not retried as if the connection had dropped
