"""From embeddings to alignments: top-k candidates per node, and the ranking metrics used to judge them.

Scores are cosine similarities of the unit-norm embeddings. Work is chunked over source rows so a
10k × 10k pair never materialises its full similarity matrix.

>>> import torch
>>> z = torch.nn.functional.normalize(torch.eye(3) + 0.1, dim=1)
>>> alive = torch.ones(3, dtype=torch.bool)
>>> idx, scores = top_k(z, z, alive, k=2)
>>> idx[:, 0].tolist()
[0, 1, 2]
>>> ranking_metrics(z, z, torch.tensor([[0, 0], [1, 2]]), alive)["hits@1"]
0.5
"""

from __future__ import annotations

import torch

CHUNK_ROWS = 2048


def top_k(z_src: torch.Tensor, z_dst: torch.Tensor, alive_dst: torch.Tensor, k: int,
          rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` alive destination nodes for each source row (``rows`` selects source nodes; default all)."""
    rows = torch.arange(z_src.shape[0]) if rows is None else rows
    k = max(0, min(k, int(alive_dst.sum())))
    out_idx = torch.empty((len(rows), k), dtype=torch.long)
    out_val = torch.empty((len(rows), k), dtype=torch.float32)
    dead = ~alive_dst
    with torch.no_grad():
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start:start + CHUNK_ROWS]
            scores = (z_src[chunk] @ z_dst.T).masked_fill_(dead, float("-inf"))
            val, idx = scores.topk(k, dim=1)
            out_idx[start:start + len(chunk)] = idx
            out_val[start:start + len(chunk)] = val
    return out_idx, out_val


def ranks(z_src: torch.Tensor, z_dst: torch.Tensor, pairs: torch.Tensor, alive_dst: torch.Tensor) -> torch.Tensor:
    """1-based rank of each pair's true partner among all alive destination nodes (ties count against it)."""
    out = torch.empty(len(pairs), dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(pairs), CHUNK_ROWS):
            p = pairs[start:start + CHUNK_ROWS]
            scores = (z_src[p[:, 0]] @ z_dst.T).masked_fill_(~alive_dst, float("-inf"))
            true = scores.gather(1, p[:, 1:2])
            out[start:start + len(p)] = (scores >= true).sum(dim=1)
    return out


def ranking_metrics(z_src: torch.Tensor, z_dst: torch.Tensor, pairs: torch.Tensor, alive_dst: torch.Tensor,
                    ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Hits@k and MRR of ``pairs`` (source index, true destination index), ranking against all alive nodes."""
    if len(pairs) == 0:
        return {**{f"hits@{k}": float("nan") for k in ks}, "mrr": float("nan"), "pairs": 0}
    r = ranks(z_src, z_dst, pairs, alive_dst).float()
    out = {f"hits@{k}": float((r <= k).float().mean()) for k in ks}
    out["mrr"] = float((1.0 / r).mean())
    out["pairs"] = len(pairs)
    return out
