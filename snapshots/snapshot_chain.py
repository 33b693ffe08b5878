"""Snapshot files as bases and deltas: what a new snapshot is encoded against, and what a load decodes.

The store grows with the changes rather than with snapshots x graph size: a full *base* every ``base_every``
cuts and, in between, only the difference to the previous snapshot (:mod:`snapshots.snapshot_codec`). So a
load decodes a chain back to a base, and the last snapshot saved or loaded is kept: it is the next delta's
parent, and usually where the next load's chain ends. A damaged predecessor is never built upon, and a chain
whose link is damaged or missing raises :class:`StoreCorruption` rather than loading something else.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Any, Collection

from snapshots.files import StoreCorruption, read_verified, write_durably
from snapshots.snapshot import Snapshot
from snapshots.snapshot_codec import decode_snapshot, encode_snapshot, snapshot_counts
from snapshots.snapshot_index import SnapshotIndex
from snapshots.store_layout import StoreLayout

DEFAULT_BASE_EVERY = 10


class SnapshotKind(StrEnum):
    """A manifest entry's ``kind``: what its file holds."""

    BASE = "base"  # the whole snapshot
    DELTA = "delta"  # the difference to its parent, snapshot ``id - 1``


class SnapshotChain:
    """Writes and reads the snapshot files of ``layout`` listed in ``index``; a base at least every
    ``base_every`` cuts (restoring one reads at most that many files)."""

    def __init__(self, layout: StoreLayout, index: SnapshotIndex, base_every: int = DEFAULT_BASE_EVERY):
        if base_every < 1:
            raise ValueError(f"base_every must be >= 1, got {base_every}")
        self.base_every = base_every
        self._layout = layout
        self._index = index
        self._cache: Snapshot | None = None  # the last snapshot saved or loaded: the next delta's parent

    def save(self, snapshot: Snapshot, first_log_line: int, model_version: str | None) -> dict[str, Any]:
        """Write ``snapshot`` (a delta on snapshot ``id - 1`` unless a base is due) and list it; its log range
        starts where its predecessor's ended, else at ``first_log_line``. Returns its entry."""
        previous = self._index.by_id().get(snapshot.id - 1)
        parent = None
        if previous is not None and previous.get("depth", 0) + 1 < self.base_every:
            if self._cache is not None and self._cache.id == snapshot.id - 1:
                parent = self._cache  # the usual case: the snapshot saved just before
            else:
                try:
                    parent = self.load(snapshot.id - 1)
                except StoreCorruption:
                    parent = None  # a damaged predecessor is never built upon: start a new base
        log_start = previous["log"][1] if previous is not None and "log" in previous else first_log_line
        entry = self._write(snapshot, parent, log_start, model_version)
        self._cache = snapshot
        return entry

    def load(self, snapshot_id: int) -> Snapshot:
        """The snapshot as saved; ``KeyError`` if never listed, :class:`StoreCorruption` if a file it needs (its
        own, or one of the deltas and base it is built on) is damaged."""
        by_id = self._index.by_id()
        if snapshot_id not in by_id:
            raise KeyError(f"snapshot {snapshot_id} is not in {self._layout.manifest_path}")
        chain = [by_id[snapshot_id]]  # newest first, back to a base (or to the cached snapshot)
        while chain[-1].get("parent") is not None:
            parent_id = chain[-1]["parent"]
            if self._cache is not None and self._cache.id == parent_id:
                break
            parent_entry = by_id.get(parent_id)
            if parent_entry is None:
                raise StoreCorruption(f"snapshot {chain[-1]['id']} is a delta on snapshot {parent_id}, which is "
                                      "no longer in the manifest")
            chain.append(parent_entry)
        files = [self._verified_bytes(entry) for entry in chain]  # the snapshot's own file is checked first
        base = self._cache if chain[-1].get("parent") is not None else None
        snapshot = decode_snapshot(files[-1], base)
        for data in reversed(files[:-1]):
            snapshot = decode_snapshot(data, snapshot)
        self._cache = snapshot
        return snapshot

    def rewrite(self, snapshot: Snapshot, parent: Snapshot | None) -> dict[str, Any]:
        """Write ``snapshot`` again over a damaged file, encoded against ``parent``, with the log range and model
        version its entry recorded; the new line supersedes the old one and the damaged file goes."""
        old = self._index.entry(snapshot.id)
        entry = self._write(snapshot, parent, old["log"][0], old.get("model_version"))
        self._index.remove_orphans()
        self._cache = None
        return entry

    def damaged(self) -> list[dict[str, Any]]:
        """The entries whose file is missing, or not of the size and sha256 recorded (reads every file)."""
        bad = []
        for entry in self._index.entries():
            try:
                self._verified_bytes(entry)
            except StoreCorruption:
                bad.append(entry)
        return bad

    def forget_cached(self, ids: Collection[int] | None = None) -> None:
        """Stop building on the kept snapshot if its id is among ``ids`` (dropped from the index), or in any case."""
        if self._cache is not None and (ids is None or self._cache.id in ids):
            self._cache = None

    def _write(self, snapshot: Snapshot, parent: Snapshot | None, log_start: int,
               model_version: str | None) -> dict[str, Any]:
        data = encode_snapshot(snapshot, parent)
        digest = hashlib.sha256(data).hexdigest()
        path = self._layout.snapshot_path(snapshot.id, digest)
        write_durably(path, data)
        previous = self._index.by_id().get(snapshot.id - 1) if parent is not None else None
        entry = {
            "id": snapshot.id,
            "kind": (SnapshotKind.BASE if parent is None else SnapshotKind.DELTA).value,
            "parent": None if parent is None else parent.id,
            "depth": 0 if parent is None else (previous or {}).get("depth", 0) + 1,
            "start_time": snapshot.start_time,
            "end_time": snapshot.end_time,
            "events": snapshot.events,
            "log": [log_start, snapshot.arrived],
            "model_version": model_version,
            **snapshot_counts(snapshot),
            "file": path.name,
            "bytes": len(data),
            "sha256": digest,
        }
        self._index.append(entry)  # only now that the file is durable: a listed file is a complete one
        return entry

    def _verified_bytes(self, entry: dict[str, Any]) -> bytes:
        return read_verified(self._layout.snapshot_dir / entry["file"], entry, f"snapshot {entry['id']}")
