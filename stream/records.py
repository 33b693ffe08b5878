"""What every source hands out: a :class:`Record` (raw bytes, the position after it, where it came from), the
:class:`Source` protocol the service polls, and the error for a source that cannot be reached."""

from __future__ import annotations

import contextlib
import functools
import gc
from typing import Iterator, NamedTuple, Protocol, runtime_checkable


class Record(NamedTuple):
    """One raw payload and the position to resume from once it has been applied.

    ``partition`` is the Kafka partition it came from (None for files); ``restoring`` marks a record this
    worker re-reads to rebuild its state although the group already processed it (see :class:`KafkaSource`).
    A tuple rather than a dataclass: one is built per event, on the hot path.
    """

    value: bytes
    position: dict
    origin: str
    key: bytes | None = None
    partition: int | None = None
    restoring: bool = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for a burst of short-lived, acyclic allocations.

    Decoding a polled batch allocates several container objects per Kafka message (kafka-python's records,
    ours, their positions), all alive until the batch is applied. The collector, triggered by allocation
    counts, scans them again and again, promotes them, and every few batches traverses the whole heap, torch's
    hundreds of thousands of objects included, to free nothing: on the 2-core development machine that was 45%
    of the time of one-event-per-message ingestion and 20% of batched (``benchmarks/kafka_ingest.py``).
    Refcounting frees these objects; the collector resumes right after and collects whatever cycles other
    threads made meanwhile (the aligner's thread, at most a poll timeout late). Left alone when already disabled.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# Record(...) runs a Python-level __new__; this builds the same tuple in C, once per event on the Kafka hot path.
new_record = functools.partial(tuple.__new__, Record)


@runtime_checkable
class Source(Protocol):
    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records`` records, in order; ``[]`` if none arrived within ``timeout_s``."""
        ...

    @property
    def exhausted(self) -> bool:
        """A finite source read to its end (Kafka topics never are)."""
        ...

    def commit(self, position: dict) -> None:
        """Everything up to ``position`` is durably applied downstream."""
        ...

    def pause(self) -> None:
        """Return no records until :meth:`resume` (a Kafka consumer keeps polling, so it stays in its group)."""
        ...

    def resume(self) -> None: ...

    def live_partitions(self) -> set[int] | None:
        """Partitions whose networks this worker may publish (owned, caught up); None: everything (files)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class PartitionedSource(Source, Protocol):
    """A source read by a consumer group (Kafka): the partitions it owns, how far behind it is on them, and what
    the group has left in the others. A file or stdin is one lane, owned whole."""

    @property
    def assigned(self) -> set[int]: ...

    def lag(self) -> dict[int, int]: ...

    def group_backlog(self) -> dict[int, int]: ...

    @property
    def reachable(self) -> bool: ...


class SourceUnavailable(RuntimeError):
    """The source could not be reached within its connect timeout."""
