"""The alignment encoder: one small GNN shared by every network, with temporal state carried across snapshots.

Sharing the weights between networks is what makes embeddings of different networks comparable: the same
function maps "a node with these attributes at this position relative to the anchors, in this neighbourhood"
to the same point, whichever network it lives in. The recurrent graph convolution (``GConvGRU`` from
torch-geometric-temporal) keeps a hidden state per node between snapshots, so a node's embedding integrates
its history rather than only the latest cut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
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
