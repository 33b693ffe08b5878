"""Freshness: how long after an event is written does an alignment that includes it become visible in Redis?

End to end through the real pieces: ``dynalign run --source -`` (the service, as a subprocess) on a real
redis-server, fed through its stdin. The first part of the dataset's event stream (``--history``) is written at
full speed and aligned (the first adaptation, the warm-up of any deployment); then the rest is written at
``--rate`` events/s, each line's write time recorded. A follower reads the pair's versions stream (XREAD, as
``AlignmentClient.follow`` does) and records when each version became visible and the event time it reflects.
An event's latency is the visibility time of the first version whose event time covers it minus its write
time. Event times are made unique (a millisecond apart within a second) so that "covers" is exact.

    .venv/bin/python benchmarks/freshness.py /work/shared/data/collegemsg-views --rate 2000 --json out.json

Adaptation on schedule or anchor growth is off during the measurement (``--adapt-every``), because this
measures the incremental path; drift may still trigger one, and the result counts them. Heavy steps
(realignments, anchors joining, adaptations) run in the background, stdin being a live source
(``service.refresh``); ``DYNALIGN_SERVICE_REFRESH=never`` in the environment measures them in line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aligner.publish.embedded_redis import EmbeddedRedis  # noqa: E402
from aligner.publish.redis_alignments import AlignmentClient  # noqa: E402
from stream.datasets import dataset_events, load_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset_dir")
    ap.add_argument("--rate", type=float, default=2000.0, help="live events per second")
    ap.add_argument("--history", type=float, default=0.6, help="fraction of events written before the live part")
    ap.add_argument("--every", type=int, default=500, help="snapshot every N events")
    ap.add_argument("--live-events", type=int, default=12000, help="live events to write (at most the rest)")
    ap.add_argument("--adapt-every", type=int, default=0, help="adapt.every_snapshots during the run (0: off)")
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--service-log", default=None, help="keep the service's log (its stderr) in this file")
    args = ap.parse_args()

    ds = load_dataset(args.dataset_dir)
    events = list(dataset_events(ds, protocol="stream", windows=10, seed=0))
    # Unique, still ordered event times: the n-th event within one second gets n milliseconds.
    lines, times, last, bump = [], [], None, 0
    for e in events:
        bump = bump + 1 if e.time == last else 0
        last = e.time
        e = dataclasses.replace(e, time=e.time + bump * 1e-3)
        lines.append(e.to_json() + "\n")
        times.append(e.time)
    times = np.array(times)
    n_history = int(len(lines) * args.history)
    n_live = min(args.live_events, len(lines) - n_history)
    src, dst = ds.source_net, ds.target_net

    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        env = {**os.environ, "DYNALIGN_SNAPSHOTS_WINDOW_SECONDS": "none",
               "DYNALIGN_SNAPSHOTS_EVERY_EVENTS": str(args.every),
               "DYNALIGN_ADAPT_EVERY_SNAPSHOTS": str(args.adapt_every), "DYNALIGN_ADAPT_ANCHOR_GROWTH": "0"}
        cmd = [sys.executable, "-m", "aligner.cli", "run", "--source", "-", "--state", f"{tmp}/state",
               "--redis", server.url, "--json"]
        # Logs go to files: a pipe nobody reads while we write would fill and stall the service.
        log_out, log_err = open(f"{tmp}/stdout", "w+"), open(f"{tmp}/stderr", "w+")
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log_out, stderr=log_err, env=env, text=True,
                                cwd=Path(__file__).resolve().parents[1])
        client = AlignmentClient.from_url(server.url)
        visible: list[tuple[float, float, int]] = []  # (visible at, end_time, snapshot)
        stop = threading.Event()

        def follow() -> None:
            for ann in client.follow(src, dst, after="0", block_s=0.2):
                visible.append((time.time(), ann.end_time, ann.snapshot))
                if stop.is_set():
                    return

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        t0 = time.time()
        proc.stdin.writelines(lines[:n_history])
        proc.stdin.flush()
        history_end = times[n_history - 1 - (n_history % args.every)] if n_history >= args.every else times[0]
        while not any(v[1] >= history_end for v in visible):
            if proc.poll() is not None:
                log_err.seek(0)
                raise SystemExit(f"service exited: {log_err.read()[-2000:]}")
            time.sleep(0.05)
        warmup_s = time.time() - t0

        written = np.zeros(n_live)
        batch = max(1, int(args.rate / 100))  # 10 ms slices keep the pace smooth
        start = time.time()
        for i in range(0, n_live, batch):
            due = start + i / args.rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            chunk = lines[n_history + i:n_history + i + batch]
            proc.stdin.writelines(chunk)
            proc.stdin.flush()
            written[i:i + len(chunk)] = time.time()
        achieved = n_live / (time.time() - start)
        # Wait for the last complete snapshot of the live part to show up, then stop the service.
        last_full = n_history + ((n_history + n_live) // args.every * args.every - n_history) - 1
        deadline = time.time() + 60
        while not any(v[1] >= times[last_full] for v in visible) and time.time() < deadline:
            time.sleep(0.05)
        stop.set()
        proc.stdin.close()
        proc.wait(timeout=300)
        log_out.seek(0)
        log_err.seek(0)
        out, err = log_out.read(), log_err.read()
    if args.service_log:
        Path(args.service_log).write_text(err)

    vis = sorted(visible, key=lambda v: v[1])
    end_times = np.array([v[1] for v in vis])
    seen_at = np.array([v[0] for v in vis])
    live_times = times[n_history:n_history + n_live]
    covered = live_times <= times[last_full]
    pos = np.searchsorted(end_times, live_times[covered], side="left")
    ok = pos < len(end_times)
    latency = seen_at[pos[ok]] - written[covered][ok]
    # Worst latency per second of the live part: where the tail comes from (a slow alignment, a meta-update).
    second = (written[covered][ok] - written[0]).astype(int)
    per_second = [round(float(latency[second == s].max()), 2) for s in range(int(second.max()) + 1)
                  if (second == s).any()]
    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    adaptations = err.count('"path": "adaptation"') + err.count("path=adaptation")
    refreshes = err.count('"snapshot refreshed"') + err.count("snapshot refreshed")
    result = {
        "dataset": Path(args.dataset_dir).name, "rate_requested": args.rate, "rate_achieved": round(achieved, 1),
        "every_events": args.every, "history_events": n_history, "live_events": n_live,
        "measured_events": int(ok.sum()), "warmup_s": round(warmup_s, 2),
        "latency_s": {f"p{q}": round(float(np.percentile(latency, q)), 3) for q in (50, 95, 99)}
        | {"max": round(float(latency.max()), 3), "mean": round(float(latency.mean()), 3)},
        "worst_per_second": per_second, "versions_seen": len(vis), "adaptations_logged": adaptations,
        "refreshes_logged": refreshes,
        "service": {k: summary.get(k) for k in ("accepted", "snapshots", "published", "dead_letters", "wall_s",
                                                     "ingest_s", "align_s", "learn_s", "refresh_s", "state_s", "publish_s",
                                                     "checkpoint_s")},
    }
    print(json.dumps(result, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
