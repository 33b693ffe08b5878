"""Configuration: one TOML file, then ``DYNALIGN_*`` environment variables, then CLI flags, each overriding the last.

Every setting lives in one typed dataclass section, so the TOML keys, the environment variable names and
``dynalign config show`` all come from the same place. An environment variable is named
``DYNALIGN_<SECTION>_<KEY>`` in upper case (``DYNALIGN_PUBLISH_REDIS_URL``, ``DYNALIGN_SNAPSHOTS_WINDOW_SECONDS``).

In parts, each name importable from here: :mod:`~aligner.config.settings` (the sections), :mod:`~aligner.config.loading`
(file, environment, flags), :mod:`~aligner.config.checks` (validation) and :mod:`~aligner.config.display`
(secrets masked, TOML with origins).

>>> cfg = load_config(env={"DYNALIGN_ADAPT_STEPS": "7", "DYNALIGN_PUBLISH_REDIS_URL": "redis://:pw@h:6379/0"})
>>> cfg.adapt.steps, cfg.publish.redis_url
(7, 'redis://:pw@h:6379/0')
>>> masked(cfg)["publish"]["redis_url"]
'redis://:***@h:6379/0'
"""

from aligner.config.checks import LOG_LEVELS, REDIS_SCHEMES, parse_pairs, parse_setting_values, validate
from aligner.config.display import SECRET_KEYS, SECRET_URL_KEYS, as_dict, mask_url, masked, to_toml
from aligner.config.loading import (
    CONFIG_ENV,
    ENV_PREFIX,
    OTHER_ENV,
    env_names,
    load_config,
    load_config_with_origins,
    unknown_env,
)
from aligner.config.settings import (
    DEFAULT,
    AdaptConfig,
    Config,
    ConfigError,
    MetaConfig,
    ModelConfig,
    PublishConfig,
    RefineConfig,
    ServiceConfig,
    SnapshotsConfig,
    StoreConfig,
    StreamConfig,
    sections,
)

__all__ = [
    "CONFIG_ENV", "DEFAULT", "ENV_PREFIX", "LOG_LEVELS", "OTHER_ENV", "REDIS_SCHEMES", "SECRET_KEYS", "SECRET_URL_KEYS",
    "AdaptConfig", "Config", "ConfigError", "MetaConfig", "ModelConfig", "PublishConfig", "RefineConfig",
    "ServiceConfig", "SnapshotsConfig", "StoreConfig", "StreamConfig",
    "as_dict", "env_names", "load_config", "load_config_with_origins", "mask_url", "masked", "parse_pairs",
    "parse_setting_values", "sections", "to_toml", "unknown_env", "validate",
]
