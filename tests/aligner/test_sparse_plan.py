"""The sparse plan is the dense plan where every pair is a candidate, and close to it on a few candidates."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from aligner.matching.candidates import candidate_set, pair_similarity
from aligner.matching.incremental import NetworkView, adjacency_csr, similarity_block
from aligner.matching.refine import solve_plan
from aligner.matching.sparse_plan import solve_sparse_plan


def noisy_copy(n: int, seed: int) -> tuple[NetworkView, NetworkView, np.ndarray]:
    """A random graph and a permuted copy with 10% of its edges dropped; embeddings agree up to noise."""
    rng = np.random.default_rng(seed)
    edges = rng.integers(0, n, (2, 4 * n))
    perm = rng.permutation(n)
    keep = rng.random(edges.shape[1]) > 0.1
    unit = lambda x: torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float32), dim=1)  # noqa: E731
    z = rng.normal(size=(n, 16))
    za, zb = unit(z + rng.normal(scale=0.9, size=z.shape)), unit(np.empty_like(z))
    zb[perm] = unit(z + rng.normal(scale=0.9, size=z.shape))
    both = lambda e: torch.from_numpy(np.concatenate([e, e[::-1]], axis=1))  # noqa: E731
    alive = torch.ones(n, dtype=torch.bool)
    va = NetworkView(za, unit(rng.normal(size=(n, 4))), None, adjacency_csr(both(edges), n), alive)
    vb = NetworkView(zb, unit(rng.normal(size=(n, 4))), None, adjacency_csr(both(perm[edges[:, keep]]), n), alive)
    return va, vb, np.stack([np.arange(n), perm], axis=1)


@pytest.mark.parametrize("marginal_weight", [None, 0.1])
def test_with_every_pair_as_a_candidate_it_is_the_dense_plan(marginal_weight):
    va, vb, _ = noisy_copy(60, 0)
    alive_b = torch.ones(60, dtype=torch.bool)
    alive_b[[3, 17]] = False
    similarity = similarity_block(va, vb, slice(None), slice(None), 0.5)
    dense = solve_plan(similarity, va.adjacency, vb.adjacency, 0.05, 0.3, 6, 5, va.alive, alive_b, marginal_weight)
    support = sp.csr_matrix(np.ones((60, 60), dtype=np.float32))
    sparse = solve_sparse_plan(support, lambda r, c: similarity[r, c], va.adjacency, vb.adjacency, 0.05, 0.3, 6, 5,
                               va.alive, alive_b, marginal_weight)
    plan = torch.full((60, 60), float("-inf"))
    plan[sparse.rows, sparse.cols] = sparse.log_plan
    live = alive_b[None, :].expand(60, 60)
    torch.testing.assert_close(plan[live], dense.log_plan[live], atol=2e-3, rtol=1e-4)
    assert torch.equal(sparse.top_target(), dense.log_plan.argmax(dim=1))


def test_on_a_few_candidates_grown_from_the_structure_it_ranks_like_the_dense_plan():
    va, vb, truth = noisy_copy(300, 1)
    similarity = similarity_block(va, vb, slice(None), slice(None), 0.5)
    dense = solve_plan(similarity, va.adjacency, vb.adjacency, 0.05, 0.3, 10, 5)
    dense_hits = float((dense.log_plan.argmax(dim=1).numpy() == truth[:, 1]).mean())
    found = candidate_set(va, vb, truth[::5], similar=20, structural=20, feature_weight=0.5)
    score = lambda r, c: pair_similarity(va, vb, r, c, 0.5)  # noqa: E731
    fixed = solve_sparse_plan(found.pattern, score, va.adjacency, vb.adjacency, 0.05, 0.3, 10, 5)
    grown = solve_sparse_plan(found.pattern, score, va.adjacency, vb.adjacency, 0.05, 0.3, 10, 5, grow=10)
    fixed_hits, sparse_hits = (float((p.top_target().numpy() == truth[:, 1]).mean()) for p in (fixed, grown))
    assert dense_hits > 0.9 and found.recall(truth) < 0.95  # the structure finds partners the candidates lack
    assert fixed_hits <= found.recall(truth)  # fixed candidates cap the plan...
    assert sparse_hits >= dense_hits - 0.01, (sparse_hits, dense_hits)  # ...growing them from the structure does not
    assert len(grown.rows) <= 300 * (40 + 9 * 10) and len(grown.rows) < 0.25 * 300 * 300
