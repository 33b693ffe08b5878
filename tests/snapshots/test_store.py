import json
import math
import random

import numpy as np
import pytest

from snapshots.cutter import SnapshotCutter, SnapshotPolicy
from snapshots.files import StoreCorruption
from snapshots.store import SnapshotStore
from tests.snapshots.test_cutter import messy_stream, run
from tests.snapshots.test_graph import anchor, assert_snapshots_equal, attr, build, edge, random_events


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "state")


def sample_snapshot(snapshot_id=1, seed=5):
    graph = build(*random_events(random.Random(seed), 300), edge("ü", "x\x00", net="c"), anchor("a", "1", "c", "ü"),
                  attr("solo", [1.0], net="d"))
    graph.apply(edge("late", "comer", net="d"))
    return graph.snapshot(snapshot_id, 100.0, 200.0, 302)


def test_snapshot_round_trip_and_manifest(store):
    snapshot = sample_snapshot()
    entry = store.save_snapshot(snapshot)
    assert_snapshots_equal(SnapshotStore(store.root).load_snapshot(1), snapshot)
    assert entry["file"] == f"00000001-{entry['sha256'][:8]}.npz" and entry["kind"] == "base"
    assert entry["bytes"] == (store.layout.snapshot_dir / entry["file"]).stat().st_size
    assert entry["networks"]["c"] == {"nodes": 2, "alive": 2, "edges": 1, "changed": 2}
    assert ["a", "c", 1] in entry["anchors"]
    assert store.list_snapshots() == [entry] and store.latest_id() == 1
    assert json.loads(store.layout.manifest_path.read_text().splitlines()[-1]) == entry


def test_empty_store(store):
    assert store.list_snapshots() == [] and store.latest_id() is None and store.read_checkpoint() is None
    assert list(store.read_events()) == [] and store.events_log_size() == 0
    with pytest.raises(KeyError):
        store.load_snapshot(1)


def test_damaged_snapshot_files_are_detected(store):
    for snapshot_id in (1, 2):
        store.save_snapshot(sample_snapshot(snapshot_id))
    first, second = (store.layout.snapshot_dir / e["file"] for e in store.list_snapshots())
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(StoreCorruption, match="torn or corrupt"):
        store.load_snapshot(1)
    second.write_bytes(second.read_bytes()[:-10])
    # listing checks sizes only: the flipped byte in 1 is caught by the checksum on load, the truncated 2 right away
    assert [e["id"] for e in store.list_snapshots()] == [1]
    with pytest.raises(StoreCorruption, match="torn or corrupt"):
        store.load_snapshot(2)
    second.unlink()
    with pytest.raises(StoreCorruption, match="missing"):
        store.load_snapshot(2)


def test_torn_manifest_line_is_ignored_and_trimmed(store):
    store.save_snapshot(sample_snapshot(1))
    with open(store.layout.manifest_path, "ab") as manifest:
        manifest.write(b'{"id": 2, "start_ti')
    assert [e["id"] for e in store.list_snapshots()] == [1]
    store.save_snapshot(sample_snapshot(2))
    assert [e["id"] for e in store.list_snapshots()] == [1, 2]
    assert len(store.layout.manifest_path.read_text().splitlines()) == 2


def test_a_recut_snapshot_replaces_the_earlier_one(store):
    store.save_snapshot(sample_snapshot(1, seed=1))
    again = sample_snapshot(1, seed=2)
    store.save_snapshot(again)
    assert len(store.list_snapshots()) == 1
    assert_snapshots_equal(store.load_snapshot(1), again)


def test_event_log_append_sync_and_read(store):
    store.append_events(['{"a":1}', '{"b":"ü"}'])
    assert store.events_log_size() == 0  # buffered, not yet durable
    assert list(store.read_events()) == ['{"a":1}', '{"b":"ü"}']
    store.sync()
    size = store.events_log_size()
    assert size == store.layout.events_path.stat().st_size == len('{"a":1}\n{"b":"ü"}\n'.encode())
    store.append_events(iter(['{"c":3}']))
    store.sync()
    assert list(store.read_events(size)) == ['{"c":3}']
    for bad, why in ((['{"a":\n1}'], "line breaks"), (['{"a":1}', '{"b":\r2}'], "line breaks"),
                     (['{"a":1}', "x\n"], "line breaks"), (["#x"], "'#'"), (['{"a":1}', "# not an event"], "'#'")):
        with pytest.raises(ValueError, match=why):
            store.append_events(bad)
    store.append_events(['{"d":"#"}', ""])  # '#' inside a line, and an empty line, are fine
    assert list(store.read_events(size)) == ['{"c":3}', '{"d":"#"}', ""]  # a refused batch writes nothing
    store.close()
    with open(store.layout.events_path, "ab") as log:
        log.write(b'{"torn')
    assert list(SnapshotStore(store.root).read_events(size)) == ['{"c":3}', '{"d":"#"}', ""]


def test_checkpoint_round_trip_is_exact(store):
    state = {
        "cutter": {"arrays": np.arange(6, dtype=np.int32).reshape(2, 3), "ids": np.array([], np.int64)},
        "position": {0: 17, 3: 42},  # e.g. Kafka partitions: int keys survive
        "blob": b"\x00\xffopaque",
        "pair": ("a", 1, None, [True, 2.5]),
        "odd": {"__tuple__": [1]},  # a user key that looks like a tag
        "numbers": [math.inf, -math.inf, 0.1, 10**30, np.float32(1.5), np.int64(7)],
    }
    store.write_checkpoint(state)
    got = store.read_checkpoint()
    assert got["events_log_size"] == 0
    assert np.array_equal(got["cutter"]["arrays"], state["cutter"]["arrays"])
    assert got["cutter"]["arrays"].dtype == np.int32 and got["cutter"]["ids"].dtype == np.int64
    assert got["position"] == {0: 17, 3: 42} and got["blob"] == state["blob"] and got["pair"] == state["pair"]
    assert got["odd"] == {"__tuple__": [1]}
    assert got["numbers"] == state["numbers"] and type(got["numbers"][4]) is np.float32
    with pytest.raises(TypeError, match=r"state\.bad"):
        store.write_checkpoint({"bad": object()})
    with pytest.raises(TypeError, match="object arrays"):
        store.write_checkpoint({"bad": np.array([{}], dtype=object)})


def test_checkpoint_records_the_durable_log_size(store):
    store.append_events(['{"x":1}'])
    store.write_checkpoint({"k": 1})  # syncs the log first
    assert store.read_checkpoint()["events_log_size"] == 8 == store.events_log_size()
    with pytest.raises(ValueError, match="events_log_size"):
        store.write_checkpoint({"events_log_size": 3})


def test_torn_newest_checkpoint_falls_back_to_previous(store):
    store.write_checkpoint({"generation": 1})
    store.write_checkpoint({"generation": 2})
    assert store.read_checkpoint()["generation"] == 2
    assert store.layout.previous_checkpoint_path.exists()
    data = store.layout.checkpoint_path.read_bytes()
    store.layout.checkpoint_path.write_bytes(data[: len(data) // 2])
    assert store.read_checkpoint()["generation"] == 1
    store.layout.previous_checkpoint_path.write_bytes(b"DYNCKPT1")
    assert store.read_checkpoint() is None


def test_recover_truncates_the_log_and_removes_temp_files(store):
    store.append_events(['{"n":1}', '{"n":2}'])
    store.write_checkpoint({"position": 2})
    store.append_events(['{"n":3}'])
    store.sync()
    store.append_events(['{"n":4}'])  # buffered when the process "dies"
    (store.root / ".checkpoint.abc.tmp").write_bytes(b"half")
    (store.layout.snapshot_dir / ".00000009.npz.xyz.tmp").write_bytes(b"half")

    restarted = SnapshotStore(store.root)
    assert restarted.recover()["position"] == 2
    assert list(restarted.read_events()) == ['{"n":1}', '{"n":2}']
    assert restarted.events_log_size() == restarted.layout.events_path.stat().st_size
    assert not list(store.root.glob(".*.tmp")) and not list(store.layout.snapshot_dir.glob(".*.tmp"))
    restarted.append_events(['{"n":3}'])
    restarted.sync()
    assert list(restarted.read_events()) == ['{"n":1}', '{"n":2}', '{"n":3}']


def test_recover_without_checkpoint_starts_over(store):
    store.append_events(['{"n":1}'])
    store.close()
    assert store.recover() is None
    assert store.layout.events_path.stat().st_size == 0 and store.events_log_size() == 0


def test_recover_refuses_a_log_shorter_than_the_checkpoint(store):
    store.append_events(['{"n":1}'])
    store.write_checkpoint({})
    store.close()
    store.layout.events_path.write_bytes(b"")
    with pytest.raises(StoreCorruption, match="lost data"):
        store.recover()


def test_cutter_resumes_exactly_from_a_checkpoint(store):
    policy = SnapshotPolicy(window_seconds=50.0, every_events=70, lateness_seconds=10.0, dedup_capacity=500)
    events = messy_stream(4, 900)
    expected = run(SnapshotCutter(policy), events)
    cutter = SnapshotCutter(policy)
    for i, event in enumerate(events[:500]):
        store.append_events([event.to_json()])
        for snapshot in cutter.offer(event):
            store.save_snapshot(snapshot)
        if i == 400:
            store.write_checkpoint({"cutter": cutter.to_state(), "position": i + 1})
    # crash after event 500: everything after the checkpoint is redone from the source position
    restarted = SnapshotStore(store.root)
    checkpoint = restarted.recover()
    cutter = SnapshotCutter.from_state(checkpoint["cutter"])
    assert len(list(restarted.read_events())) == checkpoint["position"]
    for event in events[checkpoint["position"]:]:
        for snapshot in cutter.offer(event):
            restarted.save_snapshot(snapshot)
    for snapshot in cutter.flush():
        restarted.save_snapshot(snapshot)
    assert [e["id"] for e in restarted.list_snapshots()] == [s.id for s in expected]
    for want in expected:
        assert_snapshots_equal(restarted.load_snapshot(want.id), want)


def test_a_damaged_checkpoint_falls_back_with_a_warning(store, caplog):
    """Issue 16, item 7: the fallback used to be silent."""
    store.append_events(['{"n":1}'])
    store.write_checkpoint({"position": 1})
    store.append_events(['{"n":2}'])
    store.write_checkpoint({"position": 2})
    store.close()
    data = bytearray(store.layout.checkpoint_path.read_bytes())
    data[-1] ^= 0xFF
    store.layout.checkpoint_path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="snapshots.store"):
        assert store.recover()["position"] == 1
    assert any("is torn or corrupt: skipped" in r.getMessage() for r in caplog.records)


def test_an_event_log_shorter_than_the_newest_checkpoint_tries_the_previous_one(store, caplog):
    store.append_events(['{"n":1}'])
    store.write_checkpoint({"position": 1})
    kept = store.layout.events_path.stat().st_size
    store.append_events(['{"n":2}'])
    store.write_checkpoint({"position": 2})
    store.close()
    with open(store.layout.events_path, "r+b") as f:  # the newest checkpoint's last event is gone
        f.truncate(kept)
    with caplog.at_level("WARNING", logger="snapshots.store"):
        assert store.recover()["position"] == 1
    assert any("trying an older checkpoint" in r.getMessage() for r in caplog.records)
    assert store.events_log_size() == kept and store.layout.events_path.stat().st_size == kept
