"""The event log: every accepted event, one canonical JSON line each, in arrival order, with absolute offsets.

Checkpoints record how much of the log is durable (a byte offset) and snapshots which lines they were cut from
(line numbers), and both must stay valid when retention drops the log's head. So once the head is dropped the
file starts with a ``#dynalign-log`` header giving the byte offset and line number of its first event, and
every offset here is counted from the first event ever logged. Appends are buffered; :meth:`EventLog.sync`
makes them durable, and only durable bytes are ever trimmed or vouched for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

from snapshots.files import StoreCorruption, complete_lines, fsync_dir, json_line, write_durably

_LOG_HEADER = b"#dynalign-log "


@dataclass(frozen=True)
class LogStart:
    """Where the file's first event sits in the whole history, and how long the header before it is."""

    byte: int = 0
    line: int = 0
    header_len: int = 0

    @classmethod
    def read(cls, path: Path) -> LogStart:
        if not path.exists():
            return cls()
        with open(path, "rb") as f:
            first = f.readline()
        if first.startswith(_LOG_HEADER) and first.endswith(b"\n"):
            fields = json.loads(first[len(_LOG_HEADER):])
            return cls(int(fields["start_byte"]), int(fields["start_line"]), len(first))
        return cls()

    def file_offset(self, absolute: int) -> int:
        """The position in the file of absolute byte offset ``absolute``."""
        return absolute - self.byte + self.header_len


class EventLog:
    """The log at ``path`` (created on the first append). Not for concurrent writers."""

    def __init__(self, path: Path):
        self.path = path
        self._file: IO[bytes] | None = None
        self._start = LogStart.read(path)
        self._durable_size = self._size_on_disk()

    @property
    def start_byte(self) -> int:
        """Absolute byte offset of the first event the log still holds."""
        return self._start.byte

    @property
    def start_line(self) -> int:
        """Number (from 0, over the whole history) of the first event line the log still holds."""
        return self._start.line

    @property
    def durable_size(self) -> int:
        """Bytes known to be durable (as of the last :meth:`sync`), counted from the first event ever logged."""
        return self._durable_size

    def append(self, lines: Iterable[str]) -> None:
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
        self._open().write((text + "\n").encode("utf-8"))

    def sync(self) -> None:
        """Flush and fsync; :attr:`durable_size` then counts everything appended."""
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._durable_size = self._start.byte + os.fstat(self._file.fileno()).st_size - self._start.header_len

    def read(self, start_byte: int | None = None) -> Iterator[str]:
        """Complete event lines from absolute byte offset ``start_byte`` (a line start; default: the first line
        retained); a torn last line is skipped."""
        if self._file is not None:
            self._file.flush()
        if start_byte is None:
            start_byte = self._start.byte
        if start_byte < self._start.byte:
            raise ValueError(f"event log bytes before {self._start.byte} were dropped by retention")
        return complete_lines(self.path, self._start.file_offset(start_byte))

    def read_lines(self, start_line: int = 0, end_line: int | None = None) -> Iterator[str]:
        """Event lines numbered ``[start_line, end_line)`` over the whole history; ``ValueError`` if retention
        dropped some of them."""
        if start_line < self._start.line:
            raise ValueError(f"event log lines before {self._start.line} were dropped by retention "
                             f"(asked from line {start_line})")
        number = self._start.line
        for line in self.read():
            if end_line is not None and number >= end_line:
                return
            if number >= start_line:
                yield line
            number += 1

    def start_at(self, start_byte: int, start_line: int) -> None:
        """Make an empty log continue a history kept elsewhere: offsets recorded there stay meaningful here."""
        if self._size_on_disk() > self._start.byte:
            raise ValueError(f"{self.path} already holds events")
        self._write(start_byte, start_line, b"")

    def trim(self, before_line: int, max_byte: int | None = None) -> None:
        """Drop event lines numbered below ``before_line``, atomically; never bytes past ``max_byte`` (absolute)
        nor any that are not durable yet."""
        self.sync()
        start = self._start
        if before_line <= start.line:
            return
        durable_end = start.file_offset(self._durable_size)
        limit = durable_end if max_byte is None else min(durable_end, start.file_offset(max_byte))
        with open(self.path, "rb") as f:
            f.seek(start.header_len)
            number, offset = start.line, start.header_len
            while number < before_line and offset < limit:
                raw = f.readline()
                if not raw.endswith(b"\n") or offset + len(raw) > limit:
                    break
                number, offset = number + 1, offset + len(raw)
            f.seek(offset)
            tail = f.read(durable_end - offset)
        self._write(start.byte + offset - start.header_len, number, tail)

    def close(self) -> None:
        """Sync and close (appending again reopens it)."""
        self.sync()
        self._release()

    def on_disk(self) -> tuple[int, int]:
        """For recovery: drop what is buffered, read the file afresh and return the absolute byte range it holds."""
        self._release()
        self._start = LogStart.read(self.path)
        return self._start.byte, self._size_on_disk()

    def truncate(self, size: int) -> None:
        """For recovery: cut the file back to absolute size ``size`` (what a checkpoint recorded as durable);
        :class:`StoreCorruption` if it holds less, or not from where ``size`` counts."""
        start, end = self._start.byte, self._size_on_disk()
        if end < size or size < start:
            raise StoreCorruption(f"{self.path} holds bytes [{start}, {end}) but the checkpoint recorded {size} "
                                  "durable bytes: the event log lost data")
        if end > size:
            with open(self.path, "r+b") as event_log:
                event_log.truncate(self._start.file_offset(size))
                os.fsync(event_log.fileno())
        self._durable_size = size

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, start_byte: int, start_line: int, tail: bytes) -> None:
        self._release()
        header = b""
        if start_byte or start_line:
            header = _LOG_HEADER + json_line({"start_byte": start_byte, "start_line": start_line})
        write_durably(self.path, header + tail)
        self._start = LogStart.read(self.path)
        self._durable_size = self._size_on_disk()

    def _size_on_disk(self) -> int:
        size = self.path.stat().st_size if self.path.exists() else 0
        return self._start.byte + max(0, size - self._start.header_len)

    def _open(self) -> IO[bytes]:
        if self._file is None:
            created = not self.path.exists()
            self._file = open(self.path, "ab", buffering=1 << 20)
            if created:
                fsync_dir(self.path.parent)
        return self._file
