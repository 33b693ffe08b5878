import torch

from aligner.matching.ranking import ranking_metrics, ranks


class Cosine:
    """Cosine similarity of unit-norm embeddings, as a scorer."""

    def __init__(self, z_src: torch.Tensor, z_dst: torch.Tensor):
        self.z_src, self.z_dst = z_src, z_dst

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        return self.z_src[index] @ self.z_dst.T


def test_ranks_and_metrics_match_a_brute_force_count():
    g = torch.Generator().manual_seed(0)
    z_a = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    z_b = torch.nn.functional.normalize(torch.randn(60, 8, generator=g), dim=1)
    alive = torch.rand(60, generator=g) > 0.2
    pairs = torch.stack([torch.arange(20), alive.nonzero().flatten()[:20]], dim=1)
    r = ranks(Cosine(z_a, z_b), pairs, alive)
    sims = z_a @ z_b.T
    for (i, j), rank in zip(pairs.tolist(), r.tolist()):
        assert rank == int(((sims[i] >= sims[i, j]) & alive).sum())
    m = ranking_metrics(Cosine(z_a, z_b), pairs, alive)
    assert m["hits@1"] == float((r == 1).float().mean())
    assert abs(m["mrr"] - float((1 / r.float()).mean())) < 1e-6
    assert 0 <= m["hits@1"] <= m["hits@5"] <= m["hits@10"] <= 1


def test_a_nan_score_ranks_last_not_first():
    scores = torch.tensor([[float("nan"), 0.5, 0.1]])

    class Dense:
        def rows(self, index):
            return scores[index]

    assert ranks(Dense(), torch.tensor([[0, 1]]), torch.ones(3, dtype=torch.bool)).tolist() == [1]


def test_twins_share_first_place_and_the_shared_hits_count_them_in_expectation():
    # Rows 0 and 1 are structural twins: both score their two candidates alike. Row 2 ranks its partner first
    # alone; row 3 ranks it second behind a tie of two.
    scores = torch.tensor([[0.9, 0.9, 0.1, 0.0],
                           [0.9, 0.9, 0.1, 0.0],
                           [0.1, 0.2, 0.8, 0.3],
                           [0.7, 0.7, 0.1, 0.5]])

    class Dense:
        def rows(self, index):
            return scores[index]

    pairs = torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3]])
    m = ranking_metrics(Dense(), pairs, torch.ones(4, dtype=torch.bool))
    assert m["hits@1"] == 0.25  # the twins count as misses
    assert m["tied@1"] == 0.5
    assert m["hits@1_shared"] == (0.5 + 0.5 + 1 + 0) / 4
