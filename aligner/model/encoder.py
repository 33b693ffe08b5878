"""The alignment encoder: one small GNN shared by every network, with temporal state carried across snapshots.

Sharing the weights between networks is what makes embeddings of different networks comparable: the same
function maps "a node with these attributes at this position relative to the anchors, in this neighbourhood"
to the same point, whichever network it lives in. The recurrent graph convolution (``GConvGRU`` from
torch-geometric-temporal) keeps a hidden state per node between snapshots, so a node's embedding integrates
its history rather than only the latest cut.
"""

from __future__ import annotations

import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import ChebConv
from torch_geometric_temporal.nn.recurrent import GConvGRU


class AlignmentEncoder(nn.Module):
    """Structure + attributes → unit-norm node embeddings, plus the next hidden state.

    >>> import torch
    >>> enc = AlignmentEncoder(attr_dim=3, position_dim=4, hidden=8, embedding_dim=5)
    >>> edges = torch.tensor([[0, 1], [1, 0]])
    >>> z, h = enc(torch.rand(2, 3), torch.rand(2, 6), edges, torch.ones(2), None)
    >>> tuple(z.shape), tuple(h.shape), bool(torch.allclose(z.norm(dim=1), torch.ones(2)))
    ((2, 5), (2, 8), True)
    """

    def __init__(self, attr_dim: int, position_dim: int, hidden: int = 64, embedding_dim: int = 64, cheb_k: int = 2):
        super().__init__()
        self.attr_dim = attr_dim
        self.position = nn.Linear(position_dim + 2, hidden)
        self.attributes = nn.Linear(attr_dim, hidden, bias=False) if attr_dim > 0 else None
        self.laplacians = LaplacianCache()
        self.recurrent = SparseGConvGRU(hidden, hidden, K=cheb_k, laplacians=self.laplacians)
        self.readout = nn.Linear(2 * hidden, embedding_dim)

    def forward(
        self,
        attrs: torch.Tensor | None,
        positions: torch.Tensor,
        edge_index: torch.Tensor,
        edge_weight: torch.Tensor,
        hidden: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.position(positions)
        if self.attributes is not None and attrs is not None:
            x = x + self.attributes(fit_width(attrs, self.attr_dim))
        x = F.gelu(x)
        h = self.recurrent(x, edge_index, edge_weight, H=hidden)
        # The skip path keeps node-local evidence (its own attributes and anchor position) sharp after smoothing.
        z = self.readout(torch.cat([x, h], dim=1))
        return F.normalize(z, dim=1), h


class LaplacianCache:
    """Scaled Laplacians of recently seen graphs, as sparse operators, keyed by the identity of their edge tensors.

    Meta-training embeds the same few snapshots over and over; normalising the graph is as costly as a
    propagation, so it is done once per graph. The entry holds the edge tensors themselves, so an identity match
    cannot be a recycled address, and their version counters, so an in-place edit is a miss.
    """

    def __init__(self, size: int = 16):
        self.size = size
        self.entries: OrderedDict[tuple, tuple] = OrderedDict()

    def get(self, edge_index: torch.Tensor, edge_weight: torch.Tensor | None, key: tuple, compute):
        tag = (id(edge_index), id(edge_weight), key)
        # Tensors count in-place writes only in ``_version``, which torch exposes no other way.
        versions = (edge_index._version, None if edge_weight is None else edge_weight._version)  # noqa: SLF001
        hit = self.entries.get(tag)
        if hit is not None and hit[0] is edge_index and hit[1] is edge_weight and hit[2] == versions:
            self.entries.move_to_end(tag)
            return hit[3]
        value = compute()
        self.entries[tag] = (edge_index, edge_weight, versions, value)
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return value

    def __getstate__(self) -> dict:  # a copy or a pickle starts empty: identities do not survive either
        return {"size": self.size}

    def __setstate__(self, state: dict) -> None:
        type(self).__init__(self, state["size"])


class SparseGConvGRU(GConvGRU):
    """torch-geometric-temporal's ``GConvGRU``: its parameters, initialisation and outputs, computed faster.

    The library's cell runs six ``ChebConv``, each normalising the graph and propagating by gather and scatter:
    0.4 s for a forward pass on a 10k-node graph, one thread. Here the scaled Laplacian (the library's own
    ``ChebConv`` normalisation) is built once per graph as a CSR matrix; the three convolutions of the input
    share one Chebyshev basis, the update and reset gates share the state's, and each group of gates is one
    matrix product. The gradient of a propagation is a propagation by the transposed operator, itself
    differentiable, so second-order meta-gradients flow through it.
    """

    def __init__(self, in_channels: int, out_channels: int, K: int, laplacians: LaplacianCache):
        super().__init__(in_channels, out_channels, K=K)
        self.laplacians = laplacians
        _remove_generated_sources()

    def forward(self, X: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None,
                H: torch.Tensor | None = None, lambda_max: float | None = None) -> torch.Tensor:
        if isinstance(lambda_max, torch.Tensor):
            raise TypeError("SparseGConvGRU takes lambda_max as a number (one graph, not a batch)")
        ops = self.laplacians.get(edge_index, edge_weight, (X.shape[0], self.normalization, lambda_max, X.dtype),
                                  lambda: self._operators(edge_index, edge_weight, X.shape[0], lambda_max, X.dtype))
        xz, xr, xh = _chebyshev_gates((self.conv_x_z, self.conv_x_r, self.conv_x_h), _chebyshev_basis(ops, X, self.K))
        if H is None:  # a zero state: its convolutions are their biases, and Z * H vanishes
            z = torch.sigmoid(_add_bias(xz, self.conv_h_z))
            return (1 - z) * torch.tanh(_add_bias(xh, self.conv_h_h))
        hz, hr = _chebyshev_gates((self.conv_h_z, self.conv_h_r), _chebyshev_basis(ops, H, self.K))
        z, r = torch.sigmoid(xz + hz), torch.sigmoid(xr + hr)
        (hh,) = _chebyshev_gates((self.conv_h_h,), _chebyshev_basis(ops, H * r, self.K))
        return z * H + (1 - z) * torch.tanh(xh + hh)

    def _operators(self, edge_index, edge_weight, n: int, lambda_max, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        index, weight = self.conv_x_z.__norm__(edge_index, n, edge_weight, self.normalization, lambda_max, dtype)
        # ChebConv's messages flow source -> target: row = edge_index[1] gathers from column = edge_index[0].
        forward = torch.sparse_coo_tensor(index.flip(0), weight, (n, n), check_invariants=True).coalesce()
        backward = torch.sparse_coo_tensor(index, weight, (n, n), check_invariants=True).coalesce()
        return forward.to_sparse_csr(), backward.to_sparse_csr()


class _Propagate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, op: torch.Tensor, op_t: torch.Tensor) -> torch.Tensor:
        ctx.ops = (op, op_t)
        return op @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        op, op_t = ctx.ops
        return _Propagate.apply(grad.contiguous(), op_t, op), None, None


def _chebyshev_basis(ops: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, k: int) -> list[torch.Tensor]:
    basis = [x]
    if k > 1:
        basis.append(_Propagate.apply(x, *ops))
    for _ in range(2, k):
        basis.append(2.0 * _Propagate.apply(basis[-1], *ops) - basis[-2])
    return basis


def _chebyshev_gates(convs: tuple[ChebConv, ...], basis: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``conv(x)`` for each of ``convs`` sharing the Chebyshev ``basis`` of x, as one matrix product."""
    weight = torch.cat([torch.cat([lin.weight for lin in conv.lins], dim=1) for conv in convs], dim=0)
    out = torch.cat(basis, dim=1) @ weight.T
    return tuple(_add_bias(part, conv) for part, conv in zip(out.chunk(len(convs), dim=1), convs))


def _add_bias(x: torch.Tensor, conv: ChebConv) -> torch.Tensor:
    return x if conv.bias is None else x + conv.bias


def fit_width(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad or truncate columns so a network's attributes fit the encoder's input width."""
    if x.shape[1] == width:
        return x
    if x.shape[1] > width:
        return x[:, :width]
    return F.pad(x, (0, width - x.shape[1]))


def anchor_loss(
    z_a: torch.Tensor, z_b: torch.Tensor, pairs: torch.Tensor, alive_a: torch.Tensor, alive_b: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Symmetric InfoNCE over known pairs: each anchor must rank its partner first among all alive nodes of the
    other network (the same ranking the service publishes).

    >>> import torch
    >>> z = torch.nn.functional.normalize(torch.eye(3), dim=1)
    >>> alive = torch.ones(3, dtype=torch.bool)
    >>> good = anchor_loss(z, z, torch.tensor([[0, 0], [1, 1]]), alive, alive, 0.1)
    >>> bad = anchor_loss(z, z, torch.tensor([[0, 1], [1, 0]]), alive, alive, 0.1)
    >>> bool(good < bad)
    True
    """
    i, j = pairs[:, 0], pairs[:, 1]
    logits_ab = z_a[i] @ z_b.T / temperature
    logits_ba = z_b[j] @ z_a.T / temperature
    logits_ab = logits_ab.masked_fill(~alive_b, float("-inf"))
    logits_ba = logits_ba.masked_fill(~alive_a, float("-inf"))
    return 0.5 * (F.cross_entropy(logits_ab, j) + F.cross_entropy(logits_ba, i))


def _remove_generated_sources() -> None:
    """PyTorch Geometric writes the code it generates for a convolution's ``propagate`` to a temporary file, once
    per class and process, and never removes it: every dynalign process left one in the temp dir. The module is
    loaded by then, and these convolutions never propagate (:class:`SparseGConvGRU` does), so the files go."""
    temp = Path(tempfile.gettempdir()).resolve()
    for name, module in list(sys.modules.items()):
        source = getattr(module, "__file__", None)
        if name.startswith("torch_geometric.") and source and Path(source).resolve().parent == temp:
            Path(source).unlink(missing_ok=True)
