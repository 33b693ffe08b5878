"""``dynalign status``: what a state dir says about its worker, for an operator at a terminal or a script.

Read-only and torch-free: the snapshot manifest, the checkpoint, the alignment history, the dead-letter file and
``metrics.json`` (rewritten by the service at every checkpoint: counts, lag, online quality, Kafka health), and
the Redis the service published to (the state dir's embedded server if it is running, else the configured URL),
which gives each pair's current version. Nothing is started: an embedded Redis that is not running means the
service is not running, and the versions then come from the history on disk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis

from aligner.config import Config, mask_url
from aligner.logs import iso_time
from aligner.publish.redis_alignments import AlignmentClient
from aligner.service.run_settings import recorded_redis_url
from snapshots.history import AlignmentHistory
from snapshots.store import SnapshotStore
from stream.kafka_settings import parse_kafka_url, unreachable

PROBE_TIMEOUT_S = 2.0


def iso(t: float | None) -> str | None:
    """:func:`aligner.logs.iso_time`, passing ``None`` (not recorded) through."""
    return None if t is None else iso_time(t)


def state_status(root: Path, cfg: Config) -> dict[str, Any]:
    """Everything ``dynalign status`` reports, as plain data (``--json`` prints it as it is)."""
    store = SnapshotStore(root)
    snapshots = store.list_snapshots()
    checkpoint = store.read_checkpoint()
    metrics = _read_json(root / "metrics.json")
    history = AlignmentHistory(root / "history")
    recorded = {"|".join(pair): history.entries(*pair)[-1] for pair in history.pairs()}
    redis_report = _redis(root, cfg)
    current = redis_report.pop("current", {})  # what readers get now; else the newest version on disk
    quality = (metrics or {}).get("quality") or {}
    pairs = {pair: {**(current.get(pair) or {"version": recorded[pair]["version"], "from": "history",
                                             "snapshot": recorded[pair]["snapshot"],
                                             "published_at": iso(recorded[pair]["published_at"])}),
                    "quality": quality.get(pair)}
             for pair in sorted(set(recorded) | set(current))}
    newest = snapshots[-1] if snapshots else None
    return {
        "state_dir": str(root),
        "running": redis_report.get("embedded_running"),
        "checkpoint": None if checkpoint is None else {
            "written_at": iso(checkpoint.get("written_at")),
            "age_s": _age(checkpoint.get("written_at")),
            "snapshot": checkpoint.get("snapshot_id"), "aligned_through": checkpoint.get("aligned_through"),
            "unpublished_update": checkpoint.get("pending_update") is not None,
        },
        "snapshots": {
            "retained": len(snapshots),
            "event_time": None if not snapshots else [iso(snapshots[0]["start_time"]), iso(snapshots[-1]["end_time"])],
            "newest": None if newest is None else {
                "id": newest["id"], "kind": newest.get("kind", "base"), "events": newest["events"],
                "event_time": [iso(newest["start_time"]), iso(newest["end_time"])]},
        },
        "pairs": pairs,
        "dead_letters": _count_lines(root / "deadletter.jsonl"),
        "lag": None if metrics is None else metrics.get("lag"),
        "metrics_at": None if metrics is None else iso(metrics.get("at")),
        "redis": redis_report,
        "kafka": _kafka(metrics),
    }


def format_status(s: dict[str, Any]) -> str:
    """The report as aligned lines for a terminal."""
    lines = [("state dir", s["state_dir"] + ("" if s["running"] is None else
                                             "  (service running)" if s["running"] else "  (service not running)"))]
    c = s["checkpoint"]
    lines.append(("checkpoint", "none yet" if c is None else
                  f"{c['written_at']} ({_ago(c['age_s'])}): snapshot {c['snapshot']}, aligned through "
                  f"{c['aligned_through']}" + (", an update waits for Redis" if c["unpublished_update"] else "")))
    snaps = s["snapshots"]
    newest = snaps["newest"]
    lines.append(("snapshots", "none yet" if newest is None else
                  f"{snaps['retained']} retained, event time {snaps['event_time'][0]} .. {snaps['event_time'][1]}; "
                  f"newest {newest['id']} ({newest['kind']}, {newest['events']} events, "
                  f"{newest['event_time'][0]} .. {newest['event_time'][1]})"))
    if not s["pairs"]:
        lines.append(("pairs", "none published yet"))
    for pair, p in s["pairs"].items():
        q = p["quality"]
        quality = (f"; online Hits@1 {q['hits@1']:.3f}, MRR {q['mrr']:.3f} over {q['anchors']} anchors" if q
                   else "; no online quality recorded yet")
        lines.append(("pair " + pair, f"version {p['version']} ({p['from']}), snapshot {p['snapshot']}, "
                                      f"published {p['published_at']}{quality}"))
    lag = s["lag"]
    lines.append(("lag", "not recorded (no metrics.json yet)" if lag is None else
                  "none (caught up, or not a Kafka source)" if not any(lag.values()) else
                  ", ".join(f"partition {p}: {n}" for p, n in lag.items()) + f" records (as of {s['metrics_at']})"))
    lines.append(("dead letters", str(s["dead_letters"])))
    r = s["redis"]
    lines.append(("redis", "embedded server not running (the service is stopped): versions from the history on disk"
                  if r["url"] is None else
                  f"{r['url']} " + ("reachable" if r["reachable"] else f"unreachable: {r['error']}")))
    k = s["kafka"]
    lines.append(("kafka", "not a Kafka source" if k is None else
                  f"{', '.join(k['servers'])} " + ("reachable" if k["reachable"] else f"unreachable: {k['error']}")))
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {text}" for name, text in lines)


def _redis(root: Path, cfg: Config) -> dict[str, Any]:
    """Reachability and current versions of the Redis the service publishes to."""
    url, embedded_running = cfg.publish.redis_url or recorded_redis_url(root), None
    if not url:
        info = _read_json(root / "redis" / "server.json")  # written by a running embedded server, removed at stop
        embedded_running = info is not None
        if info is None:
            return {"url": None, "reachable": False, "embedded_running": False,
                    "error": "the state dir's embedded Redis is not running (the service is stopped); pass --redis "
                             "URL if the service publishes to another Redis"}
        url = info["url"]
    out: dict[str, Any] = {"url": mask_url(url), "embedded_running": embedded_running}
    try:
        client = AlignmentClient.from_url(url, cfg.publish.namespace, socket_timeout=PROBE_TIMEOUT_S,
                                          socket_connect_timeout=PROBE_TIMEOUT_S)
        current = {}
        for a, b in client.pairs():
            meta = client.meta(a, b)
            current[f"{a}|{b}"] = {"version": client.current_version(a, b), "from": "redis",
                                   "snapshot": int(meta["snapshot"]) if "snapshot" in meta else None,
                                   "published_at": iso(float(meta["published_at"])) if "published_at" in meta else None}
        out.update(current=current, reachable=True, error=None)
    except (redis.RedisError, OSError) as e:
        if embedded_running:  # server.json outlived its server (killed): the service is not running either
            out["embedded_running"] = False
        out.update(reachable=False, error=str(e) or type(e).__name__)
    return out


def _kafka(metrics: dict | None) -> dict[str, Any] | None:
    """Whether a broker of the service's Kafka source accepts connections now (None: not a Kafka source)."""
    source = (metrics or {}).get("source") or ""
    if not source.startswith("kafka://"):
        return None
    servers = parse_kafka_url(source)[0]
    errors = unreachable(servers, PROBE_TIMEOUT_S)
    return {"servers": servers, "reachable": not errors, "error": "; ".join(errors) or None,
            "reachable_at_last_checkpoint": (metrics or {}).get("kafka_reachable")}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _age(t: float | None) -> float | None:
    return None if t is None else round(time.time() - t, 1)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"
