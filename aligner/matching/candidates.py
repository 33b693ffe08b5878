"""Candidates, not all pairs: for each node of either network, the few nodes of the other it could be, found
without materialising the ``n x m`` similarity matrix.

A dense transport plan costs ``n m`` memory and time, which caps a pair at about 11k x 11k nodes (issue 18).
A plan restricted to candidate pairs costs ``n C``, provided the true partner is among a node's candidates.
Two sources, because each misses what the other finds:

- **prior similarity**: each node's ``C`` most similar nodes of the other network (embedding, position and
  attribute cosines, :func:`aligner.matching.incremental.similarity_block`), exact, computed block by block so
  only ``block x m`` scores exist at a time;
- **anchored neighbourhood mapped across**: ``u``'s neighbours that are anchors, mapped to their partners, and
  those partners' neighbours (``A_src M A_dst``, sparse): where the structure says ``u`` sits, whatever the
  embeddings say. The nodes sharing the most anchored neighbours with ``u`` are kept.

:meth:`CandidateSet.recall` measures how often the true partner is a candidate.

>>> import torch
>>> from aligner.matching.incremental import NetworkView, adjacency_csr
>>> z = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
>>> edges = torch.tensor([[0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3]])
>>> view = NetworkView(z, z[:, :2], None, adjacency_csr(edges, 6), torch.ones(6, dtype=torch.bool))
>>> found = candidate_set(view, view, anchors=np.array([[1, 1]]), similar=2, structural=2)
>>> found.recall(np.array([[i, i] for i in range(6)]))  # a node is most similar to itself
1.0
>>> {0, 1} <= set(found.row(0).tolist())  # itself, and the anchor it neighbours, mapped across
True
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
import torch

from aligner.matching.incremental import ROW_CHUNK, NetworkView, similarity_block

PAIR_CHUNK = 1 << 15  # candidate pairs whose feature rows are gathered at once (pair_similarity)


@dataclasses.dataclass(frozen=True)
class CandidateSet:
    """Candidate columns per source row, as a CSR pattern ``(n_src, n_dst)`` (entries: 1)."""

    pattern: sp.csr_matrix

    @property
    def cells(self) -> int:
        """How many candidate pairs: what a plan on them costs, against ``n_src x n_dst`` for a dense one."""
        return int(self.pattern.nnz)

    def row(self, i: int) -> np.ndarray:
        """The candidate columns of source node ``i``."""
        return self.pattern.indices[self.pattern.indptr[i]:self.pattern.indptr[i + 1]]

    def contains(self, pairs: np.ndarray) -> np.ndarray:
        """Per ``(i, j)`` row of ``pairs``: whether ``j`` is a candidate of ``i``."""
        if not len(pairs):
            return np.zeros(0, dtype=bool)
        return np.asarray(self.pattern[pairs[:, 0], pairs[:, 1]]).ravel() > 0

    def recall(self, pairs: np.ndarray) -> float:
        """The share of true ``pairs`` whose target is among the source's candidates (1.0 for no pairs)."""
        return float(self.contains(pairs).mean()) if len(pairs) else 1.0


def similar_top(va: NetworkView, vb: NetworkView, c: int, feature_weight: float,
                block: int = ROW_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Each node's ``c`` most similar alive nodes of the other network under the prior similarity, both ways,
    in one pass of ``block`` source rows at a time: ``(n_src, c')`` target columns per source row and
    ``(n_dst, c'')`` source rows per target column (``c'``, ``c''``: ``c`` or the alive nodes, if fewer)."""
    to_dst = torch.empty(va.n, min(c, int(vb.alive.sum())), dtype=torch.long)
    c_src = min(c, int(va.alive.sum()))
    best = torch.full((c_src, vb.n), float("-inf"))  # per column, the best scores of the rows seen so far
    best_rows = torch.zeros((c_src, vb.n), dtype=torch.long)
    dead = ~vb.alive
    with torch.no_grad():
        for start in range(0, va.n, block):
            rows = slice(start, min(start + block, va.n))
            scores = similarity_block(va, vb, rows, slice(None), feature_weight)
            scores[:, dead] = float("-inf")
            to_dst[rows] = scores.topk(to_dst.shape[1], dim=1).indices
            scores[~va.alive[rows]] = float("-inf")
            best, at = torch.cat([best, scores]).topk(c_src, dim=0)
            # A position past the kept rows is a row of this block: no (block x m) index tensor is built.
            best_rows = torch.where(at < c_src, best_rows.gather(0, at.clamp_max(c_src - 1)), at - c_src + start)
    return to_dst, best_rows.T.contiguous()


def anchored_neighbourhood(adjacency_src: sp.csr_matrix, adjacency_dst: sp.csr_matrix, anchors: np.ndarray,
                           n_dst: int) -> sp.csr_matrix:
    """``(n_src, n_dst)`` counts: how many anchor pairs ``(x, x')`` have ``x`` next to the source node and
    ``x'`` next to the target node (``A_src M A_dst``); anchors themselves map to their partners too."""
    n_src = adjacency_src.shape[0]
    mapping = sp.csr_matrix((np.ones(len(anchors), dtype=np.float32), (anchors[:, 0], anchors[:, 1])),
                            shape=(n_src, n_dst))
    return (_closed_neighbourhood(adjacency_src) @ mapping @ _closed_neighbourhood(adjacency_dst)).tocsr()


def _closed_neighbourhood(adjacency: sp.csr_matrix) -> sp.csr_matrix:
    """0/1: a node's neighbours and itself."""
    near = (adjacency + sp.identity(adjacency.shape[0], format="csr")).astype(np.float32).tocsr()
    near.data[:] = 1.0
    return near


def top_per_row(counts: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """``counts`` kept to its ``k`` largest entries per row (ties: the lower column first), as a 0/1 pattern."""
    counts = counts.tocsr()
    counts.sort_indices()
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    order = np.lexsort((counts.indices, -counts.data, rows))  # by row, then count down, then column
    rank = np.arange(len(order)) - counts.indptr[rows[order]]
    keep = order[rank < k]
    return sp.csr_matrix((np.ones(len(keep), dtype=np.float32), (rows[keep], counts.indices[keep])),
                         shape=counts.shape)


def pair_similarity(va: NetworkView, vb: NetworkView, rows: torch.Tensor, cols: torch.Tensor,
                    feature_weight: float, chunk: int = PAIR_CHUNK) -> torch.Tensor:
    """The prior similarity of :func:`aligner.matching.incremental.similarity_block` for the pairs
    ``(rows[k], cols[k])`` only, ``chunk`` pairs at a time: each pair gathers both nodes' feature rows, and
    gathering all of a large support at once would hold ``pairs x width`` floats twice."""
    out = torch.empty(len(rows))
    attrs = None if va.attrs is None or vb.attrs is None else (va.attrs, vb.attrs)
    width = 0 if attrs is None else min(attrs[0].shape[1], attrs[1].shape[1])
    for start in range(0, len(rows), chunk):
        r, c = rows[start:start + chunk], cols[start:start + chunk]
        sim = (va.z[r] * vb.z[c]).sum(1)
        if feature_weight:
            sim += feature_weight * (va.pos[r] * vb.pos[c]).sum(1)
            if attrs is not None:
                sim += feature_weight * (attrs[0][r, :width] * attrs[1][c, :width]).sum(1)
        out[start:start + chunk] = sim
    return out


def candidate_set(va: NetworkView, vb: NetworkView, anchors: np.ndarray, similar: int, structural: int,
                  feature_weight: float = 1.0) -> CandidateSet:
    """For each alive node of either network, its ``similar`` most similar nodes of the other and the
    ``structural`` ones sharing the most anchored neighbours with it (see the module docstring), dead nodes
    excluded; ``anchors``: ``(k, 2)`` known pairs, source node then target node.

    Both ways, because a plan on candidates prices each target by the rows that propose it: a target proposed
    by no row, or only by rows it does not fit, gets a dual potential that no competition set, and ranked
    against every row under it, it outbids the true partners."""
    pattern = sp.csr_matrix((va.n, vb.n), dtype=np.float32)
    if similar:
        to_dst, to_src = similar_top(va, vb, similar, feature_weight)
        pattern = pattern + _pattern_of(to_dst, vb.n) + _pattern_of(to_src, va.n).T
    if structural and len(anchors):
        counts = anchored_neighbourhood(va.adjacency, vb.adjacency, anchors, vb.n)
        counts = sp.csr_matrix(counts.multiply(va.alive.numpy()[:, None]).multiply(vb.alive.numpy()[None, :]))
        counts.eliminate_zeros()
        pattern = pattern + top_per_row(counts, structural) + top_per_row(counts.T.tocsr(), structural).T
    pattern = sp.csr_matrix(pattern.multiply(va.alive.numpy()[:, None]).multiply(vb.alive.numpy()[None, :]))
    pattern.eliminate_zeros()
    pattern.data[:] = 1.0
    pattern.sort_indices()
    return CandidateSet(pattern)


def _pattern_of(top: torch.Tensor, n_cols: int) -> sp.csr_matrix:
    """``(n, c)`` column indices per row as a 0/1 CSR pattern ``(n, n_cols)``."""
    rows = np.repeat(np.arange(top.shape[0]), top.shape[1])
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, top.numpy().ravel())),
                         shape=(top.shape[0], n_cols))
