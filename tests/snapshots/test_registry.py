import json

import pytest

from snapshots.registry import NodeRegistry


def test_indices_are_dense_stable_and_append_only():
    registry = NodeRegistry()
    assert [registry.index(n) for n in ["b", "a", "b", "c", "a"]] == [0, 1, 0, 2, 1]
    assert registry.ids == ("b", "a", "c")
    assert len(registry) == 3 and "a" in registry and "z" not in registry
    assert list(registry) == ["b", "a", "c"]


def test_lookup_without_creating():
    registry = NodeRegistry(["x"])
    assert registry.get("x") == 0 and registry.get("y") is None
    with pytest.raises(KeyError, match="'y'"):
        registry.index("y", create=False)
    assert len(registry) == 1


def test_ids_cache_follows_growth():
    registry = NodeRegistry()
    registry.index("a")
    assert registry.ids == ("a",)
    registry.index("b")
    assert registry.ids == ("a", "b")


def test_state_round_trips_through_json():
    registry = NodeRegistry(["ü", "7", "x y"])
    restored = NodeRegistry.from_state(json.loads(json.dumps(registry.to_state())))
    assert restored.ids == registry.ids
    assert restored.index("new") == 3 and restored.index("7") == 1


def test_state_with_duplicate_ids_is_refused():
    with pytest.raises(ValueError, match="duplicate"):
        NodeRegistry.from_state({"ids": ["a", "a"]})
