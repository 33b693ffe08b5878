"""Incremental re-matching: keep every node's top-k current by re-scoring only what a change can reach.

A full alignment solves a transport plan over all ``n_a x n_b`` pairs, which is what makes it good and what
makes it expensive. Between adaptations the model's parameters are fixed, and so is the plan's *context*: the
structure prior (the plan of the last full solve, row-normalised and kept to its ``STRUCTURE_TOP`` largest
entries per row) and the dual potentials ``u``, ``v``. Under a fixed context the score of a pair is local::

    score(i -> j) = (sim(i, j) + beta * (A_a @ structure @ A_b.T)[i, j]) / tau + v[j]      (and + u[i] for j -> i)

``sim`` is embedding cosine plus the untrained evidence (anchor-position and attribute cosine), ``A`` the
adjacency. So ``score(i, j)`` changes only when ``i``'s or ``j``'s embedding, features or neighbour set changed.
:class:`PairMatcher` keeps, per direction, each row's top-k raw scores and log-partition (the published
confidence is ``exp(score - lse)``, a softmax over all candidates). When the dirty rows and columns arrive it

1. re-scores dirty rows against every column;
2. for clean rows re-scores only the dirty columns, swaps them into the top-k and corrects the log-partition
   (old mass out, new mass in, in float64); a row whose kept top-k can no longer be certified (an entry left
   and the merged k-th score fell below the old k-th, so an unseen column might now belong) is re-scored fully.

The result equals re-scoring every pair under the same context (``tests/aligner/test_incremental.py`` checks
it); the cost is ``O(dirty x n + n x dirty_columns)`` instead of ``O(n_a x n_b)``. In a small world a change
reaches most nodes within two hops, and then that sum exceeds ``n_a x n_b``: the update re-scores every pair
instead, both directions from one score matrix when it fits in ``DENSE_CELLS``.

>>> import torch, scipy.sparse as sp
>>> z = torch.nn.functional.normalize(torch.eye(3) + 0.1, dim=1)
>>> view = NetworkView(z, z, None, sp.csr_matrix((3, 3), dtype=np.float32), torch.ones(3, dtype=torch.bool))
>>> m = PairMatcher(view, view, None, tau=0.1, beta=0.0, feature_weight=0.0, k=2)
>>> m.top("ab")[0][:, 0].tolist()
[0, 1, 2]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from aligner.matching.refine import PlanContext, extended

ROW_CHUNK = 1024
DENSE_CELLS = 1 << 24  # score matrices up to this many pairs (64 MB) rank both directions from one matrix (a
# transport plan of that size already holds several such buffers)
SPARSE_BONUS_RATIO = 64  # the bonus is a sparse product when its left factor is this much sparser than dense
CANCELLATION = 1e-4  # below this share of surviving mass the partition update is not trusted: the old scores
# are float32, so at |score| ~ 50 each exp(old - lse) carries ~3e-6 relative error, and 1 - their sum cancels

# "ab": rows of the pair's first network (``pair_key`` order) ranked against the second; "ba": the reverse.
Direction = Literal["ab", "ba"]


@dataclass
class NetworkView:
    """What scoring needs from one network: unit embeddings, unit position sketch, unit attributes (or None),
    0/1 adjacency (CSR, symmetric) and which nodes are alive."""

    z: torch.Tensor
    pos: torch.Tensor
    attrs: torch.Tensor | None
    adjacency: sp.csr_matrix
    alive: torch.Tensor

    @property
    def n(self) -> int:
        return self.z.shape[0]


def adjacency_csr(edge_index: torch.Tensor, n: int) -> sp.csr_matrix:
    """0/1 symmetric CSR from an edge index that already lists both directions."""
    ei = edge_index.numpy()
    a = sp.csr_matrix((np.ones(ei.shape[1], np.float32), (ei[0], ei[1])), shape=(n, n))
    a.data[:] = 1.0  # repeated edges count once
    return a


def similarity_block(va: NetworkView, vb: NetworkView, rows, cols, feature_weight: float) -> torch.Tensor:
    """Prior similarity of ``rows`` of ``va`` and ``cols`` of ``vb``: embedding cosine plus ``feature_weight`` x
    (position cosine + attribute cosine, when both networks have attributes)."""
    sim = va.z[rows] @ vb.z[cols].T
    if feature_weight:  # accumulated in place: at n x n every temporary costs a pass over memory
        sim.addmm_(va.pos[rows], vb.pos[cols].T, alpha=feature_weight)
        if va.attrs is not None and vb.attrs is not None:
            width = min(va.attrs.shape[1], vb.attrs.shape[1])
            sim.addmm_(va.attrs[rows, :width], vb.attrs[cols, :width].T, alpha=feature_weight)
    return sim


@dataclass
class RankedRows:
    """Per source row: top-k destination indices, their raw scores and the row's log-partition (float64)."""

    idx: torch.Tensor
    raw: torch.Tensor
    lse: torch.Tensor


class PairMatcher:
    """Top-k of both directions of one aligned pair (``"ab"``: rows of a, ``"ba"``: rows of b) under a fixed
    context; :meth:`update` applies new views incrementally (see the module docstring)."""

    def __init__(self, va: NetworkView, vb: NetworkView, context: PlanContext | None, tau: float, beta: float,
                 feature_weight: float, k: int, similarity: torch.Tensor | None = None, lazy: bool = False):
        """``context``: the solved plan's (``None``: no plan, candidates ranked by prior similarity);
        ``similarity``: the dense :func:`similarity_block` of every pair of ``va`` x ``vb`` where the caller
        has it (it solved the plan from it), so ranking does not compute it again; it is consumed. ``lazy``:
        every node is ranked on first use of :attr:`ranked`, not here (scores of a few rows need no ranking)."""
        self.va, self.vb = va, vb
        self.tau, self.beta, self.feature_weight, self.k = tau, beta, feature_weight, k
        self.structure = None if context is None else context.structure
        if context is not None:
            self.u, self.v = context.u.clone(), context.v.clone()
        else:
            self.u, self.v = torch.zeros(va.n), torch.zeros(vb.n)
        self._extend_potentials()
        self._ranked: dict[str, RankedRows] | None = None if lazy and similarity is None else self._rank_all(similarity)

    @property
    def ranked(self) -> dict[str, RankedRows]:
        """Per direction, every source row's top-k and log-partition."""
        if self._ranked is None:
            self._ranked = self._rank_all()
        return self._ranked

    @ranked.setter
    def ranked(self, value: dict[str, RankedRows]) -> None:
        self._ranked = value

    # -- scores ----------------------------------------------------------------------------------------------
    def base(self, rows_a: torch.Tensor, cols_b: torch.Tensor, similarity: torch.Tensor | None = None) -> torch.Tensor:
        """``(sim + beta * structure bonus) / tau`` for a block, dead columns and rows at -inf; ``similarity``:
        the block's ``sim``, already computed (it is consumed)."""
        s = similarity if similarity is not None else similarity_block(self.va, self.vb, rows_a, cols_b,
                                                                        self.feature_weight)
        if self.structure is not None and self.beta:
            n_a0, n_b0 = self.structure.shape
            left = self.va.adjacency[rows_a.numpy()][:, :n_a0] @ self.structure  # (rows, n_b0) sparse
            right = self.vb.adjacency[cols_b.numpy()][:, :n_b0]  # (cols, n_b0) sparse
            if left.nnz * SPARSE_BONUS_RATIO < left.shape[0] * left.shape[1]:
                # Few of the block's pairs get any bonus (large, sparse networks): a sparse product, scattered.
                bonus = (left @ right.T).tocoo()
                s.index_put_((torch.from_numpy(bonus.row.astype(np.int64)), torch.from_numpy(bonus.col.astype(np.int64))),
                             torch.from_numpy(bonus.data.astype(np.float32)) * self.beta, accumulate=True)
            else:
                dense = np.asarray(right @ left.toarray().T, dtype=np.float32).T  # sparse x dense: no dense SpGEMM
                s.add_(torch.from_numpy(dense), alpha=self.beta)
        s.div_(self.tau)
        dead_a, dead_b = ~self.va.alive[rows_a], ~self.vb.alive[cols_b]
        if dead_a.any():
            s[dead_a] = float("-inf")
        if dead_b.any():
            s[:, dead_b] = float("-inf")
        return s

    def scores(self, direction: Direction, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Raw scores of ``rows`` of the direction's source network against its destination ``cols``."""
        if direction == "ab":
            return self.base(rows, cols) + self.v[cols][None, :]
        return self.base(cols, rows).T + self.u[cols][None, :]

    def rows(self, direction: Direction, index: torch.Tensor) -> torch.Tensor:
        """Confidences (softmax over all destinations) of the given source rows: the scorer protocol of
        :mod:`aligner.matching.ranking`."""
        raw = self.scores(direction, index, torch.arange(self._dst(direction).n))
        lse = self._ranked[direction].lse[index] if self._ranked is not None else torch.logsumexp(raw.double(), 1)
        return torch.exp(raw.double() - lse[:, None]).float()

    def top(self, direction: Direction) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k indices and confidences of every source row."""
        r = self.ranked[direction]
        return r.idx, torch.exp(r.raw.double() - r.lse[:, None]).float()

    def rescored(self) -> "PairMatcher":
        """A copy with every row of both directions re-scored under the same context: what :meth:`update` must
        equal."""
        copy = PairMatcher.from_state(self.state(), self.va, self.vb)
        copy.ranked = copy._rank_all()  # noqa: SLF001 (its own class)
        return copy

    def warm_start(self, va: NetworkView, vb: NetworkView) -> PlanContext | None:
        """This context as the start of a new solve over ``va`` x ``vb`` (networks only grow)."""
        if self.structure is None:
            return None
        return PlanContext(self.structure, self.u, self.v).resized(va.n, vb.n)

    # -- updates ---------------------------------------------------------------------------------------------
    def update(self, va: NetworkView, vb: NetworkView, dirty_a: torch.Tensor, dirty_b: torch.Tensor) -> dict:
        """Swap in new views where only ``dirty_a`` / ``dirty_b`` nodes (plus appended ones) changed."""
        dirty = {"a": _with_appended(dirty_a, self.va.n, va.n), "b": _with_appended(dirty_b, self.vb.n, vb.n)}
        # Pairs the incremental route scores (old and new block of clean rows x dirty columns, dirty rows x all,
        # per direction) against what re-scoring everything costs.
        sides: tuple[tuple[Direction, str, str, int], ...] = (("ab", "a", "b", vb.n), ("ba", "b", "a", va.n))
        incremental = sum(2 * (self._src(d).n - len(dirty[s])) * len(dirty[t]) + len(dirty[s]) * n_t
                          for d, s, t, n_t in sides)
        everything = va.n * vb.n * (1 if va.n * vb.n <= DENSE_CELLS else 2)
        if incremental >= everything:
            self.va, self.vb = va, vb
            self._extend_potentials()
            self.ranked = self._rank_all()
            return {d: {"rescored_rows": self._src(d).n, "patched_rows": 0, "uncertified_rows": 0}
                    for d in ("ab", "ba")}
        new_views = {"a": va, "b": vb}
        plans = {}
        ends: tuple[tuple[Direction, tuple[str, str]], ...] = (("ab", ("a", "b")), ("ba", ("b", "a")))
        for d, (s, t) in ends:
            n_old = self._src(d).n
            # Rows to re-score against the dirty columns only: unchanged, alive before and after.
            clean_mask = torch.zeros(n_old, dtype=torch.bool)
            clean_mask[:] = self._src(d).alive & new_views[s].alive[:n_old]
            clean_mask[dirty[s][dirty[s] < n_old]] = False
            clean = clean_mask.nonzero().flatten()
            old_cols = dirty[t][dirty[t] < self._dst(d).n]
            old_block = self.scores(d, clean, old_cols) if len(clean) and len(old_cols) else None
            plans[d] = (dirty[s], clean, old_block)
        self.va, self.vb = va, vb
        self._extend_potentials()
        targets: tuple[tuple[Direction, str], ...] = (("ab", "b"), ("ba", "a"))
        return {d: self._apply(d, dirty_rows, clean, dirty[t], old_block)
                for (d, t), (dirty_rows, clean, old_block) in zip(targets, plans.values())}

    def _apply(self, d: Direction, dirty_rows: torch.Tensor, clean: torch.Tensor, cols: torch.Tensor,
               old_block: torch.Tensor | None) -> dict:
        src, dst = self._src(d), self._dst(d)
        r = self.ranked[d]
        k = self._k(dst)
        if r.idx.shape[1] != k:  # the number of alive candidates crossed k: everything is re-ranked
            self.ranked[d] = self._full_rows(d, torch.arange(src.n))
            return {"rescored_rows": src.n, "patched_rows": 0, "uncertified_rows": 0}
        n_old = r.idx.shape[0]
        idx = torch.cat([r.idx, torch.zeros(src.n - n_old, k, dtype=torch.long)])
        raw = torch.cat([r.raw, torch.full((src.n - n_old, k), float("-inf"))])
        lse = torch.cat([r.lse, torch.full((src.n - n_old,), float("-inf"), dtype=torch.float64)])
        redo = [dirty_rows]
        uncertified = 0
        if len(clean) and len(cols):
            new_block = self.scores(d, clean, cols)
            m = lse[clean]
            keep = 1.0 - (torch.exp(old_block.double() - m[:, None]).sum(1) if old_block is not None else 0.0)
            total = keep + torch.exp(new_block.double() - m[:, None]).sum(1)
            lse[clean] = m + torch.log(total.clamp_min(1e-300))
            in_cols = torch.zeros(dst.n, dtype=torch.bool)
            in_cols[cols] = True
            stale = in_cols[idx[clean]]
            cand_raw = torch.cat([raw[clean].masked_fill(stale, float("-inf")), new_block], dim=1)
            cand_idx = torch.cat([idx[clean], cols[None, :].expand(len(clean), -1)], dim=1)
            top_raw, pos = cand_raw.topk(k, dim=1)
            certified = ~stale.any(1) | (top_raw[:, -1] >= raw[clean][:, -1])
            trusted = certified & (keep > CANCELLATION) & (total > 0)
            idx[clean] = cand_idx.gather(1, pos)
            raw[clean] = top_raw
            redo.append(clean[~trusted])
            uncertified = int((~trusted).sum())
        fresh = torch.unique(torch.cat(redo))
        if len(fresh):
            again = self._full_rows(d, fresh)
            idx[fresh], raw[fresh], lse[fresh] = again.idx, again.raw, again.lse
        self.ranked[d] = RankedRows(idx, raw, lse)
        return {"rescored_rows": int(len(fresh)), "patched_rows": int(len(clean)) if len(cols) else 0,
                "uncertified_rows": uncertified}

    def _rank_all(self, similarity: torch.Tensor | None = None) -> dict[str, RankedRows]:
        """Every row of both directions: from one score matrix when it fits in ``DENSE_CELLS`` (the two
        directions share every pair's base score, and a given ``similarity`` spares computing it), else in row
        chunks per direction."""
        if not 0 < self.va.n * self.vb.n <= DENSE_CELLS:
            return {d: self._full_rows(d, torch.arange(self._src(d).n)) for d in ("ab", "ba")}
        base = self.base(torch.arange(self.va.n), torch.arange(self.vb.n), similarity)
        return {"ab": _ranked(base + self.v[None, :], self._k(self.vb)),
                "ba": _ranked(base.T + self.u[None, :], self._k(self.va))}

    def _full_rows(self, d: Direction, rows: torch.Tensor) -> RankedRows:
        dst = self._dst(d)
        k = self._k(dst)
        cols = torch.arange(dst.n)
        chunks = [_ranked(self.scores(d, rows[start:start + ROW_CHUNK], cols), k)
                  for start in range(0, len(rows), ROW_CHUNK)]
        if len(chunks) == 1:
            return chunks[0]
        if not chunks:
            return RankedRows(torch.empty((0, k), dtype=torch.long), torch.empty((0, k)),
                              torch.empty(0, dtype=torch.float64))
        return RankedRows(*(torch.cat([getattr(c, f) for c in chunks]) for f in ("idx", "raw", "lse")))

    def _extend_potentials(self) -> None:
        """Nodes that appeared after the last full solve get the mean potential of their side: a neutral price."""
        self.u, self.v = extended(self.u, self.va.n), extended(self.v, self.vb.n)

    def _k(self, dst: NetworkView) -> int:
        return max(1, min(self.k, int(dst.alive.sum())))

    def _src(self, d: Direction) -> NetworkView:
        return self.va if d == "ab" else self.vb

    def _dst(self, d: Direction) -> NetworkView:
        return self.vb if d == "ab" else self.va

    # -- persistence -----------------------------------------------------------------------------------------
    def state(self) -> dict:
        s = self.structure
        return {
            "structure": None if s is None else (s.shape, s.indptr, s.indices, s.data),
            "u": self.u, "v": self.v, "tau": self.tau, "beta": self.beta, "feature_weight": self.feature_weight,
            "k": self.k, "ranked": {d: (r.idx, r.raw, r.lse) for d, r in self.ranked.items()},
        }

    @classmethod
    def from_state(cls, state: dict, va: NetworkView, vb: NetworkView) -> "PairMatcher":
        self = cls.__new__(cls)
        self.va, self.vb = va, vb
        self.tau, self.beta, self.feature_weight, self.k = state["tau"], state["beta"], state["feature_weight"], state["k"]
        st = state["structure"]
        self.structure = None if st is None else sp.csr_matrix((st[3], st[2], st[1]), shape=st[0])
        self.u, self.v = state["u"], state["v"]
        self.ranked = {d: RankedRows(*r) for d, r in state["ranked"].items()}
        return self


class DirectionScorer:
    """One direction of a :class:`PairMatcher` as a scorer for :mod:`aligner.matching.ranking`."""

    def __init__(self, matcher: PairMatcher, direction: Direction):
        self.matcher, self.direction = matcher, direction

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        return self.matcher.rows(self.direction, index)


def _ranked(scores: torch.Tensor, k: int) -> RankedRows:
    """Per row of a raw score block: top-``k`` columns and scores, and the log-partition in float64."""
    val, top = scores.topk(k, dim=1)
    return RankedRows(top, val, torch.logsumexp(scores.double(), dim=1))


def _with_appended(dirty: torch.Tensor, n_old: int, n_new: int) -> torch.Tensor:
    return torch.unique(torch.cat([dirty.long(), torch.arange(n_old, n_new)]))
