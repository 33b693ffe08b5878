"""The transport refinement: a warm start from a solved plan lands where a cold solve does."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from aligner.matching.refine import PlanContext, solve_plan


def noisy_copy(n: int = 150, seed: int = 0) -> tuple[torch.Tensor, sp.csr_matrix, sp.csr_matrix]:
    """A random graph, a permuted copy, and a noisy similarity between them whose best entries are partly wrong."""
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, n, 4 * n), rng.integers(0, n, 4 * n)
    a = sp.csr_matrix((np.ones(8 * n, np.float32), (np.r_[rows, cols], np.r_[cols, rows])), shape=(n, n))
    a.data[:] = 1.0
    perm = rng.permutation(n)
    b = a[perm][:, perm]  # node perm[i] of a is node i of b
    truth = np.argsort(perm)
    sim = rng.normal(0.0, 0.3, (n, n)).astype(np.float32)
    sim[np.arange(n), truth] += 0.5
    return torch.from_numpy(sim), a.tocsr(), b.tocsr()


def test_warm_start_from_a_solved_plan_agrees_with_a_cold_solve_in_a_fraction_of_the_rounds():
    sim, a, b = noisy_copy()
    cold = solve_plan(sim, a, b, tau=0.05, beta=0.3, rounds=10, sinkhorn_iters=5, marginal_weight=0.1)
    # What the incremental path does when anchors arrive: the same problem, slightly moved, from the last plan.
    moved = sim + 0.02 * torch.from_numpy(np.random.default_rng(1).normal(size=sim.shape).astype(np.float32))
    reference = solve_plan(moved, a, b, tau=0.05, beta=0.3, rounds=10, sinkhorn_iters=5, marginal_weight=0.1)
    warm = solve_plan(moved, a, b, tau=0.05, beta=0.3, rounds=2, sinkhorn_iters=5, marginal_weight=0.1,
                      warm=PlanContext.of(cold))
    scratch = solve_plan(moved, a, b, tau=0.05, beta=0.3, rounds=2, sinkhorn_iters=5, marginal_weight=0.1)
    agree = lambda p: float((p.log_plan.argmax(1) == reference.log_plan.argmax(1)).float().mean())  # noqa: E731
    assert agree(warm) >= 0.97
    assert agree(warm) > agree(scratch)  # two rounds from nothing are not enough: the start is what helps


def test_warm_start_grows_with_the_networks():
    """Nodes that appeared since the last plan have no structure yet and a neutral potential."""
    from aligner.matching.incremental import NetworkView, PairMatcher

    sim, a, b = noisy_copy(60)
    plan = solve_plan(sim, a, b, rounds=3)

    def view(adj, n):
        z = torch.nn.functional.normalize(torch.rand(n, 4), dim=1)
        grown = adj.copy()
        grown.resize((n, n))
        return NetworkView(z, z, None, grown.tocsr(), torch.ones(n, dtype=torch.bool))

    matcher = PairMatcher(view(a, 60), view(b, 60), PlanContext.of(plan), 0.05, 0.3, 1.0, 5)
    start = matcher.warm_start(view(a, 64), view(b, 62))
    assert start.structure.shape == (64, 62) and start.structure[60:].nnz == 0
    assert torch.equal(start.u[:60], plan.u) and torch.allclose(start.u[60:], plan.u.mean().expand(4))
    assert torch.allclose(start.v[60:], plan.v.mean().expand(2))


def test_ranking_from_the_solved_similarity_equals_ranking_from_scratch():
    """The engine hands the matcher the similarity it solved the plan from; ranking with it must be the ranking
    the matcher computes on its own (dense path and row-chunk path alike)."""
    from aligner.matching.incremental import NetworkView, PairMatcher, similarity_block

    _, a, b = noisy_copy(80)
    gen = torch.Generator().manual_seed(0)
    alive = torch.ones(80, dtype=torch.bool)
    alive[[3, 17]] = False
    va, vb = (NetworkView(torch.nn.functional.normalize(torch.rand(80, 6, generator=gen), dim=1),
                          torch.nn.functional.normalize(torch.rand(80, 5, generator=gen), dim=1),
                          torch.nn.functional.normalize(torch.rand(80, 3, generator=gen), dim=1), adj, alive)
              for adj in (a, b))
    sim = similarity_block(va, vb, slice(None), slice(None), 1.0)
    plan = solve_plan(sim, a, b, rounds=3, alive_src=alive, alive_dst=alive, marginal_weight=0.1)
    given = PairMatcher(va, vb, PlanContext.of(plan), 0.05, 0.3, 1.0, 5, similarity=sim.clone())
    computed = PairMatcher(va, vb, PlanContext.of(plan), 0.05, 0.3, 1.0, 5)
    chunked = computed.rescored()
    chunked.ranked = {d: chunked._full_rows(d, torch.arange(80)) for d in ("ab", "ba")}
    for other in (computed, chunked):
        for d in ("ab", "ba"):
            assert torch.equal(given.ranked[d].idx[alive], other.ranked[d].idx[alive])
            torch.testing.assert_close(given.ranked[d].raw[alive], other.ranked[d].raw[alive], rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(given.ranked[d].lse[alive], other.ranked[d].lse[alive], rtol=1e-6, atol=1e-5)
