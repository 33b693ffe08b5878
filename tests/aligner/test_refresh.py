"""Deferred heavy steps: ``on_snapshot(..., defer=True)`` then ``fork().refresh()`` gives what the heavy step
would have given inline, and leaves the aligner it forked from as it was."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aligner.config import MetaConfig, RefineConfig
from aligner.engine.aligner import Aligner
from tests.aligner.test_incremental import NEVER_ADAPT, SMALL_MODEL, small_changes

# Each configuration makes a different heavy step due on the later snapshots of ``small_changes``.
HEAVY = {
    "anchors join": (NEVER_ADAPT, RefineConfig(pseudo_anchor_rounds=0)),  # snapshot 3 reveals an anchor
    "realignment": (NEVER_ADAPT, RefineConfig(warm_max_change=1e-9)),  # any changed edge realigns
    "adaptation": (dataclasses.replace(NEVER_ADAPT, every_snapshots=2), RefineConfig()),  # on schedule
}


def make(kind: str) -> Aligner:
    adapt, refine = HEAVY[kind]
    return Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=5, iterations_per_snapshot=2), adapt, top_k=5, seed=0,
                   refine=refine)


@pytest.mark.parametrize("kind", sorted(HEAVY))
def test_a_refreshed_fork_aligns_as_the_inline_heavy_step_does(kind):
    snaps = small_changes()
    inline, deferring = make(kind), make(kind)
    refreshed = 0
    for snap in snaps:
        torch.manual_seed(0)
        expected = inline.on_snapshot(snap)
        torch.manual_seed(0)
        got = deferring.on_snapshot(snap, defer=True)
        if deferring.deferred is None:
            assert expected.stats["path"] == got.stats["path"]
        else:
            assert kind.split()[0] in deferring.deferred[1] or kind == "adaptation"
            assert got.stats["path"] == "incremental" and got.stats["deferred"] == deferring.deferred[1]
            before = deferring.state_bytes()
            fork = deferring.fork()
            torch.manual_seed(0)
            got = fork.refresh()
            assert deferring.state_bytes() == before  # the fork's work leaves the original as it was
            assert fork.deferred is None and got.stats["refreshed"]
            # The same heavy step as inline: an adaptation, or a re-solve of the plan or the whole alignment.
            assert (got.stats["path"], got.stats.get("rescored")) == (expected.stats["path"],
                                                                       expected.stats.get("rescored"))
            deferring = fork
            refreshed += 1
        for want, have in zip(expected.pairs, got.pairs):
            assert (want.src, want.dst) == (have.src, have.dst)
            assert (want.candidates == have.candidates).mean() >= 0.99
            torch.testing.assert_close(torch.from_numpy(have.scores), torch.from_numpy(want.scores), atol=1e-4,
                                       rtol=1e-3)
    assert refreshed >= 1


def test_refresh_without_deferred_work_is_an_error():
    aligner = make("anchors join")
    aligner.on_snapshot(small_changes()[0], defer=True)  # the first snapshot is aligned in full all the same
    assert aligner.deferred is None
    with pytest.raises(ValueError, match="nothing was deferred"):
        aligner.refresh()
