"""An append-only JSON-lines index: the manifest of the snapshot store and the index of the alignment history.

Both vouch for files written before them, so a line must be durable once appended and a crash mid-append must
cost only the line being written: a torn last line is ignored when read and trimmed before the next append,
and a rewrite (compaction) replaces the whole file atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from snapshots.files import complete_lines, json_line, trim_torn_tail, write_durably


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
