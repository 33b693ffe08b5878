"""Benchmark alignment datasets as arrays, and as the event streams a live deployment would see.

The exchange format (``/work/shared/data/README.md``): a folder with ``source.edges.tsv``,
``target.edges.tsv`` (``u v`` or ``u v ts``), optional ``{source,target}.attr.npy``, ``anchors.tsv``,
optional ``train.tsv``/``test.tsv`` and ``meta.json``. :func:`load_dataset` reads it; :func:`dataset_events`
replays it as :class:`stream.events.Event` objects so that experiments exercise the same path as production,
revealing only training anchors, never test ones.
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


def _read_table(path: Path, columns: tuple[int, ...], what: str) -> np.ndarray:
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


def load_dataset(path: Path | str) -> Dataset:
    """Read a dataset folder; missing edges/anchors are errors, missing attributes or splits are None."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    meta_path = root / "meta.json"
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except ValueError as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} must hold a JSON object, not {type(meta).__name__}")

    def required(name: str) -> Path:
        p = root / name
        if not p.exists():
            raise FileNotFoundError(f"dataset {root}: required file {name} is missing; {FORMAT_HINT}")
        return p

    edges: dict[str, np.ndarray] = {}
    times: dict[str, np.ndarray | None] = {}
    attrs: dict[str, np.ndarray | None] = {}
    sizes: dict[str, int] = {}
    for side in _SIDES:
        table = _read_table(required(f"{side}.edges.tsv"), (2, 3), "edges")
        edges[side] = np.ascontiguousarray(table[:, :2])
        times[side] = table[:, 2].astype(np.float64) if table.shape[1] == 3 else None
        attr_path = root / f"{side}.attr.npy"
        try:
            matrix = attrs[side] = np.load(attr_path, allow_pickle=False) if attr_path.exists() else None
        except (ValueError, OSError, EOFError) as e:  # pickled, torn or not .npy at all
            raise ValueError(f"{attr_path} is not a numeric .npy matrix ({e}); {FORMAT_HINT}") from None
        if matrix is not None and matrix.ndim != 2:
            raise ValueError(f"{attr_path}: attributes must be a matrix (row i = node i), not {matrix.shape}")
    if (times["source"] is None) != (times["target"] is None):
        raise ValueError(f"dataset {root}: only one network's edges carry timestamps")
    anchors = _read_table(required("anchors.tsv"), (2,), "anchors")
    split = {}
    for name in ("train", "test"):
        p = root / f"{name}.tsv"
        split[name] = _read_table(p, (2,), name) if p.exists() else None

    for i, side in enumerate(_SIDES):
        ids = np.concatenate([edges[side].ravel(), anchors[:, i]])
        if ids.size and ids.min() < 0:
            raise ValueError(f"dataset {root}: negative {side} node id")
        matrix = attrs[side]
        seen = max(int(ids.max()) + 1 if ids.size else 0, 0 if matrix is None else len(matrix))
        sizes[side] = int(meta.get(f"n_{side}", seen))
        if seen > sizes[side]:
            raise ValueError(
                f"dataset {root}: {side} node ids reach {seen - 1}, but meta.json says n_{side} = {sizes[side]}"
            )

    return Dataset(
        name=str(meta.get("name", root.name)),
        source_net=str(meta.get("source", "source")),
        target_net=str(meta.get("target", "target")),
        source_edges=edges["source"],
        target_edges=edges["target"],
        source_times=times["source"],
        target_times=times["target"],
        source_attrs=attrs["source"],
        target_attrs=attrs["target"],
        num_source=sizes["source"],
        num_target=sizes["target"],
        anchors=anchors,
        train=split["train"],
        test=split["test"],
        meta=meta,
    )


def split_anchors(dataset: Dataset, train_ratio: float | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's own split (``train_ratio=None``) or a seeded random ``train_ratio`` share of all anchors.

    Both parts keep the order of ``anchors.tsv``.
    """
    if train_ratio is None:
        if dataset.train is None or dataset.test is None:
            raise ValueError(f"dataset {dataset.name} has no train.tsv/test.tsv; give a train ratio (--train-ratio "
                             "0.2 draws a seeded 20% of anchors.tsv for training)")
        return dataset.train, dataset.test
    if not 0.0 <= train_ratio <= 1.0:
        raise ValueError(f"train ratio must be within [0, 1], got {train_ratio}")
    n = len(dataset.anchors)
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng(seed).permutation(n)[: round(train_ratio * n)]] = True
    return dataset.anchors[chosen], dataset.anchors[~chosen]


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
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    if train is None:
        if ds.train is None:
            raise ValueError(f"dataset {ds.name} has no train.tsv; pass train= (see split_anchors)")
        train = ds.train
    rng = np.random.default_rng(seed)
    nets = (ds.source_net, ds.target_net)

    # Both networks' edges as one table of (network index, line in its file, u, v).
    parts: list[np.ndarray] = []
    time_parts: list[np.ndarray] = []
    for k, (e, t) in enumerate(((ds.source_edges, ds.source_times), (ds.target_edges, ds.target_times))):
        keep = e[:, 0] != e[:, 1]
        parts.append(np.column_stack([np.full(len(e), k), np.arange(len(e)), e])[keep])
        if t is not None:
            time_parts.append(t[keep])
    table = np.concatenate(parts)
    if ds.timestamped:
        if len(time_parts) != len(parts):  # a Dataset built by hand; load_dataset refuses it
            raise ValueError(f"dataset {ds.name}: only one network's edges carry timestamps")
        edge_times = np.concatenate(time_parts)
        # A stable sort keeps source before target at equal times, and each file's own order.
        order = np.argsort(edge_times, kind="stable")
        table, edge_times = table[order], edge_times[order]
        start = float(edge_times[0]) if len(edge_times) else base_time
        span = float(edge_times[-1]) - start if len(edge_times) else windows * window_seconds
    else:
        table = table[rng.permutation(len(table))]
        start, span = base_time, windows * window_seconds
        edge_times = start + np.arange(len(table)) * (span / max(len(table), 1))

    anchors = np.asarray(train, dtype=np.int64).reshape(-1, 2)
    if protocol == "static":
        anchor_times = np.full(len(anchors), start)
    else:
        anchors = anchors[rng.permutation(len(anchors))]
        anchor_times = start + np.arange(len(anchors)) * (span / max(len(anchors), 1))

    return _replay(ds, nets, start, table, edge_times, anchors, anchor_times)


def _replay(
    ds: Dataset,
    nets: tuple[str, str],
    start: float,
    table: np.ndarray,
    edge_times: np.ndarray,
    anchors: np.ndarray,
    anchor_times: np.ndarray,
) -> Iterator[Event]:
    # Every other event is at or after `start`, so attributes can simply go first.
    for k, matrix in enumerate((ds.source_attrs, ds.target_attrs)):
        if matrix is None:
            continue
        for i in range(len(matrix)):
            attrs = tuple(matrix[i].astype(np.float64).tolist())
            yield Event(op=SET_ATTR, time=start, net=nets[k], u=str(i), attrs=attrs, id=f"{nets[k]}:a{i}")

    # One stable sort over [anchors | edges] puts anchors first at equal times.
    times = np.concatenate([anchor_times, edge_times])
    anchor_rows, edge_rows = anchors.tolist(), table.tolist()
    order = np.argsort(times, kind="stable")
    for j, t in zip(order.tolist(), times[order].tolist()):
        if j < len(anchor_rows):
            s, d = anchor_rows[j]
            yield Event(op=ADD_ANCHOR, time=t, net=nets[0], u=str(s), to=nets[1], v=str(d), id=f"anchor:{s}:{d}")
        else:
            k, line, u, v = edge_rows[j - len(anchor_rows)]
            yield Event(op=ADD_EDGE, time=t, net=nets[k], u=str(u), v=str(v), id=f"{nets[k]}:e{line}")


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
