"""Which snapshots the store holds: the manifest's entries by snapshot id, and the files they vouch for.

The manifest is the store's only authority on what exists: a file it does not name is debris (a crash between
writing a file and appending its line, or a snapshot dropped), and a listed snapshot whose file is missing or of
the wrong size is reported, never loaded. A snapshot re-cut after a recovery appends a newer line for its id,
so the last complete line per id wins.
"""

from __future__ import annotations

from typing import Any

from snapshots.manifest import Manifest
from snapshots.store_layout import StoreLayout


class SnapshotIndex:
    """The snapshot manifest of ``layout``, read afresh on every query (it is small, and files change under it)."""

    def __init__(self, layout: StoreLayout):
        self._layout = layout
        self._manifest = Manifest(layout.manifest_path)

    def by_id(self) -> dict[int, dict[str, Any]]:
        """The last complete manifest line per id."""
        entries: dict[int, dict[str, Any]] = {}
        for entry in self._manifest.entries():
            entry.setdefault("file", self._layout.legacy_snapshot_name(int(entry["id"])))
            entries[int(entry["id"])] = entry
        return entries

    def entries(self) -> list[dict[str, Any]]:
        """Every snapshot listed, by id, whatever the state of its file."""
        return [entry for _, entry in sorted(self.by_id().items())]

    def entry(self, snapshot_id: int) -> dict[str, Any]:
        """The entry of one snapshot (``KeyError`` if it is not listed)."""
        entry = self.by_id().get(snapshot_id)
        if entry is None:
            raise KeyError(f"snapshot {snapshot_id} is not in {self._layout.manifest_path}")
        return entry

    def present(self) -> list[dict[str, Any]]:
        """Entries, by id, whose file exists with the recorded size (the sha256 is checked on load)."""
        listed = []
        for entry in self.entries():
            try:
                size = (self._layout.snapshot_dir / entry["file"]).stat().st_size
            except FileNotFoundError:
                continue
            if size == entry["bytes"]:
                listed.append(entry)
        return listed

    def append(self, entry: dict[str, Any]) -> None:
        """List a snapshot whose file is durable already."""
        self._manifest.append(entry)

    def keep_only(self, entries: list[dict[str, Any]]) -> None:
        """Rewrite the manifest to list ``entries`` alone, and remove the files no longer listed."""
        self._manifest.rewrite(entries)
        self.remove_orphans()

    def remove_orphans(self) -> None:
        """Snapshot files no manifest line names: left by a crash between a file and its line, or dropped."""
        named = {e["file"] for e in self.by_id().values()}
        for path in self._layout.snapshot_files():
            if path.name not in named:
                path.unlink(missing_ok=True)

    def trim_torn_tail(self) -> None:
        self._manifest.trim_torn_tail()
