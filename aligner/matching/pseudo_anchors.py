"""Pseudo-anchors: the pairs a structure-consistent plan is sure of, both ways, used as extra seeds.

With few anchors, positions relative to them are coarse and the loss has little to learn from; a plan's
confident mutual top-1 pairs are right far more often than the model alone, and sharpen both (docs/benchmarks.md,
"pseudo-anchors", has the measured share right and what they add). Only nodes not anchored yet qualify, so a
pseudo-anchor never contradicts a known one.
"""

from __future__ import annotations

import numpy as np
import torch

from aligner.matching.incremental import PairMatcher


def confident_pairs(matcher: PairMatcher, anchored: np.ndarray, threshold: float) -> np.ndarray:
    """``(k, 2)`` node pairs, first network's node then second's, that are each other's top-1 under ``matcher``
    with confidence at least ``threshold``, both alive, and neither in a row of ``anchored`` (``(m, 2)``)."""
    to_b, conf = matcher.top("ab")
    to_a, _ = matcher.top("ba")
    best, conf = to_b[:, 0], conf[:, 0]
    a = torch.arange(len(best))
    keep = (to_a[best, 0] == a) & (conf >= threshold) & matcher.va.alive & matcher.vb.alive[best]
    keep[torch.from_numpy(anchored[:, 0])] = False
    keep &= ~torch.isin(best, torch.from_numpy(anchored[:, 1]))
    return torch.stack([a[keep], best[keep]], dim=1).numpy()
