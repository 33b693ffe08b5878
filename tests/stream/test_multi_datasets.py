"""Multi-network folders load as documented and replay on the same clock as pairs, train anchors only."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from stream.datasets import dataset_events, is_multi_dataset, load_dataset
from stream.events import ADD_ANCHOR, ADD_EDGE, SET_ATTR, parse_event
from stream.multi_datasets import load_multi_dataset, multi_dataset_events

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write_tsv(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(map(str, row)) + "\n" for row in rows))


@pytest.fixture
def three(tmp_path) -> Path:
    """Networks a, b, c (c with attributes); anchors in all three pairs, train anchors for a~b and b~c only."""
    root = tmp_path / "three"
    write_tsv(root / "networks" / "a.edges.tsv", [(0, 1), (1, 2), (2, 3), (3, 0)])
    write_tsv(root / "networks" / "b.edges.tsv", [(0, 2), (2, 1), (1, 3)])
    write_tsv(root / "networks" / "c.edges.tsv", [(3, 2), (2, 0), (0, 1), (1, 3), (0, 3)])
    np.save(root / "networks" / "c.attr.npy", np.eye(4, 2, dtype=np.float32))
    truth = {"a~b": [(0, 2), (1, 0), (2, 1), (3, 3)], "b~c": [(2, 1), (0, 3), (1, 0), (3, 2)],
             "a~c": [(0, 1), (1, 3), (2, 0), (3, 2)]}
    for pair, rows in truth.items():
        write_tsv(root / "anchors" / f"{pair}.tsv", rows)
        train = rows[:2] if pair != "a~c" else []
        (root / "train").mkdir(exist_ok=True)
        write_tsv(root / "train" / f"{pair}.tsv", train)
        write_tsv(root / "test" / f"{pair}.tsv", rows[len(train):])
    (root / "meta.json").write_text(json.dumps({"name": "three", "networks": {"a": 4, "b": 4, "c": 5}}))
    return root


def test_a_multi_network_folder_loads_every_network_and_pair(three):
    assert is_multi_dataset(three)
    ds = load_multi_dataset(three)
    assert ds.name == "three" and list(ds.networks) == ["a", "b", "c"] and not ds.timestamped
    assert [ds.networks[n].num_nodes for n in "abc"] == [4, 4, 5]  # meta.json's sizes win over the ids seen
    assert ds.networks["c"].attrs.shape == (4, 2) and ds.networks["a"].attrs is None
    assert sorted(ds.anchors) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert ds.train[("a", "c")].shape == (0, 2) and ds.train[("a", "b")].tolist() == [[0, 2], [1, 0]]
    assert ds.test[("a", "c")].tolist() == [[0, 1], [1, 3], [2, 0], [3, 2]]


def test_a_missing_test_file_means_every_anchor_not_trained_on(three):
    (three / "test" / "a~b.tsv").unlink()
    ds = load_multi_dataset(three)
    assert ds.test[("a", "b")].tolist() == [[2, 1], [3, 3]]


def test_the_replay_reveals_train_anchors_of_every_pair_and_every_edge_once(three):
    ds = load_multi_dataset(three)
    events = list(multi_dataset_events(ds, windows=3, seed=1))
    assert [e.time for e in events] == sorted(e.time for e in events)
    assert [e.op for e in events[:4]] == [SET_ATTR] * 4 and {e.net for e in events[:4]} == {"c"}
    edges = Counter((e.net, e.id) for e in events if e.op == ADD_EDGE)
    assert max(edges.values()) == 1 and Counter(n for n, _ in edges) == {"a": 4, "b": 3, "c": 5}
    anchors = [e for e in events if e.op == ADD_ANCHOR]
    assert sorted((e.net, e.to, int(e.u), int(e.v)) for e in anchors) == [
        ("a", "b", 0, 2), ("a", "b", 1, 0), ("b", "c", 0, 3), ("b", "c", 2, 1)]
    assert all(e.id == f"anchor:{e.net}~{e.to}:{e.u}:{e.v}" for e in anchors)  # ids name their pair
    assert all(parse_event(e.to_json()) == e for e in events)
    assert events == list(multi_dataset_events(ds, windows=3, seed=1))
    only = {("b", "c"): ds.train[("b", "c")][:1]}
    assert [(e.net, e.to) for e in multi_dataset_events(ds, train=only) if e.op == ADD_ANCHOR] == [("b", "c")]


def test_a_pair_written_as_a_multi_network_folder_replays_like_the_pair_folder(tmp_path, three):
    """One replay for both formats: the same edges at the same times, the same anchors (ids aside)."""
    pair = tmp_path / "pair"
    multi = load_multi_dataset(three)
    a, b = multi.networks["a"], multi.networks["b"]
    write_tsv(pair / "source.edges.tsv", a.edges.tolist())
    write_tsv(pair / "target.edges.tsv", b.edges.tolist())
    write_tsv(pair / "anchors.tsv", multi.anchors[("a", "b")].tolist())
    write_tsv(pair / "train.tsv", multi.train[("a", "b")].tolist())
    (pair / "meta.json").write_text(json.dumps({"source": "a", "target": "b"}))
    two = three.parent / "two"
    for f in ("networks/a.edges.tsv", "networks/b.edges.tsv", "anchors/a~b.tsv", "train/a~b.tsv"):
        (two / f).parent.mkdir(parents=True, exist_ok=True)
        (two / f).write_bytes((three / f).read_bytes())
    for protocol in ("stream", "static"):
        paired = list(dataset_events(load_dataset(pair), protocol=protocol, seed=2))
        joint = list(multi_dataset_events(load_multi_dataset(two), protocol=protocol, seed=2))
        strip = lambda e: (e.op, e.time, e.net, e.u, e.v, e.to) if e.op == ADD_ANCHOR else e  # noqa: E731
        assert [strip(e) for e in paired] == [strip(e) for e in joint]


@pytest.mark.parametrize("change, message", [
    (lambda r: (r / "anchors" / "a~d.tsv").write_text("0\t1\n"), r"named <a>~<b>\.tsv after two different networks"),
    (lambda r: (r / "anchors" / "a~a.tsv").write_text("0\t1\n"), "two different networks"),
    (lambda r: [p.unlink() for p in (r / "anchors").glob("*.tsv")], r"anchors/ holds no <a>~<b>\.tsv"),
    (lambda r: [(r / "networks" / f"{n}.edges.tsv").unlink() for n in "bc"], "at least 2 are needed"),
    (lambda r: (r / "networks" / "a.edges.tsv").write_text("0\t1\t5\n"), "only some networks' edges carry timestamps"),
    (lambda r: (r / "anchors" / "a~b.tsv").write_text("0\t9\n"), "network 'b' node ids reach 9, but meta.json says b = 4"),
    (lambda r: (r / "train" / "b~c.tsv").write_text("0\tx\n"), "must be integers"),
])
def test_a_malformed_multi_network_folder_is_refused_with_what_is_wrong(three, change, message):
    change(three)
    with pytest.raises(ValueError, match=message):
        load_multi_dataset(three)


def test_each_loader_names_the_other_format_when_given_it(three, tmp_path):
    with pytest.raises(ValueError, match="is a multi-network folder"):
        load_dataset(three)
    (tmp_path / "pair").mkdir()
    with pytest.raises(ValueError, match="has no networks/ folder"):
        load_multi_dataset(tmp_path / "pair")


def test_the_shared_three_network_set_loads():
    root = SHARED_DATA / "enron-10k-3views"
    if not (root / "meta.json").exists():
        pytest.skip(f"shared dataset not found at {root}")
    ds = load_multi_dataset(root)
    meta = json.loads((root / "meta.json").read_text())
    assert {n: net.num_nodes for n, net in ds.networks.items()} == meta["networks"]
    for key, counts in meta["pairs"].items():
        pair = tuple(key.split("~"))
        assert (len(ds.anchors[pair]), len(ds.train[pair])) == (counts["anchors"], counts["train"])
        assert not {tuple(r) for r in ds.train[pair].tolist()} & {tuple(r) for r in ds.test[pair].tolist()}


def test_a_pair_named_either_way_is_kept_in_sorted_order_with_its_columns_turned(three):
    for folder in ("anchors", "train", "test"):
        rows = np.loadtxt(three / folder / "a~b.tsv", dtype=np.int64, ndmin=2)
        (three / folder / "a~b.tsv").unlink()
        write_tsv(three / folder / "b~a.tsv", rows[:, ::-1].tolist())
    ds = load_multi_dataset(three)
    assert ds.anchors[("a", "b")].tolist() == [[0, 2], [1, 0], [2, 1], [3, 3]] and ("b", "a") not in ds.anchors
    assert ds.train[("a", "b")].tolist() == [[0, 2], [1, 0]]
    write_tsv(three / "anchors" / "a~b.tsv", [(0, 2)])
    with pytest.raises(ValueError, match="has two anchor files"):
        load_multi_dataset(three)
