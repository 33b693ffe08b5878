"""The encoder: cached graph normalisation changes nothing but the time it takes."""

from __future__ import annotations

import torch

from aligner.model import AlignmentEncoder


def test_cached_laplacian_gives_the_same_embeddings_and_notices_in_place_edits():
    torch.manual_seed(0)
    n = 50
    edges = torch.randint(0, n, (2, 200))
    edges = torch.cat([edges, edges.flip(0)], dim=1)
    weights = torch.ones(edges.shape[1])
    attrs, positions = torch.rand(n, 3), torch.rand(n, 10)
    cached = AlignmentEncoder(3, 8, hidden=8, embedding_dim=4)
    plain = AlignmentEncoder(3, 8, hidden=8, embedding_dim=4)
    plain.load_state_dict(cached.state_dict())
    for conv in plain.recurrent.children():
        conv.laplacians = None  # the library's ChebConv behaviour: normalise on every call

    for _ in range(2):  # the second call is served from the cache
        assert torch.equal(cached(attrs, positions, edges, weights, None)[0], plain(attrs, positions, edges, weights, None)[0])
    assert len(cached.laplacians.entries) == 1
    weights.mul_(torch.rand(weights.shape) + 0.5)  # edited in place: the cached Laplacian no longer applies
    assert torch.equal(cached(attrs, positions, edges, weights, None)[0], plain(attrs, positions, edges, weights, None)[0])


def test_parameter_names_and_initialisation_are_the_libraries():
    """Checkpoints and Meta-SGD learning rates are keyed by parameter name; the swap keeps names and values."""
    from torch_geometric_temporal.nn.recurrent import GConvGRU

    torch.manual_seed(7)
    enc = AlignmentEncoder(3, 8, hidden=8, embedding_dim=4)
    torch.manual_seed(7)
    torch.nn.Linear(10, 8)
    torch.nn.Linear(3, 8, bias=False)
    gru = GConvGRU(8, 8, K=2)
    ours = {k.removeprefix("recurrent."): v for k, v in enc.state_dict().items() if k.startswith("recurrent.")}
    assert ours.keys() == gru.state_dict().keys()
    assert all(torch.equal(ours[k], v) for k, v in gru.state_dict().items())
