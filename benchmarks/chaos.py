"""Faults, measured: after each one, does the service end where an uninterrupted run ends?

A live Kafka stream (the bundled sample's events with a few dozen bad lines among them, produced by `dynalign
feed` at a steady rate into a topic of three partitions while the worker reads it) is run once without faults
and then once per fault, each with its own topic, consumer group, state dir and Redis namespace:

- SIGKILL of the worker at 10 random moments (startup, ingestion, alignment, checkpoint: wherever they fall),
  each followed by a restart on the same state dir;
- the Redis server stopped for 30 s while the stream flows, then started again on the same port;
- the broker cut for 30 s (every connection of worker and producer dropped, new ones refused: the tests'
  :class:`tests.brokers.TcpProxy`);
- the newest checkpoint, then the newest snapshot, truncated to half or with bytes overwritten in the middle,
  while the worker is down after a SIGKILL;
- the oldest retained snapshot and the one before the newest overwritten in the middle after the run, then the
  worker started again (it checks every snapshot file at start-up and rebuilds damaged ones from the event
  log).

After each, the end state is compared with the uninterrupted run's: the event log (every accepted event once,
none lost), the final graph, the snapshots (ids, windows, counts), the dead-letter file, and what Redis serves
(the published snapshot, the share of nodes whose top-1 is the same, whether every top-k list and score is
bit-identical). A second uninterrupted run is the noise floor: what differs between two runs without faults
is timing, not the fault.

    python benchmarks/chaos.py --json docs/bench/chaos.json

The aligner's settings are the tests' small ones (this measures recovery, not accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from hostile import DEAD, KINDS, SMALL, final_graph, mix, same_graph, valid_events  # noqa: E402

from aligner import AlignmentClient  # noqa: E402
from aligner.publish.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from snapshots.store import SnapshotStore  # noqa: E402
from tests.brokers import create_topic, start_tansu  # noqa: E402

DYNALIGN = str(ROOT / ".venv/bin/dynalign")
PARTITIONS = 3
# Bad lines a producer can send (feed skips a line too large for Kafka, so that kind is left out here).
BAD_KINDS = [k for k in KINDS if k.expected == DEAD and k.name not in ("payload-over-1mib",)]


@dataclass
class Scenario:
    name: str
    until_idle_s: float = 5.0
    notes: list[str] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    kills: int = 0
    seconds: float = 0.0


class Rig:
    """One broker (behind a proxy) and one Redis server (on a fixed port) shared by every scenario."""

    def __init__(self, workdir: Path, events: Path, rate: float, seed: int, settings: dict[str, str]):
        self.workdir, self.events, self.rate, self.settings = workdir, events, rate, settings
        self.rng = random.Random(seed)
        self.broker = start_tansu(behind_proxy=True)
        self.redis_port = free_port()
        self.redis = EmbeddedRedis(workdir / "redis", port=self.redis_port).start()
        self.redis_url = self.redis.url

    def close(self) -> None:
        self.broker.stop()
        self.redis.stop()

    def feeder(self, topic: str) -> subprocess.Popen:
        create_topic(self.broker.bootstrap, topic, PARTITIONS)
        log = open(self.workdir / f"{topic}.feed.log", "ab")
        return subprocess.Popen([DYNALIGN, "feed", str(self.events), "--to", f"kafka://{self.broker.bootstrap}/{topic}",
                                 "--rate", str(self.rate)], stdout=log, stderr=log)

    def worker(self, scenario: Scenario, topic: str) -> subprocess.Popen:
        state = self.workdir / scenario.name
        env = {**os.environ, **SMALL, **self.settings, "DYNALIGN_PUBLISH_NAMESPACE": scenario.name}
        log = open(self.workdir / f"{scenario.name}.worker.log", "ab")
        return subprocess.Popen(
            [DYNALIGN, "run", "--source", f"kafka://{self.broker.bootstrap}/{topic}?group={scenario.name}",
             "--state", str(state), "--redis", self.redis_url, "--until-idle", str(scenario.until_idle_s), "--json"],
            env=env, stdout=subprocess.DEVNULL, stderr=log)


def finish(proc: subprocess.Popen, scenario: Scenario, timeout_s: float = 600.0) -> None:
    try:
        scenario.exits.append(proc.wait(timeout=timeout_s))
    except subprocess.TimeoutExpired:
        proc.kill()
        scenario.exits.append(proc.wait())
        scenario.notes.append(f"a run did not go idle within {timeout_s:g} s (killed)")


def kill(proc: subprocess.Popen, scenario: Scenario) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        scenario.kills += 1
    proc.wait()


def wait_for(predicate: Callable[[], bool], timeout_s: float, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def checkpoints_written(state: Path) -> int:
    """0, 1 or 2: whether the checkpoint and the one before it (``checkpoint.prev``) exist yet."""
    return sum((state / name).exists() for name in ("checkpoint", "checkpoint.prev"))


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # corrupted: the same size, a run of bytes in the middle overwritten
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(b ^ 0xA5 for b in data[mid:mid + 64]) + data[mid + 64:])


def run_scenario(rig: Rig, scenario: Scenario, kind: str) -> None:
    topic = f"chaos-{scenario.name}"
    state = rig.workdir / scenario.name
    started = time.monotonic()
    feeder = rig.feeder(topic)
    if kind == "none":
        finish(rig.worker(scenario, topic), scenario)
    elif kind == "sigkill":
        for _ in range(10):
            proc = rig.worker(scenario, topic)
            time.sleep(rig.rng.uniform(3.0, 12.0))
            kill(proc, scenario)
        finish(rig.worker(scenario, topic), scenario)
    elif kind == "redis":
        proc = rig.worker(scenario, topic)
        time.sleep(8.0)
        rig.redis.stop()
        time.sleep(30.0)
        rig.redis = EmbeddedRedis(rig.workdir / "redis", port=rig.redis_port).start()
        finish(proc, scenario)
        if scenario.exits[-1] != 0:  # the stream ended while Redis was away: what the error says, run again
            scenario.notes.append("the run ended in the outage (exit 1, update kept): run again")
            finish(rig.worker(scenario, topic), scenario)
    elif kind == "broker":
        proc = rig.worker(scenario, topic)
        time.sleep(8.0)
        rig.broker.proxy.down()
        time.sleep(30.0)
        rig.broker.proxy.up()
        finish(proc, scenario)
    elif kind == "retained":  # an old snapshot damaged on disk after the run: the next start repairs it
        finish(rig.worker(scenario, topic), scenario)
        listed = SnapshotStore(state).list_snapshots()
        for entry in (listed[0], listed[-2]):  # a base and a delta well inside the history
            victim = state / "snapshots" / entry["file"]
            damage(victim, "corrupted")
            scenario.notes.append(f"corrupted: {victim.relative_to(rig.workdir)}")
        finish(rig.worker(scenario, topic), scenario)
        verify = subprocess.run([DYNALIGN, "snapshots", "verify", "--state", str(state)], capture_output=True,
                                text=True)
        scenario.notes.append(f"snapshots verify: exit {verify.returncode}: {verify.stdout.strip()}")
        warned = [line for line in (rig.workdir / f"{scenario.name}.worker.log").read_text().splitlines()
                  if "damaged on disk" in line]
        scenario.notes += [line[line.index("msg="):] for line in warned]
    else:  # "checkpoint truncated" and the like: damage the newest file while the worker is down
        target, how = kind.split()
        proc = rig.worker(scenario, topic)
        store_ready = (lambda: checkpoints_written(state) == 2) if target == "checkpoint" else (
            lambda: checkpoints_written(state) >= 1 and len(SnapshotStore(state).list_snapshots()) >= 2)
        if not wait_for(store_ready, 120, proc):
            scenario.notes.append("the run ended before there was a file to damage")
        kill(proc, scenario)
        if target == "checkpoint":
            victim = state / "checkpoint"
        else:
            victim = state / "snapshots" / SnapshotStore(state).list_snapshots()[-1]["file"]
        damage(victim, how)
        scenario.notes.append(f"{how}: {victim.relative_to(rig.workdir)}")
        finish(rig.worker(scenario, topic), scenario)
    feed_exit = feeder.wait(timeout=300)
    if feed_exit != 0:
        scenario.notes.append(f"feed exited {feed_exit}")
    scenario.seconds = time.monotonic() - started


def published(redis_url: str, namespace: str, state: Path) -> dict:
    client = AlignmentClient.from_url(redis_url, namespace)
    pairs = sorted(client.pairs())
    if not pairs:
        return {"pairs": []}
    out: dict = {"pairs": pairs, "top": {}}
    store = SnapshotStore(state)
    latest = store.load_snapshot(store.latest_id())
    for net, to in pairs:
        out["top"][f"{net}->{to}"] = {
            "meta": {k: v for k, v in client.meta(net, to).items() if k in ("snapshot", "end_time")},
            "lists": {node: [(c.node, c.score) for c in cands]
                      for node, cands in client.top_many(list(latest.networks[net].node_ids), net, to).items()}}
    return out


def compare(rig: Rig, scenario: Scenario, reference: Scenario, ref_published: dict) -> dict:
    state, ref_state = rig.workdir / scenario.name, rig.workdir / reference.name
    store, ref_store = SnapshotStore(state), SnapshotStore(ref_state)
    events, ref_events = list(store.read_events()), list(ref_store.read_events())
    keep = ("id", "start_time", "end_time", "events", "networks", "anchors")
    dead = sorted(json.loads(x).get("payload", "") for x in (state / "deadletter.jsonl").read_text().splitlines())
    ref_dead = sorted(json.loads(x).get("payload", "")
                      for x in (ref_state / "deadletter.jsonl").read_text().splitlines())
    row = {
        "scenario": scenario.name, "kills": scenario.kills, "exits": scenario.exits,
        "seconds": round(scenario.seconds, 1), "notes": scenario.notes,
        "events": len(events), "events_lost": len(set(ref_events) - set(events)),
        "events_applied_twice": len(events) - len(set(events)),
        "same_graph": same_graph(final_graph(state), final_graph(ref_state)),
        "snapshots": len(store.list_snapshots()),
        "same_snapshots": [{k: e[k] for k in keep} for e in store.list_snapshots()] == [
            {k: e[k] for k in keep} for e in ref_store.list_snapshots()],
        "dead_letters": len(dead), "same_dead_letters": dead == ref_dead,
    }
    ours = published(rig.redis_url, scenario.name, state)
    row["same_published_snapshot"] = bool(ours.get("top")) and all(
        ours["top"][p]["meta"] == ref_published["top"][p]["meta"] for p in ref_published["top"] if p in ours["top"])
    agree = total = 0
    identical = bool(ours.get("top")) and set(ours["top"]) == set(ref_published["top"])
    for p, ref_top in ref_published.get("top", {}).items():
        mine = ours.get("top", {}).get(p, {"lists": {}})["lists"]
        for node, ref_list in ref_top["lists"].items():
            got = mine.get(node, [])
            total += 1
            agree += int(bool(got) and bool(ref_list) and got[0][0] == ref_list[0][0])
            identical &= got == ref_list
    row["top1_agreement"] = round(agree / total, 4) if total else None
    row["topk_bit_identical"] = identical
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| scenario | kills | events lost / twice | same graph | same snapshots | same dead letters | "
            "same published snapshot | top-1 agreement | top-k identical | s |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['kills']} | {r['events_lost']} / {r['events_applied_twice']} | "
                     f"{r['same_graph']} | {r['same_snapshots']} | {r['same_dead_letters']} | "
                     f"{r['same_published_snapshot']} | {r['top1_agreement']} | {r['topk_bit_identical']} | "
                     f"{r['seconds']} |")
    return "\n".join(lines)


SCHEDULES = {"live": {}, "ordered": {"DYNALIGN_SERVICE_COALESCE": "never", "DYNALIGN_SERVICE_REFRESH": "never"}}
SCENARIOS = [("uninterrupted", "none"), ("uninterrupted-again", "none"), ("sigkill-x10", "sigkill"),
             ("redis-stopped-30s", "redis"), ("broker-cut-30s", "broker"),
             ("checkpoint-truncated", "checkpoint truncated"), ("checkpoint-corrupted", "checkpoint corrupted"),
             ("snapshot-truncated", "snapshot truncated"), ("snapshot-corrupted", "snapshot corrupted"),
             ("retained-snapshot-corrupted", "retained")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=6, help="event-time windows of the sample's stream")
    parser.add_argument("--bad", type=int, default=60, help="bad lines among the valid events")
    parser.add_argument("--rate", type=float, default=60.0, help="events/s the producer sends")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="live",
                        help="live: the defaults (waiting snapshots aligned as one step, heavy steps on a background "
                             "copy: what happens depends on timing); ordered: one alignment per snapshot, in order")
    parser.add_argument("--only", default=None, help="comma-separated scenario names (the reference always runs)")
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dynalign-chaos-"))
    valid = valid_events(workdir, windows=args.windows)
    lines, _ = mix(valid, args.bad, args.seed, BAD_KINDS)
    events = workdir / "events.jsonl"
    with open(events, "wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")) + b"\n")
    wanted = set(args.only.split(",")) if args.only else None
    rig = Rig(workdir, events, args.rate, args.seed, SCHEDULES[args.schedule])
    rows = []
    try:
        reference = None
        ref_published: dict = {}
        for name, kind in SCENARIOS:
            if wanted is not None and name != "uninterrupted" and name not in wanted:
                continue
            scenario = Scenario(name, until_idle_s=45.0 if kind == "broker" else 5.0)
            run_scenario(rig, scenario, kind)
            if reference is None:
                reference, ref_published = scenario, published(rig.redis_url, name, workdir / name)
            row = compare(rig, scenario, reference, ref_published)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        rig.close()
    report = {"valid_events": len(valid), "bad_lines": args.bad, "partitions": PARTITIONS, "rate": args.rate,
              "schedule": args.schedule, "settings": SCHEDULES[args.schedule], "seed": args.seed, "workdir": str(workdir), "rows": rows}
    print(markdown(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
