"""From scores to alignments: top-k candidates per node, and the ranking metrics used to judge them.

A *scorer* yields rows of scores (source nodes × all destination nodes) on demand, so a 10k × 10k pair never
needs more than one chunk of rows at a time unless the scores are already a dense matrix (the transport plan
of :mod:`aligner.refine`). ``CosineScorer`` scores unit-norm embeddings; ``PlanScorer`` turns a log transport
plan into per-row probabilities (the confidence that the destination node is the one).

>>> import torch
>>> z = torch.nn.functional.normalize(torch.eye(3) + 0.1, dim=1)
>>> alive = torch.ones(3, dtype=torch.bool)
>>> idx, scores = top_k(CosineScorer(z, z), alive, k=2)
>>> idx[:, 0].tolist()
[0, 1, 2]
>>> ranking_metrics(CosineScorer(z, z), torch.tensor([[0, 0], [1, 2]]), alive)["hits@1"]
0.5
"""

from __future__ import annotations

import torch

CHUNK_ROWS = 2048


class CosineScorer:
    """Cosine similarity of unit-norm embeddings."""

    def __init__(self, z_src: torch.Tensor, z_dst: torch.Tensor):
        self.z_src, self.z_dst = z_src, z_dst

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        return self.z_src[index] @ self.z_dst.T


class PlanScorer:
    """Rows of a log transport plan as probabilities over destination nodes (``transpose`` for the reverse)."""

    def __init__(self, log_plan: torch.Tensor, transpose: bool = False):
        self.log_plan = log_plan.T if transpose else log_plan

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.log_plan[index], dim=1)


def top_k(scorer, alive_dst: torch.Tensor, k: int, rows: torch.Tensor | None = None,
          n_src: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` alive destination nodes for each source row (``rows`` selects source nodes; default all)."""
    if rows is None:
        rows = torch.arange(n_src if n_src is not None else _n_src(scorer))
    k = max(0, min(k, int(alive_dst.sum())))
    out_idx = torch.empty((len(rows), k), dtype=torch.long)
    out_val = torch.empty((len(rows), k), dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start:start + CHUNK_ROWS]
            scores = scorer.rows(chunk).masked_fill(~alive_dst, float("-inf"))
            val, idx = scores.topk(k, dim=1)
            out_idx[start:start + len(chunk)] = idx
            out_val[start:start + len(chunk)] = val
    return out_idx, out_val


def ranks(scorer, pairs: torch.Tensor, alive_dst: torch.Tensor) -> torch.Tensor:
    """1-based rank of each pair's true partner among all alive destination nodes (ties count against it)."""
    out = torch.empty(len(pairs), dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(pairs), CHUNK_ROWS):
            p = pairs[start:start + CHUNK_ROWS]
            # A nan score must not rank first: it counts as the worst possible.
            scores = torch.nan_to_num(scorer.rows(p[:, 0]), nan=float("-inf")).masked_fill(~alive_dst, float("-inf"))
            true = scores.gather(1, p[:, 1:2])
            out[start:start + len(p)] = (scores >= true).sum(dim=1).clamp_min(1)
    return out


def ranking_metrics(scorer, pairs: torch.Tensor, alive_dst: torch.Tensor,
                    ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Hits@k and MRR of ``pairs`` (source index, true destination index), ranking against all alive nodes."""
    if len(pairs) == 0:
        return {**{f"hits@{k}": float("nan") for k in ks}, "mrr": float("nan"), "pairs": 0}
    r = ranks(scorer, pairs, alive_dst).float()
    out = {f"hits@{k}": float((r <= k).float().mean()) for k in ks}
    out["mrr"] = float((1.0 / r).mean())
    out["pairs"] = len(pairs)
    return out


def _n_src(scorer) -> int:
    return scorer.z_src.shape[0] if isinstance(scorer, CosineScorer) else scorer.log_plan.shape[0]
