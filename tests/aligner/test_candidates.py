"""Candidate sets: exact against the dense computation they avoid, and complete where they must be."""

from __future__ import annotations

import numpy as np
import torch

from aligner.matching.candidates import anchored_neighbourhood, candidate_set, pair_similarity, similar_top
from aligner.matching.incremental import NetworkView, adjacency_csr, similarity_block


def random_view(n: int, seed: int, dead: tuple[int, ...] = (), attrs: bool = True) -> NetworkView:
    g = torch.Generator().manual_seed(seed)
    unit = lambda x: torch.nn.functional.normalize(x, dim=1)  # noqa: E731
    edges = torch.randint(0, n, (2, 3 * n), generator=g)
    edges = torch.cat([edges, edges.flip(0)], dim=1)
    alive = torch.ones(n, dtype=torch.bool)
    alive[list(dead)] = False
    return NetworkView(unit(torch.randn(n, 8, generator=g)), unit(torch.randn(n, 4, generator=g)),
                       unit(torch.randn(n, 3, generator=g)) if attrs else None, adjacency_csr(edges, n), alive)


def test_similar_top_is_the_dense_top_k_of_both_ways_computed_block_by_block():
    va, vb = random_view(50, 0, dead=(11,)), random_view(40, 1, dead=(3, 7))
    dense = similarity_block(va, vb, slice(None), slice(None), 0.5)
    dense[:, ~vb.alive] = float("-inf")
    dense[~va.alive] = float("-inf")
    to_dst, to_src = similar_top(va, vb, 6, 0.5, block=7)
    alive = va.alive.nonzero().flatten()
    expected = dense[alive].topk(6, dim=1).indices
    assert torch.equal(torch.sort(to_dst[alive], dim=1).values, torch.sort(expected, dim=1).values)
    alive = vb.alive.nonzero().flatten()
    expected = dense.T[alive].topk(6, dim=1).indices
    assert torch.equal(torch.sort(to_src[alive], dim=1).values, torch.sort(expected, dim=1).values)
    assert not set(to_dst.flatten().tolist()) & {3, 7} and 11 not in to_src.flatten().tolist()


def test_pair_similarity_gathers_a_chunk_of_pairs_at_a_time_and_equals_the_dense_entries():
    va, vb = random_view(30, 2), random_view(20, 3)
    dense = similarity_block(va, vb, slice(None), slice(None), 0.7)
    g = torch.Generator().manual_seed(4)
    rows, cols = torch.randint(0, 30, (101,), generator=g), torch.randint(0, 20, (101,), generator=g)
    chunked = pair_similarity(va, vb, rows, cols, 0.7, chunk=8)
    assert torch.equal(chunked, pair_similarity(va, vb, rows, cols, 0.7, chunk=1000))
    assert torch.allclose(chunked, dense[rows, cols], atol=1e-6)
    assert pair_similarity(va, vb, rows[:0], cols[:0], 0.7).shape == (0,)


def test_every_alive_target_has_candidates_even_when_no_row_prefers_it():
    # One hub every source node finds most similar: row-wise, it is everyone's candidate and the rest are
    # nobody's; each target still gets its own best sources.
    va, vb = random_view(30, 9, attrs=False), random_view(20, 10, attrs=False)
    vb.z[0] = va.z.mean(0) / va.z.mean(0).norm()
    found = candidate_set(va, vb, np.zeros((0, 2), dtype=np.int64), similar=1, structural=0, feature_weight=0.0)
    per_column = np.diff(found.pattern.tocsc().indptr)
    assert (per_column >= 1).all()
    assert found.cells <= 30 + 20


def test_asking_for_every_target_gives_every_alive_pair():
    va, vb = random_view(12, 2, dead=(0,)), random_view(9, 3, dead=(4,))
    found = candidate_set(va, vb, np.array([[1, 1], [2, 5]]), similar=9, structural=9)
    expected = {(i, j) for i in range(12) if i != 0 for j in range(9) if j != 4}
    coo = found.pattern.tocoo()
    assert set(zip(coo.row.tolist(), coo.col.tolist())) == expected
    assert found.cells == len(expected)


def test_anchored_neighbourhood_counts_shared_anchored_neighbours():
    va, vb = random_view(30, 4), random_view(25, 5)
    anchors = np.array([[0, 3], [5, 9], [7, 7]])
    counts = anchored_neighbourhood(va.adjacency, vb.adjacency, anchors, 25).toarray()
    near_a = va.adjacency.toarray().astype(bool) | np.eye(30, dtype=bool)
    near_b = vb.adjacency.toarray().astype(bool) | np.eye(25, dtype=bool)
    expected = sum(np.outer(near_a[:, x], near_b[y, :]) for x, y in anchors)
    np.testing.assert_array_equal(counts, expected)


def test_structure_finds_partners_the_embeddings_miss():
    # A permuted copy whose embeddings say nothing (random on each side): only the anchored neighbourhood finds
    # the partners, and it finds every node next to an anchor with few rivals.
    n = 200
    va = random_view(n, 6, attrs=False)
    perm = np.random.default_rng(0).permutation(n)
    adjacency_b = va.adjacency[np.argsort(perm)][:, np.argsort(perm)]  # node i of a is node perm[i] of b
    vb = NetworkView(random_view(n, 7).z, random_view(n, 8).pos, None, adjacency_b.tocsr(), va.alive)
    anchored = np.arange(0, n, 4)
    anchors = np.stack([anchored, perm[anchored]], axis=1)
    truth = np.stack([np.arange(n), perm], axis=1)
    blind = candidate_set(va, vb, anchors, similar=5, structural=0)
    both = candidate_set(va, vb, anchors, similar=5, structural=20)
    assert blind.recall(truth) < 0.1
    assert both.recall(truth) > 0.8
    assert both.contains(anchors).all()
