import torch

from aligner.matching import CosineScorer, PlanScorer, ranking_metrics, ranks, top_k


def test_top_k_skips_dead_nodes_and_orders_by_score():
    z_src = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    z_dst = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    alive = torch.tensor([False, True, True])
    idx, val = top_k(CosineScorer(z_src, z_dst), alive, k=5)
    assert idx.shape == (2, 2)  # k is capped at the number of alive candidates
    assert idx[0].tolist() == [1, 2] and idx[1].tolist() == [2, 1]
    assert bool((val[:, 0] >= val[:, 1]).all())


def test_ranks_and_metrics_match_a_brute_force_count():
    g = torch.Generator().manual_seed(0)
    z_a = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    z_b = torch.nn.functional.normalize(torch.randn(60, 8, generator=g), dim=1)
    alive = torch.rand(60, generator=g) > 0.2
    pairs = torch.stack([torch.arange(20), alive.nonzero().flatten()[:20]], dim=1)
    r = ranks(CosineScorer(z_a, z_b), pairs, alive)
    sims = z_a @ z_b.T
    for (i, j), rank in zip(pairs.tolist(), r.tolist()):
        assert rank == int(((sims[i] >= sims[i, j]) & alive).sum())
    m = ranking_metrics(CosineScorer(z_a, z_b), pairs, alive)
    assert m["hits@1"] == float((r == 1).float().mean())
    assert abs(m["mrr"] - float((1 / r.float()).mean())) < 1e-6
    assert 0 <= m["hits@1"] <= m["hits@5"] <= m["hits@10"] <= 1


def test_plan_scorer_gives_row_probabilities_in_both_directions():
    log_plan = torch.log(torch.tensor([[0.6, 0.2, 0.2], [0.1, 0.1, 0.8]]))
    forward = PlanScorer(log_plan).rows(torch.tensor([0, 1]))
    assert torch.allclose(forward.sum(dim=1), torch.ones(2)) and forward[1].argmax() == 2
    backward = PlanScorer(log_plan, transpose=True).rows(torch.tensor([0, 2]))
    assert backward.shape == (2, 2) and backward[0].argmax() == 0 and backward[1].argmax() == 1
