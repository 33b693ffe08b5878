"""``config show``: the effective configuration and where each value came from."""

from __future__ import annotations

import json

import click

from aligner.cli.app import cli, config_for
from aligner.config import masked, to_toml


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_show(ctx, as_json) -> None:
    """Print the effective configuration as TOML, each value with where it came from (a file, the environment,
    a flag or the default), secrets masked. --json: the values alone."""
    cfg = config_for(ctx, **ctx.find_root().obj["log_overrides"])
    if as_json:
        click.echo(json.dumps(masked(cfg), indent=1))
        return
    click.echo(to_toml(cfg, ctx.find_root().obj["origins"]), nl=False)
