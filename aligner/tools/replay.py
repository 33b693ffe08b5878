"""Going back over recorded history: re-feed events to Kafka, re-align old snapshots, select ranges.

``dynalign replay`` serves audits (why did this alignment change?), backfills (what would the current model
have published?), reproduction (the same checkpoint and seed give bit-identical top-k) and re-feeding a live
system. Everything reads the state dir's store (:mod:`snapshots.store`) and alignment history
(:mod:`snapshots.history`); nothing here writes to the live namespace: a re-alignment records its versions
under ``STATE/replays/NAME/`` and, when asked to publish, to the Redis namespace ``NS:replay:NAME``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from aligner.config import Config
from aligner.update import AlignmentUpdate, PairTopK
from snapshots.history import AlignmentHistory, RecordedAlignment
from snapshots.snapshot import pair_key
from snapshots.store import SnapshotStore
from stream.kafka_settings import KafkaSettings
from stream.producer import FeedSummary, feed_lines


@dataclass(frozen=True)
class Bound:
    """One end of a replay range: a snapshot id, or an event time (unix seconds)."""

    snapshot: int | None = None
    time: float | None = None


def parse_bound(text: str) -> Bound:
    """``ID`` (a plain integer) or ``TIME``: ``@UNIX_SECONDS`` or ISO-8601 (UTC unless it says otherwise).

    >>> parse_bound("12"), parse_bound("@1700000000.5").time, parse_bound("2023-11-14T22:13:20Z").time
    (Bound(snapshot=12, time=None), 1700000000.5, 1700000000.0)
    """
    text = text.strip()
    if text.isdigit():
        return Bound(snapshot=int(text))
    if text.startswith("@"):
        return Bound(time=float(text[1:]))
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected a snapshot id (an integer), @UNIX_SECONDS or an ISO-8601 time, got {text!r}") \
            from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return Bound(time=parsed.timestamp())


def parse_time(text: str) -> float:
    """An event time for ``--at``: unix seconds (``@`` optional) or ISO-8601."""
    stripped = text.strip().lstrip("@")
    try:
        return float(stripped)
    except ValueError:
        bound = parse_bound(text)
        if bound.time is None:
            raise ValueError(f"expected a time, got {text!r}") from None
        return bound.time


def select(store: SnapshotStore, start: Bound | None = None, end: Bound | None = None) -> list[dict[str, Any]]:
    """Manifest entries of the retained snapshots in ``[start, end]``. A time bound keeps the snapshots whose
    window ``[start_time, end_time)`` reaches past it (start) or began by it (end)."""
    entries = store.list_snapshots()
    if start is not None:
        entries = [e for e in entries if (e["id"] >= start.snapshot if start.snapshot is not None
                                          else e["end_time"] > start.time)]
    if end is not None:
        entries = [e for e in entries if (e["id"] <= end.snapshot if end.snapshot is not None
                                          else e["start_time"] <= end.time)]
    return entries


def recorded_lines(store: SnapshotStore, entries: list[dict[str, Any]]) -> list[bytes]:
    """The event-log lines that arrived for ``entries`` (consecutive snapshots), in arrival order."""
    if not entries:
        return []
    return [line.encode() for line in store.read_lines(entries[0]["log"][0], entries[-1]["log"][1])]


def replay_to_kafka(store: SnapshotStore, entries: list[dict[str, Any]], url: str, *,
                    settings: KafkaSettings | None = None, rate: float | None = None, key: str | None = None,
                    progress: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> FeedSummary:
    """Produce the recorded events of ``entries`` to ``url`` in their original order, keyed as ``dynalign feed``
    keys them (by network, so each network's order survives partitioning), optionally paced at ``rate``/s."""
    return feed_lines(recorded_lines(store, entries), url, settings=settings, rate=rate, key=key, progress=progress,
                      stop=stop)


def realign(cfg: Config, state_dir: Path, entries: list[dict[str, Any]], name: str, *,
            aligner_state: bytes | None = None, publisher: Any = None,
            echo: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Align the snapshots of ``entries`` again, in order, with the configured model: a fresh aligner seeded with
    ``service.seed``, or the one in ``aligner_state`` (a savepoint's). Every version goes to the replay's own
    history under ``STATE/replays/NAME`` (and to ``publisher``, a replay-namespace publisher, if given); the
    report, also written there as ``report.json``, compares each with what was recorded live for that
    snapshot."""
    import torch

    from aligner.engine.factory import build_aligner
    from aligner.runtime import aligner_threads

    torch.set_num_threads(aligner_threads(cfg.service.threads))
    out = state_dir / "replays" / name
    if (out / "report.json").exists():
        raise FileExistsError(f"replay {name!r} already exists in {out}: choose another --name")
    store = SnapshotStore(state_dir)
    live = AlignmentHistory(state_dir / "history")
    replayed = AlignmentHistory(out / "history", cfg.store.base_every)
    aligner = build_aligner(cfg)
    if aligner_state:
        aligner.load_state_bytes(aligner_state)
    seeded_with = aligner.model_version()
    started = time.perf_counter()
    versions: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for entry in entries:
        snapshot = store.load_snapshot(entry["id"])
        update = aligner.on_snapshot(snapshot)
        if update is None:
            continue
        version_of_model = aligner.model_version()
        if publisher is not None:
            publisher.publish(update)
        for a, b in by_pair(update):
            tag = f"{a}|{b}"
            versions[tag] = versions.get(tag, 0) + 1
        record_update(replayed, update, versions, version_of_model)
        for a, b in by_pair(update):
            tag = f"{a}|{b}"
            recorded = [e for e in live.entries(a, b) if e["snapshot"] == snapshot.id]
            row: dict[str, Any] = {"snapshot": snapshot.id, "pair": tag, "replay_version": versions[tag],
                   "recorded_version": recorded[-1]["version"] if recorded else None}
            now = replayed.load(replayed.entries(a, b)[-1])
            row.update(compare(live.load(recorded[-1]) if recorded else None, now))
            rows.append(row)
            echo(f"snapshot {snapshot.id} {tag}: " + (
                "nothing recorded live" if not recorded else
                "identical" if row["identical"] else
                f"{row['top1_changed']}/{row['nodes']} top-1 changed, overlap@k {row['overlap_at_k']:.3f}"))
    report = {
        "name": name, "state_dir": str(state_dir), "snapshots": [e["id"] for e in entries],
        "model_version": seeded_with,
        "seed": cfg.service.seed, "seconds": round(time.perf_counter() - started, 2), "rows": rows,
        "compared": sum(r["recorded_version"] is not None for r in rows),
        "identical": sum(bool(r.get("identical")) for r in rows),
        "top1_changed": sum(r.get("top1_changed", 0) for r in rows),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def compare(recorded: RecordedAlignment | None, replayed: RecordedAlignment) -> dict[str, Any]:
    """What changed between two versions of a pair, by external node id: nodes aligned in both, how many changed
    their best candidate, mean overlap of the top-k sets, largest score change, and whether the two are
    bit-identical (same nodes, candidates and float32 scores)."""
    if recorded is None:
        return {}
    nodes = top1 = 0
    overlap, max_diff = 0.0, 0.0
    identical = recorded.node_ids == replayed.node_ids and recorded.top.keys() == replayed.top.keys()
    for (src, dst), (index, cands, scores) in replayed.top.items():
        old = recorded.top.get((src, dst))
        if old is None:
            continue
        identical &= all(np.array_equal(x, y) for x, y in zip(old, (index, cands, scores)))
        old_rows = {recorded.node_ids[src][i]: r for r, i in enumerate(old[0].tolist())}
        for r, i in enumerate(index.tolist()):
            o = old_rows.get(replayed.node_ids[src][i])
            if o is None:
                continue
            new_ids = [replayed.node_ids[dst][c] for c in cands[r].tolist()]
            old_ids = [recorded.node_ids[dst][c] for c in old[1][o].tolist()]
            nodes += 1
            top1 += bool(new_ids[:1] != old_ids[:1])
            overlap += len(set(new_ids) & set(old_ids)) / max(1, len(new_ids))
            if len(old[2][o]) == len(scores[r]):
                max_diff = max(max_diff, float(np.max(np.abs(old[2][o] - scores[r]), initial=0.0)))
    return {"identical": bool(identical), "nodes": nodes, "top1_changed": top1,
            "overlap_at_k": overlap / nodes if nodes else math.nan, "max_score_change": max_diff}


def by_pair(update: AlignmentUpdate) -> dict[tuple[str, str], list[PairTopK]]:
    """The update's directions grouped by (sorted) network pair."""
    out: dict[tuple[str, str], list[PairTopK]] = {}
    for t in update.pairs:
        out.setdefault(pair_key(t.src, t.dst), []).append(t)
    return out


def record_update(history: AlignmentHistory, update: AlignmentUpdate, versions: dict[str, int],
                  model: str | None) -> None:
    """Record every pair of ``update`` that ``versions`` (``{"A|B": version}``) numbers."""
    for (a, b), directions in by_pair(update).items():
        version = versions.get(f"{a}|{b}")
        if version is not None:
            history.record(a, b, version, update.snapshot_id, update.end_time, update.node_ids, directions, model)
