"""The aligner's state as one plain-data file: each part hands its own state (the learner, the networks, the
adaptation policy, self-calibration, the meta-learning schedule, the matchers, the quality monitor) and this
module assembles and restores them, through :mod:`aligner.engine.state_codec` (never pickle).

The layout is flat and its keys are the names states have always used, so states written by earlier versions
load; what they lack has a documented default in the part that owns it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from aligner.config import ModelConfig
from aligner.engine.drift import QualityMonitor
from aligner.engine.network_state import networks_from_state, networks_to_state
from aligner.engine.state_codec import StateFormatError, decode, encode
from aligner.matching.incremental import PairMatcher
from aligner.model.features import anchors_of
from aligner.model.meta import build_learner

if TYPE_CHECKING:
    from aligner.engine.aligner import Aligner


def aligner_state_bytes(aligner: "Aligner") -> bytes:
    """Everything needed to continue exactly where ``aligner`` is, the meta-learning task pool included (its
    snapshots in the store's compact encoding, with the temporal state each was seen with), so a restarted or
    savepoint-seeded worker meta-learns exactly as an uninterrupted one."""
    learner = aligner.learner
    return encode({
        "learner": None if learner is None else learner.state_dict(),
        "optimizer": None if learner is None else learner.optimizer.state_dict(),
        "attr_dim": None if learner is None else learner.model.attr_dim,
        "model_cfg": dataclasses.asdict(aligner.model_cfg), "algorithm": aligner.meta.cfg.algorithm,
        "fast": aligner.fast, "known_anchors": aligner.known_anchors, "rng": aligner.rng.bit_generator.state,
        **networks_to_state(aligner.networks), **aligner.policy.state(), **aligner.calibrator.state(),
        **aligner.meta.state(), "matchers": {pair: m.state() for pair, m in aligner.alignments.matchers.items()},
        "monitor": aligner.monitor.state(),
    })


def load_aligner_state(aligner: "Aligner", data: bytes) -> None:
    """Restore :func:`aligner_state_bytes` into ``aligner``. Plain data only: a state in any other form, an older
    dynalign's pickled one included, raises :class:`aligner.engine.state_codec.StateFormatError`, as does one
    missing a part that has no default."""
    state = decode(data)
    try:
        monitor = QualityMonitor.from_state(state["monitor"])
        networks = networks_from_state(state)
        fast, known_anchors, rng = state["fast"], state["known_anchors"], state["rng"]
        aligner.policy.load(state)
        aligner.meta.load(state, lambda snapshot: anchors_of(snapshot, aligner.aligned_pairs(snapshot)))
    except KeyError as missing:
        raise StateFormatError(f"aligner state: {missing.args[0]!r} is missing") from None
    # The checkpoint's architecture wins over the current configuration: weights only fit the shapes they had.
    aligner.model_cfg = ModelConfig(**state["model_cfg"])
    aligner.meta.cfg = dataclasses.replace(aligner.meta.cfg, algorithm=state["algorithm"])
    if state["learner"] is not None:
        aligner.learner = build_learner(aligner.model_cfg, aligner.meta.cfg, state["attr_dim"], aligner.seed)
        aligner.learner.load_state_dict(state["learner"])
        aligner.learner.optimizer.load_state_dict(state["optimizer"])
    aligner.fast, aligner.known_anchors, aligner.monitor = fast, known_anchors, monitor
    aligner.networks.clear()  # the same dict: the alignments read it
    aligner.networks.update(networks)
    aligner.alignments.matchers = {pair: PairMatcher.from_state(m, networks[pair[0]].view(), networks[pair[1]].view())
                                   for pair, m in state["matchers"].items()}
    aligner.rng.bit_generator.state = rng
    aligner.calibrator.load(state)
    if aligner.calibrator.calibrated is not None:
        aligner.alignments.refine = aligner.calibrator.calibrated.applied(aligner.alignments.refine)
