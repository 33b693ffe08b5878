"""Node features that make two networks comparable: anchor-relative positions and normalised attributes.

Known anchors give the networks a shared coordinate system. A node's position is its (log-scaled) personalised
PageRank proximity to every anchored *entity* (the accounts that anchors join, across any number of networks),
so the same person ends up at nearby positions in both networks. To keep the feature width fixed however many
anchors arrive, the proximity profile is projected (Johnson–Lindenstrauss) onto fixed random directions, one
per entity, derived from a hash of the entity's name: the same in every network and every snapshot.

>>> import numpy as np
>>> entity_directions(["online/17", "online/17"], 4).shape
(2, 4)
>>> bool(np.allclose(*entity_directions(["online/17", "online/17"], 4)))
True
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from snapshots.snapshot import NetworkSnapshot, Snapshot, pair_key


@dataclass
class GraphTensors:
    """One network of one snapshot as tensors: the random-walk operator for positions plus raw edges (both
    directions) for the GNN."""

    name: str
    num_nodes: int
    edge_index: torch.Tensor  # (2, 2E) both directions
    edge_weight: torch.Tensor  # (2E,)
    walk: sp.csr_matrix  # (n, n) A D^-1: one step of a random walk on column vectors (scipy: its sparse x dense
    # product is ~20x faster than torch's COO one on CPU)
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
        # Column j of A D^-1 spreads node j's mass over its neighbours in proportion to edge weight.
        inv_degree = torch.where(degree > 0, 1.0 / degree.clamp_min(1e-12), torch.zeros(()))
        walk_w = edge_weight * inv_degree[edge_index[0]]
        src, dst = edge_index.numpy()  # column j (source) spreads its mass over rows (its neighbours)
        walk = sp.csr_matrix((walk_w.numpy(), (dst, src)), shape=(n, n))  # row = destination of the step
        attrs = None
        if net.attrs is not None:
            a = torch.from_numpy(np.asarray(net.attrs, dtype=np.float32))
            attrs = torch.nn.functional.normalize(a, dim=1)
        return cls(
            name=net.name,
            num_nodes=n,
            edge_index=edge_index,
            edge_weight=edge_weight,
            walk=walk,
            log_degree=torch.log1p(degree).unsqueeze(1),
            alive=torch.from_numpy(np.asarray(net.alive, dtype=bool)),
            attrs=attrs,
        )


def entity_directions(keys: list[str], dim: int) -> np.ndarray:
    """A unit vector per key, the same for the same key on any machine (seeded by a stable hash)."""
    out = np.empty((len(keys), dim), np.float32)
    for i, key in enumerate(keys):
        out[i] = _direction(key, dim)
    return out


@functools.lru_cache(maxsize=1 << 17)
def _direction(key: str, dim: int) -> np.ndarray:
    # Meta-learning sketches the same anchors' directions thousands of times; drawing one costs ~60 us.
    seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


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
    graph: GraphTensors, seeds: list[tuple[int, str]], dim: int, restart: float, steps: int, chunk: int = 1024,
    cache: "NodePPR | None" = None,
) -> torch.Tensor:
    """Anchor-relative position features ``(n, dim + 2)``: the unit-normalised sketch, its log-norm (how close the
    node is to any anchor at all) and the node's log-degree (see :func:`position_sketch`)."""
    return position_features(position_sketch(graph, seeds, dim, restart, steps, chunk, cache), graph)


def personalized_pagerank(graph: GraphTensors, signal: torch.Tensor, restart: float, steps: int) -> torch.Tensor:
    """``steps`` terms of the personalised PageRank series of each column of ``signal`` (n, c)."""
    ppr = restart * signal
    walk = signal
    for _ in range(steps):
        walk = (1.0 - restart) * torch.from_numpy(graph.walk @ walk.numpy())
        ppr = ppr + restart * walk
    return ppr


class NodePPR:
    """The personalised PageRank vector of each of a set of nodes, computed once and shared by every sketch
    whose seeds are among them.

    A meta-learning task draws a random subset of the anchors as seeds and sketches positions from them; PPR is
    linear in its seed signal, so an entity's vector is the sum of its nodes' vectors, and every task on the
    same snapshot can slice one matrix instead of running the random walk again (on a 10k-node network that
    walk was most of a meta-iteration).

    >>> import numpy as np
    >>> from snapshots.snapshot import NetworkSnapshot
    >>> net = NetworkSnapshot("a", ("x", "y", "z"), np.array([[0, 1], [1, 2]]), np.ones(2, np.float32),
    ...                       np.ones(3, bool))
    >>> g = GraphTensors.from_snapshot(net)
    >>> cache = NodePPR(g, [0, 2], restart=0.15, steps=10)
    >>> for seeds in ([(0, "e/0"), (2, "e/2")], [(0, "e/0"), (2, "e/0")]):  # two entities; one with two members
    ...     print(bool(torch.allclose(position_sketch(g, seeds, 4, 0.15, 10, cache=cache),
    ...                               position_sketch(g, seeds, 4, 0.15, 10), atol=1e-5)))
    True
    True
    """

    MAX_CELLS = 64_000_000  # nodes x n floats kept (256 MB); beyond it sketches walk on their own

    def __init__(self, graph: GraphTensors, nodes, restart: float, steps: int, chunk: int = 1024,
                 reuse: "NodePPR | None" = None):
        """``reuse``: an earlier cache of the same graph, whose nodes' vectors are copied instead of walked again
        (each node's walk is a column of its own, so a copied vector is the one a walk would give)."""
        self.nodes = sorted(set(int(i) for i in nodes))
        self.column = {node: c for c, node in enumerate(self.nodes)}
        self.restart, self.steps = restart, steps
        n = graph.num_nodes
        # Kept log-scaled (what sketches project) and one node per row, so a task's seeds are a row gather.
        self.log_ppr = torch.empty(len(self.nodes), n)
        known: dict[int, int] = {}
        if reuse is not None and (reuse.restart, reuse.steps) == (restart, steps):
            known = reuse.column
            copied = [(c, known[node]) for c, node in enumerate(self.nodes) if node in known]
            if copied:
                rows, old = torch.tensor(copied).T
                self.log_ppr[rows] = reuse.log_ppr[old]
        walked = [(c, node) for c, node in enumerate(self.nodes) if node not in known]
        for start in range(0, len(walked), chunk):
            rows, part = (list(x) for x in zip(*walked[start:start + chunk]))
            signal = torch.zeros(n, len(part))
            signal[torch.tensor(part), torch.arange(len(part))] = 1.0
            self.log_ppr[rows] = torch.log1p(n * personalized_pagerank(graph, signal, restart, steps)).T

    @classmethod
    def fits(cls, graph: GraphTensors, count: int) -> bool:
        return graph.num_nodes * count <= cls.MAX_CELLS

    def covers(self, seeds: list[tuple[int, str]], restart: float, steps: int) -> bool:
        return self.has([node for node, _ in seeds], restart, steps)

    def has(self, nodes, restart: float, steps: int) -> bool:
        """Whether every one of ``nodes`` has its vector here, for this walk."""
        return (restart, steps) == (self.restart, self.steps) and all(node in self.column for node in nodes)


def position_sketch(
    graph: GraphTensors, seeds: list[tuple[int, str]], dim: int, restart: float, steps: int, chunk: int = 1024,
    cache: NodePPR | None = None, rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The raw sketch ``(n, dim)``: the sum over anchored entities of the entity's log-scaled personalised
    PageRank vector times its fixed random direction. A sum, so entities can be added to a sketch later.

    Each entity's PPR vector is computed exactly (or summed from ``cache``'s per-node vectors) and log-scaled
    (proximity spans orders of magnitude; in log space a node's profile of distances to the anchors, not its
    nearest hub, dominates) before it is projected. Entities are processed ``chunk`` at a time, so memory stays
    at ``n x chunk`` whatever the number of anchors.

    With ``rows``, only those rows ``(len(rows), dim)``; when they are fewer than the entities, by walking from
    the rows instead (see :func:`_sketch_rows_by_reversal`):

    >>> import numpy as np
    >>> from snapshots.snapshot import NetworkSnapshot
    >>> net = NetworkSnapshot("a", tuple("uvwxyz"), np.array([[0, 1, 2, 2], [1, 2, 0, 3]]),
    ...                       np.array([1, 3, 1, 2], np.float32), np.ones(6, bool))  # y, z: isolated
    >>> g = GraphTensors.from_snapshot(net)
    >>> seeds = [(0, "e/0"), (3, "e/0"), (1, "e/1"), (2, "e/2"), (4, "e/4")]  # 4 entities, 3 rows
    >>> rows = torch.tensor([1, 4, 5])
    >>> bool(torch.allclose(position_sketch(g, seeds, 8, 0.15, 10, rows=rows),
    ...                     position_sketch(g, seeds, 8, 0.15, 10)[rows], atol=1e-5))
    True
    """
    keys = sorted({k for _, k in seeds})
    column = {k: i for i, k in enumerate(keys)}
    cached = cache if cache is not None and cache.covers(seeds, restart, steps) else None
    if rows is not None:
        if cached is None and len(rows) < len(keys):
            return _sketch_rows_by_reversal(graph, seeds, rows, keys, column, dim, restart, steps, chunk)
        return position_sketch(graph, seeds, dim, restart, steps, chunk, cache)[rows]
    n = graph.num_nodes
    position = torch.zeros(n, dim)
    for start in range(0, len(keys), chunk):
        part = keys[start:start + chunk]
        members = [(node, column[key] - start) for node, key in seeds if 0 <= column[key] - start < len(part)]
        if cached is not None:
            # log1p(n * ppr) of an entity's summed members: a gathered row for the usual one-member entity.
            first = [-1] * len(part)
            extra: dict[int, list[int]] = {}
            for node, c in members:
                if first[c] < 0:
                    first[c] = cached.column[node]
                else:
                    extra.setdefault(c, []).append(cached.column[node])
            logs = cached.log_ppr.index_select(0, torch.tensor(first, dtype=torch.long))
            for c, others in extra.items():
                logs[c] = torch.log1p(torch.expm1(cached.log_ppr[[first[c], *others]]).sum(0))
            position += logs.T @ torch.from_numpy(entity_directions(part, dim))
            continue
        signal = torch.zeros(n, len(part))
        for node, c in members:
            signal[node, c] = 1.0
        ppr = personalized_pagerank(graph, signal, restart, steps)
        position += torch.log1p(n * ppr) @ torch.from_numpy(entity_directions(part, dim))
    return position


def _sketch_rows_by_reversal(graph: GraphTensors, seeds: list[tuple[int, str]], rows: torch.Tensor, keys: list[str],
                             column: dict[str, int], dim: int, restart: float, steps: int,
                             chunk: int) -> torch.Tensor:
    """Rows of :func:`position_sketch` from one walk per row instead of one per entity.

    The edges are undirected, so the walk is reversible: with ``M = A D^-1`` and ``A`` symmetric,
    ``M^k[v, s] d_s = M^k[s, v] d_v`` for every ``k`` (truncated series included), hence
    ``ppr_s(v) = ppr_v(s) d_v / d_s``. A snapshot that touched a few hundred nodes of a network with thousands
    of anchored entities (pseudo-anchors included) refreshes their rows for a fraction of the walks. Where a
    degree is zero the ratio is never needed: an isolated node reaches, and is reached by, nothing but itself.
    """
    n = graph.num_nodes
    degree = torch.zeros(n).index_add_(0, graph.edge_index[0], graph.edge_weight)
    seed_nodes = torch.tensor([node for node, _ in seeds], dtype=torch.long)
    seed_cols = torch.tensor([column[key] for _, key in seeds], dtype=torch.long)
    inv_seed_degree = torch.where(degree[seed_nodes] > 0, 1.0 / degree[seed_nodes].clamp_min(1e-12), 0.0)
    directions = torch.from_numpy(entity_directions(keys, dim))
    out = torch.empty(len(rows), dim)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        signal = torch.zeros(n, len(part))
        signal[part, torch.arange(len(part))] = 1.0
        back = personalized_pagerank(graph, signal, restart, steps)[seed_nodes]  # (seeds, part): ppr_v(s)
        forward = back * inv_seed_degree[:, None] * degree[part][None, :]
        forward = torch.where(seed_nodes[:, None] == part[None, :], back, forward)
        ppr = torch.zeros(len(keys), len(part)).index_add_(0, seed_cols, forward)
        out[start:start + len(part)] = torch.log1p(n * ppr).T @ directions
    return out


def position_features(sketch: torch.Tensor, graph: GraphTensors) -> torch.Tensor:
    """Encoder input ``(n, dim + 2)`` from a raw sketch: unit sketch, log-norm / 10 and log-degree."""
    norm = sketch.norm(dim=1, keepdim=True)
    unit = sketch / norm.clamp_min(1e-12)
    return torch.cat([unit, torch.log(norm + 1e-6) / 10.0, graph.log_degree], dim=1)


def anchors_of(snapshot: Snapshot, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
    """The snapshot's anchors for the aligned pairs, keyed canonically, in ``pairs``' order. A pair with no
    anchors of its own is kept, with no rows, where its two networks are joined through anchored pairs among
    ``pairs`` (a ~ b and b ~ c join a and c): entities anchored along the way give it shared coordinates
    (:func:`anchor_entities`). A pair joined through nothing has no coordinates and is left out.

    >>> from types import SimpleNamespace
    >>> rows = np.array([[0, 1]])
    >>> cut = SimpleNamespace(anchors={("a", "b"): rows, ("b", "c"): rows})  # only its anchors are read
    >>> {pair: len(r) for pair, r in anchors_of(cut, [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c")]).items()}
    {('a', 'b'): 1, ('a', 'c'): 0, ('b', 'c'): 1}
    """
    keys = list(dict.fromkeys(pair_key(a, b) for a, b in pairs))
    anchored = {key: snapshot.anchors[key] for key in keys if key in snapshot.anchors and len(snapshot.anchors[key])}
    group: dict[str, str] = {}

    def root(net: str) -> str:
        while group.setdefault(net, net) != net:
            net = group[net]
        return net

    for a, b in anchored:
        group[root(a)] = root(b)
    joined = lambda a, b: a in group and b in group and root(a) == root(b)  # noqa: E731
    empty = np.zeros((0, 2), dtype=np.int64)
    return {key: anchored.get(key, empty) for key in keys if key in anchored or joined(*key)}
