"""Crash-safe persistence of snapshots, the event log and checkpoints under one state directory.

A streaming service dies at arbitrary points (OOM kill, deploy, power loss), so every file here is either
complete and verified or ignored; nothing is ever half-read. Users also go back in time (audits, backfills,
replays), so the store keeps every retained snapshot readable while growing with the *changes*: a full *base*
snapshot every ``base_every`` cuts and, in between, only the difference to the previous snapshot.

:class:`SnapshotStore` is the façade over its parts, each in its own module: where files live and how they are
named (:mod:`snapshots.store_layout`), the manifest of snapshots (:mod:`snapshots.snapshot_index`), bases and
deltas (:mod:`snapshots.snapshot_chain`), the event log (:mod:`snapshots.event_log`), the checkpoint pair
(:mod:`snapshots.checkpoints`) and retention (:mod:`snapshots.retention`). Encodings live beside them:
snapshot files in :mod:`snapshots.snapshot_codec`, checkpoints in :mod:`snapshots.checkpoint_codec` (plain
data, no pickle), whole-file writes and checked reads in :mod:`snapshots.files`.

Recovery contract:

- Whole files (snapshots, checkpoints, a compacted manifest or event log) are written to a temp file in the
  same directory, fsynced, renamed into place and the directory fsynced, so a reader sees the old file or the
  new one, never a mix. Snapshot file names carry a prefix of their sha256, so rewriting a snapshot (a re-cut
  after recovery, a rebase at compaction) never clobbers the file a manifest line vouches for.
- A snapshot's manifest line is appended (and fsynced) only after its file is durable: a listed snapshot whose
  file is missing, of the wrong size or (on load) of the wrong sha256 is reported, never loaded silently. A
  torn last manifest line is ignored and trimmed before the next append.
- :meth:`SnapshotStore.write_checkpoint` syncs the event log first and records its durable size in the
  checkpoint as ``events_log_size``; the previous checkpoint stays as ``checkpoint.prev``.
- :meth:`SnapshotStore.recover` (call it once at start-up) returns the newest intact checkpoint (falling back to
  ``checkpoint.prev``), truncates ``events.log`` to the size that checkpoint recorded (to empty without one)
  and removes stray temp files and snapshot files no manifest line names. The caller restores its state from
  the checkpoint, forgets snapshots cut after it (:meth:`SnapshotStore.forget_after`) and re-reads the source
  from the position saved in it, so events and snapshots produced after the checkpoint are produced again.

Offsets in the event log are absolute: when :meth:`SnapshotStore.compact` drops the log's head (retention), the
file starts with a header giving the byte offset and line number of its first event, and every offset
recorded before stays valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

from snapshots.checkpoints import EVENTS_LOG_SIZE, Checkpoints
from snapshots.event_log import EventLog
from snapshots.retention import Retention
from snapshots.snapshot import Snapshot
from snapshots.snapshot_chain import DEFAULT_BASE_EVERY, SnapshotChain
from snapshots.snapshot_index import SnapshotIndex
from snapshots.store_layout import StoreLayout


class SnapshotStore:
    """Snapshots, event log and checkpoints under ``root`` (created if missing). Not for concurrent writers.

    ``base_every``: a full snapshot at least every this many cuts (restoring one reads at most that many
    files). ``retain``: :meth:`compact` keeps the newest this many snapshots (None: all). The paths of the
    files are ``layout``'s.
    """

    def __init__(self, root: Path | str, base_every: int = DEFAULT_BASE_EVERY, retain: int | None = None):
        self.layout = StoreLayout(Path(root))
        self.index = SnapshotIndex(self.layout)
        self.chain = SnapshotChain(self.layout, self.index, base_every)
        self.retention = Retention(retain)
        self.layout.create()
        self.log = EventLog(self.layout.events_path)
        self.checkpoints = Checkpoints(self.layout.checkpoint_path, self.layout.previous_checkpoint_path)

    @property
    def root(self) -> Path:
        return self.layout.root

    # -- snapshots ---------------------------------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot, model_version: str | None = None) -> dict[str, Any]:
        """Write the snapshot durably (a delta against snapshot ``id - 1`` unless a base is due), then append and
        return its manifest entry. ``model_version`` names the model current when it was cut."""
        return self.chain.save(snapshot, self.log.start_line, model_version)

    def load_snapshot(self, snapshot_id: int) -> Snapshot:
        """The snapshot as saved; ``KeyError`` if never listed, :class:`StoreCorruption` if a file it needs (its
        own, or one of the deltas and base it is built on) is damaged."""
        return self.chain.load(snapshot_id)

    def list_snapshots(self) -> list[dict[str, Any]]:
        """Manifest entries, by id, whose file exists with the recorded size (the sha256 is checked on load)."""
        return self.index.present()

    def manifest_entries(self) -> list[dict[str, Any]]:
        """Every snapshot the manifest lists, by id, whatever the state of its file (see :meth:`damaged`)."""
        return self.index.entries()

    def snapshot_entry(self, snapshot_id: int) -> dict[str, Any]:
        """The manifest entry of one snapshot (``KeyError`` if it is not listed)."""
        return self.index.entry(snapshot_id)

    def latest_id(self) -> int | None:
        listed = self.list_snapshots()
        return listed[-1]["id"] if listed else None

    def snapshot_at(self, time: float) -> int | None:
        """The newest snapshot whose window ended at or before event time ``time`` (None: none had yet)."""
        ids = [e["id"] for e in self.list_snapshots() if e["end_time"] <= time]
        return ids[-1] if ids else None

    def damaged(self) -> list[dict[str, Any]]:
        """The manifest entries whose file is missing, or not of the size and sha256 recorded (reads every file)."""
        return self.chain.damaged()

    def rewrite_snapshot(self, snapshot: Snapshot, parent: Snapshot | None) -> dict[str, Any]:
        """Write ``snapshot`` again over a damaged file (see :mod:`snapshots.repair`): encoded against ``parent``
        as its manifest entry says, with the entry's log range and model version; the new manifest line
        supersedes the old one, and the damaged file goes. Returns the new entry."""
        return self.chain.rewrite(snapshot, parent)

    def forget_after(self, snapshot_id: int | None) -> list[int]:
        """Drop the snapshots after ``snapshot_id`` from the manifest (they are cut again after a recovery);
        returns their ids."""
        entries = self.index.entries()
        later = [e["id"] for e in entries if snapshot_id is None or e["id"] > snapshot_id]
        if later:
            self.index.keep_only([e for e in entries if e["id"] not in later])
            self.chain.forget_cached(later)
        return later

    def compact(self, keep_from: int | None = None) -> dict[str, Any]:
        """Apply retention: keep at least the newest ``retain`` snapshots and every one from ``keep_from`` on (the
        caller still needs them), dropping whole base groups before them (so no delta loses its base), and the
        event-log lines before the oldest kept snapshot's range. Returns what was dropped."""
        listed = self.list_snapshots()
        cutoff = self.retention.first_kept(listed, keep_from)
        if cutoff is None:
            return {"dropped": [], "log_lines_dropped": 0}
        kept = [e for e in listed if e["id"] >= cutoff]
        dropped = [e["id"] for e in listed if e["id"] < cutoff]
        if dropped:
            self.index.keep_only(kept)
            self.chain.forget_cached(dropped)
        before = self.log.start_line
        # Never drop log bytes a checkpoint still counts on: recovery may fall back to checkpoint.prev.
        self.log.trim(kept[0]["log"][0], max_byte=min(self.checkpoints.log_sizes(), default=self.log.durable_size))
        return {"dropped": dropped, "log_lines_dropped": self.log.start_line - before}

    def size_bytes(self) -> dict[str, int]:
        """Bytes on disk: snapshot files, manifest, event log, checkpoints."""
        return self.layout.size_bytes()

    # -- event log ---------------------------------------------------------------------------------------------

    def append_events(self, lines: Iterable[str]) -> None:
        """Append one line per event (buffered; durable after :meth:`sync`). Lines must not contain newlines."""
        self.log.append(lines)

    def sync(self) -> None:
        """Flush and fsync the event log; :meth:`events_log_size` then counts everything appended."""
        self.log.sync()

    def events_log_size(self) -> int:
        """Bytes of the event log known to be durable (as of the last :meth:`sync`), counted from the first event
        ever logged (bytes dropped by retention included)."""
        return self.log.durable_size

    @property
    def log_start_line(self) -> int:
        """Number (from 0, over the whole history) of the first event line the log still holds."""
        return self.log.start_line

    def read_events(self, start_byte: int | None = None) -> Iterator[str]:
        """Complete event lines from absolute byte offset ``start_byte`` (a line start; default: the first line
        retained); a torn last line is skipped."""
        return self.log.read(start_byte)

    def read_lines(self, start_line: int = 0, end_line: int | None = None) -> Iterator[str]:
        """Event lines numbered ``[start_line, end_line)`` over the whole history (see ``Snapshot.arrived``);
        ``ValueError`` if retention dropped some of them."""
        return self.log.read_lines(start_line, end_line)

    def start_log_at(self, start_byte: int, start_line: int) -> None:
        """Make an empty event log continue a history kept elsewhere (a state dir started from a savepoint):
        offsets recorded there stay meaningful here."""
        self.log.start_at(start_byte, start_line)

    def trim_log(self, before_line: int, max_byte: int | None = None) -> None:
        """Drop event lines numbered below ``before_line``, atomically; never bytes past ``max_byte`` (absolute)
        nor any that are not durable yet."""
        self.log.trim(before_line, max_byte)

    def close(self) -> None:
        """Sync and close the event log (appending again reopens it)."""
        self.log.close()

    # -- checkpoints and recovery ------------------------------------------------------------------------------

    def write_checkpoint(self, state: dict[str, Any]) -> None:
        """Durably replace the checkpoint with ``state`` plus ``events_log_size``; the old one becomes ``.prev``.

        ``state`` holds plain data (see the module docstring). The event log is synced first, and its durable size
        is recorded: a caller-supplied ``events_log_size`` must agree with it.
        """
        self.log.sync()
        self.checkpoints.write(state, self.log.durable_size)

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The newest intact checkpoint (``checkpoint``, else ``checkpoint.prev``), or ``None``."""
        return self.checkpoints.read()

    def recover(self) -> dict[str, Any] | None:
        """Bring the directory back to the newest intact checkpoint and return it (see the module docstring)."""
        start, end = self.log.on_disk()
        self.layout.remove_temp_files()
        self.index.trim_torn_tail()
        self.index.remove_orphans()
        self.chain.forget_cached()
        checkpoint = self.checkpoints.backed_by(self.log.path, start, end)
        self.log.truncate(int(checkpoint[EVENTS_LOG_SIZE]) if checkpoint is not None else start)
        return checkpoint
