"""Node features that make two networks comparable: anchor-relative positions and normalised attributes.

Known anchors give the networks a shared coordinate system. Every anchored *entity* (the accounts that anchors
join, across any number of networks) gets a fixed random direction in ``R^d``, derived from a hash of the entity's
name, so the direction is the same in every network and every snapshot. A random walk with restart spreads
these seed directions over each graph: a node's position is (a Johnson–Lindenstrauss sketch of) its personalised
PageRank proximity to every anchor. The same person ends up at nearby positions in both networks, and the
feature width stays fixed however many anchors arrive.

>>> import numpy as np
>>> entity_directions(["online/17", "online/17"], 4).shape
(2, 4)
>>> bool(np.allclose(*entity_directions(["online/17", "online/17"], 4)))
True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from snapshots.snapshot import NetworkSnapshot, Snapshot, pair_key


@dataclass
class GraphTensors:
    """One network of one snapshot as tensors: symmetric, normalised adjacency for propagation plus raw edges
    (both directions) for the GNN."""

    name: str
    num_nodes: int
    edge_index: torch.Tensor  # (2, 2E) both directions
    edge_weight: torch.Tensor  # (2E,)
    adjacency: torch.Tensor  # sparse COO (n, n), D^-1/2 A D^-1/2
    log_degree: torch.Tensor  # (n, 1)
    alive: torch.Tensor  # (n,) bool
    attrs: torch.Tensor | None  # (n, d) rows L2-normalised, or None

    @classmethod
    def from_snapshot(cls, net: NetworkSnapshot) -> "GraphTensors":
        n = net.num_nodes
        ei = torch.from_numpy(np.ascontiguousarray(net.edge_index, dtype=np.int64))
        # Repeated interactions add weight; log keeps a chatty pair from drowning a node's other ties.
        w = torch.log1p(torch.from_numpy(np.asarray(net.edge_weight, dtype=np.float32)))
        edge_index = torch.cat([ei, ei.flip(0)], dim=1)
        edge_weight = torch.cat([w, w])
        degree = torch.zeros(n).index_add_(0, edge_index[0], edge_weight)
        inv_sqrt = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros(()))
        norm_w = inv_sqrt[edge_index[0]] * edge_weight * inv_sqrt[edge_index[1]]
        adjacency = torch.sparse_coo_tensor(edge_index, norm_w, (n, n), check_invariants=False).coalesce()
        attrs = None
        if net.attrs is not None:
            a = torch.from_numpy(np.asarray(net.attrs, dtype=np.float32))
            attrs = torch.nn.functional.normalize(a, dim=1)
        return cls(
            name=net.name,
            num_nodes=n,
            edge_index=edge_index,
            edge_weight=edge_weight,
            adjacency=adjacency,
            log_degree=torch.log1p(degree).unsqueeze(1),
            alive=torch.from_numpy(np.asarray(net.alive, dtype=bool)),
            attrs=attrs,
        )


def entity_directions(keys: list[str], dim: int) -> np.ndarray:
    """A unit vector per key, the same for the same key on any machine (seeded by a stable hash)."""
    out = np.empty((len(keys), dim), np.float32)
    for i, key in enumerate(keys):
        seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
        v = np.random.default_rng(seed).standard_normal(dim)
        out[i] = v / np.linalg.norm(v)
    return out


def anchor_entities(snapshot: Snapshot, anchors: dict[tuple[str, str], np.ndarray]) -> dict[str, list[tuple[int, str]]]:
    """Group anchored nodes into entities (connected components of the anchor relation, across all networks).

    Returns, per network, ``(node_index, entity_key)`` for every anchored node; the key is the smallest
    ``net/node_id`` member of the entity, so it is stable as long as the entity's members are.
    """
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(x: tuple[str, int]) -> tuple[str, int]:
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for (net_a, net_b), pairs in anchors.items():
        for i, j in pairs.tolist():
            ra, rb = find((net_a, i)), find((net_b, j))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    members: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for node in list(parent):
        members.setdefault(find(node), []).append(node)
    out: dict[str, list[tuple[int, str]]] = {}
    for group in members.values():
        key = min(f"{net}/{snapshot.networks[net].node_ids[i]}" for net, i in group)
        for net, i in group:
            out.setdefault(net, []).append((i, key))
    return out


def rwr_positions(
    graph: GraphTensors, seeds: list[tuple[int, str]], dim: int, restart: float, steps: int
) -> torch.Tensor:
    """Anchor-relative position features ``(n, dim + 2)``: the unit-normalised sketch, its log-norm (how close the
    node is to any anchor at all) and the node's log-degree."""
    signal = torch.zeros(graph.num_nodes, dim)
    if seeds:
        index = torch.tensor([i for i, _ in seeds], dtype=torch.long)
        signal[index] = torch.from_numpy(entity_directions([k for _, k in seeds], dim))
    position = restart * signal
    walk = signal
    for _ in range(steps):
        walk = (1.0 - restart) * torch.sparse.mm(graph.adjacency, walk)
        position = position + restart * walk
    norm = position.norm(dim=1, keepdim=True)
    unit = position / norm.clamp_min(1e-12)
    return torch.cat([unit, torch.log(norm + 1e-6) / 10.0, graph.log_degree], dim=1)


def seed_subset(anchors: dict[tuple[str, str], np.ndarray], keep: dict[tuple[str, str], np.ndarray]) -> dict:
    """``anchors`` restricted to the rows selected by boolean masks in ``keep``."""
    return {pair: pairs[keep[pair]] for pair, pairs in anchors.items()}


def anchors_of(snapshot: Snapshot, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
    """The snapshot's anchors for the aligned pairs, keyed canonically."""
    out = {}
    for a, b in pairs:
        key = pair_key(a, b)
        if key in snapshot.anchors and len(snapshot.anchors[key]):
            out[key] = snapshot.anchors[key]
    return out
