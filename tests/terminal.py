"""The ``dynalign`` command as a person runs it: in a real (pseudo-)terminal, not through a pipe.

Progress bars, colours and prompts exist only when stdout or stderr is a TTY, so a command that passes every
pipe-driven test can still crash for the first person who types it (a tqdm bar without a total has no truth
value, and ``if bar:`` raised in ``dynalign demo`` on every terminal). :func:`in_terminal` runs a command with
stdin, stdout and stderr on the slave side of a pty, as ``script -qec`` would, and returns what the screen showed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class TerminalRun:
    returncode: int
    screen: str  # everything written to the terminal, stdout and stderr interleaved, with \r\n line ends

    @property
    def text(self) -> str:
        """The screen with carriage returns resolved the simple way: each line as it was last redrawn."""
        lines = []
        for line in self.screen.replace("\r\n", "\n").split("\n"):
            lines.append(line.rsplit("\r", 1)[-1])
        return "\n".join(lines)


def dynalign(*args: str) -> list[str]:
    """The console command, run by this interpreter (the venv's ``dynalign`` entry point does the same)."""
    return [sys.executable, "-m", "aligner.cli", *args]


def in_terminal(cmd: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 300.0,
                cwd: str | Path | None = None, columns: int = 100, stdin_text: str | None = None) -> TerminalRun:
    """Run ``cmd`` with its standard streams on a pseudo-terminal of ``columns`` columns; wait for it to end.

    ``stdin_text`` is typed into the terminal after start (then end-of-file, ^D), for commands that read stdin.
    Raises ``TimeoutError`` (after killing the process) past ``timeout_s``, with the screen so far.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, close_fds=True,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": str(columns), **(env or {})},
                            start_new_session=True)
    os.close(slave)
    if stdin_text is not None:
        os.write(master, stdin_text.encode() + b"\x04")
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise TimeoutError(f"{cmd} ran past {timeout_s} s; screen:\n" + b"".join(chunks).decode(errors="replace")[-4000:])
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError as e:  # EIO: the slave side closed (every process holding it ended)
                    if e.errno != errno.EIO:
                        raise
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                # Exited; drain what is left without blocking.
                while select.select([master], [], [], 0.05)[0]:
                    try:
                        data = os.read(master, 65536)
                    except OSError:
                        data = b""
                    if not data:
                        break
                    chunks.append(data)
                break
    finally:
        os.close(master)
    return TerminalRun(proc.wait(), b"".join(chunks).decode(errors="replace"))
