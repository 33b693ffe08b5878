"""Small synthetic alignment datasets in the exchange format, for tests that must not depend on ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def preferential_attachment(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(m, 2)`` sorted undirected edges of an ``n``-node graph, each new node tied to up to 3 earlier ones by
    degree: the skewed degrees of social graphs."""
    edges = {(0, 1)}
    targets = [0, 1]
    for v in range(2, n):
        for u in set(rng.choice(targets, size=min(3, len(targets)), replace=False).tolist()):
            edges.add((min(u, v), max(u, v)))
            targets += [u, v]
    return np.array(sorted(edges), dtype=np.int64)


def write_pair_dataset(root: Path, n: int = 150, seed: int = 0, edge_keep: float = 0.9, train_ratio: float = 0.3,
                       attributes: bool = True, timestamps: bool = False) -> Path:
    """A graph and a noisy, permuted copy of it: edges kept with ``edge_keep``, a few random ones added."""
    rng = np.random.default_rng(seed)
    src = preferential_attachment(n, rng)
    perm = rng.permutation(n)
    kept = src[rng.random(len(src)) < edge_keep]
    extra = rng.integers(0, n, size=(max(1, len(src) // 20), 2))
    tgt = np.concatenate([perm[kept], perm[extra[extra[:, 0] != extra[:, 1]]]])
    tgt = np.unique(np.sort(tgt, axis=1), axis=0)
    anchors = np.stack([np.arange(n), perm], axis=1)
    order = rng.permutation(n)
    n_train = int(round(n * train_ratio))
    train, test = anchors[np.sort(order[:n_train])], anchors[np.sort(order[n_train:])]
    root.mkdir(parents=True, exist_ok=True)

    def save_edges(path: Path, e: np.ndarray) -> None:
        if timestamps:
            ts = np.sort(rng.integers(1_600_000_000, 1_600_000_000 + 10 * 86400, size=len(e)))
            rows = np.concatenate([e[rng.permutation(len(e))], ts[:, None]], axis=1)
            np.savetxt(path, rows, fmt="%d", delimiter="\t")
        else:
            np.savetxt(path, e, fmt="%d", delimiter="\t")

    save_edges(root / "source.edges.tsv", src)
    save_edges(root / "target.edges.tsv", tgt)
    if attributes:
        cats = rng.integers(0, 12, size=n)
        a_src = np.eye(12, dtype=np.uint8)[cats]
        noisy = np.where(rng.random(n) < 0.1, rng.integers(0, 12, size=n), cats)
        a_tgt = np.zeros_like(a_src)
        a_tgt[perm] = np.eye(12, dtype=np.uint8)[noisy]
        np.save(root / "source.attr.npy", a_src)
        np.save(root / "target.attr.npy", a_tgt)
    for name, arr in (("anchors", anchors), ("train", train), ("test", test)):
        np.savetxt(root / f"{name}.tsv", arr, fmt="%d", delimiter="\t")
    (root / "meta.json").write_text(json.dumps({
        "name": f"synthetic-{seed}", "source": "left", "target": "right", "n_source": n, "n_target": n,
        "anchors": n, "train": len(train), "attributes": attributes, "timestamps": timestamps,
    }))
    return root


def write_multi_dataset(root: Path, names: str = "abc", n: int = 150, seed: int = 0, edge_keep: float = 0.85,
                        train_ratio: float = 0.3, trained: tuple[str, ...] = ("a~b", "b~c")) -> Path:
    """Noisy, permuted views of one preferential-attachment graph in the multi-network format: every pair of
    views has all its true pairs as anchors, and only the ``trained`` pairs have train anchors."""
    rng = np.random.default_rng(seed)
    base = preferential_attachment(n, rng)
    perms = {name: rng.permutation(n) for name in names}  # node i of the graph is node perms[name][i] of a view
    for name in names:
        kept = perms[name][base[rng.random(len(base)) < edge_keep]]
        (root / "networks").mkdir(parents=True, exist_ok=True)
        np.savetxt(root / "networks" / f"{name}.edges.tsv", np.unique(np.sort(kept, axis=1), axis=0), fmt="%d",
                   delimiter="\t")
    pairs = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            anchors = np.stack([perms[a], perms[b]], axis=1)
            order = rng.permutation(n)
            n_train = int(round(n * train_ratio)) if f"{a}~{b}" in trained else 0
            train, test = anchors[np.sort(order[:n_train])], anchors[np.sort(order[n_train:])]
            for folder, rows in (("anchors", anchors), ("train", train), ("test", test)):
                (root / folder).mkdir(parents=True, exist_ok=True)
                np.savetxt(root / folder / f"{a}~{b}.tsv", rows.reshape(-1, 2), fmt="%d", delimiter="\t")
            pairs[f"{a}~{b}"] = {"anchors": n, "train": len(train)}
    (root / "meta.json").write_text(json.dumps({"name": f"synthetic-multi-{seed}", "networks": {m: n for m in names},
                                                "pairs": pairs, "attributes": False, "timestamps": False}))
    return root
