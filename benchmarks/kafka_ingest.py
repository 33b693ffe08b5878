"""One dynalign worker, Kafka in and Redis out: ingest throughput and event → Redis latency, measured.

Throughput: N edge events are put on a topic first, then one worker (the real service, in this process)
consumes them; the clock runs from the moment it owns the partition (group joined) to the last event applied
to the snapshot state: Kafka fetches and decoding, validation, the event log, the temporal graph and cutter,
checkpoints and commits (the window is longer than the stream, so no alignment runs). Four ways: one event
per message as any producer sends them, the same without CRC checks (kafka-python checks CRC32C in pure
Python unless the ``crc32c`` C extension is installed), and ``dynalign feed --batch`` messages of several
events, with and without CRC checks.

Latency: a synthetic pair of networks is replayed live at ``--rate`` events/s, each event stamped with the
wall-clock time it is produced; the worker cuts a snapshot every ``--window`` seconds, aligns it (the model
configured by ``DYNALIGN_*``, default a small one) and publishes it. An event's latency is the time from its
production until Redis announces the first version whose snapshot covers it.

Starts its own tansu broker and redis-server on free loopback ports. Run from the repository root::

    .venv/bin/python benchmarks/kafka_ingest.py                  # about three minutes
    .venv/bin/python benchmarks/kafka_ingest.py --repeat 3 --no-latency --modes batched,batched_no_crc
    .venv/bin/python benchmarks/kafka_ingest.py --events 500000 --json results.json

Measured on the 2-core development machine, 2026-11-25, 200,000 events, torch on one thread, with the
``crc32c`` C extension (a dependency now), ``.venv/bin/python benchmarks/kafka_ingest.py --repeat 3`` twice
(the second time with ``--no-latency``); another engineer's torch job kept one core busy throughout and more
at times (load average 0.8 to 2.5), so the spread is mostly theirs, and CRC checks cost nothing visible:

    events/s, Kafka -> snapshot state      first three            second three           processing alone
    one event per message                  47,700 49,800 55,600   28,000 39,700 26,900    54,000 - 107,000
    ... without CRC checks                 52,100 48,000 52,900   28,300 23,100 30,500    50,000 - 107,000
    50 events per message                  83,600 58,400 88,000   44,900 49,400 51,600    55,000 - 107,000
    ... without CRC checks                 90,100 73,800 79,100   78,500 72,000 71,900    88,000 - 110,000

    event -> Redis latency, 500 events/s for 40 s, 300 + 300 nodes, small model, window 5 s, one run:
    p50 3.3 s, p95 7.4 s, p99 9.0 s (alignments 0.7 s each).

A third set, batched modes only and in the other order: 42,600 59,200 63,700 without CRC checks, 71,200
54,400 45,300 with. So one consumer ingests 50,000 events/s and more from ``feed --batch`` messages (14 of 18
batched runs; the four below were the busiest minutes), and up to about 50,000 from one event per message.

Before the fast paths below (same machine, that morning, two runs per mode, ``crc32c`` installed): 12,800 and
19,000 events/s one event per message, 20,800 and 20,300 without CRC checks, 15,300 and 30,400 batched, 13,100
and 13,300 batched without CRC checks (without ``crc32c`` the previous table here had 10,800 to 21,200).

Per event now, on this machine under that load: ``parse_event`` 4 us (12 us by the full validation route,
which still decides every rejection), the canonical event-log line 1.4 us (6.7 us through ``json.dumps``), the
cutter and graph 4-5 us. kafka-python decodes records in pure Python, about 10 us per Kafka message: that is
why one event per message stays near 50,000 events/s and ``feed --batch`` goes well past it. The biggest
single win was not computation but CPython's cyclic garbage collector, which rescanned each polled batch's
short-lived objects and, every few batches, torch's whole heap (45% of one-event-per-message time, 20% of
batched): ``KafkaSource.poll`` now pauses it while decoding.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aligner import AlignmentClient  # noqa: E402
from aligner.config import load_config  # noqa: E402
from aligner.publish.embedded_redis import EmbeddedRedis  # noqa: E402
from aligner.service.alignment_service import AlignmentService  # noqa: E402
from stream.datasets import dataset_events, load_dataset, split_anchors  # noqa: E402
from stream.producer import kafka_producer  # noqa: E402
from tests.brokers import create_topic, start_tansu  # noqa: E402
from tests.synthetic import write_pair_dataset  # noqa: E402

SMALL_MODEL = {"DYNALIGN_MODEL_HIDDEN": "32", "DYNALIGN_MODEL_EMBEDDING_DIM": "32", "DYNALIGN_MODEL_POSITION_DIM": "64",
               "DYNALIGN_META_WARMUP_ITERATIONS": "20", "DYNALIGN_META_ITERATIONS_PER_SNAPSHOT": "2"}


# Throughput modes: the topic read (one event per message, or --batch events per message) and CRC checks.
MODES = {"single": ("single", True), "single_no_crc": ("single", False),
         "batched": ("batched", True), "batched_no_crc": ("batched", False)}


_RUNS = itertools.count()


def edge_events(count: int, nodes: int, seed: int) -> list[bytes]:
    """Edge events over two networks, ids and times increasing: what a busy social feed looks like."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        net = "left" if i % 2 else "right"
        u, v = rng.randrange(nodes), rng.randrange(nodes)
        if u == v:
            v = (v + 1) % nodes
        out.append(json.dumps({"op": "add_edge", "net": net, "u": str(u), "v": str(v), "time": 1_700_000_000 + i * 0.01,
                               "id": f"{net}:{i}"}, separators=(",", ":")).encode())
    return out


def produce(bootstrap: str, topic: str, lines: list[bytes], batch: int) -> None:
    producer = kafka_producer([bootstrap], linger_ms=20)
    for start in range(0, len(lines), batch):  # one partition: keys would not change the order
        producer.send(topic, value=b"\n".join(lines[start:start + batch]))
    producer.flush()
    producer.close()


def service_config(state: Path, redis_url: str, **env: str):
    return load_config(env={**SMALL_MODEL, **{k: v for k, v in os.environ.items() if k.startswith("DYNALIGN_")},
                            "DYNALIGN_SERVICE_STATE_DIR": str(state), "DYNALIGN_PUBLISH_REDIS_URL": redis_url,
                            "DYNALIGN_STREAM_BATCH_SIZE": "5000", "DYNALIGN_STREAM_DEAD_LETTER_TOPIC": "", **env})


def throughput(bootstrap: str, topic: str, count: int, redis_url: str, workdir: Path, check_crcs: bool) -> dict:
    """Events/s from the moment the worker owns the partition to the last event in its snapshot state."""
    name = f"{topic}-{check_crcs}-{next(_RUNS)}"  # a fresh state dir and group: every run reads the whole topic
    cfg = service_config(workdir / f"state-{name}", redis_url, DYNALIGN_SNAPSHOTS_WINDOW_SECONDS="1e9",
                         DYNALIGN_STREAM_KAFKA_CHECK_CRCS=str(check_crcs))
    service = AlignmentService(cfg, f"kafka://{bootstrap}/{topic}?group=bench-{name}")
    marks: dict[str, float] = {}

    def watch() -> None:
        while not getattr(service, "source", None) or not service.source.live_partitions():
            time.sleep(0.0005)
        marks["first"] = time.perf_counter()
        while service.summary.records < count:
            time.sleep(0.0005)
        marks["last"] = time.perf_counter()
        service.request_stop()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    summary = service.run()
    watcher.join()
    seconds = marks["last"] - marks["first"]
    return {"events": summary.records, "seconds": round(seconds, 2), "events_per_s": round(summary.records / seconds),
            "processing_events_per_s": round(summary.ingest_events_per_s)}


def latency(bootstrap: str, redis_url: str, workdir: Path, rate: float, window: float, nodes: int,
            seconds: float) -> dict:
    """Per-event latency from production to the Redis announcement of the first version covering it."""
    ds = load_dataset(write_pair_dataset(workdir / "pair", n=nodes, seed=1))
    train, _ = split_anchors(ds, None, 0)
    dataset = [e.to_dict() for e in dataset_events(ds, protocol="stream", windows=1, train=train)]
    # Replayed in a loop for `seconds`; later passes are new events (fresh ids), as `dynalign feed --loop` does.
    count = int(rate * seconds)
    events = [{**e, "id": f"{e['id']}~{i // len(dataset)}"} for i, e in
              ((i, dataset[i % len(dataset)]) for i in range(count))]
    topic = "latency"
    create_topic(bootstrap, topic)
    cfg = service_config(workdir / "state-latency", redis_url, DYNALIGN_SNAPSHOTS_WINDOW_SECONDS=str(window))
    service = AlignmentService(cfg, f"kafka://{bootstrap}/{topic}?group=latency")
    worker = threading.Thread(target=service.run, daemon=True)
    worker.start()
    while not getattr(service, "source", None) or not service.source.live_partitions():  # joined the group
        time.sleep(0.05)
    producer = kafka_producer([bootstrap], linger_ms=1)
    produced = np.zeros(len(events))
    started = time.time()
    for i, e in enumerate(events):
        ahead = started + i / rate - time.time()
        if ahead > 0:
            time.sleep(ahead)
        produced[i] = e["time"] = time.time()
        producer.send(topic, key=e["net"].encode(), value=json.dumps(e).encode())
    producer.flush()
    # The last window closes only when a later event comes: one more, past it.
    closing = {**events[-1], "time": time.time() + window, "id": "closing"}
    producer.send(topic, key=closing["net"].encode(), value=json.dumps(closing).encode())
    producer.flush()
    producer.close()
    client = AlignmentClient.from_url(redis_url)
    deadline = time.time() + 120
    while time.time() < deadline:
        announced = client.announcements("left", "right")
        if announced and announced[-1].end_time >= produced[-1]:
            break
        time.sleep(0.1)
    service.request_stop()
    worker.join()
    announced = client.announcements("left", "right")
    ends = np.array([a.end_time for a in announced])
    at = np.array([int(a.stream_id.split("-")[0]) / 1000 for a in announced])  # when Redis got the entry
    first = np.searchsorted(ends, produced, side="right")  # an event at t belongs to the window ending after t
    covered = first < len(ends)
    waits = at[first[covered]] - produced[covered]
    p50, p95, p99 = (round(float(x), 2) for x in np.percentile(waits, [50, 95, 99]))
    return {"events": len(events), "rate": rate, "window_s": window, "versions": len(announced),
            "covered": int(covered.sum()), "p50_s": p50, "p95_s": p95, "p99_s": p99,
            "max_s": round(float(waits.max()), 2),
            "align_s_per_snapshot": round(service.summary.align_s / max(1, service.summary.snapshots), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events for the throughput runs")
    parser.add_argument("--batch", type=int, default=50, help="events per message in the batched run")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s of the live replay")
    parser.add_argument("--window", type=float, default=5.0, help="snapshot window (s) of the live replay")
    parser.add_argument("--nodes", type=int, default=300, help="nodes per network of the live replay")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of the live replay")
    parser.add_argument("--repeat", type=int, default=1, help="throughput runs per mode (each a fresh consumer group)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"throughput modes to run, of {', '.join(MODES)}")
    parser.add_argument("--no-latency", action="store_true", help="measure throughput only")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)  # the two cores are for the consumer, the aligner thread and the broker
    results: dict = {"machine": f"{os.cpu_count()} cores", "crc32c_c_extension": _has_crc32c()}
    with tempfile.TemporaryDirectory() as tmp, start_tansu() as broker, EmbeddedRedis(Path(tmp) / "redis") as redis:
        workdir = Path(tmp)
        lines = edge_events(args.events, nodes=20_000, seed=0)
        modes = args.modes.split(",")
        for topic in sorted({MODES[mode][0] for mode in modes}):
            create_topic(broker.bootstrap, topic)
            produce(broker.bootstrap, topic, lines, batch=1 if topic == "single" else args.batch)
        for mode in modes:
            topic, check_crcs = MODES[mode]
            name = mode.replace("batched", f"{args.batch}_events_per_message").replace("single",
                                                                                        "one_event_per_message")
            results[name] = [throughput(broker.bootstrap, topic, args.events, redis.url, workdir, check_crcs)
                             for _ in range(args.repeat)]
            print(name.replace("_", " ") + ":", results[name], flush=True)
        if not args.no_latency:
            results["latency"] = latency(broker.bootstrap, redis.url, workdir, args.rate, args.window, args.nodes,
                                         args.seconds)
            print("event -> Redis latency:", results["latency"], flush=True)
    _write(results, args.json)


def _write(results: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=1))


def _has_crc32c() -> bool:
    try:
        import crc32c  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
