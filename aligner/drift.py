"""Online quality and drift: is the current model still right, or has the world moved under it?

Anchors that arrive in the stream are the only labels a live aligner ever gets. Before the aligner learns from
a new anchor it is *scored* against the alignments currently published (prequential, test-then-train
evaluation), so the running Hits@1 and MRR are honest estimates of what users are reading. Two river drift
detectors watch the streams that matter:

- ADWIN on the new anchors' reciprocal ranks: a sustained change in quality;
- Page-Hinkley on the embedding shift of re-encoded nodes (mean cosine distance to their previous embedding):
  the inputs moving even before labels say so.

Either firing asks the aligner for an adaptation (``drift_pending``), which clears it.

>>> monitor = QualityMonitor(delta=0.002, shift_threshold=0.5)
>>> for _ in range(300):
...     monitor.learn_one(rank=1)
>>> monitor.drift_pending, round(monitor.hits_at_1.get(), 2)
(False, 1.0)
>>> for _ in range(300):
...     monitor.learn_one(rank=40)
>>> monitor.drift_pending, monitor.drifts
(True, 1)
"""

from __future__ import annotations

from river import drift, stats, utils

ROLLING_WINDOW = 200


class QualityMonitor:
    """Prequential Hits@1 / Hits@10 / MRR (running and over the last ``ROLLING_WINDOW`` anchors) plus drift."""

    def __init__(self, delta: float = 0.002, shift_threshold: float = 0.05):
        self.hits_at_1 = stats.Mean()
        self.hits_at_10 = stats.Mean()
        self.mrr = stats.Mean()
        self.recent_mrr = utils.Rolling(stats.Mean(), window_size=ROLLING_WINDOW)
        self.quality_detector = drift.ADWIN(delta=delta)
        # Page-Hinkley on the mean shift per snapshot: few observations, so a short warm-up.
        self.shift_detector = drift.PageHinkley(min_instances=5, threshold=shift_threshold, mode="up")
        self.drift_pending = False
        self.drifts = 0
        self.last_reason = ""

    # Per pair "A|B": [Hits@1, MRR] running means. A class default, so monitors pickled in checkpoints written
    # before it existed still load; the first scored anchor gives an instance its own dict.
    by_pair: dict[str, list[stats.Mean]] = {}

    def learn_one(self, rank: int, pair: str | None = None) -> None:
        """One newly revealed anchor: the 1-based rank its true partner had in the published alignments, in the
        pair ``pair`` ("A|B", names sorted) if given."""
        rr = 1.0 / rank
        if pair is not None:
            if "by_pair" not in self.__dict__:
                self.by_pair = {}
            hits, mrr = self.by_pair.setdefault(pair, [stats.Mean(), stats.Mean()])
            hits.update(float(rank <= 1))
            mrr.update(rr)
        self.hits_at_1.update(float(rank <= 1))
        self.hits_at_10.update(float(rank <= 10))
        self.mrr.update(rr)
        self.recent_mrr.update(rr)
        self.quality_detector.update(rr)
        if self.quality_detector.drift_detected:
            self._flag("quality (ADWIN on reciprocal rank of new anchors)")

    def learn_shift(self, mean_cosine_distance: float) -> None:
        """The mean embedding shift of the nodes re-encoded in one incremental update."""
        self.shift_detector.update(mean_cosine_distance)
        if self.shift_detector.drift_detected:
            self._flag("embedding shift (Page-Hinkley)")

    def consume_drift(self) -> str | None:
        """The pending drift's reason, cleared; ``None`` when there is none."""
        if not self.drift_pending:
            return None
        self.drift_pending = False
        return self.last_reason

    def metrics(self) -> dict[str, float | int]:
        return {
            "prequential_anchors": int(self.mrr.n),
            "prequential_hits@1": round(self.hits_at_1.get(), 4),
            "prequential_hits@10": round(self.hits_at_10.get(), 4),
            "prequential_mrr": round(self.mrr.get(), 4),
            "recent_mrr": round(self.recent_mrr.get(), 4),
            "drifts": self.drifts,
            "prequential_pairs": {pair: {"anchors": int(mrr.n), "hits@1": round(hits.get(), 4),
                                         "mrr": round(mrr.get(), 4)} for pair, (hits, mrr) in self.by_pair.items()},
        }

    def _flag(self, reason: str) -> None:
        self.drift_pending = True
        self.drifts += 1
        self.last_reason = reason
