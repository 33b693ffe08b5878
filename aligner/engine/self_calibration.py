"""When the aligner calibrates its transport settings on the user's anchors, and the calibration run itself
(the method is :mod:`aligner.matching.calibration`'s): hold back part of the anchors, adapt on the rest, solve
each pair's plan under every candidate setting, rank the held-back partners, keep the winner.

The :class:`Calibrator` owns what the choice leaves behind (the setting chosen and the anchor count it was
chosen on), so a restarted aligner neither calibrates again too soon nor forgets what it chose.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from aligner.config import RefineConfig
from aligner.engine.tasks import SnapshotInputs
from aligner.matching.calibration import RefineSetting, candidates, choose, holdout_split
from aligner.matching.incremental import Direction, DirectionScorer
from aligner.matching.ranking import ranks
from aligner.runtime import return_free_heap

if TYPE_CHECKING:
    from aligner.engine.aligner import Aligner

log = logging.getLogger(__name__)


def anchor_count(anchors: dict[tuple[str, str], np.ndarray]) -> int:
    return int(sum(len(rows) for rows in anchors.values()))


class Calibrator:
    """Self-calibration's schedule and outcome (see the module docstring)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.calibrated: RefineSetting | None = None  # the setting chosen, None before any calibration
        self.anchors_at_calibration = 0

    def split(self, inputs: SnapshotInputs, cfg: RefineConfig) -> tuple[SnapshotInputs, dict] | None:
        """Fit inputs and held-back anchors when a calibration is due: calibration is on, there is more than one
        candidate, enough anchors to hold back, and none has been done or the anchors grew
        ``refine.calibration_growth`` times since (so a stream revealing anchors calibrates a few times, not on
        every adaptation). The split is seeded by the seed and the anchor count, so a restarted aligner splits
        the same way. Later calibrations start from an initialisation meta-learned on every anchor known then,
        held-back ones included: they rank a little better than they would unseen, under every candidate alike."""
        count = anchor_count(inputs.anchors)
        if not cfg.calibrate or not cfg.enabled or len(candidates(cfg)) < 2:
            return None
        if self.calibrated is not None and count < cfg.calibration_growth * self.anchors_at_calibration:
            return None
        rng = np.random.default_rng([self.seed, 2, count])
        split = holdout_split(inputs.anchors, cfg.calibration_holdout, cfg.calibration_min_anchors, rng)
        if split is None:
            return None
        return dataclasses.replace(inputs, anchors=split[0], encoded=None), split[1]

    def run(self, aligner: "Aligner", fit: SnapshotInputs, heldout: dict[tuple[str, str], np.ndarray]) -> dict:
        """Adapt ``aligner`` on ``fit``, solve every pair's plan under each candidate setting, rank the
        ``heldout`` anchors under each (both directions, pooled over pairs), leave the aligner on the setting
        :func:`aligner.matching.calibration.choose` picks. Returns the stats: the choice and each candidate's
        held-out MRR."""
        started = time.perf_counter()
        base = aligner.alignments.refine
        aligner.infer(aligner.adapt(fit, aligner.adapt_cfg.steps), fit)
        return_free_heap()
        reciprocal: dict[RefineSetting, np.ndarray] = {}
        for candidate in candidates(base):
            aligner.alignments.refine = candidate.applied(base)
            found = []
            for (a, b), rows in heldout.items():
                matcher = aligner.alignments.full_match(a, b)
                pairs = torch.from_numpy(rows.astype(np.int64))
                alive = aligner.networks[b].alive, aligner.networks[a].alive
                sides: tuple[tuple[Direction, torch.Tensor, torch.Tensor], ...] = (
                    ("ab", pairs, alive[0]), ("ba", pairs.flip(1), alive[1]))
                for direction, p, dst_alive in sides:
                    found.append(1.0 / ranks(DirectionScorer(matcher, direction), p, dst_alive).double().numpy())
                del matcher
            reciprocal[candidate] = np.concatenate(found)
            if len(reciprocal) == 1 and bool((reciprocal[candidate] == 1.0).all()):
                break  # the configured setting ranks every held-back anchor first: nothing can beat it
        scores = {c: float(rr.mean()) for c, rr in reciprocal.items()}
        chosen = choose(reciprocal)
        aligner.alignments.refine = chosen.applied(base)
        self.calibrated = chosen
        self.anchors_at_calibration = anchor_count(fit.anchors) + anchor_count(heldout)
        log.info("calibration: %s (held-back MRR %s; %d anchors held back)", chosen.label,
                 ", ".join(f"{c.label} {s:.3f}" for c, s in scores.items()), anchor_count(heldout))
        return {"calibrated": chosen.as_dict(),
                "calibration_mrr": {c.label: round(s, 4) for c, s in scores.items()},
                "calibration_s": round(time.perf_counter() - started, 3)}

    def state(self) -> dict[str, Any]:
        return {"calibrated": None if self.calibrated is None else self.calibrated.as_dict(),
                "anchors_at_calibration": self.anchors_at_calibration}

    def load(self, state: dict[str, Any]) -> None:
        calibrated = state.get("calibrated")  # none (never calibrated, or an older state): configured settings
        self.calibrated = None if calibrated is None else RefineSetting(**calibrated)
        self.anchors_at_calibration = state.get("anchors_at_calibration", 0)
