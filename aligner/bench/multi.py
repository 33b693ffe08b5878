"""``dynalign bench DIR --protocol multi``: many networks aligned at once, against each pair aligned alone.

The static protocol on a multi-network folder (:func:`stream.multi_datasets.load_multi_dataset`): every network and
every pair's train anchors as one snapshot, built through the service's event and snapshot code, and one
aligner for all of it (``joint``): it aligns every pair joined through anchored pairs, a pair with no train
anchors of its own included, through the others. Side by side, each in its own process (``alone``): every pair
aligned by an aligner of its own that sees only its two networks and its own train anchors. A pair with no
train anchors has nothing to be aligned from alone; it gets the anchors composed through a pivot network
(node i of a and node k of c anchored to the same node of b), the most a pairwise aligner can be given.

Per pair and variant: Hits@1/10 and MRR on the pair's test anchors (both directions), and the
cycle-consistency rate (:mod:`aligner.matching.cycles`: the share of nodes whose top-1 agrees with the top-1
composed through another network); for ``joint`` also Hits@1 of the top-1s that agree with a composition and
of those that do not (is disagreement a signal?). Seconds and peak memory per variant; ``alone`` is the sum
over its pairs (one process each, peak the largest). Nothing looks at test anchors before scoring.
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from aligner.config import Config

MultiVariant = Literal["joint", "alone"]
MULTI_VARIANTS: tuple[MultiVariant, ...] = ("joint", "alone")
Pair = tuple[str, str]


def pair_name(pair: Pair) -> str:
    """``a~b``, as the folder names it."""
    return f"{pair[0]}~{pair[1]}"


def composed_anchors(train: dict[Pair, np.ndarray], a: str, c: str) -> np.ndarray:
    """``(k, 2)`` node pairs of ``a`` and ``c`` anchored to one node of some third network (through every pivot
    ``b`` with train anchors to both), without repeats.

    >>> train = {("a", "b"): np.array([[0, 5], [1, 6]]), ("b", "c"): np.array([[5, 9], [7, 8]])}
    >>> composed_anchors(train, "a", "c").tolist()
    [[0, 9]]
    """
    def oriented(x: str, y: str) -> np.ndarray | None:
        if (x, y) in train:
            return train[(x, y)]
        return train[(y, x)][:, ::-1] if (y, x) in train else None

    nets = {n for pair in train for n in pair} - {a, c}
    rows: set[tuple[int, int]] = set()
    for b in sorted(nets):
        ab, bc = oriented(a, b), oriented(b, c)
        if ab is None or bc is None:
            continue
        to_c: dict[int, list[int]] = {}
        for j, k in bc.tolist():
            to_c.setdefault(j, []).append(k)
        rows.update((i, k) for i, j in ab.tolist() for k in to_c.get(j, ()))
    return np.array(sorted(rows), dtype=np.int64).reshape(-1, 2)


def _snapshot(ds, networks: list[str], anchors: dict[Pair, np.ndarray]):
    """The networks and anchors given as one snapshot, via events → cutter → graph state."""
    import dataclasses

    from snapshots.cutter import SnapshotCutter, SnapshotPolicy
    from stream.multi_datasets import multi_dataset_events

    part = dataclasses.replace(ds, networks={n: ds.networks[n] for n in networks},
                               anchors={p: ds.anchors[p] for p in anchors})
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=None, every_events=10**12))
    for event in multi_dataset_events(part, protocol="static", windows=1, train=anchors):
        cutter.offer(event)
    (snapshot,) = cutter.flush()
    return snapshot


def _top1_by_id(aligner, ds, src: str, dst: str) -> np.ndarray:
    """``src``'s top-1 in ``dst`` indexed by the dataset's node ids (the aligner numbers nodes as they arrive)."""
    from aligner.matching.cycles import NO_MATCH

    state_src, state_dst = aligner.networks[src], aligner.networks[dst]
    best = aligner.alignments.top1(src, dst)
    out = np.full(ds.networks[src].num_nodes, NO_MATCH, dtype=np.int64)
    ids_src = np.array([int(i) for i in state_src.node_ids], dtype=np.int64)
    ids_dst = np.array([int(i) for i in state_dst.node_ids], dtype=np.int64)
    known = best != NO_MATCH
    out[ids_src[known]] = ids_dst[best[known]]
    return out


def run_variant(dataset_dir: str, seed: int, cfg: Config, variant: MultiVariant, pairs: list[Pair] | None,
                train: dict[Pair, np.ndarray]) -> dict:
    """One aligner, in the current process: ``joint`` on every network and ``train``; ``alone`` on the two
    networks of ``pairs[0]`` and ``train`` (that pair's anchors, or composed ones). Scores its pairs on their
    test anchors, both directions, and returns every direction's top-1 by node id for the cycle check."""
    import torch

    from aligner.engine.factory import build_aligner
    from stream.multi_datasets import load_multi_dataset

    started = time.perf_counter()
    if cfg.service.threads:
        torch.set_num_threads(cfg.service.threads)
    ds = load_multi_dataset(dataset_dir)
    networks = sorted(ds.networks) if variant == "joint" else sorted(pairs[0])  # type: ignore[index]
    snapshot = _snapshot(ds, networks, train)
    aligner = build_aligner(cfg, seed=seed)
    update = aligner.on_snapshot(snapshot)
    aligned = sorted(aligner.alignments.matchers)
    out: dict[str, Any] = {"train_s": round(time.perf_counter() - started, 2), "pairs": {}, "top1": {}}
    for pair in aligned:
        a, b = pair
        test = [(str(i), str(j)) for i, j in ds.test[pair].tolist()]
        forward = aligner.alignments.evaluate(a, b, test)
        reverse = aligner.alignments.evaluate(b, a, [(j, i) for i, j in test])
        out["pairs"][pair_name(pair)] = {
            "train_anchors": int(len(train.get(pair, ()))), "test_anchors": len(test),
            **{k: round(forward[k], 4) for k in ("hits@1", "hits@10", "mrr")},
            "target_to_source": {k: round(reverse[k], 4) for k in ("hits@1", "hits@10", "mrr")}}
        for s, d in ((a, b), (b, a)):
            out["top1"][f"{s}>{d}"] = _top1_by_id(aligner, ds, s, d)
    if update is not None:
        out["steps"] = {k: update.stats[k] for k in ("meta_s", "calibration_s", "adapt_s", "align_s")
                        if k in update.stats}
    out["wall_s"] = round(time.perf_counter() - started, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _directions(top1: dict[str, np.ndarray]) -> dict[Pair, np.ndarray]:
    return {tuple(key.split(">")): value for key, value in top1.items()}  # type: ignore[misc]


def consistency_signal(ds, top1: dict[Pair, np.ndarray]) -> dict[str, dict[str, float | None]]:
    """Per pair with a pivot, on its test anchors (source → target): the share of top-1s that agree with a
    composition through some pivot, and Hits@1 among those that agree and those that do not."""
    from aligner.matching.cycles import NO_MATCH

    out = {}
    nets = sorted(ds.networks)
    for pair, rows in ds.test.items():
        a, c = pair
        if (a, c) not in top1 or not len(rows):
            continue
        pivots = [b for b in nets if b not in pair and (a, b) in top1 and (b, c) in top1]
        if not pivots:
            continue
        direct = top1[(a, c)][rows[:, 0]]
        agrees = np.zeros(len(rows), dtype=bool)
        for b in pivots:
            first = top1[(a, b)][rows[:, 0]]
            composed = np.where(first != NO_MATCH, top1[(b, c)][np.maximum(first, 0)], NO_MATCH)
            agrees |= (composed == direct) & (direct != NO_MATCH)
        right = direct == rows[:, 1]
        out[pair_name(pair)] = {
            "agreeing_share": round(float(agrees.mean()), 4),
            "hits@1_agreeing": round(float(right[agrees].mean()), 4) if agrees.any() else None,
            "hits@1_disagreeing": round(float(right[~agrees].mean()), 4) if (~agrees).any() else None}
    return out


def kept_train(train: dict[Pair, np.ndarray], shares: dict[str, float], seed: int) -> dict[Pair, np.ndarray]:
    """The pairs with train anchors, each keeping a seeded ``shares[pair_name]`` of them (default all): a pair
    made to have few anchors, to measure what the other pairs' anchors do for it.

    >>> rows = np.arange(20).reshape(10, 2)
    >>> kept = kept_train({("a", "b"): rows, ("b", "c"): rows[:0]}, {"a~b": 0.3}, seed=0)
    >>> list(kept), len(kept[("a", "b")])
    ([('a', 'b')], 3)
    """
    unknown = sorted(set(shares) - {pair_name(p) for p in train})
    if unknown:
        raise ValueError(f"train share for {', '.join(unknown)}: no such pair (pairs: "
                         f"{', '.join(pair_name(p) for p in train)})")
    out = {}
    for k, (pair, rows) in enumerate(train.items()):
        share = shares.get(pair_name(pair), 1.0)
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"train share of {pair_name(pair)} must be within [0, 1], got {share}")
        keep = np.sort(np.random.default_rng([seed, k]).permutation(len(rows))[:int(round(share * len(rows)))])
        if len(keep):
            out[pair] = rows[keep]
    return out


def run_seed(dataset_dir: str, seed: int, cfg: Config, variants: tuple[MultiVariant, ...],
             train_share: dict[str, float] | None = None) -> dict:
    """Every variant of one seed, each aligner in its own process."""
    from aligner.bench.static import in_own_process
    from aligner.matching.cycles import cycle_consistency
    from stream.multi_datasets import load_multi_dataset

    ds = load_multi_dataset(dataset_dir)
    trained = kept_train(ds.train, train_share or {}, seed)
    out: dict[str, Any] = {"seed": seed}
    for variant in variants:
        if variant == "joint":
            runs = [in_own_process(run_variant, dataset_dir, seed, cfg, "joint", None, trained)]
        else:
            runs = []
            for pair in sorted(ds.anchors):
                own = {pair: trained[pair]} if pair in trained else {pair: composed_anchors(trained, *pair)}
                if len(own[pair]):
                    runs.append(in_own_process(run_variant, dataset_dir, seed, cfg, "alone", [pair], own))
        top1 = _directions({k: v for run in runs for k, v in run["top1"].items()})
        result = {"pairs": {k: v for run in runs for k, v in run["pairs"].items()},
                  "cycle_consistency": {pair_name(p): round(r, 4) for p, r in cycle_consistency(top1).items()},
                  "wall_s": round(sum(run["wall_s"] for run in runs), 2),
                  "peak_rss_mb": max((run["peak_rss_mb"] for run in runs), default=0.0)}
        if variant == "joint":
            result["consistency_signal"] = consistency_signal(ds, top1)
            result["steps"] = runs[0].get("steps", {})
        out[variant] = result
    return out


def bench_multi(dataset_dir: str | Path, cfg: Config, seeds: int = 3, echo=print,
                variants: tuple[MultiVariant, ...] = MULTI_VARIANTS, train_share: dict[str, float] | None = None) -> dict:
    """``variants`` over ``seeds`` seeds; per seed, and per pair and variant the mean ± std over seeds.
    ``train_share``: per pair (``a~b``), the share of its train anchors kept (:func:`kept_train`)."""
    per_seed = []
    for seed in range(seeds):
        result = run_seed(str(dataset_dir), seed, cfg, variants, train_share)
        per_seed.append(result)
        echo(f"seed {seed}: " + " | ".join(
            f"{v} " + " ".join(f"{p} {m['hits@1']:.3f}" for p, m in result[v]["pairs"].items())
            + f" ({result[v]['wall_s']:.0f} s)" for v in variants))
    summary: dict[str, Any] = {}
    for variant in variants:
        names = sorted({p for r in per_seed for p in r[variant]["pairs"]})
        summary[variant] = {
            "pairs": {p: {k: _mean_std([r[variant]["pairs"][p][k] for r in per_seed if p in r[variant]["pairs"]])
                          for k in ("hits@1", "hits@10", "mrr")} for p in names},
            "cycle_consistency": {p: _mean_std([r[variant]["cycle_consistency"][p] for r in per_seed
                                                if p in r[variant]["cycle_consistency"]])
                                  for p in sorted({p for r in per_seed for p in r[variant]["cycle_consistency"]})},
            "wall_s": _mean_std([r[variant]["wall_s"] for r in per_seed]),
            "peak_rss_mb": max(r[variant]["peak_rss_mb"] for r in per_seed)}
    return {"dataset": Path(dataset_dir).name, "protocol": "multi", "scored_on": "test anchors", "seeds": seeds,
            "train_share": train_share or {}, "variants": list(variants), "per_seed": per_seed, "summary": summary}


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 4), "std": round(statistics.pstdev(values), 4)} if values else {}


def format_multi_table(result: dict) -> str:
    """Per pair: Hits@1 / MRR / cycle consistency of each variant, then seconds and peak memory."""
    s, variants = result["summary"], result["variants"]
    lines = [f"{result['dataset']} (multi, {result['seeds']} seeds, scored on {result['scored_on']})",
             f"{'pair':<14}" + "".join(f"{v + ' H@1':>14}{v + ' MRR':>14}{v + ' cycles':>16}" for v in variants)]
    pairs = sorted({p for v in variants for p in s[v]["pairs"]})
    for p in pairs:
        cells = ""
        for v in variants:
            m, c = s[v]["pairs"].get(p), s[v]["cycle_consistency"].get(p)
            cells += (f"{m['hits@1']['mean']:>14.3f}{m['mrr']['mean']:>14.3f}" if m else f"{'-':>14}{'-':>14}")
            cells += f"{c['mean']:>16.3f}" if c else f"{'-':>16}"
        lines.append(f"{p:<14}{cells}")
    lines.append("per seed: " + ", ".join(f"{v} {s[v]['wall_s']['mean']:.0f} s, peak {s[v]['peak_rss_mb']:.0f} MB"
                                          for v in variants))
    return "\n".join(lines)
