"""Hostile input, measured: does a stream full of garbage, forgeries and abuse cost the service anything but
dead letters?

A seeded mix of hostile lines of many kinds is interleaved with the valid events of the bundled sample and fed
to the real CLI (`dynalign run`) through a file, through stdin and through Kafka (a tansu broker, a topic of
three partitions filled by `dynalign feed`). Each run is compared with a run of the valid events alone: events sent, valid events
applied (the final graphs must be identical), dead letters by kind against what each kind should give, crashes
(exit status, tracebacks), hangs (a wall-clock limit) and peak RSS.

    python benchmarks/hostile.py --hostile 5000 --via file,stdin,kafka --json docs/bench/hostile.json

The aligner's own settings are the tests' small ones (this measures ingestion, not accuracy).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from snapshots.cutter import SnapshotCutter  # noqa: E402
from snapshots.store import SnapshotStore  # noqa: E402

SMALL = {"DYNALIGN_META_WARMUP_ITERATIONS": "40", "DYNALIGN_META_ITERATIONS_PER_SNAPSHOT": "4",
         "DYNALIGN_MODEL_HIDDEN": "32", "DYNALIGN_MODEL_EMBEDDING_DIM": "32", "DYNALIGN_MODEL_POSITION_DIM": "64",
         "DYNALIGN_SERVICE_THREADS": "1",
         # the sample has two networks: a third is growth beyond the bound (a dead letter), as 200 would be
         "DYNALIGN_SNAPSHOTS_MAX_NETWORKS": "2"}
DEAD, DROPPED, NO_OP = "dead letter", "dropped as a redelivery", "applied as a no-op"


@dataclass(frozen=True)
class Kind:
    name: str
    expected: str  # DEAD, DROPPED or NO_OP


def _compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def hostile_line(kind: str, rng: random.Random, valid: list[dict], n: int, now: float,
                 nets: tuple[str, str]) -> str | bytes:
    """One hostile line of ``kind`` against networks ``nets``; ``n`` makes ids and names unique, ``now`` is
    event time at its place."""
    net, other = nets
    base = {"op": "add_edge", "time": now, "net": net, "u": f"h{n}u", "v": f"h{n}v", "id": f"hostile-{n}"}
    earlier = rng.choice(valid)
    makers = {
        "not-json": lambda: f"not json {n}",
        "truncated-json": lambda: _compact(base)[:-3],
        "array": lambda: "[1, 2, 3]",
        "scalar": lambda: "42",
        "empty-object": lambda: "{}",
        "missing-op": lambda: _compact({k: v for k, v in base.items() if k != "op"}),
        "unknown-op": lambda: _compact({**base, "op": "teleport"}),
        "missing-time": lambda: _compact({k: v for k, v in base.items() if k != "time"}),
        "missing-v": lambda: _compact({k: v for k, v in base.items() if k != "v"}),
        "unknown-field": lambda: _compact({**base, "colour": "red"}),
        "time-nan": lambda: _compact(base).replace(f'"time":{now}', '"time":NaN'),
        "time-negative": lambda: _compact({**base, "time": -5}),
        "time-milliseconds": lambda: _compact({**base, "time": now * 1000}),
        "time-bad-iso": lambda: _compact({**base, "time": "2026-13-45T99:00:00Z"}),
        "time-far-future": lambda: _compact({**base, "time": time.time() + 30 * 86400}),
        "time-jump": lambda: _compact({**base, "time": 99_999_999_999}),
        "weight-zero": lambda: _compact({**base, "weight": 0}),
        "weight-negative": lambda: _compact({**base, "weight": -1}),
        "weight-huge": lambda: _compact({**base, "weight": 1e300}),
        "weight-string": lambda: _compact({**base, "weight": "heavy"}),
        "self-loop": lambda: _compact({**base, "v": base["u"]}),
        "node-id-too-long": lambda: _compact({**base, "u": "x" * 10_000}),
        "node-id-object": lambda: _compact({**base, "u": {"nested": [1, 2]}}),
        "net-newline": lambda: _compact({**base, "net": net + "\n"}),
        "net-dotdot": lambda: _compact({**base, "net": ".."}),
        "net-slash": lambda: _compact({**base, "net": "../../etc"}),
        "net-flag": lambda: _compact({**base, "net": "--help"}),
        "attrs-too-wide": lambda: _compact({"op": "set_attr", "time": now, "net": net, "node": f"h{n}",
                                            "attrs": [0.5] * 70_000, "id": f"hostile-{n}"}),
        "attrs-nan": lambda: '{"op":"set_attr","time":%r,"net":"%s","node":"h%d","attrs":[1,NaN]}' % (now, net, n),
        "attrs-named-on-vector-network": lambda: _compact({"op": "set_attr", "time": now, "net": net,
                                                           "node": earlier.get("u", "1"), "attrs": {"age": 3},
                                                           "id": f"hostile-{n}"}),
        "anchor-same-network": lambda: _compact({"op": "add_anchor", "time": now, "net": net, "node": "1",
                                                 "to": net, "to_node": "2", "id": f"hostile-{n}"}),
        "anchor-missing-to-node": lambda: _compact({"op": "add_anchor", "time": now, "net": net, "node": "1",
                                                    "to": other, "id": f"hostile-{n}"}),
        "payload-over-1mib": lambda: _compact({**base, "u": "y" * (1 << 20)}),
        "not-utf8": lambda: b'{"op":"add_edge","net":"%s","u":"\xff\xfe","v":"2","time":1}' % net.encode(),
        "deep-nesting": lambda: "[" * 5000 + "]" * 5000,
        "third-network": lambda: _compact({**base, "net": f"extra{n}"}),
        "forged-id": lambda: _compact({**earlier, "u": f"mallory{n}"} if "u" in earlier
                                      else {**earlier, "node": f"mallory{n}"}),
        "redelivery": lambda: _compact(earlier),
        "remove-unknown-edge": lambda: _compact({"op": "remove_edge", "time": now, "net": net,
                                                 "u": f"ghost{n}", "v": f"phantom{n}"}),
        "remove-unknown-anchor": lambda: _compact({"op": "remove_anchor", "time": now, "net": net,
                                                   "node": f"ghost{n}", "to": other, "to_node": f"phantom{n}"}),
    }
    return makers[kind]()


KINDS = [Kind(name, DEAD) for name in (
    "not-json", "truncated-json", "array", "scalar", "empty-object", "missing-op", "unknown-op", "missing-time",
    "missing-v", "unknown-field", "time-nan", "time-negative", "time-milliseconds", "time-bad-iso",
    "time-far-future", "time-jump", "weight-zero", "weight-negative", "weight-huge", "weight-string", "self-loop",
    "node-id-too-long", "node-id-object", "net-newline", "net-dotdot", "net-slash", "net-flag", "attrs-too-wide",
    "attrs-nan", "attrs-named-on-vector-network", "anchor-same-network", "anchor-missing-to-node",
    "payload-over-1mib", "not-utf8", "deep-nesting", "third-network", "forged-id")] + [
    Kind("redelivery", DROPPED), Kind("remove-unknown-edge", NO_OP), Kind("remove-unknown-anchor", NO_OP)]


def valid_events(workdir: Path, windows: int = 3) -> list[str]:
    out = workdir / "valid.jsonl"
    subprocess.run([str(ROOT / ".venv/bin/dynalign"), "events", str(ROOT / "aligner/sample"), "--windows", str(windows),
                    "-o", str(out)], check=True, capture_output=True)
    return out.read_text().splitlines()


def mix(valid: list[str], count: int, seed: int, kinds_used: list[Kind] | None = None
        ) -> tuple[list[str | bytes], list[str | None]]:
    """The valid lines with ``count`` hostile ones (of ``kinds_used``, all by default, in turn) inserted at seeded
    places; the kind of each line (None: valid).
    Hostile lines come after the valid attributes and the first valid fifth, so forgeries and redeliveries have
    earlier events to copy and a set_attr of the other form meets a network whose form is fixed: one that came
    first would fix the form itself (the first set_attr decides) and turn the valid ones into dead letters."""
    rng = random.Random(seed)
    parsed = [json.loads(line) for line in valid]
    nets = tuple(sorted({p["net"] for p in parsed}))[:2]
    lines: list[str | bytes] = list(valid)
    kinds: list[str | None] = [None] * len(valid)
    start = max(len(valid) // 5, 1 + max((i for i, p in enumerate(parsed) if p["op"] == "set_attr"), default=0))
    kinds_used = kinds_used or KINDS
    for n in range(count):
        kind = kinds_used[n % len(kinds_used)].name
        at = rng.randrange(start, len(lines) + 1)
        # the valid events before this place (hostile lines before it do not count)
        earlier_valid = parsed[: sum(1 for k in kinds[:at] if k is None)]
        now = earlier_valid[-1]["time"] if isinstance(earlier_valid[-1]["time"], (int, float)) else 0.0
        lines.insert(at, hostile_line(kind, rng, earlier_valid, n, now, nets))
        kinds.insert(at, kind)
    return lines, kinds


def run_service(source: str, state: Path, timeout_s: float, stdin_path: Path | None = None,
                extra: tuple[str, ...] = ()) -> dict:
    """`dynalign run --source SOURCE` in a child process (``stdin_path`` as its stdin for ``-``): exit status,
    whether it hung, peak RSS, stderr."""
    cmd = [str(ROOT / ".venv/bin/dynalign"), "run", "--source", source, "--state", str(state), "--json", *extra]
    env = {**os.environ, **SMALL}
    stdin = open(stdin_path, "rb") if stdin_path is not None else subprocess.DEVNULL
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    hung = threading.Event()

    def kill() -> None:
        hung.set()
        os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    if stdin_path is not None:
        stdin.close()
    summary = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    return {"exit": os.waitstatus_to_exitcode(status), "hung": hung.is_set(), "seconds": time.monotonic() - started,
            "peak_rss_mb": usage.ru_maxrss / 1024, "traceback": b"Traceback" in err, "summary": summary,
            "stderr_tail": err.decode(errors="replace")[-500:]}


class KafkaPath:
    """The Kafka path: a tansu broker, one topic of several partitions per run, filled by `dynalign feed` (keyed
    by network, as users feed it) before `dynalign run` reads it with ``--until-idle``."""

    PARTITIONS = 3

    def __init__(self):
        from tests.brokers import start_tansu

        self.broker = start_tansu()
        self.feeds: dict[str, dict] = {}

    def source(self, path: Path, name: str) -> str:
        from tests.brokers import create_topic

        create_topic(self.broker.bootstrap, name, self.PARTITIONS)
        fed = subprocess.run([str(ROOT / ".venv/bin/dynalign"), "feed", str(path), "--to",
                              f"kafka://{self.broker.bootstrap}/{name}"], capture_output=True, text=True)
        self.feeds[name] = {"exit": fed.returncode, "stderr_tail": fed.stderr[-500:]}
        return f"kafka://{self.broker.bootstrap}/{name}?group={name}"

    def close(self) -> None:
        self.broker.stop()


def final_graph(state: Path):
    checkpoint = SnapshotStore(state).read_checkpoint()
    return SnapshotCutter.from_state(checkpoint["cutter"]).graph.snapshot(0, 0.0, 0.0, 0)


def same_graph(a, b) -> bool:
    if sorted(a.networks) != sorted(b.networks):
        return False
    for net in a.networks:
        x, y = a.networks[net], b.networks[net]
        if x.node_ids != y.node_ids or not np.array_equal(x.edge_index, y.edge_index) \
                or not np.array_equal(x.edge_weight, y.edge_weight) or not np.array_equal(x.alive, y.alive):
            return False
        if (x.attrs is None) != (y.attrs is None) or (x.attrs is not None and not np.array_equal(x.attrs, y.attrs)):
            return False
    return list(a.anchors) == list(b.anchors) and all(np.array_equal(a.anchors[k], b.anchors[k]) for k in a.anchors)


def dead_letters_by_kind(state: Path, lines: list, kinds: list) -> Counter:
    """Dead letters attributed to the kind of line they came from: by line number (parse rejections) or by the
    event id (rejections by the graph or the cutter, which name the event)."""
    by_id: dict = {}
    by_payload: dict = {}
    for line, kind in zip(lines, kinds):
        text = line.decode("utf-8", "surrogateescape") if isinstance(line, bytes) else line
        by_payload.setdefault(text, set()).add(kind)
        if kind is not None and isinstance(line, str):
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):  # the deep-nesting kind is beyond the json module's recursion
                continue
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                by_id.setdefault((obj.get("net"), obj["id"]), []).append(kind)
    got: Counter = Counter()
    for raw in (state / "deadletter.jsonl").read_text().splitlines():
        entry = json.loads(raw)
        origin = entry["origin"]
        kind = None
        if ":" in origin and origin.rsplit(":", 1)[1].isdigit() and not origin.startswith("event "):
            kind = kinds[int(origin.rsplit(":", 1)[1]) - 1]
        elif "payload_b64" in entry or len(by_payload.get(entry.get("payload"), ())) == 1:
            payload = (base64.b64decode(entry["payload_b64"]).decode("utf-8", "surrogateescape")
                       if "payload_b64" in entry else entry["payload"])
            kind = next(iter(by_payload.get(payload, {"unattributed"})))
        elif "payload" in entry:
            obj = json.loads(entry["payload"])
            candidates = by_id.get((obj.get("net"), obj.get("id")), [])
            kind = candidates[0] if len(candidates) == 1 else ("forged-id" if candidates else None)
            if kind is None and obj.get("id") is not None:
                kind = "forged-id?"  # a valid event refused because a forged one took its id first
        got[kind or "valid event (!)"] += 1
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hostile", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--via", default="file,stdin")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dynalign-hostile-"))
    valid = valid_events(workdir)
    lines, kinds = mix(valid, args.hostile, args.seed)
    hostile_file = workdir / "hostile.jsonl"
    with open(hostile_file, "wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")) + b"\n")
    clean_file = workdir / "clean.jsonl"
    clean_file.write_text("\n".join(valid) + "\n")
    sent = Counter(k for k in kinds if k is not None)
    expected_dead = sum(n for k, n in sent.items() if next(x for x in KINDS if x.name == k).expected == DEAD)
    report = {"valid_events": len(valid), "hostile_events": args.hostile, "kinds": len(sent), "runs": {}}
    print(f"{len(valid)} valid events, {args.hostile} hostile lines of {len(sent)} kinds "
          f"({expected_dead} should be dead letters)", file=sys.stderr)

    vias = args.via.split(",")
    for via in vias:
        if via not in ("file", "stdin", "kafka"):
            parser.error(f"--via: file, stdin or kafka, got {via!r}")
    kafka = KafkaPath() if "kafka" in vias else None
    try:
        for via in vias:
            report["runs"][via] = measure(via, workdir, clean_file, hostile_file, lines, kinds, sent, expected_dead,
                                          args.timeout, kafka)
    finally:
        if kafka is not None:
            kafka.close()
    print(json.dumps(report, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1) + "\n")


def measure(via: str, workdir: Path, clean_file: Path, hostile_file: Path, lines: list, kinds: list, sent: Counter,
            expected_dead: int, timeout_s: float, kafka: KafkaPath | None) -> dict:
    """One path (file, stdin or kafka): the hostile stream and the valid events alone, compared."""
    results = {}
    for name, path in (("clean", clean_file), ("hostile", hostile_file)):
        state = workdir / f"{via}-{name}"
        if via == "kafka":
            results[name] = run_service(kafka.source(path, f"{via}-{name}"), state, timeout_s,
                                        extra=("--until-idle", "5"))
        else:
            results[name] = run_service("-" if via == "stdin" else str(path), state, timeout_s,
                                        stdin_path=path if via == "stdin" else None)
    if via == "kafka":
        # feed skips a line too large for one Kafka message (and exits 1 saying so): those never reach the service
        expected_dead -= sent["payload-over-1mib"]
    hostile, clean = results["hostile"], results["clean"]
    row = {"crashes": int(hostile["exit"] != 0 or hostile["traceback"]), "hangs": int(hostile["hung"]),
           "exit": hostile["exit"], "seconds": round(hostile["seconds"], 1),
           "clean_seconds": round(clean["seconds"], 1), "peak_rss_mb": round(hostile["peak_rss_mb"]),
           "clean_peak_rss_mb": round(clean["peak_rss_mb"]),
           "dead_letters": hostile["summary"].get("dead_letters"), "expected_dead_letters": expected_dead,
           "duplicates": hostile["summary"].get("duplicates"), "expected_duplicates": sent["redelivery"]}
    if not hostile["hung"] and not clean["hung"]:
        row["same_graph_as_valid_alone"] = same_graph(final_graph(workdir / f"{via}-hostile"),
                                                      final_graph(workdir / f"{via}-clean"))
        got = dead_letters_by_kind(workdir / f"{via}-hostile", lines, kinds)
        row["dead_letters_by_kind"] = {k: {"sent": sent[k], "dead": got.get(k, 0)} for k in sorted(sent)}
        row["dead_letters_from_valid_lines"] = got.get("valid event (!)", 0)
    if hostile["exit"] != 0:
        row["stderr_tail"] = hostile["stderr_tail"]
    if via == "kafka":
        row["feed"] = kafka.feeds[f"{via}-hostile"]
    print(f"{via}: exit {row['exit']}, {row['dead_letters']} dead letters (expected {expected_dead}), "
          f"{row['duplicates']} duplicates (expected {sent['redelivery']}), same graph as the valid events "
          f"alone: {row.get('same_graph_as_valid_alone')}, peak RSS {row['peak_rss_mb']} MB vs "
          f"{row['clean_peak_rss_mb']} MB, {row['seconds']} s vs {row['clean_seconds']} s", file=sys.stderr)
    return row


if __name__ == "__main__":
    main()
