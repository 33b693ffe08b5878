"""Base + delta snapshots, retention, crash recovery with the log tail, and the alignment history."""

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from snapshots.cutter import SnapshotCutter, SnapshotPolicy
from snapshots.files import StoreCorruption
from snapshots.history import AlignmentHistory
from snapshots.store import SnapshotStore
from tests.snapshots.test_cutter import messy_stream
from tests.snapshots.test_graph import assert_snapshots_equal

POLICY = SnapshotPolicy(window_seconds=40.0, every_events=60, lateness_seconds=10.0, dedup_capacity=500)


def ingest(store, cutter, events, checkpoint_at=()):
    """The service's loop in miniature: log every offered event, save every cut, checkpoint at some events."""
    cut = []
    for i, event in enumerate(events):
        store.append_events([event.to_json()])
        for snapshot in cutter.offer(event):
            store.save_snapshot(snapshot, model_version=f"m{snapshot.id}")
            cut.append(snapshot)
        if i + 1 in checkpoint_at:
            store.write_checkpoint({"cutter": cutter.to_state(), "position": i + 1})
    return cut


def test_deltas_round_trip_exactly_with_log_ranges(tmp_path):
    store = SnapshotStore(tmp_path, base_every=4)
    events = messy_stream(3, 1200)
    cut = ingest(store, SnapshotCutter(POLICY), events)
    store.close()
    assert len(cut) > 10
    entries = store.list_snapshots()
    assert [e["kind"] for e in entries[:6]] == ["base", "delta", "delta", "delta", "base", "delta"]
    fresh = SnapshotStore(tmp_path)
    for want in reversed(cut):  # out of order: each load walks back to its base
        got = fresh.load_snapshot(want.id)
        assert_snapshots_equal(got, want)
        assert got.arrived == want.arrived
    # consecutive log ranges cover the log, and a range holds the events that arrived for that snapshot
    assert entries[0]["log"][0] == 0
    assert all(a["log"][1] == b["log"][0] for a, b in zip(entries, entries[1:]))
    lines = list(fresh.read_lines(entries[2]["log"][0], entries[2]["log"][1]))
    offered = [e.to_json() for e in events]
    assert lines == offered[entries[2]["log"][0]:entries[2]["log"][1]]
    assert entries[3]["model_version"] == "m4"


def test_store_grows_with_changes_not_snapshots_times_graph(tmp_path):
    """A big graph that changes a little per window: deltas are a small fraction of full copies."""
    from stream.events import Event

    rng = np.random.default_rng(0)
    events = [Event("add_edge", 0.0, "a", str(u), str(v)) for u, v in rng.integers(0, 3000, (20000, 2)) if u != v]
    for w in range(1, 21):
        events += [Event("add_edge", w * 10.0 + 1, "a", str(u), str(v)) for u, v in rng.integers(0, 3000, (50, 2))
                   if u != v]
    sizes = {}
    for base_every in (1, 10):
        store = SnapshotStore(tmp_path / str(base_every), base_every=base_every)
        ingest(store, SnapshotCutter(SnapshotPolicy(window_seconds=10.0)), events)
        sizes[base_every] = store.size_bytes()["snapshots"]
    assert sizes[10] < 0.25 * sizes[1], sizes


def test_retention_drops_whole_base_groups_and_the_log_head(tmp_path):
    store = SnapshotStore(tmp_path, base_every=3, retain=4)
    events = messy_stream(8, 1500)
    cutter = SnapshotCutter(POLICY)
    cut = ingest(store, cutter, events)
    store.write_checkpoint({"cutter": cutter.to_state()})
    store.write_checkpoint({"cutter": cutter.to_state()})  # .prev too: the log may be cut up to both
    size = store.events_log_size()
    result = store.compact()
    kept = store.list_snapshots()
    assert 4 <= len(kept) < 4 + 3 and kept[0]["kind"] == "base" and result["dropped"] == list(range(1, kept[0]["id"]))
    assert store.log_start_line == kept[0]["log"][0] == result["log_lines_dropped"]
    restarted = SnapshotStore(tmp_path)
    assert restarted.events_log_size() == size  # offsets stay absolute
    assert restarted.recover() is not None and restarted.events_log_size() == size
    for want in cut[-len(kept):]:
        assert_snapshots_equal(restarted.load_snapshot(want.id), want)
    assert list(restarted.read_lines(kept[0]["log"][0])) == [e.to_json() for e in events][kept[0]["log"][0]:]
    with pytest.raises(ValueError, match="dropped by retention"):
        next(restarted.read_lines(0))
    with pytest.raises(KeyError):
        restarted.load_snapshot(1)
    assert not any(p.name.startswith("00000001-") for p in restarted.layout.snapshot_dir.iterdir())


def test_torn_checkpoint_recovers_the_previous_one_and_replays_the_tail(tmp_path):
    """Crash in the middle of a checkpoint write (the file truncated): start-up loads the last good checkpoint,
    forgets what came after it, and re-applying the events after it gives the uninterrupted result."""
    events = messy_stream(5, 900)
    reference = ingest(SnapshotStore(tmp_path / "ref"), SnapshotCutter(POLICY), events)
    store = SnapshotStore(tmp_path / "state")
    ingest(store, SnapshotCutter(POLICY), events[:700], checkpoint_at=(400, 650))
    data = store.layout.checkpoint_path.read_bytes()
    store.layout.checkpoint_path.write_bytes(data[: len(data) // 2])  # torn
    # and a snapshot file whose manifest line never came: a torn write, never loaded
    (store.layout.snapshot_dir / "00000099-deadbeef.npz").write_bytes(b"PK\x03\x04 torn")

    restarted = SnapshotStore(tmp_path / "state")
    checkpoint = restarted.recover()
    assert checkpoint["position"] == 400
    cutter = SnapshotCutter.from_state(checkpoint["cutter"])
    restarted.forget_after(checkpoint["cutter"]["next_id"] - 1)  # snapshots cut after the checkpoint
    assert not (restarted.layout.snapshot_dir / "00000099-deadbeef.npz").exists()
    assert len(list(restarted.read_events())) == 400  # the log is cut back to the checkpoint
    ingest(restarted, cutter, events[400:])
    assert [e["id"] for e in restarted.list_snapshots()] == [s.id for s in reference]
    for want in reference:
        assert_snapshots_equal(SnapshotStore(tmp_path / "state").load_snapshot(want.id), want)


KILLED_WRITER = """
import sys, numpy as np
from snapshots.store import SnapshotStore
store = SnapshotStore(sys.argv[1])
big = np.arange(4_000_000, dtype=np.int64)
n = 0
while True:
    n += 1
    store.write_checkpoint({"n": n, "big": big})
    print(n, flush=True)
"""


def test_killed_during_checkpoint_writes_never_leaves_a_torn_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    written = 0
    while written < 3:
        written = int(proc.stdout.readline())
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = SnapshotStore(tmp_path)
    checkpoint = store.recover()
    assert checkpoint["n"] >= written and len(checkpoint["big"]) == 4_000_000
    assert not list(tmp_path.glob(".*.tmp"))


def directions(rng, n_src, n_dst, k=3, alive=None):
    rows = np.flatnonzero(alive) if alive is not None else np.arange(n_src)
    cands = np.stack([rng.permutation(n_dst)[:k] for _ in rows]).reshape(-1, k)
    scores = np.sort(rng.random((len(rows), k)).astype(np.float32), axis=1)[:, ::-1].copy()
    return SimpleNamespace(src="a", dst="b", src_index=rows, candidates=cands, scores=scores)


def test_history_records_versions_as_deltas_and_answers_as_of(tmp_path):
    rng = np.random.default_rng(1)
    history = AlignmentHistory(tmp_path, base_every=3)
    recorded = []
    ids = {"a": tuple(f"a{i}" for i in range(50)), "b": tuple(f"b{i}" for i in range(40))}
    d = directions(rng, 50, 40)
    for version in range(1, 8):
        ids = {"a": ids["a"] + (f"a{49 + version}",), "b": ids["b"]}
        changed = rng.choice(len(d.src_index), 5, replace=False)
        d = SimpleNamespace(**{**vars(d), "src_index": np.arange(len(ids["a"])),
                               "candidates": np.concatenate([d.candidates, d.candidates[:1]]),
                               "scores": np.concatenate([d.scores, d.scores[:1]])})
        d.candidates[changed] = rng.permutation(40)[:3]
        back = SimpleNamespace(src="b", dst="a", src_index=np.arange(40), candidates=d.candidates[:40] % 40,
                               scores=d.scores[:40])
        history.record("b", "a", version, snapshot_id=version * 2, end_time=version * 100.0, node_ids=ids,
                       directions=[d, back], model_version="mv")
        recorded.append((ids, {k: v.copy() for k, v in vars(d).items() if k in ("src_index", "candidates", "scores")}))
    entries = history.entries("a", "b")
    assert [e["kind"] for e in entries] == ["base", "delta", "delta", "base", "delta", "delta", "base"]
    fresh = AlignmentHistory(tmp_path)
    for entry, (ids, want) in reversed(list(zip(entries, recorded))):
        got = fresh.load(entry)
        assert got.node_ids == ids
        index, cands, scores = got.top[("a", "b")]
        assert np.array_equal(index, want["src_index"]) and np.array_equal(cands, want["candidates"])
        assert scores.dtype == np.float32 and np.array_equal(scores, want["scores"])
    assert fresh.as_of("b", "a", snapshot=7)["version"] == 3 and fresh.as_of("a", "b", at=99.0) is None
    assert fresh.as_of("a", "b", at=250.0)["version"] == 2
    top = fresh.load(fresh.as_of("a", "b", snapshot=4)).candidates("a3", "a", "b", k=2)
    assert [c for c, _ in top] == [recorded[1][0]["b"][c] for c in recorded[1][1]["candidates"][3][:2]]
    assert entries[-1]["bytes"] > 1.5 * entries[-2]["bytes"]  # deltas hold only what changed

    assert fresh.compact(keep_from_snapshot=11) == 3  # versions 1-3 go; 4 (the base of 5) stays
    assert [e["version"] for e in fresh.entries("a", "b")] == [4, 5, 6, 7]
    assert np.array_equal(AlignmentHistory(tmp_path).load(fresh.entries("a", "b")[1]).top[("a", "b")][1],
                          recorded[4][1]["candidates"])


def test_a_damaged_history_file_is_reported(tmp_path):
    history = AlignmentHistory(tmp_path)
    d = directions(np.random.default_rng(0), 10, 10)
    entry = history.record("a", "b", 1, 1, 1.0, {"a": tuple("abcdefghij"), "b": tuple("klmnopqrst")}, [d])
    path = tmp_path / entry["file"]
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(StoreCorruption, match="torn or corrupt"):
        AlignmentHistory(tmp_path).load(entry)
    assert json.loads((tmp_path / "index.jsonl").read_text())["version"] == 1


def test_a_version_recorded_again_after_a_restart_is_not_built_on_itself(tmp_path):
    # A restart re-aligns and republishes the snapshots its checkpoint had not kept: version 1 was recorded again
    # as a delta on its own first record, and loading version 2 then followed 1 -> 1 -> ... until memory ran out
    # (14 GB in benchmarks/chaos.py).
    rng = np.random.default_rng(3)
    ids = {"a": tuple(f"a{i}" for i in range(10)), "b": tuple(f"b{i}" for i in range(10))}
    first, again, second = (directions(rng, 10, 10) for _ in range(3))
    history = AlignmentHistory(tmp_path, base_every=5)
    history.record("a", "b", 1, 1, 1.0, ids, [first])
    AlignmentHistory(tmp_path, base_every=5).record("a", "b", 1, 1, 1.0, ids, [again])  # the restarted worker
    restarted = AlignmentHistory(tmp_path, base_every=5)
    restarted.record("a", "b", 2, 2, 2.0, ids, [second])
    fresh = AlignmentHistory(tmp_path)
    v1, v2 = fresh.entries("a", "b")
    assert v1["kind"] == "base" and v2["parent"] == 1
    assert np.array_equal(fresh.load(v1).top[("a", "b")][1], again.candidates)
    assert np.array_equal(AlignmentHistory(tmp_path).load(v2).top[("a", "b")][1], second.candidates)


def test_a_version_built_on_itself_is_refused_not_followed(tmp_path):
    history = AlignmentHistory(tmp_path, base_every=5)
    d = directions(np.random.default_rng(4), 10, 10)
    ids = {"a": tuple(f"a{i}" for i in range(10)), "b": tuple(f"b{i}" for i in range(10))}
    entry = history.record("a", "b", 1, 1, 1.0, ids, [d])
    looped = {**entry, "kind": "delta", "parent": 1, "depth": 1}  # what the old code wrote
    with open(tmp_path / "index.jsonl", "a") as f:
        f.write(json.dumps(looped) + "\n")
    with pytest.raises(StoreCorruption, match="not on an older one"):
        AlignmentHistory(tmp_path).load(looped)
