"""Stored snapshots as an offline research dataset: torch-geometric-temporal signals plus plain edge lists.

Researchers want the history outside the service: to train temporal GNNs on it, or to load it into other
tools. Each network becomes one ``DynamicGraphTemporalSignal`` over the exported snapshots, indexed by the
node registry as it stands at the last exported snapshot (indices are stable, so node ``i`` is the same
account at every step; nodes not registered yet simply have no edges and are not alive). Layout::

    DIR/meta.json                     snapshots (id, times, events), networks, anchor pairs, format notes
    DIR/<net>/node_ids.txt            external id of node i on line i
    DIR/<net>/signal.npz              edge_index_<t> (2, E) int64, each undirected edge once (u < v),
                                      edge_weight_<t> (E,) float32, features_<t> (N, d) float32 attributes
                                      (d = 0 without), targets_<t> (N,) float32 alive flag,
                                      anchor_<other>_<t> (N,) int64 counterpart index in <other> or -1
    DIR/<net>/edges/<snapshot>.tsv    u_id <TAB> v_id <TAB> weight, external ids

:func:`load_signal` builds the signal (with ``anchor_<other>`` as additional features).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from snapshots.snapshot import Snapshot
from stream.events import NAME_PATTERN

FORMAT = "dynalign-export/1"


def export_snapshots(snapshots: Iterable[Snapshot], out: Path) -> dict[str, Any]:
    """Write ``snapshots`` (in order) under ``out``; returns the meta written to ``meta.json``."""
    snaps = list(snapshots)
    if not snaps:
        raise ValueError("no snapshots to export")
    out.mkdir(parents=True, exist_ok=True)
    last = snaps[-1]
    nets = sorted({n for s in snaps for n in s.networks})
    sizes = {n: max(s.networks[n].num_nodes for s in snaps if n in s.networks) for n in nets}
    node_ids = {n: next(s.networks[n].node_ids for s in reversed(snaps) if n in s.networks) for n in nets}
    widths = {n: max((attrs.shape[1] for s in snaps
                      if n in s.networks and (attrs := s.networks[n].attrs) is not None), default=0) for n in nets}
    for net in nets:
        if not NAME_PATTERN.match(net):  # a state written before names were checked this strictly
            raise ValueError(f"network name {net!r} cannot be a folder name under {out}: not exported")
        directory = out / net
        (directory / "edges").mkdir(parents=True, exist_ok=True)
        (directory / "node_ids.txt").write_text("".join(f"{node}\n" for node in node_ids[net]))
        n = sizes[net]
        arrays: dict[str, np.ndarray] = {}
        width = widths[net]
        for t, snap in enumerate(snaps):
            g = snap.networks.get(net)
            edge_index = np.zeros((2, 0), np.int64) if g is None else np.asarray(g.edge_index, np.int64)
            weight = np.zeros(0, np.float32) if g is None else np.asarray(g.edge_weight, np.float32)
            features = np.zeros((n, width), np.float32)
            alive = np.zeros(n, np.float32)
            if g is not None:
                if g.attrs is not None:
                    features[:g.num_nodes, :g.attrs.shape[1]] = g.attrs
                alive[:g.num_nodes] = g.alive
            arrays[f"edge_index_{t}"], arrays[f"edge_weight_{t}"] = edge_index, weight
            arrays[f"features_{t}"], arrays[f"targets_{t}"] = features, alive
            for other in nets:
                if other == net:
                    continue
                partner = np.full(n, -1, np.int64)
                pairs = snap.anchors_between(net, other) if other in snap.networks and g is not None else None
                if pairs is not None and len(pairs):
                    partner[pairs[:, 0]] = pairs[:, 1]
                arrays[f"anchor_{other}_{t}"] = partner
            if g is not None:
                ids = g.node_ids
                lines = [f"{ids[u]}\t{ids[v]}\t{w:g}\n"
                         for u, v, w in zip(edge_index[0].tolist(), edge_index[1].tolist(), weight.tolist())]
                (directory / "edges" / f"{snap.id:08d}.tsv").write_text("".join(lines))
        # numpy's stub types **kwds as if they could bind allow_pickle (a bool); these names never do
        np.savez_compressed(directory / "signal.npz", **arrays)  # type: ignore[arg-type]
    meta = {
        "format": FORMAT,
        "snapshots": [{"id": s.id, "start_time": s.start_time, "end_time": s.end_time, "events": s.events}
                      for s in snaps],
        "networks": {n: {"nodes": sizes[n], "attributes": widths[n]} for n in nets},
        "anchor_pairs": [list(k) for k in sorted({k for s in snaps for k in s.anchors})],
        "last_snapshot": last.id,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def load_signal(directory: Path, net: str) -> Any:
    """The exported network ``net`` as a ``torch_geometric_temporal.signal.DynamicGraphTemporalSignal``."""
    from torch_geometric_temporal.signal import DynamicGraphTemporalSignal

    meta = json.loads((directory / "meta.json").read_text())
    steps = len(meta["snapshots"])
    others = [n for n in meta["networks"] if n != net]
    with np.load(directory / net / "signal.npz", allow_pickle=False) as npz:
        def series(name: str) -> list[np.ndarray]:
            return [npz[f"{name}_{t}"] for t in range(steps)]

        extra = {f"anchor_{other}": series(f"anchor_{other}") for other in others}
        return DynamicGraphTemporalSignal(series("edge_index"), series("edge_weight"), series("features"),
                                          series("targets"), **extra)
