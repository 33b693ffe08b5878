"""Self-calibration: the refine setting is chosen on held-back train anchors, follows the data, and persists."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from aligner.bench.static import static_snapshot
from aligner.config import AdaptConfig, ConfigError, MetaConfig, ModelConfig, RefineConfig, load_config
from aligner.engine.aligner import Aligner
from aligner.matching.calibration import RefineSetting
from stream.datasets import load_dataset
from tests.synthetic import write_pair_dataset

SMALL_MODEL = ModelConfig(hidden=32, embedding_dim=32, position_dim=64)
META = MetaConfig(warmup_iterations=20, iterations_per_snapshot=2)


def aligner_for(refine: RefineConfig, seed: int = 0) -> Aligner:
    return Aligner(SMALL_MODEL, META, AdaptConfig(steps=3), top_k=5, seed=seed, refine=refine)


def static_of(path):
    ds = load_dataset(path)
    return ds, static_snapshot(ds, ds.train)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Hard enough (no attributes, 40% of edges gone) that no setting ranks every held-back anchor first."""
    return static_of(write_pair_dataset(tmp_path_factory.mktemp("cal") / "pair", n=200, seed=4, edge_keep=0.6,
                                        train_ratio=0.5, attributes=False))


def test_calibration_keeps_the_candidate_that_ranks_held_back_anchors_best(pair):
    ds, snapshot = pair
    aligner = aligner_for(RefineConfig(calibration_min_anchors=10))
    update = aligner.on_snapshot(snapshot)
    scores = update.stats["calibration_mrr"]
    assert list(scores) == ["marginal=0.1 beta=0.3", "marginal=1 beta=0.3", "marginal=exact beta=0.3"]
    chosen = RefineSetting(**update.stats["calibrated"])
    # The configured setting stands unless the best beat it clearly (aligner.matching.calibration.choose).
    assert chosen.label in ("marginal=0.1 beta=0.3", max(scores, key=scores.get))
    assert all(0.0 < s <= 1.0 for s in scores.values())
    assert (aligner.refine_cfg.marginal_weight, aligner.refine_cfg.beta) == (chosen.marginal_weight, chosen.beta)
    assert aligner.calibrator.calibrated == chosen and aligner.calibrator.anchors_at_calibration == len(ds.train)


def test_held_back_anchors_are_kept_out_of_what_calibration_adapts_on(pair):
    """Were the held-back anchors seeds, each would sit at its partner's anchor coordinate and rank first under
    every candidate, and the choice would mean nothing. After calibration they are seeds (the final alignment
    uses every anchor): ranked then, they are (near) perfect; ranked by calibration, they were not."""
    ds, snapshot = pair
    aligner = aligner_for(RefineConfig(calibration_min_anchors=10))
    update = aligner.on_snapshot(snapshot)
    as_seeds = aligner.alignments.evaluate("left", "right", [(str(a), str(b)) for a, b in ds.train.tolist()])
    assert as_seeds["mrr"] > 0.99
    assert max(update.stats["calibration_mrr"].values()) < as_seeds["mrr"] - 0.02, update.stats["calibration_mrr"]


def test_too_few_anchors_to_hold_back_keep_the_configured_setting(pair):
    _, snapshot = pair
    aligner = aligner_for(RefineConfig(calibration_min_anchors=10_000))
    update = aligner.on_snapshot(snapshot)
    assert "calibrated" not in update.stats and aligner.calibrator.calibrated is None
    assert aligner.refine_cfg.marginal_weight == RefineConfig().marginal_weight


def test_calibration_off_or_one_candidate_runs_nothing(pair):
    _, snapshot = pair
    for refine in (RefineConfig(calibrate=False, calibration_min_anchors=10),
                   RefineConfig(calibration_marginals="0.1", calibration_min_anchors=10)):
        update = aligner_for(refine).on_snapshot(snapshot)
        assert "calibration_mrr" not in update.stats


def test_the_calibrated_setting_survives_a_restart(pair):
    _, snapshot = pair
    aligner = aligner_for(RefineConfig(calibration_marginals="none,0.1", calibration_min_anchors=10))
    aligner.on_snapshot(snapshot)
    restored = aligner_for(RefineConfig())
    restored.load_state_bytes(aligner.state_bytes())
    assert restored.calibrator.calibrated == aligner.calibrator.calibrated
    assert restored.refine_cfg.marginal_weight == aligner.calibrator.calibrated.marginal_weight
    assert restored.calibrator.anchors_at_calibration == aligner.calibrator.anchors_at_calibration


def test_calibrates_again_only_once_the_anchors_have_grown_enough(pair):
    ds, snapshot = pair
    refine = RefineConfig(calibration_min_anchors=10, calibration_growth=2.0)
    aligner = aligner_for(refine)
    few = dataclasses.replace(snapshot, anchors={p: rows[: len(rows) // 2] for p, rows in snapshot.anchors.items()})
    first = aligner.on_snapshot(few)
    assert "calibrated" in first.stats
    inputs_few = aligner.meta.pool[-1]  # what the next adaptation would do on the same anchors:
    assert aligner.calibrator.split(inputs_few, aligner.refine_cfg) is None
    aligner.on_snapshot(snapshot)
    assert aligner.calibrator.anchors_at_calibration == len(ds.train)


def test_bad_candidate_lists_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="refine.calibration_marginals .*: expected a comma list"):
        load_config(env={"DYNALIGN_REFINE_CALIBRATION_MARGINALS": "0.1,lots"})
    with pytest.raises(ConfigError, match="calibration_holdout must be in"):
        load_config(env={"DYNALIGN_REFINE_CALIBRATION_HOLDOUT": "1.5"})
    assert load_config(env={"DYNALIGN_REFINE_CALIBRATION_BETAS": "0.1, 0.3"}).refine.calibration_betas == "0.1, 0.3"


def test_exact_marginals_win_on_a_full_copy_and_relaxed_ones_where_most_nodes_have_no_partner(tmp_path):
    """The point of calibrating: the same code picks a different marginal when the overlap differs."""
    full_ds, full = static_of(write_pair_dataset(tmp_path / "full", n=300, seed=5, edge_keep=0.7, train_ratio=0.4,
                                                 attributes=False))
    partial_path = write_partial_overlap(tmp_path / "partial", n=400, overlap=150, seed=5)
    partial_ds, partial = static_of(partial_path)
    refine = RefineConfig(calibration_marginals="0.1,none", calibration_min_anchors=10)
    on_full = aligner_for(refine).on_snapshot(full).stats
    on_partial = aligner_for(refine).on_snapshot(partial).stats
    assert on_full["calibrated"]["marginal_weight"] is None, on_full["calibration_mrr"]
    assert on_partial["calibrated"]["marginal_weight"] == 0.1, on_partial["calibration_mrr"]


def write_partial_overlap(root, n: int, overlap: int, seed: int):
    """A network and a second one that shares only ``overlap`` of its nodes (their induced edges, a few removed)
    plus as many nodes of its own: most of the first network has no counterpart."""
    base = write_pair_dataset(root / "base", n=n, seed=seed, edge_keep=1.0, attributes=False)
    rng = np.random.default_rng(seed)
    src = np.loadtxt(base / "source.edges.tsv", dtype=np.int64, ndmin=2)
    shared = np.sort(rng.choice(n, size=overlap, replace=False))
    new_id = np.full(n, -1)
    new_id[shared] = rng.permutation(overlap)
    inside = (new_id[src[:, 0]] >= 0) & (new_id[src[:, 1]] >= 0) & (rng.random(len(src)) < 0.9)
    tgt = new_id[src[inside]]
    own = overlap + np.arange(overlap)  # the second network's own nodes, wired among themselves and to shared ones
    extra = np.stack([own, rng.integers(0, 2 * overlap, size=overlap)], axis=1)
    tgt = np.concatenate([tgt, extra[extra[:, 0] != extra[:, 1]]])
    tgt = np.unique(np.sort(tgt, axis=1), axis=0)
    anchors = np.stack([shared, new_id[shared]], axis=1)
    order = rng.permutation(len(anchors))
    n_train = int(len(anchors) * 0.4)
    root.mkdir(parents=True, exist_ok=True)
    np.savetxt(root / "source.edges.tsv", src, fmt="%d", delimiter="\t")
    np.savetxt(root / "target.edges.tsv", tgt, fmt="%d", delimiter="\t")
    for name, rows in (("anchors", anchors), ("train", anchors[np.sort(order[:n_train])]),
                       ("test", anchors[np.sort(order[n_train:])])):
        np.savetxt(root / f"{name}.tsv", rows, fmt="%d", delimiter="\t")
    return root
