"""``dynalign status`` as a person runs it, in a real terminal, on the state dir of a tiny run."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from aligner.config import mask_url
from aligner.publish.embedded_redis import free_port
from aligner.service.status import _kafka, iso
from snapshots.store import SnapshotStore
from tests.aligner.test_service_guarantees import (  # noqa: F401 (fixtures)
    Worker,
    config,
    dataset_lines,
    no_worker_outlives_its_test,
    one_torch_thread,
)
from tests.cli.test_client_install import dynalign_without_service
from tests.terminal import REPO, dynalign, in_terminal

BAD_LINES = ["not json", '{"op": "add_edge", "net": "left", "u": "1", "time": 5}']


@pytest.fixture
def tiny_run(tmp_path, redis_url) -> tuple[Path, object]:
    lines = dataset_lines(tmp_path, n=60, windows=3, seed=7)
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines[:50] + BAD_LINES + lines[50:]) + "\n")
    state = tmp_path / "state"
    return state, Worker(config(state, redis_url), str(source)).join(120)


def test_status_reports_a_run_in_a_terminal(tiny_run, redis_url):
    state, summary = tiny_run
    shown = in_terminal(dynalign("status", "--state", str(state), "--redis", redis_url), timeout_s=60)
    assert shown.returncode == 0, shown.text
    lines = {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in shown.text.splitlines() if "  " in line}
    newest = SnapshotStore(state).list_snapshots()[-1]
    assert lines["pair left|right"].startswith(f"version {summary.versions['left|right']} (redis), snapshot "
                                               f"{newest['id']}, published 20")
    assert "online Hits@1 " in lines["pair left|right"]
    assert lines["dead letters"] == str(len(BAD_LINES))
    assert f"newest {newest['id']} (" in lines["snapshots"] and iso(newest["end_time"]) in lines["snapshots"]
    assert lines["redis"] == f"{mask_url(redis_url)} reachable" and "***" in lines["redis"] and lines["kafka"] == "not a Kafka source"
    assert "Traceback" not in shown.text

    # The light client install has everything status needs.
    report = json.loads(in_terminal(dynalign_without_service("status", "--state", str(state), "--redis", redis_url,
                                                             "--json"), env={"PYTHONPATH": str(REPO)},
                                    timeout_s=60).text)
    assert report["pairs"]["left|right"]["version"] == summary.versions["left|right"]
    assert report["pairs"]["left|right"]["quality"]["anchors"] > 0
    assert report["checkpoint"]["aligned_through"] == summary.snapshots == newest["id"]
    assert report["snapshots"]["newest"]["event_time"] == [iso(newest["start_time"]), iso(newest["end_time"])]

    # Redis gone: reported, not a crash; the versions then come from the history on disk.
    away = f"redis://127.0.0.1:{free_port()}/0"
    shown = in_terminal(dynalign("status", "--state", str(state), "--redis", away), timeout_s=60)
    assert shown.returncode == 0 and f"{away} unreachable: " in shown.text and "(history)" in shown.text


def test_status_of_a_directory_that_is_no_state_dir_is_one_line(tmp_path):
    shown = in_terminal(dynalign("status", "--state", str(tmp_path / "missing")), timeout_s=60)
    assert shown.returncode == 1
    assert shown.text.strip() == f"dynalign: error: {tmp_path / 'missing'} is not the state dir of a dynalign run (no snapshots/ in it)"


def test_kafka_health_is_a_connection_to_a_broker_of_the_source():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        up = _kafka({"source": f"kafka://127.0.0.1:{port}/events", "kafka_reachable": True})
    assert up["reachable"] and up["servers"] == [f"127.0.0.1:{port}"]
    down = _kafka({"source": f"kafka://127.0.0.1:{free_port()}/events"})
    assert not down["reachable"] and "refused" in down["error"].lower()
    assert _kafka({"source": "events.jsonl"}) is None and _kafka(None) is None
