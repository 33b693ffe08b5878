"""Sparse matching against the dense plan (issue 18): candidate recall, and the plan solved on candidates.

For each dataset: align it as ``dynalign bench`` does (static protocol, ``fast``, one seed). With the aligner's
final embeddings, on the test anchors (scored only, never used to choose anything here):

- recall of candidate sets from prior similarity alone, from the anchored neighbourhood alone, and from both,
  for each candidate count C (cells: candidate pairs as a share of the dense ``n x m``);
- Hits@1 and seconds of the plan solved cold with the aligner's transport settings: dense
  (:func:`aligner.matching.refine.solve_plan`), and sparse (:mod:`aligner.matching.sparse_plan`) on the
  ``--plan-candidates`` candidates of both sources, fixed or grown by ``--grow`` per round; each twice: the
  plan's own row argmax (``hits@1``), and every row ranked against every node of the other network under the
  plan's context (``ranked_hits@1``, :class:`aligner.matching.incremental.PairMatcher`: what the engine
  publishes and evaluates).

    .venv/bin/python benchmarks/sparse_matching.py ../shared/data/douban ../shared/data/sacchcere \
        --counts 1,5,10,20,50 --json docs/bench/sparse-matching.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def measure(dataset_dir: Path, counts: list[int], seed: int, plan_candidates: int, grow: int) -> dict:
    from aligner.bench.static import static_snapshot
    from aligner.config import load_config
    from aligner.engine.factory import build_aligner
    from aligner.matching.candidates import candidate_set, pair_similarity
    from aligner.matching.incremental import DirectionScorer, PairMatcher
    from aligner.matching.ranking import ranking_metrics
    from aligner.matching.refine import PlanContext, solve_plan
    from aligner.matching.sparse_plan import solve_sparse_plan
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
    dense_cells = va.n * vb.n
    out = {"dataset": dataset_dir.name, "nodes": [va.n, vb.n], "test": len(truth), "rows": []}
    metrics = aligner.alignments.evaluate(a, b, [(str(s), str(t)) for s, t in test.tolist()])
    out["hits@1"], out["hits@10"] = round(metrics["hits@1"], 4), round(metrics["hits@10"], 4)
    for c in counts:
        row = {"C": c}
        for name, similar, structural in (("similar", c, 0), ("structural", 0, c), ("both", c, c)):
            started = time.perf_counter()
            found = candidate_set(va, vb, seeds, similar, structural, aligner.refine_cfg.feature_weight)
            row[name] = {"recall": round(found.recall(truth), 4), "cells_share": round(found.cells / dense_cells, 5),
                         "s": round(time.perf_counter() - started, 2)}
        out["rows"].append(row)
    cfg, fw = aligner.refine_cfg, aligner.refine_cfg.feature_weight
    settings = (cfg.tau, cfg.beta, cfg.rounds, cfg.sinkhorn_iters, va.alive, vb.alive, cfg.marginal_weight)

    def hits1(rows: torch.Tensor, cols: torch.Tensor, log_plan: torch.Tensor, n_src: int) -> float:
        """Strict Hits@1 of the plan's rows: the true partner's entry above every other candidate's (a tie is
        a miss, as in ``dynalign bench``); a partner that is no candidate is a miss."""
        key = rows * vb.n + cols  # CSR order: sorted
        wanted = torch.from_numpy(truth[:, 0] * vb.n + truth[:, 1])
        at = torch.searchsorted(key, wanted).clamp_max(len(key) - 1)
        found = key[at] == wanted
        threshold = torch.full((n_src,), float("inf"))
        threshold[torch.from_numpy(truth[:, 0])] = torch.where(found, log_plan[at], torch.tensor(float("inf")))
        at_least = torch.zeros(n_src).index_add_(0, rows, (log_plan >= threshold[rows]).float())
        hit = found & torch.isfinite(log_plan[at]) & (at_least[torch.from_numpy(truth[:, 0])] == 1)
        return round(float(hit.float().mean()), 4)

    def ranked_hits1(context: PlanContext) -> float:
        matcher = PairMatcher(va, vb, context, cfg.tau, cfg.beta, fw, 10, lazy=True)
        return round(ranking_metrics(DirectionScorer(matcher, "ab"), torch.from_numpy(truth), vb.alive)["hits@1"], 4)

    started = time.perf_counter()
    dense = solve_plan(aligner.alignments.similarity(a, b), va.adjacency, vb.adjacency, *settings)
    seconds = time.perf_counter() - started
    every = torch.arange(va.n).repeat_interleave(vb.n), torch.arange(vb.n).repeat(va.n)
    out["dense_plan"] = {"hits@1": hits1(*every, dense.log_plan.flatten(), va.n), "s": round(seconds, 2),
                         "ranked_hits@1": ranked_hits1(PlanContext.of(dense))}
    del dense
    found = candidate_set(va, vb, seeds, plan_candidates, plan_candidates, fw)
    for name, extra in (("sparse_fixed", 0), ("sparse_grown", grow)):
        started = time.perf_counter()
        plan = solve_sparse_plan(found.pattern, lambda r, c: pair_similarity(va, vb, r, c, fw), va.adjacency,
                                 vb.adjacency, *settings, grow=extra)
        seconds = time.perf_counter() - started
        out[name] = {"hits@1": hits1(plan.rows, plan.cols, plan.log_plan, va.n), "s": round(seconds, 2),
                     "ranked_hits@1": ranked_hits1(plan.context()),
                     "cells_share": round(len(plan.rows) / dense_cells, 5), "candidates": plan_candidates, "grow": extra}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--counts", default="1,5,10,20,50")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plan-candidates", type=int, default=20)
    parser.add_argument("--grow", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    results = []
    for folder in args.datasets:
        result = measure(folder, counts, args.seed, args.plan_candidates, args.grow)
        results.append(result)
        print(f"{result['dataset']} ({result['nodes'][0]} x {result['nodes'][1]}, {result['test']} test pairs; "
              f"dense Hits@1 {result['hits@1']}, Hits@10 {result['hits@10']})")
        print("  C    similar recall  structural recall  both recall  both cells/dense")
        for row in result["rows"]:
            print(f"  {row['C']:<4} {row['similar']['recall']:>14} {row['structural']['recall']:>18} "
                  f"{row['both']['recall']:>12} {row['both']['cells_share']:>17}")
        print("  plan Hits@1 (row argmax / ranked against every node) / s / cells: dense {dense_plan[hits@1]} / "
              "{dense_plan[ranked_hits@1]} / {dense_plan[s]} s; sparse fixed {sparse_fixed[hits@1]} / "
              "{sparse_fixed[ranked_hits@1]} / {sparse_fixed[s]} s / {sparse_fixed[cells_share]}; sparse grown "
              "{sparse_grown[hits@1]} / {sparse_grown[ranked_hits@1]} / {sparse_grown[s]} s / "
              "{sparse_grown[cells_share]}".format(**result))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
