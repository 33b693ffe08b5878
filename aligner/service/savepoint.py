"""Savepoints: a user-triggered, self-contained copy of a worker's state to resume from elsewhere or later.

A checkpoint belongs to its state dir and is overwritten every few seconds; a savepoint is a file the user keeps
(before an upgrade, to fork an experiment, to move a worker). It bundles the newest intact checkpoint, which
holds the aligner's :meth:`Aligner.state_bytes` (model weights, the meta-learned initialisation and its
per-parameter learning rates, optimiser moments, per-node temporal state, online learners' and drift
detectors' state, random generator: whatever the aligner saves), the graph and snapshot cutter, the stream
position (Kafka offsets per partition, or the file offset), the snapshot id and the update Redis has not taken
yet; plus the snapshots cut but not aligned yet, which a new state dir would otherwise lack. It uses the
checkpoint's file format (magic, sha256, no pickles) and is written atomically.

``dynalign run --from-savepoint FILE --state NEW_DIR`` seeds a state dir that has no checkpoint with it; the
run then resumes exactly as a restart of the original worker would. The savepoint carries the original's run
settings (:mod:`aligner.service.run_settings`), so the resume needs none of its flags; the file, the new dir and the
settings are all checked (:func:`open_savepoint`) before anything is written.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from aligner.service.run_settings import read_run_settings, started
from snapshots.checkpoint_codec import encode_checkpoint, read_checkpoint_file
from snapshots.files import write_durably
from snapshots.snapshot_codec import snapshot_from_bytes, snapshot_to_bytes
from snapshots.store import SnapshotStore

FORMAT = "dynalign-savepoint/1"


def write_savepoint(state_dir: Path, path: Path) -> dict[str, Any]:
    """Bundle the state dir's newest intact checkpoint into ``path``; returns a summary of what it holds."""
    store = SnapshotStore(state_dir)
    checkpoint = store.read_checkpoint()
    if checkpoint is None:
        raise FileNotFoundError(f"{state_dir} has no intact checkpoint yet: run the service first")
    aligned, cut = checkpoint.get("aligned_through") or 0, checkpoint.get("snapshot_id") or 0
    backlog = [snapshot_to_bytes(store.load_snapshot(e["id"])) for e in store.list_snapshots()
               if aligned < e["id"] <= cut]
    summary = {
        "format": FORMAT, "created_at": time.time(), "host": socket.gethostname(), "state_dir": str(state_dir),
        "snapshot_id": checkpoint.get("snapshot_id"), "aligned_through": checkpoint.get("aligned_through"),
        "model_version": checkpoint.get("model_version"), "position": checkpoint.get("position"),
        "events_log_size": checkpoint["events_log_size"], "unaligned_snapshots": len(backlog),
    }
    write_durably(path, encode_checkpoint({**summary, "checkpoint": checkpoint, "snapshots": backlog,
                                           "run": read_run_settings(state_dir)}))
    return {**summary, "bytes": path.stat().st_size, "aligner_bytes": len(checkpoint.get("aligner") or b"")}


def read_savepoint(path: Path) -> dict[str, Any]:
    """A savepoint's content; ``ValueError`` if the file is not an intact savepoint."""
    content = read_checkpoint_file(path)
    if content is None or content.get("format") != FORMAT:
        raise ValueError(f"{path} is not an intact dynalign savepoint (torn, corrupt or another kind of file)")
    return content


def open_savepoint(savepoint: Path, state_dir: Path) -> dict[str, Any]:
    """The savepoint's content, once it is known that it can seed ``state_dir``: ``ValueError`` if the file is not
    an intact savepoint or the dir already has a checkpoint. Writes nothing."""
    content = read_savepoint(savepoint)
    if started(state_dir):
        raise ValueError(f"{state_dir} already has a checkpoint: resume from a savepoint into a new state dir")
    return content


def seed_state_dir(savepoint: Path | dict[str, Any], store: SnapshotStore) -> dict[str, Any]:
    """Make the (checkpoint-less) state dir of ``store`` resume from ``savepoint`` (a file, or the content
    :func:`open_savepoint` read from one); returns the savepoint's content."""
    if store.read_checkpoint() is not None:
        raise ValueError(f"{store.root} already has a checkpoint: resume from a savepoint into a new state dir")
    content = savepoint if isinstance(savepoint, dict) else read_savepoint(savepoint)
    checkpoint = dict(content["checkpoint"])
    store.recover()  # an empty or checkpoint-less dir: drops whatever a run without a checkpoint left
    store.forget_after(None)
    # Offsets in the event log continue the original's, so snapshot log ranges keep their meaning.
    store.start_log_at(int(checkpoint.pop("events_log_size")), int(checkpoint["cutter"].get("offered", 0)))
    for data in content["snapshots"]:
        store.save_snapshot(snapshot_from_bytes(data))
    checkpoint["deadletter_size"] = 0  # the dead-letter file of this dir starts empty
    store.write_checkpoint(checkpoint)
    return content
