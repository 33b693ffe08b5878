"""``dynalign bench``: alignment quality, time and memory on a dataset in the exchange format, over seeds.

Static protocol: the aligner sees both graphs, their attributes and the train anchors (``train.tsv``, or a
seeded fraction of ``anchors.tsv``) as one snapshot, built through the same event and snapshot code the
service uses; it is scored on the remaining anchors with Hits@1/5/10 and MRR, ranking against all target
nodes. Nothing here looks at test anchors before scoring, and no setting is chosen on them.

Two ways to get a model are measured side by side, each from nothing:

- ``fast``: what the service does on a snapshot: meta-learn the initialisation on tasks drawn from the snapshot
  (``meta.warmup_iterations``), then fast-adapt it with ``adapt.steps`` steps;
- ``full``: ordinary training from a random initialisation with ``full_steps`` gradient steps, no meta-learning.

Every seed runs in its own process, so its wall time and peak memory (max RSS) are its own. Each model is scored in
both directions with the same trained aligner: source→target (the figures above) and target→source (the same test
anchors reversed, ranking against all source nodes), as the PlanetAlign benchmark reports their mean.
"""

from __future__ import annotations

import ctypes
import dataclasses
import multiprocessing as mp
import os
import resource
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from aligner.config import Config

FULL_STEPS = 200
STEP_SECONDS = ("meta_s", "calibration_s", "adapt_s", "align_s")  # an adaptation's steps (Aligner._adaptation_path)
Variant = Literal["fast", "full"]
VARIANTS: tuple[Variant, ...] = ("fast", "full")


def static_snapshot(dataset, train: np.ndarray):
    """The whole dataset with ``train`` anchors as one snapshot, via events → cutter → graph state."""
    from snapshots.cutter import SnapshotCutter, SnapshotPolicy
    from stream.datasets import dataset_events

    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=None, every_events=10**12))
    for event in dataset_events(dataset, protocol="static", windows=1, train=train):
        cutter.offer(event)
    (snapshot,) = cutter.flush()
    return snapshot


VALIDATION_FRACTION = 0.25


def validation_split(train: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a seeded quarter of the train anchors: settings are chosen on these, never on test anchors."""
    perm = np.random.default_rng(10_000 + seed).permutation(len(train))
    n_val = int(round(len(train) * VALIDATION_FRACTION))
    return train[np.sort(perm[n_val:])], train[np.sort(perm[:n_val])]


def run_seed(dataset_dir: str, seed: int, train_ratio: float | None, cfg: Config, full_steps: int,
             validation: bool = False, variants: tuple[Variant, ...] = VARIANTS) -> dict:
    """One seed, in the current process: build the snapshot, train each of ``variants``, score each on the test
    anchors in both directions."""
    import torch

    from aligner.engine.factory import build_aligner
    from aligner.tools.explain import evidence_agreement
    from snapshots.snapshot import pair_key
    from stream.datasets import load_dataset, split_anchors

    started = time.perf_counter()
    if cfg.service.threads:
        torch.set_num_threads(cfg.service.threads)
    ds = load_dataset(dataset_dir)
    train, test = split_anchors(ds, train_ratio, seed)
    if validation:
        train, test = validation_split(train, seed)
    snapshot = static_snapshot(ds, train)
    test_ids = [(str(s), str(t)) for s, t in test.tolist()]
    load_s = time.perf_counter() - started
    out: dict[str, Any] = {"seed": seed, "train": len(train), "test": len(test), "load_s": round(load_s, 2)}

    settings = {
        "fast": (cfg.meta, cfg.adapt),
        "full": (dataclasses.replace(cfg.meta, warmup_iterations=0), dataclasses.replace(cfg.adapt, steps=full_steps)),
    }
    for name in variants:
        meta, adapt = settings[name]
        t0 = time.perf_counter()
        aligner = build_aligner(cfg, seed=seed, meta=meta, adapt=adapt)
        update = aligner.on_snapshot(snapshot)
        t_train = time.perf_counter() - t0
        metrics = aligner.alignments.evaluate(ds.source_net, ds.target_net, test_ids)
        out[name] = {**{k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)},
                     "train_s": round(t_train, 2), "total_s": round(time.perf_counter() - t0, 2)}
        # What self-calibration chose on the train anchors it held back, what each candidate scored there, and
        # where the training time went (meta-learning, calibration, adaptation, plans and ranking).
        out[name].update({k: update.stats[k] for k in ("calibrated", "calibration_mrr", *STEP_SECONDS)
                          if update is not None and k in update.stats})
        out[name]["plan_cells"] = aligner.alignments.plan_cells(*pair_key(ds.source_net, ds.target_net))
        # The same aligner ranks the other way: no retraining, so both directions score one model.
        reverse = aligner.alignments.evaluate(ds.target_net, ds.source_net, [(t, s) for s, t in test_ids])
        out[name]["target_to_source"] = {k: round(v, 4) for k, v in reverse.items() if isinstance(v, float)}
        if name == "fast":
            out[name]["evidence_agreement"] = round(
                evidence_agreement(aligner, snapshot, ds.source_net, ds.target_net, seed=seed), 4)
    out["wall_s"] = round(time.perf_counter() - started, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _die_with_parent(parent: int) -> None:
    """Linux: end this seed process when the bench that started it ends (killed included); an orphan would go
    on computing beside the next run, and two torch jobs on the same cores slow each other down many times."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent was gone before the request took effect
            os._exit(1)


def _child(queue, parent: int, fn, *args) -> None:
    from aligner.runtime import configure_process

    _die_with_parent(parent)
    configure_process()
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as e:  # the parent reports it; a child must not die silently
        queue.put(("error", f"{type(e).__name__}: {e}"))


def in_own_process(fn, *args):
    """``fn(*args)`` in a fresh spawned process, so its wall time and peak memory are its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, os.getpid(), fn, *args))
    proc.start()
    status, result = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(result)
    return result


# What a seed's summary keeps of the ranking metrics (aligner.matching.ranking.ranking_metrics), in each direction.
RANKING_KEYS = ("hits@1", "hits@5", "hits@10", "mrr", "hits@1_shared", "tied@1")


def mean_std(values) -> dict:
    values = list(values)
    return {"mean": round(statistics.fmean(values), 4), "std": round(statistics.pstdev(values), 4)}


def bench_static(dataset_dir: str | Path, cfg: Config, seeds: int = 3, train_ratio: float | None = None,
                 full_steps: int = FULL_STEPS, validation: bool = False, echo=print,
                 variants: tuple[Variant, ...] = VARIANTS) -> dict:
    """``variants`` (default both) over ``seeds`` seeds, each seed in its own process; per seed and mean ± std."""
    per_seed = []
    for seed in range(seeds):
        result = in_own_process(run_seed, str(dataset_dir), seed, train_ratio, cfg, full_steps, validation, variants)
        per_seed.append(result)
        models = " | ".join(f"{v} H@1 {result[v]['hits@1']:.3f} MRR {result[v]['mrr']:.3f} "
                            f"({result[v]['total_s']:.0f} s)" for v in variants)
        echo(f"seed {seed}: {models} | {result['wall_s']:.0f} s, {result['peak_rss_mb']:.0f} MB")
    summary: dict[str, dict[str, Any]] = {}
    for variant in variants:
        summary[variant] = {}
        for key in (*RANKING_KEYS, "train_s", "total_s"):
            summary[variant][key] = mean_std(r[variant][key] for r in per_seed)
        summary[variant]["target_to_source"] = {
            key: mean_std(r[variant]["target_to_source"][key] for r in per_seed) for key in RANKING_KEYS}
    if "fast" in variants:
        summary["fast"]["evidence_agreement"] = round(statistics.fmean(
            r["fast"]["evidence_agreement"] for r in per_seed), 4)
    for key in ("wall_s", "peak_rss_mb"):
        values = [r[key] for r in per_seed]
        summary[key] = {"mean": round(statistics.fmean(values), 2), "max": max(values)}
    return {
        "dataset": Path(dataset_dir).name,
        "protocol": "static",
        "scored_on": "validation (held-out train anchors)" if validation else "test anchors",
        "train_ratio": train_ratio,
        "seeds": seeds,
        "full_steps": full_steps,
        "variants": list(variants),
        "per_seed": per_seed,
        "summary": summary,
    }


def format_table(result: dict) -> str:
    s = result["summary"]
    lines = [f"{result['dataset']} (static, train {'train.tsv' if result['train_ratio'] is None else result['train_ratio']}, "
             f"{result['seeds']} seeds, scored on {result['scored_on']})",
             f"{'model':<8}{'Hits@1':>14}{'Hits@5':>14}{'Hits@10':>14}{'MRR':>14}{'time (s)':>12}"]
    for variant in result.get("variants", VARIANTS):
        v = s[variant]
        cells = "".join(f"{v[k]['mean']:>8.3f}±{v[k]['std']:<5.3f}" for k in ("hits@1", "hits@5", "hits@10", "mrr"))
        lines.append(f"{variant:<8}{cells}{v['total_s']['mean']:>12.1f}")
    lines.append(f"per seed: wall {s['wall_s']['mean']:.1f} s, peak memory {s['peak_rss_mb']['max']:.0f} MB; "
                 f"evidence alone ranks the chosen candidate first for {s['fast']['evidence_agreement']:.0%} of nodes")
    return "\n".join(lines)
