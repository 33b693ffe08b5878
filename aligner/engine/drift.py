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
from river._river_rust.drift import AdaptiveWindowing

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

    def metrics(self) -> dict[str, float | int | dict[str, dict[str, float]]]:
        return {
            "prequential_anchors": int(self.mrr.n),
            "prequential_hits@1": round(self.hits_at_1.get(), 4),
            "prequential_hits@10": round(self.hits_at_10.get(), 4),
            "prequential_mrr": round(self.mrr.get(), 4),
            # river's Rolling forwards get() to the wrapped Mean through a __getattr__ typed as returning object
            "recent_mrr": round(self.recent_mrr.get(), 4),  # type: ignore[operator]
            "drifts": self.drifts,
            "prequential_pairs": {pair: {"anchors": int(mrr.n), "hits@1": round(hits.get(), 4),
                                         "mrr": round(mrr.get(), 4)} for pair, (hits, mrr) in self.by_pair.items()},
        }

    # -- state as plain data (aligner.engine.state_codec: no pickle) --------------------------------------------------
    def state(self) -> dict:
        """Numbers, strings and bytes from which :meth:`from_state` rebuilds this monitor exactly: running means
        as ``(n, mean)``, the rolling window's values, Page-Hinkley's sums, and ADWIN's window as the bytes its
        Rust core serialises itself to (plain data, read back by that core's own deserialiser, no code).

        >>> monitor = QualityMonitor()
        >>> for rank in (1, 3, 1, 2):
        ...     monitor.learn_one(rank, pair="a|b")
        >>> QualityMonitor.from_state(monitor.state()).metrics() == monitor.metrics()
        True
        """
        adwin, ph = self.quality_detector, self.shift_detector
        return {
            "means": {name: _mean_state(getattr(self, name)) for name in ("hits_at_1", "hits_at_10", "mrr")},
            "recent": [float(args[0]) for args, _ in self.recent_mrr.window],
            "adwin": {"delta": adwin.delta, "clock": adwin.clock, "max_buckets": adwin.max_buckets,
                      "min_window_length": adwin.min_window_length, "grace_period": adwin.grace_period,
                      "drift_detected": bool(adwin._drift_detected), "window": adwin._helper.__getstate__()},
            "page_hinkley": {"min_instances": ph.min_instances, "delta": ph.delta, "threshold": ph.threshold,
                             "alpha": ph.alpha, "mode": ph.mode, "drift_detected": bool(ph._drift_detected),
                             "x_mean": _mean_state(ph._x_mean), "sums": [ph._sum_increase, ph._sum_decrease,
                                                                         ph._min_increase, ph._max_decrease]},
            "drift_pending": self.drift_pending, "drifts": self.drifts, "last_reason": self.last_reason,
            "by_pair": {pair: [_mean_state(hits), _mean_state(mrr)] for pair, (hits, mrr) in self.by_pair.items()},
        }

    @classmethod
    def from_state(cls, state: dict) -> "QualityMonitor":
        a, p = state["adwin"], state["page_hinkley"]
        self = cls(delta=float(a["delta"]), shift_threshold=float(p["threshold"]))
        for name, mean in state["means"].items():
            setattr(self, name, _mean_from(mean))
        for value in state["recent"]:
            self.recent_mrr.update(float(value))
        adwin = drift.ADWIN(delta=float(a["delta"]), clock=int(a["clock"]), max_buckets=int(a["max_buckets"]),
                            min_window_length=int(a["min_window_length"]), grace_period=int(a["grace_period"]))
        adwin._helper = AdaptiveWindowing(float(a["delta"]), int(a["clock"]), int(a["max_buckets"]),
                                          int(a["min_window_length"]), int(a["grace_period"]))
        adwin._helper.__setstate__(bytes(a["window"]))
        adwin._drift_detected = bool(a["drift_detected"])
        self.quality_detector = adwin
        ph = drift.PageHinkley(min_instances=int(p["min_instances"]), delta=float(p["delta"]),
                               threshold=float(p["threshold"]), alpha=float(p["alpha"]), mode=str(p["mode"]))
        ph._x_mean = _mean_from(p["x_mean"])
        ph._sum_increase, ph._sum_decrease, ph._min_increase, ph._max_decrease = (float(v) for v in p["sums"])
        ph._drift_detected = bool(p["drift_detected"])
        self.shift_detector = ph
        self.drift_pending, self.drifts = bool(state["drift_pending"]), int(state["drifts"])
        self.last_reason = str(state["last_reason"])
        self.by_pair = {str(pair): [_mean_from(h), _mean_from(m)] for pair, (h, m) in state["by_pair"].items()}
        return self

    def _flag(self, reason: str) -> None:
        self.drift_pending = True
        self.drifts += 1
        self.last_reason = reason


def _mean_state(mean: stats.Mean) -> list[float]:
    return [float(mean.n), float(mean.get())]


def _mean_from(state: list[float]) -> stats.Mean:
    mean = stats.Mean()
    mean.n, mean._mean = float(state[0]), float(state[1])
    return mean
