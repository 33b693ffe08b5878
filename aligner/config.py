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
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "DYNALIGN_"
CONFIG_ENV = "DYNALIGN_CONFIG"


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


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective configuration. ``overrides`` maps ``"section.key"`` to values (CLI flags; None = unset)."""
    env = os.environ if env is None else env
    cfg = Config()
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
    for section, cls in sections().items():
        for f in dataclasses.fields(cls):
            name = f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
            if name in env:
                _set(cfg, section, f.name, env[name], f"environment variable {name}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            _set(cfg, section, key, value, f"option for {dotted}")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    if cfg.meta.algorithm not in ("maml", "fomaml", "reptile", "metasgd", "multitask"):
        raise ConfigError("meta.algorithm must be maml, fomaml, reptile, metasgd or multitask, "
                          f"got {cfg.meta.algorithm!r}")
    if cfg.snapshots.window_seconds is None and cfg.snapshots.every_events is None:
        raise ConfigError("snapshots: set window_seconds, every_events or both")
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
    for name in ("top_k", "retain_versions"):
        if getattr(cfg.publish, name) < 1:
            raise ConfigError(f"publish.{name} must be >= 1")


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


def mask_url(url: str) -> str:
    """Hide the password in a URL.

    >>> mask_url("rediss://user:secret@host:6380/0")
    'rediss://user:***@host:6380/0'
    """
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


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
