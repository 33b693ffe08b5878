"""The service's guarantees against real servers: a Kafka-protocol broker (tansu, or ``$DYNALIGN_TEST_KAFKA``) and
redis-server. kill -9 at random points loses and double-applies nothing; thousands of malformed messages all
reach the dead-letter topic while every good event is applied and the consumer never stalls; two workers of
one group split and hand over partitions without losing or duplicating work; a broker outage is waited out;
Redis going away and coming back loses no update that should be seen.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from aligner import AlignmentClient
from aligner.config import load_config
from aligner.publish.embedded_redis import EmbeddedRedis, free_port
from aligner.service.alignment_service import AlignmentService
from aligner.service.run_summary import RunSummary
from snapshots.checkpoint_codec import read_checkpoint_file
from snapshots.cutter import SnapshotCutter, SnapshotPolicy
from snapshots.snapshot import Snapshot
from snapshots.store import SnapshotStore
from stream.datasets import dataset_events, load_dataset, split_anchors
from stream.events import InvalidEvent, parse_event
from stream.kafka_settings import KafkaSettings
from stream.producer import feed
from tests.brokers import TEST_GROUP_SETTINGS, create_topic, kafka_broker, read_topic, start_tansu
from tests.logs import our_messages, record_fields
from tests.synthetic import write_pair_dataset

# Small model, one torch thread (two OpenMP threads on a shared 2-core machine can slow a run a hundredfold),
# short group timeouts.
FAST = {"DYNALIGN_META_WARMUP_ITERATIONS": "10", "DYNALIGN_META_ITERATIONS_PER_SNAPSHOT": "2",
        "DYNALIGN_MODEL_HIDDEN": "16", "DYNALIGN_MODEL_EMBEDDING_DIM": "16", "DYNALIGN_MODEL_POSITION_DIM": "32",
        "DYNALIGN_SERVICE_THREADS": "1", "DYNALIGN_STREAM_KAFKA_CONNECT_TIMEOUT_S": "30",
        "DYNALIGN_STREAM_KAFKA_SESSION_TIMEOUT_MS": "3000", "DYNALIGN_STREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "500"}
WINDOW = 3600.0
SETTINGS = KafkaSettings(**TEST_GROUP_SETTINGS, connect_timeout_s=20)


@pytest.fixture(scope="module")
def broker():
    yield from kafka_broker()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """In-process workers: what DYNALIGN_SERVICE_THREADS=1 does for a `dynalign run` process."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def dataset_lines(root: Path, n: int, windows: int, seed: int, prefix: str = "") -> list[str]:
    """Event lines of a synthetic pair: networks ``<prefix>left`` and ``<prefix>right``, event ids prefixed too."""
    # The library rather than `dynalign events`: the CLI would reset logging and take caplog's handler away.
    ds = load_dataset(write_pair_dataset(root / f"pair-{seed}", n=n, seed=seed))
    train, _ = split_anchors(ds, None, 0)
    lines = []
    for event in dataset_events(ds, protocol="stream", windows=windows, seed=0, train=train, window_seconds=WINDOW):
        e = event.to_dict()
        for name in ("net", "to", "id"):
            if name in e:
                e[name] = prefix + e[name]
        lines.append(json.dumps(e))
    return lines


def config(state: Path, redis_url: str, namespace: str = "dynalign", **env: str):
    return load_config(env={**FAST, "DYNALIGN_SERVICE_STATE_DIR": str(state), "DYNALIGN_PUBLISH_REDIS_URL": redis_url,
                            "DYNALIGN_PUBLISH_NAMESPACE": namespace, "DYNALIGN_SNAPSHOTS_WINDOW_SECONDS": str(WINDOW),
                            **env})


class Worker:
    """A service run in a thread of the test process (stopped with :meth:`stop`, or at the test's teardown)."""

    started: list[Worker] = []

    def __init__(self, cfg, url: str, until_idle_s: float | None = None):
        self.service = AlignmentService(cfg, url, until_idle_s=until_idle_s)
        self.result: RunSummary | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        Worker.started.append(self)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.service.run()
        except BaseException as e:  # reported by the test thread
            self.error = e

    @property
    def summary(self) -> RunSummary:
        return self.service.summary

    def owns(self) -> set[int]:
        source = getattr(self.service, "source", None)
        return source.live_partitions() if source is not None else set()

    def stop(self, timeout_s: float = 60) -> RunSummary:
        self.service.request_stop()
        return self.join(timeout_s)

    def join(self, timeout_s: float = 60) -> RunSummary:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the service did not stop"
        if self.error:
            raise self.error
        return self.result


@pytest.fixture(autouse=True)
def no_worker_outlives_its_test():
    """A failed test's worker would go on polling (its collector pauses and log records reaching later tests)."""
    yield
    while Worker.started:
        worker = Worker.started.pop()
        if worker.thread.is_alive():
            worker.service.request_stop()
            worker.thread.join(60)


def wait_until(condition, timeout_s: float = 60, what: str = "condition", workers=()) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for w in workers:
            if w.error:
                raise w.error
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def final_graph(state: Path) -> Snapshot:
    """The graph a state dir's last checkpoint holds (open window included)."""
    checkpoint = SnapshotStore(state).read_checkpoint()
    return SnapshotCutter.from_state(checkpoint["cutter"]).graph.snapshot(0, 0.0, 0.0, 0)


def reference_graph(lines: list[str]) -> Snapshot:
    """The graph of the valid ``lines`` applied in order, straight through a cutter."""
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=WINDOW))
    for line in lines:
        try:
            cutter.offer(parse_event(line))
        except InvalidEvent:
            pass
    return cutter.graph.snapshot(0, 0.0, 0.0, 0)


def assert_same_networks(a: Snapshot, b: Snapshot, nets: list[str]) -> None:
    for net in nets:
        x, y = a.networks[net], b.networks[net]
        assert x.node_ids == y.node_ids, net
        assert np.array_equal(x.edge_index, y.edge_index) and np.array_equal(x.edge_weight, y.edge_weight), net
        assert np.array_equal(x.alive, y.alive), net
        assert (x.attrs is None) == (y.attrs is None) and (x.attrs is None or np.array_equal(x.attrs, y.attrs)), net
    for key, pairs in b.anchors.items():
        if set(key) <= set(nets):
            assert np.array_equal(a.anchors[key], pairs), key


def group_committed(broker, topic: str, group: str, partitions: int) -> dict[int, int | None]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close()


# --------------------------------------------------------------------------------------------------- crashes


def test_kill_9_at_random_points_loses_and_duplicates_nothing(broker, redis_url, tmp_path):
    rng = random.Random(20261125)
    lines = dataset_lines(tmp_path, n=60, windows=6, seed=3)
    bad = ['{"op": "add_edge", "net": "left"}', "not json", '{"op": "jump", "net": "left", "time": 1}']
    for line in bad * 4:
        lines.insert(rng.randrange(len(lines)), line)
    n_good = len(lines) - 12
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic)
    # One key for every event: one partition, one order, so the two runs cut the very same snapshots.
    assert feed(events, f"kafka://{broker.bootstrap}/{topic}", settings=SETTINGS, key="crash").events == len(lines)

    reference = tmp_path / "reference"
    summary = Worker(config(reference, redis_url, "ref"), f"kafka://{broker.bootstrap}/{topic}?group=ref",
                     until_idle_s=1.0).join(120)
    assert summary.accepted == n_good and summary.dead_letters == 12

    state = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "aligner.cli", "run", "--source", f"kafka://{broker.bootstrap}/{topic}?group=crash",
           "--state", str(state), "--redis", redis_url, "--until-idle", "1", "--json"]
    env = {**os.environ, **FAST, "DYNALIGN_STREAM_BATCH_SIZE": "40", "DYNALIGN_PUBLISH_NAMESPACE": "crash",
           "DYNALIGN_SNAPSHOTS_WINDOW_SECONDS": str(WINDOW)}
    log = state.parent / "crash-runs.log"

    def checkpoint_version() -> tuple[int, int] | None:
        try:
            stat = (state / "checkpoint").stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    kills = 0
    for _ in range(3):
        with open(log, "ab") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        # Let it write one or two checkpoints (a cut, an alignment), then strike a little later: mid-batch,
        # mid-alignment, mid-checkpoint, wherever it falls.
        seen, writes, needed = checkpoint_version(), 0, rng.randint(1, 2)
        deadline = time.monotonic() + 120
        while proc.poll() is None and writes < needed:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            if checkpoint_version() != seen:
                seen, writes = checkpoint_version(), writes + 1
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, log.read_text()[-3000:]
    with open(log, "ab") as err:
        finished = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert finished.wait(timeout=180) == 0, log.read_text()[-3000:]
    except subprocess.TimeoutExpired:
        finished.kill()
        pytest.fail("the last run never went idle:\n" + log.read_text()[-6000:])

    # Every good event applied exactly once, the same ones as in the uninterrupted run; every bad one
    # dead-lettered exactly once in the file (the topic may repeat one after a crash: at least once there).
    store, ref_store = SnapshotStore(state), SnapshotStore(reference)
    assert sorted(store.read_events()) == sorted(ref_store.read_events()) and len(list(store.read_events())) == n_good
    dead = [json.loads(line)["payload"] for line in (state / "deadletter.jsonl").read_text().splitlines()]
    assert sorted(dead) == sorted(bad * 4)
    # The same graph, and the same snapshots cut from it.
    assert_same_networks(final_graph(state), final_graph(reference), ["left", "right"])
    keep = ("id", "start_time", "end_time", "events", "networks", "anchors")
    assert [{k: e[k] for k in keep} for e in store.list_snapshots()] == [
        {k: e[k] for k in keep} for e in ref_store.list_snapshots()]
    # The group's offset covers everything; the published alignments reflect the same last snapshot.
    assert group_committed(broker, topic, "crash", 1) == {0: len(lines)}
    crashed, clean = AlignmentClient.from_url(redis_url, "crash"), AlignmentClient.from_url(redis_url, "ref")
    meta, ref_meta = crashed.meta("left", "right"), clean.meta("left", "right")
    assert (meta["snapshot"], meta["end_time"], meta["nodes:left"]) == (
        ref_meta["snapshot"], ref_meta["end_time"], ref_meta["nodes:left"])
    node = store.load_snapshot(store.latest_id()).networks["left"].node_ids[0]
    assert len(crashed.top(node, "left", "right")) == len(clean.top(node, "left", "right")) > 0


# --------------------------------------------------------------------------------------------------- bad input


def malformed_messages(rng: random.Random, count: int) -> list[bytes | None]:
    kinds = [
        lambda i: b"{not json %d" % i,
        lambda i: bytes([0xFF, 0xFE, 0x80 + i % 100]) + b" binary",
        lambda i: b"",
        lambda i: None,  # a tombstone
        lambda i: b'{"op": "teleport", "net": "left", "time": %d}' % i,
        lambda i: b'{"op": "add_edge", "net": "left", "u": "%d", "time": 5}' % i,
        lambda i: b'{"op": "add_edge", "net": "left", "u": "%d", "v": "%d", "time": 5}' % (i, i),
        lambda i: b'{"op": "add_edge", "net": "left", "u": true, "v": "x", "time": 5}',
        lambda i: b'{"op": "add_edge", "net": "left", "u": "1", "v": "2", "time": NaN}',
        lambda i: b'{"op": "add_edge", "net": "left", "u": "1", "v": "2", "time": 1700000000000}',
        lambda i: b'[%d]' % i,
        lambda i: b'{"op": "add_anchor", "net": "left", "node": "1", "to": "left", "to_node": "2", "time": 3}',
    ]
    return [rng.choice(kinds)(i) for i in range(count)]


def test_thousands_of_malformed_messages_are_dead_lettered_and_the_consumer_never_stalls(broker, redis_url,
                                                                                         tmp_path, caplog):
    rng = random.Random(7)
    good = dataset_lines(tmp_path, n=40, windows=2, seed=11)
    bad = malformed_messages(rng, 3000)
    # The good events in one partition, in order, so that the snapshot (and the alignment's length) is the same
    # whatever the fetch interleaving; the bad ones spread over both.
    messages: list[tuple[bytes | None, bytes | None]] = [(b"problem", line.encode()) for line in good]
    for value in bad:
        messages.insert(rng.randrange(len(messages) + 1), (b"tombstone" if value is None else None, value))
    # A batched message with a bad line among good ones: only that line is rejected.
    messages.append((b"problem", b'{"op": "add_edge", "net": "left", "u": "x1", "v": "x2", "time": 1}\nnot json\n'
                              b'{"op": "add_edge", "net": "left", "u": "x2", "v": "x3", "time": 1}'))
    topic = f"bad-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, partitions=2)
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    # The first alignment takes several times max_poll_interval_ms (a meta-iteration here is ~30 ms on 2 cores,
    # so 150 of them ~4 s against 1 s): only polling while it runs keeps the group.
    cfg = config(tmp_path / "state", redis_url, DYNALIGN_META_WARMUP_ITERATIONS="150",
                 DYNALIGN_STREAM_KAFKA_MAX_POLL_INTERVAL_MS="1000")
    with caplog.at_level(logging.INFO):
        summary = Worker(cfg, f"kafka://{broker.bootstrap}/{topic}?group=bad", until_idle_s=1.0).join(180)
    assert summary.accepted == len(good) + 2 and summary.dead_letters == len(bad) + 1
    assert summary.published >= 1
    align_s = [r for r in caplog.records if r.name == "dynalign.service" and r.getMessage() == "snapshot aligned"]
    slowest = max(record_fields(r).get("meta_s", 0.0) for r in align_s)  # incremental steps have none
    assert slowest > 1.0, f"the warm-up ({slowest:.2f} s) must outlast max_poll_interval_ms for this test to mean anything"
    ours = [r.getMessage() for r in caplog.records if r.name == "stream.kafka_source"]
    assert sum(": assigned partitions" in m for m in ours) == 1  # never left the group
    assert not [m for m in our_messages(caplog.records) if "lost partitions" in m]

    entries = [json.loads(m.value) for m in read_topic(broker, f"{topic}.deadletter", len(bad) + 1)]
    assert len(entries) == len(bad) + 1
    assert all(e["reason"] and e["origin"].startswith(f"kafka:{topic}[") for e in entries)
    assert len({e["origin"] for e in entries}) == len(entries)  # one entry per bad message (or line)
    sent = sorted((v or b"") for v in bad) + [b"not json"]
    got = sorted(e["payload"].encode() if "payload" in e else base64.b64decode(e["payload_b64"]) for e in entries)
    assert got == sorted(sent)
    assert len((tmp_path / "state" / "deadletter.jsonl").read_text().splitlines()) == len(entries)
    assert len(list(SnapshotStore(tmp_path / "state").read_events())) == len(good) + 2
    assert group_committed(broker, topic, "bad", 2) == {
        p: sum(1 for m in read_topic(broker, topic, len(messages)) if m.partition == p) for p in (0, 1)}


def test_a_lost_newest_checkpoint_loses_no_dead_letter(broker, redis_url, tmp_path):
    """The newest checkpoint damaged: the worker falls back to the one before, and the records between the two,
    which the group had committed, are re-read as restored. Their dead letters were cut from the file with the
    fallback, so they are written again: none lost (14 of 60 were, measured by benchmarks/chaos.py), none twice."""
    from kafka import KafkaProducer

    good = dataset_lines(tmp_path, n=40, windows=2, seed=5)
    bad = [b"{not json %d" % i for i in range(20)]
    topic = f"lost-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, partitions=2)
    url = f"kafka://{broker.bootstrap}/{topic}?group=lost"
    cfg = config(tmp_path / "state", redis_url)
    state = tmp_path / "state"

    def produce(values: list[bytes]) -> None:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for value in values:
            producer.send(topic, key=b"lost", value=value)
        producer.flush()
        producer.close()

    half = len(good) // 2
    produce([line.encode() for line in good[:half]] + bad[:10])
    Worker(cfg, url, until_idle_s=1.0).join(120)
    produce([line.encode() for line in good[half:]] + bad[10:])
    Worker(cfg, url, until_idle_s=1.0).join(120)
    newest, previous = (read_checkpoint_file(state / name) for name in ("checkpoint", "checkpoint.prev"))
    assert previous["deadletter_size"] < newest["deadletter_size"]  # the fallback cuts dead letters back
    data = bytearray((state / "checkpoint").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (state / "checkpoint").write_bytes(bytes(data))

    summary = Worker(cfg, url, until_idle_s=1.0).join(120)
    assert summary.restored > 0  # the records after the older checkpoint came back as restored
    dead = [json.loads(line)["payload"].encode() for line in (state / "deadletter.jsonl").read_text().splitlines()]
    assert sorted(dead) == sorted(bad)
    assert sorted(SnapshotStore(state).read_events()) == sorted(
        parse_event(line).to_json() for line in good)


def test_until_idle_waits_for_partitions_another_member_holds_without_consuming(broker, redis_url, tmp_path):
    """--until-idle once stopped a worker that owned one of two partitions, caught up, while the other sat with a
    member that consumed nothing (measured: a worker restarted beside members killed by SIGKILL, which keep
    their partitions until their session times out, ended with 0 of 3,750 events). It waits for the group's
    whole backlog now, and takes the partition over when the other member goes."""
    from kafka import KafkaConsumer, KafkaProducer

    lines = dataset_lines(tmp_path, n=40, windows=2, seed=9)
    topic = f"held-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, partitions=2)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for line in lines:  # one network per partition, each in order
        producer.send(topic, value=line.encode(), partition=0 if json.loads(line)["net"] == "left" else 1)
    producer.flush()
    producer.close()

    idle_member = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id="held", enable_auto_commit=False,
                                max_poll_records=1, **TEST_GROUP_SETTINGS)
    stop_polling = threading.Event()

    def keep_membership() -> None:  # polls (so it stays in the group) but never commits: holds its partition
        while not stop_polling.is_set():
            idle_member.poll(timeout_ms=100)

    poller = threading.Thread(target=keep_membership, daemon=True)
    poller.start()
    wait_until(lambda: bool(idle_member.assignment()), 30, "the idle member's assignment")
    worker = Worker(config(tmp_path / "state", redis_url), f"kafka://{broker.bootstrap}/{topic}?group=held",
                    until_idle_s=1.0)
    try:
        wait_until(lambda: len(worker.owns()) == 1, 60, "the group to split the two partitions", [worker])
        time.sleep(4.0)  # well past --until-idle with its own partition done
        assert worker.thread.is_alive(), "stopped with the other partition's records never read"
    finally:
        stop_polling.set()
        poller.join(10)
        idle_member.close()  # leaves the group: its partition goes to the worker
    summary = worker.join(120)
    assert summary.accepted == len(lines)


# --------------------------------------------------------------------------------------------------- rebalance


def test_two_workers_split_and_hand_over_partitions_without_losing_or_duplicating_work(broker, redis_url, tmp_path):
    from kafka.partitioner.default import murmur2

    p_lines = dataset_lines(tmp_path, n=40, windows=4, seed=21, prefix="p_")
    q_lines = dataset_lines(tmp_path, n=40, windows=4, seed=22, prefix="q_")
    # One key per alignment problem, chosen so that the two problems land in different partitions.
    keys = [f"problem-{i}" for i in range(20)]
    def partition_of(key: str) -> int:  # kafka-python's default partitioner, as Java's
        return (murmur2(key.encode()) & 0x7FFFFFFF) % 2

    key_p = keys[0]
    key_q = next(k for k in keys if partition_of(k) != partition_of(key_p))
    topic = f"split-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, partitions=2)
    url = f"kafka://{broker.bootstrap}/{topic}"

    def produce(part: slice) -> None:
        for key, lines in ((key_p, p_lines), (key_q, q_lines)):
            path = tmp_path / f"{key}.jsonl"
            path.write_text("\n".join(lines[part]) + "\n")
            feed(path, url, settings=SETTINGS, key=key)

    cut1, cut2 = len(p_lines) // 4, 3 * len(p_lines) // 4
    assert len(q_lines) >= cut2
    produce(slice(0, cut1))
    w1 = Worker(config(tmp_path / "w1", redis_url), f"{url}?group=split")
    wait_until(lambda: w1.summary.accepted == 2 * cut1, what="worker 1 to take the first part", workers=[w1])

    w2 = Worker(config(tmp_path / "w2", redis_url), f"{url}?group=split")
    wait_until(lambda: len(w1.owns()) == 1 and len(w2.owns()) == 1, what="the split", workers=[w1, w2])
    moved = next(iter(w2.owns()))
    moved_lines = p_lines if partition_of(key_p) == moved else q_lines
    stayed_lines = q_lines if moved_lines is p_lines else p_lines
    nets = {id(p_lines): ["p_left", "p_right"], id(q_lines): ["q_left", "q_right"]}
    client = AlignmentClient.from_url(redis_url)
    moved_pair = nets[id(moved_lines)]

    def last_publisher() -> str | None:
        entries = client.r.xrevrange(f"dynalign:{{{moved_pair[0]}|{moved_pair[1]}}}:versions", count=1)
        return entries[0][1]["worker"].rsplit("/", 1)[-1] if entries else None

    produce(slice(cut1, cut2))
    # Accepting events is not publishing them: wait for the moved pair's alignment by its new owner.
    wait_until(lambda: w1.summary.accepted + w2.summary.accepted == 2 * cut2 and not w2.service.worker.backlog
               and last_publisher() == "w2", what="both workers to take the second part", workers=[w1, w2])
    first = w2.stop()
    assert first.restored == cut1  # it rebuilt the moved networks' history before taking on new work

    wait_until(lambda: len(w1.owns()) == 2, what="worker 1 to take the partition back", workers=[w1])
    produce(slice(cut2, None))
    total = len(p_lines) + len(q_lines)
    wait_until(lambda: w1.summary.accepted + first.accepted == total and not w1.service.worker.backlog
               and not w1.service.worker.busy and last_publisher() == "w1", what="worker 1 to take the rest", workers=[w1])
    last = w1.stop()

    # Every event is new work for exactly one worker; the one that got a partition back re-read only what the
    # other worker processed meanwhile.
    assert last.accepted + first.accepted == total
    assert last.restored == cut2 - cut1
    assert group_committed(broker, topic, "split", 2) == {moved: len(moved_lines),
                                                          1 - moved: len(stayed_lines)}
    # Both workers' graphs hold each event of their partitions exactly once, in order.
    assert_same_networks(final_graph(tmp_path / "w1"), reference_graph(p_lines), nets[id(p_lines)])
    assert_same_networks(final_graph(tmp_path / "w1"), reference_graph(q_lines), nets[id(q_lines)])
    assert_same_networks(final_graph(tmp_path / "w2"), reference_graph(moved_lines[:cut2]), nets[id(moved_lines)])
    # The moved pair was published by each owner in turn, never by both, with versions only going up.
    entries = [fields for _, fields in client.r.xrange(f"dynalign:{{{moved_pair[0]}|{moved_pair[1]}}}:versions")]
    owners = [e["worker"].rsplit("/", 1)[-1] for e in entries]
    assert [int(e["version"]) for e in entries] == sorted(int(e["version"]) for e in entries)
    w2_at = [i for i, owner in enumerate(owners) if owner == "w2"]
    assert w2_at and w2_at == list(range(w2_at[0], w2_at[-1] + 1)), owners  # one period of ownership, not mixed
    assert owners[-1] == "w1" and client.meta(*moved_pair)["worker"].endswith("/w1")


# --------------------------------------------------------------------------------------------------- outage


def test_a_broker_outage_is_waited_out_without_spinning(redis_url, tmp_path, caplog):
    lines = dataset_lines(tmp_path, n=40, windows=3, seed=31)
    with start_tansu(behind_proxy=True) as own:
        topic = "outage"
        create_topic(own.bootstrap, topic)
        half = len(lines) // 2
        (tmp_path / "a.jsonl").write_text("\n".join(lines[:half]) + "\n")
        (tmp_path / "b.jsonl").write_text("\n".join(lines[half:]) + "\n")
        feed(tmp_path / "a.jsonl", own.url(topic), settings=SETTINGS)
        with caplog.at_level(logging.INFO):
            worker = Worker(config(tmp_path / "state", redis_url), own.url(topic, group="outage"))
            wait_until(lambda: worker.summary.accepted == half and not worker.service.worker.busy, what="the first half",
                       workers=[worker])
            own.proxy.down()
            cpu, wall = time.process_time(), time.monotonic()
            wait_until(lambda: any("Kafka unreachable" in m for m in our_messages(caplog.records)), 30,
                       "the outage to be noticed")
            time.sleep(2.0)
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
            own.proxy.up()
            feed(tmp_path / "b.jsonl", own.url(topic), settings=SETTINGS)
            wait_until(lambda: worker.summary.accepted == len(lines), 60, "the rest after the outage", [worker])
            summary = worker.stop()
    assert cpu < 0.5 * wall, (cpu, wall)  # waiting, not spinning
    assert any("Kafka reachable again" in m for m in our_messages(caplog.records))
    assert summary.accepted == len(lines) and summary.restored == 0
    assert_same_networks(final_graph(tmp_path / "state"), reference_graph(lines), ["left", "right"])


# --------------------------------------------------------------------------------------------------- Redis outage


def test_redis_going_away_loses_no_update_and_ingestion_goes_on(tmp_path):
    lines = dataset_lines(tmp_path, n=60, windows=4, seed=41)
    window_of = [int(parse_event(line).time // WINDOW) for line in lines]
    windows = sorted(set(window_of))
    part = {w: [line for line, k in zip(lines, window_of) if k == w] for w in windows}
    port = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=port).start()
    client = AlignmentClient.from_url(server.url)
    fifo = tmp_path / "events.fifo"  # a live stream that ends only when the writer closes it
    os.mkfifo(fifo)
    cfg = config(tmp_path / "state", server.url)
    worker = Worker(cfg, str(fifo))
    with open(fifo, "w") as stream:
        stream.write("\n".join(part[windows[0]] + part[windows[1]]) + "\n")
        stream.flush()
        wait_until(lambda: client.current_version("left", "right") == 1, what="the first version", workers=[worker])
        server.stop()
        stream.write("\n".join(part[windows[2]] + part[windows[3]]) + "\n")
        stream.flush()
        # Redis away: both snapshots are cut and aligned all the same; the newest update waits.
        wait_until(lambda: worker.summary.snapshots == 3 and worker.service.worker.aligned_through == 3, what="ingestion",
                   workers=[worker])
        assert worker.summary.published == 1 and worker.service.publisher.pending.snapshot_id == 3
        server = EmbeddedRedis(tmp_path / "redis", port=port).start()  # back, same port, its data saved
        wait_until(lambda: client.current_version("left", "right") == 2, 30, "the kept update", [worker])
        assert client.meta("left", "right")["snapshot"] == "3"  # newest wins: snapshot 2 was never shown
        assert client.announcements("left", "right")[-1].changed["left"]  # relative to version 1
        server.stop()  # away again when the stream ends: the last update must survive the exit
    summary = worker.join(60)
    assert summary.snapshots == 4 and summary.published == 2 and summary.accepted == len(lines)

    server = EmbeddedRedis(tmp_path / "redis", port=port).start()
    try:
        empty = tmp_path / "nothing.jsonl"
        empty.write_text("")
        again = Worker(cfg, str(empty)).join(60)  # a restart publishes what the checkpoint kept
        assert again.published == 1 and client.meta("left", "right")["snapshot"] == "4"
        assert client.versions("left", "right") == [1, 2, 3]
    finally:
        server.stop()


def test_heavy_steps_run_beside_the_incremental_ones_and_their_result_reaches_redis(redis_url, tmp_path, caplog):
    """``service.refresh``: a due adaptation does not hold the stream back; the incremental step publishes, a fork
    adapts in the background, and the adapted model's alignments are what Redis serves in the end."""
    from snapshots.history import AlignmentHistory

    lines = dataset_lines(tmp_path, n=60, windows=5, seed=3)
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")
    cfg = config(tmp_path / "state", redis_url, DYNALIGN_SERVICE_REFRESH="always",
                 DYNALIGN_ADAPT_EVERY_SNAPSHOTS="2", DYNALIGN_ADAPT_ANCHOR_GROWTH="0")
    with caplog.at_level(logging.INFO):
        worker = Worker(cfg, str(source))
        summary = worker.join(180)
    ours = [r for r in caplog.records if r.name == "dynalign.service"]
    aligned = [record_fields(r) for r in ours if r.getMessage() == "snapshot aligned"]
    refreshed = [record_fields(r) for r in ours if r.getMessage() == "snapshot refreshed"]
    assert aligned[0]["path"] == "adaptation"  # the first snapshot has nothing to stand in for it
    # Later adaptations were deferred: the incremental step published, and the fork adapted in the background.
    assert all(a["path"] == "incremental" for a in aligned[1:])
    assert any(a.get("deferred", "").startswith("schedule") for a in aligned)
    assert any(r["path"] == "adaptation" for r in refreshed) and summary.refresh_s > 0
    entries = AlignmentHistory(tmp_path / "state" / "history").entries("left", "right")
    assert [e["snapshot"] for e in entries] == sorted(e["snapshot"] for e in entries)
    assert entries[-1]["snapshot"] == aligned[-1]["snapshot"] == summary.snapshots
    # What Redis serves last comes from the refreshed aligner: the adapted weights, not the first snapshot's.
    assert entries[-1]["model_version"] == worker.service.worker.aligner.model_version() != entries[0]["model_version"]
    assert summary.published == len(entries)


def test_a_source_with_nothing_to_give_is_not_polled_in_a_loop_while_the_aligner_works(redis_url, tmp_path,
                                                                                       monkeypatch):
    """While a job runs the loop polls the source briefly, so events are cut as they come; a source that is
    exhausted (or paused) answers at once, and then the loop must wait on the job instead (a spinning loop held
    the GIL and made the aligner several times slower)."""
    import aligner.service.alignment_service as service_module

    lines = dataset_lines(tmp_path, n=40, windows=2, seed=13)
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")
    polls: list[float] = []
    real_open = service_module.open_source

    def counting_open(*args, **kwargs):
        opened = real_open(*args, **kwargs)
        poll = opened.poll

        def counted(max_records: int, timeout_s: float):
            polls.append(time.monotonic())
            return poll(max_records, timeout_s)

        opened.poll = counted
        return opened

    monkeypatch.setattr(service_module, "open_source", counting_open)
    # A long first alignment (warm-up), started once the whole file is read.
    cfg = config(tmp_path / "state", redis_url, DYNALIGN_META_WARMUP_ITERATIONS="150")
    started = time.monotonic()
    summary = Worker(cfg, str(source)).join(120)
    wall = time.monotonic() - started
    assert summary.accepted == len(lines) and summary.published >= 1 and wall > 1.0
    assert len(polls) < 20 + 2 * wall / service_module.ALIGN_POLL_S, (len(polls), wall)
