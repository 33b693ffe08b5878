"""The store's checkpoint and the one before it, each stamped with how much of the event log it counts on.

A checkpoint is what a restart resumes from; the events after it are read again from the event log, so it is
only usable together with the log bytes it counted as durable (``events_log_size``). The previous checkpoint is
kept as a fallback for a newest one that is torn or that the log no longer backs. The encoding (plain data,
no pickle) is :mod:`snapshots.checkpoint_codec`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

from snapshots.checkpoint_codec import encode_checkpoint, read_checkpoint_file
from snapshots.files import write_durably

log = logging.getLogger(__name__)

EVENTS_LOG_SIZE = "events_log_size"


class Checkpoints:
    """``path`` (the newest checkpoint) and ``previous_path`` (the one before)."""

    def __init__(self, path: Path, previous_path: Path):
        self.path = path
        self.previous_path = previous_path

    def write(self, state: dict[str, Any], durable_log_size: int) -> None:
        """Durably replace the checkpoint with ``state`` plus ``events_log_size``; the old one becomes the previous.
        A ``state`` that names ``events_log_size`` itself must agree with ``durable_log_size``."""
        recorded = state.get(EVENTS_LOG_SIZE, durable_log_size)
        if recorded != durable_log_size:
            raise ValueError(f"state says {EVENTS_LOG_SIZE}={recorded} but the event log holds "
                             f"{durable_log_size} durable bytes; leave the key out and the store records it")
        write_durably(self.path, encode_checkpoint({**state, EVENTS_LOG_SIZE: durable_log_size}),
                      keep_previous=self.previous_path)

    def read(self) -> dict[str, Any] | None:
        """The newest intact checkpoint, or ``None``."""
        return next((state for _, state in self._intact()), None)

    def log_sizes(self) -> list[int]:
        """The event-log sizes the checkpoints on disk count on: log bytes retention must not drop."""
        return [state[EVENTS_LOG_SIZE] for state in map(read_checkpoint_file, (self.path, self.previous_path))
                if state is not None]

    def backed_by(self, log_path: Path, start: int, end: int) -> dict[str, Any] | None:
        """For recovery: the newest intact checkpoint whose recorded log size lies in ``[start, end]``, the
        absolute byte range the event log at ``log_path`` holds; if none does, the oldest intact one (whose
        missing bytes the caller reports), or ``None`` without any."""
        checkpoint = None
        for path, state in self._intact():
            recorded = int(state[EVENTS_LOG_SIZE])
            if start <= recorded <= end:
                return state
            # the event log lost bytes this checkpoint relies on: an older one may need fewer
            log.warning(f"checkpoint {path} recorded {recorded} durable event-log bytes but {log_path} "
                        f"holds [{start}, {end}): trying an older checkpoint")
            checkpoint = state
        return checkpoint

    def _intact(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """``(path, state)`` of each intact checkpoint, newest first; a damaged one is skipped with a warning."""
        for path in (self.path, self.previous_path):
            state = read_checkpoint_file(path)
            if state is not None:
                yield path, state
            elif path.exists():
                log.warning(f"checkpoint {path} is torn or corrupt: skipped (an older checkpoint, if any, is used "
                            "and the events after it are read again)")
