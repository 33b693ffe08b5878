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
    ({"max_jump_seconds": 0.0}, "max_jump_seconds"),
    ({"max_future_seconds": float("inf")}, "max_future_seconds"),
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


def test_one_absurd_event_time_is_a_dead_letter_and_stops_no_snapshot():
    """The attack of issue 16: one event at t = 99,999,999,999 in an unrelated network made everything after it
    late and cut 2 snapshots instead of 10."""
    now = time.time()
    events = [edge("a", str(i), now - 10_000 + 100 * i, event_id=f"e{i}") for i in range(100)]
    forged = Event("add_edge", 99_999_999_999.0, "other", "x", "y", id="forged")
    clean = run(SnapshotCutter(SnapshotPolicy(window_seconds=1000.0)), events)
    assert len(clean) >= 10
    for at, bound in ((0, "max_future_seconds"), (3, "max_jump_seconds")):  # first (nothing seen yet) or later
        cutter = SnapshotCutter(SnapshotPolicy(window_seconds=1000.0))
        attacked = run(cutter, events[:at] + [forged] + events[at:])
        assert spans(attacked) == spans(clean)
        (event, reason), = cutter.drain_rejected()
        assert event.id == "forged" and bound in reason and "a clock error?" in reason
        assert cutter.stats["late"] == 0 and cutter.stats["rejected"] == 1


def test_an_event_time_jump_in_a_replayed_history_is_a_dead_letter():
    """Historical data is never in the future, so the wall clock cannot catch a jump within it: the bound on
    how far one event may move event time does."""
    events = [edge("a", str(i), 1_000_000 + 60 * i) for i in range(50)]
    jump = edge("b", "c", 1_000_000 + 3 * 365 * 86400)
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=600.0))
    snapshots = run(cutter, events[:10] + [jump] + events[10:])
    assert spans(snapshots) == spans(run(SnapshotCutter(SnapshotPolicy(window_seconds=600.0)), events))
    (event, reason), = cutter.drain_rejected()
    assert event is jump and "max_jump_seconds" in reason
    unbounded = SnapshotCutter(SnapshotPolicy(window_seconds=600.0, max_jump_seconds=None))
    run(unbounded, events[:10] + [jump] + events[10:])
    assert unbounded.drain_rejected() == [] and unbounded.stats["late"] == 40  # what the bound prevents


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
    assert [len(resumed.offer(edge("a", "b", t, f"e{t}"))) for t in (2, 0, 9)] == [0, 1, 0]
    assert resumed.stats["duplicates"] == 1
    with pytest.raises(ValueError, match="window_seconds"):
        SnapshotCutter.from_state(state, SnapshotPolicy(window_seconds=60.0))


def two_networks(count: int = 60, step: float = 1.0) -> tuple[list[Event], list[Event]]:
    """Network "a" at even and "b" at odd times (distinct, so merged they have one time order), as a topic keyed
    by network carries them in two partitions."""
    a = [Event("add_edge", 2 * i * step, "a", str(i), str(i + 1), id=f"a{i}") for i in range(count)]
    b = [Event("add_edge", (2 * i + 1) * step, "b", str(i), str(i + 1), id=f"b{i}") for i in range(count)]
    return a, b


def assert_same_snapshots(got, want):
    assert len(got) == len(want)
    for snapshot, expected in zip(got, want):
        assert_snapshots_equal(snapshot, expected)


def test_a_lane_read_far_ahead_makes_no_event_late():
    policy = SnapshotPolicy(window_seconds=10.0)
    a, b = two_networks()
    merged = sorted(a + b, key=lambda e: e.time)
    expected = run(SnapshotCutter(policy), merged)
    assert len(expected) == 12
    # One global "newest": every event of the lagging partition is late, and the windows come out wrong.
    global_clock = SnapshotCutter(policy)
    wrong = run(global_clock, a + b)
    assert "b" in expected[0].networks and "b" not in wrong[0].networks
    assert global_clock.stats["late"] == len(b) - 5  # all but b's last window
    # Per lane: lane 0 read to its end before lane 1 starts; lane 0's events wait for lane 1.
    cutter = SnapshotCutter(policy)
    assert cutter.set_lanes([0, 1]) == []
    assert cutter.offer_all(iter(a), 0) == [] and cutter.buffered == len(a)
    got = cutter.offer_all(iter(b[:30]), 1)
    assert cutter.watermark == b[29].time and [s.end_time for s in got] == [10.0, 20.0, 30.0, 40.0, 50.0]
    got += cutter.offer_all(iter(b[30:]), 1) + cutter.flush()
    assert_same_snapshots(got, expected)
    assert cutter.stats["late"] == cutter.stats["out_of_order"] == 0


def test_lateness_counts_within_a_lane():
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0, lateness_seconds=3.0))
    cutter.set_lanes([0, 1])
    cutter.offer_all([edge("a", "b", 20), edge("a", "c", 18)], 0)  # 2 s behind its lane's newest: reordered
    cutter.offer_all([edge("x", "y", 5)], 1)  # 15 s behind lane 0, but lane 1's first: not reordered
    assert cutter.stats["reordered"] == 1 and cutter.watermark == 5.0 - 3.0


def test_an_idle_lane_does_not_hold_the_watermark_until_it_delivers_again():
    policy = SnapshotPolicy(window_seconds=10.0)
    cutter = SnapshotCutter(policy)
    cutter.set_lanes([0, 1, 2])
    assert cutter.offer_all([edge("a", str(t), t) for t in (1, 12, 25, 31)], 0) == []  # lanes 1, 2: nothing yet
    assert cutter.set_lanes([0, 1, 2], idle=[2]) == []  # lane 1 still holds it back
    cut = cutter.set_lanes([0, 1, 2], idle=[1, 2])  # nothing to read in either: lane 0 alone sets the pace
    assert [s.end_time for s in cut] == [10.0, 20.0, 30.0] and cutter.watermark == 31.0
    # Lane 1 delivers again: it holds the watermark (at 33) while lane 0 moves on; lane 2 stays idle.
    assert cutter.offer_all([edge("b", "x", 33)], 1) == []
    assert cutter.offer_all([edge("a", "y", 45)], 0) == [] and cutter.watermark == 33.0
    assert [s.end_time for s in cutter.offer_all([edge("b", "z", 46)], 1)] == [40.0]
    # An idle lane that delivers something older than what was cut: late, applied to the open window.
    cutter.set_lanes([0, 1, 2], idle=[1, 2])
    cutter.offer_all([edge("c", "old", 7)], 2)
    assert cutter.stats["late"] == 1
    # A revoked lane is forgotten: it holds nothing back any more.
    cutter.offer_all([edge("a", "w", 58)], 0)
    assert cutter.watermark == 7.0
    assert [s.end_time for s in cutter.set_lanes([0, 1])] == []  # lane 1 (idle no more) at 46 holds
    assert [s.end_time for s in cutter.set_lanes([0])] == [50.0] and cutter.watermark == 58.0


def test_without_lanes_a_file_is_one_lane():
    policy = SnapshotPolicy(window_seconds=50.0, every_events=70, lateness_seconds=10.0, dedup_capacity=500)
    events = messy_stream(5, 800)
    plain, one_lane = SnapshotCutter(policy), SnapshotCutter(policy)
    expected = run(plain, events)
    got = [s for e in events for s in one_lane.offer(e, None)]
    assert_same_snapshots(got + one_lane.flush(), expected)
    assert one_lane.stats == plain.stats and one_lane.stats["late"] > 0


def test_lanes_survive_a_checkpoint_and_old_checkpoints_load():
    policy = SnapshotPolicy(window_seconds=10.0, lateness_seconds=1.0)
    a, b = two_networks()

    def feed(cutter, lane_a, lane_b):
        return cutter.offer_all(iter(lane_a), 0) + cutter.offer_all(iter(lane_b), 1)

    straight = SnapshotCutter(policy)
    straight.set_lanes([0, 1], idle=[])
    expected = feed(straight, a[:40], b[:10]) + feed(straight, a[40:], b[10:]) + straight.flush()
    first = SnapshotCutter(policy)
    first.set_lanes([0, 1], idle=[])
    before = feed(first, a[:40], b[:10])
    first.set_lanes([0, 1], idle=[0])  # lane 0 caught up for now
    state = first.to_state()
    resumed = SnapshotCutter.from_state(state)
    assert resumed.watermark == first.watermark == b[9].time - 1.0 and resumed.buffered == first.buffered > 0
    assert resumed.to_state()["lanes"] == state["lanes"] == [[0, a[39].time, True], [1, b[9].time, False]]
    assert_same_snapshots(before + feed(resumed, a[40:], b[10:]) + resumed.flush(), expected)
    assert resumed.stats["late"] == 0
    # A checkpoint written before lanes existed: its events came in one lane, whose clock carries on.
    old = SnapshotCutter(policy)
    run_before = [s for e in a[:25] for s in old.offer(e)]
    legacy = old.to_state()
    del legacy["lanes"]
    loaded = SnapshotCutter.from_state(legacy)
    assert loaded.watermark == old.watermark == a[24].time - 1.0
    assert_same_snapshots(run_before + run(loaded, a[25:]), run(SnapshotCutter(policy), a))


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


def test_ids_are_scoped_per_network_and_a_reused_id_is_refused_not_lost():
    # 375 forged events reusing the ids of later valid ones once made those vanish as "duplicates" (issue 16).
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0))
    forged = Event("add_edge", 1.0, "a", "mallory", "x", id="e7")
    valid = Event("add_edge", 2.0, "a", "alice", "x", id="e7")
    elsewhere = Event("add_edge", 2.0, "b", "alice", "x", id="e7")  # the same id in another network
    for event in (forged, valid, elsewhere, valid, forged):
        cutter.offer(event)
    assert cutter.stats["duplicates"] == 1 and cutter.stats["rejected"] == 2 and cutter.stats["accepted"] == 2
    rejected = cutter.drain_rejected()
    assert [event for event, _ in rejected] == [valid, valid]
    assert "event id 'e7' was used before in network 'a' by a different event" in rejected[0][1]
    # Across a checkpoint: the digests travel with the ids.
    resumed = SnapshotCutter.from_state(cutter.to_state())
    resumed.offer(forged)
    resumed.offer(valid)
    resumed.offer(Event("add_edge", 3.0, "c", "alice", "x", id="e7"))
    assert resumed.stats["duplicates"] == 2 and resumed.stats["rejected"] == 3 and resumed.stats["accepted"] == 3
    assert [net for net in resumed.flush()[-1].networks] == ["a", "b", "c"]


def test_an_event_the_graph_refused_does_not_keep_its_id_from_a_corrected_resend():
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0, max_attr_width=3))
    cutter.offer(Event("add_edge", 1.0, "a", "x", "y", id="e1"))
    too_wide = Event("set_attr", 2.0, "a", "x", attrs=(1.0, 2.0, 3.0, 4.0), id="a1")
    corrected = Event("set_attr", 2.0, "a", "x", attrs=(1.0, 2.0, 3.0), id="a1")
    cutter.offer(too_wide)
    assert "max_attr_width" in cutter.drain_rejected()[0][1]
    resumed = SnapshotCutter.from_state(cutter.to_state())  # the refusal is remembered across a checkpoint too
    for c in (cutter, resumed):
        c.offer(corrected)
        c.offer(corrected)  # now a redelivery of an event that took effect: dropped
        assert c.drain_rejected() == [] and c.stats["duplicates"] == 1
        assert c.flush()[-1].networks["a"].attrs.tolist()[0] == [1.0, 2.0, 3.0]


def test_a_state_written_before_ids_were_scoped_still_drops_its_redeliveries():
    cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0))
    cutter.offer(Event("add_edge", 1.0, "a", "x", "y", id="old"))
    state = cutter.to_state()
    state.pop("seen")
    state["seen_ids"] = ["old"]
    resumed = SnapshotCutter.from_state(state)
    resumed.offer(Event("add_edge", 1.0, "a", "x", "y", id="old"))
    assert resumed.stats["duplicates"] == 1 and resumed.stats["accepted"] == 1
