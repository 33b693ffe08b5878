"""The encoder: the sparse recurrent cell is torch-geometric-temporal's GConvGRU, only faster."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.func import functional_call
from torch_geometric_temporal.nn.recurrent import GConvGRU

from aligner.model.encoder import AlignmentEncoder, LaplacianCache, SparseGConvGRU


def _graph(n: int = 60, m: int = 240, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    edges = torch.randint(0, n, (2, m), generator=g)
    edges = edges[:, edges[0] != edges[1]]
    # Directed edges with their own weights: the operator must not assume a symmetric Laplacian.
    return edges, torch.rand(edges.shape[1], generator=g) + 0.5


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("with_state", [False, True])
def test_same_outputs_and_gradients_as_the_library_cell(k, with_state):
    torch.manual_seed(k)
    n = 60
    edges, weights = _graph(n)
    ours = SparseGConvGRU(5, 7, K=k, laplacians=LaplacianCache())
    theirs = GConvGRU(5, 7, K=k)
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(n, 5, requires_grad=True)
    h = torch.rand(n, 7, requires_grad=True) if with_state else None
    out_ours, out_theirs = ours(x, edges, weights, h), theirs(x, edges, weights, h)
    assert torch.allclose(out_ours, out_theirs, atol=1e-6)

    probe = torch.rand(n, 7)
    inputs = [x] + ([h] if with_state else [])
    for cell, out in ((ours, out_ours), (theirs, out_theirs)):
        cell.grads = torch.autograd.grad((out * probe).sum(), list(cell.parameters()) + inputs, allow_unused=True)
    for a, b, p in zip(ours.grads, theirs.grads, list(ours.parameters()) + inputs):
        # With a zero state the library multiplies the state's weights by zeros; ours skips them: no gradient.
        assert torch.allclose(_or_zeros(a, p), _or_zeros(b, p), atol=1e-5)


def test_second_order_gradients_match_the_library_cell():
    """MAML differentiates through an inner gradient step: the propagation's backward must be differentiable."""
    torch.manual_seed(3)
    n = 40
    edges, weights = _graph(n, 160, seed=3)
    ours = SparseGConvGRU(4, 6, K=2, laplacians=LaplacianCache())
    theirs = GConvGRU(4, 6, K=2)
    theirs.load_state_dict(ours.state_dict())
    x, h, probe = torch.rand(n, 4), torch.rand(n, 6), torch.rand(n, 6)

    def meta_gradient(cell):
        params = dict(cell.named_parameters())
        inner = (functional_call(cell, params, (x, edges, weights, h)) ** 2).sum()
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True, allow_unused=True)
        stepped = {name: p - 0.1 * g if g is not None else p for (name, p), g in zip(params.items(), grads)}
        outer = (functional_call(cell, stepped, (x, edges, weights, h)) * probe).sum()
        return torch.autograd.grad(outer, list(params.values()), allow_unused=True)

    for a, b, p in zip(meta_gradient(ours), meta_gradient(theirs), ours.parameters()):
        assert torch.allclose(_or_zeros(a, p), _or_zeros(b, p), atol=1e-4)


def test_cached_operator_notices_in_place_edits():
    torch.manual_seed(0)
    n = 50
    edges, weights = _graph(n, 200)
    attrs, positions = torch.rand(n, 3), torch.rand(n, 10)
    enc = AlignmentEncoder(3, 8, hidden=8, embedding_dim=4)
    reference = GConvGRU(8, 8, K=2)
    reference.load_state_dict(enc.recurrent.state_dict())

    def expected():
        x = torch.nn.functional.gelu(enc.position(positions) + enc.attributes(attrs))
        h = reference(x, edges, weights)
        return torch.nn.functional.normalize(enc.readout(torch.cat([x, h], dim=1)), dim=1)

    for _ in range(2):  # the second call is served from the cache
        assert torch.allclose(enc(attrs, positions, edges, weights, None)[0], expected(), atol=1e-6)
    assert len(enc.laplacians.entries) == 1
    weights.mul_(torch.rand(weights.shape) + 0.5)  # edited in place: the cached operator no longer applies
    assert torch.allclose(enc(attrs, positions, edges, weights, None)[0], expected(), atol=1e-6)


def test_parameter_names_and_initialisation_are_the_libraries():
    """Checkpoints and Meta-SGD learning rates are keyed by parameter name; the cell keeps names and values."""
    torch.manual_seed(7)
    enc = AlignmentEncoder(3, 8, hidden=8, embedding_dim=4)
    torch.manual_seed(7)
    torch.nn.Linear(10, 8)
    torch.nn.Linear(3, 8, bias=False)
    gru = GConvGRU(8, 8, K=2)
    ours = {k.removeprefix("recurrent."): v for k, v in enc.state_dict().items() if k.startswith("recurrent.")}
    assert ours.keys() == gru.state_dict().keys()
    assert all(torch.equal(ours[k], v) for k, v in gru.state_dict().items())


def test_building_the_encoder_leaves_no_file_in_the_temp_dir(tmp_path):
    # PyTorch Geometric writes generated code to the temp dir on the first convolution of a process.
    code = ("from aligner.model.encoder import AlignmentEncoder; AlignmentEncoder(3, 8, 16, 16, 2); "
            "import tempfile, os; print(tempfile.gettempdir())")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.py")) == []  # (torch may leave an empty cache dir of its own)
