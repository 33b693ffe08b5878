"""Anchor-relative position features."""

from __future__ import annotations

import numpy as np
import torch

from aligner.model.features import GraphTensors, position_sketch
from snapshots.snapshot import NetworkSnapshot


def test_sketch_rows_from_reverse_walks_equal_the_full_sketch_rows():
    """Weighted edges, repeated pairs, self-loops, isolated nodes, entities of several nodes, seeds among the
    rows and rows split over chunks: walking from the rows gives the rows of the sketch walked from the seeds."""
    rng = np.random.default_rng(0)
    n = 300
    edges = rng.integers(0, n - 20, (2, 700))  # the last 20 nodes stay isolated
    net = NetworkSnapshot("a", tuple(map(str, range(n))), edges, rng.integers(1, 5, 700).astype(np.float32),
                          np.ones(n, bool))
    g = GraphTensors.from_snapshot(net)
    seeds = [(int(i), f"e/{int(i) % 150}") for i in rng.choice(n, 200, replace=False)]
    rows = torch.from_numpy(np.concatenate([rng.choice(n, 40, replace=False), [seeds[0][0], n - 1]]))
    full = position_sketch(g, seeds, 64, 0.15, 20)[rows]
    by_rows = position_sketch(g, seeds, 64, 0.15, 20, chunk=16, rows=rows)
    assert torch.allclose(by_rows, full, atol=1e-4, rtol=1e-4)
    assert float(full.abs().max()) > 1.0  # the rows carry signal, not just zeros


def test_a_cache_built_on_an_earlier_one_holds_exactly_the_vectors_walked_afresh():
    """Inputs derived from others (a calibration split, pseudo-anchors added) reuse the vectors walked before:
    each node's walk is its own column, so a copied vector must equal a fresh walk bit for bit."""
    from aligner.model.features import NodePPR

    rng = np.random.default_rng(1)
    n = 400
    edges = rng.integers(0, n, (2, 1200))
    g = GraphTensors.from_snapshot(NetworkSnapshot("a", tuple(map(str, range(n))), edges,
                                                   np.ones(1200, np.float32), np.ones(n, bool)))
    nodes = rng.choice(n, 90, replace=False).tolist()
    earlier = NodePPR(g, nodes[:50] + [n - 1], 0.15, 20, chunk=16)
    fresh = NodePPR(g, nodes, 0.15, 20, chunk=16)
    reused = NodePPR(g, nodes, 0.15, 20, chunk=16, reuse=earlier)
    assert fresh.nodes == reused.nodes and torch.equal(fresh.log_ppr, reused.log_ppr)
    other_walk = NodePPR(g, nodes, 0.2, 20, reuse=earlier)  # another restart: nothing can be copied
    assert not torch.equal(other_walk.log_ppr, fresh.log_ppr)
    assert earlier.has(nodes[:50], 0.15, 20) and not earlier.has(nodes, 0.15, 20)
