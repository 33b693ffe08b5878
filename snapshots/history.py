"""Every published alignment version, kept on disk with the snapshot it reflects, for time travel and audits.

Redis holds only the last ``publish.retain_versions`` versions of a pair; users ask what the alignments were
when a decision was taken, or want to compare a re-alignment with what was published. The history records each
version's top-k (candidate indices and float32 scores, exactly as computed: reproducibility checks compare them
bit for bit) with its snapshot id, event time and model version, and the node ids needed to read it. Like the
snapshot store it grows with the changes: a full record every ``base_every`` versions of a pair and, in between,
only the nodes whose candidates or scores changed and the ids registered since (:mod:`snapshots.delta`).
Layout::

    root/index.jsonl                  one JSON line per recorded version (pair, version, snapshot, end_time,
                                      published_at, model_version, kind, parent, file, bytes, sha256)
    root/<A>~<B>-<version>-<sha8>.npz one record (npz, no pickles)

Nothing here knows the aligner: a direction is anything with ``src``, ``dst``, ``src_index``, ``candidates``
and ``scores`` (``aligner.update.PairTopK``).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np

from snapshots.delta import diff_keyed, patch_keyed
from snapshots.files import StoreCorruption, read_verified, write_durably
from snapshots.manifest import Manifest
from snapshots.npz import json_array, npz_bytes
from snapshots.snapshot import pair_key
from snapshots.snapshot_chain import DEFAULT_BASE_EVERY
from snapshots.snapshot_codec import pack_strings, unpack_strings


class Direction(Protocol):
    src: str
    dst: str
    src_index: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True, eq=False)
class RecordedAlignment:
    """One recorded version of a pair: ``top[(src, dst)] = (src_index, candidates, scores)``, indices into
    ``node_ids[src]`` and ``node_ids[dst]``."""

    entry: dict[str, Any]
    node_ids: dict[str, tuple[str, ...]]
    top: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]

    def candidates(self, node: str, net: str, to: str, k: int | None = None) -> list[tuple[str, float]]:
        """``[(candidate id, score), ...]`` best first for ``node`` of ``net``; empty if it was not aligned."""
        src_index, candidates, scores = self.top[(net, to)]
        try:
            index = self.node_ids[net].index(node)
        except ValueError:
            return []
        row = np.searchsorted(src_index, index)
        if row >= len(src_index) or src_index[row] != index:
            return []
        dst = self.node_ids[to]
        out = [(dst[c], float(s)) for c, s in zip(candidates[row].tolist(), scores[row].tolist())]
        return out[:k] if k else out


class AlignmentHistory:
    """Recorded versions under ``root`` (created if missing). One writer at a time."""

    def __init__(self, root: Path | str, base_every: int = DEFAULT_BASE_EVERY):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_every = base_every
        self.index = Manifest(self.root / "index.jsonl")
        self._last: dict[str, RecordedAlignment] = {}  # pair tag -> newest record written or read (delta parent)

    def record(self, net_a: str, net_b: str, version: int, snapshot_id: int, end_time: float,
               node_ids: dict[str, tuple[str, ...]], directions: Iterable[Direction],
               model_version: str | None = None) -> dict[str, Any]:
        """Durably record one version of the pair (a delta on its previous version unless a base is due)."""
        tag = _tag(net_a, net_b)
        a, b = pair_key(net_a, net_b)
        top = {(d.src, d.dst): (np.asarray(d.src_index, np.int64), np.asarray(d.candidates, np.int64),
                                np.asarray(d.scores, np.float32)) for d in directions}
        current = RecordedAlignment({}, {n: tuple(node_ids[n]) for n in (a, b)}, top)
        # A version recorded again (a restart re-aligns and republishes what its checkpoint had not kept) is built
        # on the versions before it, never on its own earlier record: that made a version its own parent.
        previous = [e for e in self._entries(tag) if e["version"] < version]
        parent = None
        if previous and previous[-1].get("depth", 0) + 1 < self.base_every:
            try:
                parent = self.load(previous[-1])
            except StoreCorruption:
                parent = None  # a damaged predecessor is never built upon: start a new base
        if parent is not None and any(ids[:len(parent.node_ids.get(n, ()))] != parent.node_ids.get(n, ())
                                      for n, ids in current.node_ids.items()):
            parent = None  # registries only grow; anything else is stored whole
        data = _encode(current, parent)
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / f"{a}~{b}-{version:08d}-{digest[:8]}.npz"
        write_durably(path, data)
        entry = {"pair": [a, b], "version": version, "snapshot": snapshot_id, "end_time": end_time,
                 "published_at": time.time(), "model_version": model_version,
                 "kind": "base" if parent is None else "delta",
                 "parent": None if parent is None else parent.entry["version"],
                 "depth": 0 if parent is None else parent.entry.get("depth", 0) + 1,
                 "nodes": {n: int(len(top[(n, m)][0])) for n, m in ((a, b), (b, a)) if (n, m) in top},
                 "file": path.name, "bytes": len(data), "sha256": digest}
        self.index.append(entry)
        self._last[tag] = RecordedAlignment(entry, current.node_ids, top)
        return entry

    def pairs(self) -> list[tuple[str, str]]:
        return sorted({tuple(e["pair"]) for e in self.index.entries()})

    def entries(self, net: str, to: str) -> list[dict[str, Any]]:
        """The recorded versions of the pair, oldest first (the last line per version wins)."""
        return self._entries(_tag(net, to))

    def as_of(self, net: str, to: str, snapshot: int | None = None, at: float | None = None) -> dict[str, Any] | None:
        """The entry in force at snapshot ``snapshot`` (the newest version of a snapshot <= it) or at event time
        ``at`` (the newest version whose snapshot window ended by then); with neither, the newest."""
        entries = self.entries(net, to)
        if snapshot is not None:
            entries = [e for e in entries if e["snapshot"] <= snapshot]
        if at is not None:
            entries = [e for e in entries if e["end_time"] <= at]
        return entries[-1] if entries else None

    def load(self, entry: dict[str, Any]) -> RecordedAlignment:
        """The record an index entry describes (built from its base and deltas); :class:`StoreCorruption` if a
        file is damaged."""
        tag = _tag(*entry["pair"])
        by_version = {e["version"]: e for e in self._entries(tag)}
        chain = [entry]
        cached = self._last.get(tag)
        while chain[-1].get("parent") is not None:
            parent = by_version.get(chain[-1]["parent"])
            if cached is not None and parent is not None and cached.entry.get("sha256") == parent["sha256"]:
                break
            if parent is None:
                raise StoreCorruption(f"alignment version {chain[-1]['version']} of {tag} is a delta on version "
                                      f"{chain[-1]['parent']}, which is no longer recorded")
            if parent["version"] >= chain[-1]["version"]:  # written by a version that built one on itself
                raise StoreCorruption(f"alignment version {chain[-1]['version']} of {tag} is a delta on version "
                                      f"{parent['version']}, not on an older one")
            chain.append(parent)
        files = [self._verified_bytes(e) for e in chain]
        base = cached if chain[-1].get("parent") is not None else None
        record = _decode(files[-1], base, chain[-1])
        for e, data in zip(reversed(chain[:-1]), reversed(files[:-1])):
            record = _decode(data, record, e)
        self._last[tag] = record
        return record

    def compact(self, keep_from_snapshot: int) -> int:
        """Drop versions of snapshots before ``keep_from_snapshot``, keeping each pair's newest such version (it
        answers as-of queries up to the next one) and the base it is built on; returns how many were dropped."""
        keep: list[dict[str, Any]] = []
        dropped = 0
        for tag in sorted({_tag(*e["pair"]) for e in self.index.entries()}):
            versions = self._entries(tag)
            first = max((i for i, e in enumerate(versions) if e["snapshot"] < keep_from_snapshot), default=0)
            while first > 0 and versions[first].get("parent") is not None:
                first -= 1  # whole base groups only: no kept delta loses its base
            keep += versions[first:]
            dropped += first
        if dropped:
            self.index.rewrite(keep)
            named = {e["file"] for e in keep}
            for path in self.root.glob("*.npz"):
                if path.name not in named:
                    path.unlink(missing_ok=True)
            self._last.clear()
        return dropped

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())

    def _entries(self, tag: str) -> list[dict[str, Any]]:
        by_version = {e["version"]: e for e in self.index.entries() if _tag(*e["pair"]) == tag}
        return [by_version[v] for v in sorted(by_version)]

    def _verified_bytes(self, entry: dict[str, Any]) -> bytes:
        return read_verified(self.root / entry["file"], entry, f"alignment history version {entry['version']}")


def _tag(net_a: str, net_b: str) -> str:
    return "|".join(pair_key(net_a, net_b))


def _encode(record: RecordedAlignment, parent: RecordedAlignment | None) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    nets = list(record.node_ids)
    directions = []
    for j, ((src, dst), (src_index, candidates, scores)) in enumerate(record.top.items()):
        old = parent.top.get((src, dst)) if parent is not None else None
        if old is not None and old[1].shape[1:] == candidates.shape[1:]:
            removed, keys, (cands, vals) = diff_keyed(old[0], [old[1], old[2]], src_index, [candidates, scores])
            delta = True
        else:
            removed, keys, cands, vals, delta = np.zeros(0, np.int64), src_index, candidates, scores, False
        arrays[f"d{j}_removed"], arrays[f"d{j}_keys"] = removed, keys
        arrays[f"d{j}_candidates"], arrays[f"d{j}_scores"] = cands.astype(np.int32), vals
        directions.append({"src": src, "dst": dst, "delta": delta, "k": int(candidates.shape[1])
                           if candidates.ndim == 2 else 0})
    for i, net in enumerate(nets):
        old_ids = parent.node_ids.get(net, ()) if parent is not None else ()
        arrays[f"n{i}_ids"], arrays[f"n{i}_ends"] = pack_strings(record.node_ids[net][len(old_ids):])
    meta = {"parent": None if parent is None else parent.entry.get("version"), "networks": nets,
            "directions": directions}
    return npz_bytes({"meta": json_array(meta), **arrays}, compressed=True)


def _decode(data: bytes, parent: RecordedAlignment | None, entry: dict[str, Any]) -> RecordedAlignment:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes())
        if meta["parent"] is None:
            parent = None
        node_ids = {}
        for i, net in enumerate(meta["networks"]):
            old_ids = parent.node_ids.get(net, ()) if parent is not None else ()
            node_ids[net] = old_ids + unpack_strings(npz[f"n{i}_ids"], npz[f"n{i}_ends"])
        top = {}
        for j, d in enumerate(meta["directions"]):
            keys, cands = npz[f"d{j}_keys"], npz[f"d{j}_candidates"].astype(np.int64).reshape(-1, d["k"])
            scores = npz[f"d{j}_scores"].reshape(-1, d["k"])
            if d["delta"]:
                assert parent is not None  # a delta version is decoded on its parent (AlignmentHistory.load)
                old = parent.top[(d["src"], d["dst"])]
                keys, (cands, scores) = patch_keyed(old[0], [old[1], old[2]], npz[f"d{j}_removed"], keys,
                                                    [cands, scores])
            top[(d["src"], d["dst"])] = (keys, cands, scores)
    return RecordedAlignment(entry, node_ids, top)
