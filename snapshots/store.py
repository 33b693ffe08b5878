"""Crash-safe persistence of snapshots, the event log and checkpoints under one state directory.

A streaming service dies at arbitrary points (OOM kill, deploy, power loss), so every file here is either
complete and verified or ignored; nothing is ever half-read. Layout::

    root/snapshots/00000001.npz     one snapshot per file (np.savez_compressed, no pickles)
    root/snapshots/manifest.jsonl   one JSON line per saved snapshot, with its size and sha256
    root/events.log                 accepted events, one canonical JSON line each
    root/checkpoint                 newest checkpoint; root/checkpoint.prev the one before

Recovery contract:

- Whole files (snapshots, checkpoints) are written to a temp file in the same directory, fsynced, renamed into
  place and the directory fsynced, so a reader sees the old file or the new one, never a mix.
- A snapshot's manifest line is appended (and fsynced) only after its file is durable: a listed snapshot whose
  file is missing, of the wrong size or (on load) of the wrong sha256 is reported, never loaded silently. A
  torn last manifest line is ignored and trimmed before the next append.
- :meth:`SnapshotStore.write_checkpoint` syncs the event log first and records its durable size in the
  checkpoint as ``events_log_size``; the previous checkpoint stays as ``checkpoint.prev``.
- :meth:`SnapshotStore.recover` (call it once at start-up) returns the newest intact checkpoint (falling back to
  ``checkpoint.prev``), truncates ``events.log`` to the size that checkpoint recorded (to empty without one)
  and removes stray temp files. The caller restores its state from the checkpoint and re-reads the source from
  the position saved in it, so events and snapshots produced after the checkpoint are produced again: events are
  re-appended, snapshots re-cut with the same ids overwrite their files, and the manifest's last line per id wins.

Checkpoints are JSON for the structure plus an uncompressed npz for numpy arrays and bytes, framed by a magic
and a sha256, rather than pickle: loading needs no code execution (``allow_pickle=False``), the file does not
name Python classes that later refactors would break, and it stays inspectable. The cost is that only plain
data round-trips (None, bool, int, float, str, bytes, list, tuple, dict, numpy arrays and scalars).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import numpy as np

from snapshots.snapshot import NetworkSnapshot, Snapshot

_CHECKPOINT_MAGIC = b"DYNCKPT1"
_DIGEST_BYTES = 32
_EVENTS_LOG_SIZE = "events_log_size"


class StoreCorruption(RuntimeError):
    """A file the store wrote is not what it recorded (torn write, disk damage, outside interference)."""


class SnapshotStore:
    """Snapshots, event log and checkpoints under ``root`` (created if missing). Not for concurrent writers."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.snapshot_dir = self.root / "snapshots"
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.snapshot_dir / "manifest.jsonl"
        self.events_path = self.root / "events.log"
        self.checkpoint_path = self.root / "checkpoint"
        self.previous_checkpoint_path = self.root / "checkpoint.prev"
        self._log: IO[bytes] | None = None
        self._durable_log_size = self.events_path.stat().st_size if self.events_path.exists() else 0

    # -- snapshots ---------------------------------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> dict[str, Any]:
        """Write the snapshot durably, then append and return its manifest entry."""
        data = _snapshot_to_npz(snapshot)
        path = self._snapshot_path(snapshot.id)
        _replace_durably(path, data)
        entry = {
            "id": snapshot.id,
            "start_time": snapshot.start_time,
            "end_time": snapshot.end_time,
            "events": snapshot.events,
            "networks": {name: {"nodes": net.num_nodes, "alive": int(net.alive.sum()), "edges": net.num_edges}
                         for name, net in snapshot.networks.items()},
            "anchors": [[a, b, int(len(pairs))] for (a, b), pairs in snapshot.anchors.items()],
            "file": path.name,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        _trim_torn_tail(self.manifest_path)
        with open(self.manifest_path, "ab") as manifest:
            manifest.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
            manifest.flush()
            os.fsync(manifest.fileno())
        return entry

    def load_snapshot(self, snapshot_id: int) -> Snapshot:
        """The snapshot as saved; ``KeyError`` if never listed, :class:`StoreCorruption` if its file is damaged."""
        entry = self._manifest().get(snapshot_id)
        if entry is None:
            raise KeyError(f"snapshot {snapshot_id} is not in {self.manifest_path}")
        path = self._snapshot_path(snapshot_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreCorruption(f"snapshot {snapshot_id} is in the manifest but {path} is missing") from None
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != entry["bytes"] or digest != entry["sha256"]:
            raise StoreCorruption(
                f"snapshot file {path} is torn or corrupt: the manifest recorded {entry['bytes']} bytes with sha256 "
                f"{entry['sha256'][:12]}…, the file has {len(data)} bytes with sha256 {digest[:12]}…")
        return _snapshot_from_npz(data)

    def list_snapshots(self) -> list[dict[str, Any]]:
        """Manifest entries, by id, whose file exists with the recorded size (the sha256 is checked on load)."""
        listed = []
        for snapshot_id, entry in sorted(self._manifest().items()):
            try:
                size = self._snapshot_path(snapshot_id).stat().st_size
            except FileNotFoundError:
                continue
            if size == entry["bytes"]:
                listed.append(entry)
        return listed

    def latest_id(self) -> int | None:
        listed = self.list_snapshots()
        return listed[-1]["id"] if listed else None

    def _snapshot_path(self, snapshot_id: int) -> Path:
        return self.snapshot_dir / f"{snapshot_id:08d}.npz"

    def _manifest(self) -> dict[int, dict[str, Any]]:
        """The last complete manifest line per id (a snapshot re-cut after recovery appends a newer line)."""
        entries: dict[int, dict[str, Any]] = {}
        for line in _complete_lines(self.manifest_path):
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # only a torn append can produce this, and its snapshot was never acknowledged
            entries[int(entry["id"])] = entry
        return entries

    # -- event log ---------------------------------------------------------------------------------------------

    def append_events(self, lines: Iterable[str]) -> None:
        """Append one line per event (buffered; durable after :meth:`sync`). Lines must not contain newlines."""
        batch = list(lines)
        if not batch:
            return
        if any("\n" in line or "\r" in line for line in batch):
            raise ValueError("event log lines must not contain line breaks (pass canonical single-line JSON)")
        self._open_log().write(("\n".join(batch) + "\n").encode("utf-8"))

    def sync(self) -> None:
        """Flush and fsync the event log; :meth:`events_log_size` then counts everything appended."""
        if self._log is None:
            return
        self._log.flush()
        os.fsync(self._log.fileno())
        self._durable_log_size = os.fstat(self._log.fileno()).st_size

    def events_log_size(self) -> int:
        """Bytes of the event log known to be durable (as of the last :meth:`sync`)."""
        return self._durable_log_size

    def read_events(self, start_byte: int = 0) -> Iterator[str]:
        """Complete event lines from byte offset ``start_byte`` (a line start); a torn last line is skipped."""
        if self._log is not None:
            self._log.flush()
        return _complete_lines(self.events_path, start_byte)

    def close(self) -> None:
        """Sync and close the event log (appending again reopens it)."""
        self.sync()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _open_log(self) -> IO[bytes]:
        if self._log is None:
            created = not self.events_path.exists()
            self._log = open(self.events_path, "ab", buffering=1 << 20)
            if created:
                _fsync_dir(self.root)
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
        payload = _encode_checkpoint({**state, _EVENTS_LOG_SIZE: self._durable_log_size})
        data = _CHECKPOINT_MAGIC + hashlib.sha256(payload).digest() + payload
        _replace_durably(self.checkpoint_path, data, keep_previous=self.previous_checkpoint_path)

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The newest intact checkpoint (``checkpoint``, else ``checkpoint.prev``), or ``None``."""
        for path in (self.checkpoint_path, self.previous_checkpoint_path):
            payload = _verified_checkpoint_payload(path)
            if payload is not None:
                return _decode_checkpoint(payload)
        return None

    def recover(self) -> dict[str, Any] | None:
        """Bring the directory back to the newest intact checkpoint and return it (see the module docstring)."""
        if self._log is not None:
            self._log.close()
            self._log = None
        for directory in (self.root, self.snapshot_dir):
            for temp in directory.glob(".*.tmp"):
                temp.unlink(missing_ok=True)
        _trim_torn_tail(self.manifest_path)
        checkpoint = self.read_checkpoint()
        keep = int(checkpoint[_EVENTS_LOG_SIZE]) if checkpoint is not None else 0
        size = self.events_path.stat().st_size if self.events_path.exists() else 0
        if size < keep:
            raise StoreCorruption(f"{self.events_path} holds {size} bytes but the checkpoint recorded {keep} "
                                  "durable bytes: the event log lost data")
        if size > keep:
            with open(self.events_path, "r+b") as log:
                log.truncate(keep)
                os.fsync(log.fileno())
        self._durable_log_size = keep
        return checkpoint


# -- file primitives -------------------------------------------------------------------------------------------


def _replace_durably(path: Path, data: bytes, keep_previous: Path | None = None) -> None:
    """Atomically make ``path`` hold ``data``; with ``keep_previous``, the old file is first renamed there."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _trim_torn_tail(path: Path) -> None:
    """Cut a last line that lacks its newline, so the next append does not glue onto it."""
    if not path.exists():
        return
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)
        os.fsync(f.fileno())


def _complete_lines(path: Path, start_byte: int = 0) -> Iterator[str]:
    if not path.exists():
        return
    with open(path, "rb") as f:
        f.seek(start_byte)
        for raw in f:
            if not raw.endswith(b"\n"):
                return
            yield raw[:-1].decode("utf-8")


# -- snapshot files --------------------------------------------------------------------------------------------


def _snapshot_to_npz(snapshot: Snapshot) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    networks = []
    for i, (name, net) in enumerate(snapshot.networks.items()):
        networks.append({"name": name, "has_attrs": net.attrs is not None,
                         "attr_names": None if net.attr_names is None else list(net.attr_names)})
        arrays[f"n{i}_node_ids"], arrays[f"n{i}_node_id_ends"] = _pack_strings(net.node_ids)
        arrays[f"n{i}_edge_index"] = np.asarray(net.edge_index, np.int64)
        arrays[f"n{i}_edge_weight"] = np.asarray(net.edge_weight, np.float32)
        arrays[f"n{i}_alive"] = np.asarray(net.alive, bool)
        arrays[f"n{i}_changed"] = np.asarray(net.changed, np.int64)
        if net.attrs is not None:
            arrays[f"n{i}_attrs"] = np.asarray(net.attrs, np.float32)
    for j, pairs in enumerate(snapshot.anchors.values()):
        arrays[f"a{j}"] = np.asarray(pairs, np.int64).reshape(-1, 2)
    meta = {"id": snapshot.id, "start_time": snapshot.start_time, "end_time": snapshot.end_time,
            "events": snapshot.events, "networks": networks, "anchor_pairs": [list(key) for key in snapshot.anchors]}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=_json_bytes(meta), **arrays)
    return buffer.getvalue()


def _snapshot_from_npz(data: bytes) -> Snapshot:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes())
        networks = {}
        for i, spec in enumerate(meta["networks"]):
            networks[spec["name"]] = NetworkSnapshot(
                name=spec["name"],
                node_ids=_unpack_strings(npz[f"n{i}_node_ids"], npz[f"n{i}_node_id_ends"]),
                edge_index=npz[f"n{i}_edge_index"],
                edge_weight=npz[f"n{i}_edge_weight"],
                alive=npz[f"n{i}_alive"],
                attrs=npz[f"n{i}_attrs"] if spec["has_attrs"] else None,
                attr_names=None if spec["attr_names"] is None else tuple(spec["attr_names"]),
                changed=npz[f"n{i}_changed"],
            )
        anchors = {(a, b): npz[f"a{j}"] for j, (a, b) in enumerate(meta["anchor_pairs"])}
    return Snapshot(id=meta["id"], start_time=meta["start_time"], end_time=meta["end_time"], networks=networks,
                    anchors=anchors, events=meta["events"])


def _pack_strings(strings: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 blob plus end offsets: exact for any id (numpy's unicode dtype drops trailing NULs) and unpadded."""
    encoded = [s.encode("utf-8") for s in strings]
    ends = np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)))
    return np.frombuffer(b"".join(encoded), np.uint8), ends


def _unpack_strings(blob: np.ndarray, ends: np.ndarray) -> tuple[str, ...]:
    data = blob.tobytes()
    bounds = [0, *ends.tolist()]
    return tuple(data[bounds[k]:bounds[k + 1]].decode("utf-8") for k in range(len(ends)))


def _json_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, separators=(",", ":")).encode("utf-8"), np.uint8)


# -- checkpoint codec ------------------------------------------------------------------------------------------
# Structure goes to JSON; arrays, numpy scalars and bytes become {"__tag__": member} references into the npz.
# Tuples and dicts with non-str keys are tagged too, so the round trip is exact. A plain dict whose keys start
# with "__" is stored as tagged items, so user keys never collide with tags.

_ARRAY, _SCALAR, _BYTES, _TUPLE, _ITEMS = "__ndarray__", "__scalar__", "__bytes__", "__tuple__", "__items__"


def _encode_checkpoint(state: dict[str, Any]) -> bytes:
    arrays: dict[str, np.ndarray] = {}

    def member(array: np.ndarray) -> str:
        name = f"m{len(arrays)}"
        arrays[name] = array
        return name

    def pack(obj: Any, path: str) -> Any:
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                raise TypeError(f"checkpoint state at {path}: object arrays cannot be stored without pickle")
            return {_ARRAY: member(obj)}
        if isinstance(obj, np.generic):
            return {_SCALAR: member(np.asarray(obj))}
        if obj is None or type(obj) in (bool, int, float, str):
            return obj
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return {_BYTES: member(np.frombuffer(bytes(obj), np.uint8))}
        if type(obj) is list:
            return [pack(x, f"{path}[{i}]") for i, x in enumerate(obj)]
        if type(obj) is tuple:
            return {_TUPLE: [pack(x, f"{path}[{i}]") for i, x in enumerate(obj)]}
        if type(obj) is dict:
            if all(type(k) is str and not k.startswith("__") for k in obj):
                return {k: pack(v, f"{path}.{k}") for k, v in obj.items()}
            return {_ITEMS: [[pack(k, f"{path} key"), pack(v, f"{path}[{k!r}]")] for k, v in obj.items()]}
        raise TypeError(f"checkpoint state at {path}: cannot store {type(obj).__name__} "
                        "(use None, bool, int, float, str, bytes, list, tuple, dict or numpy arrays)")

    tree = pack(state, "state")
    buffer = io.BytesIO()
    np.savez(buffer, tree=_json_bytes(tree), **arrays)
    return buffer.getvalue()


def _decode_checkpoint(payload: bytes) -> dict[str, Any]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        members = {name: npz[name] for name in npz.files}
    tags = {
        _ARRAY: lambda name: members[name],
        _SCALAR: lambda name: members[name][()],
        _BYTES: lambda name: members[name].tobytes(),
        _TUPLE: lambda items: tuple(unpack(x) for x in items),
        _ITEMS: lambda items: {unpack(k): unpack(v) for k, v in items},
    }

    def unpack(obj: Any) -> Any:
        if type(obj) is list:
            return [unpack(x) for x in obj]
        if type(obj) is dict:
            if len(obj) == 1:
                ((key, value),) = obj.items()
                if key in tags:
                    return tags[key](value)
            return {k: unpack(v) for k, v in obj.items()}
        return obj

    return unpack(json.loads(members.pop("tree").tobytes()))


def _verified_checkpoint_payload(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    header = len(_CHECKPOINT_MAGIC) + _DIGEST_BYTES
    if len(data) < header or not data.startswith(_CHECKPOINT_MAGIC):
        return None
    payload = data[header:]
    if hashlib.sha256(payload).digest() != data[len(_CHECKPOINT_MAGIC):header]:
        return None
    return payload
