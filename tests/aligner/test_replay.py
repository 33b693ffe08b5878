"""Time travel, re-alignment, export and savepoints on a real run (real redis-server, the service in-process).

One recorded history serves every test: the first half of a stream is run, a savepoint is taken, and the run
continues in the same state dir with the whole stream (a restart, resuming from its checkpoint). Redis keeps
every version during the run so the tests know exactly what was published; then the versions are deleted
from Redis, as retention would, and must still be answerable from the history on disk.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import redis
from click.testing import CliRunner

from aligner.cli import cli
from aligner.publish.redis_alignments import AlignmentClient
from snapshots.export import load_signal
from snapshots.history import AlignmentHistory
from snapshots.store import SnapshotStore
from tests.aligner.test_service import run_cli
from tests.synthetic import write_pair_dataset

NS = "replaytest"
ENV = {"DYNALIGN_PUBLISH_NAMESPACE": NS, "DYNALIGN_PUBLISH_RETAIN_VERSIONS": "100", "DYNALIGN_STORE_BASE_EVERY": "2",
       "DYNALIGN_META_WARMUP_ITERATIONS": "20", "DYNALIGN_META_ITERATIONS_PER_SNAPSHOT": "2",
       "DYNALIGN_MODEL_HIDDEN": "16", "DYNALIGN_MODEL_EMBEDDING_DIM": "16", "DYNALIGN_MODEL_POSITION_DIM": "32"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, redis_server):
    root = tmp_path_factory.mktemp("replay")
    ds = write_pair_dataset(root / "pair", n=90, seed=11)
    events = root / "events.jsonl"
    result = CliRunner().invoke(cli, ["events", str(ds), "--windows", "4", "-o", str(events)])
    assert result.exit_code == 0, result.output
    lines = events.read_text().splitlines(keepends=True)
    half = root / "half.jsonl"
    cut_at = next(i for i, line in enumerate(lines) if json.loads(line)["time"] >= 1_699_920_000 + 2 * 3600)
    half.write_text("".join(lines[:cut_at]))  # windows 1-2
    state = root / "state"
    client = redis.Redis.from_url(redis_server.url)
    client.delete(*client.keys(f"{NS}:*") or [f"{NS}:none"])
    run_cli(["run", "--source", str(half), "--state", str(state), "--redis", redis_server.url, "--json"], ENV)
    savepoint = root / "at-half.dsp"
    run_cli(["savepoint", "--state", str(state), "-o", str(savepoint)], ENV)
    run_cli(["run", "--source", str(events), "--state", str(state), "--redis", redis_server.url, "--json"], ENV)
    # What Redis served, version by version, read while it still holds them; then they are gone.
    reader = AlignmentClient.from_url(redis_server.url, NS)
    published = {}
    for version in reader.versions("left", "right"):
        meta = reader.meta("left", "right", version)
        raw = reader.r.hgetall(f"{NS}:{{left|right}}:v:{version}:top:left")
        published[version] = (int(meta["snapshot"]), float(meta["end_time"]),
                              {node: json.loads(value) for node, value in raw.items()})
    client.delete(*client.keys(f"{NS}:{{left|right}}:v:*"))
    return {"root": root, "state": state, "events": events, "half_lines": cut_at, "savepoint": savepoint,
            "published": published, "redis": redis_server.url}


def cli_json(args: list[str]) -> dict:
    out = run_cli([*args, "--json"], ENV)
    return json.loads(out.strip().splitlines()[-1])


def test_as_of_queries_return_what_was_published_then(recorded):
    published = recorded["published"]
    assert len(published) == 4  # one version per snapshot
    for version, (snapshot, end_time, tops) in published.items():
        for node in sorted(tops)[:5]:
            for how in (["--snapshot", str(snapshot)], ["--at", f"{end_time:.0f}"]):
                got = cli_json(["query", node, "--net", "left", "--to", "right", "--state", str(recorded["state"]),
                                *how])
                assert got["version"] == version and got["snapshot"] == snapshot
                assert [[c["node"], round(c["score"], 5)] for c in got["candidates"]] == tops[node]
    # between two versions, the earlier one answers
    first_snapshot, first_end, first_tops = published[1]
    node = sorted(first_tops)[0]
    got = cli_json(["query", node, "--net", "left", "--to", "right", "--state", str(recorded["state"]),
                    "--at", f"{first_end + 1:.0f}"])
    assert got["version"] == 1


def test_realign_of_snapshots_before_a_restart_is_bit_identical(recorded):
    """Snapshots 1..k replayed with the same (fresh, seeded) model give exactly the recorded top-k, float32 for
    float32; and a re-alignment writes to its own namespace, never to the live one."""
    state, url = recorded["state"], recorded["redis"]
    live_current = redis.Redis.from_url(url).get(f"{NS}:{{left|right}}:current")
    out = cli_json(["replay", "--state", str(state), "--to", "2", "--realign", "--name", "same", "--publish", url])
    assert out["realign"]["compared"] == 2 and out["realign"]["identical"] == 2
    live, replayed = AlignmentHistory(state / "history"), AlignmentHistory(state / "replays" / "same" / "history")
    assert [e["snapshot"] for e in replayed.entries("left", "right")] == [1, 2]
    for entry in replayed.entries("left", "right"):
        ours = replayed.load(entry)
        theirs = live.load([e for e in live.entries("left", "right") if e["snapshot"] == entry["snapshot"]][-1])
        for direction, arrays in theirs.top.items():
            assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(arrays, ours.top[direction]))
    r = redis.Redis.from_url(url)
    assert r.get(f"{NS}:{{left|right}}:current") == live_current
    assert int(r.get(f"{NS}:replay:same:{{left|right}}:current")) == 2
    # another seed is another model: the comparison notices (the check can fail)
    other = run_cli(["replay", "--state", str(state), "--from", "1", "--to", "1", "--realign", "--name", "seed1",
                     "--json"], {**ENV, "DYNALIGN_SERVICE_SEED": "1"})
    report = json.loads(other.strip().splitlines()[-1])["realign"]
    assert report["compared"] == 1 and report["identical"] == 0
    rows = json.loads((state / "replays" / "seed1" / "report.json").read_text())["rows"]
    assert rows[0]["nodes"] > 0 and 0 <= rows[0]["overlap_at_k"] <= 1


def test_export_round_trips_into_dynamic_graph_temporal_signal(recorded, tmp_path):
    state = recorded["state"]
    out = cli_json(["replay", "--state", str(state), "--from", "2", "--export", str(tmp_path / "export")])
    assert out["export"]["snapshots"] == 3
    store = SnapshotStore(state)
    snapshots = [store.load_snapshot(i) for i in (2, 3, 4)]
    for net in ("left", "right"):
        other = "right" if net == "left" else "left"
        signal = load_signal(tmp_path / "export", net)
        assert signal.snapshot_count == 3
        node_ids = (tmp_path / "export" / net / "node_ids.txt").read_text().splitlines()
        assert tuple(node_ids) == snapshots[-1].networks[net].node_ids
        for snap, data in zip(snapshots, signal):
            g = snap.networks[net]
            assert np.array_equal(data.edge_index.numpy(), g.edge_index)
            assert np.array_equal(data.edge_attr.numpy(), g.edge_weight)
            assert np.array_equal(data.x.numpy()[:g.num_nodes], g.attrs)
            assert np.array_equal(data.y.numpy()[:g.num_nodes], g.alive.astype(np.float32))
            pairs = snap.anchors_between(net, other)
            partner = getattr(data, f"anchor_{other}").numpy()
            assert np.array_equal(partner[pairs[:, 0]], pairs[:, 1]) and (partner >= 0).sum() == len(pairs)
            edges = (tmp_path / "export" / net / "edges" / f"{snap.id:08d}.tsv").read_text().splitlines()
            assert len(edges) == g.num_edges
            u, v, w = edges[0].split("\t")
            assert (u, v, float(w)) == (g.node_ids[g.edge_index[0, 0]], g.node_ids[g.edge_index[1, 0]],
                                        float(g.edge_weight[0]))


def test_snapshots_list_and_show(recorded):
    state = str(recorded["state"])
    listed = cli_json(["snapshots", "list", "--state", state])
    ids = [e["id"] for e in listed["snapshots"]]
    assert ids == [1, 2, 3, 4] and [e["kind"] for e in listed["snapshots"]] == ["base", "delta", "base", "delta"]
    assert listed["bytes"]["snapshots"] > 0 and listed["bytes"]["history"] > 0
    shown = cli_json(["snapshots", "show", "3", "--state", state])
    assert shown["id"] == 3 and shown["versions"][0]["version"] == 3 and shown["log"][0] < shown["log"][1]
    text = run_cli(["snapshots", "show", "3", "--state", state], ENV)
    assert "left: 90 nodes" in text and "published left|right version 3" in text


def test_resuming_from_a_savepoint_equals_restarting_in_place(recorded, tmp_path):
    """A new state dir seeded from the savepoint continues exactly as the original did after its restart:
    same snapshots, same event-log offsets, same published top-k."""
    fresh = tmp_path / "fresh"
    ns = f"{NS}-sp"
    run_cli(["run", "--source", str(recorded["events"]), "--state", str(fresh), "--redis", recorded["redis"],
             "--from-savepoint", str(recorded["savepoint"]), "--json"], {**ENV, "DYNALIGN_PUBLISH_NAMESPACE": ns})
    original, resumed = SnapshotStore(recorded["state"]), SnapshotStore(fresh)
    assert [e["id"] for e in resumed.list_snapshots()] == [3, 4]
    for entry in resumed.list_snapshots():
        assert entry["log"] == original.snapshot_entry(entry["id"])["log"]
        got, want = resumed.load_snapshot(entry["id"]), original.load_snapshot(entry["id"])
        assert all(np.array_equal(got.networks[n].edge_index, want.networks[n].edge_index) for n in want.networks)
    assert list(resumed.read_lines(resumed.log_start_line)) == list(original.read_lines(recorded["half_lines"]))
    a, b = AlignmentHistory(recorded["state"] / "history"), AlignmentHistory(fresh / "history")
    assert [e["snapshot"] for e in b.entries("left", "right")] == [3, 4]
    for entry in b.entries("left", "right"):
        want = [e for e in a.entries("left", "right") if e["snapshot"] == entry["snapshot"]][-1]
        assert entry["model_version"] == want["model_version"]
        for direction, arrays in a.load(want).top.items():
            assert all(np.array_equal(x, y) for x, y in zip(arrays, b.load(entry).top[direction]))
    # a state dir that already has a checkpoint is not overwritten by a savepoint
    result = CliRunner().invoke(cli, ["run", "--source", str(recorded["events"]), "--state", str(fresh),
                                      "--from-savepoint", str(recorded["savepoint"])], env=ENV)
    assert result.exit_code != 0 and "already has a checkpoint" in result.output
