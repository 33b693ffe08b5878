"""A damaged snapshot file is found and rebuilt from the event log, byte for byte, or left alone with a reason."""

from __future__ import annotations

from snapshots.cutter import SnapshotCutter, SnapshotPolicy
from snapshots.files import StoreCorruption
from snapshots.repair import repair_snapshots
from snapshots.store import SnapshotStore
from tests.snapshots.test_cutter import messy_stream
from tests.snapshots.test_durable_store import POLICY, ingest
from tests.snapshots.test_graph import assert_snapshots_equal


def history(tmp_path, retain=None):
    """A store as the service leaves it: every offered event logged, every cut saved, and one end of input in the
    middle (a run that stopped, then another that went on: its flush cut a snapshot no window closed)."""
    store = SnapshotStore(tmp_path, base_every=4, retain=retain)
    cutter = SnapshotCutter(POLICY)
    events = messy_stream(3, 1200)
    cut = ingest(store, cutter, events[:500])
    for snapshot in cutter.flush():
        store.save_snapshot(snapshot, model_version=f"m{snapshot.id}")
        cut.append(snapshot)
    cut += ingest(store, cutter, events[500:])
    for snapshot in cutter.flush():
        store.save_snapshot(snapshot, model_version=f"m{snapshot.id}")
        cut.append(snapshot)
    store.close()
    return store, cut


def damage(store, snapshot_id, how):
    path = store.layout.snapshot_dir / store.snapshot_entry(snapshot_id)["file"]
    data = path.read_bytes()
    mid = len(data) // 2
    path.write_bytes(data[:mid] if how == "truncate" else data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 16])
                     + data[mid + 16:])


def test_damaged_snapshots_are_rebuilt_from_the_event_log_byte_for_byte(tmp_path):
    store, cut = history(tmp_path)
    assert len(cut) >= 8
    base = next(e["id"] for e in store.manifest_entries() if e["kind"] == "base" and e["id"] > 1)
    delta = next(e["id"] for e in store.manifest_entries() if e["kind"] == "delta" and e["id"] > base)
    flushed = 1 + next(i for i, s in enumerate(cut) if s.arrived == 500)  # the snapshot the first run's end cut
    before = {e["id"]: e["sha256"] for e in store.manifest_entries()}
    damage(store, base, "truncate")
    damage(store, delta, "flip")
    damage(store, flushed, "flip")
    reopened = SnapshotStore(tmp_path, base_every=4)
    for snapshot_id in (base, delta, flushed):
        try:
            reopened.load_snapshot(snapshot_id)
            raise AssertionError(f"snapshot {snapshot_id} should not load")
        except StoreCorruption:
            pass

    report = repair_snapshots(reopened, POLICY)
    assert report.damaged == tuple(sorted({base, delta, flushed})) and report.unrepairable == {}
    assert report.repaired == report.exact == report.damaged  # the same bytes as the files first written
    assert {e["id"]: e["sha256"] for e in reopened.manifest_entries()} == before
    fresh = SnapshotStore(tmp_path, base_every=4)
    for snapshot in cut:
        assert_snapshots_equal(fresh.load_snapshot(snapshot.id), snapshot)
    assert repair_snapshots(fresh, POLICY).damaged == ()  # nothing left to do


def test_a_log_that_does_not_reproduce_the_history_repairs_nothing_and_says_why(tmp_path):
    store, cut = history(tmp_path)
    damage(store, 3, "flip")
    other_policy = SnapshotPolicy(window_seconds=25.0, every_events=60, lateness_seconds=10.0, dedup_capacity=500)
    report = repair_snapshots(SnapshotStore(tmp_path, base_every=4), other_policy)
    assert report.repaired == () and "does not reproduce the history" in report.unrepairable[3]
    # nothing was rewritten: the damaged file is still the one the manifest names, and still refused
    try:
        SnapshotStore(tmp_path, base_every=4).load_snapshot(3)
        raise AssertionError("snapshot 3 should not load")
    except StoreCorruption:
        pass


def test_after_retention_dropped_the_log_head_a_damaged_snapshot_is_reported_not_rebuilt(tmp_path):
    store, cut = history(tmp_path, retain=4)
    store.compact()
    kept = [e["id"] for e in store.list_snapshots()]
    assert store.log_start_line > 0 and kept[0] > 1
    damage(store, kept[-1], "truncate")
    report = repair_snapshots(SnapshotStore(tmp_path, base_every=4), POLICY)
    assert report.damaged == (kept[-1],) and "retention dropped" in report.unrepairable[kept[-1]]
