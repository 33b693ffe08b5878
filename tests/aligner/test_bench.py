"""The benchmark's per-seed processes: their result comes back, and none outlives a killed bench."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aligner.bench.static import in_own_process

ROOT = Path(__file__).resolve().parents[2]


def test_a_seed_process_returns_its_result_and_reports_its_failure():
    assert in_own_process(max, [3, 1, 2]) == 3
    with pytest.raises(RuntimeError, match="ValueError"):
        in_own_process(max, [])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_a_seed_process_ends_with_a_killed_bench(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from aligner.bench.static import in_own_process
        if __name__ == "__main__":
            in_own_process(time.sleep, 120)
    """))
    bench = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    child = None
    deadline = time.monotonic() + 60
    while child is None and time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-P", str(bench.pid), "-f", "spawn_main"], capture_output=True,
                               text=True).stdout.split()
        child = int(found[0]) if found else None
        time.sleep(0.2)
    assert child is not None, "the seed process never started"
    time.sleep(3)  # past its start-up, into the sleep
    os.kill(bench.pid, signal.SIGKILL)
    bench.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not _running(child):
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the seed process outlived the bench")


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by whoever adopted it, maybe never in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
