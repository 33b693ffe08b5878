"""The structure-consistent transport plan of :mod:`aligner.matching.refine`, solved on candidate pairs only.

The dense solver keeps every round's kernel, plan and structure bonus as ``n x m`` matrices. Here they live on
a candidate support ``S`` (:mod:`aligner.matching.candidates`): the same fused Gromov–Wasserstein rounds, the
bonus ``beta * (A_src T A_dst^T)`` evaluated on ``S`` only (sparse products, ``block`` source rows at a time),
and the same entropic, optionally unbalanced Sinkhorn updates in the log domain over ``S``. Memory and time
grow with ``|S|`` and the graphs' degrees, not with ``n m``. With every pair as a candidate it is the dense plan
(``tests/aligner/test_sparse_plan.py``).

>>> import torch, scipy.sparse as sp
>>> sim = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
>>> adjacency = sp.csr_matrix(([1.0, 1.0], ([0, 1], [1, 0])), shape=(2, 2), dtype="float32")
>>> support = sp.csr_matrix(torch.ones(2, 2).numpy())
>>> plan = solve_sparse_plan(support, lambda rows, cols: sim[rows, cols], adjacency, adjacency, tau=0.05,
...                          beta=0.3, rounds=5, sinkhorn_iters=20)
>>> plan.top_target().tolist()   # as the dense plan: node 1 takes 0, so node 0 goes to 1
[1, 0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from aligner.matching.candidates import top_per_row
from aligner.matching.refine import STRUCTURE_TOP, PlanContext

BONUS_BLOCK = 2048  # source rows whose two-hop products exist at once


@dataclass
class SparsePlan:
    """A log transport plan on a support: ``log_plan[k]`` for the pair ``(rows[k], cols[k])``; ``structure`` the
    row-normalised plan of the round before the last, on that round's support (its bonus built the last
    kernel; with candidates grown, the last support is larger); ``u``, ``v`` the dual potentials."""

    rows: torch.Tensor
    cols: torch.Tensor
    log_plan: torch.Tensor
    structure: sp.csr_matrix
    u: torch.Tensor
    v: torch.Tensor
    shape: tuple[int, int]

    def top_target(self) -> torch.Tensor:
        """Per source row, the candidate with the largest plan entry (-1 for a row without candidates)."""
        return _row_argmax(self.rows, self.cols, self.log_plan, self.shape[0])

    def top_source(self) -> torch.Tensor:
        """Per target column, the source with the largest plan entry (-1 for a column no row proposes)."""
        return _row_argmax(self.cols, self.rows, self.log_plan, self.shape[1])

    def context(self, top: int = STRUCTURE_TOP) -> PlanContext:
        """What ranking and the next solve need, as of a dense plan (:meth:`PlanContext.of`)."""
        structure = self.structure.copy()
        structure.eliminate_zeros()
        return PlanContext(_top_values(structure, top), self.u, self.v)


PairScore = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (rows, cols) -> prior similarity of each pair


def solve_sparse_plan(support: sp.csr_matrix, score: PairScore, adjacency_src: sp.csr_matrix,
                      adjacency_dst: sp.csr_matrix, tau: float = 0.05, beta: float = 0.3, rounds: int = 10,
                      sinkhorn_iters: int = 5, alive_src: torch.Tensor | None = None,
                      alive_dst: torch.Tensor | None = None, marginal_weight: float | None = None,
                      grow: int = 0, warm: PlanContext | None = None) -> SparsePlan:
    """The plan of :func:`aligner.matching.refine.solve_plan` restricted to ``support`` (a CSR pattern,
    ``(n_src, n_dst)``); ``score`` gives the prior similarity of candidate pairs. Dead nodes' pairs carry no mass.

    ``grow``: after each round but the last, each source row's ``grow`` targets with the largest structure bonus
    join its candidates. The bonus is where the current plan sends the row's neighbourhood: partners the prior
    similarity missed but the structure points at, which is what the dense plan finds and fixed candidates
    cannot.

    ``warm``: an earlier plan's context (sized to these networks); its structure's pairs join the support, the
    first round's bonus comes from it and its potentials start the first Sinkhorn iterations."""
    if warm is not None:
        support = support + warm.structure
    support = _pattern(support)
    n_src, n_dst = support.shape
    alive_src = torch.ones(n_src, dtype=torch.bool) if alive_src is None else alive_src
    alive_dst = torch.ones(n_dst, dtype=torch.bool) if alive_dst is None else alive_dst
    damp = 1.0 if marginal_weight is None else marginal_weight / (marginal_weight + tau)
    log_a, log_b = _log_uniform(alive_src), _log_uniform(alive_dst)
    u, v = torch.zeros(n_src, dtype=torch.float64), torch.zeros(n_dst, dtype=torch.float64)
    rows, cols = _entries(support)
    similarity = score(rows, cols)
    bonus = torch.zeros_like(similarity)
    structure = sp.csr_matrix(support.shape, dtype=np.float32)  # the plan whose bonus built the kernel
    if warm is not None:
        u, v = _finite(warm.u.double()), _finite(warm.v.double())
        structure = warm.structure
        bonus = _bonus_on(support, structure, adjacency_src, adjacency_dst)
    with torch.no_grad():
        for round_ in range(rounds):
            live = alive_src[rows] & alive_dst[cols]
            log_kernel = ((beta * bonus + similarity) / tau).double().masked_fill_(~live, float("-inf"))
            for _ in range(sinkhorn_iters):
                u = _finite(damp * (log_a - _segment_logsumexp(log_kernel + v[cols], rows, n_src)))
                v = _finite(damp * (log_b - _segment_logsumexp(log_kernel + u[rows], cols, n_dst)))
            log_plan = log_kernel + u[rows] + v[cols]
            if round_ == rounds - 1:
                break
            row_share = torch.exp(log_plan - _segment_logsumexp(log_plan, rows, n_src)[rows]).nan_to_num_(0.0)
            structure = sp.csr_matrix((row_share.float().numpy(), support.indices, support.indptr), shape=support.shape)
            grown, bonus = _bonus_and_growth(support, structure, adjacency_src, adjacency_dst, grow, alive_dst)
            if grown.nnz != support.nnz:
                support, (rows, cols) = grown, _entries(grown)
                similarity = score(rows, cols)
    return SparsePlan(rows, cols, log_plan.float(), structure, u.float(), v.float(), (n_src, n_dst))


def _pattern(matrix: sp.csr_matrix) -> sp.csr_matrix:
    pattern = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    pattern.sum_duplicates()
    pattern.eliminate_zeros()
    pattern.data[:] = 1.0
    pattern.sort_indices()
    return pattern


def _entries(pattern: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
    return torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(pattern.indices.astype(np.int64))


def _bonus_on(support: sp.csr_matrix, structure: sp.csr_matrix, adjacency_src: sp.csr_matrix,
              adjacency_dst: sp.csr_matrix) -> torch.Tensor:
    """``A_src T A_dst^T`` at the support's entries (CSR order), ``T``: ``structure``."""
    return _bonus_and_growth(support, structure, adjacency_src, adjacency_dst, 0, torch.ones(0, dtype=torch.bool))[1]


def _bonus_and_growth(support: sp.csr_matrix, plan: sp.csr_matrix, adjacency_src: sp.csr_matrix,
                      adjacency_dst: sp.csr_matrix, grow: int,
                      alive_dst: torch.Tensor) -> tuple[sp.csr_matrix, torch.Tensor]:
    """The support with each row's ``grow`` best targets under ``B = A_src T A_dst^T`` added (``T``: ``plan``,
    rows summing to at most 1), and ``B`` at its entries, in CSR order; ``BONUS_BLOCK`` rows of ``B`` at a
    time."""
    spread = (adjacency_src.astype(np.float32) @ plan).tocsr()  # T summed over each source node's neighbours
    adjacency_dst_t = adjacency_dst.astype(np.float32).T.tocsr()
    dead_dst = ~alive_dst.numpy()
    blocks, values = [], []
    for start in range(0, support.shape[0], BONUS_BLOCK):
        stop = min(start + BONUS_BLOCK, support.shape[0])
        product = (spread[start:stop] @ adjacency_dst_t).tocsr()
        pattern = support[start:stop]
        if grow:
            reachable = product.copy()
            reachable.data[dead_dst[reachable.indices]] = 0.0
            reachable.eliminate_zeros()
            pattern = _pattern(pattern + top_per_row(reachable, grow))
        local_rows = np.repeat(np.arange(stop - start), np.diff(pattern.indptr))
        values.append(np.asarray(product[local_rows, pattern.indices]).ravel().astype(np.float32))
        blocks.append(pattern)
    return sp.vstack(blocks, format="csr"), torch.from_numpy(np.concatenate(values))


def _top_values(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """``matrix`` kept to its ``k`` largest entries per row, values kept."""
    keep = top_per_row(matrix, k)
    return sp.csr_matrix(matrix.multiply(keep))


def _segment_logsumexp(values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """``logsumexp`` of ``values`` per segment id (``-inf`` for an empty segment)."""
    top = torch.full((n,), float("-inf"), dtype=values.dtype).scatter_reduce_(0, segment, values, "amax")
    finite_top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.zeros(n, dtype=values.dtype).index_add_(0, segment, torch.exp(values - finite_top[segment]))
    return torch.log(total) + finite_top


def _log_uniform(alive: torch.Tensor) -> torch.Tensor:
    mass = -math.log(max(int(alive.sum()), 1))
    return torch.where(alive, torch.tensor(mass, dtype=torch.float64), torch.tensor(float("-inf"), dtype=torch.float64))


def _finite(x: torch.Tensor) -> torch.Tensor:
    """Dead or candidate-less rows give infinite potentials; they carry no mass, so any finite value will do."""
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _row_argmax(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    top = torch.full((n,), float("-inf")).scatter_reduce_(0, rows, values, "amax")
    hit = (values == top[rows]) & torch.isfinite(values)  # a dead row has no best candidate
    none = torch.iinfo(torch.long).max
    best = torch.full((n,), none, dtype=torch.long).scatter_reduce_(0, rows[hit], cols[hit], "amin")  # ties: lowest
    return best.masked_fill_(best == none, -1)
