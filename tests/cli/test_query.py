"""`dynalign query` as users meet it: several nodes at once, what a wrong network, a retired version or a bad
`--k` says, ISO-8601 times, Redis and the on-disk history; against a real redis-server with versions published by
RedisPublisher directly (no aligner run), and once in a real terminal. Also `dynalign --version`."""

from __future__ import annotations

import json
from importlib.metadata import version as installed_version
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner

from aligner.cli import cli
from aligner.publish.embedded_redis import free_port
from aligner.publish.redis_alignments import RedisPublisher
from snapshots.history import AlignmentHistory
from tests.aligner.test_redis_alignments import big_update, make_update
from tests.terminal import dynalign, in_terminal

RETAIN = 2


@pytest.fixture
def published(redis_url) -> str:
    """netA|netB at versions 1-4 (snapshots 1-4, event times 1000-4000 s), the last two retained; and x|y."""
    pub = RedisPublisher(redis.Redis.from_url(redis_url), retain=RETAIN)
    for snapshot in (1, 2, 3, 4):
        pub.publish(make_update(snapshot, shift=snapshot))
    pub.publish(big_update(1, 5, np.random.default_rng(0)))
    return redis_url


def query(*args: str):
    """`dynalign query ARGS` in this process: exit code, stdout and stderr apart."""
    return CliRunner().invoke(cli, ["query", *args])


def stored(url: str, node: str, version: int = 4) -> list[list]:
    """A node's candidates as Redis holds them, read with a plain command (what the CLI must show)."""
    raw = redis.Redis.from_url(url).hget(f"dynalign:{{netA|netB}}:v:{version}:top:netA", node)
    return json.loads(raw) if raw else []


def one_line_error(result) -> str:
    assert result.exit_code != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_several_nodes_in_text(published):
    result = query("a0", "a2", "nobody", "--net", "netA", "--to", "netB", "--redis", published)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # The version's header once, with the event time as ISO-8601 UTC (snapshot 4 ends at 4000 s).
    assert lines[0].startswith("version 4 of netA -> netB: snapshot 4, event time 1970-01-01T01:06:40Z, published 2")
    assert lines[0].endswith("Z")
    blocks = result.stdout.split("netA:")[1:]
    for node, block in zip(("a0", "a2"), blocks):
        header, *ranks = block.strip().splitlines()
        assert header == f"{node} -> netB"
        assert [(r.split()[1], float(r.split()[2])) for r in ranks] == [(c, s) for c, s in stored(published, node)]
    assert lines[-1] == "netA:nobody -> netB: no candidates"  # reported for that node; the others still answer


def test_several_nodes_in_json_one_object_per_line(published):
    result = query("a0", "nobody", "a1", "--net", "netA", "--to", "netB", "--k", "1", "--json", "--redis", published)
    assert result.exit_code == 0, result.output
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["node"] for r in replies] == ["a0", "nobody", "a1"]
    for r in replies:
        assert (r["net"], r["to"], r["version"], r["snapshot"], r["end_time"]) == ("netA", "netB", 4, 4, 4000.0)
        assert [[c["node"], c["score"]] for c in r["candidates"]] == stored(published, r["node"])[:1]
    assert replies[1]["candidates"] == []


def test_no_node_with_candidates_is_an_error(published):
    line = one_line_error(query("nobody", "none", "--net", "netA", "--to", "netB", "--redis", published))
    assert line == ("dynalign: error: none of the nodes 'nobody', 'none' of netA has candidates in netB (version 4, snapshot 4): "
                    "not alive then, or not a node of netA")
    result = query("nobody", "--net", "netA", "--to", "netB", "--json", "--redis", published)
    assert result.exit_code == 1 and json.loads(result.stdout)["candidates"] == []
    assert result.stderr.startswith("dynalign: error: node 'nobody' of netA has no candidates in netB")


def test_a_wrong_network_lists_the_aligned_pairs(published, redis_url):
    line = one_line_error(query("a0", "--net", "netA", "--to", "fbx", "--redis", published))
    assert line == "dynalign: error: no alignments of netA -> fbx; aligned pairs: netA -> netB, netB -> netA, x -> y, y -> x"
    line = one_line_error(query("a0", "--net", "netA", "--to", "netA", "--redis", published))
    assert line.startswith("dynalign: error: no alignments of netA -> netA; aligned pairs: netA -> netB")
    redis.Redis.from_url(redis_url).flushall()
    line = one_line_error(query("a0", "--net", "netA", "--to", "netB", "--redis", redis_url))
    assert line == "dynalign: error: no alignments of netA -> netB; nothing is published in namespace 'dynalign' yet"


def test_a_retired_version_says_which_are_retained(published):
    line = one_line_error(query("a0", "--net", "netA", "--to", "netB", "--version", "1", "--redis", published))
    assert line == ("dynalign: error: version 1 of netA -> netB was retired; Redis retains versions 3, 4 (current 4); "
                    "--at TIME or --snapshot ID with --state DIR read older ones from the history on disk")
    line = one_line_error(query("a0", "--net", "netA", "--to", "netB", "--version", "9", "--redis", published))
    assert line == "dynalign: error: version 9 of netA -> netB does not exist yet; the current version is 4"
    result = query("a0", "--net", "netA", "--to", "netB", "--version", "3", "--json", "--redis", published)
    assert result.exit_code == 0, result.output
    reply = json.loads(result.stdout)
    assert reply["version"] == 3 and [[c["node"], c["score"]] for c in reply["candidates"]] == stored(published, "a0", 3)


@pytest.mark.parametrize("option", [["--k", "0"], ["--k", "-2"], ["--version", "0"]])
def test_non_positive_k_or_version_is_a_usage_error(published, option):
    result = query("a0", "--net", "netA", "--to", "netB", *option, "--redis", published)
    assert result.exit_code == 2 and f"Invalid value for '{option[0]}'" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1  # one line


def test_redis_unreachable_is_one_line_with_the_password_masked():
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    line = one_line_error(query("a0", "--net", "netA", "--to", "netB", "--redis", url))
    assert line.startswith("dynalign: error: cannot reach Redis at redis://:***@127.0.0.1:")
    assert "s3cret" not in line
    line = one_line_error(query("a0", "--net", "netA", "--to", "netB", "--redis", "http://127.0.0.1:1"))
    assert "'http://127.0.0.1:1' is not a Redis URL: expected redis://HOST:PORT/DB" in line  # refused before use


@pytest.fixture
def recorded_state(tmp_path) -> Path:
    """A state dir whose history holds versions 1-3 of netA|netB (snapshots 1-3, event times 1000-3000 s)."""
    (tmp_path / "snapshots").mkdir()
    history = AlignmentHistory(tmp_path / "history")
    for snapshot in (1, 2, 3):
        update = make_update(snapshot, shift=snapshot)
        history.record("netA", "netB", snapshot, snapshot, update.end_time, update.node_ids, update.pairs)
    return tmp_path


def test_history_queries_show_iso_times_and_several_nodes(recorded_state):
    result = query("a0", "nobody", "a1", "--net", "netA", "--to", "netB", "--state", str(recorded_state),
                   "--at", "1970-01-01T00:40:00Z")
    assert result.exit_code == 0, result.output
    header, *rest = result.stdout.splitlines()
    assert header.startswith("version 2 of netA -> netB: snapshot 2, event time 1970-01-01T00:33:20Z, published ")
    assert header.endswith(", from the history on disk")
    record = AlignmentHistory(recorded_state / "history")
    entry = record.as_of("netA", "netB", snapshot=2)
    expected = record.load(entry).candidates("a1", "netA", "netB")
    a1 = rest[rest.index("netA:a1 -> netB") + 1:]
    assert [(r.split()[1], float(r.split()[2])) for r in a1] == [(c, round(s, 4)) for c, s in expected]
    assert "netA:nobody -> netB: no candidates" in rest

    line = one_line_error(query("a0", "--net", "netA", "--to", "netB", "--state", str(recorded_state), "--at", "999"))
    assert line == ("dynalign: error: no alignments of netA -> netB recorded as of event time 1970-01-01T00:16:39Z; the first is "
                    "version 1, snapshot 1, event time 1970-01-01T00:16:40Z")
    line = one_line_error(query("a0", "--net", "netA", "--to", "fbx", "--state", str(recorded_state),
                                "--snapshot", "2"))
    assert line == "dynalign: error: no alignments of netA -> fbx in the history; recorded pairs: netA -> netB, netB -> netA"


def test_query_in_a_terminal(published):
    """A person typing the command: two nodes, one unknown, answered on the terminal, exit status 0."""
    run = in_terminal(dynalign("query", "b1", "ghost", "b3", "--net", "netB", "--to", "netA", "--redis", published),
                      timeout_s=60)
    assert run.returncode == 0, run.text
    lines = [line for line in run.text.splitlines() if line.strip()]
    assert lines[0].startswith("version 4 of netB -> netA: snapshot 4, event time 1970-01-01T01:06:40Z")
    top = redis.Redis.from_url(published).hgetall("dynalign:{netA|netB}:v:4:top:netB")
    for node in ("b1", "b3"):
        at = lines.index(f"netB:{node} -> netA")
        ranks = [(line.split()[1], float(line.split()[2])) for line in lines[at + 1:at + 3]]
        assert ranks == [(c, s) for c, s in json.loads(top[node.encode()])]
    assert "netB:ghost -> netA: no candidates" in lines
    assert "Traceback" not in run.text


def test_ids_with_terminal_control_characters_are_shown_escaped_in_a_terminal(redis_url):
    """Issue 16, item 6: node ids come from the data; ESC or CR in one must not act on the user's terminal."""
    from aligner.update import AlignmentUpdate, PairTopK

    hostile = ("evil\x1b[2J\x1b]0;pwned\x07", "over\rwrite", "plain")
    pair = PairTopK("netA", "netB", np.array([0]), np.array([[0, 1]]), np.array([[0.9, 0.5]], dtype=np.float32))
    back = PairTopK("netB", "netA", np.array([0]), np.array([[0]]), np.array([[0.9]], dtype=np.float32))
    RedisPublisher(redis.Redis.from_url(redis_url)).publish(
        AlignmentUpdate(1, 1000.0, {"netA": ("a\x1b[31mred",), "netB": hostile[:2]}, [pair, back]))
    run = in_terminal(dynalign("query", "a\x1b[31mred", "--net", "netA", "--to", "netB", "--redis", redis_url),
                      timeout_s=60)
    assert run.returncode == 0, run.screen
    assert "\x1b" not in run.screen and "\x07" not in run.screen, repr(run.screen)
    assert "\r\n" in run.screen and "\r" not in run.screen.replace("\r\n", ""), repr(run.screen)
    lines = run.text.splitlines()
    assert "netA:a\\x1b[31mred -> netB" in lines
    assert lines[lines.index("netA:a\\x1b[31mred -> netB") + 1].split()[1] == "evil\\x1b[2J\\x1b]0;pwned\\x07"
    assert lines[lines.index("netA:a\\x1b[31mred -> netB") + 2].split()[1] == "over\\rwrite"
    # JSON keeps the ids exact (its escapes are the format's own).
    result = query("a\x1b[31mred", "--net", "netA", "--to", "netB", "--redis", redis_url, "--json")
    assert [c["node"] for c in json.loads(result.stdout)["candidates"]] == list(hostile[:2])


def test_version_flag_prints_the_installed_package_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"dynalign {installed_version('dynalign')}\n"
    assert installed_version("dynalign")[0].isdigit()
