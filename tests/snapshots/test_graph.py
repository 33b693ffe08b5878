import random

import numpy as np
import pytest

from snapshots.graph import StateConflict, TemporalGraphState
from snapshots.snapshot import Snapshot
from stream.events import Event


def edge(u, v, t=0.0, w=1.0, net="a"):
    return Event("add_edge", t, net, u, v, weight=w)


def unedge(u, v, t=0.0, net="a"):
    return Event("remove_edge", t, net, u, v)


def attr(node, values, t=0.0, net="a"):
    named = isinstance(values, dict)
    return Event("set_attr", t, net, node, attrs=tuple(sorted(values.items())) if named else tuple(values))


def anchor(net, u, to, v, t=0.0, remove=False):
    return Event("remove_anchor" if remove else "add_anchor", t, net, u, v=v, to=to)


def build(*events):
    graph = TemporalGraphState()
    for event in events:
        graph.apply(event)
    return graph


def edges_of(snapshot, net="a"):
    """{(u_id, v_id): weight} with ids, for readable assertions."""
    n = snapshot.networks[net]
    return {(n.node_ids[u], n.node_ids[v]): float(w) for (u, v), w in zip(n.edge_index.T.tolist(), n.edge_weight)}


def alive_ids(snapshot, net="a"):
    n = snapshot.networks[net]
    return {n.node_ids[i] for i in np.flatnonzero(n.alive)}


def changed_ids(snapshot, net="a"):
    n = snapshot.networks[net]
    return {n.node_ids[i] for i in n.changed}


def assert_snapshots_equal(a: Snapshot, b: Snapshot) -> None:
    """Same ids, times, networks and anchors, array for array (dtype and shape included)."""
    assert (a.id, a.start_time, a.end_time, a.events) == (b.id, b.start_time, b.end_time, b.events)
    assert list(a.networks) == list(b.networks)
    for name, x in a.networks.items():
        y = b.networks[name]
        assert (x.name, x.node_ids, x.attr_names) == (y.name, y.node_ids, y.attr_names)
        for field in ("edge_index", "edge_weight", "alive", "changed", "attrs"):
            p, q = getattr(x, field), getattr(y, field)
            assert (p is None) == (q is None), field
            if p is not None:
                assert p.dtype == q.dtype and p.shape == q.shape and np.array_equal(p, q), (name, field)
    assert list(a.anchors) == list(b.anchors)
    for key, pairs in a.anchors.items():
        assert pairs.dtype == b.anchors[key].dtype and np.array_equal(pairs, b.anchors[key]), key


def test_repeated_edges_strengthen_and_keep_latest_time():
    graph = build(edge("x", "y", t=5, w=2.0), edge("y", "x", t=9), edge("x", "y", t=7, w=0.5))
    assert graph.edge("a", "y", "x") == (3.5, 9.0)
    assert edges_of(graph.snapshot(1, 0, 10, 3)) == {("x", "y"): 3.5}


def test_remove_edge_and_counted_missing_removal():
    graph = build(edge("x", "y", w=4.0), unedge("y", "x"), unedge("x", "q"))
    assert graph.edge("a", "x", "y") is None
    assert graph.stats["remove_missing"] == 1 and graph.stats["remove_edge"] == 2
    snapshot = graph.snapshot(1, 0, 1, 3)
    assert snapshot.networks["a"].node_ids == ("x", "y")  # removing what is not there registers nothing
    assert edges_of(snapshot) == {} and alive_ids(snapshot) == set()


def test_snapshot_arrays_are_canonical():
    graph = build(edge("c", "b", w=2.0), edge("a", "d"), edge("d", "b"), edge("c", "a", w=0.25),
                  edge("p", "q", net="b"))
    snapshot = graph.snapshot(3, 10.0, 20.0, 5)
    assert list(snapshot.networks) == ["a", "b"] and snapshot.anchors == {}
    n = snapshot.networks["a"]
    assert n.edge_index.dtype == np.int64 and n.edge_weight.dtype == np.float32
    assert n.alive.dtype == bool and n.changed.dtype == np.int64
    assert (n.edge_index[0] < n.edge_index[1]).all()
    keys = list(zip(*n.edge_index.tolist()))
    assert keys == sorted(keys)
    assert n.attrs is None and n.attr_names is None
    assert edges_of(snapshot) == {("c", "b"): 2.0, ("c", "a"): 0.25, ("b", "d"): 1.0, ("a", "d"): 1.0}


def test_vector_attributes_replace_and_pad_to_widest():
    graph = build(attr("x", [1, 2]), attr("y", [1, 2, 3, 4]), attr("x", [5]))
    n = graph.snapshot(1, 0, 1, 3).networks["a"]
    assert n.attrs.dtype == np.float32 and n.attr_names is None
    assert n.attrs.tolist() == [[5, 0, 0, 0], [1, 2, 3, 4]]


def test_named_attributes_update_fields_and_grow_schema():
    graph = build(attr("x", {"age": 30, "score": 0.5}), attr("y", {"city": 7}), attr("x", {"score": 2}),
                  edge("x", "z"))
    n = graph.snapshot(1, 0, 1, 4).networks["a"]
    assert n.attr_names == ("age", "score", "city")
    assert n.attrs.tolist() == [[30, 2, 0], [0, 0, 7], [0, 0, 0]]


def test_attribute_form_conflict_is_refused_without_side_effects():
    graph = build(attr("x", [1.0]))
    with pytest.raises(StateConflict) as caught:
        graph.apply(attr("newcomer", {"age": 3}))
    assert isinstance(caught.value, ValueError) and "vector" in caught.value.reason and "named" in caught.value.reason
    assert graph.registry("a").ids == ("x",)
    assert graph.stats["conflicts"] == 1 and graph.stats["set_attr"] == 1


def test_anchors_are_idempotent_one_to_one_and_removable():
    graph = build(anchor("online", "u1", "offline", "p1"))
    graph.snapshot(1, 0, 1, 1)
    graph.apply(anchor("offline", "p1", "online", "u1"))  # same anchor, named from the other side
    s = graph.snapshot(2, 0, 1, 1)
    assert s.anchors_between("online", "offline").tolist() == [[0, 0]]
    assert changed_ids(s, "online") == set() and graph.stats["anchor_replaced"] == 0

    graph.apply(anchor("online", "u2", "offline", "p1"))  # p1 moves from u1 to u2
    s = graph.snapshot(3, 0, 1, 1)
    assert graph.stats["anchor_replaced"] == 1
    assert s.anchors_between("offline", "online").tolist() == [[0, 1]]
    assert alive_ids(s, "online") == {"u2"} and changed_ids(s, "online") == {"u1", "u2"}

    graph.apply(anchor("online", "u2", "offline", "p2"))  # u2 moves from p1 to p2
    graph.apply(anchor("online", "u1", "offline", "p2"))  # p2 moves from u2 to u1
    s = graph.snapshot(4, 0, 1, 2)
    assert graph.stats["anchor_replaced"] == 3
    assert s.anchors[("offline", "online")].tolist() == [[1, 0]]

    graph.apply(anchor("online", "u2", "offline", "p2", remove=True))  # not an anchor: no-op
    graph.apply(anchor("offline", "p2", "online", "u1", remove=True))
    s = graph.snapshot(5, 0, 1, 2)
    assert graph.stats["remove_anchor_missing"] == 1
    assert s.anchors[("offline", "online")].shape == (0, 2)
    assert alive_ids(s, "online") == set() and changed_ids(s, "offline") == {"p2"}


def test_alive_and_changed_tracking():
    graph = build(edge("x", "y"), attr("lonely", [1.0]), edge("y", "z"))
    s = graph.snapshot(1, 0, 1, 3)
    assert alive_ids(s) == changed_ids(s) == {"x", "y", "z", "lonely"}
    graph.apply(unedge("y", "z"))
    graph.apply(unedge("x", "z"))  # missing: touches nothing
    s = graph.snapshot(2, 1, 2, 2)
    assert alive_ids(s) == {"x", "y", "lonely"} and changed_ids(s) == {"y", "z"}
    assert graph.snapshot(3, 2, 3, 0).networks["a"].changed.tolist() == []


def random_events(rng: random.Random, count: int, nodes: int = 30) -> list[Event]:
    """A mixed history over two attributed networks: edges, removals, both attribute forms, anchors."""
    events = []
    for i in range(count):
        t = float(i)
        u, v = rng.sample(range(nodes), 2)
        kind = rng.random()
        if kind < 0.5:
            events.append(edge(str(u), str(v), t, rng.choice([0.5, 1.0, 2.0]), net=rng.choice("ab")))
        elif kind < 0.65:
            events.append(unedge(str(u), str(v), t, net=rng.choice("ab")))
        elif kind < 0.75:
            events.append(attr(str(u), [rng.random() for _ in range(rng.randint(1, 4))], t, net="a"))
        elif kind < 0.85:
            events.append(attr(str(u), {rng.choice("fgh"): rng.random()}, t, net="b"))
        else:
            events.append(anchor("a", str(u), "b", str(v), t, remove=rng.random() < 0.3))
    return events


def test_state_round_trip_is_exact_and_keeps_evolving_identically():
    rng = random.Random(7)
    events = random_events(rng, 600)
    original = build(*events[:400])
    original.snapshot(1, 0, 1, 200)
    restored = TemporalGraphState.from_state(original.to_state())
    state, again = original.to_state(), restored.to_state()
    assert state.keys() == again.keys() and state["stats"] == again["stats"]
    for event in events[400:]:
        original.apply(event)
        restored.apply(event)
    assert_snapshots_equal(original.snapshot(2, 1, 2, 200), restored.snapshot(2, 1, 2, 200))
    assert original.stats == restored.stats


def test_snapshot_of_a_large_network_has_every_distinct_node_and_edge():
    # Speed is measured by the benchmarks, not here; this checks the large-network snapshot is complete.
    rng = random.Random(1)
    graph = TemporalGraphState()
    pairs = [(str(rng.randrange(10_000)), str(10_000 + rng.randrange(10_000))) for _ in range(50_000)]
    for i, (u, v) in enumerate(pairs):
        graph.apply(edge(u, v, float(i)))
    n = graph.snapshot(1, 0, 1, 50_000).networks["a"]
    assert n.num_nodes == len({x for pair in pairs for x in pair})
    assert n.num_edges == len(set(pairs))


def test_removals_of_what_is_not_there_register_nothing():
    # 100k such events once grew every feature matrix by 100k rows (issue 16, item 4).
    graph = build(edge("x", "y"), *(unedge(f"ghost{i}", f"phantom{i}") for i in range(1000)),
                  unedge("x", "ghost"), Event("remove_edge", 0.0, "elsewhere", "p", "q"),
                  Event("remove_anchor", 0.0, "a", "x", "z", to="nowhere"),
                  Event("remove_anchor", 0.0, "a", "ghost", "z", to="b"))
    assert graph.networks == ("a",) and graph.registry("a").ids == ("x", "y")
    assert graph.stats["remove_missing"] == 1002 and graph.stats["remove_anchor_missing"] == 2


@pytest.mark.parametrize("event, reason", [
    (Event("add_edge", 0.0, "c", "p", "q"), "3 networks already, snapshots.max_networks (3): network 'c' not added"),
    (Event("add_anchor", 0.0, "a", "x", "p", to="c"), "snapshots.max_networks (3): network 'c' not added"),
    (Event("add_edge", 0.0, "a", "y", "new"), "network 'a' has 3 nodes, snapshots.max_nodes_per_network (3): "
                                              "node 'new' not added"),
    (Event("set_attr", 0.0, "a", "new", attrs=(1.0,)), "snapshots.max_nodes_per_network (3)"),
    (Event("add_anchor", 0.0, "a", "new", "n0", to="n"), "snapshots.max_nodes_per_network (3)"),
    (Event("set_attr", 0.0, "a", "x", attrs=(1.0, 2.0, 3.0)), "3 attribute columns wide, more than "
                                                              "snapshots.max_attr_width (2)"),
    (Event("set_attr", 0.0, "n", "n0", attrs=(("f", 1.0), ("g", 1.0), ("h", 1.0))), "snapshots.max_attr_width (2)"),
    (Event("add_anchor", 0.0, "b", "b0", "n0", to="n"), "1 network pairs have anchors already, "
                                                        "snapshots.max_network_pairs (1): no anchors between 'b' and 'n'"),
])
def test_growth_beyond_a_limit_is_refused_and_changes_nothing(event, reason):
    from snapshots.graph import GraphLimits
    graph = TemporalGraphState(GraphLimits(max_networks=3, max_network_pairs=1, max_nodes_per_network=3,
                                           max_attr_width=2))
    for e in (edge("x", "y"), Event("set_attr", 0.0, "a", "x", attrs=(1.0, 2.0)), edge("z", "x"),
              Event("add_edge", 0.0, "b", "b0", "b1"), Event("set_attr", 0.0, "n", "n0", attrs=(("f", 1.0),)),
              Event("add_anchor", 0.0, "a", "z", "n0", to="n")):
        graph.apply(e)
    before = graph.to_state()
    with pytest.raises(StateConflict) as refused:
        graph.apply(event)
    assert reason in refused.value.reason
    after = graph.to_state()
    assert before["stats"] == after["stats"] and list(before["networks"]) == list(after["networks"])
    for name, network in before["networks"].items():
        assert network["registry"] == after["networks"][name]["registry"]
        assert network["attr_width"] == after["networks"][name]["attr_width"]
    assert [a["networks"] for a in before["anchors"]] == [a["networks"] for a in after["anchors"]]
    # Within the limits the same state takes more: known nodes, known columns, the anchored pair.
    graph.apply(edge("y", "z"))
    graph.apply(Event("set_attr", 0.0, "a", "y", attrs=(5.0,)))
    graph.apply(Event("add_anchor", 0.0, "a", "x", "n0", to="n"))
