"""Explanations: evidence that can be checked by hand, for the candidates the aligner actually published."""

from __future__ import annotations

import pytest

from aligner.config import AdaptConfig, MetaConfig
from aligner.engine.aligner import Aligner
from aligner.tools.explain import Explainer, describe, evidence_agreement
from tests.aligner.test_engine import SMALL_MODEL, snapshots_of
from tests.synthetic import write_pair_dataset


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    ds, snaps = snapshots_of(write_pair_dataset(tmp_path_factory.mktemp("ex") / "p", n=80, seed=4), windows=1)
    aligner = Aligner(SMALL_MODEL, MetaConfig(warmup_iterations=10), AdaptConfig(steps=3), top_k=5, seed=0)
    update = aligner.on_snapshot(snaps[-1])
    return ds, snaps[-1], aligner, update


def test_candidates_are_the_published_ones_with_checkable_evidence(aligned):
    ds, snap, aligner, update = aligned
    published = next(t for t in update.pairs if (t.src, t.dst) == ("left", "right"))
    node = snap.networks["left"].node_ids[int(published.src_index[0])]
    evidence = Explainer(aligner, snap, "left", "right").explain(node, k=5)
    ids = snap.networks["right"].node_ids
    assert [e.candidate for e in evidence] == [ids[c] for c in published.candidates[0]]
    assert [e.rank for e in evidence] == [1, 2, 3, 4, 5]
    for e in evidence:
        assert -1.0 <= e.position <= 1.0 + 1e-5 and e.attributes is not None
        for shared in e.shared_anchors:  # every claimed shared anchor really is a known anchor pair
            i = snap.networks["left"].index_of(shared.near)
            j = snap.networks["right"].index_of(shared.partner)
            assert [i, j] in snap.anchors_between("left", "right").tolist()
            assert 0 <= shared.near_hops <= 2 and 0 <= shared.partner_hops <= 2
    text = describe(node, "left", "right", evidence)
    assert text.startswith(f"left:{node} -> right") and "confidence" in text


def test_an_anchor_is_explained_by_itself(aligned):
    ds, snap, aligner, _ = aligned
    i, j = snap.anchors_between("left", "right")[0]
    node = snap.networks["left"].node_ids[i]
    evidence = Explainer(aligner, snap, "left", "right").explain(node, k=3)
    top = evidence[0]
    assert top.candidate == snap.networks["right"].node_ids[j]
    assert any(s.near == node and s.near_hops == 0 and s.partner_hops == 0 for s in top.shared_anchors)


def test_agreement_is_a_fraction(aligned):
    ds, snap, aligner, _ = aligned
    value = evidence_agreement(aligner, snap, "left", "right", sample=30)
    assert 0.0 <= value <= 1.0


def test_unknown_node_is_a_key_error(aligned):
    _, snap, aligner, _ = aligned
    with pytest.raises(KeyError, match="unknown"):
        Explainer(aligner, snap, "left", "right").explain("no-such-node")
