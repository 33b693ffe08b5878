"""``demo``, ``run`` and ``feed`` in a real terminal, where their progress bars exist.

A pipe (every other test, and CI) never creates the bars, so a crash in them (``if bar:`` on a tqdm bar without
a total raised ``TypeError``) reached every person who typed the command and no test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from aligner.cli import cli
from tests.aligner.test_service import FAST
from tests.brokers import create_topic, kafka_broker
from tests.synthetic import write_pair_dataset
from tests.terminal import dynalign, in_terminal

ENV = {**FAST, "DYNALIGN_SERVICE_THREADS": "1"}


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("terminal")
    ds = write_pair_dataset(root / "pair", n=80, seed=3)
    out = root / "events.jsonl"
    result = CliRunner().invoke(cli, ["events", str(ds), "--windows", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def broker():
    yield from kafka_broker()


def assert_clean(run, what: str) -> None:
    assert run.returncode == 0, f"{what} exited {run.returncode}:\n{run.text[-3000:]}"
    assert "Traceback" not in run.screen, run.text[-3000:]


def test_demo_in_a_terminal(tmp_path):
    run = in_terminal(dynalign("demo", "--state", str(tmp_path / "demo"), "--windows", "2"), env=ENV, timeout_s=600)
    assert_clean(run, "dynalign demo")
    assert "Hits@1 (test anchors)" in run.text and "events/s" in run.text  # the bar drew, then the results
    assert "try it: dynalign query" in run.text


def test_run_in_a_terminal(events, redis_url, tmp_path):
    run = in_terminal(dynalign("run", "--source", str(events), "--state", str(tmp_path / "state"),
                               "--redis", redis_url), env=ENV, timeout_s=300)
    assert_clean(run, "dynalign run")
    assert "versions published" in run.text and " 0 versions published" not in run.text


def test_feed_in_a_terminal(events, broker):
    topic = f"feed-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, partitions=3)
    run = in_terminal(dynalign("feed", str(events), "--to", broker.url(topic)), env=ENV, timeout_s=120)
    assert_clean(run, "dynalign feed")
    n = sum(1 for _ in events.open())
    assert f"{n} events (0 malformed)" in run.text
    # --count gives the bar a total: the other branch of the same code.
    counted = in_terminal(dynalign("feed", str(events), "--to", broker.url(topic), "--count", "10"), env=ENV,
                          timeout_s=120)
    assert_clean(counted, "dynalign feed --count")
    assert "10 events" in counted.text


def test_the_harness_sees_a_terminal():
    """The tests above mean something only if the command really sees a TTY."""
    probe = "import sys; print(sys.stdin.isatty(), sys.stdout.isatty(), sys.stderr.isatty())"
    run = in_terminal([sys.executable, "-c", probe])
    assert run.returncode == 0 and run.text.strip() == "True True True", run.screen


def test_text_logs_are_short_valid_logfmt(events, redis_url, tmp_path):
    """Every text log line of a run parses as logfmt (key=value, quoted where needed), with no Python reprs,
    and the INFO lines fit a wide screen."""
    run = subprocess.run(dynalign("run", "--source", str(events), "--state", str(tmp_path / "state"),
                                  "--redis", redis_url), env={**os.environ, **ENV},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    pair = r'[^\s="]+=(?:"(?:[^"\\]|\\.)*"|[^\s="]*)'
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert any('msg="snapshot aligned"' in line for line in lines)
    for line in lines:
        assert re.fullmatch(rf"{pair}(?: {pair})*", line), line
        assert line.startswith("ts=") and " level=" in line
        assert "{'" not in line and "': " not in line, line  # no dict reprs
        assert len(line) <= 300, (len(line), line)
