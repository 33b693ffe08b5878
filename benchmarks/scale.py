"""Cost against size (issue 18): one pair at 10k to 200k nodes, aligned as ``dynalign bench`` aligns it.

Each size is a pair of two noisy views of one power-law graph (Chung–Lu: expected degrees drawn from a Pareto
law, exponent ``--exponent``, mean ``--mean-degree``), each edge kept in each view with probability ``--keep``
(as ``../shared/data/enron-views`` was built), the target's node ids permuted; every node present in both views
is an anchor and ``--train`` of them are train anchors. Seeded: the same command writes the same files. Each pair
is written in the exchange format under ``--out`` and benchmarked with the static protocol (``fast``, one seed,
in its own process, as ``dynalign bench DIR --seeds 1 --variants fast``); extra folders (``--with``) join the table.

    .venv/bin/python benchmarks/scale.py --sizes 10000,50000,100000,200000 \
        --with ../shared/data/enron-views --json docs/bench/scale.json --plot docs/bench/scale.svg

Per size it reports seconds (and per training step), peak memory (and per node), Hits@1, the plan's cells
against ``n m`` and the share of test partners among the plan's candidates.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def power_law_pair(n: int, seed: int, mean_degree: float, exponent: float, keep: float,
                   train: float) -> dict[str, np.ndarray]:
    """Edges of two views (source ids, target ids permuted), every true pair present in both, the train split."""
    rng = np.random.default_rng(seed)
    weights = (1.0 - rng.random(n)) ** (-1.0 / (exponent - 1.0))  # Pareto: P(w > x) ~ x^-(exponent - 1)
    m = int(n * mean_degree / 2)
    p = weights / weights.sum()
    ends = rng.choice(n, size=(m, 2), p=p)
    ends = ends[ends[:, 0] != ends[:, 1]]
    ends = np.unique(np.sort(ends, axis=1), axis=0)
    perm = rng.permutation(n)  # node i of the source is node perm[i] of the target
    views = [ends[rng.random(len(ends)) < keep] for _ in range(2)]
    # Nodes a view lost every edge of are not in it; the rest are numbered 0.. in each view.
    kept_a, source = np.unique(views[0], return_inverse=True)
    kept_b, target = np.unique(perm[views[1]], return_inverse=True)
    source, target = source.reshape(-1, 2), target.reshape(-1, 2)
    present = np.intersect1d(kept_a, np.unique(views[1]))
    anchors = np.stack([np.searchsorted(kept_a, present), np.searchsorted(kept_b, perm[present])], axis=1)
    order = rng.permutation(len(anchors))
    n_train = int(round(train * len(anchors)))
    return {"source": source, "target": target, "anchors": anchors,
            "train": anchors[np.sort(order[:n_train])], "test": anchors[np.sort(order[n_train:])]}


def write_pair(folder: Path, n: int, seed: int, mean_degree: float, exponent: float, keep: float,
               train: float) -> Path:
    """The pair in the exchange format (``source.edges.tsv``, ``target.edges.tsv``, ``anchors.tsv``,
    ``train.tsv``, ``test.tsv``, ``meta.json``); kept when already written with the same parameters."""
    meta = {"name": folder.name, "source": "view_a", "target": "view_b", "nodes": n, "seed": seed,
            "mean_degree": mean_degree, "exponent": exponent, "keep": keep, "train_ratio": train,
            "attributes": False, "timestamps": False,
            "provenance": "benchmarks/scale.py: two views of a Chung-Lu power-law graph, each edge kept with "
                          f"p = {keep}, target ids permuted"}
    done = folder / "meta.json"
    if done.exists() and {k: v for k, v in json.loads(done.read_text()).items() if k in meta} == meta:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    pair = power_law_pair(n, seed, mean_degree, exponent, keep, train)
    for name, key in (("source.edges.tsv", "source"), ("target.edges.tsv", "target"), ("anchors.tsv", "anchors"),
                      ("train.tsv", "train"), ("test.tsv", "test")):
        np.savetxt(folder / name, pair[key], fmt="%d", delimiter="\t")
    meta.update({"n_source": int(len(np.unique(pair["source"]))), "n_target": int(len(np.unique(pair["target"]))),
                 "m_source": len(pair["source"]), "m_target": len(pair["target"]),
                 "anchors": len(pair["anchors"]), "train": len(pair["train"])})
    done.write_text(json.dumps(meta, indent=1))
    return folder


def measure(folder: Path) -> dict:
    """One seed of the static protocol, ``fast`` only, in its own process."""
    from aligner.bench.static import bench_static
    from aligner.config import load_config

    meta = json.loads((folder / "meta.json").read_text())
    started = time.perf_counter()
    result = bench_static(folder, load_config(), seeds=1, variants=("fast",), echo=lambda line: None)
    seed = result["per_seed"][0]
    n_a, n_b = meta["n_source"], meta["n_target"]
    return {"dataset": folder.name, "nodes": [n_a, n_b], "edges": [meta["m_source"], meta["m_target"]],
            "dense_cells": n_a * n_b, "plan_cells": seed["fast"]["plan_cells"],
            "candidate_recall": seed["fast"].get("candidate_recall"),
            "hits@1": seed["fast"]["hits@1"], "mrr": seed["fast"]["mrr"],
            "step_s": {k: seed["fast"][k] for k in ("meta_s", "calibration_s", "adapt_s", "align_s") if k in seed["fast"]},
            "wall_s": seed["wall_s"], "peak_rss_mb": seed["peak_rss_mb"],
            "peak_kb_per_node": round(seed["peak_rss_mb"] * 1024 / (n_a + n_b), 1),
            "measured_s": round(time.perf_counter() - started, 1)}


def svg_plot(rows: list[dict], path: Path) -> None:
    """Seconds and peak GB against nodes per network, log-log, as a small standalone SVG."""
    width, height, pad = 520, 320, 50
    xs = [np.log10(r["nodes"][0]) for r in rows]
    series = {"seconds": ([np.log10(r["wall_s"]) for r in rows], "#1f77b4"),
              "peak MB": ([np.log10(r["peak_rss_mb"]) for r in rows], "#d62728")}
    ys = [y for values, _ in series.values() for y in values]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    y0, y1 = min(ys) - 0.2, max(ys) + 0.2

    def at(x: float, y: float) -> tuple[float, float]:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad), height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{width / 2}" y="16" text-anchor="middle">cost against nodes per network (log-log)</text>']
    for x in sorted(set(xs)):
        px, _ = at(x, y0)
        parts.append(f'<text x="{px:.0f}" y="{height - pad + 16}" text-anchor="middle">{10 ** x:,.0f}</text>')
    for decade in range(int(np.floor(y0)), int(np.ceil(y1)) + 1):
        _, py = at(x0, decade)
        if pad <= py <= height - pad:
            parts.append(f'<text x="{pad - 6}" y="{py:.0f}" text-anchor="end">{10 ** decade:g}</text>'
                         f'<line x1="{pad}" x2="{width - pad}" y1="{py:.0f}" y2="{py:.0f}" stroke="#ddd"/>')
    for i, (label, (values, colour)) in enumerate(series.items()):
        points = " ".join(f"{px:.1f},{py:.1f}" for px, py in (at(x, y) for x, y in zip(xs, values)))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{width - pad}" y="{pad + 14 * i}" text-anchor="end" fill="{colour}">{label}</text>')
    path.write_text("".join(parts) + "</svg>\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,50000,100000,200000", help="nodes per network, comma-separated")
    parser.add_argument("--with", dest="extra", nargs="*", default=[], help="dataset folders to add to the table")
    parser.add_argument("--out", default=".dynalign/scale", help="where the generated pairs are written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mean-degree", type=float, default=8.0)
    parser.add_argument("--exponent", type=float, default=2.5)
    parser.add_argument("--keep", type=float, default=0.8)
    parser.add_argument("--train", type=float, default=0.2)
    parser.add_argument("--json", help="write the table here")
    parser.add_argument("--plot", help="write an SVG of seconds and peak memory against size here")
    args = parser.parse_args()
    folders = [write_pair(Path(args.out) / f"powerlaw-{n}", n, args.seed, args.mean_degree, args.exponent,
                          args.keep, args.train) for n in (int(s) for s in args.sizes.split(",") if s)]
    rows = []
    for folder in sorted([*folders, *(Path(p) for p in args.extra)], key=lambda f: json.loads(
            (f / "meta.json").read_text())["n_source"]):
        row = measure(folder)
        rows.append(row)
        print(f"{row['dataset']:<22} {row['nodes'][0]:>8,} x {row['nodes'][1]:<8,} H@1 {row['hits@1']:.3f} "
              f"{row['wall_s']:>7.0f} s {row['peak_rss_mb']:>7.0f} MB ({row['peak_kb_per_node']} kB/node)",
              flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=1))
    if args.plot and rows:
        svg_plot(rows, Path(args.plot))


if __name__ == "__main__":
    main()
