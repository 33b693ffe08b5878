"""``dynalign replay --to-kafka`` against a real broker: exactly the recorded events, in order per key."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner

from aligner.cli import cli
from snapshots.cutter import SnapshotCutter, SnapshotPolicy
from snapshots.store import SnapshotStore
from stream.events import Event, parse_event
from tests.brokers import create_topic, kafka_broker, read_topic


@pytest.fixture(scope="module")
def broker():
    yield from kafka_broker()


@pytest.fixture
def state(tmp_path):
    """A state dir as the service leaves it: every offered event logged (redeliveries too), snapshots saved."""
    store = SnapshotStore(tmp_path / "state", base_every=2)
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0))
    for i in range(150):
        net = ("left", "right", "third")[i % 3 if i % 7 else 0]
        event = Event("add_edge", 100.0 + i * 0.4, net, str(i), str(i + 1), id=f"{net}:{i}")
        for _ in range(2 if i % 25 == 3 else 1):  # a redelivered event is in the log twice
            store.append_events([event.to_json()])
            for snapshot in cutter.offer(event):
                store.save_snapshot(snapshot)
    for snapshot in cutter.flush():
        store.save_snapshot(snapshot)
    store.close()
    return tmp_path / "state"


def replay(state, broker, topic, *bounds):
    result = CliRunner().invoke(cli, ["replay", "--state", str(state), *bounds, "--to-kafka",
                                      f"kafka://{broker.bootstrap}/{topic}", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def by_key(values: list[bytes]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for value in values:
        out.setdefault(parse_event(value).net, []).append(value)
    return out


@pytest.mark.parametrize("bounds", [(), ("--from", "2", "--to", "4")])
def test_replay_to_kafka_produces_exactly_the_recorded_events(state, broker, bounds):
    store = SnapshotStore(state)
    entries = store.list_snapshots()
    assert len(entries) == 6
    chosen = [e for e in entries if not bounds or 2 <= e["id"] <= 4]
    expected = [line.encode() for line in store.read_lines(chosen[0]["log"][0], chosen[-1]["log"][1])]
    if not bounds:
        assert len(expected) == 156  # 150 events and 6 redeliveries
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, partitions=3)
    out = replay(state, broker, topic, *bounds)
    assert out["kafka"]["events"] == len(expected) and out["kafka"]["failed"] == 0
    messages = read_topic(broker, topic, partitions=3, expect=len(expected))
    assert len(messages) == len(expected)
    assert {m.key.decode() for m in messages} == {"left", "right", "third"}
    got = by_key([m.value for m in messages])  # per partition by offset: per key in produce order
    assert got == by_key(expected)
    assert all(len({m.partition for m in messages if m.key == key}) == 1 for key in {m.key for m in messages})
