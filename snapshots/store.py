"""Crash-safe persistence of snapshots, the event log and checkpoints under one state directory.

A streaming service dies at arbitrary points (OOM kill, deploy, power loss), so every file here is either
complete and verified or ignored; nothing is ever half-read. Users also go back in time (audits, backfills,
replays), so the store keeps every retained snapshot readable while growing with the *changes*: a full *base*
snapshot every ``base_every`` cuts and, in between, only the difference to the previous snapshot
(:mod:`snapshots.delta`). Layout::

    root/snapshots/00000001-<sha8>.npz   one snapshot per file (npz, no pickles, equal content: equal bytes), base or delta
    root/snapshots/manifest.jsonl        one JSON line per saved snapshot: kind, parent, sizes, sha256, counts,
                                         event-time range, event-log line range, model version
    root/events.log                      accepted events, one canonical JSON line each, in arrival order
    root/checkpoint                      newest checkpoint; root/checkpoint.prev the one before

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
file starts with a ``#dynalign-log`` header giving the byte offset and line number of its first event, and every
offset recorded before stays valid.

Encodings live beside it: snapshot files in :mod:`snapshots.snapshot_codec`, checkpoints in
:mod:`snapshots.checkpoint_codec` (plain data, no pickle), whole-file writes and checked reads in
:mod:`snapshots.files`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from snapshots.checkpoint_codec import encode_checkpoint, read_checkpoint_file
from snapshots.files import StoreCorruption, complete_lines, fsync_dir, json_line, read_verified, trim_torn_tail, write_durably
from snapshots.snapshot import Snapshot
from snapshots.snapshot_codec import decode_snapshot, encode_snapshot, snapshot_counts

log = logging.getLogger(__name__)

_EVENTS_LOG_SIZE = "events_log_size"
_LOG_HEADER = b"#dynalign-log "
DEFAULT_BASE_EVERY = 10


class Manifest:
    """An append-only JSON-lines index whose lines are durable once :meth:`append` returns; a torn last line (a
    crash mid-append) is ignored and trimmed before the next append; :meth:`rewrite` replaces it atomically."""

    def __init__(self, path: Path):
        self.path = path

    def entries(self) -> list[dict[str, Any]]:
        out = []
        for line in complete_lines(self.path):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # only a torn append can produce this, and what it described was never acknowledged
        return out

    def append(self, entry: dict[str, Any]) -> None:
        trim_torn_tail(self.path)
        with open(self.path, "ab") as f:
            f.write(json_line(entry))
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, entries: list[dict[str, Any]]) -> None:
        write_durably(self.path, b"".join(json_line(e) for e in entries))

    def trim_torn_tail(self) -> None:
        trim_torn_tail(self.path)


class SnapshotStore:
    """Snapshots, event log and checkpoints under ``root`` (created if missing). Not for concurrent writers.

    ``base_every``: a full snapshot at least every this many cuts (restoring one reads at most that many
    files). ``retain``: :meth:`compact` keeps the newest this many snapshots (None: all).
    """

    def __init__(self, root: Path | str, base_every: int = DEFAULT_BASE_EVERY, retain: int | None = None):
        if base_every < 1:
            raise ValueError(f"base_every must be >= 1, got {base_every}")
        if retain is not None and retain < 1:
            raise ValueError(f"retain must be >= 1 snapshots (or None for all), got {retain}")
        self.root = Path(root)
        self.base_every = base_every
        self.retain = retain
        self.snapshot_dir = self.root / "snapshots"
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.snapshot_dir / "manifest.jsonl"
        self.manifest = Manifest(self.manifest_path)
        self.events_path = self.root / "events.log"
        self.checkpoint_path = self.root / "checkpoint"
        self.previous_checkpoint_path = self.root / "checkpoint.prev"
        self._log: IO[bytes] | None = None
        self._read_log_header()
        self._durable_log_size = self._log_size_on_disk()
        self._cache: Snapshot | None = None  # the last snapshot saved or loaded: the next delta's parent

    # -- snapshots ---------------------------------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot, model_version: str | None = None) -> dict[str, Any]:
        """Write the snapshot durably (a delta against snapshot ``id - 1`` unless a base is due), then append and
        return its manifest entry. ``model_version`` names the model current when it was cut."""
        manifest = self._manifest()
        previous = manifest.get(snapshot.id - 1)
        parent = None
        if previous is not None and previous.get("depth", 0) + 1 < self.base_every:
            if self._cache is not None and self._cache.id == snapshot.id - 1:
                parent = self._cache  # the usual case: the snapshot saved just before
            else:
                try:
                    parent = self.load_snapshot(snapshot.id - 1)
                except StoreCorruption:
                    parent = None  # a damaged predecessor is never built upon: start a new base
        log_start = previous["log"][1] if previous is not None and "log" in previous else self.log_start_line
        entry = self._write_snapshot(snapshot, parent, log_start, model_version)
        self._cache = snapshot
        return entry

    def load_snapshot(self, snapshot_id: int) -> Snapshot:
        """The snapshot as saved; ``KeyError`` if never listed, :class:`StoreCorruption` if a file it needs (its
        own, or one of the deltas and base it is built on) is damaged."""
        manifest = self._manifest()
        if snapshot_id not in manifest:
            raise KeyError(f"snapshot {snapshot_id} is not in {self.manifest_path}")
        chain = [manifest[snapshot_id]]  # newest first, back to a base (or to the cached snapshot)
        while chain[-1].get("parent") is not None:
            parent_id = chain[-1]["parent"]
            if self._cache is not None and self._cache.id == parent_id:
                break
            parent_entry = manifest.get(parent_id)
            if parent_entry is None:
                raise StoreCorruption(f"snapshot {chain[-1]['id']} is a delta on snapshot {parent_id}, which is "
                                      "no longer in the manifest")
            chain.append(parent_entry)
        files = [self._verified_bytes(entry) for entry in chain]  # the snapshot's own file is checked first
        snapshot = self._cache if chain[-1].get("parent") is not None else None
        for data in reversed(files):
            snapshot = decode_snapshot(data, snapshot)
        self._cache = snapshot
        return snapshot

    def list_snapshots(self) -> list[dict[str, Any]]:
        """Manifest entries, by id, whose file exists with the recorded size (the sha256 is checked on load)."""
        listed = []
        for snapshot_id, entry in sorted(self._manifest().items()):
            try:
                size = (self.snapshot_dir / entry["file"]).stat().st_size
            except FileNotFoundError:
                continue
            if size == entry["bytes"]:
                listed.append(entry)
        return listed

    def snapshot_entry(self, snapshot_id: int) -> dict[str, Any]:
        """The manifest entry of one snapshot (``KeyError`` if it is not listed)."""
        entry = self._manifest().get(snapshot_id)
        if entry is None:
            raise KeyError(f"snapshot {snapshot_id} is not in {self.manifest_path}")
        return entry

    def latest_id(self) -> int | None:
        listed = self.list_snapshots()
        return listed[-1]["id"] if listed else None

    def snapshot_at(self, time: float) -> int | None:
        """The newest snapshot whose window ended at or before event time ``time`` (None: none had yet)."""
        ids = [e["id"] for e in self.list_snapshots() if e["end_time"] <= time]
        return ids[-1] if ids else None

    def forget_after(self, snapshot_id: int | None) -> list[int]:
        """Drop the snapshots after ``snapshot_id`` from the manifest (they are cut again after a recovery);
        returns their ids."""
        manifest = self._manifest()
        later = sorted(i for i in manifest if snapshot_id is None or i > snapshot_id)
        if later:
            self._rewrite_manifest([e for i, e in sorted(manifest.items()) if i not in later])
            self._remove_orphans()
            if self._cache is not None and self._cache.id in later:
                self._cache = None
        return later

    def compact(self, keep_from: int | None = None) -> dict[str, Any]:
        """Apply retention: keep at least the newest ``retain`` snapshots and every one from ``keep_from`` on (the
        caller still needs them), dropping whole base groups before them (so no delta loses its base), and the
        event-log lines before the oldest kept snapshot's range. Returns what was dropped."""
        listed = self.list_snapshots()
        nothing = {"dropped": [], "log_lines_dropped": 0}
        if self.retain is None or len(listed) <= self.retain:
            return nothing
        cutoff = listed[-self.retain]["id"] if keep_from is None else min(listed[-self.retain]["id"], keep_from)
        bases = [e["id"] for e in listed if e.get("parent") is None and e["id"] <= cutoff]
        if not bases:
            return nothing
        cutoff = bases[-1]
        kept = [e for e in listed if e["id"] >= cutoff]
        dropped = [e["id"] for e in listed if e["id"] < cutoff]
        if dropped:
            self._rewrite_manifest(kept)
            self._remove_orphans()
            if self._cache is not None and self._cache.id < cutoff:
                self._cache = None
        before = self.log_start_line
        # Never drop log bytes a checkpoint still counts on: recovery may fall back to checkpoint.prev.
        limits = [state[_EVENTS_LOG_SIZE] for state in (read_checkpoint_file(p) for p in
                  (self.checkpoint_path, self.previous_checkpoint_path)) if state is not None]
        self.trim_log(kept[0]["log"][0], max_byte=min(limits, default=self._durable_log_size))
        return {"dropped": dropped, "log_lines_dropped": self.log_start_line - before}

    def size_bytes(self) -> dict[str, int]:
        """Bytes on disk: snapshot files, manifest, event log, checkpoints."""
        snapshots = sum(p.stat().st_size for p in self.snapshot_dir.glob("*.npz"))
        other = {name: (self.root / name).stat().st_size if (self.root / name).exists() else 0
                 for name in ("events.log", "checkpoint", "checkpoint.prev")}
        manifest = self.manifest_path.stat().st_size if self.manifest_path.exists() else 0
        return {"snapshots": snapshots, "manifest": manifest, "events_log": other["events.log"],
                "checkpoints": other["checkpoint"] + other["checkpoint.prev"]}

    def _write_snapshot(self, snapshot: Snapshot, parent: Snapshot | None, log_start: int,
                        model_version: str | None) -> dict[str, Any]:
        data = encode_snapshot(snapshot, parent)
        digest = hashlib.sha256(data).hexdigest()
        path = self.snapshot_dir / f"{snapshot.id:08d}-{digest[:8]}.npz"
        write_durably(path, data)
        previous = self._manifest().get(snapshot.id - 1) if parent is not None else None
        entry = {
            "id": snapshot.id,
            "kind": "base" if parent is None else "delta",
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
        self.manifest.append(entry)
        return entry

    def manifest_entries(self) -> list[dict[str, Any]]:
        """Every snapshot the manifest lists, by id, whatever the state of its file (see :meth:`damaged`)."""
        return [entry for _, entry in sorted(self._manifest().items())]

    def damaged(self) -> list[dict[str, Any]]:
        """The manifest entries whose file is missing, or not of the size and sha256 recorded (reads every file)."""
        bad = []
        for entry in self.manifest_entries():
            try:
                self._verified_bytes(entry)
            except StoreCorruption:
                bad.append(entry)
        return bad

    def rewrite_snapshot(self, snapshot: Snapshot, parent: Snapshot | None) -> dict[str, Any]:
        """Write ``snapshot`` again over a damaged file (see :mod:`snapshots.repair`): encoded against ``parent``
        as its manifest entry says, with the entry's log range and model version; the new manifest line
        supersedes the old one, and the damaged file goes. Returns the new entry."""
        old = self.snapshot_entry(snapshot.id)
        entry = self._write_snapshot(snapshot, parent, old["log"][0], old.get("model_version"))
        self._remove_orphans()
        self._cache = None
        return entry

    def _verified_bytes(self, entry: dict[str, Any]) -> bytes:
        return read_verified(self.snapshot_dir / entry["file"], entry, f"snapshot {entry['id']}")

    def _manifest(self) -> dict[int, dict[str, Any]]:
        """The last complete manifest line per id (a snapshot re-cut after recovery appends a newer line)."""
        entries: dict[int, dict[str, Any]] = {}
        for entry in self.manifest.entries():
            entry.setdefault("file", f"{int(entry['id']):08d}.npz")  # written before files carried a digest
            entries[int(entry["id"])] = entry
        return entries

    def _rewrite_manifest(self, entries: list[dict[str, Any]]) -> None:
        self.manifest.rewrite(entries)

    def _remove_orphans(self) -> None:
        """Snapshot files no manifest line names: left by a crash between a file and its line, or dropped."""
        named = {e["file"] for e in self._manifest().values()}
        for path in self.snapshot_dir.glob("*.npz"):
            if path.name not in named:
                path.unlink(missing_ok=True)

    # -- event log ---------------------------------------------------------------------------------------------

    def append_events(self, lines: Iterable[str]) -> None:
        """Append one line per event (buffered; durable after :meth:`sync`). Lines must not contain newlines."""
        batch = lines if isinstance(lines, list) else list(lines)
        if not batch:
            return
        # Checked on the joined text, in C, rather than line by line: no line holds a break exactly when the text
        # holds only the joining ones, and a line starts with '#' exactly when the text does or one follows a break.
        text = "\n".join(batch)
        if "\r" in text or text.count("\n") != len(batch) - 1:
            raise ValueError("event log lines must not contain line breaks (pass canonical single-line JSON)")
        if text.startswith("#") or "\n#" in text:
            raise ValueError("event log lines must not start with '#' (reserved for the log header)")
        self._open_log().write((text + "\n").encode("utf-8"))

    def sync(self) -> None:
        """Flush and fsync the event log; :meth:`events_log_size` then counts everything appended."""
        if self._log is None:
            return
        self._log.flush()
        os.fsync(self._log.fileno())
        self._durable_log_size = self._log_start_byte + os.fstat(self._log.fileno()).st_size - self._header_len

    def events_log_size(self) -> int:
        """Bytes of the event log known to be durable (as of the last :meth:`sync`), counted from the first event
        ever logged (bytes dropped by retention included)."""
        return self._durable_log_size

    @property
    def log_start_line(self) -> int:
        """Number (from 0, over the whole history) of the first event line the log still holds."""
        return self._log_start_line

    def read_events(self, start_byte: int | None = None) -> Iterator[str]:
        """Complete event lines from absolute byte offset ``start_byte`` (a line start; default: the first line
        retained); a torn last line is skipped."""
        if self._log is not None:
            self._log.flush()
        if start_byte is None:
            start_byte = self._log_start_byte
        if start_byte < self._log_start_byte:
            raise ValueError(f"event log bytes before {self._log_start_byte} were dropped by retention")
        return complete_lines(self.events_path, start_byte - self._log_start_byte + self._header_len)

    def read_lines(self, start_line: int = 0, end_line: int | None = None) -> Iterator[str]:
        """Event lines numbered ``[start_line, end_line)`` over the whole history (see ``Snapshot.arrived``);
        ``ValueError`` if retention dropped some of them."""
        if start_line < self._log_start_line:
            raise ValueError(f"event log lines before {self._log_start_line} were dropped by retention "
                             f"(asked from line {start_line})")
        number = self._log_start_line
        for line in self.read_events():
            if end_line is not None and number >= end_line:
                return
            if number >= start_line:
                yield line
            number += 1

    def start_log_at(self, start_byte: int, start_line: int) -> None:
        """Make an empty event log continue a history kept elsewhere (a state dir started from a savepoint):
        offsets recorded there stay meaningful here."""
        if self._log_size_on_disk() > self._log_start_byte:
            raise ValueError(f"{self.events_path} already holds events")
        self._write_log(start_byte, start_line, b"")

    def trim_log(self, before_line: int, max_byte: int | None = None) -> None:
        """Drop event lines numbered below ``before_line``, atomically; never bytes past ``max_byte`` (absolute)
        nor any that are not durable yet."""
        self.sync()
        if before_line <= self._log_start_line:
            return
        durable_end = self._durable_log_size - self._log_start_byte + self._header_len
        limit = durable_end if max_byte is None else min(durable_end, max_byte - self._log_start_byte + self._header_len)
        with open(self.events_path, "rb") as f:
            f.seek(self._header_len)
            number, offset = self._log_start_line, self._header_len
            while number < before_line and offset < limit:
                raw = f.readline()
                if not raw.endswith(b"\n") or offset + len(raw) > limit:
                    break
                number, offset = number + 1, offset + len(raw)
            f.seek(offset)
            tail = f.read(durable_end - offset)
        self._write_log(self._log_start_byte + offset - self._header_len, number, tail)

    def close(self) -> None:
        """Sync and close the event log (appending again reopens it)."""
        self.sync()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _write_log(self, start_byte: int, start_line: int, tail: bytes) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        header = b""
        if start_byte or start_line:
            header = _LOG_HEADER + json_line({"start_byte": start_byte, "start_line": start_line})
        write_durably(self.events_path, header + tail)
        self._read_log_header()
        self._durable_log_size = self._log_size_on_disk()

    def _read_log_header(self) -> None:
        self._log_start_byte = self._log_start_line = self._header_len = 0
        if not self.events_path.exists():
            return
        with open(self.events_path, "rb") as f:
            first = f.readline()
        if first.startswith(_LOG_HEADER) and first.endswith(b"\n"):
            fields = json.loads(first[len(_LOG_HEADER):])
            self._log_start_byte, self._log_start_line = int(fields["start_byte"]), int(fields["start_line"])
            self._header_len = len(first)

    def _log_size_on_disk(self) -> int:
        size = self.events_path.stat().st_size if self.events_path.exists() else 0
        return self._log_start_byte + max(0, size - self._header_len)

    def _open_log(self) -> IO[bytes]:
        if self._log is None:
            created = not self.events_path.exists()
            self._log = open(self.events_path, "ab", buffering=1 << 20)
            if created:
                fsync_dir(self.root)
        return self._log

    # -- checkpoints and recovery ------------------------------------------------------------------------------

    def write_checkpoint(self, state: dict[str, Any]) -> None:
        """Durably replace the checkpoint with ``state`` plus ``events_log_size``; the old one becomes ``.prev``.

        ``state`` holds plain data (see the module docstring). The event log is synced first, and its durable size
        is recorded: a caller-supplied ``events_log_size`` must agree with it.
        """
        self.sync()
        recorded = state.get(_EVENTS_LOG_SIZE, self._durable_log_size)
        if recorded != self._durable_log_size:
            raise ValueError(f"state says {_EVENTS_LOG_SIZE}={recorded} but the event log holds "
                             f"{self._durable_log_size} durable bytes; leave the key out and the store records it")
        write_durably(self.checkpoint_path, encode_checkpoint({**state, _EVENTS_LOG_SIZE: self._durable_log_size}),
                         keep_previous=self.previous_checkpoint_path)

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The newest intact checkpoint (``checkpoint``, else ``checkpoint.prev``), or ``None``."""
        return next((state for _, state in self._intact_checkpoints()), None)

    def _intact_checkpoints(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """``(path, state)`` of each intact checkpoint, newest first; a damaged one is skipped with a warning."""
        for path in (self.checkpoint_path, self.previous_checkpoint_path):
            state = read_checkpoint_file(path)
            if state is not None:
                yield path, state
            elif path.exists():
                log.warning(f"checkpoint {path} is torn or corrupt: skipped (an older checkpoint, if any, is used "
                            "and the events after it are read again)")

    def recover(self) -> dict[str, Any] | None:
        """Bring the directory back to the newest intact checkpoint and return it (see the module docstring)."""
        if self._log is not None:
            self._log.close()
            self._log = None
        for directory in (self.root, self.snapshot_dir):
            for temp in directory.glob(".*.tmp"):
                temp.unlink(missing_ok=True)
        self.manifest.trim_torn_tail()
        self._remove_orphans()
        self._cache = None
        self._read_log_header()
        size = self._log_size_on_disk()
        checkpoint = None
        for path, state in self._intact_checkpoints():
            recorded = int(state[_EVENTS_LOG_SIZE])
            if self._log_start_byte <= recorded <= size:
                checkpoint = state
                break
            # the event log lost bytes this checkpoint relies on: an older one may need fewer
            log.warning(f"checkpoint {path} recorded {recorded} durable event-log bytes but {self.events_path} "
                        f"holds [{self._log_start_byte}, {size}): trying an older checkpoint")
            checkpoint = state
        keep = int(checkpoint[_EVENTS_LOG_SIZE]) if checkpoint is not None else self._log_start_byte
        if size < keep or keep < self._log_start_byte:
            raise StoreCorruption(f"{self.events_path} holds bytes [{self._log_start_byte}, {size}) but the "
                                  f"checkpoint recorded {keep} durable bytes: the event log lost data")
        if size > keep:
            with open(self.events_path, "r+b") as event_log:
                event_log.truncate(keep - self._log_start_byte + self._header_len)
                os.fsync(event_log.fileno())
        self._durable_log_size = keep
        return checkpoint
