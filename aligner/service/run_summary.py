"""What a run of the service did: the counts it keeps while it runs, complete when ``run()`` returns; the CLI
prints it, ``/metrics`` serves it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunSummary:
    records: int = 0  # records read, restored ones included
    accepted: int = 0  # events accepted as new work
    restored: int = 0  # events re-applied to rebuild partitions other workers processed (Kafka)
    dead_letters: int = 0
    snapshots: int = 0
    published: int = 0
    wall_s: float = 0.0
    align_s: float = 0.0
    learn_s: float = 0.0  # meta-update iterations run while nothing waited to be aligned
    refresh_s: float = 0.0  # heavy steps done in the background (service.refresh)
    ingest_s: float = 0.0
    state_s: float = 0.0  # serialising the aligner's state for checkpoints (once per checkpoint period)
    publish_s: float = 0.0  # Redis and the on-disk alignment history
    checkpoint_s: float = 0.0
    redis_url: str = ""
    redis_error: str | None = None  # why the newest alignments are still unpublished, if Redis was unreachable
    last_version: int | None = None
    versions: dict[str, int] = field(default_factory=dict)  # newest version per pair "A|B"
    lag: dict[int, int] = field(default_factory=dict)  # records behind per partition (Kafka)
    late: int = 0  # events applied to the open window because theirs was already cut (beyond lateness)
    duplicates: int = 0  # redeliveries dropped (same network, id and content as an event seen before)
    cutter: dict = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        """End to end: ingestion, snapshots, alignment and publishing."""
        return self.records / self.wall_s if self.wall_s else 0.0

    @property
    def ingest_events_per_s(self) -> float:
        """Validation, event logging and graph maintenance alone (``ingest_s``)."""
        return self.records / self.ingest_s if self.ingest_s else 0.0
