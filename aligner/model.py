"""The alignment encoder: one small GNN shared by every network, with temporal state carried across snapshots.

Sharing the weights between networks is what makes embeddings of different networks comparable: the same
function maps "a node with these attributes at this position relative to the anchors, in this neighbourhood"
to the same point, whichever network it lives in. The recurrent graph convolution (``GConvGRU`` from
torch-geometric-temporal) keeps a hidden state per node between snapshots, so a node's embedding integrates
its history rather than only the latest cut.
"""

from __future__ import annotations

from collections import OrderedDict

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
        self.recurrent = GConvGRU(hidden, hidden, K=cheb_k)
        self.laplacians = LaplacianCache()
        _share_laplacians(self.recurrent, self.laplacians)
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
    """Scaled Laplacians of recently seen graphs, keyed by the identity of their edge tensors.

    ``ChebConv`` normalises the graph on every call, and ``GConvGRU`` makes six calls per forward pass, so
    meta-training, which embeds the same few snapshots over and over, spent about a sixth of its time
    recomputing the same Laplacian. The entry holds the edge tensors themselves, so an identity match cannot
    be a recycled address, and their version counters, so an in-place edit is a miss.
    """

    def __init__(self, size: int = 16):
        self.size = size
        self.entries: OrderedDict[tuple, tuple] = OrderedDict()

    def get(self, edge_index: torch.Tensor, edge_weight: torch.Tensor | None, key: tuple, compute):
        tag = (id(edge_index), id(edge_weight), key)
        versions = (edge_index._version, None if edge_weight is None else edge_weight._version)
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
        self.__init__(state["size"])


class CachedChebConv(ChebConv):
    """``ChebConv`` whose graph normalisation comes from a shared :class:`LaplacianCache`."""

    laplacians: LaplacianCache | None = None

    def __norm__(self, edge_index, num_nodes, edge_weight, normalization, lambda_max=None, dtype=None, batch=None):
        compute = lambda: super(CachedChebConv, self).__norm__(  # noqa: E731
            edge_index, num_nodes, edge_weight, normalization, lambda_max, dtype, batch)
        if self.laplacians is None or batch is not None or isinstance(lambda_max, torch.Tensor):
            return compute()
        return self.laplacians.get(edge_index, edge_weight, (num_nodes, normalization, lambda_max, dtype), compute)


def _share_laplacians(gru: GConvGRU, cache: LaplacianCache) -> None:
    """Swap the GRU's six ``ChebConv`` for cached ones with the same weights and parameter names."""
    with torch.random.fork_rng():  # the swap must not shift the random initialisation of later layers
        for name, conv in list(gru.named_children()):
            if isinstance(conv, ChebConv):
                cached = CachedChebConv(conv.in_channels, conv.out_channels, K=len(conv.lins),
                                        normalization=conv.normalization, bias=conv.bias is not None)
                cached.load_state_dict(conv.state_dict())
                cached.laplacians = cache
                setattr(gru, name, cached)


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
