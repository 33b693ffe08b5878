"""How many snapshots the store keeps, and from which one on: retention in whole base groups.

Deltas are useless without the base they are built on, so retention never cuts a base group in half: it
keeps everything from the newest base at or before the oldest snapshot it must keep. Apart from the store so
that the rule can be read, and checked, without any file around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Retention:
    """Keep at least the newest ``retain`` snapshots (``None``: all)."""

    retain: int | None = None

    def __post_init__(self) -> None:
        if self.retain is not None and self.retain < 1:
            raise ValueError(f"retain must be >= 1 snapshots (or None for all), got {self.retain}")

    def first_kept(self, listed: list[dict[str, Any]], keep_from: int | None = None) -> int | None:
        """The id of the oldest snapshot to keep, a base, of the manifest entries ``listed`` (by id); every one
        from ``keep_from`` on is kept too. ``None``: retention does not apply yet (too few snapshots, or no base
        early enough to cut at).

        >>> entries = [{"id": i, "parent": None if i % 3 == 1 else i - 1} for i in range(1, 8)]
        >>> two = Retention(2)
        >>> two.first_kept(entries), two.first_kept(entries, keep_from=3), Retention(9).first_kept(entries)
        (4, 1, None)
        """
        if self.retain is None or len(listed) <= self.retain:
            return None
        cutoff = listed[-self.retain]["id"]
        if keep_from is not None:
            cutoff = min(cutoff, keep_from)
        bases = [e["id"] for e in listed if e.get("parent") is None and e["id"] <= cutoff]
        return bases[-1] if bases else None
