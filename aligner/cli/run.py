"""Commands that run the service: ``run``, ``demo``, ``status``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from aligner.cli.app import cli, config_for, log
from aligner.cli.history import existing_state
from aligner.config import DEFAULT, mask_url


@cli.command()
@click.option("--source", required=True, help="Event source: a JSONL file, '-' for stdin, or kafka://HOST:PORT/TOPIC.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False), default=None,
              help="State directory (snapshots, checkpoints, dead letters, embedded Redis).")
@click.option("--redis", "redis_url", default=None, help="Redis URL; default: an embedded redis-server under the state dir.")
@click.option("--window", "window_seconds", type=float, default=None, help="Cut a snapshot every this many seconds of event time.")
@click.option("--every", "every_events", type=int, default=None, help="Also cut a snapshot every this many events.")
@click.option("--lateness", "lateness_seconds", type=float, default=None, help="Allowed lateness of out-of-order events (s).")
@click.option("--pairs", default=None, help="Network pairs to align: 'auto' or 'a:b,a:c'.")
@click.option("--seed", type=int, default=None, help="Random seed.")
@click.option("--until-idle", "until_idle_s", type=float, default=None,
              help="Stop after this many seconds with nothing to do (Kafka: every owned partition caught up); "
                   "like the end of a file, this ends the input: the open window is cut, aligned and published.")
@click.option("--from-savepoint", "savepoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Resume from a savepoint (dynalign savepoint) into a state dir that has no checkpoint yet.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.pass_context
def run(ctx, source, state_dir, redis_url, window_seconds, every_events, lateness_seconds, pairs, seed, until_idle_s,
        savepoint, as_json) -> None:
    """Run the service: ingest events, cut snapshots, adapt, publish alignments to Redis.

    A file source ends the run at end of file; Kafka runs until SIGINT/SIGTERM (or --until-idle). Restarting with
    the same --state resumes from the last checkpoint.
    """
    from aligner.service.alignment_service import AlignmentService

    cfg = config_for(ctx, **{
        "service.state_dir": state_dir, "publish.redis_url": redis_url, "snapshots.window_seconds": window_seconds,
        "snapshots.every_events": every_events, "snapshots.lateness_seconds": lateness_seconds,
        "service.pairs": pairs, "service.seed": seed, **ctx.obj["log_overrides"],
    })
    explicit = {key for key, origin in ctx.obj["origins"].items() if origin != DEFAULT}
    summary = AlignmentService(cfg, source, progress=not as_json, until_idle_s=until_idle_s,
                               savepoint=Path(savepoint) if savepoint else None, explicit=explicit).run()
    out = {
        "records": summary.records, "accepted": summary.accepted, "restored": summary.restored,
        "dead_letters": summary.dead_letters, "snapshots": summary.snapshots, "published": summary.published,
        "late": summary.late, "duplicates": summary.duplicates, "version": summary.last_version, "versions": summary.versions, "lag": summary.lag,
        "events_per_s": round(summary.events_per_s, 1),
        "ingest_events_per_s": round(summary.ingest_events_per_s, 1), "wall_s": round(summary.wall_s, 2),
        "align_s": round(summary.align_s, 2), "learn_s": round(summary.learn_s, 2),
        "refresh_s": round(summary.refresh_s, 2), "ingest_s": round(summary.ingest_s, 2),
        "state_s": round(summary.state_s, 2), "publish_s": round(summary.publish_s, 2),
        "checkpoint_s": round(summary.checkpoint_s, 2), "state_dir": cfg.service.state_dir, "cutter": summary.cutter,
        "redis_error": summary.redis_error,
    }
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(f"{summary.records} records, {summary.accepted} accepted, {summary.dead_letters} dead letters "
                   f"({Path(cfg.service.state_dir) / 'deadletter.jsonl'}), {summary.snapshots} snapshots, "
                   f"{summary.published} versions published, {summary.late} late events, "
                   f"{summary.duplicates} duplicates dropped, {out['events_per_s']} events/s")
    if summary.records and summary.dead_letters == summary.records:
        log.warning(f"every record was a dead letter: is {source} a file of JSON events? The reasons are in "
                    f"{Path(cfg.service.state_dir) / 'deadletter.jsonl'}")
    if summary.redis_error:  # the run did its work but nobody can read it: a script must not take that for success
        raise click.ClickException(
            f"the newest alignments were not published: Redis at {mask_url(summary.redis_url or '?')} is unreachable "
            f"({summary.redis_error}); they are kept in the checkpoint: start Redis (or pass the right --redis URL) "
            f"and run again with --state {cfg.service.state_dir} to publish them")
    if not cfg.publish.redis_url and not as_json:
        click.echo(f"query it: dynalign query NODE --net NET --to NET --state {cfg.service.state_dir}")


@cli.command()
@click.option("--state", "state_dir", type=click.Path(file_okay=False), default=".dynalign/demo", show_default=True)
@click.option("--windows", type=int, default=5, show_default=True)
@click.pass_context
def demo(ctx, state_dir, windows) -> None:
    """Stream the bundled sample through the service with embedded Redis and print quality, speed and queries."""
    from aligner.bench.demo import run_demo

    cfg = config_for(ctx, **{"service.state_dir": state_dir, **ctx.obj["log_overrides"]})
    run_demo(cfg, windows=windows, echo=click.echo)


@cli.command()
@click.option("--state", "state_dir", type=click.Path(file_okay=False), required=True,
              help="State dir of a dynalign run.")
@click.option("--redis", "redis_url", default=None,
              help="The Redis the service publishes to; default: the state dir's embedded server.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx, state_dir, redis_url, as_json) -> None:
    """A worker's state: pairs and their current versions, newest snapshot and event-time range, checkpoint, lag,
    online quality, dead letters, Redis and Kafka health (read-only; starts nothing)."""
    from aligner.service.status import format_status, state_status

    cfg = config_for(ctx, **{"publish.redis_url": redis_url, **ctx.obj["log_overrides"]})
    report = state_status(existing_state(state_dir), cfg)
    click.echo(json.dumps(report) if as_json else format_status(report))
