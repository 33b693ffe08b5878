"""Datasets load as documented, and replay as valid, time-ordered events that reveal train anchors only."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from stream.datasets import BASE_TIME, Dataset, dataset_events, load_dataset, split_anchors, write_events
from stream.events import ADD_ANCHOR, ADD_EDGE, SET_ATTR, Event, parse_event

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REAL = ["douban", "acm-dblp", "cora-noisy", "collegemsg-views"]


def real_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "meta.json").exists():
        pytest.skip(f"shared dataset {name} not found at {path} (the shared folder beside the repository)")
    return path


def write_tsv(path: Path, rows) -> None:
    path.write_text("".join("\t".join(map(str, row)) + "\n" for row in rows))


@pytest.fixture
def tiny(tmp_path) -> Path:
    """Two 6-node networks with attributes, 5 anchors (2 train, 3 test), no timestamps."""
    root = tmp_path / "tiny"
    root.mkdir()
    write_tsv(root / "source.edges.tsv", [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 5), (1, 4)])
    write_tsv(root / "target.edges.tsv", [(0, 2), (2, 4), (1, 3), (3, 5)])
    np.save(root / "source.attr.npy", np.eye(6, 3, dtype=np.uint8))
    np.save(root / "target.attr.npy", np.arange(12, dtype=np.float32).reshape(6, 2) / 4)
    write_tsv(root / "anchors.tsv", [(0, 1), (1, 0), (2, 3), (3, 2), (4, 5)])
    write_tsv(root / "train.tsv", [(0, 1), (3, 2)])
    write_tsv(root / "test.tsv", [(1, 0), (2, 3), (4, 5)])
    (root / "meta.json").write_text(json.dumps({"name": "tiny", "source": "left", "target": "right"}))
    return root


@pytest.fixture
def timed(tmp_path) -> Path:
    """Interactions with timestamps (a repeated pair, ties across networks), no attributes, no meta."""
    root = tmp_path / "timed"
    root.mkdir()
    write_tsv(root / "source.edges.tsv", [(0, 1, 100), (1, 2, 150), (0, 1, 150), (2, 3, 400)])
    write_tsv(root / "target.edges.tsv", [(0, 1, 90), (1, 3, 150), (2, 3, 500)])
    write_tsv(root / "anchors.tsv", [(0, 0), (1, 1), (2, 2), (3, 3)])
    write_tsv(root / "train.tsv", [(0, 0), (1, 1), (2, 2)])
    (root / "test.tsv").write_text("")
    return root


# ---------------------------------------------------------------------------------------------- loading


def test_load_tiny(tiny):
    ds = load_dataset(tiny)
    assert (ds.name, ds.source_net, ds.target_net) == ("tiny", "left", "right")
    assert ds.source_edges.dtype == np.int64 and ds.source_edges.shape == (7, 2)
    assert ds.target_edges.tolist() == [[0, 2], [2, 4], [1, 3], [3, 5]]
    assert ds.source_times is None and not ds.timestamped
    assert ds.source_attrs.dtype == np.uint8 and ds.target_attrs.dtype == np.float32
    assert (ds.num_source, ds.num_target) == (6, 6)
    assert ds.anchors.shape == (5, 2) and ds.train.tolist() == [[0, 1], [3, 2]] and len(ds.test) == 3


def test_load_without_meta_falls_back_and_reads_timestamps(timed):
    ds = load_dataset(timed)
    assert (ds.name, ds.source_net, ds.target_net, ds.meta) == ("timed", "source", "target", {})
    assert ds.timestamped and ds.source_times.dtype == np.float64
    assert ds.source_times.tolist() == [100, 150, 150, 400]
    assert (ds.num_source, ds.num_target) == (4, 4)  # max id + 1
    assert ds.test.shape == (0, 2) and ds.test.dtype == np.int64  # an empty test file
    assert ds.source_attrs is None


def test_missing_files(tiny):
    (tiny / "train.tsv").unlink()
    (tiny / "test.tsv").unlink()
    ds = load_dataset(tiny)
    assert ds.train is None and ds.test is None
    with pytest.raises(ValueError, match="no train.tsv/test.tsv; give a train ratio"):
        split_anchors(ds, None, 0)
    with pytest.raises(ValueError, match="no train.tsv; pass train="):
        next(dataset_events(ds))
    (tiny / "anchors.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="required file anchors.tsv is missing"):
        load_dataset(tiny)
    (tiny / "target.edges.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="required file target.edges.tsv is missing"):
        load_dataset(tiny)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tiny / "nowhere")


@pytest.mark.parametrize(
    "content, message",
    [
        ("0\t1\n2\n", "every line must have 2 columns"),
        ("0\t1\t2\t3\n", "need 2 or 3 columns"),
        ("0\tx\n", "must be integers"),
        ("0\t-1\n", "negative source node id"),
        ("0\t99\n", "node ids reach 99, but meta.json says n_source = 6"),
    ],
)
def test_malformed_edges(tiny, content, message):
    meta = json.loads((tiny / "meta.json").read_text())
    (tiny / "meta.json").write_text(json.dumps({**meta, "n_source": 6}))
    (tiny / "source.edges.tsv").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_dataset(tiny)


def test_split_anchors(tiny):
    ds = load_dataset(tiny)
    train, test = split_anchors(ds, None, 0)
    assert train is ds.train and test is ds.test
    train, test = split_anchors(ds, 0.4, seed=3)
    assert (len(train), len(test)) == (2, 3)
    assert sorted(map(tuple, np.concatenate([train, test]).tolist())) == sorted(map(tuple, ds.anchors.tolist()))
    assert np.array_equal(split_anchors(ds, 0.4, seed=3)[0], train)
    picks = {tuple(map(tuple, split_anchors(ds, 0.4, seed=s)[0].tolist())) for s in range(20)}
    assert len(picks) > 1
    assert len(split_anchors(ds, 0.0, 1)[0]) == 0 and len(split_anchors(ds, 1.0, 1)[1]) == 0
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        split_anchors(ds, 1.5, 0)


# ----------------------------------------------------------------------------------------------- events


def check_events(
    ds: Dataset, events: list[Event], train: np.ndarray, test: np.ndarray | None = None, attr_sample: int | None = None
) -> None:
    """What every replay must satisfy, whatever the protocol; ``test`` defaults to the dataset's."""
    times = [e.time for e in events]
    assert times == sorted(times), "events are not in time order"
    nets = (ds.source_net, ds.target_net)

    attrs = [e for e in events if e.op == SET_ATTR]
    expected_attr_rows = sum(len(a) for a in (ds.source_attrs, ds.target_attrs) if a is not None)
    assert len(attrs) == expected_attr_rows
    assert events[: len(attrs)] == attrs, "attributes come first"
    for e in attrs[:attr_sample] + attrs[-attr_sample:] if attr_sample else attrs:
        matrix = ds.source_attrs if e.net == nets[0] else ds.target_attrs
        assert e.id == f"{e.net}:a{e.u}" and e.attrs == tuple(matrix[int(e.u)].astype(float))

    edges = [e for e in events if e.op == ADD_EDGE]
    lines = Counter(e.id for e in edges)
    assert max(lines.values()) == 1, "an interaction line was emitted twice"
    for k, table in enumerate((ds.source_edges, ds.target_edges)):
        mine = {int(e.id.rsplit(":e", 1)[1]): e for e in edges if e.net == nets[k]}
        assert sorted(mine) == list(range(len(table))), f"{nets[k]}: not every edge emitted"
        got = np.array([[int(mine[i].u), int(mine[i].v)] for i in range(len(table))]).reshape(-1, 2)
        assert np.array_equal(got, table)

    anchors = [e for e in events if e.op == ADD_ANCHOR]
    assert all((e.net, e.to, e.id) == (nets[0], nets[1], f"anchor:{e.u}:{e.v}") for e in anchors)
    revealed = Counter((int(e.u), int(e.v)) for e in anchors)
    assert revealed == Counter(map(tuple, train.tolist()))
    test = ds.test if test is None else test
    if test is not None:
        assert not set(revealed) & set(map(tuple, test.tolist())), "a test anchor leaked"

    for e in events if attr_sample is None else [e for e in events if e.op != SET_ATTR]:
        assert parse_event(e.to_json()) == e


def window_counts(events: list[Event], op: str, start: float, span: float, windows: int) -> list[int]:
    counts = [0] * windows
    for e in events:
        if e.op == op:
            counts[min(int((e.time - start) / span * windows), windows - 1)] += 1
    return counts


def test_tiny_stream(tiny):
    ds = load_dataset(tiny)
    events = list(dataset_events(ds, windows=2, window_seconds=100.0, base_time=1000.0))
    check_events(ds, events, ds.train)
    assert events[0] == Event(op=SET_ATTR, time=1000.0, net="left", u="0", attrs=(1.0, 0.0, 0.0), id="left:a0")
    assert window_counts(events, ADD_EDGE, 1000.0, 200.0, 2) == [6, 5]
    assert window_counts(events, ADD_ANCHOR, 1000.0, 200.0, 2) == [1, 1]
    assert events[-1].time < 1200.0
    assert list(dataset_events(ds, windows=2, seed=0)) == list(dataset_events(ds, windows=2, seed=0))
    orders = {tuple(e.id for e in dataset_events(ds, seed=s)) for s in range(5)}
    assert len(orders) > 1


def test_tiny_static_with_a_ratio_split(tiny):
    ds = load_dataset(tiny)
    train, test = split_anchors(ds, 0.6, seed=1)
    events = list(dataset_events(ds, protocol="static", train=train))
    check_events(ds, events, train, test)
    first_edge = next(i for i, e in enumerate(events) if e.op == ADD_EDGE)
    assert {e.op for e in events[12:first_edge]} == {ADD_ANCHOR} and first_edge == 12 + len(train)
    assert {e.time for e in events[: first_edge + 1]} == {BASE_TIME}


def test_timestamps_are_kept_and_merged(timed):
    ds = load_dataset(timed)
    events = list(dataset_events(ds, windows=4))
    check_events(ds, events, ds.train)
    edges = [(e.time, e.id) for e in events if e.op == ADD_EDGE]
    assert edges == [
        (90.0, "target:e0"), (100.0, "source:e0"), (150.0, "source:e1"), (150.0, "source:e2"),
        (150.0, "target:e1"), (400.0, "source:e3"), (500.0, "target:e2"),
    ]
    anchor_times = [e.time for e in events if e.op == ADD_ANCHOR]
    assert anchor_times == [90.0, 90.0 + 410 / 3, 90.0 + 820 / 3]  # over [t_min, t_max], the first at t_min
    assert events[0].op == ADD_ANCHOR  # at a tie, anchors before edges


def test_bad_arguments(tiny):
    ds = load_dataset(tiny)
    with pytest.raises(ValueError, match="unknown protocol 'batch'"):
        next(dataset_events(ds, protocol="batch"))
    with pytest.raises(ValueError, match="windows must be >= 1"):
        next(dataset_events(ds, windows=0))


def test_write_events(tiny):
    ds = load_dataset(tiny)
    out = io.StringIO()
    events = list(dataset_events(ds))
    assert write_events(iter(events), out) == len(events)
    assert [parse_event(line) for line in out.getvalue().splitlines()] == events
    assert write_events([], io.StringIO()) == 0


# ----------------------------------------------------------------------------------------- real datasets


@pytest.mark.parametrize("name", REAL)
def test_real_dataset_matches_its_meta(name):
    ds = load_dataset(real_dataset(name))
    meta = ds.meta
    assert (ds.name, ds.source_net, ds.target_net) == (meta["name"], meta["source"], meta["target"])
    assert (ds.num_source, ds.num_target) == (meta["n_source"], meta["n_target"])
    counts = ("events_source", "events_target") if meta["timestamps"] else ("m_source", "m_target")
    assert (len(ds.source_edges), len(ds.target_edges)) == (meta[counts[0]], meta[counts[1]])
    assert (len(ds.anchors), len(ds.train)) == (meta["anchors"], meta["train"])
    assert len(ds.train) + len(ds.test) == len(ds.anchors)
    assert ds.timestamped == meta["timestamps"]
    assert (ds.source_attrs is not None) == meta["attributes"]
    if meta["attributes"]:
        assert (len(ds.source_attrs), len(ds.target_attrs)) == (ds.num_source, ds.num_target)
    if meta["timestamps"]:
        assert min(ds.source_times.min(), ds.target_times.min()) == meta["t_min"]
        assert max(ds.source_times.max(), ds.target_times.max()) == meta["t_max"]


@pytest.mark.parametrize("name", REAL)
def test_real_dataset_stream_replay(name):
    ds = load_dataset(real_dataset(name))
    windows = 10
    events = list(dataset_events(ds, windows=windows, seed=7))
    check_events(ds, events, ds.train, attr_sample=20)
    if ds.timestamped:
        start, span = ds.meta["t_min"], ds.meta["t_max"] - ds.meta["t_min"]
        edge_times = sorted(e.time for e in events if e.op == ADD_EDGE)
        assert edge_times == sorted(np.concatenate([ds.source_times, ds.target_times]).tolist())
    else:
        start, span = BASE_TIME, windows * 3600.0
        per_window = window_counts(events, ADD_EDGE, start, span, windows)
        total = len(ds.source_edges) + len(ds.target_edges)
        assert all(abs(c - total / windows) <= 1 for c in per_window)
    per_window = window_counts(events, ADD_ANCHOR, start, span, windows)
    assert all(abs(c - len(ds.train) / windows) <= 1 for c in per_window), per_window


def test_real_dataset_static_replay():
    ds = load_dataset(real_dataset("douban"))
    events = list(dataset_events(ds, protocol="static"))
    first_edge = next(i for i, e in enumerate(events) if e.op == ADD_EDGE)
    assert [e.op for e in events[first_edge - len(ds.train) : first_edge]] == [ADD_ANCHOR] * len(ds.train)
    assert events[first_edge - 1].time == events[0].time == BASE_TIME
