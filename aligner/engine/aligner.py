"""The aligner: for each new snapshot, keep alignments current, cheaply when it can and thoroughly when it must.

Per snapshot (``Aligner.on_snapshot``):

1. turn every aligned network into tensors; score the anchors that are new since the last snapshot against the
   alignments currently published (prequential quality, river drift detectors, :mod:`aligner.engine.drift`);
2. choose a path. The **adaptation path** runs on the first snapshot, every ``adapt.every_snapshots``, when the
   known anchors grew by ``adapt.anchor_growth`` since the last adaptation, or on drift:

   - **meta-update** the initialisation on tasks drawn from the last few snapshots (a long warm-up on the
     first); a task splits the known anchors into *seeds* (they define anchor-relative positions) and
     *labels* (support and query pairs the encoder must rank first);
   - **fast-adapt** a clone of the initialisation with a few steps (Meta-SGD: learned per-parameter rates);
   - embed every network, all known anchors as seeds, advance the temporal state, solve the transport plan
     (:mod:`aligner.matching.refine`) and rank every node;

   otherwise the **incremental path** keeps the adapted weights, the anchor coordinate system, the temporal
   state and the transport context, recomputes the positions of nodes whose edges, attributes or anchors
   changed, re-encodes only nodes within the encoder's receptive field of them (``2 (cheb_k - 1)`` hops: the
   recurrent cell convolves its reset-gated state) on the subgraph that covers it, and re-ranks only the rows
   and columns that changed (:mod:`aligner.matching.incremental`); once ``refine.warm_max_change`` of a network's edges
   changed since everything was last aligned, it aligns everything afresh under the same weights instead;
3. return top-k per alive node, both directions of every aligned pair, as an :class:`AlignmentUpdate`;
   publishing it is someone else's job.

A live service cannot wait a second or more for the heavy steps (adaptation, realignment, new anchors joining
the coordinates and the plan solved again) without every event behind them waiting too. ``on_snapshot(...,
defer=True)`` takes the incremental path regardless and notes what was due in :attr:`Aligner.deferred`; the
caller then runs :meth:`Aligner.refresh` on a :meth:`Aligner.fork` in the background while this aligner keeps
the alignments fresh, and swaps the refreshed one in once it has caught up (:mod:`aligner.service.alignment_service`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import time
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from aligner.config import AdaptConfig, MetaConfig, ModelConfig, RefineConfig, parse_pairs
from aligner.engine.drift import QualityMonitor
from aligner.engine.local_encoding import closure, edge_keys, encode_rows
from aligner.engine.state_codec import StateFormatError, decode, encode
from aligner.engine.meta_schedule import MetaSchedule
from aligner.engine.tasks import SnapshotInputs, draw_task
from aligner.matching.calibration import RefineSetting, candidates, choose, holdout_split
from aligner.matching.incremental import (DENSE_CELLS, DirectionScorer, NetworkView, PairMatcher, adjacency_csr,
                                          similarity_block)
from aligner.matching.ranking import ranking_metrics, ranks
from aligner.matching.refine import WarmStart, solve_plan
from aligner.model.encoder import AlignmentEncoder
from aligner.model.features import GraphTensors, anchor_entities, anchors_of, position_features, position_sketch
from aligner.model.meta import FastWeights, MetaLearner
from aligner.runtime import return_free_heap
from aligner.update import AlignmentPath, AlignmentUpdate, PairTopK
from snapshots.snapshot import Snapshot, pair_key
from snapshots.snapshot_codec import snapshot_from_bytes, snapshot_to_bytes

log = logging.getLogger(__name__)


# Attributes stored as they are (plain data for the state codec), written and read back from this one list;
# the learner, matchers, monitor, task pools, random streams and calibration are encoded by their owners.
PLAIN_STATE = ("fast", "hidden", "hidden_in", "entities", "pseudo_seeds", "sketches", "position_inputs",
               "embeddings", "node_ids", "alive", "edges", "attrs", "aligned_edges", "known_anchors",
               "anchors_at_adaptation", "since_adaptation", "deferred",
               "anchors_at_calibration")
# Those states written by older versions may lack, with the value they stand for then (no aligned edges: the
# next join realigns; no meta-update owed; never calibrated).
OPTIONAL_STATE: dict[str, Callable[[], object]] = {"pseudo_seeds": dict, "aligned_edges": dict,
                                                   "deferred": lambda: None, "anchors_at_calibration": int}


class Aligner:
    """Stateful per-snapshot aligner (see the module docstring). ``pairs`` is ``"auto"`` (every pair of networks
    that has anchors) or ``"a:b,c:d"``."""

    def __init__(self, model: ModelConfig, meta: MetaConfig, adapt: AdaptConfig, pairs: str = "auto",
                 top_k: int = 10, seed: int = 0, refine: RefineConfig | None = None):
        self.model_cfg, self.adapt_cfg = model, adapt
        self.refine_cfg = refine or RefineConfig()
        self.pairs_spec = pairs
        self.k = top_k
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.meta = MetaSchedule(meta, seed)
        self.learner: MetaLearner | None = None
        self.fast: dict[str, torch.Tensor] | None = None  # the adapted weights the incremental path encodes with
        self.hidden: dict[str, torch.Tensor] = {}  # temporal state for the next adaptation
        self.hidden_in: dict[str, torch.Tensor | None] = {}  # the state the current embeddings were computed from
        self.entities: dict[str, list[tuple[int, str]]] = {}  # the anchor coordinate system of the last adaptation
        self.pseudo_seeds: dict[str, int] = {}  # how many of a network's entities are pseudo-anchors
        self.sketches: dict[str, torch.Tensor] = {}  # (n, dim) raw anchor-position sketch
        self.position_inputs: dict[str, torch.Tensor] = {}  # (n, dim + 2) encoder input
        self.embeddings: dict[str, torch.Tensor] = {}
        self.node_ids: dict[str, tuple[str, ...]] = {}
        self.alive: dict[str, torch.Tensor] = {}
        self.edges: dict[str, torch.Tensor] = {}  # (2, 2E) of the latest snapshot
        # Evidence that needs no training (unit anchor-position sketch, normalised attributes): it anchors the
        # scores when the encoder is still young, and explanations quote it.
        self.positions: dict[str, torch.Tensor] = {}
        self.attrs: dict[str, torch.Tensor | None] = {}
        self.adjacency: dict[str, sp.csr_matrix] = {}
        self.matchers: dict[tuple[str, str], PairMatcher] = {}
        # Per network: its edges (as :func:`aligner.engine.local_encoding.edge_keys`) when everything was last aligned afresh.
        self.aligned_edges: dict[str, np.ndarray] = {}
        self.monitor = QualityMonitor(adapt.drift_delta, adapt.shift_threshold)
        self.known_anchors: set[tuple[str, str, int, int]] = set()
        self.anchors_at_adaptation = 0
        self.since_adaptation = 0
        # Heavy work an ``on_snapshot(..., defer=True)`` found due and left to :meth:`refresh`: the path (the
        # incremental one's heavy branches run then) and why.
        self.deferred: tuple[AlignmentPath, str] | None = None
        # The refine setting self-calibration chose (aligner.matching.calibration) and the anchor count it chose on.
        self.calibrated: RefineSetting | None = None
        self.anchors_at_calibration = 0

    # -- the per-snapshot pipeline -------------------------------------------------------------------------
    def aligned_pairs(self, snapshot: Snapshot) -> list[tuple[str, str]]:
        if self.pairs_spec == "auto":
            return sorted(p for p, rows in snapshot.anchors.items() if len(rows))
        return [p for p in parse_pairs(self.pairs_spec) or ()
                if p[0] in snapshot.networks and p[1] in snapshot.networks]

    def on_snapshot(self, snapshot: Snapshot, defer: bool = False) -> AlignmentUpdate | None:
        """Align ``snapshot`` (see the module docstring). With ``defer``, work heavier than an incremental step
        (an adaptation, a realignment, waiting anchors joining) is not done but noted in :attr:`deferred` for
        :meth:`refresh`; the first snapshot of a pair of networks is aligned in full all the same."""
        started = time.perf_counter()
        pairs = self.aligned_pairs(snapshot)
        anchors = anchors_of(snapshot, pairs)
        if not anchors:
            log.info("snapshot %d: no anchors between aligned networks yet, nothing to align", snapshot.id)
            return None
        nets = sorted({n for p in anchors for n in p})
        graphs = {n: GraphTensors.from_snapshot(snapshot.networks[n]) for n in nets}
        self._ensure_learner(graphs)
        scored = self._score_new_anchors(snapshot, anchors)
        inputs = SnapshotInputs(snapshot, graphs, {n: self._hidden_for(n, graphs[n].num_nodes) for n in nets}, anchors)
        self.meta.pool.append(inputs)
        reason = self._adaptation_reason(anchors)
        if reason and defer and self._can_defer(anchors):
            self._defer(AlignmentPath.ADAPTATION, reason)
            stats = self._incremental_path(inputs, defer=True)
        elif reason:
            stats = self._adaptation_path(inputs, reason)
        else:
            stats = self._incremental_path(inputs, defer=defer)
        if self.deferred is not None:
            stats["deferred"] = self.deferred[1]
        update = self.rank(snapshot, list(anchors))
        return self._with_stats(update, {**stats, "new_anchors_scored": scored}, anchors, started)

    def refresh(self) -> AlignmentUpdate:
        """Do the heavy work :attr:`deferred` on the last snapshot, which ``on_snapshot(..., defer=True)`` already
        aligned incrementally, and return its alignments afresh. The snapshot's temporal state, anchors and
        inputs are those its incremental step started from, so the result is what aligning it without ``defer``
        would have given (up to the tolerance of redoing the incremental step on its own output)."""
        if self.deferred is None:
            raise ValueError("nothing was deferred: refresh follows on_snapshot(..., defer=True)")
        started = time.perf_counter()
        (path, reason), self.deferred = self.deferred, None
        inputs = self.meta.pool[-1]
        self.since_adaptation -= 1  # the snapshot's incremental step counted it already
        if path == AlignmentPath.ADAPTATION:
            stats = self._adaptation_path(inputs, reason)
        else:
            stats = self._incremental_path(inputs)
        update = self.rank(inputs.snapshot, list(inputs.anchors))
        return self._with_stats(update, {**stats, "refreshed": reason}, inputs.anchors, started)

    def _with_stats(self, update: AlignmentUpdate, stats: dict, anchors: dict, started: float) -> AlignmentUpdate:
        """``update`` with the step's stats, the online quality metrics, the anchor count and the step's time."""
        update.stats = {**stats, **self.monitor.metrics(), "anchors": int(sum(len(r) for r in anchors.values())),
                        "total_s": round(time.perf_counter() - started, 3)}
        return update

    def fork(self) -> "Aligner":
        """An independent copy to refresh in the background while this one goes on. Snapshots in the task pool
        never change once pooled, so the copy shares them (their lazily filled caches too) instead of copying."""
        memo: dict[int, object] = {id(entry): entry for entry in (*self.meta.pool, *self.meta.due_pool)}
        return copy.deepcopy(self, memo)

    def _can_defer(self, anchors: dict) -> bool:
        """Whether an incremental step can stand in for the adaptation due: there is one to take for every pair."""
        return self.fast is not None and self.adapt_cfg.incremental and all(p in self.matchers for p in anchors)

    def _defer(self, path: AlignmentPath, reason: str) -> None:
        """Note heavy work for :meth:`refresh`; an adaptation, which also aligns everything afresh, wins over
        the incremental path's heavy branches."""
        if self.deferred is None or (path == AlignmentPath.ADAPTATION and self.deferred[0] != AlignmentPath.ADAPTATION):
            self.deferred = (path, reason)

    def _adaptation_reason(self, anchors: dict) -> str | None:
        """Why this snapshot must take the adaptation path, or ``None`` for the incremental one."""
        drift = self.monitor.consume_drift()
        count = int(sum(len(r) for r in anchors.values()))
        cfg = self.adapt_cfg
        if self.fast is None:
            return "first snapshot"
        if any(p not in self.matchers for p in anchors):
            return "new pair of networks"
        if not cfg.incremental:
            return "incremental path disabled"
        if drift:
            return f"drift: {drift}"
        if cfg.every_snapshots and self.since_adaptation + 1 >= cfg.every_snapshots:
            return f"schedule: every {cfg.every_snapshots} snapshots"
        if cfg.anchor_growth and count >= (1.0 + cfg.anchor_growth) * max(self.anchors_at_adaptation, 1):
            return f"anchors grew from {self.anchors_at_adaptation} to {count}"
        return None

    def _adaptation_path(self, inputs: SnapshotInputs, reason: str) -> dict:
        """Fast-adapt the initialisation to this snapshot and align everything afresh.

        The meta-update this snapshot earns (``meta.iterations_per_snapshot``, on the task pool as it is now) is
        owed, not run: :meth:`learn` runs it after the alignment is out, so publishing never waits for it. What
        is still owed when the next adaptation comes is run first, so every adaptation starts from the same
        initialisation whenever the service found time to learn. The first snapshot warms up at once.
        """
        t0 = time.perf_counter()
        split = self._calibration_split(inputs)
        fit = None if split is None else dataclasses.replace(inputs, anchors=split[0], ppr={}, encoded=None)
        if self.meta.iterations == 0:
            # Warming up on the fit anchors only keeps the held-back ones out of the initialisation too.
            meta_stats = self.meta.train(self.learner, self.model_cfg, self.meta.cfg.warmup_iterations,
                                         [fit] if fit else list(self.meta.pool))
        else:
            meta_stats = self.learn()
        self.meta.owe()
        t_meta = time.perf_counter()
        calibration = {} if split is None else self._calibrate(fit, split[1])
        t_calibrated = time.perf_counter()
        self.anchors_at_adaptation = int(sum(len(r) for r in inputs.anchors.values()))
        pseudo, adapt_s = self._align_rounds(inputs, self.adapt_cfg.steps)
        self.since_adaptation = 0
        return {"path": AlignmentPath.ADAPTATION, "reason": reason, **meta_stats, "meta_due": self.meta.due, **calibration,
                "pseudo_anchors": pseudo, "meta_s": round(t_meta - t0, 3), "adapt_s": round(adapt_s, 3),
                "align_s": round(time.perf_counter() - t_calibrated - adapt_s, 3)}

    def _calibration_split(self, inputs: SnapshotInputs) -> tuple[dict, dict] | None:
        """Fit and held-back anchors for self-calibration when one is due: calibration is on, there is more than
        one candidate, enough anchors to hold back, and none has been done or the anchors grew
        ``refine.calibration_growth`` times since (so a stream revealing anchors calibrates a few times, not on
        every adaptation). The split is seeded by the seed and the anchor count, so a restarted aligner splits
        the same way. Later calibrations start from an initialisation meta-learned on every anchor known then,
        held-back ones included: they rank a little better than they would unseen, under every candidate alike."""
        cfg = self.refine_cfg
        count = int(sum(len(r) for r in inputs.anchors.values()))
        if not cfg.calibrate or not cfg.enabled or len(candidates(cfg)) < 2:
            return None
        if self.calibrated is not None and count < cfg.calibration_growth * self.anchors_at_calibration:
            return None
        rng = np.random.default_rng([self.seed, 2, count])
        return holdout_split(inputs.anchors, cfg.calibration_holdout, cfg.calibration_min_anchors, rng)

    def _calibrate(self, fit: SnapshotInputs, heldout: dict[tuple[str, str], np.ndarray]) -> dict:
        """Adapt on ``fit``, solve every pair's plan under each candidate setting, rank the ``heldout`` anchors
        under each (both directions, pooled over pairs) and keep what :func:`aligner.matching.calibration.choose` says.
        Returns the step's stats: the choice and each candidate's held-out MRR."""
        started = time.perf_counter()
        base = self.refine_cfg
        fast = self.adapt(fit, self.adapt_cfg.steps)
        self.infer(fast, fit)
        return_free_heap()
        reciprocal: dict[RefineSetting, np.ndarray] = {}
        for candidate in candidates(base):
            self.refine_cfg = candidate.applied(base)
            found = []
            for (a, b), rows in heldout.items():
                matcher = self._full_match(a, b)
                pairs = torch.from_numpy(rows.astype(np.int64))
                for direction, p, alive in (("ab", pairs, self.alive[b]), ("ba", pairs.flip(1), self.alive[a])):
                    found.append(1.0 / ranks(DirectionScorer(matcher, direction), p, alive).double().numpy())
                del matcher
            reciprocal[candidate] = np.concatenate(found)
            if len(reciprocal) == 1 and bool((reciprocal[candidate] == 1.0).all()):
                break  # the configured setting ranks every held-back anchor first: nothing can beat it
        scores = {c: float(rr.mean()) for c, rr in reciprocal.items()}
        chosen = choose(reciprocal)
        self.refine_cfg = chosen.applied(base)
        self.calibrated = chosen
        self.anchors_at_calibration = int(sum(len(r) for r in fit.anchors.values())
                                          + sum(len(r) for r in heldout.values()))
        log.info("calibration: %s (held-back MRR %s; %d anchors held back)", chosen.label,
                 ", ".join(f"{c.label} {s:.3f}" for c, s in scores.items()),
                 sum(len(r) for r in heldout.values()))
        return {"calibrated": chosen.as_dict(),
                "calibration_mrr": {c.label: round(s, 4) for c, s in scores.items()},
                "calibration_s": round(time.perf_counter() - started, 3)}

    def _align_rounds(self, inputs: SnapshotInputs, steps: int | None, warm_first: bool = False) -> tuple[int, float]:
        """Align everything afresh: embed every network from its known anchors and solve each pair's plan; then,
        for each of ``refine.pseudo_anchor_rounds``, add the plans' confident pairs as pseudo-anchors and do it
        again. Each round first fast-adapts the initialisation to its anchors with ``steps`` steps; ``None``
        keeps the current weights. ``warm_first`` starts the first round's plan from the last one too (later
        rounds always do). Returns the pseudo-anchors of the last round and the seconds spent adapting."""
        pseudo, adapt_s = 0, 0.0
        real_seeds: dict[str, int] = {}
        if steps is None:
            fast = self.learner.clone(second_order=False)
            fast.params = self.fast
        for round_ in range(1 + self.refine_cfg.pseudo_anchor_rounds):
            if round_:
                expanded = self._with_pseudo_anchors(inputs)
                if expanded is None:
                    break
                inputs, pseudo = expanded
            if steps is not None:
                started = time.perf_counter()
                fast = self.adapt(inputs, steps)
                self.fast = fast.detached()
                adapt_s += time.perf_counter() - started
            self.infer(fast, inputs)
            if not round_:  # the known anchors' seeds; later rounds add the pseudo-anchors'
                real_seeds = {net: len(seeds) for net, seeds in self.entities.items()}
            return_free_heap()  # what training freed goes back before the plans' dense buffers are allocated
            # A later round solves on the same graphs with sharper weights or seeds: from the plan just solved,
            # ``refine.warm_rounds`` rounds land where ``refine.rounds`` from nothing would.
            self.matchers = {pair: self._full_match(*pair, self._warm_start(pair) if round_ or warm_first else None)
                             for pair in inputs.anchors}
        self.pseudo_seeds = {net: len(seeds) - real_seeds.get(net, 0) for net, seeds in self.entities.items()}
        self.aligned_edges = {net: edge_keys(g.edge_index) for net, g in inputs.graphs.items()}
        return pseudo, adapt_s

    def _with_pseudo_anchors(self, inputs: SnapshotInputs) -> tuple[SnapshotInputs, int] | None:
        """``inputs`` with the current plans' confident mutual top-1 pairs added to its anchors (``None``: no
        pair qualifies), and how many were added.

        With few anchors, positions relative to them are coarse and the loss has little to learn from; the pairs
        the structure-consistent plan is sure of, both ways, are right far more often than the model alone
        (douban at 0.5 confidence, the default: 78% of ~580 with 42 train anchors, 87% of ~630 with 167, where
        Hits@1 is 0.62 and 0.74) and sharpen both. Only nodes not anchored yet qualify, so a pseudo-anchor never
        contradicts a known one. They stay seeds until the next adaptation derives them afresh (counted apart in
        :attr:`pseudo_seeds`), and are never scored, meta-learned from or counted as anchors by the schedule.
        """
        threshold = self.refine_cfg.pseudo_anchor_confidence
        merged, added = {}, 0
        for pair, rows in inputs.anchors.items():
            matcher = self.matchers[pair]
            to_b, conf = matcher.top("ab")
            to_a, _ = matcher.top("ba")
            best, conf = to_b[:, 0], conf[:, 0]
            a = torch.arange(len(best))
            keep = (to_a[best, 0] == a) & (conf >= threshold) & self.alive[pair[0]] & self.alive[pair[1]][best]
            keep[torch.from_numpy(rows[:, 0])] = False
            keep &= ~torch.isin(best, torch.from_numpy(rows[:, 1]))
            found = torch.stack([a[keep], best[keep]], dim=1).numpy()
            merged[pair] = np.concatenate([rows, found]) if len(found) else rows
            added += len(found)
        if not added:
            return None
        return dataclasses.replace(inputs, anchors=merged, ppr={}, encoded=None), added

    def _incremental_path(self, inputs: SnapshotInputs, defer: bool = False) -> dict:
        """Re-encode and re-rank only what the snapshot's changes can reach (see the module docstring). With
        ``defer``, anchors due to join and a realignment due are noted in :attr:`deferred` instead."""
        t0 = time.perf_counter()
        fast = self.learner.clone(second_order=False)
        fast.params = self.fast
        dirty: dict[str, torch.Tensor] = {}  # per network: the nodes whose scores must be recomputed
        encoded: dict[str, int] = {}
        shifts = []
        entities_now = anchor_entities(inputs.snapshot, inputs.anchors)
        m = self.model_cfg
        moved: set[str] = set()  # networks whose coordinate system gained anchors
        # New anchors join the coordinate system together, once they add ``adapt.anchor_refresh`` of the known
        # ones: each one moves every position it reaches and so costs a re-encoding and a re-solve of the plan,
        # which a stream revealing an anchor every few hundred events cannot pay each time. Until then they
        # are scored prequentially and wait; a network's anchors join all at once, so coordinates stay shared.
        # A seed is a node under an entity key: an anchor that confirms a pseudo-anchor (same nodes, same key)
        # changes nothing, one that contradicts it seeds its other node under the same key.
        known = {net: set(self.entities.get(net, [])) for net in inputs.graphs}
        waiting = {net: [seed for seed in entities_now.get(net, []) if seed not in known[net]]
                   for net in inputs.graphs}
        # Counted without pseudo-anchors: new anchors join as often as they would without them, and each join
        # re-solves the plan, which is what keeps a growing network's new nodes well matched.
        known_count = sum(len(self.entities.get(net, [])) - self.pseudo_seeds.get(net, 0) for net in inputs.graphs)
        joining = sum(map(len, waiting.values()))
        if not joining or joining < self.adapt_cfg.anchor_refresh * known_count:
            waiting = {}
        changed_share = self._edges_changed_since_alignment(inputs.graphs)
        if changed_share >= self.refine_cfg.warm_max_change:
            if not defer:
                return self._realignment(inputs, t0)
            self._defer(AlignmentPath.INCREMENTAL, f"realignment: {changed_share:.1%} of the edges changed")
            waiting = {}
        elif waiting and defer:
            self._defer(AlignmentPath.INCREMENTAL, f"{joining} anchors join")
            waiting = {}
        for net, g in inputs.graphs.items():
            n_old = len(self.node_ids.get(net, ()))
            # Nodes whose edges, attributes or anchors changed, and new ones: their sketch is recomputed.
            touched = torch.from_numpy(np.asarray(inputs.snapshot.networks[net].changed, dtype=np.int64))
            touched = torch.unique(torch.cat([touched, torch.arange(n_old, g.num_nodes)]))
            changed = touched
            adjacency = adjacency_csr(g.edge_index, g.num_nodes)
            sketch = self._grow(self.sketches[net], g.num_nodes)
            # The sketch is a sum over entities, so a new anchor's term is added for every node it reaches; the
            # others' terms stay as of the last adaptation.
            new_seeds = waiting.get(net)
            if new_seeds:
                added = position_sketch(g, new_seeds, m.position_dim, m.rwr_restart, m.rwr_steps)
                sketch += added
                self.entities[net] = self.entities.get(net, []) + new_seeds
                moved.add(net)
                changed = torch.unique(torch.cat([changed, (added != 0).any(1).nonzero().flatten()]))
            if len(touched):
                sketch[touched] = position_sketch(g, self.entities.get(net, []), m.position_dim, m.rwr_restart,
                                                  m.rwr_steps, rows=touched)
            self.sketches[net] = sketch
            pos = position_features(sketch, g)
            hops = 2 * (self.model_cfg.cheb_k - 1)
            reach = closure(adjacency, changed, hops)
            hidden = self._pad(self.hidden_in.get(net), g.num_nodes)
            z = self._grow(self.embeddings[net], g.num_nodes)
            with torch.no_grad():
                z_reach = encode_rows(fast, g, pos, hidden, reach, adjacency, hops)
            old = reach[reach < n_old]
            if len(old):
                shifts.append(float((1.0 - (z_reach[: len(old)] * z[old]).sum(1)).mean()))
            encoded[net] = int(len(reach))
            if self.adapt_cfg.embedding_tolerance > 0 and len(old):
                # A node the change reached only through message passing, whose embedding moved by less than the
                # tolerance, keeps its stored embedding and its ranking: every score it takes part in is a cosine
                # of unit vectors, so it is off by at most the tolerance. In a small world a 2-hop closure is most
                # of the graph, but few of its nodes really move.
                shifted = (z_reach[: len(old)] - z[old]).norm(dim=1) > self.adapt_cfg.embedding_tolerance
                keep = torch.cat([shifted, torch.ones(len(reach) - len(old), dtype=torch.bool)])
                keep |= torch.isin(reach, changed)
                reach, z_reach = reach[keep], z_reach[keep]
            z[reach] = z_reach
            self.position_inputs[net] = pos
            self.hidden_in[net] = hidden
            self._remember(net, inputs, z, pos, g, adjacency)
            dirty[net] = reach
        t_encode = time.perf_counter()
        if shifts:
            self.monitor.learn_shift(float(np.mean(shifts)))
        rows = {}
        for (a, b), matcher in list(self.matchers.items()):
            if a in moved or b in moved:
                # New anchors shift every position they reach: the transport context of the last plan no longer
                # fits, so the plan is solved again under the same weights (no training), from the last plan:
                # the graph is still mostly the one everything was aligned on (else this is a realignment).
                warm = self._warm_start((a, b))
                self.matchers[(a, b)] = self._full_match(a, b, warm)
                rows[f"{a}:{b}"] = ("plan warm-started: new anchors" if warm is not None
                                    else "plan solved again: new anchors")
            elif a in dirty and b in dirty:
                rows[f"{a}:{b}"] = matcher.update(self._view(a), self._view(b), dirty[a], dirty[b])
        self.since_adaptation += 1
        return {"path": AlignmentPath.INCREMENTAL, "reencoded": encoded, "reranked": {n: int(len(d)) for n, d in dirty.items()},
                "rescored": rows, "encode_s": round(t_encode - t0, 3),
                "align_s": round(time.perf_counter() - t_encode, 3)}

    def _realignment(self, inputs: SnapshotInputs, t0: float) -> dict:
        """The incremental path's answer to a graph that changed too much since everything was last aligned
        afresh (``refine.warm_max_change`` of a network's edges): align everything afresh under the current
        weights (no training), anchors waiting to join included and pseudo-anchors derived again from the new
        plan. Positions refreshed only where edges changed drift from exact ones as the walks elsewhere change,
        and the last adaptation's pseudo-anchors were chosen on the graph as it was then: douban, streamed in
        seeded order (10% of its edges per window), with either left in place, ended 0.09-0.12 Hits@1 below a
        full re-match with the same weights."""
        pseudo, _ = self._align_rounds(inputs, None, warm_first=self.refine_cfg.warm_realignment)
        self.since_adaptation += 1
        sizes = {net: g.num_nodes for net, g in inputs.graphs.items()}
        return {"path": AlignmentPath.INCREMENTAL, "reencoded": sizes, "reranked": sizes, "pseudo_anchors": pseudo,
                "rescored": {f"{a}:{b}": "aligned afresh: edges changed" for a, b in self.matchers},
                "encode_s": 0.0, "align_s": round(time.perf_counter() - t0, 3)}

    def _edges_changed_since_alignment(self, graphs: dict[str, GraphTensors]) -> float:
        """The largest share of a network's edges added or removed since everything was last aligned afresh.

        Edges, not touched nodes: positions are walks and the plan's structure term sees the 0/1 adjacency, and
        in a mature network a second of messages touches a tenth of the nodes while changing under 1% of the
        edges (collegemsg).
        """
        share = 0.0
        for net, g in graphs.items():
            now, before = edge_keys(g.edge_index), self.aligned_edges.get(net)
            changed = len(now) if before is None else len(np.setxor1d(now, before, assume_unique=True))
            share = max(share, changed / max(len(now), 1))
        return share

    def freeze(self) -> None:
        """Keep the current adapted weights for good: every later snapshot is embedded and matched in full with
        them, and nothing learns any more (the *frozen* baseline of the stream benchmark)."""
        with torch.no_grad():
            for name, p in self.learner.model.named_parameters():
                p.copy_(self.fast[name])
        self.meta.cfg = dataclasses.replace(self.meta.cfg, iterations_per_snapshot=0)
        self.adapt_cfg = dataclasses.replace(self.adapt_cfg, steps=0, incremental=False)

    def learn(self, iterations: int | None = None) -> dict[str, float]:
        """Run up to ``iterations`` (default: all) of the meta-update iterations owed; returns the last stats."""
        return self.meta.learn(self.learner, self.model_cfg, iterations)

    @property
    def meta_due(self) -> int:
        """Meta-update iterations owed (:mod:`aligner.engine.meta_schedule`): the service runs them when idle."""
        return self.meta.due

    def adapt(self, inputs: SnapshotInputs, steps: int) -> FastWeights:
        task = draw_task(inputs, self.meta.cfg.seed_fraction, self.model_cfg, 0.0, self.rng)
        if task is None or steps == 0:
            return self.learner.clone(second_order=False)
        return self.learner.adapted(task, steps)

    def infer(self, fast: FastWeights, inputs: SnapshotInputs) -> dict[str, torch.Tensor]:
        """Embed every network with all known anchors as seeds; advance the temporal state."""
        entities = anchor_entities(inputs.snapshot, inputs.anchors)
        out = {}
        with torch.no_grad():
            for net, g in inputs.graphs.items():
                self.entities[net] = entities.get(net, [])
                m = self.model_cfg
                self.sketches[net] = position_sketch(g, self.entities[net], m.position_dim, m.rwr_restart,
                                                     m.rwr_steps, cache=inputs.node_ppr(net, m.rwr_restart, m.rwr_steps))
                pos = position_features(self.sketches[net], g)
                z, h = fast(g.attrs, pos, g.edge_index, g.edge_weight, inputs.hidden[net])
                self.hidden_in[net] = inputs.hidden[net]
                self.hidden[net] = h.detach()
                self.position_inputs[net] = pos
                self._remember(net, inputs, z.detach(), pos, g, adjacency_csr(g.edge_index, g.num_nodes))
                out[net] = z.detach()
        return out

    def _remember(self, net: str, inputs: SnapshotInputs, z: torch.Tensor, pos: torch.Tensor, g: GraphTensors,
                  adjacency: sp.csr_matrix) -> None:
        self.embeddings[net] = z
        self.positions[net] = pos[:, :-2].contiguous()
        self.attrs[net] = g.attrs
        self.node_ids[net] = inputs.snapshot.networks[net].node_ids
        self.alive[net] = g.alive
        self.edges[net] = g.edge_index
        self.adjacency[net] = adjacency

    def rank(self, snapshot: Snapshot, pairs: list[tuple[str, str]]) -> AlignmentUpdate:
        results = []
        for a, b in pairs:
            matcher = self.matchers[(a, b)]
            for src, dst, d in ((a, b, "ab"), (b, a, "ba")):
                rows = self.alive[src].nonzero().flatten()
                idx, val = matcher.top(d)
                results.append(PairTopK(src, dst, rows.numpy(), idx[rows].numpy(), val[rows].numpy()))
        node_ids = {n: snapshot.networks[n].node_ids for n in {n for p in pairs for n in p}}
        return AlignmentUpdate(snapshot.id, snapshot.end_time, node_ids, results)

    def _full_match(self, a: str, b: str, warm: WarmStart | None = None) -> PairMatcher:
        """Solve the structure-consistent transport plan (:mod:`aligner.matching.refine`) when it fits in
        ``refine.max_cells`` (else score by prior similarity alone) and rank every node of both networks.
        From ``warm`` (an earlier plan's context) ``refine.warm_rounds`` rounds replace ``refine.rounds``."""
        cfg = self.refine_cfg
        plan = similarity = None
        if cfg.enabled and self.embeddings[a].shape[0] * self.embeddings[b].shape[0] <= cfg.max_cells:
            with torch.no_grad():
                similarity = self.similarity(a, b)
                plan = solve_plan(similarity, self.adjacency[a], self.adjacency[b], cfg.tau,
                                  cfg.beta, cfg.rounds if warm is None else cfg.warm_rounds, cfg.sinkhorn_iters,
                                  self.alive[a], self.alive[b], cfg.marginal_weight, warm)
            if similarity.numel() > DENSE_CELLS:  # ranked by row chunks, which compute their own: let it go
                similarity = None
        return PairMatcher(self._view(a), self._view(b), plan, cfg.tau if plan is not None else 1.0,
                           cfg.beta if plan is not None else 0.0, cfg.feature_weight, self.k, similarity=similarity)

    def _warm_start(self, pair: tuple[str, str]) -> WarmStart | None:
        """The pair's last plan as the start of its next solve (``None``: solve from scratch)."""
        matcher = self.matchers.get(pair)
        if matcher is None or not self.refine_cfg.warm_rounds:
            return None
        return matcher.warm_start(self._view(pair[0]), self._view(pair[1]))

    def scorers(self, a: str, b: str) -> dict[tuple[str, str], DirectionScorer]:
        """How candidates are scored for both directions of an aligned pair: confidences under the current
        transport context (:mod:`aligner.matching.incremental`)."""
        key = pair_key(a, b)
        matcher = self.matchers.get(key)
        if matcher is None:
            raise KeyError(f"{a!r} and {b!r} are not aligned (aligned pairs: {sorted(self.matchers)})")
        forward = "ab" if key == (a, b) else "ba"
        backward = "ba" if forward == "ab" else "ab"
        return {(a, b): DirectionScorer(matcher, forward), (b, a): DirectionScorer(matcher, backward)}

    def similarity(self, a: str, b: str) -> torch.Tensor:
        """Dense prior similarity: embedding cosine plus ``refine.feature_weight`` x (position cosine + attribute
        cosine, when both networks have attributes)."""
        return similarity_block(self._view(a), self._view(b), slice(None), slice(None), self.refine_cfg.feature_weight)

    def _view(self, net: str) -> NetworkView:
        return NetworkView(self.embeddings[net], self.positions[net], self.attrs[net], self.adjacency[net],
                           self.alive[net])

    def _score_new_anchors(self, snapshot: Snapshot, anchors: dict[tuple[str, str], np.ndarray]) -> int:
        """Test-then-train: rank each newly revealed anchor's partner under the alignments published so far."""
        scored = 0
        for (a, b), rows in anchors.items():
            fresh = [(i, j) for i, j in rows.tolist() if (a, b, i, j) not in self.known_anchors]
            self.known_anchors.update((a, b, i, j) for i, j in fresh)
            matcher = self.matchers.get((a, b))
            if matcher is None:
                continue
            fresh = [(i, j) for i, j in fresh if i < matcher.va.n and j < matcher.vb.n
                     and bool(matcher.va.alive[i]) and bool(matcher.vb.alive[j])]
            if not fresh:
                continue
            pairs = torch.tensor(fresh, dtype=torch.long)
            with torch.no_grad():
                scores = matcher.scores("ab", pairs[:, 0], torch.arange(matcher.vb.n))
                true = scores.gather(1, pairs[:, 1:2])
                ranks = (torch.nan_to_num(scores, nan=float("-inf")) >= true).sum(1).clamp_min(1)
            for r in ranks.tolist():
                self.monitor.learn_one(int(r), pair=f"{a}|{b}")  # anchors are keyed with a < b
            scored += len(fresh)
        return scored

    # -- helpers ----------------------------------------------------------------------------------------------
    def _ensure_learner(self, graphs: dict[str, GraphTensors]) -> None:
        if self.learner is not None:
            return
        attr_dim = max((g.attrs.shape[1] for g in graphs.values() if g.attrs is not None), default=0)
        self.learner = self._new_learner(attr_dim)

    def _new_learner(self, attr_dim: int) -> MetaLearner:
        torch.manual_seed(self.seed)
        m = self.model_cfg
        encoder = AlignmentEncoder(attr_dim, m.position_dim, m.hidden, m.embedding_dim, m.cheb_k)
        meta = self.meta.cfg
        return MetaLearner(encoder, meta.algorithm, meta.inner_lr, meta.meta_lr, meta.reptile_step)

    def _hidden_for(self, net: str, n: int) -> torch.Tensor | None:
        return self._pad(self.hidden.get(net), n)

    @staticmethod
    def _pad(h: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """New nodes since ``h`` was computed start from a blank history."""
        if h is None or h.shape[0] >= n:
            return h
        return torch.cat([h, torch.zeros(n - h.shape[0], h.shape[1])])

    @staticmethod
    def _grow(x: torch.Tensor, n: int) -> torch.Tensor:
        return torch.cat([x, torch.zeros(n - x.shape[0], x.shape[1])]) if x.shape[0] < n else x.clone()

    def evaluate(self, net: str, to: str, id_pairs: list[tuple[str, str]]) -> dict:
        """Ranking metrics of the current alignments on true pairs given as external ids; pairs whose nodes this
        aligner has not seen are counted in ``unknown`` and left out."""
        if net not in self.embeddings or to not in self.embeddings:
            raise KeyError(f"no embeddings for {net!r} and {to!r} yet (networks seen: {sorted(self.embeddings)})")
        index_a = {n: i for i, n in enumerate(self.node_ids[net])}
        index_b = {n: i for i, n in enumerate(self.node_ids[to])}
        rows = [(index_a[a], index_b[b]) for a, b in id_pairs if a in index_a and b in index_b]
        pairs = torch.tensor(rows, dtype=torch.long).reshape(-1, 2)
        out = ranking_metrics(self.scorers(net, to)[(net, to)], pairs, self.alive[to])
        out["unknown"] = len(id_pairs) - len(rows)
        return out

    # -- persistence ------------------------------------------------------------------------------------------
    def model_version(self) -> str | None:
        """A short content id of the model: the meta-learned initialisation, its inner learning rates and the
        adapted weights the incremental path encodes with. It changes with adaptation and meta-updates, not with
        incremental steps; equal weights, equal versions. ``None`` before the first snapshot."""
        if self.learner is None:
            return None
        digest = hashlib.sha256()
        for prefix, tensors in (("init", self.learner.state_dict()), ("fast", self.fast or {})):
            for name in sorted(tensors):
                digest.update(f"{prefix}.{name}".encode())
                digest.update(tensors[name].detach().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def state_bytes(self) -> bytes:
        """Everything needed to continue exactly where this aligner is, the meta-learning task pool included (its
        snapshots in the store's compact encoding, with the temporal state each was seen with), so a restarted
        or savepoint-seeded worker meta-learns exactly as an uninterrupted one."""
        return encode({
            "learner": None if self.learner is None else self.learner.state_dict(),
            "optimizer": None if self.learner is None else self.learner.optimizer.state_dict(),
            "attr_dim": None if self.learner is None else self.learner.model.attr_dim,
            "model_cfg": dataclasses.asdict(self.model_cfg),
            "algorithm": self.meta.cfg.algorithm,
            **{name: getattr(self, name) for name in PLAIN_STATE},
            "matchers": {pair: m.state() for pair, m in self.matchers.items()},
            "monitor": self.monitor.state(),
            "meta_due": self.meta.due,
            "meta_iterations": self.meta.iterations,
            "pool": [_pool_entry_to_state(entry) for entry in self.meta.pool],
            "meta_pool": [_pool_entry_to_state(entry) for entry in self.meta.due_pool],
            "rng": self.rng.bit_generator.state,
            "meta_rng": self.meta.rng.bit_generator.state,
            "calibrated": None if self.calibrated is None else self.calibrated.as_dict(),
        })

    def load_state_bytes(self, data: bytes) -> None:
        """Restore :meth:`state_bytes`. Plain data only (:mod:`aligner.engine.state_codec`): a state in any other form,
        an older dynalign's pickled one included, raises :class:`aligner.engine.state_codec.StateFormatError` and loads nothing."""
        state = decode(data)
        state["monitor"] = QualityMonitor.from_state(state["monitor"])
        # The checkpoint's architecture wins over the current configuration: weights only fit the shapes they had.
        self.model_cfg = ModelConfig(**state["model_cfg"])
        self.meta.cfg = dataclasses.replace(self.meta.cfg, algorithm=state["algorithm"])
        if state["learner"] is not None:
            self.learner = self._new_learner(state["attr_dim"])
            self.learner.load_state_dict(state["learner"])
            self.learner.optimizer.load_state_dict(state["optimizer"])
        for name in PLAIN_STATE:
            if name in state:
                setattr(self, name, state[name])
            elif name in OPTIONAL_STATE:
                setattr(self, name, OPTIONAL_STATE[name]())
            else:
                raise StateFormatError(f"aligner state: {name!r} is missing")
        self.monitor = state["monitor"]
        self.positions = {net: pos[:, :-2].contiguous() for net, pos in self.position_inputs.items()}
        self.adjacency = {net: adjacency_csr(e, len(self.node_ids[net])) for net, e in self.edges.items()}
        self.matchers = {pair: PairMatcher.from_state(m, self._view(pair[0]), self._view(pair[1]))
                         for pair, m in state["matchers"].items()}
        self.rng.bit_generator.state = state["rng"]
        if "meta_rng" in state:  # states saved before meta-updates were owed have none: nothing owed then
            self.meta.rng.bit_generator.state = state["meta_rng"]
        self.meta.due = state.get("meta_due", 0)
        if "meta_iterations" not in state:
            raise StateFormatError("aligner state: 'meta_iterations' is missing")
        self.meta.iterations = state["meta_iterations"]
        calibrated = state.get("calibrated")  # none (never calibrated, or an older state): the configured settings
        self.calibrated = None if calibrated is None else RefineSetting(**calibrated)
        if self.calibrated is not None:
            self.refine_cfg = self.calibrated.applied(self.refine_cfg)
        self.meta.pool.clear()
        self.meta.pool.extend(self._pool_entry(entry) for entry in state["pool"])
        self.meta.due_pool = [self._pool_entry(entry) for entry in state.get("meta_pool", [])]

    def _pool_entry(self, state: tuple[bytes, dict]) -> SnapshotInputs:
        snapshot, hidden = snapshot_from_bytes(state[0]), state[1]
        graphs = {n: GraphTensors.from_snapshot(snapshot.networks[n]) for n in hidden}
        return SnapshotInputs(snapshot, graphs, hidden, anchors_of(snapshot, self.aligned_pairs(snapshot)))


def _pool_entry_to_state(entry: SnapshotInputs) -> tuple[bytes, dict]:
    """A task-pool entry as stored: the snapshot in the store's compact encoding (encoded once: entries never
    change, and the state is saved after every alignment) and the temporal state it was seen with."""
    if entry.encoded is None:
        entry.encoded = snapshot_to_bytes(entry.snapshot)
    return entry.encoded, entry.hidden
