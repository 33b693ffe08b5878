"""Where the snapshot store keeps what under its state directory, and how its files are named.

One place for the names, because several parts of the store and its recovery must agree on them: the snapshot
files the manifest vouches for, the temp files a crash can leave behind, and the sizes the status command
reports. Layout::

    root/snapshots/00000001-<sha8>.npz   one snapshot per file (npz, no pickles, equal content: equal bytes), base or delta
    root/snapshots/manifest.jsonl        one JSON line per saved snapshot: kind, parent, sizes, sha256, counts,
                                         event-time range, event-log line range, model version
    root/events.log                      accepted events, one canonical JSON line each, in arrival order
    root/checkpoint                      newest checkpoint; root/checkpoint.prev the one before

Snapshot file names carry a prefix of their sha256, so rewriting a snapshot (a re-cut after recovery, a rebase
at compaction) never clobbers the file a manifest line vouches for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class StoreLayout:
    root: Path

    @property
    def snapshot_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def manifest_path(self) -> Path:
        return self.snapshot_dir / "manifest.jsonl"

    @property
    def events_path(self) -> Path:
        return self.root / "events.log"

    @property
    def checkpoint_path(self) -> Path:
        return self.root / "checkpoint"

    @property
    def previous_checkpoint_path(self) -> Path:
        return self.root / "checkpoint.prev"

    def create(self) -> None:
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)

    def snapshot_path(self, snapshot_id: int, sha256: str) -> Path:
        return self.snapshot_dir / f"{snapshot_id:08d}-{sha256[:8]}.npz"

    @staticmethod
    def legacy_snapshot_name(snapshot_id: int) -> str:
        """The file name of a snapshot written before names carried a digest."""
        return f"{snapshot_id:08d}.npz"

    def snapshot_files(self) -> Iterator[Path]:
        return self.snapshot_dir.glob("*.npz")

    def remove_temp_files(self) -> None:
        """Temp files of whole-file writes a crash interrupted (see :func:`snapshots.files.write_durably`)."""
        for directory in (self.root, self.snapshot_dir):
            for temp in directory.glob(".*.tmp"):
                temp.unlink(missing_ok=True)

    def size_bytes(self) -> dict[str, int]:
        """Bytes on disk: snapshot files, manifest, event log, checkpoints."""
        def size(path: Path) -> int:
            return path.stat().st_size if path.exists() else 0

        return {"snapshots": sum(p.stat().st_size for p in self.snapshot_files()),
                "manifest": size(self.manifest_path), "events_log": size(self.events_path),
                "checkpoints": size(self.checkpoint_path) + size(self.previous_checkpoint_path)}
