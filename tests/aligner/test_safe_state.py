"""Loading a state can run no code: the aligner's state is plain data, and a pickle in its place is refused."""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from aligner.config import load_config
from aligner.engine.aligner import Aligner
from aligner.engine.drift import QualityMonitor
from aligner.engine.state_codec import StateFormatError, decode, encode
from aligner.tools.evaluation import load_aligner
from snapshots.store import SnapshotStore

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """What an attacker puts in a pickle: unpickling it calls ``os.system`` with their command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_states(marker: Path) -> dict[str, bytes]:
    """The ways a state file can carry code: a raw pickle, torch.save's zip, and this codec's own layout with
    an object array (np.save pickles those) in place of a tensor."""
    raw = __import__("pickle").dumps({"learner": Payload(marker)})
    buf = io.BytesIO()
    torch.save({"learner": None, "monitor": Payload(marker)}, buf)
    ours = io.BytesIO()
    with zipfile.ZipFile(ours, "w") as zf:
        zf.writestr("tree.json", '{"format": "dynalign-state/1", "tree": {"learner": {"$tensor": 0}}}')
        entry = io.BytesIO()
        np.save(entry, np.array([Payload(marker)], dtype=object), allow_pickle=True)
        zf.writestr("0.npy", entry.getvalue())
    return {"pickle": raw, "torch.save": buf.getvalue(), "object array": ours.getvalue()}


@pytest.mark.parametrize("kind", ["pickle", "torch.save", "object array"])
def test_a_crafted_state_is_refused_without_running_anything(tmp_path, kind):
    marker = tmp_path / "pwned"
    data = crafted_states(marker)[kind]
    with pytest.raises(StateFormatError):
        Aligner.__new__(Aligner).load_state_bytes(data)
    assert not marker.exists()


def test_a_crafted_checkpoint_is_refused_by_the_commands_that_load_one(tmp_path):
    """The sha256 in a checkpoint proves integrity, not authorship: the attacker writes a valid one."""
    marker = tmp_path / "pwned"
    SnapshotStore(tmp_path / "state").write_checkpoint({"aligner": crafted_states(marker)["torch.save"]})
    with pytest.raises(StateFormatError, match="pickled aligner state .* refused"):
        load_aligner(tmp_path / "state", load_config(env={}))
    assert not marker.exists()


def test_the_codec_round_trips_what_the_aligner_stores():
    tree = {"t": torch.tensor([[1.5, 2.0]]), "b": torch.tensor([True, False]), "a": np.arange(4, dtype=np.int32),
            "raw": b"\x00\x01", "keys": {(1, 2): "x", 3: None}, "nested": [("a", 1), {"$odd": 2.5}],
            "big": 2**100, "nan": float("nan")}
    back = decode(encode(tree))
    assert torch.equal(back["t"], tree["t"]) and back["b"].dtype == torch.bool
    assert back["a"].dtype == np.int32 and back["a"].tolist() == [0, 1, 2, 3]
    assert back["raw"] == b"\x00\x01" and back["keys"] == {(1, 2): "x", 3: None}
    assert back["nested"] == [("a", 1), {"$odd": 2.5}] and back["big"] == 2**100 and np.isnan(back["nan"])


def test_tampered_structure_is_a_format_error_not_a_crash():
    good = encode({"x": torch.zeros(2)})
    for tree in ('{"format": "dynalign-state/1", "tree": {"x": {"$eval": 1}}}',
                 '{"format": "dynalign-state/1", "tree": {"x": {"$tensor": 7}}}',
                 '{"format": "dynalign-state/1", "tree": {"$dict": [[[1], 2]]}}',
                 '{"format": "other", "tree": {}}'):
        buf = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(buf, "w") as dst:
            for name in src.namelist():
                dst.writestr(name, tree if name == "tree.json" else src.read(name))
        with pytest.raises(StateFormatError):
            decode(buf.getvalue())
    with pytest.raises(StateFormatError):
        decode(b"not a state at all")


def test_the_drift_monitor_restores_exactly_and_goes_on_deciding_the_same():
    monitor = QualityMonitor(delta=0.002, shift_threshold=0.05)
    rng = np.random.default_rng(0)
    for rank in rng.integers(1, 3, size=150):
        monitor.learn_one(int(rank), pair="a|b")
    for shift in rng.random(8) * 0.01:
        monitor.learn_shift(float(shift))
    restored = QualityMonitor.from_state(decode(encode(monitor.state())))
    assert restored.metrics() == monitor.metrics()
    for rank in rng.integers(20, 60, size=200):  # quality collapses: both must flag it on the same anchor
        monitor.learn_one(int(rank))
        restored.learn_one(int(rank))
        assert (restored.drift_pending, restored.drifts) == (monitor.drift_pending, monitor.drifts)
    for shift in (0.5, 0.6, 0.7):
        monitor.learn_shift(shift)
        restored.learn_shift(shift)
    assert restored.metrics() == monitor.metrics() and monitor.drifts >= 1


def test_no_package_pickles_or_loads_unsafely():
    """The packages never import pickle or load with pickling allowed (docstrings may say "no pickles")."""
    unsafe = re.compile(r"^\s*(import pickle|from pickle|import cPickle)|pickle\.loads?\(|weights_only\s*=\s*False"
                        r"|allow_pickle\s*=\s*True|torch\.load\((?![^)]*weights_only\s*=\s*True)", re.M)
    found = [f"{path.relative_to(ROOT)}: {m.group(0).strip()}"
             for package in ("aligner", "stream", "snapshots") for path in sorted((ROOT / package).rglob("*.py"))
             for m in unsafe.finditer(path.read_text())]
    assert not found, found


def test_equal_states_encode_to_equal_bytes_at_any_time(monkeypatch):
    """The zip entries carry no wall-clock stamp (it made two encodings of one state differ across a
    two-second boundary)."""
    import time as time_module

    import numpy as np

    from aligner.engine.state_codec import encode

    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": 3}
    first = encode(state)
    later = time_module.time() + 86_400
    monkeypatch.setattr(time_module, "time", lambda: later)
    monkeypatch.setattr(time_module, "localtime", lambda *_: time_module.gmtime(later))
    assert encode(state) == first
