"""JSON-lines events from a file (plain or compressed), a named pipe or stdin, resumable at a byte offset."""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import os
import select
import stat
import sys
import time
from pathlib import Path
from typing import BinaryIO

from stream.events import DEFAULT_LIMITS
from stream.records import Record

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
# Compressed event files are read through their decompressor, recognised by their first bytes (whatever the
# name): otherwise every line of a .gz is dead-lettered as not UTF-8 and the run "succeeds" with nothing.
_COMPRESSED = ((b"\x1f\x8b", "gzip", gzip.open), (b"BZh", "bzip2", bz2.open), (b"\xfd7zXZ\x00", "xz", lzma.open))
_DECOMPRESSORS = (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile)


def open_events_file(path: Path) -> io.BufferedIOBase:
    """``path`` opened for reading bytes, decompressed if it is gzip, bzip2 or xz; ``FileNotFoundError`` or
    ``ValueError`` with a message that says what to pass instead."""
    hint = "a source is a JSONL file (may be gzip, bzip2 or xz), '-' for stdin, or kafka://HOST:PORT/TOPIC"
    try:
        stream = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"event source {path} does not exist ({hint})") from None
    except IsADirectoryError:
        raise ValueError(f"event source {path} is a directory ({hint})") from None
    if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
        return stream  # a named pipe: peeking would take bytes that select-driven reads then miss
    head = stream.peek(8)[:8]
    for magic, kind, opener in _COMPRESSED:
        if head.startswith(magic):
            stream.close()
            log.info("%s is %s-compressed: reading it decompressed", path, kind)
            return opener(path, "rb")
    if head.startswith(b"PK\x03\x04"):
        stream.close()
        raise ValueError(f"event source {path} is a zip archive: unzip it, or gzip the JSONL file instead")
    return stream


class FileSource:
    """JSON lines from a file (gzip, bzip2 or xz ones decompressed), ``-`` (stdin) or any binary stream (tests
    inject ``io.BytesIO``).

    Position ``{"offset": bytes consumed, "line": lines consumed}``. A regular file or seekable stream
    resumes by seeking there; stdin cannot seek, so a position is ignored for it (a re-run feeds it afresh).
    Blank lines are skipped, a last line without a newline is still a record, and a line longer than
    ``max_line_bytes`` is cut to that length (and dropped up to its newline) so one runaway line cannot
    exhaust memory: the truncated record then fails validation and lands in the dead-letter file.
    Pipes and terminals are read with ``select`` so that ``poll`` honours its timeout on a quiet stdin.
    """

    def __init__(
        self,
        path: str | Path | BinaryIO,
        *,
        position: dict | None = None,
        name: str | None = None,
        max_line_bytes: int = DEFAULT_LIMITS.max_payload_bytes + 1,
    ):
        self._owned = False
        if isinstance(path, (str, Path)) and str(path) == "-":
            self._stream: BinaryIO | io.BufferedIOBase = sys.stdin.buffer
            self.name = name or "<stdin>"
            position = None
        elif isinstance(path, (str, Path)):
            self._stream = open_events_file(Path(path))
            self._owned = True
            self.name = name or str(path)
        else:
            self._stream = path
            self.name = name or getattr(path, "name", None) or "<stream>"
        self._max_line = max_line_bytes
        self._fd = self._select_fd(self._stream)
        self._buf = b""
        self._pos = 0  # index in _buf of the first unconsumed byte
        self._offset = 0  # stream offset of _buf[0]
        self._line = 0
        self._eof = False
        self._skipping = False  # inside an over-long line, dropping bytes up to its newline
        self._paused = False
        if position:
            try:
                offset, line = int(position["offset"]), int(position["line"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{self.name}: {position!r} is not a file position (offset, line)") from None
            if self._fd is None and self._stream.seekable():
                self._offset, self._line = offset, line
                self._stream.seek(offset)
                compressed = isinstance(self._stream, _DECOMPRESSORS)  # its size is not the stream's
                if self._owned and not compressed and os.fstat(self._stream.fileno()).st_size < offset:
                    log.warning("%s is shorter than the resume offset %d: truncated or replaced?", self.name, offset)
            else:
                log.info("%s cannot seek; ignoring the resume position %s", self.name, position)

    @staticmethod
    def _select_fd(stream: BinaryIO | io.BufferedIOBase) -> int | None:
        """The descriptor to ``select`` on if ``stream`` is a pipe, socket or terminal, else None."""
        try:
            fd = stream.fileno()
            return None if stat.S_ISREG(os.fstat(fd).st_mode) else fd
        except (AttributeError, OSError, io.UnsupportedOperation):
            return None

    @property
    def exhausted(self) -> bool:
        return self._eof and self._pos >= len(self._buf)

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        if self._paused:
            return []
        deadline = time.monotonic() + timeout_s
        out: list[Record] = []
        while len(out) < max_records:
            record = self._next_record()
            if record is not None:
                out.append(record)
            elif self.exhausted or not self._fill(0.0 if out else max(0.0, deadline - time.monotonic())):
                break
        return out

    def _next_record(self) -> Record | None:
        """The next non-blank line already in the buffer, or None if it needs more input."""
        buf = self._buf
        while self._pos < len(buf):
            start = self._pos
            end = buf.find(b"\n", start)
            if end < 0:
                if not self._eof:
                    return None
                end = len(buf)  # the last line has no newline
            self._pos = end + 1
            self._line += 1
            value = buf[start:end]
            if value.endswith(b"\r"):
                value = value[:-1]
            if value.strip():
                position = {"offset": self._offset + min(self._pos, len(buf)), "line": self._line}
                return Record(value=value, position=position, origin=f"{self.name}:{self._line}")
        return None

    def _fill(self, timeout_s: float) -> bool:
        """Read one chunk into the buffer; False if nothing arrived within the timeout."""
        if self._fd is not None:
            ready, _, _ = select.select([self._fd], [], [], timeout_s)
            if not ready:
                return False
            data = os.read(self._fd, _CHUNK)
        else:
            data = getattr(self._stream, "read1", self._stream.read)(_CHUNK)
        self._offset += self._pos
        buf, self._pos = self._buf[self._pos :], 0
        if not data:
            self._eof = True
            self._buf = buf
            return True
        # Bytes dropped from a runaway line are added to _offset: it then addresses everything after the
        # kept head correctly, and no position is ever taken inside the head.
        if self._skipping:  # buf is the kept head of a runaway line; drop input up to its newline
            newline = data.find(b"\n")
            if newline < 0:
                self._offset += len(data)
                self._buf = buf
                return True
            self._offset += newline
            data, self._skipping = data[newline:], False
        buf += data
        if len(buf) > self._max_line and buf.find(b"\n", 0, self._max_line + 1) < 0:
            newline = buf.find(b"\n", self._max_line)
            self._skipping = newline < 0
            end = len(buf) if self._skipping else newline
            self._offset += end - self._max_line
            buf = buf[: self._max_line] + buf[end:]
        self._buf = buf
        return True

    def commit(self, position: dict) -> None:
        """Nothing to do: a file's position lives in the service's checkpoint."""

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def live_partitions(self) -> None:
        return None

    def close(self) -> None:
        if self._owned:
            self._stream.close()
