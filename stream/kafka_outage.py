"""A Kafka outage told clearly: one warning when brokers stop answering, a reminder now and then, one line when
they answer again.

kafka-python reconnects by itself, with backoff (``reconnect_backoff_ms`` → ``reconnect_backoff_max_ms``), and
its polls keep blocking for their timeout meanwhile, so nothing spins; but it says little. On idle polls the
source asks :class:`OutageWatch` to probe the brokers directly, at most every ``PROBE_EVERY_S``.
"""

from __future__ import annotations

import logging
import time

from stream.kafka_settings import unreachable

log = logging.getLogger("stream.kafka_source")  # the source's one logger (see stream.kafka_source)


class OutageWatch:
    """Whether the brokers of ``servers`` answer, as far as the last probe knows.

    ``probe`` False (a proxy hides the brokers from a direct probe): never probes, always reachable.
    """

    PROBE_EVERY_S = 2.0  # how often an idle consumer checks that a broker still answers, to log outages clearly
    OUTAGE_REMINDER_S = 60.0

    def __init__(self, url: str, servers: list[str], backoff_max_s: float, probe: bool = True):
        self._url = url
        self._servers = servers
        self._backoff_max_s = backoff_max_s
        self._probe = probe
        self._outage_since: float | None = None
        self._next_probe = 0.0
        self._last_reminder = 0.0

    @property
    def reachable(self) -> bool:
        """False while an outage is being reported."""
        return self._outage_since is None

    def idle(self) -> None:
        """A poll came back empty: check now and then that a broker answers."""
        now = time.monotonic()
        if not self._probe or now < self._next_probe:
            return
        self._next_probe = now + self.PROBE_EVERY_S
        errors = unreachable(self._servers, 1.0)
        if not errors:
            self.answered()
            return
        if self._outage_since is None:
            self._outage_since = self._last_reminder = now
            log.warning("Kafka unreachable for %s (%s); retrying with backoff up to %.0f s; this worker keeps its "
                        "state and resumes where it stopped", self._url, "; ".join(errors), self._backoff_max_s)
        elif now - self._last_reminder >= self.OUTAGE_REMINDER_S:
            self._last_reminder = now
            log.warning("Kafka still unreachable for %s after %.0f s (%s)", self._url, now - self._outage_since,
                        "; ".join(errors))

    def answered(self) -> None:
        """The cluster answered (records came, or a probe got through): end the outage being reported."""
        if self._outage_since is not None:
            log.info("Kafka reachable again for %s after %.0f s", self._url, time.monotonic() - self._outage_since)
            self._outage_since = None
