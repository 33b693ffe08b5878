"""A user's mistakes: each ends in one line on stderr and a non-zero exit (a traceback only with ``--debug``), and
the ones that used to exit 0 with nothing done now warn or fail. Against real Redis, real files and real
(absent) brokers; a few run under a pseudo-terminal, as a person types them."""

from __future__ import annotations

import gzip
import json
import shutil
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from aligner.cli import cli
from aligner.publish.embedded_redis import EmbeddedRedis
from aligner.service.savepoint import read_savepoint
from stream.file_source import FileSource
from tests.aligner.test_service import FAST
from tests.brokers import free_port
from tests.synthetic import write_pair_dataset
from tests.terminal import dynalign, in_terminal

ERROR_PREFIX = "dynalign: error: "
RUN_ENV = {**FAST, "DYNALIGN_SERVICE_THREADS": "1"}
PREFIX = {"tw": "t", "fb": "f"}  # node ids of the two networks differ, as they do between real platforms


def invoke(args: list[str], env: dict | None = None) -> Result:
    """The CLI in this process with one torch thread (see tests/aligner/test_service.py run_cli)."""
    import torch

    threads = torch.get_num_threads()
    try:
        return CliRunner().invoke(cli, args, env={**RUN_ENV, **(env or {})})
    finally:
        torch.set_num_threads(threads)


def error_line(result: Result | str, *, code: int | None = None) -> str:
    """The one error line of a failed command (its last line on stderr), after checking that it is the only one
    and that no traceback was printed."""
    text = result if isinstance(result, str) else result.stderr
    if not isinstance(result, str):
        assert result.exit_code != 0 and (code is None or result.exit_code == code), (result.exit_code, text)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and lines[-1] == errors[0], text
    return errors[0][len(ERROR_PREFIX):]


def prefixed_events(dataset: Path, out: Path, windows: int = 2) -> Path:
    """The dataset's event stream with networks ``tw``/``fb`` and per-network node ids (``t17``, ``f17``)."""
    raw = out.with_suffix(".raw")
    result = CliRunner().invoke(cli, ["events", str(dataset), "--windows", str(windows), "-o", str(raw)])
    assert result.exit_code == 0, result.output
    lines = []
    for line in raw.read_text().splitlines():
        event = json.loads(line)
        event["net"] = {"left": "tw", "right": "fb"}[event["net"]]
        for key in ("u", "v", "node"):
            if key in event:
                event[key] = PREFIX[event["net"]] + event[key]
        if "to" in event:
            event["to"] = {"left": "tw", "right": "fb"}[event["to"]]
            event["to_node"] = PREFIX[event["to"]] + event["to_node"]
        lines.append(json.dumps(event))
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    """A Redis of this module's own: other tests flush the session's server between tests."""
    with EmbeddedRedis(tmp_path_factory.mktemp("errors-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, own_redis):
    """One real run, started with explicit flags and an external Redis, that later tests resume or inspect."""
    root = tmp_path_factory.mktemp("errors")
    dataset = write_pair_dataset(root / "pair", n=60, seed=3)
    events = prefixed_events(dataset, root / "events.jsonl")
    test_pairs = root / "test.tsv"
    test_pairs.write_text("".join(f"t{a}\tf{b}\n" for a, b in
                                  (line.split() for line in (dataset / "test.tsv").read_text().splitlines())))
    state = root / "state"
    result = invoke(["run", "--source", str(events), "--state", str(state), "--redis", own_redis.url,
                     "--window", "1800", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["published"] >= 1
    return {"root": root, "events": events, "state": state, "test": test_pairs, "summary": summary}


def read_run_settings(state: Path) -> dict:
    return json.loads((state / "run.json").read_text())


def copy_state(first_run: dict, to: Path) -> Path:
    shutil.copytree(first_run["state"], to)
    return to


# -- mistakes that printed a traceback -------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["run", "--source", "x.jsonl"], ["query", "1", "--net", "a", "--to", "b"]])
def test_redis_url_without_scheme(command, tmp_path):
    message = error_line(invoke([*command, "--state", str(tmp_path / "s"), "--redis", "localhost:6379"]), code=2)
    assert "'localhost:6379' is not a Redis URL" in message and "redis://localhost:6379" in message
    assert not (tmp_path / "s").exists()


def test_unreachable_redis(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    message = error_line(invoke(["query", "1", "--net", "a", "--to", "b", "--redis", url]), code=1)
    assert message.startswith("cannot reach Redis") and "--redis URL" in message


def test_unreachable_kafka_in_a_terminal(tmp_path):
    url = f"kafka://127.0.0.1:{free_port()}/events"
    run = in_terminal(dynalign("run", "--source", url, "--state", str(tmp_path / "s")), timeout_s=120,
                      env={**RUN_ENV, "DYNALIGN_STREAM_KAFKA_CONNECT_TIMEOUT_S": "0.5"})
    assert run.returncode == 1, run.text
    message = error_line(run.text)
    assert "no Kafka broker of 127.0.0.1" in message and "start the broker" in message


@pytest.mark.parametrize("url, says", [("kafka://localhost/events", "is not host:port"),
                                        ("kafka://localhost:9092", "names no topic")])
def test_kafka_url_without_port_or_topic(url, says, tmp_path):
    message = error_line(invoke(["run", "--source", url, "--state", str(tmp_path / "s")]), code=1)
    assert says in message and "kafka://host:port" in message
    assert not (tmp_path / "s").exists()  # refused before anything was started or written


def test_missing_source_file_in_a_terminal(tmp_path):
    run = in_terminal(dynalign("run", "--source", str(tmp_path / "nope.jsonl"), "--state", str(tmp_path / "s")),
                      env=RUN_ENV, timeout_s=60)
    assert run.returncode == 1, run.text
    assert "nope.jsonl does not exist" in error_line(run.text)
    assert not (tmp_path / "s").exists()


def test_malformed_pairs(tmp_path):
    message = error_line(invoke(["run", "--source", "x.jsonl", "--state", str(tmp_path), "--pairs", "twfb"]), code=2)
    assert "got 'twfb'" in message and "--pairs twitter:facebook" in message


def test_dataset_in_the_wrong_format_or_without_train_split(tmp_path):
    dataset = write_pair_dataset(tmp_path / "ds", n=30, seed=1)
    (dataset / "train.tsv").unlink()
    assert "--train-ratio" in error_line(invoke(["events", str(dataset)]))
    (dataset / "source.edges.tsv").write_text("0,1\n1,2\n")
    message = error_line(invoke(["events", str(dataset), "--train-ratio", "0.3"]))
    assert "source.edges.tsv" in message and "whitespace-separated" in message
    (dataset / "source.edges.tsv").unlink()
    assert "required file source.edges.tsv is missing" in error_line(invoke(["events", str(dataset)]))


def test_evaluate_missing_state_dir(tmp_path):
    pairs = tmp_path / "test.tsv"
    pairs.write_text("1\t2\n")
    message = error_line(invoke(["evaluate", "--state", str(tmp_path / "none"), "--anchors", str(pairs),
                                 "--net", "a", "--to", "b"]))
    assert "is not the state dir of a dynalign run" in message
    assert not (tmp_path / "none").exists()


def test_evaluate_wrong_network_and_swapped_networks(first_run):
    args = ["evaluate", "--state", str(first_run["state"]), "--anchors", str(first_run["test"])]
    assert "no alignment of 'tw' with 'ig'" in error_line(invoke([*args, "--net", "tw", "--to", "ig"]))
    message = error_line(invoke([*args, "--net", "fb", "--to", "tw"]))
    assert "look swapped" in message and "--net tw --to fb" in message
    result = invoke([*args, "--net", "tw", "--to", "fb", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["unknown"] == 0 and 0.0 <= metrics["hits@1"] <= 1.0


def test_bad_log_level_in_a_terminal():
    run = in_terminal(dynalign("--log-level", "verbose", "config", "show"), timeout_s=60)
    assert run.returncode == 2, run.text
    assert "service.log_level" in (message := error_line(run.text)) and "DEBUG, INFO, WARNING" in message


def test_debug_shows_the_traceback_in_a_terminal():
    run = in_terminal(dynalign("--debug", "--log-level", "verbose", "config", "show"), timeout_s=60)
    assert run.returncode != 0 and "Traceback (most recent call last)" in run.text
    assert "ConfigError: service.log_level" in run.text and ERROR_PREFIX not in run.text


# -- mistakes that exited 0 ------------------------------------------------------------------------------------


def test_pairs_naming_a_network_never_seen_warn(first_run, tmp_path):
    result = invoke(["run", "--source", str(first_run["events"]), "--state", str(tmp_path / "s"),
                     "--redis", f"redis://127.0.0.1:{free_port()}/0", "--pairs", "tw:fbx", "--json"])
    assert result.exit_code == 0, result.output  # nothing was aligned, so nothing failed to publish
    assert "names network(s) fbx that no event mentioned (networks seen: fb, tw)" in result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["published"] == 0


def test_unreachable_redis_fails_the_run(first_run, tmp_path):
    state = copy_state(first_run, tmp_path / "s")
    more = tmp_path / "more.jsonl"
    more.write_text('{"op": "add_edge", "net": "tw", "u": "t1", "v": "t2", "time": 1699999000}\n')
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = invoke(["run", "--source", str(more), "--state", str(state), "--redis", url, "--json"])
    message = error_line(result, code=1)
    assert "not published" in message and "unreachable" in message and f"--state {state}" in message
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["published"] == 0 and summary["redis_error"]


def test_new_file_into_an_existing_state_dir_is_read_from_its_start(first_run, tmp_path):
    state = copy_state(first_run, tmp_path / "s")
    result = invoke(["run", "--source", str(first_run["events"]), "--state", str(state), "--json"])
    assert result.exit_code == 0, result.output  # the same file again: nothing new, and it says so
    assert json.loads(result.stdout.splitlines()[-1])["records"] == 0
    assert "no new records" in result.stderr and "pass a new --state DIR" in result.stderr
    more = tmp_path / "more.jsonl"
    more.write_text('{"op": "add_edge", "net": "fb", "u": "f1", "v": "f9", "time": 1699999000}\n'
                    '{"op": "add_edge", "net": "fb", "u": "f2", "v": "f8", "time": 1699999001}\n')
    result = invoke(["run", "--source", str(more), "--state", str(state), "--json"])
    assert result.exit_code == 0, result.output
    assert "reading it from its first line" in result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["records"] == 2


def test_gzip_source_is_read_decompressed(tmp_path):
    lines = [json.dumps({"op": "add_edge", "net": "a", "u": str(i), "v": str(i + 1), "time": i}) for i in range(50)]
    plain, packed = tmp_path / "e.jsonl", tmp_path / "e.jsonl.gz"
    plain.write_text("\n".join(lines) + "\n")
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    source = FileSource(packed)
    records = source.poll(20, 0.0)
    assert [r.value for r in records] == [line.encode() for line in lines[:20]]
    source.close()
    resumed = FileSource(packed, position=records[-1].position)  # a resume seeks in the decompressed stream
    assert [r.value for r in resumed.poll(100, 0.0)] == [line.encode() for line in lines[20:]]
    resumed.close()


def test_misspelt_environment_variable_warns():
    result = CliRunner().invoke(cli, ["config", "show"], env={"DYNALIGN_SNAPSHOT_WINDOW_SECONDS": "60"})
    assert result.exit_code == 0, result.output
    assert ("unknown environment variable DYNALIGN_SNAPSHOT_WINDOW_SECONDS ignored; did you mean "
            "DYNALIGN_SNAPSHOTS_WINDOW_SECONDS?") in result.stderr


# -- restarts need none of the first run's flags ---------------------------------------------------------------


def test_restart_takes_the_recorded_settings_and_query_finds_their_redis(first_run, own_redis, tmp_path):
    recorded = read_run_settings(first_run["state"])["settings"]
    assert recorded["snapshots.window_seconds"] == 1800 and recorded["publish.redis_url"] == own_redis.url
    # query --state: the run's external Redis, from the record (no --redis, and no embedded server there)
    result = invoke(["query", "t1", "--net", "tw", "--to", "fb", "--state", str(first_run["state"]), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["version"] >= first_run["summary"]["versions"]["fb|tw"] and answer["candidates"]
    state = copy_state(first_run, tmp_path / "s")
    result = invoke(["run", "--source", str(first_run["events"]), "--state", str(state), "--json"])
    assert result.exit_code == 0, result.output
    assert "started with: --window 1800" in result.stderr
    assert read_run_settings(state)["settings"]["snapshots.window_seconds"] == 1800


def test_restart_refuses_a_real_change(first_run, tmp_path):
    state = copy_state(first_run, tmp_path / "s")
    before = sorted(p.name for p in state.iterdir())
    message = error_line(invoke(["run", "--source", str(first_run["events"]), "--state", str(state),
                                 "--window", "60"]))
    assert f"state dir {state} was started with --window 1800" in message
    assert f"dynalign run --state NEW_DIR --source {first_run['events']} --window 60" in message
    assert sorted(p.name for p in state.iterdir()) == before
    # the same value given again is no change
    result = invoke(["run", "--source", str(first_run["events"]), "--state", str(state), "--window", "1800.0"])
    assert result.exit_code == 0, result.output


def test_savepoint_is_validated_before_it_seeds(first_run, tmp_path):
    savepoint = tmp_path / "sp.dsp"
    result = invoke(["savepoint", "--state", str(first_run["state"]), "-o", str(savepoint)])
    assert result.exit_code == 0, result.output
    assert read_savepoint(savepoint)["run"]["settings"]["snapshots.window_seconds"] == 1800
    new = tmp_path / "new"
    args = ["run", "--from-savepoint", str(savepoint), "--state", str(new), "--source", str(first_run["events"])]
    assert "was started with --window 1800" in error_line(invoke([*args, "--window", "60"]))
    assert not new.exists()
    torn = tmp_path / "torn.dsp"
    torn.write_bytes(savepoint.read_bytes()[:1000])
    args[2] = str(torn)
    assert "is not an intact dynalign savepoint" in error_line(invoke(args))
    assert not new.exists()


# -- config show -----------------------------------------------------------------------------------------------


def test_config_show_is_toml_and_says_where_values_came_from(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[adapt]\nsteps = 3\n")
    result = CliRunner().invoke(cli, ["--config", str(path), "--log-level", "debug", "config", "show"],
                                env={"DYNALIGN_SNAPSHOTS_WINDOW_SECONDS": "none",
                                     "DYNALIGN_SNAPSHOTS_EVERY_EVENTS": "100"})
    assert result.exit_code == 0, result.output
    data = tomllib.loads(result.stdout)
    assert data["adapt"]["steps"] == 3 and data["snapshots"]["every_events"] == 100
    assert data["snapshots"]["window_seconds"] == "none" and "edge_ttl_seconds" not in data["snapshots"]
    lines = result.stdout.splitlines()
    assert f"steps = 3  # file {path}" in lines
    assert "every_events = 100  # environment DYNALIGN_SNAPSHOTS_EVERY_EVENTS" in lines
    assert 'log_level = "debug"  # flag' in lines and "top_k = 10  # default" in lines
    # and what it prints reads back as the same configuration
    again = tmp_path / "again.toml"
    again.write_text(result.stdout)
    second = CliRunner().invoke(cli, ["--config", str(again), "config", "show", "--json"], env={})
    assert json.loads(second.stdout)["snapshots"] == {**json.loads(
        CliRunner().invoke(cli, ["config", "show", "--json"], env={"DYNALIGN_SNAPSHOTS_WINDOW_SECONDS": "none",
                                                                    "DYNALIGN_SNAPSHOTS_EVERY_EVENTS": "100"}
                           ).stdout)["snapshots"]}


def test_a_damaged_snapshot_is_found_rebuilt_and_a_restart_repairs_it_itself(first_run, tmp_path):
    from snapshots.store import SnapshotStore

    state = copy_state(first_run, tmp_path / "s")
    entries = SnapshotStore(state).manifest_entries()
    assert len(entries) >= 2
    first, last = entries[0], entries[-1]
    victim = state / "snapshots" / last["file"]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    result = invoke(["snapshots", "verify", "--state", str(state)])
    assert result.exit_code == 1 and f"snapshot {last['id']}: damaged" in result.stdout, result.output
    result = invoke(["snapshots", "verify", "--state", str(state), "--repair"])
    assert result.exit_code == 0 and f"snapshot {last['id']}: rebuilt byte for byte" in result.stdout, result.output
    assert invoke(["snapshots", "verify", "--state", str(state)]).exit_code == 0

    victim = state / "snapshots" / first["file"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte wrong: only the sha256 tells
    victim.write_bytes(bytes(data))
    result = invoke(["run", "--source", str(first_run["events"]), "--state", str(state), "--json"])
    assert result.exit_code == 0, result.output
    assert f"snapshot {first['id']} was damaged on disk: rebuilt from the event log (byte for byte)" in result.stderr
    assert SnapshotStore(state).load_snapshot(first["id"]).id == first["id"]


def test_evaluate_and_explain_honour_the_configuration_and_the_environment(first_run, tmp_path):
    # They once read a default configuration: --config, DYNALIGN_* and a config's state dir went unheard.
    state, test = str(first_run["state"]), str(first_run["test"])
    explicit = invoke(["evaluate", "--state", state, "--anchors", test, "--net", "tw", "--to", "fb", "--json"])
    assert explicit.exit_code == 0, explicit.output
    conf = tmp_path / "dynalign.toml"
    conf.write_text(f'[service]\nstate_dir = "{state}"\n')
    configured = invoke(["--config", str(conf), "evaluate", "--anchors", test, "--net", "tw", "--to", "fb", "--json"])
    assert configured.exit_code == 0, configured.output
    assert json.loads(configured.stdout) == json.loads(explicit.stdout)
    node = first_run["test"].read_text().split()[0]
    explained = invoke(["explain", node, "--net", "tw", "--to", "fb", "--json"],
                       env={"DYNALIGN_SERVICE_STATE_DIR": state})
    assert explained.exit_code == 0 and json.loads(explained.stdout)["node"] == node, explained.output
    conf.write_text(f'[service]\nstate_dir = "{state}"\ncoalesce = "sometimes"\n')
    for command in (["evaluate", "--anchors", test], ["explain", node]):
        assert "service.coalesce" in error_line(invoke(["--config", str(conf), *command, "--net", "tw", "--to", "fb"]))
