"""What a restart reads back besides the store's own state: damaged snapshots reported, the snapshots still to
align loaded (skipping any beyond repair), and the unpublished update a checkpoint keeps as plain data."""

from __future__ import annotations

import logging
from typing import Any, Iterator

from aligner.update import AlignmentUpdate, PairTopK
from snapshots.files import StoreCorruption
from snapshots.repair import RepairReport
from snapshots.snapshot import Snapshot
from snapshots.store import SnapshotStore

log = logging.getLogger("dynalign.service")


def report_repair(report: RepairReport) -> None:
    """One warning per damaged snapshot file found at start-up: rebuilt, or why not."""
    for snapshot_id in report.repaired:
        how = "byte for byte" if snapshot_id in report.exact else "matching every count its manifest entry recorded"
        log.warning(f"snapshot {snapshot_id} was damaged on disk: rebuilt from the event log ({how})")
    for snapshot_id, why in report.unrepairable.items():
        log.warning(f"snapshot {snapshot_id} is damaged on disk and was not rebuilt: {why}; it cannot be loaded "
                    "(replay, time travel) until it is restored from a backup")


def loadable(store: SnapshotStore, ids: list[int]) -> Iterator[Snapshot]:
    """The snapshots ``ids`` that load; one that does not (damaged beyond repair) is skipped with a warning: the
    next snapshot holds the whole graph, so aligning it loses that snapshot's own version, not its events."""
    for snapshot_id in ids:
        try:
            yield store.load_snapshot(snapshot_id)
        except StoreCorruption as e:
            log.warning(f"{e}: snapshot {snapshot_id} is not aligned again; the next one covers its events")


def update_to_state(update: AlignmentUpdate) -> dict[str, Any]:
    """An update as plain data for the checkpoint (see :mod:`snapshots.store`), so a restart still publishes it.

    >>> import numpy as np
    >>> topk = PairTopK("a", "b", np.array([0]), np.array([[1, 0]]), np.array([[0.9, 0.1]]))
    >>> back = update_from_state(update_to_state(AlignmentUpdate(3, 7.0, {"a": ("x",), "b": ("y", "z")}, [topk])))
    >>> back.snapshot_id, back.node_ids, back.pairs[0].src, back.pairs[0].candidates.tolist()
    (3, {'a': ('x',), 'b': ('y', 'z')}, 'a', [[1, 0]])
    """
    return {
        "snapshot_id": update.snapshot_id, "end_time": update.end_time,
        "node_ids": {net: list(ids) for net, ids in update.node_ids.items()},
        "pairs": [{"src": t.src, "dst": t.dst, "src_index": t.src_index, "candidates": t.candidates,
                   "scores": t.scores} for t in update.pairs],
    }


def update_from_state(state: dict[str, Any]) -> AlignmentUpdate:
    return AlignmentUpdate(int(state["snapshot_id"]), float(state["end_time"]),
                           {net: tuple(ids) for net, ids in state["node_ids"].items()},
                           [PairTopK(**pair) for pair in state["pairs"]])
