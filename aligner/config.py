"""Configuration: one TOML file, then ``DYNALIGN_*`` environment variables, then CLI flags, each overriding the last.

Every setting lives in one typed dataclass section, so the TOML keys, the environment variable names and
``dynalign config show`` all come from the same place. An environment variable is named
``DYNALIGN_<SECTION>_<KEY>`` in upper case (``DYNALIGN_PUBLISH_REDIS_URL``, ``DYNALIGN_SNAPSHOTS_WINDOW_SECONDS``).

>>> cfg = load_config(env={"DYNALIGN_ADAPT_STEPS": "7", "DYNALIGN_PUBLISH_REDIS_URL": "redis://:pw@h:6379/0"})
>>> cfg.adapt.steps, cfg.publish.redis_url
(7, 'redis://:pw@h:6379/0')
>>> masked(cfg)["publish"]["redis_url"]
'redis://:***@h:6379/0'
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from stream.events import NAME_PATTERN

ENV_PREFIX = "DYNALIGN_"
CONFIG_ENV = "DYNALIGN_CONFIG"
# DYNALIGN_* variables that are not settings but are read elsewhere (the test suite's external Kafka), so that
# the warning on unknown ones does not cry wolf.
OTHER_ENV = frozenset({"DYNALIGN_TEST_KAFKA"})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDIS_SCHEMES = ("redis", "rediss", "unix")
DEFAULT = "default"  # the origin of a value nobody set (file, environment and flag origins name their source)


@dataclass
class StreamConfig:
    batch_size: int = 2000
    poll_timeout_s: float = 0.5
    dead_letter_topic: str | None = "{topic}.deadletter"  # for Kafka sources; {topic}: the source topic; "" = none
    kafka_group: str = "dynalign"
    kafka_instance_id: str | None = None  # static group membership: a restarted worker keeps its partitions
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_ssl_password: str | None = None
    kafka_session_timeout_ms: int = 10_000
    kafka_heartbeat_interval_ms: int = 3_000
    kafka_max_poll_interval_ms: int = 300_000
    kafka_check_crcs: bool = True  # off: ~2x faster consumption where the crc32c C extension is not installed
    kafka_connect_timeout_s: float = 60.0


@dataclass
class SnapshotsConfig:
    window_seconds: float | None = 3600.0
    every_events: int | None = None
    lateness_seconds: float = 0.0
    dedup_capacity: int = 1_000_000
    edge_ttl_seconds: float | None = None  # sliding window: edges with no interaction for this long expire
    # An event this far past the newest event time, or past the wall clock, is a dead letter (none: no bound).
    max_jump_seconds: float | None = 365 * 86400.0
    max_future_seconds: float | None = 86400.0
    # How far events may grow the state; an event beyond is a dead letter naming the setting (none: no bound).
    max_networks: int | None = 64
    max_network_pairs: int | None = 64  # network pairs with anchors (each is aligned under pairs = "auto")
    max_nodes_per_network: int | None = 2_000_000
    max_attr_width: int | None = 10_000  # attribute columns per network


@dataclass
class StoreConfig:
    """The state dir's history (see docs/snapshots.md)."""

    base_every: int = 10  # a full snapshot (and alignment record) at least every this many; deltas in between
    retain_snapshots: int | None = None  # keep about the newest this many snapshots (whole base groups); None: all


@dataclass
class ModelConfig:
    hidden: int = 64
    embedding_dim: int = 64
    position_dim: int = 256
    rwr_restart: float = 0.15
    rwr_steps: int = 20
    cheb_k: int = 2
    temperature: float = 0.1


@dataclass
class MetaConfig:
    algorithm: str = "metasgd"  # maml | fomaml | reptile | metasgd | multitask (a non-meta baseline)
    inner_steps: int = 3
    inner_lr: float = 0.05
    meta_lr: float = 0.003
    reptile_step: float = 0.5
    warmup_iterations: int = 60
    iterations_per_snapshot: int = 6
    tasks_per_iteration: int = 2
    task_pool: int = 4
    seed_fraction: float = 0.7


@dataclass
class AdaptConfig:
    steps: int = 5
    incremental: bool = True  # False: every snapshot takes the adaptation path
    every_snapshots: int = 10  # adapt at least this often (0: only on anchor growth or drift)
    anchor_growth: float = 1.0  # adapt when the known anchors grew by this fraction (1.0: doubled) since the last one
    drift_delta: float = 0.002  # ADWIN confidence on the reciprocal ranks of new anchors
    shift_threshold: float = 0.05  # Page-Hinkley threshold on the mean embedding shift of re-encoded nodes
    anchor_refresh: float = 0.05  # incremental path: new anchors join the position coordinates once they add
    # this fraction to the known ones (0: at once); each joining re-encodes the networks and re-solves the plan
    embedding_tolerance: float = 0.01  # incremental path: re-rank a node reached by a change only if its unit
    # embedding moved by more than this (L2; bounds the error of any of its cosine scores); 0: exact


@dataclass
class RefineConfig:
    enabled: bool = True
    tau: float = 0.05
    beta: float = 0.3
    rounds: int = 10
    warm_rounds: int = 2  # rounds of a re-solve started from the previous plan (new anchors); 0: solve from scratch
    warm_max_change: float = 0.05  # ...only while the edges added or removed since everything was last aligned
    # afresh are under this fraction of each network's; past it, everything is aligned afresh (no training)
    warm_realignment: bool = False  # a realignment's first plan starts from the last plan (warm_rounds rounds)
    sinkhorn_iters: int = 5
    marginal_weight: float | None = 0.1  # KL weight of relaxed (unbalanced) marginals; None = exact marginals
    feature_weight: float = 1.0  # weight of untrained evidence (anchor positions, attributes) in the prior
    max_cells: int = 120_000_000  # larger pairs fall back to plain embedding similarity (dense plan memory)
    # Self-training on adaptation: mutual top-1 pairs of the plan with at least this confidence (row softmax)
    # join the known anchors as seeds and labels, and the model is adapted and the plan solved again, this many
    # times; 0 rounds: off.
    pseudo_anchor_confidence: float = 0.5
    pseudo_anchor_rounds: int = 1
    # Self-calibration (aligner.matching.calibration): at adaptation, hold back this fraction of the known anchors, adapt
    # on the rest and keep the candidate marginal_weight x beta whose plan ranks the held-back ones best; again
    # once the anchors have grown calibration_growth times since. Off, or fewer than calibration_min_anchors held
    # back: the settings above stand. Candidates are comma lists ("none": exact marginals); empty: the setting
    # above alone.
    calibrate: bool = True
    calibration_holdout: float = 0.2
    calibration_min_anchors: int = 20
    calibration_growth: float = 4.0
    calibration_marginals: str = "0.1,1,none"
    calibration_betas: str = ""


@dataclass
class PublishConfig:
    redis_url: str | None = None  # None: start the embedded redis-server under the state dir
    namespace: str = "dynalign"
    top_k: int = 10
    retain_versions: int = 3


@dataclass
class ServiceConfig:
    state_dir: str = ".dynalign/state"
    pairs: str = "auto"  # "auto" (every pair of networks with anchors) or "a:b,a:c"
    seed: int = 0
    log_format: str = "text"  # text | json
    log_level: str = "INFO"
    threads: int = 0  # torch intra-op threads of the aligner; 0 = all cores but one (the polling thread's)
    coalesce: str = "live"  # align waiting snapshots as one catch-up step: live (Kafka, stdin) | always | never
    max_backlog: int = 4  # snapshots waiting for the aligner before the source pauses (ingest goes on meanwhile)
    refresh: str = "live"  # heavy steps (adaptation, realignment, anchors joining) on a copy of the aligner in the
    # background while incremental steps keep publishing: live (Kafka, stdin) | always | never
    metrics_port: int | None = None  # serve Prometheus /metrics and /healthz here (0: any free port); None: off
    metrics_host: str = "127.0.0.1"  # the address it binds; 0.0.0.0 lets other hosts (a Prometheus) scrape it


@dataclass
class Config:
    stream: StreamConfig = field(default_factory=StreamConfig)
    snapshots: SnapshotsConfig = field(default_factory=SnapshotsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)


SECRET_KEYS = {("stream", "kafka_sasl_password"), ("stream", "kafka_ssl_password")}
SECRET_URL_KEYS = {("publish", "redis_url")}


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the setting and where it came from."""


def sections() -> dict[str, type]:
    return {f.name: f.default_factory().__class__ for f in dataclasses.fields(Config)}  # type: ignore[misc]


def env_names() -> list[str]:
    """Every environment variable the configuration understands."""
    names = [CONFIG_ENV]
    for section, cls in sections().items():
        names += [f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}" for f in dataclasses.fields(cls)]
    return names


def unknown_env(env: Mapping[str, str] | None = None) -> list[str]:
    """A warning for every ``DYNALIGN_*`` variable no setting reads (a misspelt one silently changes nothing),
    with the closest known name when there is one.

    >>> unknown_env({"DYNALIGN_ADAPT_STEP": "3", "DYNALIGN_ADAPT_STEPS": "3", "HOME": "/"})
    ['unknown environment variable DYNALIGN_ADAPT_STEP ignored; did you mean DYNALIGN_ADAPT_STEPS?']
    """
    env = os.environ if env is None else env
    known = set(env_names()) | OTHER_ENV
    out = []
    for name in sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in known):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        out.append(f"unknown environment variable {name} ignored"
                   + (f"; did you mean {close[0]}?" if close else " (see `dynalign config show` for the settings)"))
    return out


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective configuration. ``overrides`` maps ``"section.key"`` to values (CLI flags; None = unset)."""
    return load_config_with_origins(path, env, overrides)[0]


def load_config_with_origins(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Config, dict[str, str]]:
    """:func:`load_config`, and where each ``"section.key"`` came from: ``"default"``, ``"file PATH"``,
    ``"environment NAME"`` or ``"flag"`` (the last one to set it)."""
    env = os.environ if env is None else env
    cfg = Config()
    origins = {f"{section}.{f.name}": DEFAULT for section, cls in sections().items() for f in dataclasses.fields(cls)}
    path = path or env.get(CONFIG_ENV)
    if path:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        for section, values in data.items():
            if section not in sections() or not isinstance(values, dict):
                raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(sections())})")
            for key, value in values.items():
                _set(cfg, section, key, value, f"{path} [{section}] {key}")
                origins[f"{section}.{key}"] = f"file {path}"
    for section, cls in sections().items():
        for f in dataclasses.fields(cls):
            name = f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
            if name in env:
                _set(cfg, section, f.name, env[name], f"environment variable {name}")
                origins[f"{section}.{f.name}"] = f"environment {name}"
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            _set(cfg, section, key, value, f"option for {dotted}")
            origins[dotted] = "flag"
    validate(cfg, origins)
    return cfg, origins


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
    if cfg.meta.algorithm not in ("maml", "fomaml", "reptile", "metasgd", "multitask"):
        raise ConfigError("meta.algorithm must be maml, fomaml, reptile, metasgd or multitask, "
                          f"got {cfg.meta.algorithm!r}")
    if cfg.snapshots.window_seconds is None and cfg.snapshots.every_events is None:
        raise ConfigError("snapshots: set window_seconds, every_events or both")
    for name in ("max_networks", "max_network_pairs", "max_nodes_per_network", "max_attr_width"):
        bound = getattr(cfg.snapshots, name)
        if bound is not None and bound < 1:
            raise ConfigError(f"snapshots.{name}{source('snapshots.' + name)} must be >= 1 (or none), got {bound}")
    if cfg.service.log_format not in ("text", "json"):
        raise ConfigError(f"service.log_format must be text or json, got {cfg.service.log_format!r}")
    if cfg.service.coalesce not in ("live", "always", "never"):
        raise ConfigError(f"service.coalesce must be live, always or never, got {cfg.service.coalesce!r}")
    if cfg.service.refresh not in ("live", "always", "never"):
        raise ConfigError(f"service.refresh must be live, always or never, got {cfg.service.refresh!r}")
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

    >>> print(to_toml(load_config(env={"DYNALIGN_SNAPSHOTS_WINDOW_SECONDS": "none",
    ...     "DYNALIGN_SNAPSHOTS_EVERY_EVENTS": "10"})).split("\\n\\n")[1])
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


def _set(cfg: Config, section: str, key: str, value: Any, where: str) -> None:
    if section not in sections():
        raise ConfigError(f"{where}: unknown section {section!r}")
    target = getattr(cfg, section)
    fields = {f.name: f for f in dataclasses.fields(target)}
    if key not in fields:
        raise ConfigError(f"{where}: unknown setting {section}.{key} (known: {', '.join(fields)})")
    hint = typing.get_type_hints(type(target))[key]
    setattr(target, key, _coerce(value, hint, where))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) else hint
    if isinstance(value, str) and optional and value.strip().lower() in ("", "none", "null"):
        return None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    try:
        if base is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if base is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {getattr(base, '__name__', base)}, got {value!r}") from None
