"""What a run starts from: the state dir's newest checkpoint read back into the store, cutter and aligner
(:func:`recover`), damaged snapshots reported, the snapshots still to align loaded (skipping any beyond repair),
and the unpublished update a checkpoint keeps as plain data. Its own module so that the service's start-up reads
as steps, and the checkpoint's keys are read where :mod:`aligner.service.checkpointer` writes their counterpart."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from aligner.config import Config
from aligner.engine.factory import build_aligner
from aligner.service.jobs import AlignerState, Queued
from aligner.service.run_settings import is_other_file
from aligner.service.savepoint import seed_state_dir
from aligner.update import AlignmentUpdate, PairTopK
from snapshots.cutter import SnapshotCutter, SnapshotPolicy
from snapshots.files import StoreCorruption
from snapshots.history import AlignmentHistory
from snapshots.repair import RepairReport, repair_snapshots
from snapshots.snapshot import Snapshot
from snapshots.store import SnapshotStore

if TYPE_CHECKING:
    from aligner.engine.aligner import Aligner

log = logging.getLogger("dynalign.service")


@dataclass
class Recovered:
    """Everything a run takes over from the state dir (a fresh one: empty, the aligner new)."""

    store: SnapshotStore
    history: AlignmentHistory
    cutter: SnapshotCutter
    aligner: Aligner
    saved: AlignerState  # the aligner's state the checkpoint recorded: what it had aligned, at what version
    last_snapshot: int | None  # the newest snapshot cut before the checkpoint
    backlog: deque[Queued]  # snapshots cut before the checkpoint but not aligned then: aligned again, in order
    position: dict | None  # where the source is read from
    net_partitions: dict[str, set[int]]  # the partitions each network's events came from
    pending: AlignmentUpdate | None  # the update Redis had not taken yet
    # The dead-letter file's size to truncate to (None: leave it as it is), see DeadLetterSink.
    deadletter_size: int | None


def recover(cfg: Config, state_dir: Path, source_url: str, seed: dict | None, savepoint: Path | None,
            recorded: dict | None) -> Recovered:
    """The store (seeded from the savepoint, if any), its damaged snapshots repaired, and the cutter, the
    aligner and the source position as of the newest checkpoint; ``recorded``: the state dir's run settings."""
    store = SnapshotStore(state_dir, cfg.store.base_every, cfg.store.retain_snapshots)
    if seed is not None:  # a savepoint was given
        seeded = seed_state_dir(seed, store)
        log.info(f"state dir seeded from savepoint {savepoint} (snapshot {seeded['snapshot_id']}, "
                 f"model {seeded['model_version']})")
    checkpoint = store.recover() or {}
    store.forget_after(checkpoint.get("snapshot_id"))  # cut after the checkpoint: they are cut again
    history = AlignmentHistory(state_dir / "history", cfg.store.base_every)
    policy = SnapshotPolicy(**dataclasses.asdict(cfg.snapshots))  # the same fields, by design
    # The policy the history was cut with is the checkpoint's (already read), not necessarily today's config.
    report_repair(repair_snapshots(store, SnapshotPolicy(**checkpoint["cutter"]["policy"]) if checkpoint
                                   else policy))
    cutter = SnapshotCutter.from_state(checkpoint["cutter"], policy) if checkpoint else SnapshotCutter(policy)
    aligner = build_aligner(cfg)
    aligner_state: bytes | None = checkpoint.get("aligner")
    if aligner_state:
        aligner.load_state_bytes(aligner_state)
    last_snapshot: int | None = checkpoint.get("snapshot_id")
    saved = AlignerState(aligner_state, checkpoint.get("aligned_through", last_snapshot),
                         checkpoint.get("model_version", aligner.model_version()))
    position: dict | None = checkpoint.get("position")
    if position and recorded and is_other_file(recorded.get("source"), source_url):
        log.warning(f"{source_url} is not the file state dir {state_dir} was reading "
                    f"({recorded['source'].get('url')}): reading it from its first line")
        position = None
    pending = update_from_state(checkpoint["pending_update"]) if checkpoint.get("pending_update") else None
    backlog = deque(Queued(snapshot, None, time.monotonic()) for snapshot in loadable(
        store, [e["id"] for e in store.manifest_entries() if (saved.through or 0) < e["id"] <= (last_snapshot or 0)]))
    if checkpoint:
        log.info("resuming from checkpoint", extra={"fields": {
            "snapshot": last_snapshot, "aligned_through": saved.through, "position": position,
            "to_align": len(backlog), "unpublished": pending is not None}})
    return Recovered(
        store, history, cutter, aligner, saved, last_snapshot, backlog, position,
        {net: set(parts) for net, parts in (checkpoint.get("net_partitions") or {}).items()}, pending,
        # No checkpoint: every record is read again, so the dead letters start over too (else they double);
        # a checkpoint from before dead-letter sizes were recorded leaves the file as it is.
        checkpoint.get("deadletter_size", None if checkpoint else 0))


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
