"""Drift detection: fires on a change in quality or in embeddings, stays quiet on a stationary stream."""

from __future__ import annotations

import numpy as np

from aligner.engine.drift import QualityMonitor


def ranks(rng: np.random.Generator, hit_rate: float, n: int) -> list[int]:
    """Ranks of new anchors: a hit with ``hit_rate``, else geometric over the rest of the list."""
    return [1 if rng.random() < hit_rate else 1 + int(rng.geometric(0.2)) for _ in range(n)]


def test_quality_drift_fires_on_a_drop_and_not_on_a_stationary_stream():
    rng = np.random.default_rng(0)
    quiet = QualityMonitor()
    for r in ranks(rng, 0.7, 4000):
        quiet.learn_one(r)
    assert quiet.drifts == 0 and not quiet.drift_pending
    assert abs(quiet.metrics()["prequential_hits@1"] - 0.7) < 0.03

    changed = QualityMonitor()
    for r in ranks(rng, 0.7, 1000):
        changed.learn_one(r)
    assert changed.drifts == 0
    for r in ranks(rng, 0.3, 300):
        changed.learn_one(r)
    assert changed.drift_pending and changed.consume_drift().startswith("quality")
    assert not changed.drift_pending  # consumed: one adaptation per detection


def test_embedding_shift_drift():
    rng = np.random.default_rng(1)
    quiet = QualityMonitor(shift_threshold=0.05)
    for _ in range(200):
        quiet.learn_shift(0.01 + 0.002 * rng.standard_normal())
    assert quiet.drifts == 0
    for _ in range(20):
        quiet.learn_shift(0.2 + 0.002 * rng.standard_normal())
    assert quiet.drifts >= 1 and quiet.consume_drift().startswith("embedding shift")
