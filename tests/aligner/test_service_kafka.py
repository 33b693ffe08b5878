"""The service consuming a real Kafka-protocol broker (tansu) and publishing to a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from kafka import KafkaProducer

from aligner.cli import cli
from aligner.publish.redis_alignments import AlignmentClient
from snapshots.store import SnapshotStore
from tests.brokers import create_topic, kafka_broker, read_topic
from tests.synthetic import write_pair_dataset
from tests.terminal import dynalign, in_terminal

FAST = {"DYNALIGN_META_WARMUP_ITERATIONS": "10", "DYNALIGN_META_ITERATIONS_PER_SNAPSHOT": "2",
        "DYNALIGN_MODEL_HIDDEN": "16", "DYNALIGN_MODEL_EMBEDDING_DIM": "16", "DYNALIGN_MODEL_POSITION_DIM": "32",
        "DYNALIGN_STREAM_KAFKA_CONNECT_TIMEOUT_S": "30", "DYNALIGN_SERVICE_THREADS": "1"}


# Short group timeouts, so that joining the group (and --until-idle after it) takes seconds, not tens of them.
QUICK_GROUP = {"DYNALIGN_STREAM_KAFKA_SESSION_TIMEOUT_MS": "3000", "DYNALIGN_STREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "500"}


@pytest.fixture(scope="module")
def broker():
    yield from kafka_broker()


def run_command(*args: str, env: dict[str, str] | None = None, timeout_s: float = 240) -> dict:
    """`dynalign ARGS --json` as a process; its summary."""
    done = subprocess.run(dynalign(*args, "--json"), env={**os.environ, **FAST, **QUICK_GROUP, **(env or {})},
                          capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def hits_at_1(redis_url: str, namespace: str, test: np.ndarray) -> float:
    """Share of test pairs whose partner is the published top-1 (as `dynalign query` would show it)."""
    tops = AlignmentClient.from_url(redis_url, namespace).top_many([str(s) for s in test[:, 0]], "left", "right")
    return float(np.mean([bool(tops.get(str(s))) and tops[str(s)][0].node == str(t) for s, t in test]))


def snapshot_windows(state: Path) -> list[tuple]:
    """Each snapshot's window, event count and per-network node and edge counts."""
    return [(e["id"], e["start_time"], e["end_time"], e["events"],
             {net: (n["alive"], n["edges"]) for net, n in sorted(e["networks"].items())})
            for e in SnapshotStore(state).list_snapshots()]


def test_a_topic_fed_by_network_aligns_like_the_file(broker, redis_url, tmp_path):
    """`dynalign feed` keys by network, so the pair's networks land in different partitions, read at different
    paces: the worker must still cut the same windows (none of the lagging partition's events late), cut the last
    one at --until-idle, and align as well as `dynalign run` on the file."""
    ds = write_pair_dataset(tmp_path / "pair", n=120, seed=5)
    events = tmp_path / "events.jsonl"
    assert CliRunner().invoke(cli, ["events", str(ds), "--windows", "3", "-o", str(events)]).exit_code == 0
    n_events = len(events.read_text().splitlines())
    topic = "social"
    create_topic(broker.bootstrap, topic, partitions=3)
    fed = subprocess.run(dynalign("feed", str(events), "--to", broker.url(topic)), capture_output=True, text=True,
                         timeout=120, env={**os.environ, **FAST})
    assert fed.returncode == 0, fed.stderr[-3000:]
    partitions = {m.key: m.partition for m in read_topic(broker, topic, expect=n_events, partitions=3)}
    assert partitions.keys() == {b"left", b"right"} and partitions[b"left"] != partitions[b"right"]

    from_file = run_command("run", "--source", str(events), "--state", str(tmp_path / "file"), "--redis", redis_url,
                            env={"DYNALIGN_PUBLISH_NAMESPACE": "file"})
    from_kafka = run_command("run", "--source", broker.url(topic, group="social"), "--state", str(tmp_path / "kafka"),
                             "--redis", redis_url, "--until-idle", "1",
                             env={"DYNALIGN_PUBLISH_NAMESPACE": "kafka"})

    assert from_kafka["accepted"] == from_file["accepted"] == n_events
    assert from_kafka["late"] == from_file["late"] == 0 and from_kafka["cutter"]["late"] == 0
    # The same windows with the same events, the last one included (cut at --until-idle, as at end of file).
    assert snapshot_windows(tmp_path / "kafka") == snapshot_windows(tmp_path / "file")
    assert from_kafka["snapshots"] == from_file["snapshots"] == 3
    kafka_meta = AlignmentClient.from_url(redis_url, "kafka").meta("left", "right")
    assert kafka_meta["snapshot"] == "3" and kafka_meta["nodes:left"] == kafka_meta["nodes:right"] == "120"
    test = np.loadtxt(ds / "test.tsv", dtype=np.int64)
    kafka_hits, file_hits = hits_at_1(redis_url, "kafka", test), hits_at_1(redis_url, "file", test)
    # Not bit-identical: a live source aligns queued snapshots as one step and refreshes in the background.
    assert kafka_hits > 0.5 and file_hits > 0.5, (kafka_hits, file_hits)  # chance: 1/120
    assert abs(kafka_hits - file_hits) <= 0.05, (kafka_hits, file_hits)


def test_run_consumes_kafka_publishes_and_stops_cleanly_on_sigterm(broker, redis_url, tmp_path):
    ds = write_pair_dataset(tmp_path / "pair", n=80, seed=7)
    events = tmp_path / "events.jsonl"
    assert CliRunner().invoke(cli, ["events", str(ds), "--windows", "3", "-o", str(events)]).exit_code == 0
    lines = events.read_text().splitlines()
    topic = "events-svc"
    create_topic(broker.bootstrap, topic)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for line in lines:
        producer.send(topic, line.encode())
    producer.send(topic, b'{"op": "add_edge", "net": "left"}')  # malformed: dead-lettered, consumer goes on
    producer.flush()

    state = tmp_path / "state"
    env = {**os.environ, **FAST, "DYNALIGN_STREAM_KAFKA_GROUP": "svc-test"}
    proc = subprocess.Popen([sys.executable, "-m", "aligner.cli", "run", "--source", broker.url(topic),
                             "--state", str(state), "--redis", redis_url, "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = AlignmentClient.from_url(redis_url)
    deadline = time.monotonic() + 180
    # A live stream never ends, so the last window stays open: the second of the three windows is the newest
    # published (the first two may be aligned as one catch-up step when they queue up together).
    try:
        while client.meta("left", "right").get("snapshot") != "2":
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no alignments published from Kafka in time"
            time.sleep(0.2)
    except BaseException:
        proc.kill()  # a failed wait must not leave a consumer running after the test
        raise
    time.sleep(1.0)  # let the consumer reach the end of the topic
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["records"] == len(lines) + 1 and summary["dead_letters"] == 1
    checkpoint = SnapshotStore(state).read_checkpoint()
    assert checkpoint["position"]["offsets"] == {"0": len(lines) + 1}  # everything consumed was checkpointed
    assert client.top("0", "left", "right")  # queryable
    # The malformed message also went to the dead-letter topic, with its reason and where it came from.
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(f"{topic}.deadletter", p) for p in
                     consumer.partitions_for_topic(f"{topic}.deadletter") or {0}])
    dead = []
    deadline = time.monotonic() + 20
    while not dead and time.monotonic() < deadline:
        dead = [json.loads(m.value) for batch in consumer.poll(timeout_ms=200).values() for m in batch]
    consumer.close()
    assert [(d["origin"], d["payload"]) for d in dead] == [(f"kafka:{topic}[0]@{len(lines)}",
                                                            '{"op": "add_edge", "net": "left"}')]
    assert "missing fields" in dead[0]["reason"]


def test_until_idle_cuts_the_last_window_and_late_events_are_counted_and_warned_about(broker, redis_url, tmp_path):
    ds = write_pair_dataset(tmp_path / "pair", n=40, seed=3)
    events = tmp_path / "events.jsonl"
    assert CliRunner().invoke(cli, ["events", str(ds), "--windows", "2", "-o", str(events)]).exit_code == 0
    lines = events.read_text().splitlines()
    first_time = json.loads(lines[0])["time"]
    # Two events of the first window after the second began, in the same partition: late whatever the watermark.
    late = [json.dumps({"op": "add_edge", "net": "left", "u": f"late{i}", "v": "0", "time": first_time + i})
            for i in range(2)]
    events.write_text("\n".join(lines + late) + "\n")
    topic = "until-idle"
    create_topic(broker.bootstrap, topic)
    fed = subprocess.run(dynalign("feed", str(events), "--to", broker.url(topic)), capture_output=True, text=True,
                         timeout=120, env={**os.environ, **FAST})
    assert fed.returncode == 0, fed.stderr[-3000:]

    state = tmp_path / "state"
    shown = in_terminal(dynalign("run", "--source", broker.url(topic, group="idle"), "--state", str(state),
                                 "--redis", redis_url, "--until-idle", "1"),
                        env={**FAST, **QUICK_GROUP}, timeout_s=240)
    assert shown.returncode == 0, shown.text[-3000:]
    # The summary counts them, and the log said once what happened and what to do.
    assert f"{len(lines) + 2} records" in shown.text and ", 2 late events," in shown.text, shown.text[-2000:]
    warnings = [line for line in shown.text.splitlines() if "arrived after their event-time window was cut" in line]
    assert len(warnings) == 1 and "2 event(s)" in warnings[0] and "--lateness" in warnings[0], shown.text[-3000:]
    # A Kafka topic never ends, but --until-idle does: the open (second) window was cut, aligned and published.
    store = SnapshotStore(state)
    assert [e["id"] for e in store.list_snapshots()] == [1, 2]
    assert AlignmentClient.from_url(redis_url).meta("left", "right")["snapshot"] == "2"
    checkpoint = store.read_checkpoint()
    assert checkpoint["aligned_through"] == checkpoint["snapshot_id"] == 2 and checkpoint["cutter"]["pending"] == 0
