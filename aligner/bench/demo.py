"""``dynalign demo``: the whole pipeline on the bundled sample, end to end, in a couple of minutes.

It writes the sample dataset as a stream of events (train anchors only, revealed over the windows), runs the
real service on it with an embedded redis-server, then scores the final alignments on the held-out test
anchors and asks Redis for two of them, exactly as a user would.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable

from aligner.config import Config
from aligner.publish.embedded_redis import EmbeddedRedis
from aligner.publish.redis_alignments import AlignmentClient
from aligner.service.alignment_service import AlignmentService
from aligner.tools.evaluation import load_aligner
from stream.datasets import dataset_events, load_dataset, write_events

SAMPLE_DIR = Path(__file__).parents[1] / "sample"
WINDOW_SECONDS = 3600.0


def run_demo(cfg: Config, windows: int = 5, echo: Callable[[str], None] = print, dataset_dir: Path = SAMPLE_DIR) -> dict:
    state = Path(cfg.service.state_dir)
    if state.exists():
        shutil.rmtree(state)  # a demo always starts from nothing, so its numbers mean one thing
    state.mkdir(parents=True)
    ds = load_dataset(dataset_dir)
    events_file = state / "events.jsonl"
    with events_file.open("w") as f:
        n_events = write_events(dataset_events(ds, protocol="stream", windows=windows, seed=cfg.service.seed,
                                               window_seconds=WINDOW_SECONDS), f)
    train, test_pairs = ds.train, ds.test
    assert train is not None  # dataset_events, just iterated, refuses a dataset without train.tsv
    if test_pairs is None:
        raise ValueError(f"dataset {ds.name} has no test.tsv: the demo scores its alignments on it")
    echo(f"dataset {ds.name}: {ds.source_net} {ds.num_source} nodes / {ds.target_net} {ds.num_target} nodes, "
         f"{len(train)} train anchors revealed over {windows} windows, {len(test_pairs)} test anchors held out")
    echo(f"streaming {n_events} events from {events_file} through the service...")
    cfg = dataclasses.replace(cfg, snapshots=dataclasses.replace(cfg.snapshots, window_seconds=WINDOW_SECONDS,
                                                                 every_events=None),
                              publish=dataclasses.replace(cfg.publish, redis_url=None))
    summary = AlignmentService(cfg, str(events_file), progress=True).run()

    aligner = load_aligner(state, cfg)
    test = [(str(s), str(t)) for s, t in test_pairs.tolist()]
    metrics = aligner.alignments.evaluate(ds.source_net, ds.target_net, test)
    echo("")
    echo(f"{'metric':<24}{'value':>10}")
    for name, value in (("Hits@1", metrics["hits@1"]), ("Hits@10", metrics["hits@10"]), ("MRR", metrics["mrr"])):
        echo(f"{name + ' (test anchors)':<24}{value:>10.3f}")
    echo(f"{'chance Hits@1':<24}{1 / ds.num_target:>10.4f}")
    echo(f"{'events/s (end to end)':<24}{summary.events_per_s:>10.0f}")
    echo(f"{'events/s (ingest only)':<24}{summary.ingest_events_per_s:>10.0f}")
    echo(f"{'snapshots':<24}{summary.snapshots:>10d}")
    echo(f"{'aligner time (s)':<24}{summary.align_s:>10.1f}")
    echo(f"{'wall time (s)':<24}{summary.wall_s:>10.1f}")
    echo(f"{'dead letters':<24}{summary.dead_letters:>10d}")

    with EmbeddedRedis(state / "redis") as server:
        client = AlignmentClient.from_url(server.url, cfg.publish.namespace)
        echo("")
        for s, t in test[:2]:
            t0 = time.perf_counter()
            cands = client.top(s, ds.source_net, ds.target_net, k=5)
            ms = (time.perf_counter() - t0) * 1000
            shown = ", ".join(f"{c.node} ({c.score:.2f})" for c in cands)
            hit = next((i + 1 for i, c in enumerate(cands) if c.node == t), None)
            verdict = f"true match {t} at rank {hit}" if hit else f"true match {t} not in top 5"
            echo(f"query {ds.source_net}:{s} -> {ds.target_net}: {shown}  [{verdict}; {ms:.1f} ms]")
    echo("")
    echo(f"try it: dynalign query {test[0][0]} --net {ds.source_net} --to {ds.target_net} --state {state}")
    return {"metrics": metrics, "summary": dataclasses.asdict(summary)}
