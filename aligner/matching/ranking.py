"""Ranking metrics: how high each true partner ranks among all alive candidates (Hits@k, MRR).

A *scorer* yields rows of scores (source nodes x all destination nodes) on demand, so a 10k x 10k pair never
needs more than one chunk of rows at a time (:class:`aligner.matching.incremental.DirectionScorer` is the aligner's).

>>> import torch
>>> class Dense:  # a scorer over a score matrix held in full
...     def __init__(self, scores): self.scores = scores
...     def rows(self, index): return self.scores[index]
>>> scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5]])
>>> ranking_metrics(Dense(scores), torch.tensor([[0, 0], [1, 1]]), torch.ones(3, dtype=torch.bool))["hits@1"]
0.5

Ties count against the true partner. Structurally identical nodes (two accounts with the same neighbours and no
attributes) score exactly alike under any method that does not look at node ids, so ``hits@1_shared`` also
reports the expected Hits@1 when ties are broken at random, and ``tied@1`` how often the true partner shares first
place:

>>> tied = torch.tensor([[0.5, 0.5, 0.0]])
>>> m = ranking_metrics(Dense(tied), torch.tensor([[0, 0]]), torch.ones(3, dtype=torch.bool))
>>> m["hits@1"], m["hits@1_shared"], m["tied@1"]
(0.0, 0.5, 1.0)
"""

from __future__ import annotations

from typing import Protocol

import torch

CHUNK_ROWS = 2048
CHUNK_CELLS = 2048 * 12_000  # rows x destination nodes scored at once: past 12k destinations, fewer rows


class Scorer(Protocol):
    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Scores of source rows ``index`` against every destination node, ``(len(index), n_dst)``."""


def rank_bounds(scorer: Scorer, pairs: torch.Tensor, alive_dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based best and worst rank of each pair's true partner among all alive destination nodes: equal when no
    other candidate ties with it."""
    best = torch.empty(len(pairs), dtype=torch.long)
    worst = torch.empty(len(pairs), dtype=torch.long)
    chunk = max(1, min(CHUNK_ROWS, CHUNK_CELLS // max(len(alive_dst), 1)))
    with torch.no_grad():
        for start in range(0, len(pairs), chunk):
            p = pairs[start:start + chunk]
            # A nan score must not rank first: it counts as the worst possible.
            scores = torch.nan_to_num(scorer.rows(p[:, 0]), nan=float("-inf")).masked_fill(~alive_dst, float("-inf"))
            true = scores.gather(1, p[:, 1:2])
            best[start:start + len(p)] = (scores > true).sum(dim=1) + 1
            worst[start:start + len(p)] = (scores >= true).sum(dim=1).clamp_min(1)
    return best, worst


def ranks(scorer: Scorer, pairs: torch.Tensor, alive_dst: torch.Tensor) -> torch.Tensor:
    """1-based rank of each pair's true partner among all alive destination nodes (ties count against it)."""
    return rank_bounds(scorer, pairs, alive_dst)[1]


def ranking_metrics(scorer: Scorer, pairs: torch.Tensor, alive_dst: torch.Tensor,
                    ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Hits@k and MRR of ``pairs`` (source index, true destination index), ranking against all alive nodes."""
    if len(pairs) == 0:
        return {**{f"hits@{k}": float("nan") for k in ks}, "mrr": float("nan"), "hits@1_shared": float("nan"),
                "tied@1": float("nan"), "pairs": 0}
    best, worst = rank_bounds(scorer, pairs, alive_dst)
    r = worst.float()
    out = {f"hits@{k}": float((r <= k).float().mean()) for k in ks}
    out["mrr"] = float((1.0 / r).mean())
    first = best == 1
    out["hits@1_shared"] = float(torch.where(first, 1.0 / r, torch.zeros_like(r)).mean())
    out["tied@1"] = float((first & (worst > 1)).float().mean())
    out["pairs"] = len(pairs)
    return out
