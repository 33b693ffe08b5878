"""What passes between the service's main thread and its aligner and refresh threads: a queued snapshot, a
finished job, the aligner's serialised state a checkpoint records, the catch-up step that queued snapshots become,
and how a finished step's stats are split between a log line's headline and its detail."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from aligner.update import AlignmentUpdate
from snapshots.snapshot import Snapshot


class Queued(NamedTuple):
    """A snapshot waiting for the aligner: the partitions live when it was cut (``None``: not Kafka, or
    recovered), and when it was queued (``time.monotonic()``)."""

    snapshot: Snapshot
    live_partitions: set[int] | None
    cut_at: float


@dataclass
class JobResult:
    """What the aligner thread hands back: the update (``None`` for a meta-update), the aligner's serialised state
    if a checkpoint is near (else ``None``), the model version, and the seconds it took."""

    update: AlignmentUpdate | None
    state: bytes | None
    model_version: str | None
    seconds: float


class AlignerState(NamedTuple):
    """The aligner serialised as of snapshot ``through`` (``None``: nothing aligned yet) at model version
    ``model_version``; ``state`` is ``None`` before the first serialisation of a fresh state dir."""

    state: bytes | None
    through: int | None
    model_version: str | None


# What a text log line of an aligned (or refreshed) snapshot shows at INFO (the rest of the step's stats only at
# DEBUG and in JSON logs): which path and why, how good the published alignments are on the anchors that arrived.
ALIGNED_HEADLINE = ("path", "reason", "deferred", "anchors", "pseudo_anchors", "prequential_hits@1",
                    "prequential_mrr", "drifts")


def headline_and_detail(stats: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A step's stats as the log line's fields (:data:`ALIGNED_HEADLINE`) and its detail (the rest).

    >>> headline_and_detail({"path": "incremental", "nodes": 3, "anchors": 2})
    ({'path': 'incremental', 'anchors': 2}, {'nodes': 3})
    """
    return ({k: stats[k] for k in ALIGNED_HEADLINE if k in stats},
            {k: v for k, v in stats.items() if k not in ALIGNED_HEADLINE})


def coalesce(snapshots: list[Snapshot]) -> Snapshot:
    """Consecutive snapshots as one catch-up step for the aligner: the newest graph state, whose ``changed``
    nodes are every node changed since the snapshot before the first. Aligning it costs about as much as aligning
    the newest alone (the receptive field of a few changes is most of what many changes reach), so an aligner
    that fell behind catches up at once instead of working through stale states one by one.

    >>> import numpy as np
    >>> from snapshots.snapshot import NetworkSnapshot
    >>> def snap(i, changed):
    ...     net = NetworkSnapshot("a", ("x", "y", "z"), np.zeros((2, 0), np.int64), np.zeros(0, np.float32),
    ...                           np.ones(3, bool), changed=np.array(changed, np.int64))
    ...     return Snapshot(i, float(i), float(i + 1), {"a": net}, {}, events=2)
    >>> both = coalesce([snap(1, [0]), snap(2, [2, 0])])
    >>> both.id, both.start_time, both.end_time, both.events, both.networks["a"].changed.tolist()
    (2, 1.0, 3.0, 4, [0, 2])
    """
    newest = snapshots[-1]
    if len(snapshots) == 1:
        return newest
    networks = {}
    for name, net in newest.networks.items():
        changed = [s.networks[name].changed for s in snapshots if name in s.networks]
        networks[name] = dataclasses.replace(net, changed=np.unique(np.concatenate(changed)))
    return dataclasses.replace(newest, networks=networks, start_time=snapshots[0].start_time,
                               events=sum(s.events for s in snapshots))
