"""Every setting dynalign reads, in typed dataclass sections: the TOML keys, the environment variable names and
``dynalign config show`` all come from these classes (:mod:`aligner.config.loading` reads them by their fields
and type hints), so a setting is added in one place.

>>> sorted(sections())[:3], Config().service.coalesce
(['adapt', 'meta', 'model'], 'live')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

DEFAULT = "default"  # the origin of a value nobody set (file, environment and flag origins name their source)

LogFormat = Literal["text", "json"]
# When the service coalesces waiting snapshots or refreshes in the background: "live" sources only (Kafka, stdin)
Schedule = Literal["live", "always", "never"]
# How a pair's transport plan is solved: over every n x m pair, on candidate pairs only, or "auto": dense while
# it fits in refine.max_cells, on candidates past it
PlanSolver = Literal["auto", "dense", "sparse"]
MetaAlgorithm = Literal["maml", "fomaml", "reptile", "metasgd", "multitask"]  # multitask: a non-meta baseline


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the setting and where it came from."""


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
    algorithm: MetaAlgorithm = "metasgd"
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
    plan: PlanSolver = "auto"
    max_cells: int = 120_000_000  # "auto": larger pairs solve the plan on candidate pairs (dense plan memory)
    # The sparse plan's candidates per node (aligner.matching.candidates): its most similar nodes of the other
    # network, the nodes sharing the most anchored neighbours with it, and per round the nodes the structure
    # bonus points at (0: fixed candidates)
    candidates: int = 20
    structural_candidates: int = 10
    candidate_growth: int = 0
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
    log_format: LogFormat = "text"
    log_level: str = "INFO"
    threads: int = 0  # torch intra-op threads of the aligner; 0 = all cores but one (the polling thread's)
    coalesce: Schedule = "live"  # align waiting snapshots as one catch-up step
    max_backlog: int = 4  # snapshots waiting for the aligner before the source pauses (ingest goes on meanwhile)
    refresh: Schedule = "live"  # heavy steps (adaptation, realignment, anchors joining) on a copy of the aligner in
    # the background while incremental steps keep publishing
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


def sections() -> dict[str, type]:
    """Section name -> its dataclass, in the order of :class:`Config`."""
    out: dict[str, type] = {}
    for f in dataclasses.fields(Config):
        factory = f.default_factory
        assert factory is not dataclasses.MISSING  # every section of Config has a default factory
        out[f.name] = factory().__class__
    return out
