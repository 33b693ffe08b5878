"""Multi-network datasets: any number of networks, anchors per pair, some pairs with none to train on.

The format (``../shared/data/README.md``, "Multi-network format"): ``networks/<name>.edges.tsv`` (and optional
``networks/<name>.attr.npy``) per network, ``anchors/<a>~<b>.tsv`` (every true pair), ``train/<a>~<b>.tsv`` and
``test/<a>~<b>.tsv`` per pair, ``meta.json``. Read with the pair format's readers and replayed by the same
replay (:mod:`stream.datasets`), so a pair written either way streams the same events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from stream.datasets import (
    BASE_TIME,
    NetworkData,
    is_multi_dataset,
    network_events,
    network_size,
    ratio_split,
    read_meta,
    read_network,
    read_table,
)
from stream.events import Event

MULTI_FORMAT_HINT = ("a multi-network folder: networks/<name>.edges.tsv (lines 'u v' or 'u v time') and optional "
                     "networks/<name>.attr.npy per network, anchors/<a>~<b>.tsv (every true pair, ids of a then "
                     "of b), train/<a>~<b>.tsv and test/<a>~<b>.tsv per pair (a train file may be empty), meta.json "
                     "(../shared/data/README.md)")


@dataclass
class MultiDataset:
    """Any number of networks and, per pair ``(a, b)`` (``a < b``; the files may name it either way), every true
    pair of nodes (``anchors``, node of ``a`` first) and its split; a pair may have no train anchors at all (it
    is aligned through the others)."""

    name: str
    networks: dict[str, NetworkData]
    anchors: dict[tuple[str, str], np.ndarray]
    train: dict[tuple[str, str], np.ndarray]
    test: dict[tuple[str, str], np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def timestamped(self) -> bool:
        return any(net.times is not None for net in self.networks.values())


def load_multi_dataset(path: Path | str) -> MultiDataset:
    """Read a multi-network folder (:data:`MULTI_FORMAT_HINT`). Every pair with an ``anchors/`` file is a pair
    of the dataset; its ``train/`` file may be empty or missing (no train anchors), its ``test/`` file missing
    (then every anchor not in train is a test anchor)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if not is_multi_dataset(root):
        raise ValueError(f"dataset {root} has no networks/ folder; {MULTI_FORMAT_HINT}")
    meta = read_meta(root)
    edge_files = sorted((root / "networks").glob("*.edges.tsv"))
    if len(edge_files) < 2:
        raise ValueError(f"dataset {root}: networks/ holds {len(edge_files)} edge file(s), at least 2 are needed; "
                         f"{MULTI_FORMAT_HINT}")
    read = {f.name.removesuffix(".edges.tsv"): read_network(f, f.with_name(f.name.replace(".edges.tsv", ".attr.npy")))
            for f in edge_files}
    if len({times is None for _, times, _ in read.values()}) > 1:
        raise ValueError(f"dataset {root}: only some networks' edges carry timestamps")
    anchors, train, test = {}, {}, {}
    for f in sorted((root / "anchors").glob("*.tsv")):
        pair = tuple(f.name.removesuffix(".tsv").split("~"))
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(read):
            raise ValueError(f"{f}: an anchor file is named <a>~<b>.tsv after two different networks of "
                             f"networks/ ({', '.join(read)})")
        # Kept with the names in sorted order (the order pairs are aligned in), the columns turned to match.
        key, turn = (min(pair), max(pair)), slice(None, None, 1 if pair[0] < pair[1] else -1)
        if key in anchors:
            raise ValueError(f"{f}: the pair {key[0]}~{key[1]} has two anchor files")
        anchors[key] = read_table(f, (2,), "anchors")[:, turn]
        p = root / "train" / f.name
        train[key] = (read_table(p, (2,), "train anchors") if p.exists() else np.empty((0, 2), dtype=np.int64))[:, turn]
        p = root / "test" / f.name
        test[key] = (read_table(p, (2,), "test anchors")[:, turn] if p.exists()
                     else _rows_not_in(anchors[key], train[key]))
    if not anchors:
        raise ValueError(f"dataset {root}: anchors/ holds no <a>~<b>.tsv file; {MULTI_FORMAT_HINT}")
    declared: dict[str, Any] = meta["networks"] if isinstance(meta.get("networks"), dict) else {}
    networks = {}
    for name, (edges, times, attrs) in read.items():
        ids = [edges.ravel()] + [rows[:, pair.index(name)] for pair, rows in anchors.items() if name in pair]
        size = network_size(root, f"network {name!r}", np.concatenate(ids), attrs, declared, name)
        networks[name] = NetworkData(name, edges, times, attrs, size)
    return MultiDataset(str(meta.get("name", root.name)), networks, anchors, train, test, meta)


def _rows_not_in(rows: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The rows of ``rows`` (``(k, 2)``) that are not rows of ``removed``, in their order."""
    gone = {tuple(r) for r in removed.tolist()}
    return rows[np.array([tuple(r) not in gone for r in rows.tolist()], dtype=bool)].reshape(-1, 2)


def split_multi_anchors(dataset: MultiDataset, train_ratio: float | None, seed: int
                        ) -> tuple[dict[tuple[str, str], np.ndarray], dict[tuple[str, str], np.ndarray]]:
    """:func:`split_anchors` per pair of a multi-network dataset: its own split, or a seeded ``train_ratio``
    share of every pair's anchors (each pair its own draw)."""
    if train_ratio is None:
        return dataset.train, dataset.test
    parts = {pair: ratio_split(rows, train_ratio, seed + k) for k, (pair, rows) in enumerate(dataset.anchors.items())}
    return {p: t for p, (t, _) in parts.items()}, {p: t for p, (_, t) in parts.items()}


def multi_dataset_events(ds: MultiDataset, *, protocol: str = "stream", windows: int = 10, seed: int = 0,
                         train: dict[tuple[str, str], np.ndarray] | None = None, window_seconds: float = 3600.0,
                         base_time: float = BASE_TIME) -> Iterator[Event]:
    """:func:`dataset_events` for a multi-network dataset: every network's edges on one clock, the ``train``
    anchors of every pair (default: the dataset's train split) revealed together. Anchor event ids name the
    pair (``anchor:a~b:i:j``): the same two node ids may be anchored in several pairs."""
    train = ds.train if train is None else train
    sets = [(f"anchor:{a}~{b}", a, b, train.get((a, b), np.empty((0, 2), dtype=np.int64))) for a, b in ds.anchors]
    return network_events(ds.name, list(ds.networks.values()), sets, protocol, windows, seed, window_seconds,
                           base_time)
