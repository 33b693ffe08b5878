"""Many networks at once: a pair with no anchors of its own is aligned through a pivot network, and how far
the alignments of three networks agree with each other is measured."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from aligner.config import AdaptConfig, MetaConfig, ModelConfig
from aligner.engine.aligner import Aligner
from aligner.matching.cycles import NO_MATCH, cycle_consistency
from snapshots.cutter import SnapshotCutter, SnapshotPolicy
from stream.multi_datasets import load_multi_dataset, multi_dataset_events
from tests.aligner.test_service import FAST
from tests.synthetic import write_multi_dataset

SMALL_MODEL = ModelConfig(hidden=32, embedding_dim=32, position_dim=64)


def one_snapshot(ds, train=None):
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=None, every_events=10**12))
    for event in multi_dataset_events(ds, protocol="static", windows=1, train=train):
        cutter.offer(event)
    (snapshot,) = cutter.flush()
    return snapshot


def hits_at_1(aligner: Aligner, ds, pair) -> float:
    test = [(str(i), str(j)) for i, j in ds.test[pair].tolist()]
    return aligner.alignments.evaluate(*pair, test)["hits@1"]


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """Views a, b, c and d of one graph; train anchors for a~b and b~c only (d is joined to nothing)."""
    return load_multi_dataset(write_multi_dataset(tmp_path_factory.mktemp("multi") / "abcd", names="abcd", n=150,
                                                  seed=1))


def test_a_pair_without_anchors_is_aligned_through_a_pivot_and_a_network_joined_to_nothing_is_not(three):
    aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=40), AdaptConfig(steps=5), top_k=10, seed=0)
    snapshot = one_snapshot(three)
    update = aligner.on_snapshot(snapshot)
    assert sorted(aligner.alignments.matchers) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert {(t.src, t.dst) for t in update.pairs} == {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a"), ("b", "c"),
                                                       ("c", "b")}
    hits = {pair: hits_at_1(aligner, three, pair) for pair in aligner.alignments.matchers}
    anchored = (hits[("a", "b")] + hits[("b", "c")]) / 2
    assert anchored > 0.5 and hits[("a", "c")] > 0.3 and hits[("a", "c")] > anchored - 0.25, hits  # chance: 1/150
    cycles = update.stats["cycle_consistency"]
    assert set(cycles) == {"a|b", "a|c", "b|c"} and all(0.3 < rate <= 1.0 for rate in cycles.values()), cycles

    # The unanchored pair's evidence: anchors chained through b, and the path through b that lands on the top-1.
    from aligner.tools.explain import Explainer, describe

    explainer = Explainer(aligner, snapshot, "a", "c")
    nodes = [str(i) for i, _ in three.test[("a", "c")][:30].tolist()]
    evidence = {node: explainer.explain(node, k=3) for node in nodes}
    backed = [node for node, ev in evidence.items() if ev[0].through]
    assert len(backed) >= 10 and all(p.pivot == "b" for node in backed for p in evidence[node][0].through)
    assert sum(bool(ev[0].shared_anchors) for ev in evidence.values()) >= 10
    assert "through b:" in describe(backed[0], "a", "c", evidence[backed[0]])


def test_listed_pairs_are_joined_only_through_listed_pairs(three):
    snapshot = one_snapshot(three)
    alone = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=2), AdaptConfig(steps=1), pairs="a:c", seed=0)
    assert alone.on_snapshot(snapshot) is None  # a~c has no anchors and nothing listed joins a and c
    through = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=2), AdaptConfig(steps=1), pairs="a:c,c:b,b:a", seed=0)
    assert through.on_snapshot(snapshot) is not None
    assert sorted(through.alignments.matchers) == [("a", "b"), ("a", "c"), ("b", "c")]


def test_cycle_consistency_is_one_for_composing_maps_and_drops_with_each_broken_match():
    perm_ab, perm_bc = np.array([2, 0, 1, 3]), np.array([1, 3, 0, 2])
    maps = {("a", "b"): perm_ab, ("b", "c"): perm_bc, ("a", "c"): perm_bc[perm_ab]}
    for (s, d), m in list(maps.items()):
        maps[(d, s)] = np.argsort(m)
    assert cycle_consistency(maps) == {("a", "b"): 1.0, ("a", "c"): 1.0, ("b", "c"): 1.0}
    broken = dict(maps)
    broken[("a", "c")] = maps[("a", "c")].copy()
    broken[("a", "c")][0] = (broken[("a", "c")][0] + 1) % 4  # one wrong match out of 8 checks of a~c
    assert cycle_consistency(broken)[("a", "c")] == 7 / 8
    dead = dict(maps)
    dead[("a", "c")] = np.array([NO_MATCH, *maps[("a", "c")][1:]])  # not alive: left out, not counted wrong
    assert cycle_consistency(dead)[("a", "c")] == 1.0
    assert cycle_consistency({k: v for k, v in maps.items() if "c" not in k}) == {}  # no pivot: nothing to check


def test_bench_multi_scores_every_pair_jointly_and_alone(tmp_path):
    from aligner.cli import cli

    root = write_multi_dataset(tmp_path / "abc", n=80, seed=2)
    out = tmp_path / "multi.json"
    env = {**FAST, "DYNALIGN_SERVICE_THREADS": "1"}
    result = CliRunner().invoke(cli, ["bench", str(root), "--protocol", "multi", "--seeds", "1", "--json", str(out)],
                                env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    joint, alone = data["per_seed"][0]["joint"], data["per_seed"][0]["alone"]
    assert set(joint["pairs"]) == set(alone["pairs"]) == {"a~b", "a~c", "b~c"}
    assert joint["pairs"]["a~c"]["train_anchors"] == 0 and alone["pairs"]["a~c"]["train_anchors"] > 0  # composed
    assert all(0.0 <= m["hits@1"] <= 1.0 and m["test_anchors"] > 0 for m in joint["pairs"].values())
    assert set(joint["cycle_consistency"]) == set(alone["cycle_consistency"]) == {"a~b", "a~c", "b~c"}
    signal = joint["consistency_signal"]["a~c"]
    assert 0.0 <= signal["agreeing_share"] <= 1.0
    assert "a~c" in result.output and "joint" in result.output
    bad = CliRunner().invoke(cli, ["bench", str(tmp_path), "--protocol", "multi"])
    assert bad.exit_code == 2 and "no networks/ folder" in bad.output
    bad = CliRunner().invoke(cli, ["bench", str(root), "--protocol", "multi", "--variants", "joint,nope"])
    assert bad.exit_code == 2 and "unknown variant(s) nope" in bad.output


def test_bench_multi_refuses_a_train_share_for_no_pair_before_any_work(tmp_path):
    from aligner.cli import cli

    root = write_multi_dataset(tmp_path / "abc", n=40, seed=3)
    for share, message in (("a~d=0.1", "no such pair"), ("a~b=2", "within [0, 1]"), ("a~b", "expected PAIR=SHARE")):
        bad = CliRunner().invoke(cli, ["bench", str(root), "--protocol", "multi", "--train-share", share])
        assert bad.exit_code == 2 and message in bad.output, bad.output
