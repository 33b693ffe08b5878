"""Structured logging: one logfmt line per record by default, one JSON object per line with ``--log-format json``.

Extra fields passed as ``log.info("...", extra={"fields": {...}})`` become JSON keys (or ``key=value`` pairs in
text mode), so a log shipper can index snapshot ids, latencies and counters without parsing sentences. Text mode
is valid logfmt, which people read and tools (Loki, Grafana, ``hl``, ``lnav``) parse: nested values are flattened
into dotted keys instead of printed as Python reprs, and long values are cut. A record may also carry
``extra={"detail": {...}}``: always in JSON, in text only at ``--log-level debug``, so that an INFO line says what
a person needs (a snapshot aligned: which path, why, how good, how long) in one screen line.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from typing import Any, Iterator, Literal

MAX_VALUE_CHARS = 120  # a longer field value (a list of ids, an error text) is cut to this, with "…"


def iso_time(seconds: float, *, precision: Literal["auto", "seconds", "milliseconds"] = "auto") -> str:
    """Unix seconds as ISO-8601 in UTC, the form every time a person reads is shown in; ``auto``: to the second
    unless the time has a fraction.

    >>> iso_time(1700000000), iso_time(1700000000.25), iso_time(1.7, precision="seconds")
    ('2023-11-14T22:13:20Z', '2023-11-14T22:13:20.250Z', '1970-01-01T00:00:01Z')
    """
    if not math.isfinite(seconds):
        return str(seconds)
    if precision == "auto":
        precision = "seconds" if float(seconds).is_integer() else "milliseconds"
    whole = int(math.floor(seconds))
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    if precision == "milliseconds":
        text += f".{min(999, int(round((seconds - whole) * 1000))):03d}"
    return text + "Z"


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(f"{prefix}.{key}" if prefix else str(key), inner)
    else:
        yield prefix, value


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (ESC, CR, newlines, other control and format
    characters) written as its Python escape, so an id from the data cannot move the cursor, recolour or
    overwrite what is shown, or split a log line.

    >>> printable("alice"), printable("evil\\x1b[2J\\rok\\n"), printable("naïve")
    ('alice', 'evil\\\\x1b[2J\\\\rok\\\\n', 'naïve')
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def logfmt_value(value: Any, limit: int | None = MAX_VALUE_CHARS) -> str:
    """One value as logfmt: bare when it can be, else double-quoted with escapes; lists as compact JSON.

    >>> [logfmt_value(v) for v in (3, 0.25, True, None, "ok", "two words", 'say "hi"', [1, 2])]
    ['3', '0.25', 'true', 'null', 'ok', '"two words"', '"say \\\\"hi\\\\""', '"[1,2]"']

    Control characters from the data (a node id, a reason) are escaped: one record stays one line on a terminal.

    >>> print(logfmt_value("one\\ntwo\\r\\x1b[2Jthree"))
    "one\\ntwo\\r\\x1b[2Jthree"
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, (list, tuple, set)):
        text = json.dumps(sorted(value) if isinstance(value, set) else list(value), separators=(",", ":"),
                          default=str)
    else:
        text = str(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    if text and not any(c in text for c in ' ="\\') and text.isprintable() and not isinstance(value, (list, tuple, set)):
        return text
    return '"' + printable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def logfmt(fields: dict[str, Any]) -> str:
    """``key=value`` pairs, nested dicts flattened into dotted keys.

    >>> logfmt({"msg": "snapshot cut", "snapshot": 3, "position": {"file": "/tmp/e.jsonl", "line": 10}})
    'msg="snapshot cut" snapshot=3 position.file=/tmp/e.jsonl position.line=10'
    """
    return " ".join(f"{key.replace(' ', '_')}={logfmt_value(value, None if key == 'msg' else MAX_VALUE_CHARS)}"
                    for name, raw in fields.items() for key, value in _flatten(name, raw))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
            **getattr(record, "detail", {}),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """logfmt: ``ts=... level=... msg="..." key=value ...``; a traceback (``--debug``) follows on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        detail = getattr(record, "detail", {}) if logging.getLogger(record.name).isEnabledFor(logging.DEBUG) else {}
        line = logfmt({"ts": iso_time(record.created, precision="seconds"), "level": record.levelname.lower(),
                       "msg": record.getMessage(), **getattr(record, "fields", {}), **detail})
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line



def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
