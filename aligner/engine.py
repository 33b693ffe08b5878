"""The aligner: for each new snapshot, keep meta-learning the initialisation, fast-adapt it, and re-align.

Per snapshot (``Aligner.on_snapshot``):

1. turn every aligned network into tensors and grow the per-node temporal state to the registry's size;
2. **meta-update** the initialisation on tasks drawn from the last few snapshots (a long warm-up on the first);
   a task splits the known anchors into *seeds* (they define anchor-relative positions) and *labels* (support
   and query pairs the encoder must rank first), so the encoder learns to align nodes that are not seeds;
3. **fast-adapt** a clone of the initialisation with a few steps on the current snapshot;
4. embed every network with the adapted encoder, all known anchors as seeds, and rank candidates: top-k per
   alive node, both directions of every aligned pair.

The result is an :class:`AlignmentUpdate`; publishing it is someone else's job.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from aligner.config import AdaptConfig, MetaConfig, ModelConfig, RefineConfig
from aligner.features import GraphTensors, anchor_entities, anchors_of, rwr_positions
from aligner.matching import CosineScorer, PlanScorer, ranking_metrics, top_k
from aligner.refine import refine
from aligner.update import AlignmentUpdate, PairTopK
from aligner.meta import FastWeights, MetaLearner
from aligner.model import AlignmentEncoder, anchor_loss
from snapshots.snapshot import Snapshot, pair_key

log = logging.getLogger(__name__)


@dataclass
class SnapshotInputs:
    """What tasks need from one snapshot: tensors, the temporal state before it, and its anchors."""

    snapshot: Snapshot
    graphs: dict[str, GraphTensors]
    hidden: dict[str, torch.Tensor | None]
    anchors: dict[tuple[str, str], np.ndarray]


class AlignmentTask:
    """One snapshot with its anchors split into seeds and support/query labels (or all labels, for adaptation)."""

    def __init__(self, inputs: SnapshotInputs, seeds: dict, labels: dict, model_cfg: ModelConfig, query_fraction: float,
                 rng: np.random.Generator):
        self.inputs = inputs
        self.temperature = model_cfg.temperature
        entities = anchor_entities(inputs.snapshot, seeds)
        self.positions = {
            net: rwr_positions(g, entities.get(net, []), model_cfg.position_dim, model_cfg.rwr_restart,
                               model_cfg.rwr_steps)
            for net, g in inputs.graphs.items()
        }
        self.labels: dict[str, dict[tuple[str, str], torch.Tensor]] = {"all": {}, "support": {}, "query": {}}
        for pair, rows in labels.items():
            rows = torch.from_numpy(rows)
            n_query = int(round(len(rows) * query_fraction))
            perm = torch.from_numpy(rng.permutation(len(rows)))
            self.labels["all"][pair] = rows
            self.labels["query"][pair] = rows[perm[:n_query]]
            self.labels["support"][pair] = rows[perm[n_query:]]

    def embed(self, encoder) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for net, g in self.inputs.graphs.items():
            out[net] = encoder(g.attrs, self.positions[net], g.edge_index, g.edge_weight, self.inputs.hidden[net])
        return out

    def loss(self, fast: FastWeights, split: str) -> torch.Tensor:
        emb = self.embed(fast)
        graphs = self.inputs.graphs
        total = torch.zeros(())
        for (a, b), rows in self.labels[split].items():
            if len(rows):
                total = total + anchor_loss(emb[a][0], emb[b][0], rows, graphs[a].alive, graphs[b].alive,
                                            self.temperature)
        return total


class Aligner:
    """Stateful per-snapshot aligner (see the module docstring). ``pairs`` is ``"auto"`` (every pair of networks
    that has anchors) or ``"a:b,c:d"``."""

    def __init__(self, model: ModelConfig, meta: MetaConfig, adapt: AdaptConfig, pairs: str = "auto",
                 top_k: int = 10, seed: int = 0, refine: RefineConfig | None = None):
        self.model_cfg, self.meta_cfg, self.adapt_cfg = model, meta, adapt
        self.refine_cfg = refine or RefineConfig()
        self.pairs_spec = pairs
        self.k = top_k
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.learner: MetaLearner | None = None
        self.hidden: dict[str, torch.Tensor] = {}
        self.embeddings: dict[str, torch.Tensor] = {}
        self.node_ids: dict[str, tuple[str, ...]] = {}
        self.alive: dict[str, torch.Tensor] = {}
        self.edges: dict[str, torch.Tensor] = {}  # (2, 2E) of the latest snapshot, for structure-aware scoring
        # Evidence that needs no training (unit anchor-position sketch, normalised attributes): it anchors the
        # scores when the encoder is still young, and explanations quote it.
        self.positions: dict[str, torch.Tensor] = {}
        self.attrs: dict[str, torch.Tensor | None] = {}
        self.pool: deque[SnapshotInputs] = deque(maxlen=max(1, meta.task_pool))
        self.snapshots_seen = 0
        self.meta_iterations = 0

    # -- the per-snapshot pipeline -------------------------------------------------------------------------
    def aligned_pairs(self, snapshot: Snapshot) -> list[tuple[str, str]]:
        if self.pairs_spec == "auto":
            return sorted(p for p, rows in snapshot.anchors.items() if len(rows))
        out = []
        for item in self.pairs_spec.split(","):
            a, _, b = item.strip().partition(":")
            if not a or not b or a == b:
                raise ValueError(f"pairs: expected 'net_a:net_b[,net_c:net_d]', got {item!r}")
            out.append(pair_key(a, b))
        return [p for p in out if p[0] in snapshot.networks and p[1] in snapshot.networks]

    def on_snapshot(self, snapshot: Snapshot) -> AlignmentUpdate | None:
        started = time.perf_counter()
        pairs = self.aligned_pairs(snapshot)
        anchors = anchors_of(snapshot, pairs)
        if not anchors:
            log.info("snapshot %d: no anchors between aligned networks yet, nothing to align", snapshot.id)
            return None
        nets = sorted({n for p in anchors for n in p})
        graphs = {n: GraphTensors.from_snapshot(snapshot.networks[n]) for n in nets}
        self._ensure_learner(graphs)
        inputs = SnapshotInputs(snapshot, graphs, {n: self._hidden_for(n, graphs[n].num_nodes) for n in nets}, anchors)
        self.pool.append(inputs)

        iterations = self.meta_cfg.warmup_iterations if self.meta_iterations == 0 else self.meta_cfg.iterations_per_snapshot
        meta_stats = self.meta_train(iterations)
        t_meta = time.perf_counter()

        fast = self.adapt(inputs, self.adapt_cfg.steps)
        t_adapt = time.perf_counter()

        embeddings = self.infer(fast, inputs)
        update = self.rank(snapshot, embeddings, list(anchors))
        self.snapshots_seen += 1
        update.stats = {
            **meta_stats,
            "meta_iterations": iterations,
            "meta_s": round(t_meta - started, 3),
            "adapt_s": round(t_adapt - t_meta, 3),
            "align_s": round(time.perf_counter() - t_adapt, 3),
            "anchors": int(sum(len(r) for r in anchors.values())),
        }
        return update

    def meta_train(self, iterations: int) -> dict[str, float]:
        stats: dict[str, float] = {}
        for _ in range(iterations):
            tasks = [self._task(self.pool[self._pick_pool_index()], query_fraction=0.5)
                     for _ in range(self.meta_cfg.tasks_per_iteration)]
            tasks = [t for t in tasks if t is not None]
            if not tasks:
                break
            stats = self.learner.meta_update(tasks, self.meta_cfg.inner_steps)
            self.meta_iterations += 1
        return stats

    def adapt(self, inputs: SnapshotInputs, steps: int) -> FastWeights:
        task = self._task(inputs, query_fraction=0.0)
        if task is None or steps == 0:
            return self.learner.clone(second_order=False)
        return self.learner.adapted(task, steps)

    def infer(self, fast: FastWeights, inputs: SnapshotInputs) -> dict[str, torch.Tensor]:
        """Embed every network with all known anchors as seeds; advance the temporal state."""
        entities = anchor_entities(inputs.snapshot, inputs.anchors)
        out = {}
        with torch.no_grad():
            for net, g in inputs.graphs.items():
                pos = rwr_positions(g, entities.get(net, []), self.model_cfg.position_dim, self.model_cfg.rwr_restart,
                                    self.model_cfg.rwr_steps)
                z, h = fast(g.attrs, pos, g.edge_index, g.edge_weight, inputs.hidden[net])
                self.positions[net] = pos[:, :-2].contiguous()
                self.attrs[net] = g.attrs
                self.hidden[net] = h.detach()
                out[net] = z.detach()
                self.node_ids[net] = inputs.snapshot.networks[net].node_ids
                self.alive[net] = g.alive
                self.edges[net] = g.edge_index
        self.embeddings.update(out)
        return out

    def rank(self, snapshot: Snapshot, embeddings: dict[str, torch.Tensor], pairs: list[tuple[str, str]]) -> AlignmentUpdate:
        results = []
        for a, b in pairs:
            scorers = self.scorers(a, b)
            for src, dst in ((a, b), (b, a)):
                rows = self.alive[src].nonzero().flatten()
                idx, val = top_k(scorers[(src, dst)], self.alive[dst], self.k, rows)
                results.append(PairTopK(src, dst, rows.numpy(), idx.numpy(), val.numpy()))
        node_ids = {n: snapshot.networks[n].node_ids for n in {n for p in pairs for n in p}}
        return AlignmentUpdate(snapshot.id, snapshot.end_time, node_ids, results)

    def scorers(self, a: str, b: str) -> dict[tuple[str, str], object]:
        """How candidates are scored for both directions of a pair: the structure-consistent transport plan
        (:mod:`aligner.refine`) when it fits in ``refine.max_cells``, else embedding cosine."""
        z_a, z_b = self.embeddings[a], self.embeddings[b]
        cfg = self.refine_cfg
        if not cfg.enabled or z_a.shape[0] * z_b.shape[0] > cfg.max_cells:
            return {(a, b): CosineScorer(z_a, z_b), (b, a): CosineScorer(z_b, z_a)}
        with torch.no_grad():
            log_plan = refine(self.similarity(a, b), self._adjacency(a), self._adjacency(b), cfg.tau, cfg.beta, cfg.rounds,
                              cfg.sinkhorn_iters, self.alive[a], self.alive[b], cfg.marginal_weight)
        return {(a, b): PlanScorer(log_plan), (b, a): PlanScorer(log_plan, transpose=True)}

    def similarity(self, a: str, b: str) -> torch.Tensor:
        """Dense prior similarity: embedding cosine plus ``refine.feature_weight`` x (position cosine + attribute
        cosine, when both networks have attributes)."""
        sim = self.embeddings[a] @ self.embeddings[b].T
        w = self.refine_cfg.feature_weight
        if w and a in self.positions and b in self.positions:
            sim = sim + w * (self.positions[a] @ self.positions[b].T)
            xa, xb = self.attrs.get(a), self.attrs.get(b)
            if xa is not None and xb is not None:
                width = min(xa.shape[1], xb.shape[1])
                sim = sim + w * (xa[:, :width] @ xb[:, :width].T)
        return sim

    def _adjacency(self, net: str) -> torch.Tensor:
        n = self.embeddings[net].shape[0]
        edges = self.edges[net]
        return torch.sparse_coo_tensor(edges, torch.ones(edges.shape[1]), (n, n), check_invariants=False).coalesce()

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
        return MetaLearner(encoder, self.meta_cfg.algorithm, self.meta_cfg.inner_lr, self.meta_cfg.meta_lr,
                           self.meta_cfg.reptile_step)

    def _hidden_for(self, net: str, n: int) -> torch.Tensor | None:
        h = self.hidden.get(net)
        if h is None:
            return None
        if h.shape[0] < n:  # new nodes since the last snapshot start from a blank history
            h = torch.cat([h, torch.zeros(n - h.shape[0], h.shape[1])])
        return h

    def _pick_pool_index(self) -> int:
        # Half the tasks come from the newest snapshot, the rest from the recent past, so the initialisation
        # tracks the present without forgetting what recent snapshots taught it.
        if len(self.pool) == 1 or self.rng.random() < 0.5:
            return len(self.pool) - 1
        return int(self.rng.integers(0, len(self.pool) - 1))

    def _task(self, inputs: SnapshotInputs, query_fraction: float) -> AlignmentTask | None:
        seeds, labels = {}, {}
        for pair, rows in inputs.anchors.items():
            if len(rows) < 3:
                continue
            perm = self.rng.permutation(len(rows))
            n_seed = min(len(rows) - 2, max(1, int(round(len(rows) * self.meta_cfg.seed_fraction))))
            seeds[pair] = rows[perm[:n_seed]]
            labels[pair] = rows[perm[n_seed:]]
        if not labels:
            return None
        return AlignmentTask(inputs, seeds, labels, self.model_cfg, query_fraction, self.rng)

    def evaluate(self, net: str, to: str, id_pairs: list[tuple[str, str]]) -> dict:
        """Ranking metrics of the latest embeddings on true pairs given as external ids; pairs whose nodes this
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
    def state_bytes(self) -> bytes:
        """Everything needed to continue exactly where this aligner is (not the task pool, which refills)."""
        buf = io.BytesIO()
        torch.save({
            "learner": None if self.learner is None else self.learner.state_dict(),
            "optimizer": None if self.learner is None else self.learner.optimizer.state_dict(),
            "attr_dim": None if self.learner is None else self.learner.model.attr_dim,
            "model_cfg": dataclasses.asdict(self.model_cfg),
            "algorithm": self.meta_cfg.algorithm,
            "hidden": self.hidden,
            "embeddings": self.embeddings,
            "node_ids": self.node_ids,
            "alive": self.alive,
            "edges": self.edges,
            "positions": self.positions,
            "attrs": self.attrs,
            "rng": self.rng.bit_generator.state,
            "snapshots_seen": self.snapshots_seen,
            "meta_iterations": self.meta_iterations,
        }, buf)
        return buf.getvalue()

    def load_state_bytes(self, data: bytes) -> None:
        state = torch.load(io.BytesIO(data), weights_only=False)
        # The checkpoint's architecture wins over the current configuration: weights only fit the shapes they had.
        self.model_cfg = ModelConfig(**state["model_cfg"])
        self.meta_cfg = dataclasses.replace(self.meta_cfg, algorithm=state["algorithm"])
        if state["learner"] is not None:
            self.learner = self._new_learner(state["attr_dim"])
            self.learner.load_state_dict(state["learner"])
            self.learner.optimizer.load_state_dict(state["optimizer"])
        self.hidden = state["hidden"]
        self.embeddings = state["embeddings"]
        self.node_ids = state["node_ids"]
        self.alive = state["alive"]
        self.edges = state["edges"]
        self.positions = state["positions"]
        self.attrs = state["attrs"]
        self.rng.bit_generator.state = state["rng"]
        self.snapshots_seen = state["snapshots_seen"]
        self.meta_iterations = state["meta_iterations"]
