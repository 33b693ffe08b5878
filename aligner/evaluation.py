"""Scoring published alignments against held-out true pairs, from what the service persisted.

The service's last checkpoint holds the aligner's latest embeddings, so evaluation ranks every test node
against all alive nodes of the other network (full Hits@k and MRR, not just the published top-k) without
retraining or touching the running service.
"""

from __future__ import annotations

from pathlib import Path

from aligner.config import load_config
from aligner.engine import Aligner
from snapshots.store import SnapshotStore


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """Pairs of node ids from a two-column TSV (the exchange format's anchors/test files)."""
    out = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) < 2:
            raise ValueError(f"{path}:{line_no}: expected two columns, got {line!r}")
        out.append((cols[0], cols[1]))
    return out


def load_aligner(state_dir: Path) -> Aligner:
    """The aligner as of the state dir's last checkpoint."""
    checkpoint = SnapshotStore(state_dir).read_checkpoint()
    if not checkpoint or not checkpoint.get("aligner"):
        raise FileNotFoundError(f"{state_dir} has no checkpoint with an aligner yet: run the service first")
    cfg = load_config(env={})
    aligner = Aligner(cfg.model, cfg.meta, cfg.adapt, refine=cfg.refine)
    aligner.load_state_bytes(checkpoint["aligner"])
    return aligner


def load_aligner_and_snapshot(state_dir: Path):
    """The aligner of the last checkpoint and the snapshot it last aligned (from the snapshot store)."""
    store = SnapshotStore(state_dir)
    checkpoint = store.read_checkpoint()
    aligner = load_aligner(state_dir)
    snapshot_id = checkpoint.get("snapshot_id") or store.latest_id()
    return aligner, store.load_snapshot(snapshot_id)


def evaluate_state(state_dir: Path, anchors_file: Path, net: str, to: str) -> dict:
    return load_aligner(state_dir).evaluate(net, to, read_pairs(anchors_file))
