"""What one alignment round produces: top-k candidates per alive node, both directions of every aligned pair.

Plain numpy, no torch, so publishers, stores and clients can handle updates without loading the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class AlignmentPath(StrEnum):
    """Which way the aligner took on a snapshot (the ``path`` of its stats and of the ``snapshot aligned`` line):
    fast adaptation of the meta-learned initialisation and a fresh alignment, or the incremental update."""

    ADAPTATION = "adaptation"
    INCREMENTAL = "incremental"


@dataclass
class PairTopK:
    """Candidates in ``dst`` for every alive node of ``src``: ``candidates[i]`` are destination indices for source
    index ``src_index[i]``, best first, with cosine ``scores``."""

    src: str
    dst: str
    src_index: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray


@dataclass
class AlignmentUpdate:
    snapshot_id: int
    end_time: float
    node_ids: dict[str, tuple[str, ...]]
    pairs: list[PairTopK]
    stats: dict = field(default_factory=dict)
