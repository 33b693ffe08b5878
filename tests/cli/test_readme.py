"""The README's "Align your own networks" walkthrough, run as written, in a real terminal.

A newcomer copies these lines first; a renamed flag or a changed output must fail here, not in their shell.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from tests.aligner.test_service import FAST
from tests.terminal import REPO, in_terminal

# Lines a test cannot run as they stand: the venv is this interpreter's, and a `tail -f` never ends.
NOT_RUN = ("source ", "tail -f ")


def walkthrough() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Align your own networks"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_walkthrough_runs_as_written(tmp_path):
    lines = walkthrough()
    assert any(line.startswith("dynalign run ") for line in lines) and any("query" in line for line in lines)
    (tmp_path / "aligner").mkdir()
    (tmp_path / "aligner" / "sample").symlink_to(REPO / "aligner" / "sample")  # the README runs in the repo root
    bin_dir = Path(sys.executable).parent
    env = {**FAST, "DYNALIGN_SERVICE_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO)}
    screens = {}
    for line in lines:
        if line.startswith(NOT_RUN):
            continue
        assert shlex.split(line)[0] == "dynalign", line
        run = in_terminal(["bash", "-c", line], env=env, cwd=tmp_path, timeout_s=300)
        assert run.returncode == 0 and "Traceback" not in run.screen, f"{line}\n{run.text[-3000:]}"
        screens[line.split()[1]] = run.text
    assert "versions published" in screens["run"]
    # Nodes 3 and 7 of the sample are anchored to 49 and 158 (its test.tsv): both are among the candidates shown.
    assert "online:3 -> offline" in screens["query"] and "online:7 -> offline" in screens["query"]
    assert re.search(r"^\s+1\. 49\s", screens["query"], re.M), screens["query"]
    assert "pair offline|online" in screens["status"]
    assert "known anchor pair(s) around both" in screens["explain"]
