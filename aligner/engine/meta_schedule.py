"""When and on what the initialisation is meta-learned: the pool of recent snapshots tasks are drawn from, the
meta-update iterations an adaptation earned and has not run yet, and the random stream tasks are drawn with.

An adaptation *owes* its meta-update (``meta.iterations_per_snapshot``, on the pool as it was then) instead of
running it: the service runs owed iterations while nothing waits to be aligned (:meth:`MetaSchedule.learn`),
and the next adaptation runs what is still owed first, so every adaptation starts from the same initialisation
whenever the service found time to learn. Tasks come from their own random stream, so when meta-learning runs
never changes what adaptation draws.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import numpy as np

from aligner.config import MetaConfig, ModelConfig
from aligner.engine.tasks import SnapshotInputs, draw_task
from aligner.model.meta import MetaLearner
from snapshots.snapshot import Snapshot


class MetaSchedule:
    """The aligner's meta-learning state (see the module docstring); ``cfg`` is the aligner's meta settings."""

    def __init__(self, cfg: MetaConfig, seed: int):
        self.cfg = cfg
        self.rng = np.random.default_rng([seed, 1])
        self.pool: deque[SnapshotInputs] = deque(maxlen=max(1, cfg.task_pool))
        self.iterations = 0  # meta-update iterations run so far (0: the first adaptation warms up)
        self.due = 0  # iterations owed
        self.due_pool: list[SnapshotInputs] = []  # the pool as it was when they became owed

    def owe(self) -> None:
        """An adaptation just ran: it owes ``meta.iterations_per_snapshot`` iterations on the pool as it is."""
        self.due, self.due_pool = self.cfg.iterations_per_snapshot, list(self.pool)

    def learn(self, learner: MetaLearner | None, model_cfg: ModelConfig,
              iterations: int | None = None) -> dict[str, float]:
        """Run up to ``iterations`` (default: all) of the iterations owed; returns the last one's stats. ``learner``
        is None only before the first snapshot, when nothing is owed."""
        run = self.due if iterations is None else min(iterations, self.due)
        stats: dict[str, float] = {}
        if run:
            assert learner is not None  # iterations are owed by an adaptation, which needs the learner
            stats = self.train(learner, model_cfg, run, self.due_pool)
        self.due -= run
        if not self.due:
            self.due_pool = []
        return stats

    def train(self, learner: MetaLearner, model_cfg: ModelConfig, iterations: int,
              pool: list[SnapshotInputs]) -> dict[str, float]:
        """``iterations`` meta-updates on tasks drawn from ``pool``; returns the last one's stats."""
        stats: dict[str, float] = {}
        for _ in range(iterations):
            drawn = [draw_task(pool[self._pick(len(pool))], self.cfg.seed_fraction, model_cfg, 0.5, self.rng)
                     for _ in range(self.cfg.tasks_per_iteration)]
            tasks = [t for t in drawn if t is not None]
            if not tasks:
                break
            stats = learner.meta_update(tasks, self.cfg.inner_steps)
            self.iterations += 1
        return stats

    def _pick(self, size: int) -> int:
        # Half the tasks come from the newest snapshot, the rest from the recent past, so the initialisation
        # tracks the present without forgetting what recent snapshots taught it.
        if size == 1 or self.rng.random() < 0.5:
            return size - 1
        return int(self.rng.integers(0, size - 1))

    def state(self) -> dict[str, Any]:
        """Plain data: the counts, the random stream and both pools (:meth:`SnapshotInputs.to_state`)."""
        return {"meta_due": self.due, "meta_iterations": self.iterations,
                "pool": [entry.to_state() for entry in self.pool],
                "meta_pool": [entry.to_state() for entry in self.due_pool],
                "meta_rng": self.rng.bit_generator.state}

    def load(self, state: dict[str, Any], anchors: Callable[[Snapshot], dict[tuple[str, str], np.ndarray]]) -> None:
        """Restore :meth:`state`; ``anchors`` gives a pooled snapshot's aligned anchors."""
        if "meta_iterations" not in state:
            raise KeyError("meta_iterations")
        if "meta_rng" in state:  # states saved before meta-updates were owed have none: nothing owed then
            self.rng.bit_generator.state = state["meta_rng"]
        self.due = state.get("meta_due", 0)
        self.iterations = state["meta_iterations"]
        self.pool.clear()
        self.pool.extend(SnapshotInputs.from_state(entry, anchors) for entry in state["pool"])
        self.due_pool = [SnapshotInputs.from_state(entry, anchors) for entry in state.get("meta_pool", [])]
