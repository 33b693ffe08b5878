"""File and stdin sources: every non-blank line is one record, in order, with a position that resumes
exactly after it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.file_source import FileSource
from stream.records import Record, Source, collector_paused
from stream.sources import open_source

REPO = Path(__file__).resolve().parents[2]


def drain(source, batch: int = 1000) -> list[Record]:
    out: list[Record] = []
    while not source.exhausted:
        out += source.poll(batch, 1.0)
    return out


@pytest.fixture
def events_file(tmp_path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"n": 0}\n\n  \n{"n": 1}\r\n{"n": 2}\n\xff not utf-8\n{"n": 3}')
    return path


def test_reads_every_record_and_skips_blank_lines(events_file):
    src = open_source(str(events_file))
    assert isinstance(src, Source)
    records = drain(src)
    assert [r.value for r in records] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}', b"\xff not utf-8", b'{"n": 3}']
    assert [r.origin for r in records] == [f"{events_file}:{n}" for n in (1, 4, 5, 6, 7)]
    assert records[-1].position == {"offset": events_file.stat().st_size, "line": 7}
    assert src.exhausted and src.poll(10, 0.0) == []
    src.commit(records[-1].position)  # a no-op, but part of the interface
    src.close()


def test_final_line_without_newline_is_a_record(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}')
    assert [r.value for r in drain(FileSource(path))] == [b'{"a": 1}', b'{"b": 2}']
    path.write_bytes(b"")
    assert drain(FileSource(path)) == []


@pytest.mark.parametrize("cut", range(0, 8))
def test_positions_resume_exactly_after_a_record(events_file, cut):
    everything = drain(FileSource(events_file))
    first = FileSource(events_file)
    head = first.poll(cut, 0.0) if cut else []
    first.close()
    rest = drain(FileSource(events_file, position=head[-1].position)) if head else drain(FileSource(events_file))
    assert [(r.value, r.origin, r.position) for r in head + rest] == [
        (r.value, r.origin, r.position) for r in everything
    ]


def test_poll_returns_at_most_max_records_across_chunk_boundaries(tmp_path):
    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"i": i, "pad": "x" * (i % 97)}) for i in range(20_000)]
    path.write_text("\n".join(lines) + "\n")
    src = FileSource(path)
    batches = []
    while not src.exhausted:
        batch = src.poll(333, 0.0)
        assert len(batch) <= 333
        batches.append(batch)
    values = [r.value.decode() for b in batches for r in b]
    assert values == lines
    # Every position is the byte offset just after its line.
    ends = [sum(len(line) + 1 for line in lines[: i + 1]) for i in (0, 1, 9999, 19999)]
    flat = [r for b in batches for r in b]
    assert [flat[i].position["offset"] for i in (0, 1, 9999, 19999)] == ends


def test_an_over_long_line_is_cut_and_the_rest_still_read(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b"y" * 300_000 + b'\n{"b": 2}\n' + b"z" * 200_000)
    records = drain(FileSource(path, max_line_bytes=1000))
    assert [r.value[:8] for r in records] == [b'{"a": 1}', b"y" * 8, b'{"b": 2}', b"z" * 8]
    assert [len(r.value) for r in records] == [8, 1000, 8, 1000]
    assert [r.position["offset"] for r in records] == [9, 300_010, 300_019, path.stat().st_size]
    resumed = drain(FileSource(path, position=records[1].position, max_line_bytes=1000))
    assert [r.value[:8] for r in resumed] == [b'{"b": 2}', b"z" * 8]


def test_injected_binary_stream():
    src = FileSource(io.BytesIO(b'{"x": 1}\n{"x": 2}\n'), name="inline")
    assert [(r.value, r.origin) for r in drain(src)] == [(b'{"x": 1}', "inline:1"), (b'{"x": 2}', "inline:2")]


def test_a_pipe_honours_the_poll_timeout():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as reader, os.fdopen(write_fd, "wb", buffering=0) as writer:
        src = FileSource(reader, name="pipe", position={"offset": 5, "line": 1})  # cannot seek: ignored
        started = time.monotonic()
        assert src.poll(10, 0.2) == []
        assert 0.15 < time.monotonic() - started < 2.0
        writer.write(b'{"a": 1}\n{"b"')
        assert [r.value for r in src.poll(10, 1.0)] == [b'{"a": 1}']
        writer.write(b": 2}\n")
        writer.close()
        assert [(r.value, r.origin) for r in src.poll(10, 1.0)] == [(b'{"b": 2}', "pipe:2")]
        assert src.poll(10, 1.0) == [] and src.exhausted


def test_stdin_through_a_subprocess():
    script = (
        "from stream.sources import open_source\n"
        "src = open_source('-', position={'offset': 3, 'line': 9})\n"
        "while not src.exhausted:\n"
        "    for r in src.poll(2, 5.0):\n"
        "        print(r.origin, r.value.decode(), r.position['line'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=b'{"a": 1}\n\n{"b": 2}\n{"c": 3}', cwd=REPO,
        capture_output=True, timeout=60, check=True,
    )
    assert done.stdout.decode().splitlines() == [
        '<stdin>:1 {"a": 1} 1', '<stdin>:3 {"b": 2} 3', '<stdin>:4 {"c": 3} 4',
    ]


def test_a_position_must_be_a_file_position(events_file):
    with pytest.raises(ValueError, match="is not a file position"):
        FileSource(events_file, position={"topic": "t", "offsets": {"0": 3}})


def test_open_source_urls(events_file):
    assert len(drain(open_source(f"file://{events_file}"))) == 5
    with pytest.raises(ValueError, match="unsupported source 'http://x/y'"):
        open_source("http://x/y")
    with pytest.raises(FileNotFoundError):
        open_source(str(events_file.parent / "missing.jsonl"))


def test_the_collector_pause_restores_what_it_found():
    import gc

    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("a failed poll")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # someone else's choice: left alone
    finally:
        gc.enable()


def test_checking_a_named_pipe_does_not_end_its_writers_stream(tmp_path):
    """A run checks its source before it starts; for a named pipe (a live stream), opening and closing it there
    would give its writer EPIPE before the run opened it for good."""
    import threading

    from stream.sources import check_source_url

    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    result = {}

    def write() -> None:
        try:
            with open(fifo, "w") as writer:  # blocks until a reader opens the pipe
                time.sleep(0.2)
                writer.write('{"x": 1}\n')
            result["ok"] = True
        except BrokenPipeError as e:
            result["error"] = e

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    check_source_url(str(fifo))
    time.sleep(0.5)  # a writer let through by the check has written into a pipe nobody reads by now
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the run's own open (never blocks: no hang if broken)
    try:
        thread.join(5)
        assert result == {"ok": True}
        assert os.read(reader, 100) == b'{"x": 1}\n'
    finally:
        os.close(reader)
