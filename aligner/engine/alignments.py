"""The current alignment of every aligned pair: one :class:`aligner.matching.incremental.PairMatcher` per pair,
over the networks' states, and everything that reads it (top-k per node, scorers for explanations, metrics on
true pairs, prequential ranks of newly revealed anchors, pseudo-anchors).

The aligner decides *when* a pair is matched afresh or updated; this object knows *how*: the transport settings
(``refine``, which self-calibration may change), which solver a pair's size calls for (the dense plan, or the
plan on candidate pairs past ``refine.max_cells``) and how many candidates each node keeps.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from aligner.config import RefineConfig
from aligner.engine.network_state import NetworkState
from aligner.engine.tasks import SnapshotInputs
from aligner.matching.candidates import CandidateSet, candidate_set, pair_similarity
from aligner.matching.cycles import NO_MATCH, cycle_consistency
from aligner.matching.incremental import DENSE_CELLS, Direction, DirectionScorer, PairMatcher, similarity_block
from aligner.matching.pseudo_anchors import confident_pairs
from aligner.matching.ranking import ranking_metrics
from aligner.matching.refine import PlanContext, solve_plan
from aligner.matching.sparse_plan import solve_sparse_plan
from aligner.update import AlignmentUpdate, PairTopK
from snapshots.snapshot import Snapshot, pair_key


class Alignments:
    """Per aligned pair (``pair_key`` order), its matcher; ``networks`` is the aligner's (shared, not copied)."""

    def __init__(self, networks: dict[str, NetworkState], refine: RefineConfig, top_k: int):
        self.networks = networks
        self.refine = refine  # the configured settings, with what self-calibration chose
        self.k = top_k
        self.matchers: dict[tuple[str, str], PairMatcher] = {}
        # Per pair, the candidate set of the sparse plan and what it was found from: self-calibration solves one
        # pair under several settings on the same embeddings, and the search costs n x m similarity scores.
        self._candidates: dict[tuple[str, str], tuple[NetworkState, NetworkState, tuple, CandidateSet]] = {}

    def full_match(self, a: str, b: str, warm: PlanContext | None = None) -> PairMatcher:
        """Solve the structure-consistent transport plan (:mod:`aligner.matching.refine`; on candidate pairs,
        :mod:`aligner.matching.sparse_plan`, for a pair past ``refine.max_cells`` or ``refine.plan = "sparse"``)
        and rank every node of both networks. From ``warm`` (an earlier plan's context) ``refine.warm_rounds``
        rounds replace ``refine.rounds``."""
        cfg = self.refine
        va, vb = self.networks[a].view(), self.networks[b].view()
        if not cfg.enabled:
            return PairMatcher(va, vb, None, 1.0, 0.0, cfg.feature_weight, self.k)
        rounds = cfg.rounds if warm is None else cfg.warm_rounds
        if self.sparse(va.n, vb.n):
            score = lambda r, c: pair_similarity(va, vb, r, c, cfg.feature_weight)  # noqa: E731
            sparse = solve_sparse_plan(self.candidates(a, b).pattern, score, va.adjacency, vb.adjacency, cfg.tau,
                                       cfg.beta, rounds, cfg.sinkhorn_iters, va.alive, vb.alive, cfg.marginal_weight,
                                       cfg.candidate_growth, warm)
            # Ranked on first use: self-calibration only scores its held-back anchors' rows.
            return PairMatcher(va, vb, sparse.context(), cfg.tau, cfg.beta, cfg.feature_weight, self.k, lazy=True)
        with torch.no_grad():
            similarity = self.similarity(a, b)
            plan = solve_plan(similarity, va.adjacency, vb.adjacency, cfg.tau, cfg.beta, rounds, cfg.sinkhorn_iters,
                              va.alive, vb.alive, cfg.marginal_weight, warm)
        given = similarity if similarity.numel() <= DENSE_CELLS else None  # larger: ranked by row chunks
        return PairMatcher(va, vb, PlanContext.of(plan), cfg.tau, cfg.beta, cfg.feature_weight, self.k,
                           similarity=given)

    def sparse(self, n_a: int, n_b: int) -> bool:
        """Whether an ``n_a x n_b`` pair's plan is solved on candidate pairs (``refine.plan``)."""
        plan = self.refine.plan
        return plan == "sparse" or (plan == "auto" and n_a * n_b > self.refine.max_cells)

    def candidates(self, a: str, b: str) -> CandidateSet:
        """The sparse plan's candidate pairs of ``a`` x ``b`` (:func:`aligner.matching.candidates.candidate_set`),
        found again only when either network's state or the candidate settings changed."""
        cfg, (sa, sb) = self.refine, (self.networks[a], self.networks[b])
        settings = (cfg.candidates, cfg.structural_candidates, cfg.feature_weight)
        cached = self._candidates.get((a, b))
        if cached is not None and cached[0] is sa and cached[1] is sb and cached[2] == settings:
            return cached[3]
        found = candidate_set(sa.view(), sb.view(), self.seed_pairs(a, b), *settings)
        self._candidates[(a, b)] = (sa, sb, settings, found)
        return found

    def seed_pairs(self, a: str, b: str) -> np.ndarray:
        """``(k, 2)`` node pairs of ``a`` and ``b`` anchored to the same entity (known and pseudo-anchors: the
        seeds of both coordinate systems)."""
        in_b: dict[str, list[int]] = {}
        for j, key in self.networks[b].entities:
            in_b.setdefault(key, []).append(j)
        rows = [(i, j) for i, key in self.networks[a].entities for j in in_b.get(key, ())]
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def match_afresh(self, pairs: list[tuple[str, str]], warm: bool) -> None:
        """Replace ``pairs``' matchers by fresh ones; ``warm``: each solve starts from the pair's last plan."""
        self.matchers = {pair: self.full_match(*pair, self.warm_start(pair) if warm else None) for pair in pairs}

    def warm_start(self, pair: tuple[str, str]) -> PlanContext | None:
        """The pair's last plan as the start of its next solve (``None``: solve from scratch)."""
        matcher = self.matchers.get(pair)
        if matcher is None or not self.refine.warm_rounds:
            return None
        return matcher.warm_start(self.networks[pair[0]].view(), self.networks[pair[1]].view())

    def similarity(self, a: str, b: str) -> torch.Tensor:
        """Dense prior similarity: embedding cosine plus ``refine.feature_weight`` x (position cosine + attribute
        cosine, when both networks have attributes)."""
        return similarity_block(self.networks[a].view(), self.networks[b].view(), slice(None), slice(None),
                                self.refine.feature_weight)

    def scorers(self, a: str, b: str) -> dict[tuple[str, str], DirectionScorer]:
        """How candidates are scored for both directions of an aligned pair: confidences under the current
        transport context (:mod:`aligner.matching.incremental`)."""
        key = pair_key(a, b)
        matcher = self.matchers.get(key)
        if matcher is None:
            raise KeyError(f"{a!r} and {b!r} are not aligned (aligned pairs: {sorted(self.matchers)})")
        forward: Direction = "ab" if key == (a, b) else "ba"
        backward: Direction = "ba" if forward == "ab" else "ab"
        return {(a, b): DirectionScorer(matcher, forward), (b, a): DirectionScorer(matcher, backward)}

    def rank(self, snapshot: Snapshot, pairs: list[tuple[str, str]]) -> AlignmentUpdate:
        """Top-k per alive node, both directions of every pair in ``pairs``, as of ``snapshot``."""
        results = []
        for a, b in pairs:
            matcher = self.matchers[(a, b)]
            sides: tuple[tuple[str, str, Direction], ...] = ((a, b, "ab"), (b, a, "ba"))
            for src, dst, d in sides:
                rows = self.networks[src].alive.nonzero().flatten()
                idx, val = matcher.top(d)
                results.append(PairTopK(src, dst, rows.numpy(), idx[rows].numpy(), val[rows].numpy()))
        node_ids = {n: snapshot.networks[n].node_ids for n in {n for p in pairs for n in p}}
        return AlignmentUpdate(snapshot.id, snapshot.end_time, node_ids, results)

    def top1(self, src: str, dst: str) -> np.ndarray:
        """Every node of ``src``'s best match in ``dst`` under the current alignment (``cycles.NO_MATCH`` for nodes
        not alive)."""
        key = pair_key(src, dst)
        idx, _ = self.matchers[key].top("ab" if key == (src, dst) else "ba")
        best = idx[:, 0].numpy().astype(np.int64)
        best[~self.networks[src].alive.numpy()] = NO_MATCH
        return best

    def cycle_consistency(self) -> dict[tuple[str, str], float]:
        """Per aligned pair with a pivot network aligned to both, the share of nodes whose top-1 agrees with the
        top-1 composed through the pivot (:mod:`aligner.matching.cycles`); empty for fewer than three networks."""
        if len({net for pair in self.matchers for net in pair}) < 3:  # no pivot: spare every step the top-1 copies
            return {}
        top1 = {(s, d): self.top1(s, d) for a, b in self.matchers for s, d in ((a, b), (b, a))}
        return cycle_consistency(top1)

    def cycle_stats(self) -> dict[str, dict[str, float]]:
        """:meth:`cycle_consistency` as a step's stats: ``{"cycle_consistency": {"a|c": rate}}``, or nothing."""
        rates = {f"{a}|{c}": round(rate, 4) for (a, c), rate in self.cycle_consistency().items()}
        return {"cycle_consistency": rates} if rates else {}

    def evaluate(self, net: str, to: str, id_pairs: list[tuple[str, str]]) -> dict:
        """Ranking metrics of the current alignments on true pairs given as external ids; pairs whose nodes are
        not known here are counted in ``unknown`` and left out."""
        if net not in self.networks or to not in self.networks:
            raise KeyError(f"no embeddings for {net!r} and {to!r} yet (networks seen: {sorted(self.networks)})")
        index_a = {n: i for i, n in enumerate(self.networks[net].node_ids)}
        index_b = {n: i for i, n in enumerate(self.networks[to].node_ids)}
        rows = [(index_a[a], index_b[b]) for a, b in id_pairs if a in index_a and b in index_b]
        pairs = torch.tensor(rows, dtype=torch.long).reshape(-1, 2)
        out = ranking_metrics(self.scorers(net, to)[(net, to)], pairs, self.networks[to].alive)
        out["unknown"] = len(id_pairs) - len(rows)
        key = pair_key(net, to)
        support = self.plan_support(*key)
        if support is not None:  # a true partner outside the candidates is one the plan could not move mass to
            oriented = pairs.numpy() if key == (net, to) else pairs.numpy()[:, ::-1]
            out["candidate_recall"] = support.recall(np.ascontiguousarray(oriented))
        return out

    def plan_support(self, a: str, b: str) -> CandidateSet | None:
        """The candidate pairs the current plan of ``a`` x ``b`` (``pair_key`` order) was solved on; ``None`` for
        a dense plan (every pair) or a pair not matched on its networks' current states."""
        cached = self._candidates.get((a, b))
        if cached is None or cached[0] is not self.networks[a] or cached[1] is not self.networks[b]:
            return None
        return cached[3] if self.sparse(cached[0].view().n, cached[1].view().n) else None

    def plan_cells(self, a: str, b: str) -> int:
        """How many node pairs the current plan of ``a`` x ``b`` carries: its candidate pairs, or ``n x m``."""
        support = self.plan_support(a, b)
        return support.cells if support is not None else self.networks[a].view().n * self.networks[b].view().n

    def anchor_ranks(self, pair: tuple[str, str], fresh: list[tuple[int, int]]) -> list[int]:
        """The rank of each newly revealed anchor's partner under the pair's current alignment (test-then-train);
        anchors with a node the alignment has not seen alive are left out, and so is an unmatched pair."""
        matcher = self.matchers.get(pair)
        if matcher is None:
            return []
        fresh = [(i, j) for i, j in fresh if i < matcher.va.n and j < matcher.vb.n
                 and bool(matcher.va.alive[i]) and bool(matcher.vb.alive[j])]
        if not fresh:
            return []
        pairs = torch.tensor(fresh, dtype=torch.long)
        with torch.no_grad():
            scores = matcher.scores("ab", pairs[:, 0], torch.arange(matcher.vb.n))
            true = scores.gather(1, pairs[:, 1:2])
            return (torch.nan_to_num(scores, nan=float("-inf")) >= true).sum(1).clamp_min(1).tolist()

    def with_pseudo_anchors(self, inputs: SnapshotInputs) -> tuple[SnapshotInputs, int] | None:
        """``inputs`` with the current plans' confident pairs (:mod:`aligner.matching.pseudo_anchors`) added to
        its anchors (``None``: no pair qualifies), and how many were added."""
        merged, added = {}, 0
        for pair, rows in inputs.anchors.items():
            if not len(rows):  # a pair aligned through others: its plan was never checked against an anchor of its own
                merged[pair] = rows
                continue
            found = confident_pairs(self.matchers[pair], rows, self.refine.pseudo_anchor_confidence)
            merged[pair] = np.concatenate([rows, found]) if len(found) else rows
            added += len(found)
        if not added:
            return None
        return dataclasses.replace(inputs, anchors=merged, encoded=None), added
