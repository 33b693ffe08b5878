"""Log messages of dynalign's own loggers, for tests that wait on or assert what the service logged.

Only our records are formatted: kafka-python's carry live objects as arguments (a transport whose ``__str__``
reads a socket its network thread may be closing), so formatting them from the test thread can raise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

OURS = ("stream", "snapshots", "aligner", "dynalign")


def our_messages(records: Iterable[logging.LogRecord]) -> list[str]:
    """The formatted messages of the records that dynalign's packages logged, in order."""
    return [r.getMessage() for r in list(records) if r.name.split(".")[0] in OURS]


def record_fields(record: logging.LogRecord) -> dict:
    """Every field a record carries: the headline ``fields`` and the ``detail`` that text logs show only at DEBUG."""
    return {**getattr(record, "fields", {}), **getattr(record, "detail", {})}
