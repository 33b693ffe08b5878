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
the alignments fresh, and swaps the refreshed one in once it has caught up (:mod:`aligner.service.background_refresh`).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import time

import numpy as np
import torch

from aligner.config import AdaptConfig, MetaConfig, ModelConfig, RefineConfig, parse_pairs
from aligner.engine.adaptation_policy import AdaptationPolicy
from aligner.engine.aligner_state import aligner_state_bytes, load_aligner_state
from aligner.engine.alignments import Alignments
from aligner.engine.drift import QualityMonitor
from aligner.engine.incremental_path import incremental_step
from aligner.engine.local_encoding import edge_keys
from aligner.engine.meta_schedule import MetaSchedule
from aligner.engine.network_state import NetworkState, hidden_for
from aligner.engine.self_calibration import Calibrator, anchor_count
from aligner.engine.tasks import SnapshotInputs, draw_task
from aligner.model.features import GraphTensors, anchor_entities, anchors_of, position_features, position_sketch
from aligner.model.meta import FastWeights, MetaLearner, build_learner, weights_version
from aligner.runtime import return_free_heap
from aligner.update import AlignmentPath, AlignmentUpdate
from snapshots.snapshot import Snapshot

log = logging.getLogger(__name__)


class Aligner:
    """Stateful per-snapshot aligner (see the module docstring). ``pairs`` is ``"auto"`` (every pair of networks
    that has anchors, or is joined through pairs that have) or ``"a:b,c:d"``."""

    def __init__(self, model: ModelConfig, meta: MetaConfig, adapt: AdaptConfig, pairs: str = "auto",
                 top_k: int = 10, seed: int = 0, refine: RefineConfig | None = None):
        self.model_cfg = model
        self.pairs_spec = pairs
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.meta = MetaSchedule(meta, seed)
        self.policy = AdaptationPolicy(adapt)
        self.calibrator = Calibrator(seed)
        self.learner: MetaLearner | None = None
        self.fast: dict[str, torch.Tensor] | None = None  # the adapted weights the incremental path encodes with
        self.networks: dict[str, NetworkState] = {}
        self.alignments = Alignments(self.networks, refine or RefineConfig(), top_k)
        self.monitor = QualityMonitor(adapt.drift_delta, adapt.shift_threshold)
        self.known_anchors: set[tuple[str, str, int, int]] = set()

    @property
    def adapt_cfg(self) -> AdaptConfig:
        return self.policy.cfg

    @property
    def refine_cfg(self) -> RefineConfig:
        """The transport settings in use: the configured ones, with what self-calibration chose."""
        return self.alignments.refine

    @property
    def meta_learner(self) -> MetaLearner:
        """:attr:`learner`, built by the first snapshot with anchors: all adapting, learning and inference follow."""
        assert self.learner is not None, "no learner before the first snapshot with anchors"
        return self.learner

    def adapted_weights(self) -> FastWeights:
        """:attr:`fast` as fast weights, which incremental steps and realignments (after an adaptation) encode with."""
        assert self.fast is not None, "no adapted weights before the first adaptation"
        fast = self.meta_learner.clone(second_order=False)
        fast.params = self.fast
        return fast

    @property
    def deferred(self) -> tuple[AlignmentPath, str] | None:
        """Heavy work an ``on_snapshot(..., defer=True)`` found due and left to :meth:`refresh`: the path and why."""
        return self.policy.deferred

    # -- the per-snapshot pipeline -------------------------------------------------------------------------
    def aligned_pairs(self, snapshot: Snapshot) -> list[tuple[str, str]]:
        if self.pairs_spec == "auto":
            return list(itertools.combinations(sorted(snapshot.networks), 2))
        return [p for p in parse_pairs(self.pairs_spec) or ()
                if p[0] in snapshot.networks and p[1] in snapshot.networks]

    def on_snapshot(self, snapshot: Snapshot, defer: bool = False) -> AlignmentUpdate | None:
        """Align ``snapshot`` (see the module docstring). With ``defer``, work heavier than an incremental step
        (an adaptation, a realignment, waiting anchors joining) is not done but noted in :attr:`deferred` for
        :meth:`refresh`; the first snapshot of a pair of networks is aligned in full all the same."""
        started = time.perf_counter()
        anchors = anchors_of(snapshot, self.aligned_pairs(snapshot))
        if not anchors:
            log.info("snapshot %d: no anchors between aligned networks yet, nothing to align", snapshot.id)
            return None
        nets = sorted({n for p in anchors for n in p})
        graphs = {n: GraphTensors.from_snapshot(snapshot.networks[n]) for n in nets}
        self._ensure_learner(graphs)
        scored = self._score_new_anchors(anchors)
        hidden = {n: hidden_for(self.networks.get(n), graphs[n].num_nodes) for n in nets}
        inputs = SnapshotInputs(snapshot, graphs, hidden, anchors)
        self.meta.pool.append(inputs)
        plan = self.policy.plan(anchor_count(anchors), adapted=self.fast is not None,
                                matched=all(p in self.alignments.matchers for p in anchors),
                                drift=self.monitor.consume_drift(), defer=defer)
        if plan.path == AlignmentPath.ADAPTATION and not plan.deferred:
            assert plan.reason is not None  # an adaptation is planned for a reason (AdaptationPolicy.plan)
            stats = self._adaptation_path(inputs, plan.reason)
        else:
            stats = incremental_step(self, inputs, defer=defer)
        if self.deferred is not None:
            stats["deferred"] = self.deferred[1]
        update = self.alignments.rank(snapshot, list(anchors))
        return self._with_stats(update, {**stats, "new_anchors_scored": scored}, anchors, started)

    def refresh(self) -> AlignmentUpdate:
        """Do the heavy work :attr:`deferred` on the last snapshot, which ``on_snapshot(..., defer=True)`` already
        aligned incrementally, and return its alignments afresh. The snapshot's temporal state, anchors and
        inputs are those its incremental step started from, so the result is what aligning it without ``defer``
        would have given (up to the tolerance of redoing the incremental step on its own output)."""
        path, reason = self.policy.take_deferred()
        started = time.perf_counter()
        inputs = self.meta.pool[-1]
        if path == AlignmentPath.ADAPTATION:
            stats = self._adaptation_path(inputs, reason)
        else:
            stats = incremental_step(self, inputs)
        update = self.alignments.rank(inputs.snapshot, list(inputs.anchors))
        return self._with_stats(update, {**stats, "refreshed": reason}, inputs.anchors, started)

    def _with_stats(self, update: AlignmentUpdate, stats: dict, anchors: dict, started: float) -> AlignmentUpdate:
        """``update`` with the step's stats, the online quality metrics, the anchor count and the step's time."""
        update.stats = {**stats, **self.monitor.metrics(), "anchors": anchor_count(anchors),
                        **self.alignments.cycle_stats(), "total_s": round(time.perf_counter() - started, 3)}
        return update

    def fork(self) -> "Aligner":
        """An independent copy to refresh in the background while this one goes on. Snapshots in the task pool
        never change once pooled, so the copy shares them (their lazily filled caches too) instead of copying."""
        memo: dict[int, object] = {id(entry): entry for entry in (*self.meta.pool, *self.meta.due_pool)}
        return copy.deepcopy(self, memo)

    def _adaptation_path(self, inputs: SnapshotInputs, reason: str) -> dict:
        """Fast-adapt the initialisation to this snapshot and align everything afresh.

        The meta-update this snapshot earns (``meta.iterations_per_snapshot``, on the task pool as it is now) is
        owed, not run: :meth:`learn` runs it after the alignment is out, so publishing never waits for it. What
        is still owed when the next adaptation comes is run first, so every adaptation starts from the same
        initialisation whenever the service found time to learn. The first snapshot warms up at once.
        """
        t0 = time.perf_counter()
        split = self.calibrator.split(inputs, self.refine_cfg)
        fit = None if split is None else split[0]
        if self.meta.iterations == 0:
            # Warming up on the fit anchors only keeps the held-back ones out of the initialisation too.
            meta_stats = self.meta.train(self.meta_learner, self.model_cfg, self.meta.cfg.warmup_iterations,
                                         [fit] if fit else list(self.meta.pool))
        else:
            meta_stats = self.learn()
        self.meta.owe()
        t_meta = time.perf_counter()
        calibration = {} if split is None else self.calibrator.run(self, *split)
        t_calibrated = time.perf_counter()
        pseudo, adapt_s = self.align_rounds(inputs, self.adapt_cfg.steps)
        self.policy.adapted(anchor_count(inputs.anchors))
        return {"path": AlignmentPath.ADAPTATION, "reason": reason, **meta_stats, "meta_due": self.meta.due,
                **calibration, "pseudo_anchors": pseudo, "meta_s": round(t_meta - t0, 3), "adapt_s": round(adapt_s, 3),
                "align_s": round(time.perf_counter() - t_calibrated - adapt_s, 3)}

    def align_rounds(self, inputs: SnapshotInputs, steps: int | None, warm_first: bool = False) -> tuple[int, float]:
        """Align everything afresh: embed every network from its known anchors and solve each pair's plan; then,
        for each of ``refine.pseudo_anchor_rounds``, add the plans' confident pairs as pseudo-anchors
        (:mod:`aligner.matching.pseudo_anchors`) and do it again. Each round first fast-adapts the
        initialisation to its anchors with ``steps`` steps; ``None`` keeps the current weights. ``warm_first``
        starts the first round's plan from the last one too (later rounds always do). Returns the
        pseudo-anchors of the last round and the seconds spent adapting.

        Pseudo-anchors stay seeds until the next adaptation derives them afresh (counted apart in
        ``NetworkState.pseudo_seeds``), and are never scored, meta-learned from or counted as anchors by the
        schedule."""
        pseudo, adapt_s = 0, 0.0
        real_seeds: dict[str, int] = {}
        if steps is None:
            fast = self.adapted_weights()
        for round_ in range(1 + self.refine_cfg.pseudo_anchor_rounds):
            if round_:
                expanded = self.alignments.with_pseudo_anchors(inputs)
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
                real_seeds = {net: len(self.networks[net].entities) for net in inputs.graphs}
            return_free_heap()  # what training freed goes back before the plans' dense buffers are allocated
            # A later round solves on the same graphs with sharper weights or seeds: from the plan just solved,
            # ``refine.warm_rounds`` rounds land where ``refine.rounds`` from nothing would.
            self.alignments.match_afresh(list(inputs.anchors), warm=bool(round_) or warm_first)
        for net, g in inputs.graphs.items():
            state = self.networks[net]
            state.pseudo_seeds = len(state.entities) - real_seeds.get(net, 0)
            state.aligned_edges = edge_keys(g.edge_index)
        return pseudo, adapt_s

    def freeze(self) -> None:
        """Keep the current adapted weights for good: every later snapshot is embedded and matched in full with
        them, and nothing learns any more (the *frozen* baseline of the stream benchmark)."""
        assert self.fast is not None, "nothing to freeze before the first adaptation"
        with torch.no_grad():
            for name, p in self.meta_learner.model.named_parameters():
                p.copy_(self.fast[name])
        self.meta.cfg = dataclasses.replace(self.meta.cfg, iterations_per_snapshot=0)
        self.policy.cfg = dataclasses.replace(self.adapt_cfg, steps=0, incremental=False)

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
            return self.meta_learner.clone(second_order=False)
        return self.meta_learner.adapted(task, steps)

    def infer(self, fast: FastWeights, inputs: SnapshotInputs) -> dict[str, torch.Tensor]:
        """Embed every network with the known anchors as seeds (their pools, :meth:`SnapshotInputs.seed_pools`);
        advance the temporal state."""
        entities = anchor_entities(inputs.snapshot, inputs.seed_pools())
        out = {}
        m = self.model_cfg
        with torch.no_grad():
            for net, g in inputs.graphs.items():
                seeds = entities.get(net, [])
                sketch = position_sketch(g, seeds, m.position_dim, m.rwr_restart, m.rwr_steps,
                                         cache=inputs.node_ppr(net, m.rwr_restart, m.rwr_steps))
                pos = position_features(sketch, g)
                z, h = fast(g.attrs, pos, g.edge_index, g.edge_weight, inputs.hidden[net])
                self.networks[net] = NetworkState.encoded(inputs.snapshot.networks[net].node_ids, g, seeds, sketch,
                                                          pos, z.detach(), inputs.hidden[net], h.detach())
                out[net] = z.detach()
        return out

    def _score_new_anchors(self, anchors: dict[tuple[str, str], np.ndarray]) -> int:
        """Test-then-train: rank each newly revealed anchor's partner under the alignments published so far."""
        scored = 0
        for (a, b), rows in anchors.items():
            fresh = [(i, j) for i, j in rows.tolist() if (a, b, i, j) not in self.known_anchors]
            self.known_anchors.update((a, b, i, j) for i, j in fresh)
            found = self.alignments.anchor_ranks((a, b), fresh)
            for r in found:
                self.monitor.learn_one(int(r), pair=f"{a}|{b}")  # anchors are keyed with a < b
            scored += len(found)
        return scored

    def _ensure_learner(self, graphs: dict[str, GraphTensors]) -> None:
        if self.learner is not None:
            return
        attr_dim = max((g.attrs.shape[1] for g in graphs.values() if g.attrs is not None), default=0)
        self.learner = build_learner(self.model_cfg, self.meta.cfg, attr_dim, self.seed)

    def model_version(self) -> str | None:
        """A short content id of the model (:func:`aligner.model.meta.weights_version`): it changes with adaptation
        and meta-updates, not with incremental steps. ``None`` before the first snapshot."""
        return None if self.learner is None else weights_version(self.learner, self.fast or {})

    def state_bytes(self) -> bytes:
        """Everything needed to continue exactly where this aligner is (:mod:`aligner.engine.aligner_state`)."""
        return aligner_state_bytes(self)

    def load_state_bytes(self, data: bytes) -> None:
        """Restore :meth:`state_bytes`; anything but this plain-data format raises
        :class:`aligner.engine.state_codec.StateFormatError` and loads nothing."""
        load_aligner_state(self, data)
