"""The aligner end to end on synthetic snapshots: it must learn, for every meta-learning algorithm."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from aligner.config import AdaptConfig, MetaConfig, ModelConfig
from aligner.engine.aligner import Aligner
from snapshots.cutter import SnapshotCutter, SnapshotPolicy
from stream.datasets import dataset_events, load_dataset
from tests.synthetic import write_pair_dataset

SMALL_MODEL = ModelConfig(hidden=32, embedding_dim=32, position_dim=64)


def snapshots_of(path, windows: int = 3):
    ds = load_dataset(path)
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=3600.0))
    snaps = []
    for event in dataset_events(ds, protocol="stream", windows=windows, seed=0, window_seconds=3600.0):
        snaps += cutter.offer(event)
    return ds, snaps + cutter.flush()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return snapshots_of(write_pair_dataset(tmp_path_factory.mktemp("syn") / "pair", n=150, seed=1))


def test_aligns_far_above_chance_and_publishes_every_alive_node(dataset):
    ds, snaps = dataset
    aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=40, iterations_per_snapshot=5), AdaptConfig(steps=5),
                      top_k=10, seed=0)
    updates = [aligner.on_snapshot(s) for s in snaps]
    assert len(snaps) == 3 and all(u is not None for u in updates)
    last = updates[-1]
    test = [(str(a), str(b)) for a, b in ds.test.tolist()]
    metrics = aligner.alignments.evaluate("left", "right", test)
    assert metrics["unknown"] == 0
    assert metrics["hits@1"] > 0.3, metrics  # chance is 1/150
    assert metrics["hits@10"] >= metrics["hits@1"]
    for topk in last.pairs:
        alive = snaps[-1].networks[topk.src].alive
        assert sorted(topk.src_index.tolist()) == np.flatnonzero(alive).tolist()
        assert topk.candidates.shape == (len(topk.src_index), 10)
        assert bool((np.diff(topk.scores, axis=1) <= 1e-6).all())  # best first
    assert {(t.src, t.dst) for t in last.pairs} == {("left", "right"), ("right", "left")}


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile", "metasgd"])
def test_every_meta_algorithm_trains_and_adapts(tmp_path, algorithm):
    ds, snaps = snapshots_of(write_pair_dataset(tmp_path / "p", n=60, seed=2), windows=2)
    aligner = Aligner(SMALL_MODEL, MetaConfig(algorithm=algorithm, warmup_iterations=3, iterations_per_snapshot=2),
                      AdaptConfig(steps=2), top_k=5, seed=0)
    before = {n: p.detach().clone() for n, p in aligner_params(aligner, snaps[0])}
    update = aligner.on_snapshot(snaps[1])
    assert update is not None and np.isfinite(update.stats["outer_loss"])
    moved = any(not torch.equal(before[n], p) for n, p in aligner.learner.model.named_parameters())
    assert moved, "meta-training must change the initialisation"
    if algorithm == "metasgd":
        rates = aligner.learner.inner_lr_summary()
        assert rates and any(abs(r - 0.05) > 1e-6 for r in rates.values()), "Meta-SGD must learn its step sizes"


def aligner_params(aligner: Aligner, first_snapshot):
    aligner.on_snapshot(first_snapshot)
    return list(aligner.learner.model.named_parameters())


def test_state_round_trip_restores_embeddings_and_continues(dataset):
    ds, snaps = dataset
    cfg = (SMALL_MODEL, MetaConfig(warmup_iterations=5, iterations_per_snapshot=2), AdaptConfig(steps=2))
    a = Aligner(*cfg, top_k=5, seed=3)
    a.on_snapshot(snaps[0])
    blob = a.state_bytes()
    b = Aligner(*cfg, top_k=5, seed=99)
    b.load_state_bytes(blob)
    for net in a.networks:
        assert torch.equal(a.networks[net].embeddings, b.networks[net].embeddings)
        assert torch.equal(a.networks[net].hidden, b.networks[net].hidden)
    for (na, pa), (nb, pb) in zip(a.learner.state_dict().items(), b.learner.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    assert b.on_snapshot(snaps[1]) is not None


def test_no_anchors_means_no_update(tmp_path):
    ds, snaps = snapshots_of(write_pair_dataset(tmp_path / "p", n=40, seed=3), windows=2)
    stripped = dataclasses.replace(snaps[0], anchors={})
    assert Aligner(SMALL_MODEL, MetaConfig(), AdaptConfig()).on_snapshot(stripped) is None


def test_configured_pairs_are_validated(dataset):
    _, snaps = dataset
    with pytest.raises(ValueError, match="pairs"):
        Aligner(SMALL_MODEL, MetaConfig(), AdaptConfig(), pairs="left-right").aligned_pairs(snaps[0])
    assert Aligner(SMALL_MODEL, MetaConfig(), AdaptConfig(), pairs="right:left").aligned_pairs(snaps[0]) == [
        ("left", "right")]


def test_pseudo_anchors_are_confident_mutual_matches_of_unanchored_nodes_right_more_often_than_top_1(tmp_path):
    from aligner.bench.static import static_snapshot
    from aligner.config import RefineConfig
    from stream.datasets import split_anchors

    ds = load_dataset(write_pair_dataset(tmp_path / "p", n=150, seed=4))
    train, test = split_anchors(ds, 0.1, seed=0)
    snapshot = static_snapshot(ds, train)
    off = RefineConfig(pseudo_anchor_rounds=0, pseudo_anchor_confidence=0.5)
    aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=20), AdaptConfig(steps=5), seed=0, refine=off)
    assert aligner.on_snapshot(snapshot).stats["pseudo_anchors"] == 0
    inputs = aligner.meta.pool[-1]
    (pair,) = inputs.anchors
    known = inputs.anchors[pair]
    expanded, added = aligner.alignments.with_pseudo_anchors(inputs)
    rows = expanded.anchors[pair]
    assert added > len(known) and np.array_equal(rows[: len(known)], known)  # the known ones kept, first
    found = rows[len(known):]
    assert not set(found[:, 0]) & set(known[:, 0]) and not set(found[:, 1]) & set(known[:, 1])
    matcher = aligner.alignments.matchers[pair]
    to_b, conf = matcher.top("ab")
    to_a, _ = matcher.top("ba")
    for i, j in found.tolist():
        assert to_b[i, 0] == j and to_a[j, 0] == i and conf[i, 0] >= 0.5
    ids = snapshot.networks
    truth = {str(s): str(t) for s, t in ds.anchors.tolist()}
    a, b = pair if pair[0] == ds.source_net else pair[::-1]
    col_a, col_b = (0, 1) if pair[0] == a else (1, 0)
    right = sum(truth.get(ids[a].node_ids[r[col_a]]) == ids[b].node_ids[r[col_b]] for r in found.tolist())
    # The premise: the pairs the plan is sure of both ways are right more often than its top-1 in general.
    hits1 = aligner.alignments.evaluate(ds.source_net, ds.target_net, [(str(s), str(t)) for s, t in test.tolist()])["hits@1"]
    assert right / added > max(hits1, 0.5), (right, added, hits1)
    assert inputs.anchors[pair] is known  # the snapshot's own inputs (the meta-learning pool's) are unchanged

    on = dataclasses.replace(off, pseudo_anchor_rounds=1)
    again = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=20), AdaptConfig(steps=5), seed=0, refine=on)
    stats = again.on_snapshot(snapshot).stats
    assert stats["pseudo_anchors"] == added and stats["anchors"] == len(known)
    assert again.policy.anchors_at_adaptation == len(known)  # the adaptation schedule counts real anchors only
    assert len(again.networks[a].entities) == len(known) + added  # positions are seeded by both
    assert {n: s.pseudo_seeds for n, s in again.networks.items()} == {a: added, b: added}  # ...and new anchors join as often as without them
    restored = Aligner(SMALL_MODEL, MetaConfig(), AdaptConfig(), seed=1, refine=on)
    restored.load_state_bytes(again.state_bytes())
    assert [s.pseudo_seeds for s in restored.networks.values()] == [s.pseudo_seeds for s in again.networks.values()]


def test_past_the_sketch_budget_seeds_come_from_a_stable_pool_and_alignment_still_works(dataset, monkeypatch):
    """Sketching positions costs nodes x seeds: past ``NodePPR.MAX_CELLS`` a pair seeds its coordinates and its
    tasks from a pool of the budget's size, which new anchors leave mostly as it was."""
    from aligner.engine.tasks import SnapshotInputs, draw_task
    from aligner.model.features import GraphTensors, NodePPR

    ds, snaps = dataset
    last = snaps[-1]
    graphs = {n: GraphTensors.from_snapshot(last.networks[n]) for n in ("left", "right")}
    anchors = {("left", "right"): last.anchors[("left", "right")]}
    n = max(g.num_nodes for g in graphs.values())
    monkeypatch.setattr(NodePPR, "MAX_CELLS", n * 12)
    inputs = SnapshotInputs(last, graphs, {"left": None, "right": None}, anchors)
    rows = anchors[("left", "right")]
    assert len(rows) > 20
    pool = inputs.seed_pools()[("left", "right")]
    assert len(pool) == 12 and {tuple(r) for r in pool} <= {tuple(r) for r in rows}
    fewer = SnapshotInputs(last, graphs, inputs.hidden, {("left", "right"): rows[:-5]}).seed_pools()[("left", "right")]
    assert len({tuple(r) for r in fewer} & {tuple(r) for r in pool}) >= 7  # five anchors fewer: most stay
    task = draw_task(inputs, 0.7, SMALL_MODEL, 0.3, np.random.default_rng(0))
    seeds = anchor_rows(task.labels["all"][("left", "right")].numpy())
    assert len(seeds) == len(rows) - 12 and not anchor_rows(pool) & seeds  # the 12 pool anchors seed, the rest label

    aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=40, iterations_per_snapshot=5), AdaptConfig(steps=5),
                      top_k=10, seed=0)
    for s in snaps:
        aligner.on_snapshot(s)
    assert len(aligner.networks["left"].entities) < len(rows)
    metrics = aligner.alignments.evaluate("left", "right", [(str(a), str(b)) for a, b in ds.test.tolist()])
    assert metrics["hits@1"] > 0.1, metrics  # chance is 1/150


def anchor_rows(rows: np.ndarray) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in rows}


def test_a_task_scores_at_most_loss_cells_labels_times_nodes(dataset, monkeypatch):
    """The loss ranks each label against every node of the other network; past ``LOSS_CELLS`` a task keeps a
    random share of its labels (another one each task), below it all of them."""
    from aligner.engine import tasks
    from aligner.model.features import GraphTensors

    _, snaps = dataset
    last = snaps[-1]
    graphs = {n: GraphTensors.from_snapshot(last.networks[n]) for n in ("left", "right")}
    inputs = tasks.SnapshotInputs(last, graphs, {"left": None, "right": None},
                                  {("left", "right"): last.anchors[("left", "right")]})
    n = max(g.num_nodes for g in graphs.values())
    whole = tasks.draw_task(inputs, 0.5, SMALL_MODEL, 0.5, np.random.default_rng(0)).labels["all"][("left", "right")]
    monkeypatch.setattr(tasks, "LOSS_CELLS", n * 10)
    drawn = [tasks.draw_task(inputs, 0.5, SMALL_MODEL, 0.5, np.random.default_rng(s)) for s in range(2)]
    kept = [anchor_rows(t.labels["all"][("left", "right")].numpy()) for t in drawn]
    assert len(whole) > 10 and all(len(k) == 10 for k in kept) and kept[0] != kept[1]
    assert all(len(t.labels["support"][("left", "right")]) + len(t.labels["query"][("left", "right")]) == 10
               for t in drawn)
