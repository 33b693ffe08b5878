"""Transitive consistency of many alignments: does going a -> b -> c land where a -> c does?

With three or more networks aligned, every pair's top-1 can be checked against its composition through each
other network: a person's account in a, matched to one in b and that one to one in c, should be the account
that a matches to in c directly. Where they disagree, at least one of the three matches is wrong, so
disagreement is evidence against a match that no single pair can see, and a pair's *cycle-consistency rate*
(the share of nodes whose direct and composed top-1 agree) says how far the alignments of a set of networks
hold together. A pair aligned with no anchors of its own, through the others, is checked the same way.

>>> ab, bc, ac = np.array([1, 0, 2]), np.array([2, 1, 0]), np.array([1, 2, 0])
>>> agreement(ac, ab, bc).tolist()  # node 0: a->b gives 1, b->c gives 1, directly 1: agrees
[True, True, True]
>>> agreement(np.array([1, 0, -1]), ab, bc).tolist()  # node 2 has no direct top-1 (not alive): left out
[True, False]
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

NO_MATCH = -1  # a top-1 entry for a node that has none (it is not alive)


def agreement(direct: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per node of the source with a direct top-1 and a composed one (``second[first[i]]``, both legs
    defined), whether they are the same node; nodes without either are left out (so the result can be shorter)."""
    valid = (direct != NO_MATCH) & (first != NO_MATCH)
    composed = np.full(len(direct), NO_MATCH)
    composed[valid] = second[first[valid]]
    valid &= composed != NO_MATCH
    return direct[valid] == composed[valid]


def cycle_consistency(top1: Mapping[tuple[str, str], np.ndarray]) -> dict[tuple[str, str], float]:
    """Per pair ``(a, c)`` (``a < c``) with at least one pivot network ``b`` aligned to both: the share of nodes,
    both directions pooled and every pivot counted, whose direct top-1 equals the top-1 composed through the
    pivot. ``top1[(src, dst)]`` is every ``src`` node's top-1 in ``dst`` (:data:`NO_MATCH` for none); both
    directions of each aligned pair are expected."""
    nets = sorted({n for pair in top1 for n in pair})
    out = {}
    for i, a in enumerate(nets):
        for c in nets[i + 1:]:
            if (a, c) not in top1:
                continue
            checks = [agreement(top1[(s, t)], top1[(s, b)], top1[(b, t)])
                      for b in nets if b not in (a, c) and (a, b) in top1 and (b, c) in top1
                      for s, t in ((a, c), (c, a))]
            if checks:
                pooled = np.concatenate(checks)
                out[(a, c)] = float(pooled.mean()) if len(pooled) else 0.0
    return out
