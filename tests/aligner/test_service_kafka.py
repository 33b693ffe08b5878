"""The service consuming a real Kafka-protocol broker (tansu) and publishing to a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from kafka import KafkaProducer

from aligner.cli import cli
from aligner.redis_alignments import AlignmentClient
from snapshots.store import SnapshotStore
from tests.brokers import create_topic, kafka_broker
from tests.synthetic import write_pair_dataset

FAST = {"DYNALIGN_META_WARMUP_ITERATIONS": "10", "DYNALIGN_META_ITERATIONS_PER_SNAPSHOT": "2",
        "DYNALIGN_MODEL_HIDDEN": "16", "DYNALIGN_MODEL_EMBEDDING_DIM": "16", "DYNALIGN_MODEL_POSITION_DIM": "32",
        "DYNALIGN_STREAM_KAFKA_CONNECT_TIMEOUT_S": "30", "DYNALIGN_SERVICE_THREADS": "1"}


@pytest.fixture(scope="module")
def broker():
    yield from kafka_broker()


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
