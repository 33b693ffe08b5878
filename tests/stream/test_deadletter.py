"""The dead-letter file keeps every rejected payload with its reason and origin, readable and countable."""

from __future__ import annotations

import base64
import json
import os
import time

import pytest

from stream.deadletter import MAX_REASON_KINDS, OTHER_KIND, DeadLetterSink, reason_kind
from stream.events import InvalidEvent, parse_event


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_lines_carry_reason_origin_payload_and_time(tmp_path):
    path = tmp_path / "deep" / "er" / "dlq.jsonl"
    before = time.time()
    with DeadLetterSink(path) as dlq:
        dlq.write('{"op": "fly"}', "unknown op 'fly'", "events.jsonl:3")
        dlq.write(b'{"u": "caf\xc3\xa9"}', "missing field 'op'", "kafka:events[0]@17")
    got = lines(path)
    assert [(g["reason"], g["origin"], g["payload"]) for g in got] == [
        ("unknown op 'fly'", "events.jsonl:3", '{"op": "fly"}'),
        ("missing field 'op'", "kafka:events[0]@17", '{"u": "café"}'),
    ]
    assert all(before <= g["at"] <= time.time() for g in got)
    assert all("payload_b64" not in g for g in got)


def test_non_utf8_payload_is_kept_as_base64(tmp_path):
    raw = b'{"op": "add_edge", "u": "\xff\xfe"}'
    with DeadLetterSink(tmp_path / "dlq.jsonl") as dlq:
        try:
            parse_event(raw)
        except InvalidEvent as e:
            dlq.write(raw, e.reason, "<stdin>:1")
    (entry,) = lines(tmp_path / "dlq.jsonl")
    assert "payload" not in entry
    assert base64.b64decode(entry["payload_b64"]) == raw
    assert entry["reason"].startswith("payload is not UTF-8")


def test_appends_to_an_existing_file(tmp_path):
    path = tmp_path / "dlq.jsonl"
    for origin in ("a:1", "b:1"):
        with DeadLetterSink(path) as dlq:
            dlq.write("x", "empty payload", origin)
    assert [g["origin"] for g in lines(path)] == ["a:1", "b:1"]


def test_counters_group_reasons_by_kind(tmp_path):
    with DeadLetterSink(tmp_path / "dlq.jsonl") as dlq:
        for node in ("1", "2", "x"):
            dlq.write("{}", f"add_edge: self-loop on node {node!r} (u == v)", "f:1")
        dlq.write("{}", "remove_edge: missing field 'v'", "f:2")
        dlq.write("{}", "add_edge: missing field 'v'", "f:3")
        dlq.write("{", "not valid JSON: Expecting property name enclosed in double quotes: line 1", "f:4")
    assert dlq.count == 6
    assert dlq.by_reason_kind == {"self-loop on node": 3, "missing field 'v'": 2, "not valid JSON": 1}


def test_counter_kinds_are_bounded(tmp_path):
    with DeadLetterSink(tmp_path / "dlq.jsonl") as dlq:
        for i in range(MAX_REASON_KINDS + 10):
            dlq.write("{}", f"reason number {chr(0x4E00 + i)}", "f:1")
    assert len(dlq.by_reason_kind) == MAX_REASON_KINDS + 1
    assert dlq.by_reason_kind[OTHER_KIND] == 10
    assert dlq.count == MAX_REASON_KINDS + 10


@pytest.mark.parametrize(
    "reason, kind",
    [
        ("unknown op 'teleport' (expected one of add_anchor, add_edge)", "unknown op"),
        ("field 'op' must be a string, got int", "field 'op' must be a string"),
        ("field 'attrs[12]' must be finite, got nan", "field 'attrs[N]' must be finite"),
        ("payload is not UTF-8: invalid start byte at byte 0", "payload is not UTF-8"),
        ("empty payload", "empty payload"),
        ("", OTHER_KIND),
    ],
)
def test_reason_kind(reason, kind):
    assert reason_kind(reason) == kind


def test_flush_makes_lines_visible_and_durable(tmp_path, monkeypatch):
    path = tmp_path / "dlq.jsonl"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    dlq = DeadLetterSink(path)
    dlq.write("a", "empty payload", "f:1")
    dlq.flush()
    assert len(lines(path)) == 1 and not synced
    dlq.write("b", "empty payload", "f:2")
    dlq.flush(durable=True)
    assert len(lines(path)) == 2 and len(synced) == 1
    dlq.close()
    dlq.close()  # idempotent


def test_topic_and_producer_come_together(tmp_path):
    with pytest.raises(ValueError, match="needs a producer"):
        DeadLetterSink(tmp_path / "dlq.jsonl", topic="dead")


def test_a_reason_is_bounded_whatever_it_quotes(tmp_path):
    """A 789 KB reason once went into a Kafka header (issue 16, item 7)."""
    from stream.deadletter import MAX_REASON_CHARS

    with DeadLetterSink(tmp_path / "dlq.jsonl") as dlq:
        dlq.write("{}", "unknown op '" + "x" * 800_000 + "'", "f:1")
    entry = json.loads((tmp_path / "dlq.jsonl").read_text())
    assert len(entry["reason"]) < MAX_REASON_CHARS + 40
    assert entry["reason"].startswith("unknown op 'xxx") and entry["reason"].endswith("(799013 more characters)")
