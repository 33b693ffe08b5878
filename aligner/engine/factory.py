"""The one way to build an aligner from a configuration.

The service, a replay, evaluation, explanation and both benchmarks each need an aligner "as the configuration
describes it"; built by hand in each place, two of them once read a default configuration instead of the
user's (`--config`, ``DYNALIGN_*``). Everything builds it here. Importing this module does not import torch:
the engine is loaded when an aligner is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aligner.config import AdaptConfig, Config, MetaConfig

if TYPE_CHECKING:
    from aligner.engine.aligner import Aligner


def build_aligner(cfg: Config, *, seed: int | None = None, meta: MetaConfig | None = None,
                  adapt: AdaptConfig | None = None) -> Aligner:
    """A fresh aligner as ``cfg`` describes it; ``seed``, ``meta`` and ``adapt`` replace the configured ones (the
    benchmarks' seeds and variants)."""
    from aligner.engine.aligner import Aligner

    return Aligner(cfg.model, meta or cfg.meta, adapt or cfg.adapt, cfg.service.pairs, cfg.publish.top_k,
                   cfg.service.seed if seed is None else seed, cfg.refine)


def aligner_from_state(cfg: Config, state: bytes) -> Aligner:
    """The aligner a checkpoint or savepoint holds, under ``cfg`` for everything the state does not fix (the
    architecture comes from the state: weights only fit the shapes they had)."""
    aligner = build_aligner(cfg)
    aligner.load_state_bytes(state)
    return aligner
