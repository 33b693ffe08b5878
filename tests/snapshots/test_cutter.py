import random
import time

import pytest

from snapshots.cutter import SnapshotCutter, SnapshotPolicy
from stream.events import Event
from tests.snapshots.test_graph import assert_snapshots_equal, attr, edges_of, random_events


def edge(u, v, t, event_id=None, op="add_edge"):
    return Event(op, float(t), "a", u, v, id=event_id)


def run(cutter, events):
    """All snapshots from offering ``events`` and flushing."""
    out = [s for e in events for s in cutter.offer(e)]
    return out + cutter.flush()


def spans(snapshots):
    return [(s.id, s.start_time, s.end_time, s.events) for s in snapshots]


@pytest.mark.parametrize("kwargs, message", [
    ({"window_seconds": None}, "both are None"),
    ({"window_seconds": 0.0}, "window_seconds"),
    ({"window_seconds": float("inf")}, "window_seconds"),
    ({"window_seconds": None, "every_events": 0}, "every_events"),
    ({"every_events": True}, "every_events"),
    ({"lateness_seconds": -1.0}, "lateness_seconds"),
    ({"dedup_capacity": 0}, "dedup_capacity"),
    ({"edge_ttl_seconds": 0.0}, "edge_ttl_seconds"),
])
def test_policy_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SnapshotPolicy(**kwargs)


def test_windows_cut_at_exact_boundaries_and_skip_empty_windows():
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0))
    assert cutter.offer(edge("a", "b", 1234)) == []  # first window aligns to 1230
    assert cutter.offer(edge("a", "c", 1239.999)) == []
    first = cutter.offer(edge("a", "d", 1240))  # exactly the end: belongs to the next window
    assert spans(first) == [(1, 1230.0, 1240.0, 2)]
    assert set(edges_of(first[0])) == {("a", "b"), ("a", "c")}
    second = cutter.offer(edge("a", "e", 1275))  # 1250-1270 had no events: no snapshots for them
    assert spans(second) == [(2, 1240.0, 1250.0, 1)]
    assert spans(cutter.flush()) == [(3, 1270.0, 1280.0, 1)]
    assert cutter.flush() == []
    assert cutter.stats["snapshots"] == 3 and cutter.stats["late"] == 0


def test_count_based_cuts_span_their_events():
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=None, every_events=3))
    snapshots = run(cutter, [edge("a", str(i), t) for i, t in enumerate([5, 6, 6, 9, 12, 13, 20])])
    assert spans(snapshots) == [(1, 5.0, 6.0, 3), (2, 9.0, 13.0, 3), (3, 20.0, 20.0, 1)]


def test_edge_ttl_slides_a_window_over_interactions():
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0, edge_ttl_seconds=15.0))
    snaps = run(cutter, [edge("a", "b", 1), edge("a", "c", 5), edge("a", "b", 12), edge("c", "d", 21),
                         edge("x", "y", 35)])
    # Cut at 10: nothing older than -5. At 20: a-c (last seen at 5) is older than 5? no (5 >= 5): kept.
    # At 30: only ties seen at or after 15 survive: c-d; a-b (12) and a-c (5) expired. At 40: x-y.
    assert [sorted(edges_of(s)) for s in snaps] == [
        [("a", "b"), ("a", "c")], [("a", "b"), ("a", "c")], [("c", "d")], [("x", "y")]]
    assert cutter.stats["expired"] == 3
    # An expired edge's ends count as changed, so the aligner re-encodes around them.
    third = snaps[2].networks["a"]
    assert {third.node_ids[i] for i in third.changed} >= {"a", "b"}


def test_windows_and_counts_together():
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0, every_events=2))
    snapshots = run(cutter, [edge("a", str(i), t) for i, t in enumerate([1, 2, 3, 11, 12, 25])])
    assert spans(snapshots) == [(1, 1.0, 2.0, 2), (2, 0.0, 10.0, 1), (3, 11.0, 12.0, 2), (4, 20.0, 30.0, 1)]


def test_disorder_within_lateness_is_applied_in_its_window():
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0, lateness_seconds=5.0))
    offers = [edge("a", "t1", 1), edge("a", "t8", 8), edge("a", "t6", 6), edge("a", "t12", 12),
              edge("a", "t9", 9), edge("a", "t16", 16)]
    snapshots = run(cutter, offers)
    assert spans(snapshots) == [(1, 0.0, 10.0, 4), (2, 10.0, 20.0, 2)]
    assert {v for _, v in edges_of(snapshots[0])} == {"t1", "t6", "t8", "t9"}
    assert {v for _, v in edges_of(snapshots[1])} == {"t1", "t6", "t8", "t9", "t12", "t16"}
    assert cutter.stats["reordered"] == 2 and cutter.stats["late"] == cutter.stats["out_of_order"] == 0


def test_reordering_decides_which_op_wins():
    add, remove = edge("x", "y", 5), edge("x", "y", 3, op="remove_edge")  # remove happened first, arrives last
    patient = SnapshotCutter(SnapshotPolicy(window_seconds=10.0, lateness_seconds=5.0))
    assert edges_of(run(patient, [add, remove])[0]) == {("x", "y"): 1.0}
    hasty = SnapshotCutter(SnapshotPolicy(window_seconds=10.0))
    assert edges_of(run(hasty, [add, remove])[0]) == {}
    assert hasty.stats["out_of_order"] == 1 and patient.stats["reordered"] == 1


def test_events_beyond_lateness_for_a_sealed_window_go_to_the_open_one():
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0, lateness_seconds=2.0))
    snapshots = run(cutter, [edge("a", "b", 1), edge("a", "c", 15), edge("a", "d", 17), edge("a", "late", 3)])
    assert spans(snapshots) == [(1, 0.0, 10.0, 1), (2, 10.0, 20.0, 3)]
    assert ("a", "late") not in edges_of(snapshots[0]) and ("a", "late") in edges_of(snapshots[1])
    assert cutter.stats["late"] == 1


def test_duplicates_are_dropped_and_capacity_bounds_memory():
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0, dedup_capacity=2))
    for event in [edge("a", "b", 1, "e1"), edge("a", "b", 1, "e1"), edge("a", "b", 2), edge("a", "b", 2),
                  edge("a", "c", 3, "e2"), edge("a", "d", 4, "e3"), edge("a", "b", 5, "e1")]:
        cutter.offer(event)
    # e1 was forgotten once e3 arrived, so its last redelivery counts again; id-less events are never deduplicated
    assert cutter.stats["duplicates"] == 1 and cutter.stats["accepted"] == 6
    assert edges_of(cutter.flush()[0]) == {("a", "b"): 4.0, ("a", "c"): 1.0, ("a", "d"): 1.0}


def test_conflicting_events_are_rejected_for_the_dead_letter_sink():
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0))
    snapshots = run(cutter, [attr("x", [1.0], 1), attr("y", {"f": 2.0}, 2), edge("x", "y", 3)])
    rejected = cutter.drain_rejected()
    assert [event.u for event, _ in rejected] == ["y"] and "named" in rejected[0][1]
    assert cutter.drain_rejected() == [] and cutter.stats["rejected"] == 1
    assert spans(snapshots) == [(1, 0.0, 10.0, 2)]


def messy_stream(seed: int, count: int) -> list[Event]:
    """random_events with jittered times (some beyond lateness), redeliveries and ids."""
    rng = random.Random(seed)
    events = []
    for i, event in enumerate(random_events(rng, count)):
        jitter = rng.choice([0.0, 0.0, 0.0, -3.0, -8.0, -40.0])
        event = Event(event.op, max(0.0, event.time + jitter), event.net, event.u, event.v, event.to, event.weight,
                      event.attrs, id=f"e{i}")
        events.append(event)
        if rng.random() < 0.05:
            events.append(event)
    return events


def test_resuming_from_state_mid_stream_gives_identical_snapshots():
    policy = SnapshotPolicy(window_seconds=50.0, every_events=70, lateness_seconds=10.0, dedup_capacity=500)
    events = messy_stream(3, 1200)
    expected = run(SnapshotCutter(policy), events)
    assert len(expected) > 20
    for split in (1, 333, 800, len(events)):
        original = SnapshotCutter(policy)
        before = [s for e in events[:split] for s in original.offer(e)]
        resumed = SnapshotCutter.from_state(original.to_state())
        # both continue: the resumed copy must match, and must not share mutable state with the original
        for continued in (run(resumed, events[split:]), run(original, events[split:])):
            got = before + continued
            assert len(got) == len(expected)
            for snapshot, want in zip(got, expected):
                assert_snapshots_equal(snapshot, want)
        assert resumed.stats == original.stats


def test_offering_a_batch_is_offering_each_event():
    policy = SnapshotPolicy(window_seconds=50.0, every_events=70, lateness_seconds=10.0, dedup_capacity=500)
    events = messy_stream(4, 1500) + [attr("x", [1.0], 2000, net="z"), attr("x", {"f": 2.0}, 2001, net="z")]
    one_by_one, batched = SnapshotCutter(policy), SnapshotCutter(policy)
    expected = [s for e in events for s in one_by_one.offer(e)]
    got = [s for start in range(0, len(events), 300) for s in batched.offer_all(iter(events[start:start + 300]))]
    assert len(got) == len(expected) > 20
    for snapshot, want in zip(got, expected):
        assert_snapshots_equal(snapshot, want)
        assert snapshot.arrived == want.arrived
    assert [s.id for s in batched.flush()] == [s.id for s in one_by_one.flush()]
    assert batched.stats == one_by_one.stats and batched.stats["rejected"] == 1
    assert batched.drain_rejected() == one_by_one.drain_rejected()


def test_resuming_under_a_changed_policy():
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0, dedup_capacity=3))
    for i in range(3):
        cutter.offer(edge("a", "b", i, f"e{i}"))
    state = cutter.to_state()
    resumed = SnapshotCutter.from_state(state, SnapshotPolicy(window_seconds=10.0, every_events=2, dedup_capacity=1))
    # only e2 still fits in memory; e0 is applied again, and with 4 pending events the new count policy cuts
    assert [len(resumed.offer(edge("a", "b", 3, event_id))) for event_id in ("e2", "e0", "e9")] == [0, 1, 0]
    assert resumed.stats["duplicates"] == 1
    with pytest.raises(ValueError, match="window_seconds"):
        SnapshotCutter.from_state(state, SnapshotPolicy(window_seconds=60.0))


def test_throughput(capsys):
    rng = random.Random(0)
    count = 100_000
    events = [Event("add_edge", 1000.0 + i * 0.05, rng.choice("ab"), str(rng.randrange(10_000)),
                    str(10_000 + rng.randrange(10_000)), id=f"e{i}") for i in range(count)]
    for lateness in (0.0, 5.0):
        cutter = SnapshotCutter(SnapshotPolicy(window_seconds=600.0, lateness_seconds=lateness))
        started = time.perf_counter()
        snapshots = run(cutter, events)
        elapsed = time.perf_counter() - started
        with capsys.disabled():
            print(f"\ncutter, lateness {lateness:g}s: {count / elapsed:,.0f} events/s "
                  f"({len(snapshots)} snapshots, offer+apply+cut)")
        assert cutter.stats["accepted"] == count
