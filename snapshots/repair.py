"""Damaged snapshot files, found and rebuilt from the event log.

A snapshot file can be damaged long after it was written (a disk error, a truncated copy, a restore from a bad
backup): its sha256 no longer matches the manifest, and it and every delta built on it stop loading, so time
travel, replay and a restart that has to align it again fail. The store keeps what made it: the event log holds
every event the cutter was offered, in order, and cutting is deterministic, so cutting the log again with the
same policy gives the same snapshots. A rebuilt snapshot replaces a damaged file only if it is what the
manifest recorded: the same bytes (the sha256; files are written reproducibly, :mod:`snapshots.npz`) or, for a
file written before that, the same window, events, log range and per-network counts. Every snapshot cut on the
way is checked against its entry, so a log that does not reproduce the history (retention dropped its head; a
Kafka run whose partitions interleaved differently; a policy changed since) repairs nothing and says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from snapshots.cutter import SnapshotCutter, SnapshotPolicy
from snapshots.snapshot import Snapshot
from snapshots.snapshot_codec import snapshot_counts
from snapshots.store import SnapshotStore
from stream.events import parse_event

RECORDED = ("start_time", "end_time", "events", "networks", "anchors")


@dataclass(frozen=True)
class RepairReport:
    """``damaged``: ids whose file failed the check; ``repaired``: rebuilt and rewritten (``exact`` ones byte for
    byte); ``unrepairable``: id -> why not."""

    checked: int
    damaged: tuple[int, ...] = ()
    repaired: tuple[int, ...] = ()
    exact: tuple[int, ...] = ()
    unrepairable: dict[int, str] = field(default_factory=dict)


def differences(entry: dict[str, Any], snapshot: Snapshot) -> list[str]:
    """How ``snapshot`` differs from what its manifest ``entry`` recorded (empty: not at all).

    >>> import numpy as np
    >>> from snapshots.snapshot import NetworkSnapshot
    >>> net = NetworkSnapshot("a", ("x", "y"), np.array([[0], [1]]), np.ones(1, np.float32), np.ones(2, bool))
    >>> snap = Snapshot(3, 0.0, 10.0, {"a": net}, {}, events=4, arrived=9)
    >>> entry = {"id": 3, "log": [0, 9], "start_time": 0.0, "end_time": 10.0, "events": 5, **snapshot_counts(snap)}
    >>> differences(entry, snap)
    ['events 4, recorded 5']
    """
    got = {"start_time": snapshot.start_time, "end_time": snapshot.end_time, "events": snapshot.events,
           **snapshot_counts(snapshot)}
    out = [f"{key} {got[key]}, recorded {entry[key]}" for key in RECORDED if got[key] != entry.get(key)]
    if snapshot.arrived != entry["log"][1]:
        out.append(f"cut after {snapshot.arrived} log lines, recorded {entry['log'][1]}")
    return out


def recorded_policy(store: SnapshotStore, default: SnapshotPolicy) -> SnapshotPolicy:
    """The policy the history was cut with, as the newest intact checkpoint recorded it (``default``: none)."""
    checkpoint = store.read_checkpoint()
    return SnapshotPolicy(**checkpoint["cutter"]["policy"]) if checkpoint else default


def repair_snapshots(store: SnapshotStore, policy: SnapshotPolicy) -> RepairReport:
    """Check every snapshot file the manifest lists and rebuild the damaged ones from the event log, cut again
    under ``policy`` (see :func:`recorded_policy`)."""
    entries = store.manifest_entries()
    damaged = sorted(e["id"] for e in store.damaged())
    if not damaged:
        return RepairReport(checked=len(entries))
    if store.log_start_line > 0:
        why = (f"retention dropped the event log's first {store.log_start_line} lines, so the snapshots cannot be "
               "cut again from it")
        return RepairReport(len(entries), tuple(damaged), unrepairable={i: why for i in damaged})
    by_id = {e["id"]: e for e in entries}
    waiting = sorted(by_id)  # ids still to meet, in the order the cutter makes them
    repaired: list[int] = []
    exact: list[int] = []
    previous: Snapshot | None = None
    failure: str | None = None

    def take(snapshots: list[Snapshot]) -> bool:
        """Check each new snapshot against its entry and rewrite the damaged ones; False once one differs."""
        nonlocal previous, failure
        for snap in snapshots:
            entry = by_id.get(snap.id)
            if entry is None:
                continue  # cut after what the manifest keeps (forgotten after a recovery): nothing to check
            wrong = differences(entry, snap)
            if wrong:
                failure = (f"cutting the event log again gives snapshot {snap.id} with {'; '.join(wrong)}: the log "
                           "does not reproduce the history")
                return False
            if snap.id in damaged:
                parent = previous if entry.get("parent") is not None else None
                if entry.get("parent") is not None and (parent is None or parent.id != entry["parent"]):
                    failure = f"snapshot {snap.id} is a delta on snapshot {entry['parent']}, which was not rebuilt"
                    return False
                written = store.rewrite_snapshot(snap, parent)
                repaired.append(snap.id)
                if written["sha256"] == entry["sha256"]:
                    exact.append(snap.id)
            waiting.remove(snap.id)
            previous = snap
        return True

    cutter = SnapshotCutter(policy)
    last = damaged[-1]
    for number, line in enumerate(store.read_lines(0)):
        if not waiting or waiting[0] > last or failure is not None:
            break
        event = parse_event(line)
        if by_id[waiting[0]]["log"][1] == number:
            # The next snapshot was cut with ``number`` lines in: by the window this line crosses, or by an end
            # of input (a run that stopped there, then another that went on). Try the first, else the second.
            saved = cutter.to_state()
            made = cutter.offer(event)
            if not any(s.id == waiting[0] for s in made):
                cutter = SnapshotCutter.from_state(saved, policy)
                made = cutter.flush() + cutter.offer(event)
        else:
            made = cutter.offer(event)
        if not take(made):
            break
    else:
        if failure is None and waiting and waiting[0] <= last:
            take(cutter.flush())
    unrepairable = {i: failure or "the event log ends before it" for i in damaged if i not in repaired}
    return RepairReport(len(entries), tuple(damaged), tuple(repaired), tuple(exact), unrepairable)
