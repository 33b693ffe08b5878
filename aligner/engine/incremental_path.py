"""The incremental path: keep the adapted weights, the anchor coordinates, the temporal state and the transport
context, and redo only what a snapshot's changes can reach.

Per network, nodes whose edges, attributes or anchors changed (and new ones) get their anchor-position sketch
recomputed; nodes within the encoder's receptive field of them (``2 (cheb_k - 1)`` hops: the recurrent cell
convolves its reset-gated state) are re-encoded on the subgraph that covers it (:func:`reencode`); each pair's
matcher re-ranks only those rows and columns (:mod:`aligner.matching.incremental`). Two heavier branches: new
anchors joining the coordinates (the plan is solved again, warm-started), and a realignment once
``refine.warm_max_change`` of a network's edges changed since everything was last aligned afresh.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from aligner.config import ModelConfig
from aligner.engine.local_encoding import closure, edge_keys, encode_rows
from aligner.engine.network_state import NetworkState, grown, padded
from aligner.engine.tasks import SnapshotInputs
from aligner.matching.incremental import adjacency_csr
from aligner.model.features import GraphTensors, anchor_entities, position_features, position_sketch
from aligner.model.meta import FastWeights
from aligner.update import AlignmentPath

if TYPE_CHECKING:
    from aligner.engine.aligner import Aligner


@dataclasses.dataclass(frozen=True)
class Reencoded:
    """One network after an incremental step: its new state, the nodes whose scores must be recomputed, and
    how far the re-encoded old nodes' embeddings moved (mean cosine distance; ``None``: no old node moved)."""

    state: NetworkState
    dirty: torch.Tensor
    encoded: int
    shift: float | None


def reencode(state: NetworkState, node_ids: tuple[str, ...], g: GraphTensors, touched: torch.Tensor,
             new_seeds: list[tuple[int, str]], fast: FastWeights, m: ModelConfig, tolerance: float) -> Reencoded:
    """Bring one network's state to ``g``: ``touched`` nodes (their edges, attributes or anchors changed) get a
    fresh sketch, ``new_seeds`` join the coordinate system, and everything those reach is re-encoded."""
    n_old = len(state.node_ids)
    touched = torch.unique(torch.cat([touched, torch.arange(n_old, g.num_nodes)]))
    changed = touched
    entities = state.entities
    sketch = grown(state.sketch, g.num_nodes)
    # The sketch is a sum over entities, so a new anchor's term is added for every node it reaches; the others'
    # terms stay as of the last adaptation.
    if new_seeds:
        added = position_sketch(g, new_seeds, m.position_dim, m.rwr_restart, m.rwr_steps)
        sketch += added
        entities = entities + new_seeds
        changed = torch.unique(torch.cat([changed, (added != 0).any(1).nonzero().flatten()]))
    if len(touched):
        sketch[touched] = position_sketch(g, entities, m.position_dim, m.rwr_restart, m.rwr_steps, rows=touched)
    pos = position_features(sketch, g)
    hops = 2 * (m.cheb_k - 1)
    adjacency = adjacency_csr(g.edge_index, g.num_nodes)
    reach = closure(adjacency, changed, hops)
    hidden = padded(state.hidden_in, g.num_nodes)
    z = grown(state.embeddings, g.num_nodes)
    with torch.no_grad():
        z_reach = encode_rows(fast, g, pos, hidden, reach, adjacency, hops)
    old = reach[reach < n_old]
    shift = float((1.0 - (z_reach[: len(old)] * z[old]).sum(1)).mean()) if len(old) else None
    encoded = int(len(reach))
    if tolerance > 0 and len(old):
        # A node the change reached only through message passing, whose embedding moved by less than the
        # tolerance, keeps its stored embedding and its ranking: every score it takes part in is a cosine of
        # unit vectors, so it is off by at most the tolerance. In a small world a 2-hop closure is most of the
        # graph, but few of its nodes really move.
        shifted = (z_reach[: len(old)] - z[old]).norm(dim=1) > tolerance
        keep = torch.cat([shifted, torch.ones(len(reach) - len(old), dtype=torch.bool)])
        keep |= torch.isin(reach, changed)
        reach, z_reach = reach[keep], z_reach[keep]
    z[reach] = z_reach
    new_state = NetworkState.encoded(node_ids, g, entities, sketch, pos, z, hidden, state.hidden, adjacency,
                                     state.pseudo_seeds, state.aligned_edges)
    return Reencoded(new_state, reach, encoded, shift)


def joining_anchors(aligner: "Aligner", inputs: SnapshotInputs) -> dict[str, list[tuple[int, str]]]:
    """Per network, the anchors that join the coordinate system on this step (none until there are enough).

    New anchors join together, once they add ``adapt.anchor_refresh`` of the known ones: each one moves every
    position it reaches and so costs a re-encoding and a re-solve of the plan, which a stream revealing an
    anchor every few hundred events cannot pay each time. Until then they are scored prequentially and wait; a
    network's anchors join all at once, so coordinates stay shared. A seed is a node under an entity key: an
    anchor that confirms a pseudo-anchor (same nodes, same key) changes nothing, one that contradicts it seeds
    its other node under the same key."""
    entities_now = anchor_entities(inputs.snapshot, inputs.seed_pools())
    known = {net: set(aligner.networks[net].entities) for net in inputs.graphs}
    waiting = {net: [seed for seed in entities_now.get(net, []) if seed not in known[net]] for net in inputs.graphs}
    # Counted without pseudo-anchors: new anchors join as often as they would without them, and each join
    # re-solves the plan, which is what keeps a growing network's new nodes well matched.
    known_count = sum(len(aligner.networks[net].entities) - aligner.networks[net].pseudo_seeds
                      for net in inputs.graphs)
    joining = sum(map(len, waiting.values()))
    return waiting if joining and joining >= aligner.adapt_cfg.anchor_refresh * known_count else {}


def incremental_step(aligner: "Aligner", inputs: SnapshotInputs, defer: bool = False) -> dict:
    """Re-encode and re-rank only what the snapshot's changes can reach (see the module docstring). With
    ``defer``, anchors due to join and a realignment due are noted in the aligner's policy instead."""
    t0 = time.perf_counter()
    fast = aligner.adapted_weights()
    waiting = joining_anchors(aligner, inputs)
    changed_share = edges_changed_since_alignment(aligner.networks, inputs.graphs)
    if changed_share >= aligner.refine_cfg.warm_max_change:
        if not defer:
            return realignment(aligner, inputs, t0)
        aligner.policy.defer(AlignmentPath.INCREMENTAL, f"realignment: {changed_share:.1%} of the edges changed")
        waiting = {}
    elif waiting and defer:
        aligner.policy.defer(AlignmentPath.INCREMENTAL, f"{sum(map(len, waiting.values()))} anchors join")
        waiting = {}
    dirty: dict[str, torch.Tensor] = {}  # per network: the nodes whose scores must be recomputed
    encoded: dict[str, int] = {}
    shifts = []
    for net, g in inputs.graphs.items():
        touched = torch.from_numpy(np.asarray(inputs.snapshot.networks[net].changed, dtype=np.int64))
        step = reencode(aligner.networks[net], inputs.snapshot.networks[net].node_ids, g, touched,
                        waiting.get(net, []), fast, aligner.model_cfg, aligner.adapt_cfg.embedding_tolerance)
        aligner.networks[net] = step.state
        dirty[net], encoded[net] = step.dirty, step.encoded
        if step.shift is not None:
            shifts.append(step.shift)
    t_encode = time.perf_counter()
    if shifts:
        aligner.monitor.learn_shift(float(np.mean(shifts)))
    moved = {net for net, seeds in waiting.items() if seeds}  # networks whose coordinate system gained anchors
    rows: dict[str, str | dict] = {}
    alignments, networks = aligner.alignments, aligner.networks
    for (a, b), matcher in list(alignments.matchers.items()):
        if a in moved or b in moved:
            # New anchors shift every position they reach: the transport context of the last plan no longer
            # fits, so the plan is solved again under the same weights (no training), from the last plan: the
            # graph is still mostly the one everything was aligned on (else this is a realignment).
            warm = alignments.warm_start((a, b))
            alignments.matchers[(a, b)] = alignments.full_match(a, b, warm)
            rows[f"{a}:{b}"] = "plan warm-started: new anchors" if warm is not None else "plan solved again: new anchors"
        elif a in dirty and b in dirty:
            rows[f"{a}:{b}"] = matcher.update(networks[a].view(), networks[b].view(), dirty[a], dirty[b])
    aligner.policy.stepped()
    return {"path": AlignmentPath.INCREMENTAL, "reencoded": encoded,
            "reranked": {n: int(len(d)) for n, d in dirty.items()}, "rescored": rows, "encode_s": round(t_encode - t0, 3), "align_s": round(time.perf_counter() - t_encode, 3)}


def realignment(aligner: "Aligner", inputs: SnapshotInputs, t0: float) -> dict:
    """The incremental path's answer to a graph that changed too much since everything was last aligned afresh
    (``refine.warm_max_change`` of a network's edges): align everything afresh under the current weights (no
    training), anchors waiting to join included and pseudo-anchors derived again from the new plan. Positions
    refreshed only where edges changed drift from exact ones as the walks elsewhere change, and the last
    adaptation's pseudo-anchors were chosen on the graph as it was then (docs/benchmarks.md has what leaving
    either in place cost on douban's stream)."""
    pseudo, _ = aligner.align_rounds(inputs, None, warm_first=aligner.refine_cfg.warm_realignment)
    aligner.policy.stepped()
    sizes = {net: g.num_nodes for net, g in inputs.graphs.items()}
    return {"path": AlignmentPath.INCREMENTAL, "reencoded": sizes, "reranked": sizes, "pseudo_anchors": pseudo,
            "rescored": {f"{a}:{b}": "aligned afresh: edges changed" for a, b in aligner.alignments.matchers},
            "encode_s": 0.0, "align_s": round(time.perf_counter() - t0, 3)}


def edges_changed_since_alignment(networks: dict[str, NetworkState], graphs: dict[str, GraphTensors]) -> float:
    """The largest share of a network's edges added or removed since everything was last aligned afresh.

    Edges, not touched nodes: positions are walks and the plan's structure term sees the 0/1 adjacency, and in
    a mature network a second of messages touches a tenth of the nodes while changing under 1% of the edges
    (collegemsg)."""
    share = 0.0
    for net, g in graphs.items():
        state = networks.get(net)
        now, before = edge_keys(g.edge_index), None if state is None else state.aligned_edges
        changed = len(now) if before is None else len(np.setxor1d(now, before, assume_unique=True))
        share = max(share, changed / max(len(now), 1))
    return share
