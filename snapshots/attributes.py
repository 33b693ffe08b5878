"""The node attributes of one network: a float32 matrix grown in place, in one of two forms.

``set_attr`` events arrive one node at a time while snapshots want one dense ``(nodes, columns)`` matrix, so the
matrix is kept with spare capacity (doubling rows and columns as needed) and copied out only at a cut. A
network takes attributes either as vectors or as named fields, fixed by its first ``set_attr``: mixing them
would give one column two meanings, so the graph refuses the other form (:class:`snapshots.limits.StateConflict`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Sequence

import numpy as np


class AttrForm(StrEnum):
    VECTOR = "vector"  # the node's whole vector, replaced by each set_attr
    NAMED = "named"  # (name, value) fields, updated one by one; the network's schema maps names to columns


class AttributeStore:
    """Attribute rows by node index; rows beyond the registry and columns beyond ``width`` are zero spare."""

    __slots__ = ("form", "columns", "width", "values", "has_attrs")

    def __init__(self) -> None:
        self.form: AttrForm | None = None
        self.columns: dict[str, int] = {}  # named form only: the schema, in column order
        self.width = 0
        self.values = np.zeros((0, 0), np.float32)
        self.has_attrs = np.zeros(0, bool)

    def width_after(self, form: AttrForm, attrs: Sequence[Any]) -> int:
        """How many columns wide setting ``attrs`` of ``form`` would make the matrix."""
        if form == AttrForm.NAMED:
            return len(self.columns) + sum(name not in self.columns for name, _ in attrs)
        return max(self.width, len(attrs))

    def set(self, index: int, form: AttrForm, attrs: Sequence[Any]) -> None:
        """Vector form replaces the row (zero-padding a shorter vector); named form updates only the named
        fields, adding columns for new names in order of first appearance (fields never set stay 0)."""
        self.form = form
        if form == AttrForm.NAMED:
            columns = [self.columns.setdefault(name, len(self.columns)) for name, _ in attrs]
            self.width = len(self.columns)
            self._reserve(index + 1, self.width)
            self.values[index, columns] = [value for _, value in attrs]
        else:
            self.width = max(self.width, len(attrs))
            self._reserve(index + 1, self.width)
            row = self.values[index]
            row[: len(attrs)] = attrs
            row[len(attrs):] = 0.0
        self.has_attrs[index] = True

    def mark_alive(self, alive: np.ndarray) -> None:
        """Set ``alive`` for every node that has attributes."""
        rows = min(len(alive), len(self.has_attrs))
        alive[:rows] |= self.has_attrs[:rows]

    def matrix(self, num_nodes: int) -> np.ndarray | None:
        """A fresh ``(num_nodes, width)`` float32 copy, or ``None`` when the network never took attributes."""
        if self.form is None:
            return None
        rows = min(num_nodes, len(self.has_attrs))
        attrs = np.zeros((num_nodes, self.width), np.float32)
        attrs[:rows] = self.values[:rows, : self.width]
        return attrs

    @property
    def names(self) -> tuple[str, ...] | None:
        """The column names in the named form, else ``None``."""
        return tuple(self.columns) if self.form == AttrForm.NAMED else None

    def to_state(self, num_nodes: int) -> dict[str, Any]:
        rows = min(num_nodes, len(self.has_attrs))
        return {
            "attr_form": None if self.form is None else self.form.value,
            "attr_names": list(self.columns),
            "attr_width": self.width,
            "attr_values": self.values[:rows, : self.width].copy(),
            "has_attrs": self.has_attrs[:rows].copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AttributeStore:
        store = cls()
        store.form = None if state["attr_form"] is None else AttrForm(state["attr_form"])
        store.columns = {name: column for column, name in enumerate(state["attr_names"])}
        store.width = int(state["attr_width"])
        store.has_attrs = np.array(state["has_attrs"], bool)
        store.values = np.array(state["attr_values"], np.float32).reshape(len(store.has_attrs), store.width)
        return store

    def _reserve(self, rows: int, cols: int) -> None:
        cap_rows, cap_cols = self.values.shape
        if rows <= cap_rows and cols <= cap_cols:
            return
        new_rows = cap_rows if rows <= cap_rows else max(rows, 2 * cap_rows)
        new_cols = cap_cols if cols <= cap_cols else max(cols, 2 * cap_cols)
        values = np.zeros((new_rows, new_cols), np.float32)
        values[:cap_rows, :cap_cols] = self.values
        has_attrs = np.zeros(new_rows, bool)
        has_attrs[:cap_rows] = self.has_attrs
        self.values, self.has_attrs = values, has_attrs
