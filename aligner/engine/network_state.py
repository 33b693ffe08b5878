"""What the aligner holds of one network between snapshots, in one object per network instead of a dict per field.

An adaptation creates a network's state (:meth:`NetworkState.encoded`); the incremental path replaces the parts
a snapshot changed (``dataclasses.replace``); the plans, rankings and explanations read it through
:meth:`NetworkState.view`. Saved states keep the layout they always had, one mapping per field keyed by network
(:data:`STATE_FIELDS`), so states written before this object existed load unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from aligner.matching.incremental import NetworkView, adjacency_csr
from aligner.model.features import GraphTensors

# Saved-state key -> field. Keys are the names the aligner's state has always used.
STATE_FIELDS = {"hidden": "hidden", "hidden_in": "hidden_in", "entities": "entities", "pseudo_seeds": "pseudo_seeds",
                "sketches": "sketch", "position_inputs": "position_inputs", "embeddings": "embeddings",
                "node_ids": "node_ids", "alive": "alive", "edges": "edges", "attrs": "attrs",
                "aligned_edges": "aligned_edges"}
# Fields states written by older versions may lack, with the value they stand for then: no pseudo-anchors among
# the seeds; no edges aligned afresh (the next join realigns).
OPTIONAL_FIELDS = {"pseudo_seeds": 0, "aligned_edges": None}


@dataclasses.dataclass(eq=False)
class NetworkState:
    """One network as last aligned: its nodes, graph, anchor coordinates, encoder inputs and outputs."""

    node_ids: tuple[str, ...]
    alive: torch.Tensor
    edges: torch.Tensor  # (2, 2E) of the latest snapshot
    attrs: torch.Tensor | None
    entities: list[tuple[int, str]]  # the anchor coordinate system: (node, entity key) seeds
    sketch: torch.Tensor  # (n, dim) raw anchor-position sketch
    position_inputs: torch.Tensor  # (n, dim + 2) encoder input
    embeddings: torch.Tensor
    hidden: torch.Tensor | None  # temporal state for the next adaptation
    hidden_in: torch.Tensor | None  # the state the current embeddings were computed from
    pseudo_seeds: int = 0  # how many of the entities are pseudo-anchors
    aligned_edges: np.ndarray | None = None  # edge keys when everything was last aligned afresh
    adjacency: sp.csr_matrix | None = dataclasses.field(default=None, repr=False)  # None: built from the edges
    # Evidence that needs no training (the unit anchor-position sketch): it anchors the scores when the encoder
    # is still young, and explanations quote it.
    positions: torch.Tensor = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.adjacency is None:
            self.adjacency = adjacency_csr(self.edges, len(self.node_ids))
        self.positions = self.position_inputs[:, :-2].contiguous()

    @classmethod
    def encoded(cls, node_ids: tuple[str, ...], g: GraphTensors, entities: list[tuple[int, str]],
                sketch: torch.Tensor, position_inputs: torch.Tensor, embeddings: torch.Tensor,
                hidden_in: torch.Tensor | None, hidden: torch.Tensor | None, adjacency: sp.csr_matrix | None = None,
                pseudo_seeds: int = 0, aligned_edges: np.ndarray | None = None) -> "NetworkState":
        """A network's state right after encoding ``g`` (``adjacency``: its CSR, when the caller has it)."""
        return cls(node_ids, g.alive, g.edge_index, g.attrs, entities, sketch, position_inputs, embeddings,
                   hidden, hidden_in, pseudo_seeds, aligned_edges, adjacency)

    def view(self) -> NetworkView:
        """What scoring needs (:class:`aligner.matching.incremental.NetworkView`)."""
        return NetworkView(self.embeddings, self.positions, self.attrs, self.adjacency, self.alive)


def hidden_for(state: NetworkState | None, n: int) -> torch.Tensor | None:
    """The temporal state the next encoding of a network of ``n`` nodes starts from (``None``: no history)."""
    return padded(None if state is None else state.hidden, n)


def padded(h: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """New nodes since ``h`` was computed start from a blank history."""
    if h is None or h.shape[0] >= n:
        return h
    return torch.cat([h, torch.zeros(n - h.shape[0], h.shape[1])])


def grown(x: torch.Tensor, n: int) -> torch.Tensor:
    """A copy of ``x`` with zero rows for nodes added since."""
    return torch.cat([x, torch.zeros(n - x.shape[0], x.shape[1])]) if x.shape[0] < n else x.clone()


def networks_to_state(networks: dict[str, NetworkState]) -> dict[str, dict[str, Any]]:
    """The saved layout: one mapping per field, keyed by network."""
    return {key: {net: getattr(s, name) for net, s in networks.items()} for key, name in STATE_FIELDS.items()}


def networks_from_state(state: dict[str, Any]) -> dict[str, NetworkState]:
    """Inverse of :func:`networks_to_state`; raises ``KeyError`` naming a required field that is missing."""
    for key in STATE_FIELDS:
        if key not in state and key not in OPTIONAL_FIELDS:
            raise KeyError(key)
    def value(key: str, net: str) -> Any:
        if key in OPTIONAL_FIELDS:
            return state.get(key, {}).get(net, OPTIONAL_FIELDS[key])
        return state[key][net]

    return {net: NetworkState(**{name: value(key, net) for key, name in STATE_FIELDS.items()})
            for net in state["node_ids"]}
