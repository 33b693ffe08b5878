"""The stream benchmark's validation split: held-out train anchors are never revealed, and they are what is scored."""

from __future__ import annotations

from aligner.bench.static import validation_split
from aligner.bench.stream import run_stream_seed, stream_snapshots
from aligner.config import load_config
from snapshots.snapshot import pair_key
from stream.datasets import load_dataset, split_anchors
from tests.synthetic import write_pair_dataset

SMALL = {"DYNALIGN_META_WARMUP_ITERATIONS": "5", "DYNALIGN_META_ITERATIONS_PER_SNAPSHOT": "1",
         "DYNALIGN_MODEL_HIDDEN": "16", "DYNALIGN_MODEL_EMBEDDING_DIM": "16", "DYNALIGN_MODEL_POSITION_DIM": "32"}


def test_validation_holds_back_a_quarter_of_the_train_anchors_and_scores_them(tmp_path):
    root = write_pair_dataset(tmp_path / "pair", n=80, seed=4)
    ds = load_dataset(root)
    train, test = split_anchors(ds, None, 0)
    kept, held = validation_split(train, 0)
    result = run_stream_seed(str(root), 0, 3, load_config(env=SMALL), 5, ("dynalign",), validation=True)
    assert (result["train"], result["test"]) == (len(kept), len(held)) != (len(train), len(test))
    assert all(0 < w["dynalign"]["pairs"] <= len(held) for w in result["windows"] if "dynalign" in w)
    # The stream the seed aligned reveals the kept anchors and none of the held-out ones.
    last = stream_snapshots(ds, kept, 3, 0)[-1]
    a, b = pair_key(ds.source_net, ds.target_net)
    ids_a, ids_b = last.networks[a].node_ids, last.networks[b].node_ids
    revealed = {(ids_a[i], ids_b[j]) for i, j in last.anchors[(a, b)].tolist()}
    as_ids = lambda rows: {(str(s), str(t)) if a == ds.source_net else (str(t), str(s)) for s, t in rows.tolist()}  # noqa: E731
    assert revealed == as_ids(kept) and not revealed & as_ids(held)
