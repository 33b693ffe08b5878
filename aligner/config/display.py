"""The configuration shown to people: secrets hidden (:func:`masked`, :func:`mask_url`, for logs and ``dynalign
status`` too) and the whole as TOML with where each value came from (``dynalign config show``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Mapping

from aligner.config.settings import Config

SECRET_KEYS = {("stream", "kafka_sasl_password"), ("stream", "kafka_ssl_password")}
SECRET_URL_KEYS = {("publish", "redis_url")}


def as_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(cfg)


def masked(cfg: Config) -> dict[str, dict[str, Any]]:
    """The configuration with secrets hidden, for printing and logs."""
    out = as_dict(cfg)
    for section, key in SECRET_KEYS:
        if out[section][key]:
            out[section][key] = "***"
    for section, key in SECRET_URL_KEYS:
        if out[section][key]:
            out[section][key] = mask_url(out[section][key])
    return out


def to_toml(cfg: Config, origins: Mapping[str, str] | None = None) -> str:
    """The configuration, secrets masked, as a TOML file, each value followed by where it came from.

    TOML has no null: an unset value whose default is unset too is a comment; one that was unset explicitly is
    ``"none"``, which every setting reads as unset (so the output reads back as the same configuration).

    >>> cfg = Config()
    >>> cfg.snapshots.window_seconds, cfg.snapshots.every_events = None, 10
    >>> print(to_toml(cfg).split("\\n\\n")[1])
    [snapshots]
    window_seconds = "none"
    every_events = 10
    lateness_seconds = 0.0
    dedup_capacity = 1000000
    # edge_ttl_seconds: unset
    max_jump_seconds = 31536000.0
    max_future_seconds = 86400.0
    max_networks = 64
    max_network_pairs = 64
    max_nodes_per_network = 2000000
    max_attr_width = 10000
    """
    defaults = as_dict(Config())
    lines = []
    for section, values in masked(cfg).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            origin = (origins or {}).get(f"{section}.{key}")
            note = f"  # {origin}" if origin else ""
            if value is None and defaults[section][key] is None:
                lines.append(f"# {key}: unset{note.replace('  #', ',', 1)}")
            else:
                lines.append(f"{key} = {_toml_value(value)}{note}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return json.dumps(value)  # JSON's booleans, numbers and escaped strings are TOML's too


def mask_url(url: str) -> str:
    """Hide the password in a URL.

    >>> mask_url("rediss://user:secret@host:6380/0")
    'rediss://user:***@host:6380/0'

    A password holding ``@`` or ``/``, or given in the query string (redis-py reads ``?password=``), too:

    >>> mask_url("redis://:p@ss/w@host:6379/0?password=x&db=1&ssl_password=y")
    'redis://:***@host:6379/0?password=***&db=1&ssl_password=***'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, qmark, query = rest.partition("?")
    at = rest.rfind("@")  # the host follows the last @: a password may hold @ and / itself
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        rest = (f"{user}:***" if colon else user) + rest[at:]
    query = re.sub(r"((?:^|&)[^=&]*(?:pass|secret|token)[^=&]*=)[^&]*", r"\1***", query, flags=re.IGNORECASE)
    return f"{scheme}://{rest}{qmark}{query}"
