"""What the aligner learns from: one snapshot's tensors, temporal state and anchors (:class:`SnapshotInputs`,
kept in the meta-learning task pool), and a task drawn from it, its anchors split into seeds and support/query
labels (:class:`AlignmentTask`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from aligner.config import ModelConfig
from aligner.model.encoder import anchor_loss
from aligner.model.features import GraphTensors, NodePPR, anchor_entities, rwr_positions
from aligner.model.meta import FastWeights
from snapshots.snapshot import Snapshot
from snapshots.snapshot_codec import snapshot_from_bytes, snapshot_to_bytes

LOSS_CELLS = 16_000_000  # labels x nodes one loss evaluation scores (see AlignmentTask)


@dataclass
class SnapshotInputs:
    """What tasks need from one snapshot: tensors, the temporal state before it, and its anchors."""

    snapshot: Snapshot
    graphs: dict[str, GraphTensors]
    hidden: dict[str, torch.Tensor | None]
    anchors: dict[tuple[str, str], np.ndarray]
    encoded: bytes | None = None  # the snapshot in the store's encoding, once the state has been saved
    ppr: dict[str, NodePPR | None] = field(default_factory=dict)  # per network, computed on first use

    def to_state(self) -> tuple[bytes, dict[str, torch.Tensor | None]]:
        """This entry as stored: the snapshot in the store's compact encoding (encoded once: entries never change,
        and the aligner's state is saved after every alignment) and the temporal state it was seen with."""
        if self.encoded is None:
            self.encoded = snapshot_to_bytes(self.snapshot)
        return self.encoded, self.hidden

    @classmethod
    def from_state(cls, state: tuple[bytes, dict[str, torch.Tensor | None]],
                   anchors: Callable[[Snapshot], dict[tuple[str, str], np.ndarray]]) -> "SnapshotInputs":
        """Inverse of :meth:`to_state`; ``anchors`` gives a snapshot's aligned anchors."""
        snapshot, hidden = snapshot_from_bytes(state[0]), state[1]
        graphs = {n: GraphTensors.from_snapshot(snapshot.networks[n]) for n in hidden}
        return cls(snapshot, graphs, hidden, anchors(snapshot))

    def seed_pools(self) -> dict[tuple[str, str], np.ndarray]:
        """Per pair, the anchors that seed anchor-relative positions (the coordinates inference uses, and what
        tasks draw their seeds from): all of them while each network's seeds x nodes fits in the PPR cache
        (``NodePPR.MAX_CELLS``); past it, the pair's share of that budget (:meth:`seed_pool_index`). A sketch costs
        nodes x seeds random-walk work; with seeds capped by nodes, a large pair's sketches cost what the budget
        allows, not nodes x anchors (and the seeds' PPR fits in :class:`NodePPR`, computed once per snapshot)."""
        return {pair: self.anchors[pair][index] for pair, index in self.seed_pool_index().items()}

    def seed_pool_index(self) -> dict[tuple[str, str], np.ndarray]:
        """The rows of each pair's anchors in its seed pool, ascending: past the budget, the anchors with the
        smallest hash of their node pair (a choice that stays as anchors arrive)."""
        pairs_of: dict[str, int] = {}
        for pair in self.anchors:
            for net in pair:
                pairs_of[net] = pairs_of.get(net, 0) + 1
        index = {}
        for pair, rows in self.anchors.items():
            capacity = min(NodePPR.MAX_CELLS // max(self.graphs[net].num_nodes * pairs_of[net], 1) for net in pair)
            every = np.arange(len(rows))
            index[pair] = every if len(rows) <= capacity else np.sort(np.argsort(_pair_hash(rows), kind="stable")[:capacity])
        return index

    def node_ppr(self, net: str, restart: float, steps: int) -> NodePPR | None:
        """Personalised PageRank of every node of ``net`` in a seed pool (:meth:`seed_pools`), shared by every
        task drawn from this snapshot (``None`` where it would not fit in memory: sketches then walk on their
        own). Inputs derived from these (other anchors, same graphs) share the cache: a node's vector, once
        walked, is copied into the next one that needs it."""
        nodes = {i for pair, rows in self.seed_pools().items() for col, name in enumerate(pair) if name == net
                 for i in rows[:, col].tolist()}
        current, g = self.ppr.get(net), self.graphs[net]
        if current is not None and current.has(nodes, restart, steps):
            return current
        if not NodePPR.fits(g, len(nodes)):
            return None
        self.ppr[net] = NodePPR(g, nodes, restart, steps, reuse=current)
        return self.ppr[net]


def _pair_hash(rows: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random number per ``(i, j)`` row (multiplicative hashing)."""
    mixed = rows[:, 0].astype(np.uint64) * np.uint64(0x9E3779B1) + rows[:, 1].astype(np.uint64) * np.uint64(0x85EBCA77)
    return (mixed ^ (mixed >> np.uint64(15))) & np.uint64(0xFFFFFFFF)


class AlignmentTask:
    """One snapshot with its anchors split into seeds and support/query labels (or all labels, for adaptation)."""

    def __init__(self, inputs: SnapshotInputs, seeds: dict, labels: dict, model_cfg: ModelConfig, query_fraction: float,
                 rng: np.random.Generator):
        self.inputs = inputs
        self.temperature = model_cfg.temperature
        entities = anchor_entities(inputs.snapshot, seeds)
        self.positions = {
            net: rwr_positions(g, entities.get(net, []), model_cfg.position_dim, model_cfg.rwr_restart,
                               model_cfg.rwr_steps, cache=inputs.node_ppr(net, model_cfg.rwr_restart, model_cfg.rwr_steps))
            for net, g in inputs.graphs.items()
        }
        self.labels: dict[str, dict[tuple[str, str], torch.Tensor]] = {"all": {}, "support": {}, "query": {}}
        for pair, rows in labels.items():
            rows = torch.from_numpy(rows)
            perm = torch.from_numpy(rng.permutation(len(rows)))
            # The loss ranks each label against every node of the other network: past LOSS_CELLS, a random
            # share of the labels (another one each task) keeps a step's cost linear in the nodes.
            budget = max(1, LOSS_CELLS // max(inputs.graphs[net].num_nodes for net in pair))
            rows, perm = (rows[perm[:budget]], torch.arange(budget)) if len(rows) > budget else (rows, perm)
            n_query = int(round(len(rows) * query_fraction))
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


def draw_task(inputs: SnapshotInputs, seed_fraction: float, model_cfg: ModelConfig, query_fraction: float,
              rng: np.random.Generator) -> AlignmentTask | None:
    """A task from ``inputs``: per pair with at least 3 anchors, ``seed_fraction`` of them (at least one, and
    two left over; at most its seed pool, :meth:`SnapshotInputs.seed_pools`) as seeds, the rest as labels;
    ``None`` when no pair has enough."""
    seeds, labels = {}, {}
    pools = inputs.seed_pool_index()
    for pair, rows in inputs.anchors.items():
        if len(rows) < 3:
            continue
        perm = rng.permutation(len(rows))
        n_seed = min(len(rows) - 2, max(1, int(round(len(rows) * seed_fraction))))
        if len(pools[pair]) < len(rows):  # seeds from the pool only: pool members first, in random order
            in_pool = np.zeros(len(rows), dtype=bool)
            in_pool[pools[pair]] = True
            perm = np.concatenate([perm[in_pool[perm]], perm[~in_pool[perm]]])
            n_seed = min(n_seed, int(in_pool.sum()))
        seeds[pair] = rows[perm[:n_seed]]
        labels[pair] = rows[perm[n_seed:]]
    if not labels:
        return None
    return AlignmentTask(inputs, seeds, labels, model_cfg, query_fraction, rng)
