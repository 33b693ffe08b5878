"""How often the true partner is among a node's candidates (issue 18): the premise of a sparse plan.

For each dataset: align it as ``dynalign bench`` does (static protocol, ``fast``, one seed), then, on the test
anchors (scored only, never used to choose anything here), the recall of candidate sets from prior similarity
alone, from the anchored neighbourhood alone, and from both, for each candidate count C, next to the dense
ranking's Hits@C (what the full similarity ranking would give). Cells are the candidate pairs a plan would solve
on, as a share of the dense ``n x m``.

    .venv/bin/python benchmarks/candidate_recall.py ../shared/data/douban ../shared/data/sacchcere \
        --counts 1,5,10,20,50 --json docs/bench/candidate-recall.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def measure(dataset_dir: Path, counts: list[int], seed: int) -> dict:
    from aligner.bench.static import static_snapshot
    from aligner.config import load_config
    from aligner.engine.factory import build_aligner
    from aligner.matching.candidates import candidate_set
    from aligner.runtime import configure_process
    from stream.datasets import load_dataset, split_anchors

    configure_process()
    ds = load_dataset(str(dataset_dir))
    train, test = split_anchors(ds, None, seed)
    snapshot = static_snapshot(ds, train)
    cfg = load_config()
    aligner = build_aligner(cfg, seed=seed)
    aligner.on_snapshot(snapshot)
    nets = snapshot.networks
    a, b = ds.source_net, ds.target_net
    index_a = {n: i for i, n in enumerate(nets[a].node_ids)}
    index_b = {n: i for i, n in enumerate(nets[b].node_ids)}

    def rows(pairs: np.ndarray) -> np.ndarray:
        return np.array([(index_a[str(s)], index_b[str(t)]) for s, t in pairs.tolist()
                         if str(s) in index_a and str(t) in index_b], dtype=np.int64).reshape(-1, 2)

    truth, seeds = rows(test), rows(train)
    va, vb = aligner.networks[a].view(), aligner.networks[b].view()
    dense = va.n * vb.n
    out = {"dataset": dataset_dir.name, "nodes": [va.n, vb.n], "test": len(truth), "rows": []}
    metrics = aligner.alignments.evaluate(a, b, [(str(s), str(t)) for s, t in test.tolist()])
    out["hits@1"], out["hits@10"] = round(metrics["hits@1"], 4), round(metrics["hits@10"], 4)
    for c in counts:
        row = {"C": c}
        for name, similar, structural in (("similar", c, 0), ("structural", 0, c), ("both", c, c)):
            started = time.perf_counter()
            found = candidate_set(va, vb, seeds, similar, structural, aligner.refine_cfg.feature_weight)
            row[name] = {"recall": round(found.recall(truth), 4), "cells_share": round(found.cells / dense, 5),
                         "s": round(time.perf_counter() - started, 2)}
        out["rows"].append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--counts", default="1,5,10,20,50")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    results = []
    for folder in args.datasets:
        result = measure(folder, counts, args.seed)
        results.append(result)
        print(f"{result['dataset']} ({result['nodes'][0]} x {result['nodes'][1]}, {result['test']} test pairs; "
              f"dense Hits@1 {result['hits@1']}, Hits@10 {result['hits@10']})")
        print("  C    similar recall  structural recall  both recall  both cells/dense")
        for row in result["rows"]:
            print(f"  {row['C']:<4} {row['similar']['recall']:>14} {row['structural']['recall']:>18} "
                  f"{row['both']['recall']:>12} {row['both']['cells_share']:>17}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
