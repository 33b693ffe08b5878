"""The whole pipeline against a real redis-server: events file → service → Redis → `dynalign query`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from aligner.cli import cli
from aligner.publish.redis_alignments import AlignmentClient
from snapshots.store import SnapshotStore
from tests.synthetic import write_pair_dataset

FAST = {"DYNALIGN_META_WARMUP_ITERATIONS": "40", "DYNALIGN_META_ITERATIONS_PER_SNAPSHOT": "4",
        "DYNALIGN_MODEL_HIDDEN": "32", "DYNALIGN_MODEL_EMBEDDING_DIM": "32", "DYNALIGN_MODEL_POSITION_DIM": "64"}
BAD_LINES = [
    "not json at all",
    '{"op": "add_edge", "net": "left", "u": "1", "time": 5}',
    '{"op": "add_edge", "net": "left", "u": "1", "v": "2", "time": NaN}',
    '{"op": "warp", "net": "left", "time": 5}',
    '[1, 2, 3]',
]


@pytest.fixture(scope="module")
def events_file(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("svc")
    ds = write_pair_dataset(root / "pair", n=150, seed=5)
    out = root / "events.jsonl"
    result = CliRunner().invoke(cli, ["events", str(ds), "--windows", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    # Bad events mixed into the middle of the stream: they must be dead-lettered, and nothing else lost.
    mixed = lines[:100] + BAD_LINES + lines[100:]
    out.write_text("\n".join(mixed) + "\n")
    return ds, out


def run_cli(args: list[str], env: dict | None = None):
    """The CLI in this process, with one torch thread as a `dynalign run` process would have with
    DYNALIGN_SERVICE_THREADS=1 (two OpenMP threads on a busy 2-core machine can be a hundred times slower)."""
    import torch

    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(cli, args, env={**FAST, "DYNALIGN_SERVICE_THREADS": "1", **(env or {})},
                                    catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return result.output


def test_pipeline_publishes_queryable_alignments(events_file, redis_url, tmp_path):
    ds, events = events_file
    n_good = sum(1 for _ in events.open()) - len(BAD_LINES)
    out = run_cli(["run", "--source", str(events), "--state", str(tmp_path / "state"), "--redis", redis_url, "--json"])
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["accepted"] == n_good and summary["dead_letters"] == len(BAD_LINES)
    assert summary["snapshots"] == 3 and summary["published"] == 3

    dead = [json.loads(line) for line in (tmp_path / "state" / "deadletter.jsonl").read_text().splitlines()]
    assert [d["payload"] for d in dead] == BAD_LINES and all(d["reason"] for d in dead)

    # What a user sees through `dynalign query`.
    test = np.loadtxt(ds / "test.tsv", dtype=np.int64)
    reply = json.loads(run_cli(["query", str(test[0, 0]), "--net", "left", "--to", "right", "--redis", redis_url,
                                "--k", "5", "--json"]))
    assert reply["version"] == 3 and len(reply["candidates"]) == 5
    scores = [c["score"] for c in reply["candidates"]]
    assert scores == sorted(scores, reverse=True)

    # Quality through Redis: the true partner is the published top-1 far more often than chance (1/150).
    client = AlignmentClient.from_url(redis_url)
    tops = client.top_many([str(s) for s in test[:, 0]], "left", "right")
    hits1 = np.mean([bool(tops.get(str(s))) and tops[str(s)][0].node == str(t) for s, t in test])
    assert hits1 > 0.3, hits1


def test_restart_resumes_without_reapplying(events_file, redis_url, tmp_path):
    ds, events = events_file
    state = str(tmp_path / "state")
    first = json.loads(run_cli(["run", "--source", str(events), "--state", state, "--redis", redis_url, "--json"])
                       .strip().splitlines()[-1])
    again = json.loads(run_cli(["run", "--source", str(events), "--state", state, "--redis", redis_url, "--json"])
                       .strip().splitlines()[-1])
    assert first["records"] > 0 and again["records"] == 0  # resumed at the end of the file: nothing re-read
    log_lines = sum(1 for _ in SnapshotStore(Path(state)).read_events())
    assert log_lines == first["accepted"]


def test_kill_9_mid_run_loses_and_duplicates_nothing(events_file, redis_url, tmp_path):
    ds, events = events_file
    env = {**os.environ, **FAST, "DYNALIGN_STREAM_BATCH_SIZE": "50", "DYNALIGN_SERVICE_THREADS": "1"}
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "aligner.cli", "run", "--source", str(events), "--state", str(state),
           "--redis", redis_url, "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (state / "snapshots").exists() or not any((state / "snapshots").glob("*.npz")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    n_good = sum(1 for _ in events.open()) - len(BAD_LINES)
    store = SnapshotStore(state)
    assert sum(1 for _ in store.read_events()) == n_good  # the event log holds every accepted event exactly once
    # The final graph equals the one of an uninterrupted run.
    clean = tmp_path / "clean"
    run_cli(["run", "--source", str(events), "--state", str(clean), "--redis", redis_url, "--json"])
    a, b = store.load_snapshot(store.latest_id()), SnapshotStore(clean).load_snapshot(SnapshotStore(clean).latest_id())
    for net in ("left", "right"):
        assert a.networks[net].node_ids == b.networks[net].node_ids
        assert np.array_equal(a.networks[net].edge_index, b.networks[net].edge_index)
        assert np.array_equal(a.networks[net].edge_weight, b.networks[net].edge_weight)


def test_cli_help_for_every_command():
    runner = CliRunner()
    for args in ([], ["run"], ["query"], ["events"], ["evaluate"], ["demo"], ["config"], ["config", "show"]):
        result = runner.invoke(cli, [*args, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, args


def test_config_show_masks_secrets(tmp_path):
    result = CliRunner().invoke(cli, ["config", "show", "--json"],
                                env={"DYNALIGN_PUBLISH_REDIS_URL": "redis://:topsecret@h:1/0"})
    assert result.exit_code == 0 and "topsecret" not in result.output
    assert json.loads(result.output)["publish"]["redis_url"] == "redis://:***@h:1/0"


def test_bad_config_is_a_usage_error():
    result = CliRunner().invoke(cli, ["config", "show"], env={"DYNALIGN_ADAPT_STEPS": "lots"})
    assert result.exit_code == 2 and "DYNALIGN_ADAPT_STEPS" in result.output


def test_hostile_growth_and_forged_ids_are_dead_letters_with_reasons_and_lose_nothing(events_file, redis_url,
                                                                                       tmp_path):
    """Issue 16, items 4-5: no-op removals register nothing, growth past a configured bound and a reused id
    with other content are dead letters naming why, and the valid events all land as in a clean run."""
    from tests.aligner.test_service_guarantees import assert_same_networks, final_graph

    _, events = events_file
    valid = [line for line in events.read_text().splitlines() if line not in BAD_LINES]
    victim = json.loads(valid[-50])  # a valid event late in the stream, whose id a forger takes first
    now = json.loads(valid[19])["time"]
    forged = {**victim, "time": now, **({"v": "mallory"} if "v" in victim else {"node": "mallory"})}
    ghosts = [json.dumps({"op": "remove_edge", "time": now, "net": "left", "u": f"ghost{i}", "v": f"phantom{i}"})
              for i in range(300)]
    extra_networks = [json.dumps({"op": "add_edge", "time": now, "net": f"n{i}", "u": "1", "v": "2"},
                                 separators=(",", ":")) for i in range(3)]  # as a dead letter re-encodes it
    hostile = [*valid[:20], json.dumps(forged), *ghosts, *extra_networks, *valid[20:], valid[10]]
    (tmp_path / "hostile.jsonl").write_text("\n".join(hostile) + "\n")
    (tmp_path / "clean.jsonl").write_text("\n".join(valid) + "\n")

    bounded = {"DYNALIGN_SNAPSHOTS_MAX_NETWORKS": "3"}
    summary = json.loads(run_cli(["run", "--source", str(tmp_path / "hostile.jsonl"), "--state",
                                  str(tmp_path / "hostile"), "--redis", redis_url, "--json"], bounded).splitlines()[-1])
    run_cli(["run", "--source", str(tmp_path / "clean.jsonl"), "--state", str(tmp_path / "clean"), "--redis",
             redis_url, "--json"], bounded)

    assert (tmp_path / "hostile").stat().st_mode & 0o777 == 0o700  # the state dir is nobody else's (item 7)
    dead = [json.loads(line) for line in (tmp_path / "hostile" / "deadletter.jsonl").read_text().splitlines()]
    # the victim (its id was taken first) and the two networks past the bound
    assert sorted(d["payload"] for d in dead) == sorted([valid[-50], *extra_networks[1:]])
    by_payload = {d["payload"]: d["reason"] for d in dead}
    assert f"event id {victim['id']!r} was used before in network {victim['net']!r}" in by_payload[valid[-50]]
    assert all("snapshots.max_networks (3)" in by_payload[line] for line in extra_networks[1:])
    assert summary["duplicates"] == 1 and summary["dead_letters"] == 3

    # The forged event took the victim's place; apart from it and the one network within the bound, the graph
    # is the clean run's: 300 removals of unknown edges registered no node.
    hostile_graph, clean_graph = final_graph(tmp_path / "hostile"), final_graph(tmp_path / "clean")
    assert set(hostile_graph.networks) == {"left", "right", "n0"}
    other = "right" if victim["net"] == "left" else "left"
    assert_same_networks(hostile_graph, clean_graph, [other])
    forged_ids = set(hostile_graph.networks[victim["net"]].node_ids)
    assert forged_ids - set(clean_graph.networks[victim["net"]].node_ids) == {"mallory"}


def test_with_no_checkpoint_left_a_rerun_does_not_double_the_dead_letters(events_file, redis_url, tmp_path):
    """Issue 16, item 7: 513 duplicated dead letters were measured after the checkpoints were lost."""
    _, events = events_file
    state = tmp_path / "state"
    args = ["run", "--source", str(events), "--state", str(state), "--redis", redis_url, "--json"]
    run_cli(args)
    for name in ("checkpoint", "checkpoint.prev"):
        (state / name).unlink(missing_ok=True)
    summary = json.loads(run_cli(args).splitlines()[-1])
    dead = (state / "deadletter.jsonl").read_text().splitlines()
    assert len(dead) == len(BAD_LINES) and summary["dead_letters"] == len(BAD_LINES)
