"""Self-calibration: the transport settings that suit *this* pair of networks, chosen on the user's own anchors.

No single setting of the structure-consistent matching (:mod:`aligner.matching.refine`) serves every pair. Where most of
one network has no counterpart in the other (douban's online network, a cross-platform pair with a third of its
nodes anchored), relaxed marginals let that mass vanish instead of forcing it onto wrong partners; where nearly
every node has one, exact marginals can be what makes the plan one-to-one, and relaxing them then costs most of
the accuracy, or the other way round (docs/benchmarks.md has the measured cases). Network sizes alone do not
say which case a pair is; the user's anchors do.

So at adaptation time the aligner holds back a seeded part of the known anchors, adapts on the rest, solves each
pair's plan under every candidate setting and ranks the held-back partners under each (reciprocal ranks, both
directions, pooled over the aligned pairs). Only anchors the user gave are used: never test anchors. Too few
anchors to hold back, or a single candidate, and the configured settings stand.

A candidate replaces the configured setting only when it ranks the held-back anchors better by a clear margin:
the mean of its per-anchor reciprocal-rank gains over the configured setting must exceed ``SIGNIFICANCE`` standard
errors of that mean. Held-back sets are small (tens of anchors), and without the margin a coin flip between two
near-equal settings would be a change of setting, and with it of every published score.

>>> candidates(RefineConfig(calibration_marginals="0.1,none", calibration_betas=""))
[RefineSetting(marginal_weight=0.1, beta=0.3), RefineSetting(marginal_weight=None, beta=0.3)]
>>> configured, exact = RefineSetting(0.1, 0.3), RefineSetting(None, 0.3)
>>> choose({configured: np.array([0.5, 1.0, 0.2, 1.0, 0.25, 0.5]), exact: np.ones(6)})
RefineSetting(marginal_weight=None, beta=0.3)
>>> choose({configured: np.array([0.5, 1.0, 0.2, 1.0]), exact: np.array([1.0, 0.5, 0.2, 1.0])})  # a tie
RefineSetting(marginal_weight=0.1, beta=0.3)
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


SIGNIFICANCE = 2.0  # standard errors of the mean reciprocal-rank gain a candidate must clear to replace the first


def choose(reciprocal_ranks: dict[RefineSetting, np.ndarray]) -> RefineSetting:
    """The candidate to keep, given each one's reciprocal ranks of the same held-back anchors (same order): the
    best by mean if it beats the first (the configured setting) by a significant paired margin, else the first."""
    first, *_ = reciprocal_ranks
    top = max(reciprocal_ranks, key=lambda c: (float(reciprocal_ranks[c].mean()), -list(reciprocal_ranks).index(c)))
    gain = reciprocal_ranks[top] - reciprocal_ranks[first]
    if len(gain) < 2 or top == first:
        return first
    stderr = float(gain.std(ddof=1)) / np.sqrt(len(gain))
    return top if float(gain.mean()) > SIGNIFICANCE * stderr else first


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
