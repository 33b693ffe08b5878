"""Which path a snapshot takes and why: the one place that decides between fast adaptation and the incremental
step, and keeps the counts that decision needs (snapshots since the last adaptation, anchors then, work left
for a background refresh).

A decision is a :class:`PathPlan`; the aligner carries it out and reports back with :meth:`AdaptationPolicy.adapted`
or :meth:`AdaptationPolicy.stepped`, so no other code adjusts the counts.

>>> from aligner.config import AdaptConfig
>>> policy = AdaptationPolicy(AdaptConfig(every_snapshots=2, anchor_growth=0.0))
>>> policy.plan(anchors=10, adapted=False, matched=False, drift=None, defer=False).reason
'first snapshot'
>>> policy.adapted(anchors=10)
>>> policy.plan(anchors=10, adapted=True, matched=True, drift=None, defer=False).path
<AlignmentPath.INCREMENTAL: 'incremental'>
>>> policy.stepped()
>>> policy.plan(anchors=10, adapted=True, matched=True, drift=None, defer=True)
PathPlan(path=<AlignmentPath.ADAPTATION: 'adaptation'>, reason='schedule: every 2 snapshots', deferred=True)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aligner.config import AdaptConfig
from aligner.update import AlignmentPath


@dataclasses.dataclass(frozen=True)
class PathPlan:
    """What to do with a snapshot: the path, why (``None``: nothing called for more than an incremental step),
    and whether an adaptation due was deferred, the incremental path standing in until a refresh runs it."""

    path: AlignmentPath
    reason: str | None = None
    deferred: bool = False


class AdaptationPolicy:
    """The adaptation schedule (see the module docstring); ``cfg`` is the aligner's adaptation settings."""

    def __init__(self, cfg: AdaptConfig):
        self.cfg = cfg
        self.since_adaptation = 0
        self.anchors_at_adaptation = 0
        # Heavy work a deferring step found due and left to a refresh: the path (the incremental one's heavy
        # branches run then) and why.
        self.deferred: tuple[AlignmentPath, str] | None = None

    def plan(self, anchors: int, adapted: bool, matched: bool, drift: str | None, defer: bool) -> PathPlan:
        """The path for a snapshot with ``anchors`` known anchors. ``adapted``: there are adapted weights;
        ``matched``: every aligned pair has a matcher; ``drift``: what the quality monitor detected; ``defer``:
        the caller wants heavy work left to a refresh where an incremental step can stand in."""
        reason = self._adaptation_reason(anchors, adapted, matched, drift)
        if reason is None:
            return PathPlan(AlignmentPath.INCREMENTAL)
        if defer and adapted and matched and self.cfg.incremental:
            self.defer(AlignmentPath.ADAPTATION, reason)
            return PathPlan(AlignmentPath.ADAPTATION, reason, deferred=True)
        return PathPlan(AlignmentPath.ADAPTATION, reason)

    def _adaptation_reason(self, anchors: int, adapted: bool, matched: bool, drift: str | None) -> str | None:
        cfg = self.cfg
        if not adapted:
            return "first snapshot"
        if not matched:
            return "new pair of networks"
        if not cfg.incremental:
            return "incremental path disabled"
        if drift:
            return f"drift: {drift}"
        if cfg.every_snapshots and self.since_adaptation + 1 >= cfg.every_snapshots:
            return f"schedule: every {cfg.every_snapshots} snapshots"
        if cfg.anchor_growth and anchors >= (1.0 + cfg.anchor_growth) * max(self.anchors_at_adaptation, 1):
            return f"anchors grew from {self.anchors_at_adaptation} to {anchors}"
        return None

    def defer(self, path: AlignmentPath, reason: str) -> None:
        """Note heavy work for the refresh; an adaptation, which also aligns everything afresh, wins over the
        incremental path's heavy branches."""
        if self.deferred is None or (path == AlignmentPath.ADAPTATION and self.deferred[0] != AlignmentPath.ADAPTATION):
            self.deferred = (path, reason)

    def take_deferred(self) -> tuple[AlignmentPath, str]:
        """The deferred work, for a refresh of the snapshot that deferred it (whose step is already counted)."""
        if self.deferred is None:
            raise ValueError("nothing was deferred: refresh follows on_snapshot(..., defer=True)")
        deferred, self.deferred = self.deferred, None
        self.since_adaptation -= 1
        return deferred

    def adapted(self, anchors: int) -> None:
        """An adaptation ran with ``anchors`` known anchors."""
        self.since_adaptation = 0
        self.anchors_at_adaptation = anchors

    def stepped(self) -> None:
        """An incremental step ran."""
        self.since_adaptation += 1

    def state(self) -> dict[str, Any]:
        return {"anchors_at_adaptation": self.anchors_at_adaptation, "since_adaptation": self.since_adaptation,
                "deferred": self.deferred}

    def load(self, state: dict[str, Any]) -> None:
        self.anchors_at_adaptation = state["anchors_at_adaptation"]
        self.since_adaptation = state["since_adaptation"]
        self.deferred = state.get("deferred")  # older states have none: nothing deferred
