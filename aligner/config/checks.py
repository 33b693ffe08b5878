"""Whether a configuration can be used, and the settings that are small languages of their own (``service.pairs``,
the calibration candidates): each bad value is one :class:`ConfigError` naming the setting and where it came from.
"""

from __future__ import annotations

import typing
from typing import Any, Mapping
from urllib.parse import urlsplit

from aligner.config.display import mask_url
from aligner.config.settings import DEFAULT, Config, ConfigError, LogFormat, MetaAlgorithm, PlanSolver, Schedule
from stream.events import NAME_PATTERN

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDIS_SCHEMES = ("redis", "rediss", "unix")


def parse_pairs(spec: str) -> list[tuple[str, str]] | None:
    """The network pairs of ``service.pairs``, each sorted; ``None`` for ``"auto"``.

    >>> parse_pairs("tw:fb, fb:ig"), parse_pairs("auto")
    ([('fb', 'tw'), ('fb', 'ig')], None)
    >>> parse_pairs("twfb")
    Traceback (most recent call last):
    ...
    ValueError: pairs: expected 'auto' or 'net_a:net_b[,net_c:net_d]', got 'twfb'
    """
    if spec.strip() == "auto":
        return None
    out = []
    for item in spec.split(","):
        a, _, b = (part.strip() for part in item.strip().partition(":"))
        if not NAME_PATTERN.match(a) or not NAME_PATTERN.match(b) or a == b:
            raise ValueError(f"pairs: expected 'auto' or 'net_a:net_b[,net_c:net_d]', got {item.strip()!r}")
        out.append((min(a, b), max(a, b)))
    return out


def validate(cfg: Config, origins: Mapping[str, str] | None = None) -> None:
    """Raise :class:`ConfigError` for the first value ``cfg`` cannot run with; ``origins`` as
    :func:`aligner.config.loading.load_config_with_origins` returns them, to say where it came from."""
    def source(key: str) -> str:  # where a bad value came from, for the message
        origin = (origins or {}).get(key, DEFAULT)
        return "" if origin == DEFAULT else f" (from {'the command line' if origin == 'flag' else origin})"

    if cfg.service.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(f"service.log_level{source('service.log_level')} must be one of "
                          f"{', '.join(LOG_LEVELS)}, got {cfg.service.log_level!r}")
    try:
        parse_pairs(cfg.service.pairs)
    except ValueError as e:
        raise ConfigError(f"service.pairs{source('service.pairs')}: {e}; e.g. --pairs twitter:facebook") from None
    url = cfg.publish.redis_url
    if url and (urlsplit(url).scheme not in REDIS_SCHEMES or "://" not in url):
        example = mask_url("redis://" + url.split("://")[-1])
        raise ConfigError(f"publish.redis_url{source('publish.redis_url')} {mask_url(url)!r} is not a Redis URL: "
                          f"expected redis://HOST:PORT/DB (or rediss://, unix://), e.g. {example}")
    if cfg.meta.algorithm not in typing.get_args(MetaAlgorithm):
        raise ConfigError(f"meta.algorithm must be {_one_of(MetaAlgorithm)}, got {cfg.meta.algorithm!r}")
    if cfg.snapshots.window_seconds is None and cfg.snapshots.every_events is None:
        raise ConfigError("snapshots: set window_seconds, every_events or both")
    for name in ("max_networks", "max_network_pairs", "max_nodes_per_network", "max_attr_width"):
        bound = getattr(cfg.snapshots, name)
        if bound is not None and bound < 1:
            raise ConfigError(f"snapshots.{name}{source('snapshots.' + name)} must be >= 1 (or none), got {bound}")
    if cfg.service.log_format not in typing.get_args(LogFormat):
        raise ConfigError(f"service.log_format must be {_one_of(LogFormat)}, got {cfg.service.log_format!r}")
    for name in ("coalesce", "refresh"):
        value = getattr(cfg.service, name)
        if value not in typing.get_args(Schedule):
            raise ConfigError(f"service.{name} must be {_one_of(Schedule)}, got {value!r}")
    if cfg.service.metrics_port is not None and not 0 <= cfg.service.metrics_port <= 65535:
        raise ConfigError(f"service.metrics_port must be a TCP port 0-65535 (or none), got {cfg.service.metrics_port}")
    if cfg.service.max_backlog < 1:
        raise ConfigError(f"service.max_backlog must be >= 1, got {cfg.service.max_backlog}")
    if not 0.0 < cfg.meta.seed_fraction < 1.0:
        raise ConfigError(f"meta.seed_fraction must be in (0, 1), got {cfg.meta.seed_fraction}")
    if cfg.store.base_every < 1:
        raise ConfigError(f"store.base_every must be >= 1, got {cfg.store.base_every}")
    if cfg.store.retain_snapshots is not None and cfg.store.retain_snapshots < 1:
        raise ConfigError(f"store.retain_snapshots must be >= 1 (or none), got {cfg.store.retain_snapshots}")
    for name in ("calibration_marginals", "calibration_betas"):
        try:
            parse_setting_values(getattr(cfg.refine, name))
        except ValueError as e:
            raise ConfigError(f"refine.{name}{source('refine.' + name)}: {e}; e.g. 0.1,1,none") from None
    if cfg.refine.plan not in typing.get_args(PlanSolver):
        raise ConfigError(f"refine.plan{source('refine.plan')} must be {_one_of(PlanSolver)}, got {cfg.refine.plan!r}")
    for name in ("candidates", "structural_candidates", "candidate_growth"):
        if getattr(cfg.refine, name) < 0:
            raise ConfigError(f"refine.{name}{source('refine.' + name)} must be >= 0, got {getattr(cfg.refine, name)}")
    if cfg.refine.candidates + cfg.refine.structural_candidates < 1:
        raise ConfigError("refine.candidates and refine.structural_candidates are both 0: the sparse plan has no "
                          "candidates; set one of them >= 1")
    if not cfg.refine.calibration_growth > 1.0:
        raise ConfigError(f"refine.calibration_growth must be > 1, got {cfg.refine.calibration_growth}")
    if not 0.0 < cfg.refine.calibration_holdout < 1.0:
        raise ConfigError(f"refine.calibration_holdout must be in (0, 1), got {cfg.refine.calibration_holdout}")
    for name in ("top_k", "retain_versions"):
        if getattr(cfg.publish, name) < 1:
            raise ConfigError(f"publish.{name} must be >= 1")


def parse_setting_values(spec: str) -> list[float | None]:
    """A comma list of numbers for calibration candidates, ``none`` for "unset" (exact marginals).

    >>> parse_setting_values("0.1, 1,none"), parse_setting_values("")
    ([0.1, 1.0, None], [])
    >>> parse_setting_values("0.1,lots")
    Traceback (most recent call last):
    ...
    ValueError: expected a comma list of numbers or none, got 'lots'
    """
    out: list[float | None] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item.lower() == "none":
            out.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"expected a comma list of numbers or none, got {item!r}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError(f"expected positive finite numbers, got {item!r}")
        out.append(value)
    return out


def _one_of(choices: Any) -> str:
    """A Literal's values as a sentence says them.

    >>> _one_of(Schedule)
    'live, always or never'
    """
    values = typing.get_args(choices)
    return f"{', '.join(values[:-1])} or {values[-1]}"
