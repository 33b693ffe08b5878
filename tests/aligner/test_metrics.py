"""The service's Prometheus metrics and health endpoint, scraped over HTTP from a service running in this process
against a real redis-server, which the test takes away and brings back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aligner import AlignmentClient
from aligner.publish.embedded_redis import EmbeddedRedis, free_port
from aligner.service.metrics import Freshness, WeightedHistogram
from stream.events import parse_event
from tests.aligner.test_service_guarantees import (  # noqa: F401 (fixtures)
    WINDOW,
    Worker,
    config,
    dataset_lines,
    no_worker_outlives_its_test,
    one_torch_thread,
    wait_until,
)
from tests.deploy.test_deploy import worker_healthcheck

BAD_LINES = ["not json", '{"op": "warp", "net": "left", "time": 5}']


def get(url: str) -> tuple[int, str, str]:
    """Status, content type and body; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_and_health_of_a_running_service(tmp_path):
    lines = dataset_lines(tmp_path, n=60, windows=4, seed=41)
    window_of = [int(parse_event(line).time // WINDOW) for line in lines]
    windows = sorted(set(window_of))
    part = {w: [line for line, k in zip(lines, window_of) if k == w] for w in windows}
    redis_port, metrics_port = free_port(), free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=redis_port).start()
    client = AlignmentClient.from_url(server.url)
    fifo = tmp_path / "events.fifo"  # a live stream that ends only when the writer closes it
    os.mkfifo(fifo)
    state = tmp_path / "state"
    worker = Worker(config(state, server.url, DYNALIGN_SERVICE_METRICS_PORT=str(metrics_port)), str(fifo))
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        with open(fifo, "w") as stream:
            stream.write("\n".join(part[windows[0]] + BAD_LINES + part[windows[1]]) + "\n")
            stream.flush()
            wait_until(lambda: client.current_version("left", "right") == 1, what="the first version",
                       workers=[worker])

            code, kind, body = get(f"{base}/healthz")
            health = json.loads(body)
            assert (code, kind, health["status"], health["reasons"]) == (200, "application/json", "ok", [])
            assert health["redis_reachable"] is True and health["kafka_reachable"] is None  # a file: no Kafka
            assert health["last_alignment_age_s"] is not None
            # Redis shows the version a moment before the service counts the publication: wait for the count.
            deadline = time.monotonic() + 10
            while True:
                code, kind, body = get(f"{base}/metrics")
                live = samples(body)
                if live[("dynalign_publications_total", ())] >= 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert code == 200 and kind.startswith("text/plain")
            assert live[("dynalign_publications_total", ())] >= 1
            assert live[("dynalign_dead_letters_total", ())] == len(BAD_LINES)
            assert live[("dynalign_published_version", (("pair", "left|right"),))] == 1
            assert get(f"{base}/other")[0] == 404
            healthcheck = [sys.executable, *worker_healthcheck(metrics_port)[1:]]  # deploy/docker-compose.yml's
            assert subprocess.run(healthcheck, capture_output=True, timeout=30).returncode == 0

            server.stop()  # Redis away: the worker is degraded, and says why
            code, _, body = get(f"{base}/healthz")
            health = json.loads(body)
            assert code == 503 and health["status"] == "degraded" and health["redis_reachable"] is False
            assert any(r.startswith("Redis unreachable") for r in health["reasons"]), health
            assert subprocess.run(healthcheck, capture_output=True, timeout=30).returncode == 1  # unhealthy
            server = EmbeddedRedis(tmp_path / "redis", port=redis_port).start()
            assert get(f"{base}/healthz")[0] == 200

            stream.write("\n".join(part[windows[2]] + part[windows[3]]) + "\n")
        summary = worker.join(120)
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):  # the endpoint goes with the service
        get(f"{base}/healthz")

    final = samples(generate_latest(worker.service.metrics.registry).decode())
    for name, value in (("records", summary.records), ("events_accepted", summary.accepted),
                        ("events_restored", summary.restored), ("dead_letters", summary.dead_letters),
                        ("snapshots", summary.snapshots), ("publications", summary.published)):
        assert final[(f"dynalign_{name}_total", ())] == value, name
    assert summary.dead_letters == len(BAD_LINES) and summary.snapshots == 4
    assert final[("dynalign_busy_seconds_total", (("stage", "align"),))] == pytest.approx(summary.align_s)
    assert final[("dynalign_published_version", (("pair", "left|right"),))] == summary.versions["left|right"]
    # A replayed file aligns each snapshot on its own: one alignment step per snapshot, whatever path it took.
    steps = {labels: v for (name, labels), v in final.items() if name == "dynalign_step_seconds_count"}
    aligned = sum(v for labels, v in steps.items() if dict(labels)["step"] != "meta_update")
    assert aligned == summary.snapshots
    assert final[("dynalign_snapshot_save_seconds_count", ())] == summary.snapshots
    assert final[("dynalign_publish_seconds_count", ())] == summary.published
    # The last version covers every event, each observed once, and none became visible before it arrived.
    assert final[("dynalign_event_freshness_seconds_count", ())] == summary.accepted
    assert final[("dynalign_event_freshness_seconds_sum", ())] > 0
    pair = (("pair", "left|right"),)
    assert final[("dynalign_prequential_anchors", pair)] > 0  # stream protocol: anchors revealed window by window
    assert 0 <= final[("dynalign_prequential_hits_at_1", pair)] <= 1
    recorded = json.loads((state / "metrics.json").read_text())["quality"]["left|right"]
    assert recorded["anchors"] == final[("dynalign_prequential_anchors", pair)]
    assert recorded["mrr"] == final[("dynalign_prequential_mrr", pair)]


def test_freshness_observes_each_event_once_from_its_arrival():
    """Batches arrive at t = 0, 1, 2 (3, 2 and 4 events); snapshots cut after 4 and 9 events are published at
    t = 5 and t = 10."""
    from snapshots.snapshot import Snapshot

    histogram = WeightedHistogram("h", "test", (1.0, 5.0, 9.0, 100.0))
    freshness = Freshness(histogram)
    for before, after, at in ((0, 3, 0.0), (3, 5, 1.0), (5, 9, 2.0)):
        freshness.arrived(after, before, at)
    freshness.cut(Snapshot(1, 0.0, 1.0, {}, {}, events=4, arrived=4))
    freshness.cut(Snapshot(2, 1.0, 2.0, {}, {}, events=5, arrived=9))
    assert freshness.published(1, 5.0) == 4  # 3 events waited 5 s, one of the second batch 4 s
    assert freshness.published(1, 6.0) == 0  # published again (a replay, a refresh): nothing new
    assert freshness.published(2, 10.0) == 5  # one more of the second batch (9 s), the third batch (8 s)
    assert histogram.counts.tolist() == [0, 4, 5, 0, 0] and histogram.total == 3 * 5 + 4 + 9 + 4 * 8
