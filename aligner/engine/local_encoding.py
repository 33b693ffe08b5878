"""The incremental path's re-encoding: only the nodes within the encoder's receptive field of a change, on the
smallest subgraph that gives them the values the whole graph would."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from aligner.model.encoder import AlignmentEncoder
from aligner.model.features import GraphTensors
from aligner.model.meta import FastWeights


def edge_keys(edge_index: torch.Tensor) -> np.ndarray:
    """The distinct undirected edges of an edge index, as sorted int64 keys ``min * 2**32 + max``."""
    ei = edge_index.numpy().astype(np.int64, copy=False)
    return np.unique(np.minimum(ei[0], ei[1]) << 32 | np.maximum(ei[0], ei[1]))


def closure(adjacency: sp.csr_matrix, nodes: torch.Tensor, hops: int) -> torch.Tensor:
    """``nodes`` and every node within ``hops`` of them, sorted."""
    mask = np.zeros(adjacency.shape[0], dtype=bool)
    mask[nodes.numpy()] = True
    frontier = mask.copy()
    for _ in range(hops):
        frontier = (adjacency @ frontier.astype(np.float32)) > 0
        frontier &= ~mask
        if not frontier.any():
            break
        mask |= frontier
    return torch.from_numpy(np.flatnonzero(mask))


def encode_rows(fast: FastWeights, g: GraphTensors, positions: torch.Tensor, hidden: torch.Tensor | None,
                 rows: torch.Tensor, adjacency: sp.csr_matrix, hops: int) -> torch.Tensor:
    """Embeddings of ``rows`` computed on the smallest subgraph that gives the same values as the whole graph:
    the nodes within ``hops`` of ``rows`` with all their edges (so their degrees, which the Chebyshev
    normalisation uses, are exact)."""
    if len(rows) == 0:
        model = fast.learner.model
        assert isinstance(model, AlignmentEncoder)  # the aligner's learner wraps its encoder (build_learner)
        return torch.zeros(0, model.readout.out_features)
    inner = np.zeros(g.num_nodes, dtype=bool)
    inner[closure(adjacency, rows, hops).numpy()] = True
    ei = g.edge_index.numpy()
    keep = inner[ei[0]] | inner[ei[1]]
    nodes = np.flatnonzero(inner | np.isin(np.arange(g.num_nodes), ei[:, keep].ravel()))
    local = np.full(g.num_nodes, -1, dtype=np.int64)
    local[nodes] = np.arange(len(nodes))
    idx = torch.from_numpy(nodes)
    sub_edges = torch.from_numpy(local[ei[:, keep]])
    attrs = None if g.attrs is None else g.attrs[idx]
    z, _ = fast(attrs, positions[idx], sub_edges, g.edge_weight[torch.from_numpy(keep)],
                None if hidden is None else hidden[idx])
    return z[torch.from_numpy(local[rows.numpy()])]
