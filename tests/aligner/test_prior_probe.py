"""benchmarks/prior_probe.py, run as a user runs it: the structure it reports is the structure the pair has."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.synthetic import write_pair_dataset

PROBE = Path(__file__).resolve().parents[2] / "benchmarks" / "prior_probe.py"


def probe(folder: Path) -> str:
    done = subprocess.run([sys.executable, str(PROBE), str(folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_permuted_copy_keeps_every_anchored_edge_and_a_noisy_one_loses_its_share(tmp_path):
    exact = probe(write_pair_dataset(tmp_path / "exact", n=200, edge_keep=1.0, attributes=False))
    noisy = probe(write_pair_dataset(tmp_path / "noisy", n=200, edge_keep=0.5, attributes=False))
    kept, total = map(int, re.search(r"also in the target: (\d+)/(\d+)", exact).groups())
    assert kept == total > 0
    kept, total = map(int, re.search(r"also in the target: (\d+)/(\d+)", noisy).groups())
    assert 0.35 < kept / total < 0.65  # each edge kept with p = 0.5
    hits = lambda out: float(re.search(r"the sketch's\)\s+Hits@1 ([0-9.]+)", out).group(1))  # noqa: E731
    assert hits(exact) > hits(noisy)
    assert hits(exact) > 0.5
