"""Files that are whole or not at all: durable atomic writes, reads checked against a recorded sha256, and
JSON-lines files whose torn last line (a crash mid-append) is ignored and trimmed.

A streaming service dies at arbitrary points, so every file the state dir holds is written to a temp file,
fsynced, renamed into place and its directory fsynced: a reader sees the old file or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


class StoreCorruption(RuntimeError):
    """A file the store wrote is not what it recorded (torn write, disk damage, outside interference)."""


def json_line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def read_verified(path: Path, entry: dict[str, Any], what: str) -> bytes:
    """The bytes of ``path`` if they match the size and sha256 its manifest ``entry`` recorded, else
    :class:`StoreCorruption` saying what is wrong: a torn or corrupt file is reported, never loaded."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreCorruption(f"{what} is in the manifest but {path} is missing") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry["bytes"] or digest != entry["sha256"]:
        raise StoreCorruption(
            f"{what}: file {path} is torn or corrupt: the manifest recorded {entry['bytes']} bytes with sha256 "
            f"{entry['sha256'][:12]}…, the file has {len(data)} bytes with sha256 {digest[:12]}…")
    return data


def write_durably(path: Path, data: bytes, keep_previous: Path | None = None) -> None:
    """Atomically and durably make ``path`` hold ``data`` (temp file, fsync, rename, directory fsync); with ``keep_previous``, the old file is first renamed there."""
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
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def trim_torn_tail(path: Path) -> None:
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


def complete_lines(path: Path, start_byte: int = 0) -> Iterator[str]:
    if not path.exists():
        return
    with open(path, "rb") as f:
        f.seek(start_byte)
        for raw in f:
            if not raw.endswith(b"\n"):
                return
            yield raw[:-1].decode("utf-8")
