"""A snapshot as the bytes of one npz file: whole (a *base*) or as its difference to the previous snapshot (a
*delta*), so the store grows with the changes rather than with snapshots x graph size. No pickles:
``np.load(..., allow_pickle=False)`` reads every file, and equal snapshots give equal bytes.

A base holds every array. A delta holds, per network, the node ids added since its parent (registries only
grow), the edges removed and the edges added or re-weighted (keyed u << 32 | v), the nodes whose alive flag
or attribute row changed, and ``changed`` as is; per anchor pair, the pairs removed and added. A network new
since the parent, or whose attribute width changed, or whose ids are not an extension of the parent's, is
stored whole inside the delta.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from snapshots.delta import diff_dense, diff_keyed, patch_dense, patch_keyed
from snapshots.npz import json_array, npz_bytes
from snapshots.snapshot import NetworkSnapshot, Snapshot

_LOW_BITS = (1 << 32) - 1


def snapshot_counts(snapshot: Snapshot) -> dict[str, Any]:
    """What a manifest entry records of a snapshot's content: per network nodes, alive nodes, edges and changed
    nodes, and the anchor pairs per network pair."""
    return {"networks": {name: {"nodes": net.num_nodes, "alive": int(net.alive.sum()), "edges": net.num_edges,
                                "changed": int(len(net.changed))}
                         for name, net in snapshot.networks.items()},
            "anchors": [[a, b, int(len(pairs))] for (a, b), pairs in snapshot.anchors.items()]}


def snapshot_to_bytes(snapshot: Snapshot) -> bytes:
    """A self-contained (base) snapshot file, to carry a snapshot outside its store (savepoints)."""
    return encode_snapshot(snapshot, None)


def snapshot_from_bytes(data: bytes) -> Snapshot:
    return decode_snapshot(data, None)


def encode_snapshot(snapshot: Snapshot, parent: Snapshot | None) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    networks = []
    for i, (name, net) in enumerate(snapshot.networks.items()):
        p = f"n{i}_"
        old = parent.networks.get(name) if parent is not None else None
        if old is not None and net.node_ids[:old.num_nodes] != old.node_ids:
            old = None
        spec = {"name": name, "has_attrs": net.attrs is not None, "delta": old is not None,
                "attr_names": None if net.attr_names is None else list(net.attr_names), "nodes": net.num_nodes}
        arrays[p + "changed"] = np.asarray(net.changed, np.int64)
        keys, weights = _edge_keys(net.edge_index), np.asarray(net.edge_weight, np.float32)
        if old is None:
            arrays[p + "node_ids"], arrays[p + "node_id_ends"] = pack_strings(net.node_ids)
            arrays[p + "edge_keys"], arrays[p + "edge_weight"] = keys, weights
            arrays[p + "alive"] = np.asarray(net.alive, bool)
        else:
            arrays[p + "node_ids"], arrays[p + "node_id_ends"] = pack_strings(net.node_ids[old.num_nodes:])
            removed, keys, (weights,) = diff_keyed(_edge_keys(old.edge_index), [old.edge_weight], keys, [weights])
            arrays[p + "edge_removed"], arrays[p + "edge_keys"], arrays[p + "edge_weight"] = removed, keys, weights
            arrays[p + "alive_idx"], arrays[p + "alive"] = diff_dense(old.alive, np.asarray(net.alive, bool))
        if net.attrs is not None:
            attrs = np.asarray(net.attrs, np.float32)
            old_attrs = None if old is None else old.attrs
            if old_attrs is not None and old_attrs.shape[1] == attrs.shape[1]:
                spec["attrs_delta"] = True
                arrays[p + "attr_idx"], arrays[p + "attrs"] = diff_dense(old_attrs, attrs)
            else:
                spec["attrs_delta"] = False
                arrays[p + "attrs"] = attrs
        networks.append(spec)
    for j, (key, pairs) in enumerate(snapshot.anchors.items()):
        new_keys = _pair_keys(pairs)
        old_pairs = parent.anchors.get(key) if parent is not None else None
        old_keys = _pair_keys(old_pairs) if old_pairs is not None else np.zeros(0, np.int64)
        arrays[f"a{j}_removed"], arrays[f"a{j}_keys"], _ = diff_keyed(old_keys, [], new_keys, [])
    meta = {"id": snapshot.id, "start_time": snapshot.start_time, "end_time": snapshot.end_time,
            "events": snapshot.events, "arrived": snapshot.arrived, "parent": None if parent is None else parent.id,
            "networks": networks, "anchor_pairs": [list(key) for key in snapshot.anchors]}
    return npz_bytes({"meta": json_array(meta), **arrays}, compressed=True)


def decode_snapshot(data: bytes, parent: Snapshot | None) -> Snapshot:
    """A snapshot file's content; a delta needs its parent (the snapshot its meta names)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes())
        if "parent" not in meta:
            return _decode_legacy(npz, meta)
        if meta["parent"] is not None and (parent is None or parent.id != meta["parent"]):
            raise ValueError(f"snapshot {meta['id']} is a delta on {meta['parent']}, got parent "
                             f"{None if parent is None else parent.id}")
        networks = {}
        for i, spec in enumerate(meta["networks"]):
            p, n = f"n{i}_", spec["nodes"]
            ids = unpack_strings(npz[p + "node_ids"], npz[p + "node_id_ends"])
            if spec["delta"]:
                assert parent is not None  # a delta network is only written with a parent, checked above to match
                old = parent.networks[spec["name"]]
                ids = old.node_ids + ids
                keys, (weights,) = patch_keyed(_edge_keys(old.edge_index), [old.edge_weight], npz[p + "edge_removed"],
                                               npz[p + "edge_keys"], [npz[p + "edge_weight"]])
                alive = patch_dense(old.alive, n, npz[p + "alive_idx"], npz[p + "alive"])
            else:
                old = None
                keys, weights, alive = npz[p + "edge_keys"], npz[p + "edge_weight"], npz[p + "alive"]
            attrs = None
            if spec["has_attrs"]:
                attrs = npz[p + "attrs"]
                if spec.get("attrs_delta"):
                    # written only against the parent's attributes of the same width (encode_snapshot)
                    assert old is not None and old.attrs is not None
                    attrs = patch_dense(old.attrs, n, npz[p + "attr_idx"], attrs)
            networks[spec["name"]] = NetworkSnapshot(
                name=spec["name"], node_ids=ids, edge_index=np.stack([keys >> 32, keys & _LOW_BITS]),
                edge_weight=weights, alive=alive, attrs=attrs,
                attr_names=None if spec["attr_names"] is None else tuple(spec["attr_names"]),
                changed=npz[p + "changed"])
        anchors = {}
        for j, (a, b) in enumerate(meta["anchor_pairs"]):
            old_pairs = parent.anchors.get((a, b)) if parent is not None else None
            old_keys = _pair_keys(old_pairs) if old_pairs is not None else np.zeros(0, np.int64)
            keys, _ = patch_keyed(old_keys, [], npz[f"a{j}_removed"], npz[f"a{j}_keys"], [])
            anchors[(a, b)] = np.stack([keys >> 32, keys & _LOW_BITS], axis=1).reshape(-1, 2)
    return Snapshot(id=meta["id"], start_time=meta["start_time"], end_time=meta["end_time"], networks=networks,
                    anchors=anchors, events=meta["events"], arrived=meta["arrived"])


def _decode_legacy(npz: Any, meta: dict[str, Any]) -> Snapshot:
    """A full snapshot written before deltas existed (arrays stored as the snapshot holds them)."""
    networks = {}
    for i, spec in enumerate(meta["networks"]):
        networks[spec["name"]] = NetworkSnapshot(
            name=spec["name"], node_ids=unpack_strings(npz[f"n{i}_node_ids"], npz[f"n{i}_node_id_ends"]),
            edge_index=npz[f"n{i}_edge_index"], edge_weight=npz[f"n{i}_edge_weight"], alive=npz[f"n{i}_alive"],
            attrs=npz[f"n{i}_attrs"] if spec["has_attrs"] else None,
            attr_names=None if spec["attr_names"] is None else tuple(spec["attr_names"]), changed=npz[f"n{i}_changed"])
    anchors = {(a, b): npz[f"a{j}"] for j, (a, b) in enumerate(meta["anchor_pairs"])}
    return Snapshot(id=meta["id"], start_time=meta["start_time"], end_time=meta["end_time"], networks=networks,
                    anchors=anchors, events=meta["events"])


def _edge_keys(edge_index: np.ndarray) -> np.ndarray:
    """``u << 32 | v`` per edge: sorted, since a snapshot's edges are in canonical (u, v) order."""
    edge_index = np.asarray(edge_index, np.int64)
    return (edge_index[0] << 32) | edge_index[1]


def _pair_keys(pairs: np.ndarray) -> np.ndarray:
    """Anchor pairs as ``a << 32 | b``: sorted, since pairs are sorted by their (unique) first column."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    return (pairs[:, 0] << 32) | pairs[:, 1]


def pack_strings(strings: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 blob plus end offsets: exact for any id (numpy's unicode dtype drops trailing NULs) and unpadded."""
    encoded = [s.encode("utf-8") for s in strings]
    ends = np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)))
    return np.frombuffer(b"".join(encoded), np.uint8), ends


def unpack_strings(blob: np.ndarray, ends: np.ndarray) -> tuple[str, ...]:
    data = blob.tobytes()
    bounds = [0, *ends.tolist()]
    return tuple(data[bounds[k]:bounds[k + 1]].decode("utf-8") for k in range(len(ends)))
