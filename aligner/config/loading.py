"""The effective configuration, assembled: one TOML file, then ``DYNALIGN_*`` environment variables, then CLI
flags, each overriding the last, with where each value came from; and the checks on what the environment holds.

An environment variable is named ``DYNALIGN_<SECTION>_<KEY>`` in upper case (``DYNALIGN_PUBLISH_REDIS_URL``);
values arrive as text, from TOML or from flags and are coerced by the setting's type hint.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping

from aligner.config.checks import validate
from aligner.config.settings import DEFAULT, Config, ConfigError, sections

ENV_PREFIX = "DYNALIGN_"
CONFIG_ENV = "DYNALIGN_CONFIG"
# DYNALIGN_* variables that are not settings but are read elsewhere (the test suite's external Kafka), so that
# the warning on unknown ones does not cry wolf.
OTHER_ENV = frozenset({"DYNALIGN_TEST_KAFKA"})


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
