"""The Kafka source against a real broker (tansu, or ``$DYNALIGN_TEST_KAFKA``): ordered records with
positions, commits that survive a restart, explicit resume positions, and a clear error when no broker
answers."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

import pytest

from stream.deadletter import DeadLetterSink
from stream.kafka_settings import KafkaSettings, parse_kafka_url
from stream.kafka_source import KafkaSource
from stream.records import Record, SourceUnavailable
from stream.sources import open_source
from tests.brokers import EXTERNAL_ENV, TEST_GROUP_SETTINGS, Broker, create_topic, free_port, kafka_broker, start_tansu
from tests.logs import our_messages

SETTINGS = KafkaSettings(**TEST_GROUP_SETTINGS, connect_timeout_s=20)


@pytest.fixture(scope="module")
def broker():
    yield from kafka_broker()


def produce(broker: Broker, topic: str, values: list[bytes], partition: int | None = None) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    try:
        for i, value in enumerate(values):
            producer.send(topic, value=value, key=str(i).encode(), partition=partition)
        producer.flush()
    finally:
        producer.close()


def consume(source, count: int, timeout_s: float = 30.0) -> list[Record]:
    out: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count and time.monotonic() < deadline:
        out += source.poll(count - len(out), 0.5)
    return out


def settle_and_poll(source: KafkaSource, timeout_s: float = 30.0, quiet_s: float = 2.0) -> list[Record]:
    """Whatever arrives once the group is joined, polling ``quiet_s`` past the assignment."""
    out: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while not source.assigned and time.monotonic() < deadline:
        out += source.poll(100, 0.2)
    assert source.assigned, "the consumer never got a partition"
    quiet_until = time.monotonic() + quiet_s
    while time.monotonic() < quiet_until:
        out += source.poll(100, 0.2)
    return out


@pytest.fixture
def topic(broker) -> str:
    name = f"events-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, name)
    return name


def test_consume_commit_restart_and_resume(broker, topic):
    values = [json.dumps({"i": i}).encode() for i in range(25)]
    produce(broker, topic, values)
    url = broker.url(topic, group="g1")

    src = open_source(url, kafka=SETTINGS)
    assert not src.exhausted
    records = consume(src, 25)
    assert [r.value for r in records] == values
    assert [r.key for r in records] == [str(i).encode() for i in range(25)]
    assert [r.origin for r in records][:2] == [f"kafka:{topic}[0]@0", f"kafka:{topic}[0]@1"]
    assert [r.position for r in records][-1] == {"topic": topic, "offsets": {"0": 25}}
    assert records[9].position == {"topic": topic, "offsets": {"0": 10}}
    src.commit(records[-1].position)
    src.close()

    # A worker whose state never saw the topic (no position) rebuilds it from the beginning: what the group
    # already processed comes again marked as restoring, and the partition is live once caught up.
    again = open_source(url, kafka=SETTINGS)
    replayed = consume(again, 25)
    assert [r.value for r in replayed] == values and all(r.restoring for r in replayed)
    assert again.live_partitions() == {0}
    produce(broker, topic, [b'{"late": 1}'])
    late = consume(again, 1)
    assert [(r.value, r.position["offsets"], r.restoring) for r in late] == [(b'{"late": 1}', {"0": 26}, False)]
    again.commit(records[9].position)  # never moves the group's offset back
    again.close()  # closed without committing "late"

    # An explicit position (the service's checkpoint) decides where reading resumes; what the group committed
    # since (25) decides what is new work.
    resumed = open_source(url, kafka=SETTINGS, position=records[9].position)
    rest = consume(resumed, 16)
    assert [r.value for r in rest] == values[10:] + [b'{"late": 1}']
    assert [r.restoring for r in rest] == [True] * 15 + [False]
    resumed.close()


def test_partitions_are_tracked_together(broker):
    topic = f"multi-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, partitions=2)
    produce(broker, topic, [b'{"p": 0, "i": %d}' % i for i in range(3)], partition=0)
    produce(broker, topic, [b'{"p": 1, "i": %d}' % i for i in range(2)], partition=1)
    src = KafkaSource(broker.url(topic), SETTINGS)
    records = consume(src, 5)
    src.close()
    assert sorted(r.value for r in records) == sorted(
        [b'{"p": 0, "i": %d}' % i for i in range(3)] + [b'{"p": 1, "i": %d}' % i for i in range(2)]
    )
    assert records[-1].position == {"topic": topic, "offsets": {"0": 3, "1": 2}}
    for partition in ("0", "1"):  # offsets grow record by record within each partition
        seen = [int(r.origin.rsplit("@", 1)[1]) for r in records if r.origin.startswith(f"kafka:{topic}[{partition}]")]
        assert seen == sorted(seen)


def test_a_failed_commit_is_logged_not_raised(caplog):
    if os.environ.get(EXTERNAL_ENV):
        pytest.skip("needs a broker of its own to stop")
    with start_tansu() as own:
        create_topic(own.bootstrap, "events")
        produce(own, "events", [b"{}"])
        src = open_source(own.url("events"), kafka=KafkaSettings(**TEST_GROUP_SETTINGS, commit_timeout_s=1))
        (record,) = consume(src, 1)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="stream.kafka_source"):
        src.commit(record.position)
        assert time.monotonic() - started < 1  # asynchronous: an outage does not stall the caller
        while not any("the next commit will cover it" in m for m in our_messages(caplog.records)):
            assert src.poll(10, 0.1) == [] and time.monotonic() - started < 15
        src.close()  # waits at most commit_timeout_s for the last commit
    assert time.monotonic() - started < 20


def test_unreachable_broker_fails_clearly_after_the_timeout():
    url = f"kafka://127.0.0.1:{free_port()}/events"
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match=f"no Kafka broker of {url} reachable after 3 s"):
        open_source(url, kafka=KafkaSettings(connect_timeout_s=3))
    assert 2.5 < time.monotonic() - started < 10


def test_dead_letters_also_go_to_a_topic(broker, tmp_path):
    from kafka import KafkaProducer

    dead = f"dead-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, dead)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    with DeadLetterSink(tmp_path / "dlq.jsonl", topic=dead, producer=producer) as dlq:
        dlq.write(b"\xff", "payload is not UTF-8: invalid start byte at byte 0", "kafka:events[0]@3")
    producer.close()
    src = KafkaSource(broker.url(dead), SETTINGS)
    (record,) = consume(src, 1)
    src.close()
    assert record.key == b"kafka:events[0]@3"
    assert record.value.decode() == (tmp_path / "dlq.jsonl").read_text().strip()


def test_a_position_must_be_a_kafka_position():
    with pytest.raises(ValueError, match="is not a Kafka position"):
        KafkaSource(f"kafka://127.0.0.1:{free_port()}/t", position={"offset": 10, "line": 2})


def test_kafka_urls():
    assert parse_kafka_url("kafka://h:1/t") == (["h:1"], "t", None)
    for bad, message in [
        ("http://h:1/t", "not a Kafka URL"),
        ("kafka:///t", "names no broker"),
        ("kafka://h/t", "broker 'h' is not host:port"),
        ("kafka://h:99999/t", "broker 'h:99999' is not host:port"),
        ("kafka://h:1/a/b", "contains '/'"),
        ("kafka://h:1/t?grp=x", "unknown parameter"),
        ("kafka://h:1/t?group=", "give one non-empty group"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_kafka_url(bad)


def test_settings_hide_the_password_and_pass_extras_through():
    s = KafkaSettings(sasl_plain_password="s3cret", ssl_password="k3y", security_protocol="SASL_SSL",
                      sasl_mechanism="SCRAM-SHA-512", ssl_certfile="/c.pem", extra={"fetch_max_bytes": 1024})
    assert "s3cret" not in repr(s) and "k3y" not in repr(s) and "'***'" in repr(s)
    config = s.consumer_config()
    assert config["sasl_plain_password"] == "s3cret" and config["fetch_max_bytes"] == 1024
    assert "group_id" not in config and "connect_timeout_s" not in config and "ssl_cafile" not in config
    # Producers (feed, dead letters) get the same security options, and none of the consumer's.
    assert s.producer_config() == {"client_id": "dynalign", "security_protocol": "SASL_SSL",
                                   "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_password": "s3cret",
                                   "ssl_certfile": "/c.pem", "ssl_password": "k3y"}


def test_lines_of_a_message_lag_and_pausing_without_leaving_the_group(broker, caplog):
    topic = f"paused-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic)
    produce(broker, topic, [b'{"a": 1}\n{"b": 2}\n\nbad', b'{"c": 3}', b'{"d": 4}'])
    # max_poll_interval_ms shorter than the pause below: only polling keeps the consumer in its group.
    settings = KafkaSettings(session_timeout_ms=3000, heartbeat_interval_ms=500, max_poll_interval_ms=3000,
                             connect_timeout_s=20)
    src = KafkaSource(broker.url(topic), settings)
    first: list[Record] = []
    deadline = time.monotonic() + 30
    while not first and time.monotonic() < deadline:
        first = src.poll(1, 0.5)  # one message: its three non-blank lines
    origin = f"kafka:{topic}[0]@0"
    assert [(r.value, r.origin) for r in first] == [(b'{"a": 1}', origin + "#1"), (b'{"b": 2}', origin + "#2"),
                                                    (b"bad", origin + "#4")]
    assert all(r.position == {"topic": topic, "offsets": {"0": 1}} and r.partition == 0 for r in first)
    assert src.lag() == {0: 2}
    with caplog.at_level(logging.INFO, logger="stream.kafka_source"):
        before = len(caplog.records)
        src.pause()
        until = time.monotonic() + 4.5
        while time.monotonic() < until:
            assert src.poll(10, 0.2) == []
        assert src.assigned == {0}
        src.resume()
        rest = consume(src, 2)
    assert [r.value for r in rest] == [b'{"c": 3}', b'{"d": 4}'] and src.lag() == {0: 0}
    assert not [m for m in our_messages(caplog.records[before:]) if "revoked" in m or "assigned" in m]
    src.close()
