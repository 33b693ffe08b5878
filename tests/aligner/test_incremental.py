"""The incremental path: same embeddings and top-k as a full recomputation with the same parameters, for less."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from aligner.config import AdaptConfig, MetaConfig, ModelConfig, RefineConfig
from aligner.engine.aligner import Aligner
from aligner.engine.incremental_path import edges_changed_since_alignment
from aligner.model.features import GraphTensors
from snapshots.cutter import SnapshotCutter, SnapshotPolicy
from stream.datasets import dataset_events, load_dataset
from stream.events import ADD_ANCHOR, ADD_EDGE, REMOVE_EDGE, SET_ATTR, Event
from tests.synthetic import write_pair_dataset

SMALL_MODEL = ModelConfig(hidden=32, embedding_dim=32, position_dim=64)
NEVER_ADAPT = AdaptConfig(steps=3, every_snapshots=0, anchor_growth=0.0, drift_delta=1e-12, shift_threshold=1e9,
                          embedding_tolerance=0.0, anchor_refresh=0.0)


def small_changes(side: int = 20, seed: int = 3) -> list:
    """A grid network and a permuted copy with anchors, as one snapshot, then four snapshots of a few added and
    removed edges and an attribute change each. A grid keeps two-hop neighbourhoods small, as most of a large
    sparse social graph is; around a hub, two hops reach nearly everything and nothing is saved."""
    rng = np.random.default_rng(seed)
    n = side * side
    perm = rng.permutation(n)
    grid = [(r * side + c, r * side + c + 1) for r in range(side) for c in range(side - 1)]
    grid += [(r * side + c, (r + 1) * side + c) for r in range(side - 1) for c in range(side)]
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=None, every_events=10**9))
    t = 1000.0
    for i in range(n):
        cats = np.eye(6)[rng.integers(0, 6)]
        cutter.offer(Event(op=SET_ATTR, time=t, net="left", u=str(i), attrs=tuple(cats.tolist())))
        cutter.offer(Event(op=SET_ATTR, time=t, net="right", u=str(perm[i]), attrs=tuple(cats.tolist())))
    for i in rng.permutation(n)[: n // 4].tolist():
        cutter.offer(Event(op=ADD_ANCHOR, time=t, net="left", u=str(i), to="right", v=str(perm[i])))
    for u, v in grid:
        cutter.offer(Event(op=ADD_EDGE, time=t, net="left", u=str(u), v=str(v)))
        if rng.random() < 0.95:
            cutter.offer(Event(op=ADD_EDGE, time=t, net="right", u=str(perm[u]), v=str(perm[v])))
    snaps = cutter.flush()
    for step in range(4):
        t += 1.0
        for _ in range(3):
            u = int(rng.integers(0, n - side))
            cutter.offer(Event(op=ADD_EDGE, time=t, net="left", u=str(u), v=str(u + side + 1)))
            cutter.offer(Event(op=ADD_EDGE, time=t, net="right", u=str(perm[u]), v=str(perm[u + side + 1])))
        u, v = grid[int(rng.integers(0, len(grid)))]
        cutter.offer(Event(op=REMOVE_EDGE, time=t, net="left", u=str(u), v=str(v)))
        node = str(int(rng.integers(0, n)))
        cutter.offer(Event(op=SET_ATTR, time=t, net="right", u=node, attrs=tuple(np.eye(6)[step].tolist())))
        if step == 2:  # a new anchor: its entity joins every reachable node's position sketch
            i = int(rng.integers(0, n))
            cutter.offer(Event(op=ADD_ANCHOR, time=t, net="left", u=str(i), to="right", v=str(perm[i])))
        snaps += cutter.flush()
    return snaps


@pytest.mark.parametrize("tolerance", [0.0, 0.05])
def test_incremental_top_k_equals_full_recomputation(tmp_path, tolerance):
    """Exact with no tolerance; with one, every stored embedding is within it of the exact one, and the top-k is
    still exactly what re-scoring every pair under the stored embeddings and context gives."""
    snaps = small_changes()
    adapt = dataclasses.replace(NEVER_ADAPT, embedding_tolerance=tolerance)
    aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=10), adapt, top_k=10, seed=0)
    first = aligner.on_snapshot(snaps[0])
    assert first.stats["path"] == "adaptation"
    for step, snap in enumerate(snaps[1:]):
        update = aligner.on_snapshot(snap)
        assert update.stats["path"] == "incremental"
        # Only the neighbourhood of the change is re-encoded (but a new anchor moves every reachable position)...
        for net, count in update.stats["reencoded"].items():
            assert 0 < count < 0.5 * snap.networks[net].num_nodes or step == 2
        # ... yet every embedding equals a forward pass over the whole graph with the same weights and state,
        fast = aligner.learner.clone(second_order=False)
        fast.params = aligner.fast
        for net in ("left", "right"):
            g = GraphTensors.from_snapshot(snap.networks[net])
            with torch.no_grad():
                z, _ = fast(g.attrs, aligner.networks[net].position_inputs, g.edge_index, g.edge_weight, aligner.networks[net].hidden_in)
            if tolerance:
                assert float((aligner.networks[net].embeddings - z).norm(dim=1).max()) <= tolerance + 1e-5
                reranked = update.stats["reranked"][net]
                assert reranked < update.stats["reencoded"][net] or step == 2
            else:
                torch.testing.assert_close(aligner.networks[net].embeddings, z, atol=1e-5, rtol=0)
        # ... and every top-k equals re-scoring every pair under the same transport context.
        for matcher in aligner.alignments.matchers.values():
            reference = matcher.rescored()
            for d in ("ab", "ba"):
                alive = matcher._src(d).alive
                idx, conf = matcher.top(d)
                ref_idx, ref_conf = reference.top(d)
                torch.testing.assert_close(conf[alive], ref_conf[alive], atol=1e-5, rtol=1e-4)
                differ = idx[alive] != ref_idx[alive]
                # Where the order differs the candidates are tied: identical confidence.
                assert torch.allclose(conf[alive][differ], ref_conf[alive][differ])
                assert differ.float().mean() < 0.01


def test_published_rows_cover_new_nodes_and_changed_rows_only_are_rescored(tmp_path):
    snaps = small_changes(side=24, seed=5)
    aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=5), NEVER_ADAPT, top_k=5, seed=0)
    aligner.on_snapshot(snaps[0])
    update = aligner.on_snapshot(snaps[1])
    rescored = update.stats["rescored"]["left:right"]
    assert 0 < rescored["ab"]["rescored_rows"] < 24 * 24 // 2 and rescored["ab"]["patched_rows"] > 0
    for pair in update.pairs:
        alive = snaps[1].networks[pair.src].alive
        assert len(pair.src_index) == int(alive.sum())


def test_a_change_that_reaches_most_nodes_rescores_every_pair_at_once():
    """Past the break-even (dirty rows x all + clean rows x dirty columns > all pairs) the update re-scores
    everything from one score matrix: the same top-k, and every row counted as re-scored."""
    snaps = small_changes(side=12, seed=2)
    aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=5), NEVER_ADAPT, top_k=5, seed=0)
    aligner.on_snapshot(snaps[0])
    matcher = aligner.alignments.matchers[("left", "right")]
    va, vb = aligner.networks["left"].view(), aligner.networks["right"].view()
    half_a, half_b = torch.arange(0, va.n, 2), torch.arange(0, vb.n, 2)
    stats = matcher.update(va, vb, half_a, half_b)
    assert stats["ab"] == {"rescored_rows": va.n, "patched_rows": 0, "uncertified_rows": 0}
    reference = matcher.rescored()
    for d in ("ab", "ba"):
        for got, want in zip(matcher.top(d), reference.top(d)):
            assert torch.equal(got, want)


def test_state_round_trip_continues_identically(tmp_path):
    snaps = small_changes(side=14, seed=7)
    one = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=5), NEVER_ADAPT, top_k=5, seed=0)
    for s in snaps[:2]:
        one.on_snapshot(s)
    two = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=5), NEVER_ADAPT, top_k=5, seed=0)
    two.load_state_bytes(one.state_bytes())
    a, b = one.on_snapshot(snaps[2]), two.on_snapshot(snaps[2])
    for x, y in zip(a.pairs, b.pairs):
        assert np.array_equal(x.candidates, y.candidates) and np.allclose(x.scores, y.scores)


def stream_snapshots(tmp_path, windows: int = 6) -> list:
    ds = load_dataset(write_pair_dataset(tmp_path / "pair", n=150, seed=1))
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=3600.0))
    snaps = []
    for event in dataset_events(ds, protocol="stream", windows=windows, seed=0, window_seconds=3600.0):
        snaps += cutter.offer(event)
    return snaps + cutter.flush()


@pytest.mark.parametrize("every, growth, expected", [
    # anchors arrive evenly: 1x, 2x (grew 100%), 3x (50%), 4x (33%), 5x (66% since 3x), 6x (20%)
    (0, 0.5, ["first", "anchors", "anchors", "-", "anchors", "-"]),
    (2, 0.0, ["first", "-", "schedule", "-", "schedule", "-"]),
])
def test_adaptation_runs_on_schedule_and_on_anchor_growth(tmp_path, every, growth, expected):
    adapt = AdaptConfig(steps=2, every_snapshots=every, anchor_growth=growth, shift_threshold=1e9)
    aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=5, iterations_per_snapshot=2), adapt, seed=0)
    stats = [aligner.on_snapshot(s).stats for s in stream_snapshots(tmp_path)]
    assert [st.get("reason", "-").split()[0].rstrip(":") for st in stats] == expected
    assert stats[-1]["prequential_anchors"] > 0  # new anchors were scored before they were learnt from


def test_restart_with_restored_task_pool_continues_bit_identically(tmp_path):
    snaps = stream_snapshots(tmp_path, windows=4)
    adapt = AdaptConfig(steps=2, incremental=False)
    meta = MetaConfig(warmup_iterations=4, iterations_per_snapshot=3)
    one = Aligner(SMALL_MODEL, meta, adapt, seed=0)
    for s in snaps[:3]:
        one.on_snapshot(s)
    two = Aligner(SMALL_MODEL, meta, adapt, seed=0)
    two.load_state_bytes(one.state_bytes())
    assert [e.snapshot.id for e in two.meta.pool] == [e.snapshot.id for e in one.meta.pool]
    a, b = one.on_snapshot(snaps[3]), two.on_snapshot(snaps[3])  # meta-learning draws tasks from the pool
    for x, y in zip(a.pairs, b.pairs):
        assert np.array_equal(x.candidates, y.candidates) and np.array_equal(x.scores, y.scores)


def test_catching_up_on_several_snapshots_at_once_equals_a_full_recomputation():
    """The service aligns snapshots that queued up as one step (:func:`aligner.service.jobs.coalesce`): the union of
    their changes is all the incremental path needs to be exact for the newest one."""
    from aligner.service.jobs import coalesce

    snaps = small_changes()
    aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=10), NEVER_ADAPT, top_k=10, seed=0)
    aligner.on_snapshot(snaps[0])
    update = aligner.on_snapshot(coalesce(snaps[1:]))
    assert update.snapshot_id == snaps[-1].id and update.stats["path"] == "incremental"
    fast = aligner.learner.clone(second_order=False)
    fast.params = aligner.fast
    for net in ("left", "right"):
        g = GraphTensors.from_snapshot(snaps[-1].networks[net])
        with torch.no_grad():
            z, _ = fast(g.attrs, aligner.networks[net].position_inputs, g.edge_index, g.edge_weight, aligner.networks[net].hidden_in)
        torch.testing.assert_close(aligner.networks[net].embeddings, z, atol=1e-5, rtol=0)
    for matcher in aligner.alignments.matchers.values():
        reference = matcher.rescored()
        for d in ("ab", "ba"):
            alive = matcher._src(d).alive
            torch.testing.assert_close(matcher.top(d)[1][alive], reference.top(d)[1][alive], atol=1e-5, rtol=1e-4)


def test_a_few_new_anchors_wait_until_they_are_worth_a_re_solve():
    snaps = small_changes()
    # Without pseudo-anchors: the revealed anchor would most likely be one already, and so change nothing.
    real_only = RefineConfig(pseudo_anchor_rounds=0)
    waits = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=5), dataclasses.replace(NEVER_ADAPT, anchor_refresh=0.5),
                    top_k=5, seed=0, refine=real_only)
    joins = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=5), NEVER_ADAPT, top_k=5, seed=0, refine=real_only)
    for aligner in (waits, joins):
        for snap in snaps[:3]:
            update = aligner.on_snapshot(snap)
        assert update.stats["path"] == "incremental"
    # The next snapshot reveals one anchor: a re-solve for one, none for the other, which keeps its coordinates.
    assert joins.on_snapshot(snaps[3]).stats["rescored"]["left:right"] == "plan warm-started: new anchors"
    assert isinstance(waits.on_snapshot(snaps[3]).stats["rescored"]["left:right"], dict)
    assert len(joins.networks["left"].entities) == len(waits.networks["left"].entities) + 1


def test_an_anchor_that_confirms_a_pseudo_anchor_moves_no_coordinate():
    snaps = small_changes()
    aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=5), NEVER_ADAPT, top_k=5, seed=0)
    for snap in snaps[:3]:
        aligner.on_snapshot(snap)
    (i, j), = ({tuple(r) for r in snaps[3].anchors[("left", "right")].tolist()}
               - {tuple(r) for r in snaps[2].anchors[("left", "right")].tolist()})
    left, right = dict(aligner.networks["left"].entities), dict(aligner.networks["right"].entities)
    assert len(left) > len(snaps[2].anchors[("left", "right")])  # pseudo-anchors seed positions too
    assert i in left and right.get(j) == left[i]  # the revealed pair is one of them already
    seeds = {net: list(aligner.networks[net].entities) for net in ("left", "right")}
    assert isinstance(aligner.on_snapshot(snaps[3]).stats["rescored"]["left:right"], dict)  # no re-solve
    assert {net: aligner.networks[net].entities for net in seeds} == seeds


def test_an_anchor_that_contradicts_a_pseudo_anchor_seeds_its_other_node():
    snaps = small_changes()
    aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=5), NEVER_ADAPT, top_k=5, seed=0)
    for snap in snaps[:3]:
        aligner.on_snapshot(snap)
    real = snaps[3].anchors[("left", "right")]
    right = dict(aligner.networks["right"].entities)
    i, key = next((i, key) for i, key in aligner.networks["left"].entities
                  if i not in set(real[:, 0].tolist()) and key in right.values())
    # On this small grid pseudo-anchors seed every node: the contradicting partner is another's pseudo-anchor.
    other = next(j for j, k in aligner.networks["right"].entities if k != key and j not in set(real[:, 1].tolist()))
    contradicting = dataclasses.replace(snaps[3], anchors={("left", "right"): np.vstack([real, [[i, other]]])})
    update = aligner.on_snapshot(contradicting)
    assert update.stats["rescored"]["left:right"] in ("plan warm-started: new anchors", "plan solved again: new anchors")
    assert (other, key) in aligner.networks["right"].entities  # the same coordinate as its left partner's
    assert sum(1 for _, k in aligner.networks["left"].entities if k == key) == 1  # the left node is not seeded twice


def test_the_re_solve_starts_from_the_last_plan_only_while_the_graph_is_mostly_the_same():
    """A few changed edges since everything was aligned: the plan is re-solved warm. Past
    ``refine.warm_max_change`` of a network's edges (here: any change at all) everything is aligned afresh,
    and the changes are counted from there."""
    snaps = small_changes()
    graphs = {net: GraphTensors.from_snapshot(snaps[3].networks[net]) for net in ("left", "right")}
    outcomes, changed = [], []
    for max_change in (0.05, 0.0):
        aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=5), NEVER_ADAPT, top_k=5, seed=0,
                          refine=RefineConfig(warm_max_change=max_change, pseudo_anchor_rounds=0))
        for snap in snaps[:4]:
            update = aligner.on_snapshot(snap)
        outcomes.append(update.stats["rescored"]["left:right"])
        changed.append(edges_changed_since_alignment(aligner.networks, graphs))
    assert outcomes == ["plan warm-started: new anchors", "aligned afresh: edges changed"]
    assert 0.0 < changed[0] < 0.05 and changed[1] == 0.0


def test_the_re_solve_counts_changed_edges_not_touched_nodes():
    """Half the nodes touched by attribute changes, no edge changed: the plan's structure still fits, so the
    re-solve that a new anchor asks for starts warm. An eighth of the edges rewired: everything afresh."""
    side, rng = 12, np.random.default_rng(5)
    n = side * side
    grid = [(r * side + c, r * side + c + 1) for r in range(side) for c in range(side - 1)]
    grid += [(r * side + c, (r + 1) * side + c) for r in range(side - 1) for c in range(side)]
    outcomes = []
    for rewired in (0, len(grid) // 8):
        cutter = SnapshotCutter(SnapshotPolicy(window_seconds=None, every_events=10**9))
        for net in ("left", "right"):
            for u, v in grid:
                cutter.offer(Event(op=ADD_EDGE, time=1.0, net=net, u=str(u), v=str(v)))
        for i in range(0, n, 4):
            cutter.offer(Event(op=ADD_ANCHOR, time=1.0, net="left", u=str(i), to="right", v=str(i)))
        snaps = cutter.flush()
        for i in range(0, n, 2):
            for net in ("left", "right"):
                cutter.offer(Event(op=SET_ATTR, time=2.0, net=net, u=str(i), attrs=(1.0, 0.0)))
        for k in rng.permutation(len(grid))[:rewired].tolist():
            u, v = grid[k]
            cutter.offer(Event(op=REMOVE_EDGE, time=2.0, net="left", u=str(u), v=str(v)))
            cutter.offer(Event(op=ADD_EDGE, time=2.0, net="left", u=str(u), v=str((v + side + 1) % n)))
        cutter.offer(Event(op=ADD_ANCHOR, time=2.0, net="left", u="1", to="right", v="1"))
        snaps += cutter.flush()
        aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=2), NEVER_ADAPT, top_k=5, seed=0,
                          refine=RefineConfig(pseudo_anchor_rounds=0))
        for snap in snaps:
            update = aligner.on_snapshot(snap)
        assert len(snaps[-1].networks["left"].changed) >= n // 2
        outcomes.append(update.stats["rescored"]["left:right"])
    assert outcomes == ["plan warm-started: new anchors", "aligned afresh: edges changed"]


def test_when_the_owed_meta_update_runs_changes_no_alignment(tmp_path):
    """The service runs meta-update iterations whenever nothing waits to be aligned; one that always finds the
    time and one that never does (and pays at the next adaptation) publish the same alignments."""
    adapt = AdaptConfig(steps=2, every_snapshots=2, anchor_growth=0.0, shift_threshold=1e9)
    meta = MetaConfig(warmup_iterations=5, iterations_per_snapshot=3)
    eager, lazy = (Aligner(SMALL_MODEL, meta, adapt, seed=0) for _ in range(2))
    owed = []
    for snap in stream_snapshots(tmp_path):
        a, b = eager.on_snapshot(snap), lazy.on_snapshot(snap)
        owed.append(eager.meta_due)
        eager.learn(1)
        eager.learn()
        for x, y in zip(a.pairs, b.pairs):
            assert np.array_equal(x.candidates, y.candidates) and np.array_equal(x.scores, y.scores)
    assert max(owed) == 3 and eager.meta_due == 0 and lazy.meta_due == 3
    assert eager.meta.iterations == lazy.meta.iterations + 3


def test_a_warm_realignment_lands_near_a_cold_one_for_fewer_rounds():
    """``refine.warm_realignment``: the realignment's first plan starts from the last one (``warm_rounds``
    rounds instead of ``rounds``) and ranks nearly as a cold solve does."""
    snaps = small_changes()
    tops = []
    for warm in (False, True):
        aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=5), NEVER_ADAPT, top_k=5, seed=0,
                          refine=RefineConfig(warm_max_change=0.0, warm_realignment=warm))
        for snap in snaps[:3]:
            update = aligner.on_snapshot(snap)
        assert update.stats["rescored"]["left:right"] == "aligned afresh: edges changed"
        tops.append(update.pairs[0])
    agreement = (tops[0].candidates[:, 0] == tops[1].candidates[:, 0]).mean()
    assert 0.9 <= agreement, agreement
    assert not np.array_equal(tops[0].scores, tops[1].scores)  # a different solve, not the same one twice
