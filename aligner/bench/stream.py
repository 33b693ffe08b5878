"""``dynalign bench --protocol stream``: is the incremental aligner as good as retraining, for a fraction of it?

The dataset is replayed as events (real timestamps where it has them, a seeded order otherwise), train anchors
revealed progressively, and cut into ``windows`` snapshots by event time, through the same event and snapshot
code as the service. On the same snapshots, in one process per seed, it runs:

- ``dynalign``: one :class:`Aligner` as the service runs it: incremental path, adaptation on schedule, anchor
  growth or drift;
- ``retrain``: a fresh model trained from scratch on every snapshot with the full budget (``full_steps``
  ordinary gradient steps, the ``full`` model of the static benchmark), then matched in full;
- ``frozen``: trained once, in full, on the first snapshot; later snapshots are embedded and matched in full
  with those weights, nothing learns any more;
- the initialisation ablation: ``init:meta`` (the meta-learned initialisation), ``init:pretrained`` (the same
  tasks and iterations, ordinary multi-task training), ``init:random`` (no pre-training), each adapted on
  every snapshot with the same ``adapt.steps`` fast-adaptation steps and matched in full.

After each window every variant is scored (Hits@1/10, MRR) on the test anchors whose two nodes are alive, and
its compute time for that window is recorded. Nothing is chosen on test anchors: with ``validation`` a seeded
quarter of the train anchors is never revealed and is scored instead (the static benchmark's split).
"""

from __future__ import annotations

import dataclasses
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np

from aligner.bench.static import FULL_STEPS, in_own_process, mean_std, validation_split
from aligner.config import Config

VARIANTS = ("dynalign", "retrain", "frozen", "init:meta", "init:pretrained", "init:random")


def stream_snapshots(ds, train: np.ndarray, windows: int, seed: int) -> list:
    """The dataset as ``windows`` event-time snapshots (one more when timestamps do not start on a window
    boundary), via events → cutter → graph state."""
    from snapshots.cutter import SnapshotCutter, SnapshotPolicy
    from stream.datasets import dataset_events

    events = list(dataset_events(ds, protocol="stream", windows=windows, seed=seed, train=train))
    times = [e.time for e in events]
    window = max(1.0, math.ceil((max(times) - min(times)) / windows))
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=window))
    snapshots = []
    for event in events:
        snapshots += cutter.offer(event)
    return snapshots + cutter.flush()


def run_stream_seed(dataset_dir: str, seed: int, windows: int, cfg: Config, full_steps: int,
                    variants: tuple[str, ...], validation: bool = False) -> dict:
    import torch

    from aligner.engine.aligner import Aligner
    from aligner.engine.factory import build_aligner
    from stream.datasets import load_dataset, split_anchors

    started = time.perf_counter()
    ds = load_dataset(dataset_dir)
    train, test = split_anchors(ds, None, seed)
    if validation:
        train, test = validation_split(train, seed)
    snapshots = stream_snapshots(ds, train, windows, seed)
    test_ids = [(str(s), str(t)) for s, t in test.tolist()]

    def make(meta=None, adapt=None) -> Aligner:
        return build_aligner(cfg, seed=seed, meta=meta, adapt=adapt)

    every_time = dataclasses.replace(cfg.adapt, incremental=False)
    full = (dataclasses.replace(cfg.meta, warmup_iterations=0, iterations_per_snapshot=0),
            dataclasses.replace(cfg.adapt, steps=full_steps, incremental=False))
    aligners = {
        "dynalign": make(),
        "frozen": make(*full),
        "init:meta": make(adapt=every_time),
        "init:pretrained": make(dataclasses.replace(cfg.meta, algorithm="multitask"), every_time),
        "init:random": make(dataclasses.replace(cfg.meta, warmup_iterations=0, iterations_per_snapshot=0),
                            every_time),
    }
    rows = []
    for snapshot in snapshots:
        row = {"snapshot": snapshot.id, "anchors": int(sum(len(a) for a in snapshot.anchors.values()))}
        for name in variants:
            aligner = make(*full) if name == "retrain" else aligners[name]
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            update = aligner.on_snapshot(snapshot)
            aligner.learn()  # the meta-update the service runs after publishing: compute all the same
            seconds = time.perf_counter() - t0
            if update is None:
                continue
            if name == "frozen" and aligner.adapt_cfg.steps:  # trained once, on the first window
                aligner.freeze()
            row[name] = {**_score(aligner, snapshot, ds, test_ids), "s": round(seconds, 3)}
            if name == "dynalign":
                row[name]["path"] = update.stats["path"]
                row[name]["prequential_mrr"] = update.stats.get("prequential_mrr")
                if "calibrated" in update.stats:  # which transport setting self-calibration kept, and on what
                    row[name]["calibration"] = {"kept": update.stats["calibrated"],
                                                "mrr": update.stats["calibration_mrr"]}
        rows.append(row)
        print(f"seed {seed} window {snapshot.id}/{len(snapshots)}: " + ", ".join(
            f"{v} {row[v]['hits@1']:.3f} in {row[v]['s']:.1f} s" for v in variants if v in row), file=sys.stderr,
            flush=True)
    return {"seed": seed, "train": len(train), "test": len(test), "windows": rows,
            "wall_s": round(time.perf_counter() - started, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _score(aligner, snapshot, ds, test_ids: list[tuple[str, str]]) -> dict:
    """Metrics on the test anchors whose two nodes are alive in ``snapshot``."""
    src, dst = snapshot.networks[ds.source_net], snapshot.networks[ds.target_net]
    alive_src = {src.node_ids[i] for i in np.flatnonzero(src.alive)}
    alive_dst = {dst.node_ids[i] for i in np.flatnonzero(dst.alive)}
    pairs = [(s, t) for s, t in test_ids if s in alive_src and t in alive_dst]
    m = aligner.alignments.evaluate(ds.source_net, ds.target_net, pairs)
    return {"hits@1": round(m["hits@1"], 4), "hits@10": round(m["hits@10"], 4), "mrr": round(m["mrr"], 4),
            "pairs": len(pairs)}


def bench_stream(dataset_dir: str | Path, cfg: Config, seeds: int = 3, windows: int = 10,
                 full_steps: int = FULL_STEPS, variants: tuple[str, ...] = VARIANTS, validation: bool = False,
                 echo=print) -> dict:
    per_seed = []
    for seed in range(seeds):
        result = in_own_process(run_stream_seed, str(dataset_dir), seed, windows, cfg, full_steps, variants,
                                validation)
        per_seed.append(result)
        last = result["windows"][-1]
        echo(f"seed {seed}: " + " | ".join(f"{v} H@1 {last[v]['hits@1']:.3f}" for v in variants if v in last)
             + f" | {result['wall_s']:.0f} s, {result['peak_rss_mb']:.0f} MB")
    return {"dataset": Path(dataset_dir).name, "protocol": "stream", "windows": windows, "seeds": seeds,
            "full_steps": full_steps, "variants": list(variants), "per_seed": per_seed,
            "scored_on": "validation (held-out train anchors)" if validation else "test anchors",
            "summary": summarize(per_seed, variants)}


def summarize(per_seed: list[dict], variants: tuple[str, ...]) -> dict:
    """Per window: mean over seeds of each variant's metrics and time; overall: the issue's targets, computed
    over every window after the first."""
    n_windows = min(len(r["windows"]) for r in per_seed)
    per_window = []
    for w in range(n_windows):
        entry = {}
        for v in variants:
            cells = [r["windows"][w][v] for r in per_seed if v in r["windows"][w]]
            if cells:
                entry[v] = {k: mean_std(c[k] for c in cells) for k in ("hits@1", "hits@10", "mrr", "s")}
        per_window.append(entry)
    later = per_window[1:]
    out: dict = {"per_window": per_window}
    for v in variants:
        cells = [w[v] for w in later if v in w]
        if cells:
            out[v] = {k: round(float(np.mean([c[k]["mean"] for c in cells])), 4) for k in ("hits@1", "hits@10", "mrr", "s")}
    if "dynalign" in out and "retrain" in out:
        gaps = [w["dynalign"]["hits@1"]["mean"] - w["retrain"]["hits@1"]["mean"] for w in later
                if "dynalign" in w and "retrain" in w]
        out["dynalign_vs_retrain"] = {
            "mean_hits@1_gap": round(float(np.mean(gaps)), 4), "worst_hits@1_gap": round(float(np.min(gaps)), 4),
            "compute_ratio": round(out["dynalign"]["s"] / max(out["retrain"]["s"], 1e-9), 4),
        }
    return out


def format_stream_table(result: dict) -> str:
    s = result["summary"]
    lines = [f"{result['dataset']} (stream, {result['windows']} windows, {result['seeds']} seeds, "
             f"{result.get('scored_on', 'test anchors')} alive at each window; means over windows after the first)",
             f"{'variant':<18}{'Hits@1':>9}{'Hits@10':>9}{'MRR':>9}{'s/window':>10}"]
    for v in result["variants"]:
        if v in s:
            lines.append(f"{v:<18}{s[v]['hits@1']:>9.3f}{s[v]['hits@10']:>9.3f}{s[v]['mrr']:>9.3f}{s[v]['s']:>10.2f}")
    if "dynalign_vs_retrain" in s:
        g = s["dynalign_vs_retrain"]
        lines.append(f"dynalign - retrain Hits@1: mean {g['mean_hits@1_gap']:+.3f}, worst window "
                     f"{g['worst_hits@1_gap']:+.3f}; compute ratio {g['compute_ratio']:.3f}")
    return "\n".join(lines)


def plot_stream(result: dict, path: str | Path) -> None:
    """Accuracy over windows and compute time per window, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_window = result["summary"]["per_window"]
    fig, (acc, cost) = plt.subplots(1, 2, figsize=(12, 4.5))
    for v in result["variants"]:
        xs = [i + 1 for i, w in enumerate(per_window) if v in w]
        if not xs:
            continue
        acc.plot(xs, [per_window[i - 1][v]["hits@1"]["mean"] for i in xs], marker="o", label=v)
        cost.plot(xs, [per_window[i - 1][v]["s"]["mean"] for i in xs], marker="o", label=v)
    acc.set(xlabel="window", ylabel="Hits@1 (test anchors)", title=f"{result['dataset']}: accuracy")
    cost.set(xlabel="window", ylabel="compute (s)", yscale="log", title="compute per window")
    acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
