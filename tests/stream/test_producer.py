"""``dynalign feed`` against a real broker: events keyed by network (one network, one partition, in order),
malformed lines passed on unkeyed, batching, looping with fresh times and ids, pacing, and the CLI."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner

from aligner.cli import cli
from stream.events import parse_event
from stream.kafka_settings import KafkaSettings
from stream.producer import feed
from tests.brokers import TEST_GROUP_SETTINGS, create_topic, kafka_broker, read_topic

SETTINGS = KafkaSettings(**TEST_GROUP_SETTINGS, connect_timeout_s=20)


@pytest.fixture(scope="module")
def broker():
    yield from kafka_broker()


@pytest.fixture
def events_file(tmp_path):
    lines = []
    for i in range(60):
        net = ("left", "right", "third")[i % 3]
        lines.append(json.dumps({"op": "add_edge", "net": net, "u": str(i), "v": str(i + 1), "time": 100 + i,
                                 "id": f"{net}:{i}"}))
        if i % 20 == 7:
            lines.append('{"op": "add_edge", "net": "left"}')  # malformed: missing fields
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    return path




def test_feed_keys_by_network_in_order_and_passes_malformed_lines_on(broker, events_file):
    topic = f"feed-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, partitions=3)
    summary = feed(events_file, f"kafka://{broker.bootstrap}/{topic}", settings=SETTINGS)
    assert (summary.events, summary.malformed, summary.messages, summary.failed) == (63, 3, 63, 0)
    messages = read_topic(broker, topic, 63, partitions=3)
    assert len(messages) == 63
    lines = events_file.read_text().splitlines()
    by_key: dict = {}
    for m in messages:
        by_key.setdefault(m.key, []).append(m)
    assert sorted(by_key, key=str) == sorted([None, b"left", b"right", b"third"], key=str)
    for net in ("left", "right", "third"):
        mine = by_key[net.encode()]
        assert len({m.partition for m in mine}) == 1  # one network, one partition...
        sent = [line for line in lines if f'"net": "{net}", "u"' in line]
        assert [m.value.decode() for m in mine] == sent  # ...in order
    assert [m.value for m in by_key[None]] == [b'{"op": "add_edge", "net": "left"}'] * 3


def test_feed_loops_batches_and_keys_everything_alike(broker, events_file):
    topic = f"feed-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, partitions=2)
    summary = feed(events_file, f"kafka://{broker.bootstrap}/{topic}", settings=SETTINGS, loop=True, limit=150,
                   batch=4, key="problem-1")
    assert (summary.events, summary.malformed, summary.passes, summary.failed) == (150, 7, 3, 0)
    messages = read_topic(broker, topic, summary.messages, partitions=2)
    assert {m.key for m in messages} == {b"problem-1"} and len({m.partition for m in messages}) == 1
    assert max(m.value.count(b"\n") + 1 for m in messages) == 4
    lines = [line for m in messages for line in m.value.split(b"\n")]
    assert len(lines) == 150
    events = [parse_event(line) for line in lines if b'"u"' in line]
    first, second = events[:60], events[60:120]
    # A later pass is new events: times moved past the first pass, ids made unique.
    assert [e.time for e in second] == [e.time + 60 for e in first]  # span 59 s + 1 s
    assert [e.id for e in second] == [f"{e.id}~1" for e in first]
    assert len({e.id for e in events}) == len(events) == 60 + 60 + 23


def test_feed_paces_to_the_rate(broker, events_file):
    topic = f"feed-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic)
    summary = feed(events_file, f"kafka://{broker.bootstrap}/{topic}", settings=SETTINGS, rate=100.0, limit=40)
    assert summary.events == 40 and 0.35 < summary.seconds < 3.0


def test_feed_command(broker, events_file):
    topic = f"feed-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic)
    result = CliRunner().invoke(cli, ["feed", str(events_file), "--to", f"kafka://{broker.bootstrap}/{topic}",
                                      "--count", "10"])
    assert result.exit_code == 0, result.output
    assert "10 events (1 malformed) in 10 messages" in result.output
    bad = CliRunner().invoke(cli, ["feed", "-", "--to", f"kafka://{broker.bootstrap}/{topic}", "--loop"])
    assert bad.exit_code == 1 and "stdin cannot be replayed" in bad.output


@pytest.mark.parametrize("batch", [1, 4])
def test_a_line_too_large_for_kafka_is_skipped_and_the_feed_goes_on(broker, events_file, batch):
    """It once crashed `feed` with a traceback and nothing after it was sent (issue 16, item 7)."""
    lines = events_file.read_text().splitlines()
    huge = json.dumps({"op": "add_edge", "net": "left", "u": "x" * (2 << 20), "v": "y", "time": 1})
    path = events_file.with_name("huge.jsonl")
    path.write_text("\n".join([*lines[:10], huge, *lines[10:]]) + "\n")
    topic = f"feed-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic)
    result = CliRunner().invoke(cli, ["feed", str(path), "--to", f"kafka://{broker.bootstrap}/{topic}",
                                      "--batch", str(batch)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "1 line(s) larger than a Kafka message may be (max_request_size) were not sent" in result.output
    assert f"{len([line for line in lines if line])} events (3 malformed)" in result.output  # the rest, all sent
    sent = [m.value for m in read_topic(broker, topic, 10, partitions=1)]
    assert sorted(b"\n".join(sent).split(b"\n")) == sorted(line.encode() for line in lines if line)
