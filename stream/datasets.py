"""Benchmark alignment datasets as arrays, and as the event streams a live deployment would see.

The exchange format (``/work/shared/data/README.md``): a folder with ``source.edges.tsv``,
``target.edges.tsv`` (``u v`` or ``u v ts``), optional ``{source,target}.attr.npy``, ``anchors.tsv``,
optional ``train.tsv``/``test.tsv`` and ``meta.json``. :func:`load_dataset` reads it; :func:`dataset_events`
replays it as :class:`stream.events.Event` objects so that experiments exercise the same path as production,
revealing only training anchors, never test ones. The multi-network format has its own module
(:mod:`stream.multi_datasets`), on the same readers and the same replay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

import numpy as np

from stream.events import ADD_ANCHOR, ADD_EDGE, SET_ATTR, Event

PROTOCOLS = ("stream", "static")
_SIDES = ("source", "target")
FORMAT_HINT = ("a dataset folder holds source.edges.tsv and target.edges.tsv (lines 'u v' or 'u v time', integer "
               "node ids), anchors.tsv ('source_node target_node'), optional train.tsv/test.tsv, "
               "{source,target}.attr.npy and meta.json (../shared/data/README.md)")


@dataclass
class Dataset:
    """One alignment task; ``*_times`` is None without timestamps, ``train``/``test`` without split files."""

    name: str
    source_net: str
    target_net: str
    source_edges: np.ndarray
    target_edges: np.ndarray
    source_times: np.ndarray | None
    target_times: np.ndarray | None
    source_attrs: np.ndarray | None
    target_attrs: np.ndarray | None
    num_source: int
    num_target: int
    anchors: np.ndarray
    train: np.ndarray | None
    test: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def timestamped(self) -> bool:
        return self.source_times is not None


@dataclass(frozen=True)
class NetworkData:
    """One network of a dataset: its edge lines (``u v``), their timestamps or None, attributes or None."""

    name: str
    edges: np.ndarray
    times: np.ndarray | None
    attrs: np.ndarray | None
    num_nodes: int


def read_table(path: Path, columns: tuple[int, ...], what: str) -> np.ndarray:
    """A whitespace-separated integer table with one of ``columns`` column counts, as int64 (rows, cols)."""
    data = path.read_bytes()
    tokens = data.split()
    if not tokens:
        return np.empty((0, columns[0]), dtype=np.int64)
    ncol = len(data.lstrip().split(b"\n", 1)[0].split())
    if ncol not in columns:
        raise ValueError(f"{path}: {what} need {' or '.join(map(str, columns))} columns (whitespace-separated), "
                         f"the first line has {ncol}; {FORMAT_HINT}")
    if len(tokens) % ncol or len(tokens) // ncol != sum(1 for line in data.splitlines() if line.strip()):
        raise ValueError(f"{path}: {what}: every line must have {ncol} columns")
    try:
        table = np.array(tokens, dtype=np.int64).reshape(-1, ncol)
    except ValueError as e:
        raise ValueError(f"{path}: {what} must be integers ({e}); {FORMAT_HINT}") from None
    return table


def read_meta(root: Path) -> dict[str, Any]:
    """``meta.json`` as a dict (``{}`` without one)."""
    meta_path = root / "meta.json"
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except ValueError as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} must hold a JSON object, not {type(meta).__name__}")
    return meta


def read_network(edges_path: Path, attr_path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One network's edges (``u v``), their timestamps (third column) or None, and its attributes or None."""
    table = read_table(edges_path, (2, 3), "edges")
    times = table[:, 2].astype(np.float64) if table.shape[1] == 3 else None
    try:
        attrs = np.load(attr_path, allow_pickle=False) if attr_path.exists() else None
    except (ValueError, OSError, EOFError) as e:  # pickled, torn or not .npy at all
        raise ValueError(f"{attr_path} is not a numeric .npy matrix ({e}); {FORMAT_HINT}") from None
    if attrs is not None and attrs.ndim != 2:
        raise ValueError(f"{attr_path}: attributes must be a matrix (row i = node i), not {attrs.shape}")
    return np.ascontiguousarray(table[:, :2]), times, attrs


def network_size(root: Path, what: str, ids: np.ndarray, attrs: np.ndarray | None, meta: dict, key: str) -> int:
    """A network's node count: ``meta[key]`` where meta.json says it, else one past the largest id its files use."""
    if ids.size and ids.min() < 0:
        raise ValueError(f"dataset {root}: negative {what} node id")
    seen = max(int(ids.max()) + 1 if ids.size else 0, 0 if attrs is None else len(attrs))
    size = int(meta.get(key, seen))
    if seen > size:
        raise ValueError(f"dataset {root}: {what} node ids reach {seen - 1}, but meta.json says {key} = {size}")
    return size


def load_dataset(path: Path | str) -> Dataset:
    """Read a dataset folder; missing edges/anchors are errors, missing attributes or splits are None."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if is_multi_dataset(root):
        raise ValueError(f"dataset {root} is a multi-network folder (it has networks/); this takes a pair folder: "
                         f"{FORMAT_HINT}")
    meta = read_meta(root)

    def required(name: str) -> Path:
        p = root / name
        if not p.exists():
            raise FileNotFoundError(f"dataset {root}: required file {name} is missing; {FORMAT_HINT}")
        return p

    nets = {side: read_network(required(f"{side}.edges.tsv"), root / f"{side}.attr.npy") for side in _SIDES}
    if (nets["source"][1] is None) != (nets["target"][1] is None):
        raise ValueError(f"dataset {root}: only one network's edges carry timestamps")
    anchors = read_table(required("anchors.tsv"), (2,), "anchors")
    split = {}
    for name in ("train", "test"):
        p = root / f"{name}.tsv"
        split[name] = read_table(p, (2,), name) if p.exists() else None
    sizes = {side: network_size(root, side, np.concatenate([nets[side][0].ravel(), anchors[:, i]]), nets[side][2],
                                 meta, f"n_{side}")
             for i, side in enumerate(_SIDES)}

    return Dataset(
        name=str(meta.get("name", root.name)),
        source_net=str(meta.get("source", "source")),
        target_net=str(meta.get("target", "target")),
        source_edges=nets["source"][0],
        target_edges=nets["target"][0],
        source_times=nets["source"][1],
        target_times=nets["target"][1],
        source_attrs=nets["source"][2],
        target_attrs=nets["target"][2],
        num_source=sizes["source"],
        num_target=sizes["target"],
        anchors=anchors,
        train=split["train"],
        test=split["test"],
        meta=meta,
    )


def is_multi_dataset(path: Path | str) -> bool:
    """Whether ``path`` is a multi-network folder (it has ``networks/``) rather than a pair folder."""
    return (Path(path) / "networks").is_dir()


def split_anchors(dataset: Dataset, train_ratio: float | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's own split (``train_ratio=None``) or a seeded random ``train_ratio`` share of all anchors.

    Both parts keep the order of ``anchors.tsv``.
    """
    if train_ratio is None:
        if dataset.train is None or dataset.test is None:
            raise ValueError(f"dataset {dataset.name} has no train.tsv/test.tsv; give a train ratio (--train-ratio "
                             "0.2 draws a seeded 20% of anchors.tsv for training)")
        return dataset.train, dataset.test
    return ratio_split(dataset.anchors, train_ratio, seed)


def ratio_split(anchors: np.ndarray, train_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= train_ratio <= 1.0:
        raise ValueError(f"train ratio must be within [0, 1], got {train_ratio}")
    n = len(anchors)
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng(seed).permutation(n)[: round(train_ratio * n)]] = True
    return anchors[chosen], anchors[~chosen]


# Midnight UTC, a multiple of any whole-hour or whole-day window, so synthetic windows coincide with the
# snapshot cutter's window boundaries (which are aligned to multiples of the window length).
BASE_TIME = 1_699_920_000.0


def dataset_events(
    ds: Dataset,
    *,
    protocol: str = "stream",
    windows: int = 10,
    seed: int = 0,
    train: np.ndarray | None = None,
    window_seconds: float = 3600.0,
    base_time: float = BASE_TIME,
) -> Iterator[Event]:
    """Replay ``ds`` as time-ordered events; only ``train`` anchors (default: the dataset's train split).

    Attributes come first (one ``set_attr`` per row of each attribute matrix, all-zero rows included: a
    zero vector is still the node's attributes). Edges keep their timestamps if they have them; otherwise
    a seeded shuffle of both networks' edges is spread evenly over ``windows`` windows of
    ``window_seconds`` from ``base_time``. Anchors are revealed all at the start (``"static"``) or evenly
    over the same windows in a seeded order (``"stream"``), the first window included. At equal times the
    order is attributes, anchors, edges. Self-loops, which the event contract rejects, are left out.
    Arguments are checked at once; events are then built as they are consumed.
    """
    if train is None:
        if ds.train is None:
            raise ValueError(f"dataset {ds.name} has no train.tsv; pass train= (see split_anchors)")
        train = ds.train
    networks = [NetworkData(ds.source_net, ds.source_edges, ds.source_times, ds.source_attrs, ds.num_source),
                NetworkData(ds.target_net, ds.target_edges, ds.target_times, ds.target_attrs, ds.num_target)]
    return network_events(ds.name, networks, [("anchor", ds.source_net, ds.target_net, train)], protocol,
                           windows, seed, window_seconds, base_time)


def network_events(name: str, networks: list[NetworkData], anchor_sets: list[tuple[str, str, str, np.ndarray]],
                    protocol: str, windows: int, seed: int, window_seconds: float,
                    base_time: float) -> Iterator[Event]:
    """The replay of :func:`dataset_events` for any number of networks; ``anchor_sets`` are ``(id prefix,
    network, other network, rows)``, revealed together (concatenated in this order before the seeded shuffle)."""
    if len({net.times is None for net in networks}) > 1:  # built by hand: the loaders refuse it
        raise ValueError(f"dataset {name}: only some networks' edges carry timestamps")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    rng = np.random.default_rng(seed)

    # Every network's edges as one table of (network index, line in its file, u, v).
    parts: list[np.ndarray] = []
    time_parts: list[np.ndarray] = []
    for k, net in enumerate(networks):
        e = net.edges
        keep = e[:, 0] != e[:, 1]
        parts.append(np.column_stack([np.full(len(e), k), np.arange(len(e)), e])[keep])
        if net.times is not None:
            time_parts.append(net.times[keep])
    table = np.concatenate(parts)
    if time_parts:
        edge_times = np.concatenate(time_parts)
        # A stable sort keeps earlier networks first at equal times, and each file's own order.
        order = np.argsort(edge_times, kind="stable")
        table, edge_times = table[order], edge_times[order]
        start = float(edge_times[0]) if len(edge_times) else base_time
        span = float(edge_times[-1]) - start if len(edge_times) else windows * window_seconds
    else:
        table = table[rng.permutation(len(table))]
        start, span = base_time, windows * window_seconds
        edge_times = start + np.arange(len(table)) * (span / max(len(table), 1))

    rows = [np.asarray(r, dtype=np.int64).reshape(-1, 2) for *_, r in anchor_sets]
    anchors = np.concatenate([np.column_stack([np.full(len(r), k), r]) for k, r in enumerate(rows)])
    if protocol == "static":
        anchor_times = np.full(len(anchors), start)
    else:
        anchors = anchors[rng.permutation(len(anchors))]
        anchor_times = start + np.arange(len(anchors)) * (span / max(len(anchors), 1))

    return _replay(networks, [s[:3] for s in anchor_sets], start, table, edge_times, anchors, anchor_times)


def _replay(
    networks: list[NetworkData],
    anchor_sets: list[tuple[str, str, str]],
    start: float,
    table: np.ndarray,
    edge_times: np.ndarray,
    anchors: np.ndarray,
    anchor_times: np.ndarray,
) -> Iterator[Event]:
    # Every other event is at or after `start`, so attributes can simply go first.
    for net in networks:
        if net.attrs is None:
            continue
        for i in range(len(net.attrs)):
            attrs = tuple(net.attrs[i].astype(np.float64).tolist())
            yield Event(op=SET_ATTR, time=start, net=net.name, u=str(i), attrs=attrs, id=f"{net.name}:a{i}")

    # One stable sort over [anchors | edges] puts anchors first at equal times.
    times = np.concatenate([anchor_times, edge_times])
    anchor_rows, edge_rows = anchors.tolist(), table.tolist()
    order = np.argsort(times, kind="stable")
    for j, t in zip(order.tolist(), times[order].tolist()):
        if j < len(anchor_rows):
            k, s, d = anchor_rows[j]
            prefix, a, b = anchor_sets[k]
            yield Event(op=ADD_ANCHOR, time=t, net=a, u=str(s), to=b, v=str(d), id=f"{prefix}:{s}:{d}")
        else:
            k, line, u, v = edge_rows[j - len(anchor_rows)]
            name = networks[k].name
            yield Event(op=ADD_EDGE, time=t, net=name, u=str(u), v=str(v), id=f"{name}:e{line}")


def write_events(events: Iterable[Event], out: TextIO) -> int:
    """Write ``events`` as JSON lines to ``out``; returns how many.

    >>> import sys
    >>> write_events([Event(op=ADD_EDGE, time=5.0, net="a", u="1", v="2", id="a:e0")], sys.stdout)
    {"op":"add_edge","time":5.0,"net":"a","u":"1","v":"2","id":"a:e0"}
    1
    """
    count = 0
    for event in events:
        out.write(event.to_json() + "\n")
        count += 1
    return count
