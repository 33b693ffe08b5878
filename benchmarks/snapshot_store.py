"""Snapshot store benchmark: size and checkpoint time per snapshot, restore and as-of query time, vs Raphtory.

Streams a dataset's events (``stream.datasets.dataset_events``) in 50 event-time windows through what the
service does per event and per cut, and measures:

- ``dynalign``: the cutter and graph, the event log, one snapshot file per cut (a base every ``base_every``,
  deltas between; ``base_every=1`` is every snapshot stored whole, as before deltas) and the service checkpoint
  written after every cut; store bytes per snapshot, seconds per snapshot write and per checkpoint, ingest
  events/s (everything but those writes), peak memory, restore time of an arbitrary snapshot from a cold store,
  restore time of the resumable state (checkpoint → cutter), and as-of queries (degree of a node at an event
  time, from a cold store).
- ``raphtory`` (``pip install raphtory==0.17.0``, used only here): the same events added one by one (edges and
  anchors as layered edges, attributes as node properties), its incremental file persistence
  (``Graph.cache`` then ``write_updates`` at every cut), restore (``Graph.load_cached``), as-of queries
  (``before(t).node(x).degree()``) and what loading a truncated or bit-flipped file does.

Each measurement runs in its own process (peak RSS is per process). Usage::

    .venv/bin/python benchmarks/snapshot_store.py [--datasets collegemsg-views acm-dblp] [--out results.json]

Results measured on the 2-core development machine are in docs/snapshots.md.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from snapshots.cutter import SnapshotCutter, SnapshotPolicy  # noqa: E402
from snapshots.store import SnapshotStore  # noqa: E402
from stream.datasets import dataset_events, load_dataset  # noqa: E402
from stream.events import ADD_ANCHOR, ADD_EDGE, SET_ATTR  # noqa: E402

DATA = REPO.parent / "shared" / "data"
WINDOWS = 50
BATCH = 2000  # events per service batch (stream.batch_size)
RESTORES = 8
QUERIES = 200


def stream(name: str) -> tuple[list, float]:
    """The dataset's events and a window length giving ``WINDOWS`` windows over its event-time span."""
    ds = load_dataset(DATA / name)
    events = list(dataset_events(ds, windows=WINDOWS, window_seconds=3600.0))
    times = [e.time for e in events]
    span = max(times) - min(times)
    width = 3600.0 if not ds.timestamped else math.ceil(span / WINDOWS)
    return events, width


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def query_plan(events: list, width: float, rng: np.random.Generator) -> list[tuple[str, str, float]]:
    """(network, node, time) of ``QUERIES`` as-of questions: nodes that have edges, times within the stream."""
    edges = [e for e in events if e.op == ADD_EDGE]
    picks = rng.choice(len(edges), QUERIES, replace=False)
    t0, t1 = edges[0].time, edges[-1].time
    return [(edges[i].net, edges[i].u, float(rng.uniform(t0 + width, t1))) for i in picks]


def run_dynalign(name: str, base_every: int, work: Path) -> dict:
    events, width = stream(name)
    rss0 = peak_rss_mb()
    store = SnapshotStore(work, base_every=base_every)
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=width))
    save_s, checkpoint_s, sizes = [], [], []
    started = time.perf_counter()

    def cut(snapshots: list) -> None:
        for snapshot in snapshots:
            t = time.perf_counter()
            entry = store.save_snapshot(snapshot)
            save_s.append(time.perf_counter() - t)
            sizes.append(entry["bytes"])
        if snapshots:
            t = time.perf_counter()
            store.write_checkpoint({"cutter": cutter.to_state(), "snapshot_id": snapshots[-1].id})
            checkpoint_s.append(time.perf_counter() - t)

    for start in range(0, len(events), BATCH):
        lines, cuts = [], []
        for event in events[start:start + BATCH]:
            cuts += cutter.offer(event)
            lines.append(event.to_json())
        store.append_events(lines)
        cut(cuts)
    cut(cutter.flush())
    store.close()
    total = time.perf_counter() - started
    rss = peak_rss_mb()

    rng = np.random.default_rng(0)
    ids = [e["id"] for e in store.list_snapshots()]
    restore_s = []
    for snapshot_id in rng.choice(ids, RESTORES, replace=False).tolist():
        t = time.perf_counter()
        SnapshotStore(work).load_snapshot(snapshot_id)  # cold: a new store, nothing cached
        restore_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    SnapshotCutter.from_state(SnapshotStore(work).read_checkpoint()["cutter"])
    state_restore_s = time.perf_counter() - t

    query_s = []
    for net, node, when in query_plan(events, width, rng)[:40]:  # each one restores a snapshot: fewer of them
        t = time.perf_counter()
        cold = SnapshotStore(work)
        snapshot = cold.load_snapshot(cold.snapshot_at(when) or ids[0])
        g = snapshot.networks[net]
        index = g.index_of(node) if node in g.node_ids else -1
        int(np.count_nonzero(g.edge_index == index))
        query_s.append(time.perf_counter() - t)
    sizes_on_disk = store.size_bytes()
    return {
        "system": f"dynalign base_every={base_every}", "dataset": name, "events": len(events), "window_s": width,
        "snapshots": len(sizes), "ingest_events_per_s": round(len(events) / (total - sum(save_s) - sum(checkpoint_s))),
        "end_to_end_events_per_s": round(len(events) / total),
        "snapshot_bytes": {"total": sum(sizes), "mean": round(statistics.mean(sizes)), "max": max(sizes),
                           "first": sizes[0], "last": sizes[-1]},
        "store_bytes": sizes_on_disk, "snapshot_write_ms": _ms(save_s), "checkpoint_write_ms": _ms(checkpoint_s),
        "restore_snapshot_ms": _ms(restore_s), "restore_state_ms": round(state_restore_s * 1000, 1),
        "as_of_query_ms": _ms(query_s), "peak_rss_mb": round(rss, 1), "rss_growth_mb": round(rss - rss0, 1),
    }


def run_raphtory(name: str, work: Path) -> dict:
    from raphtory import Graph

    events, width = stream(name)
    rss0 = peak_rss_mb()
    path = str(work / "graph.cache")
    g = Graph()
    g.cache(path)
    persist_s, sizes = [], []
    window = None
    started = time.perf_counter()
    for event in events:
        k = math.floor(event.time / width)
        if window is not None and k > window:
            t = time.perf_counter()
            g.write_updates()
            persist_s.append(time.perf_counter() - t)
            sizes.append(_du(Path(path)))
        window = k
        ms = int(event.time * 1000)
        if event.op == ADD_EDGE:
            g.add_edge(ms, f"{event.net}:{event.u}", f"{event.net}:{event.v}", {"weight": event.weight},
                       layer=event.net)
        elif event.op == SET_ATTR:
            g.add_node(ms, f"{event.net}:{event.u}", {f"a{i}": v for i, v in enumerate(event.attrs) if v})
        elif event.op == ADD_ANCHOR:
            g.add_edge(ms, f"{event.net}:{event.u}", f"{event.to}:{event.v}", layer="anchor")
    t = time.perf_counter()
    g.write_updates()
    persist_s.append(time.perf_counter() - t)
    sizes.append(_du(Path(path)))
    total = time.perf_counter() - started
    rss = peak_rss_mb()
    edges_expected = g.count_edges()
    del g

    restore_s = []
    for _ in range(3):
        t = time.perf_counter()
        restored = Graph.load_cached(path)
        restore_s.append(time.perf_counter() - t)
    rng = np.random.default_rng(0)
    ends = [(k + 1) * width for k in range(math.floor(events[0].time / width), window + 1)]
    view_s = []
    for end in rng.choice(ends, RESTORES).tolist():
        t = time.perf_counter()
        restored.before(int(end * 1000)).count_edges()  # the state as of a snapshot's end
        view_s.append(time.perf_counter() - t)
    query_s = []
    for net, node, when in query_plan(events, width, rng):
        t = time.perf_counter()
        view = restored.before(int(when * 1000)).node(f"{net}:{node}")
        if view is not None:
            view.degree()
        query_s.append(time.perf_counter() - t)
    return {
        "system": "raphtory 0.17.0", "dataset": name, "events": len(events), "window_s": width,
        "snapshots": len(sizes), "ingest_events_per_s": round(len(events) / (total - sum(persist_s))),
        "end_to_end_events_per_s": round(len(events) / total),
        "snapshot_bytes": {"total": sizes[-1], "mean": round(sizes[-1] / len(sizes)),
                           "max": max(b - a for a, b in zip([0, *sizes], sizes))},
        "store_bytes": {"cache_file": sizes[-1]}, "snapshot_write_ms": _ms(persist_s),
        "restore_snapshot_ms": _ms([restore_s[-1] + v for v in view_s]), "restore_state_ms": _ms(restore_s)["mean"],
        "as_of_query_ms": _ms(query_s), "peak_rss_mb": round(rss, 1), "rss_growth_mb": round(rss - rss0, 1),
        "crash_safety": _raphtory_damage(path, work, edges_expected),
    }


def _du(path: Path) -> int:
    """Bytes under ``path`` (Raphtory's cache is a directory of files)."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _raphtory_damage(path: str, work: Path, edges_expected: int) -> dict:
    """What loading its cache does after a torn append (its largest file truncated) or a flipped byte: in a child
    process, since a damaged file may abort the interpreter."""
    cache = Path(path)
    largest = max((p for p in cache.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size) \
        if cache.is_dir() else cache
    data = largest.read_bytes()
    out = {"files": sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())[:10]
           if cache.is_dir() else [cache.name]}
    for label, damaged in (("truncated_100_bytes", data[:-100]),
                           ("flipped_middle_byte", data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF])
                            + data[len(data) // 2 + 1:])):
        target = work / label
        shutil.copytree(cache, target) if cache.is_dir() else shutil.copy(cache, target)
        (target / largest.relative_to(cache) if cache.is_dir() else target).write_bytes(damaged)
        probe = ("import sys; from raphtory import Graph\n"
                 "try:\n g = Graph.load_cached(sys.argv[1]); print('loaded', g.count_edges())\n"
                 "except BaseException as e: print('error', type(e).__name__, str(e)[:120].replace('\\n', ' '))")
        result = subprocess.run([sys.executable, "-c", probe, str(target)], capture_output=True, text=True)
        line = (result.stdout.strip().splitlines() or [f"crashed rc={result.returncode}"])[-1]
        out[label] = f"{line} (of {edges_expected} edges)" if line.startswith("loaded") else line
    return out


def _ms(values: list[float]) -> dict:
    ms = sorted(v * 1000 for v in values)
    return {"mean": round(statistics.mean(ms), 2), "p50": round(ms[len(ms) // 2], 2), "max": round(ms[-1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["collegemsg-views", "acm-dblp"])
    parser.add_argument("--systems", nargs="+", default=["delta", "full", "raphtory"])
    parser.add_argument("--out", default=None, help="Write the results as JSON here (they are printed too).")
    parser.add_argument("--child", nargs=2, metavar=("DATASET", "SYSTEM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, system = args.child
        work = Path(tempfile.mkdtemp(prefix="dynalign-bench-"))
        try:
            result = (run_raphtory(name, work) if system == "raphtory"
                      else run_dynalign(name, 10 if system == "delta" else 1, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(result))
        return
    results = []
    for name in args.datasets:
        for system in args.systems:
            done = subprocess.run([sys.executable, __file__, "--child", name, system], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name}/{system} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
