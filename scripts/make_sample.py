"""Cut the small demo dataset shipped in aligner/sample/ out of the douban benchmark (../shared/data/douban).

Run once by a maintainer; the output is committed so `make demo` works without ../shared. Deterministic:
breadth-first from one anchored node of the offline network until N anchor pairs are collected, the induced
subgraphs on them plus the online-only neighbours of those nodes, attribute columns restricted to those in use.

    python scripts/make_sample.py ../shared/data/douban aligner/sample --pairs 500
"""

from __future__ import annotations

import argparse
import json
from collections import deque
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("douban", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--pairs", type=int, default=500)
    p.add_argument("--extra", type=int, default=300, help="online-only neighbours to keep")
    p.add_argument("--train-ratio", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    d = a.douban
    es = np.loadtxt(d / "source.edges.tsv", dtype=np.int64)
    et = np.loadtxt(d / "target.edges.tsv", dtype=np.int64)
    anchors = np.loadtxt(d / "anchors.tsv", dtype=np.int64)
    xs, xt = np.load(d / "source.attr.npy"), np.load(d / "target.attr.npy")
    meta = json.loads((d / "meta.json").read_text())

    t2s = {int(t): int(s) for s, t in anchors}
    adj_t: dict[int, list[int]] = {}
    for u, v in et.tolist():
        adj_t.setdefault(u, []).append(v)
        adj_t.setdefault(v, []).append(u)
    start = max(adj_t, key=lambda n: len(adj_t[n]))
    seen, order, queue = {start}, [], deque([start])
    while queue and len(order) < a.pairs:
        n = queue.popleft()
        if n in t2s:
            order.append(n)
        for m in sorted(adj_t.get(n, [])):
            if m not in seen:
                seen.add(m)
                queue.append(m)
    keep_t = sorted(order)
    keep_s_anchor = {t2s[t] for t in keep_t}
    neighbours = sorted({int(v) for u, v in np.concatenate([es, es[:, ::-1]]).tolist()
                         if u in keep_s_anchor and v not in keep_s_anchor})
    rng = np.random.default_rng(a.seed)
    extra = rng.choice(neighbours, size=min(a.extra, len(neighbours)), replace=False).tolist() if neighbours else []
    keep_s = sorted(keep_s_anchor | set(extra))
    # Fresh dense ids, target ids shuffled so that identity is no hint.
    s_new = {n: i for i, n in enumerate(keep_s)}
    t_perm = rng.permutation(len(keep_t))
    t_new = {n: int(t_perm[i]) for i, n in enumerate(keep_t)}

    def induced(edges: np.ndarray, new: dict[int, int]) -> np.ndarray:
        rows = [(new[u], new[v]) for u, v in edges.tolist() if u in new and v in new]
        return np.array(sorted((min(r), max(r)) for r in rows), dtype=np.int64).reshape(-1, 2)

    e_s, e_t = induced(es, s_new), induced(et, t_new)
    pairs = np.array(sorted((s_new[t2s[t]], t_new[t]) for t in keep_t), dtype=np.int64)
    cols = np.flatnonzero(xs[keep_s].sum(0) + xt[keep_t].sum(0))
    a_s = xs[keep_s][:, cols].astype(np.uint8)
    a_t = np.zeros((len(keep_t), len(cols)), np.uint8)
    a_t[[t_new[t] for t in keep_t]] = xt[keep_t][:, cols]
    perm = rng.permutation(len(pairs))
    n_train = int(round(len(pairs) * a.train_ratio))
    train, test = pairs[np.sort(perm[:n_train])], pairs[np.sort(perm[n_train:])]

    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    np.savetxt(out / "source.edges.tsv", e_s, fmt="%d", delimiter="\t")
    np.savetxt(out / "target.edges.tsv", e_t, fmt="%d", delimiter="\t")
    np.save(out / "source.attr.npy", a_s)
    np.save(out / "target.attr.npy", a_t)
    for name, arr in (("anchors", pairs), ("train", train), ("test", test)):
        np.savetxt(out / f"{name}.tsv", arr, fmt="%d", delimiter="\t")
    (out / "meta.json").write_text(json.dumps({
        "name": "douban-sample", "source": meta["source"], "target": meta["target"],
        "n_source": len(keep_s), "n_target": len(keep_t), "m_source": len(e_s), "m_target": len(e_t),
        "anchors": len(pairs), "train": len(train), "attributes": True, "timestamps": False,
        "provenance": f"scripts/make_sample.py --pairs {a.pairs} --extra {a.extra} --seed {a.seed} from "
                      f"douban ({meta['provenance']})",
    }, indent=1) + "\n")
    print(f"{len(keep_s)} / {len(keep_t)} nodes, {len(e_s)} / {len(e_t)} edges, {len(pairs)} anchors "
          f"({len(train)} train), {len(cols)} attribute columns -> {out}")


if __name__ == "__main__":
    main()
