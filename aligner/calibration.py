"""Self-calibration: the transport settings that suit *this* pair of networks, chosen on the user's own anchors.

No single setting of the structure-consistent matching (:mod:`aligner.refine`) serves every pair. Where most of
one network has no counterpart in the other (douban's online network, a cross-platform pair with a third of its
nodes anchored), relaxed marginals let that mass vanish instead of forcing it onto wrong partners; where nearly
every node has one (two views of one network), exact marginals are what makes the plan one-to-one, and relaxing
them costs most of the accuracy. Network sizes alone do not say which case a pair is; the user's anchors do.

So at adaptation time the aligner holds back a seeded part of the known anchors, adapts on the rest, solves each
pair's plan under every candidate setting and keeps the one whose plan ranks the held-back partners best (MRR,
both directions, pooled over the aligned pairs). Only anchors the user gave are used: never test anchors. Too
few anchors to hold back, or a single candidate, and the configured settings stand.

>>> candidates(RefineConfig(calibration_marginals="0.1,none", calibration_betas=""))
[RefineSetting(marginal_weight=0.1, beta=0.3), RefineSetting(marginal_weight=None, beta=0.3)]
>>> best({RefineSetting(0.1, 0.3): 0.42, RefineSetting(None, 0.3): 0.61})
RefineSetting(marginal_weight=None, beta=0.3)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from aligner.config import RefineConfig, parse_setting_values


@dataclass(frozen=True)
class RefineSetting:
    """One candidate: the settings calibration chooses among (the rest of :class:`RefineConfig` stays)."""

    marginal_weight: float | None
    beta: float

    def applied(self, cfg: RefineConfig) -> RefineConfig:
        return dataclasses.replace(cfg, marginal_weight=self.marginal_weight, beta=self.beta)

    @property
    def label(self) -> str:
        """e.g. ``marginal=0.1 beta=0.3`` (``marginal=exact``: balanced transport)."""
        marginal = "exact" if self.marginal_weight is None else f"{self.marginal_weight:g}"
        return f"marginal={marginal} beta={self.beta:g}"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def candidates(cfg: RefineConfig) -> list[RefineSetting]:
    """Every combination of ``calibration_marginals`` x ``calibration_betas`` (an empty list: the configured
    value alone), the configured setting first, so that a tie keeps it."""
    marginals = parse_setting_values(cfg.calibration_marginals) or [cfg.marginal_weight]
    betas = [b for b in parse_setting_values(cfg.calibration_betas) if b is not None] or [cfg.beta]
    configured = RefineSetting(cfg.marginal_weight, cfg.beta)
    grid = [RefineSetting(m, b) for m in marginals for b in betas]
    return [configured, *(c for c in grid if c != configured)] if configured in grid else grid


def best(scores: dict[RefineSetting, float]) -> RefineSetting:
    """The best-scoring candidate; on a tie, the one tried first."""
    return max(scores, key=lambda c: (scores[c], -list(scores).index(c)))


def holdout_split(anchors: dict[tuple[str, str], np.ndarray], fraction: float, min_heldout: int,
                  rng: np.random.Generator) -> tuple[dict, dict] | None:
    """``(fit, heldout)``: each pair's anchor rows split at random, ``fraction`` held out; ``None`` when fewer
    than ``min_heldout`` would be held out in all (their ranks would say more about chance than about settings).
    Every pair keeps at least 3 anchors to fit on.

    >>> rows = np.arange(200).reshape(100, 2)
    >>> fit, held = holdout_split({("a", "b"): rows}, 0.2, 10, np.random.default_rng(0))
    >>> len(fit[("a", "b")]), len(held[("a", "b")])
    (80, 20)
    >>> holdout_split({("a", "b"): rows}, 0.2, 30, np.random.default_rng(0)) is None
    True
    """
    fit, heldout = {}, {}
    for pair, rows in anchors.items():
        n_held = min(int(round(len(rows) * fraction)), max(len(rows) - 3, 0))
        perm = rng.permutation(len(rows))
        fit[pair] = rows[np.sort(perm[n_held:])]
        if n_held:
            heldout[pair] = rows[np.sort(perm[:n_held])]
    if sum(len(rows) for rows in heldout.values()) < min_heldout:
        return None
    return fit, heldout
