"""Scoring published alignments against held-out true pairs, from what the service persisted.

The service's last checkpoint holds the aligner's latest embeddings, so evaluation ranks every test node
against all alive nodes of the other network (full Hits@k and MRR, not just the published top-k) without
retraining or touching the running service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aligner.config import Config
from aligner.engine.aligner import Aligner
from aligner.engine.factory import aligner_from_state
from snapshots.snapshot import Snapshot, pair_key
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


def load_aligner(state_dir: Path, cfg: Config) -> Aligner:
    """The aligner as of the state dir's last checkpoint, under the configuration ``cfg``."""
    return aligner_from_state(cfg, _aligner_checkpoint(state_dir)["aligner"])


def load_aligner_and_snapshot(state_dir: Path, cfg: Config) -> tuple[Aligner, Snapshot]:
    """The aligner of the last checkpoint and the snapshot it last aligned (from the snapshot store)."""
    checkpoint = _aligner_checkpoint(state_dir)  # read once: the aligner and its snapshot from one checkpoint
    aligner = aligner_from_state(cfg, checkpoint["aligner"])
    store = SnapshotStore(state_dir)
    snapshot_id = checkpoint.get("snapshot_id") or store.latest_id()
    if snapshot_id is None:
        raise KeyError(f"{state_dir}: the snapshot store lists no snapshot")
    return aligner, store.load_snapshot(snapshot_id)


def _aligner_checkpoint(state_dir: Path) -> dict[str, Any]:
    """The state dir's last checkpoint, which holds an aligner; ``FileNotFoundError`` if there is none."""
    if not (state_dir / "snapshots").is_dir():  # checked first: opening a store would create the dir
        raise FileNotFoundError(f"{state_dir} is not the state dir of a dynalign run (no snapshots/ in it): pass "
                                "the --state DIR that `dynalign run` used")
    checkpoint = SnapshotStore(state_dir).read_checkpoint()
    if not checkpoint or not checkpoint.get("aligner"):
        raise FileNotFoundError(f"{state_dir} has no checkpoint with an aligner yet: run the service first")
    return checkpoint


def evaluate_state(state_dir: Path, anchors_file: Path, net: str, to: str, cfg: Config) -> dict:
    """Metrics of the state dir's latest alignments on the true pairs of ``anchors_file`` (node of ``net``, node
    of ``to``); ``ValueError`` when the networks were not aligned or no pair names their nodes (there would be
    no metric to report, only ``nan`` over 0 pairs)."""
    aligner = load_aligner(state_dir, cfg)
    pairs = read_pairs(anchors_file)
    if pair_key(net, to) not in aligner.alignments.matchers:
        aligned = ", ".join(f"{a} and {b}" for a, b in sorted(aligner.alignments.matchers)) or "none yet"
        raise ValueError(f"{state_dir} has no alignment of {net!r} with {to!r} (pairs aligned: {aligned}): pass "
                         "the networks of an aligned pair as --net and --to")

    def known(a: str, b: str) -> int:
        ids_a, ids_b = set(aligner.networks[a].node_ids), set(aligner.networks[b].node_ids)
        return sum(1 for u, v in pairs if u in ids_a and v in ids_b)

    direct, swapped = known(net, to), known(to, net)
    if swapped > direct:  # node ids may exist in both networks; the orientation that names more pairs is right
        raise ValueError(f"{anchors_file}: {swapped} of its {len(pairs)} pairs are nodes of {to} then {net}, only "
                         f"{direct} of {net} then {to}: --net and --to look swapped; pass --net {to} --to {net}")
    if not direct:
        raise ValueError(f"{anchors_file}: none of its {len(pairs)} pairs names a node of {net} (first column) and "
                         f"one of {to} (second column) that the aligner has seen: are these the right networks?")
    return aligner.alignments.evaluate(net, to, pairs)
