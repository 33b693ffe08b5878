"""The ``dynalign`` command line: every user-facing entry point, thin over the library.

Each command loads the effective configuration (TOML file, ``DYNALIGN_*`` environment, flags) the same way,
so ``dynalign config show`` prints exactly what ``dynalign run`` will use.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from aligner.config import ConfigError, Config, load_config, masked

log = logging.getLogger("dynalign")


def _config(ctx: click.Context, **overrides) -> Config:
    try:
        return load_config(ctx.obj.get("config"), overrides=overrides)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="DYNALIGN_CONFIG",
              help="TOML configuration file (env: DYNALIGN_CONFIG).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None, help="Log line format.")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, log_format: str | None, log_level: str | None) -> None:
    """dynalign: streaming alignment of dynamic networks (events in, alignments out to Redis)."""
    from aligner.logs import setup_logging

    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path
    try:
        cfg = load_config(config_path, overrides={"service.log_format": log_format, "service.log_level": log_level})
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    ctx.obj["log_overrides"] = {"service.log_format": log_format, "service.log_level": log_level}
    setup_logging(cfg.service.log_format, cfg.service.log_level)


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
              help="Stop after this many seconds with nothing to do (Kafka: every owned partition caught up).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.pass_context
def run(ctx, source, state_dir, redis_url, window_seconds, every_events, lateness_seconds, pairs, seed, until_idle_s,
        as_json) -> None:
    """Run the service: ingest events, cut snapshots, adapt, publish alignments to Redis.

    A file source ends the run at end of file; Kafka runs until SIGINT/SIGTERM (or --until-idle). Restarting with
    the same --state resumes from the last checkpoint.
    """
    from aligner.service import AlignmentService

    cfg = _config(ctx, **{
        "service.state_dir": state_dir, "publish.redis_url": redis_url, "snapshots.window_seconds": window_seconds,
        "snapshots.every_events": every_events, "snapshots.lateness_seconds": lateness_seconds,
        "service.pairs": pairs, "service.seed": seed, **ctx.obj["log_overrides"],
    })
    summary = AlignmentService(cfg, source, progress=not as_json, until_idle_s=until_idle_s).run()
    out = {
        "records": summary.records, "accepted": summary.accepted, "restored": summary.restored,
        "dead_letters": summary.dead_letters, "snapshots": summary.snapshots, "published": summary.published,
        "version": summary.last_version, "versions": summary.versions, "lag": summary.lag,
        "events_per_s": round(summary.events_per_s, 1),
        "ingest_events_per_s": round(summary.ingest_events_per_s, 1), "wall_s": round(summary.wall_s, 2),
        "align_s": round(summary.align_s, 2), "ingest_s": round(summary.ingest_s, 2), "state_dir": cfg.service.state_dir, "cutter": summary.cutter,
    }
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"{summary.records} records, {summary.accepted} accepted, {summary.dead_letters} dead letters "
               f"({Path(cfg.service.state_dir) / 'deadletter.jsonl'}), {summary.snapshots} snapshots, "
               f"{summary.published} versions published, {out['events_per_s']} events/s")
    if not cfg.publish.redis_url:
        click.echo(f"query it: dynalign query NODE --net NET --to NET --state {cfg.service.state_dir}")


@cli.command()
@click.argument("node")
@click.option("--net", required=True, help="Network of NODE.")
@click.option("--to", "to", required=True, help="Network to find candidates in.")
@click.option("--k", type=int, default=10, show_default=True)
@click.option("--version", type=int, default=None, help="A retained version instead of the current one.")
@click.option("--redis", "redis_url", default=None, help="Redis URL.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False), default=None,
              help="Read the embedded Redis of this state dir (started for the query if it is not running).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def query(ctx, node, net, to, k, version, redis_url, state_dir, as_json) -> None:
    """Top-k candidates in network TO for NODE of network NET, with scores, from Redis."""
    from aligner.redis_alignments import AlignmentClient

    cfg = _config(ctx, **{"publish.redis_url": redis_url, "service.state_dir": state_dir})
    with _redis_url(cfg) as url:
        client = AlignmentClient.from_url(url, cfg.publish.namespace)
        v = version if version is not None else client.current_version(net, to)
        cands = client.top(node, net, to, k=k, version=v)
        meta = client.meta(net, to, v) if v is not None else {}
    if as_json:
        click.echo(json.dumps({"node": node, "net": net, "to": to, "version": v, "snapshot": meta.get("snapshot"),
                               "candidates": [{"node": c.node, "score": c.score} for c in cands]}))
        return
    if v is None:
        raise click.ClickException(f"no alignments published for {net} -> {to} yet")
    if not cands:
        raise click.ClickException(f"node {node!r} of {net} has no candidates in {to} (version {v})")
    click.echo(f"{net}:{node} -> {to}  (version {v}, snapshot {meta.get('snapshot')})")
    for rank, c in enumerate(cands, 1):
        click.echo(f"  {rank:>3}. {c.node:<24} {c.score:.4f}")


@cli.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--protocol", type=click.Choice(["static", "stream"]), default="stream", show_default=True)
@click.option("--windows", type=int, default=10, show_default=True)
@click.option("--window-seconds", type=float, default=3600.0, show_default=True,
              help="Length of a synthetic window for datasets without timestamps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--train-ratio", type=float, default=None, help="Seeded fraction of anchors.tsv instead of train.tsv.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="-", help="Output JSONL file (default stdout).")
def events(dataset_dir, protocol, windows, window_seconds, seed, train_ratio, output) -> None:
    """Write a dataset (exchange format) as an event stream: edges, attributes and train anchors only."""
    from stream.datasets import dataset_events, load_dataset, split_anchors, write_events

    ds = load_dataset(dataset_dir)
    train, _ = split_anchors(ds, train_ratio, seed)
    stream = dataset_events(ds, protocol=protocol, windows=windows, seed=seed, train=train,
                            window_seconds=window_seconds)
    if output == "-":
        n = write_events(stream, sys.stdout)
    else:
        with open(output, "w") as f:
            n = write_events(stream, f)
    click.echo(f"{n} events", err=True)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--to", "to", required=True, help="Topic to produce to: kafka://HOST:PORT[,HOST:PORT]/TOPIC.")
@click.option("--rate", type=float, default=None, help="Events per second (a paced live replay); default: full speed.")
@click.option("--loop", is_flag=True, help="Replay FILE until interrupted or --count; later passes shift times and ids.")
@click.option("--count", type=int, default=None, help="Stop after this many events.")
@click.option("--key", default=None,
              help="One message key for every event instead of its network: keeps networks aligned together in one "
                   "partition, so that workers of a group can split independent alignment problems.")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Up to this many events of one key per message, one per line (faster to consume).")
@click.pass_context
def feed(ctx, file, to, rate, loop, count, key, batch) -> None:
    """Produce the events of FILE ('-' for stdin) to Kafka, keyed by network so that one network's events stay
    in order in one partition. Malformed lines are sent too (unkeyed): the consumer dead-letters them."""
    import signal
    import threading

    from aligner.service import kafka_settings
    from stream.producer import feed as produce

    cfg = _config(ctx, **ctx.obj["log_overrides"])
    stop = threading.Event()  # Ctrl-C ends a feed cleanly: what was sent is flushed and counted
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(unit="ev", desc="events", file=sys.stderr, total=count, smoothing=0.1)
    try:
        summary = produce(file, to, settings=kafka_settings(cfg), rate=rate, loop=loop, key=key, batch=batch,
                          limit=count, progress=bar.update if bar else None, stop=stop)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if bar:
            bar.close()
    click.echo(f"{summary.events} events ({summary.malformed} malformed) in {summary.messages} messages to {to} "
               f"in {summary.seconds:.1f} s ({summary.events_per_s:.0f} events/s)", err=True)
    if summary.failed:
        raise click.ClickException(f"{summary.failed} messages not acknowledged by Kafka (first: {summary.first_error})")


@cli.command()
@click.option("--state", "state_dir", type=click.Path(file_okay=False), required=True)
@click.option("--anchors", "anchors_file", type=click.Path(exists=True, dir_okay=False), required=True,
              help="TSV of true pairs: node id in --net, node id in --to.")
@click.option("--net", required=True)
@click.option("--to", "to", required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def evaluate(ctx, state_dir, anchors_file, net, to, as_json) -> None:
    """Hits@1/5/10 and MRR of the latest alignments on held-out pairs, ranking against all alive nodes."""
    from aligner.evaluation import evaluate_state

    metrics = evaluate_state(Path(state_dir), Path(anchors_file), net, to)
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        click.echo("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))


@cli.command()
@click.argument("node")
@click.option("--net", required=True, help="Network of NODE.")
@click.option("--to", "to", required=True, help="Network of the candidates.")
@click.option("--k", type=int, default=5, show_default=True)
@click.option("--state", "state_dir", type=click.Path(exists=True, file_okay=False), required=True,
              help="State dir of a dynalign run (its last checkpoint and snapshot are explained).")
@click.option("--json", "as_json", is_flag=True)
def explain(node, net, to, k, state_dir, as_json) -> None:
    """Why NODE is matched to its candidates: shared anchors, attribute and position agreement, scores."""
    from aligner.evaluation import load_aligner_and_snapshot
    from aligner.explain import Explainer, describe

    aligner, snapshot = load_aligner_and_snapshot(Path(state_dir))
    try:
        evidence = Explainer(aligner, snapshot, net, to).explain(node, k)
    except KeyError as e:
        raise click.ClickException(str(e).strip('"')) from None
    if as_json:
        click.echo(json.dumps({"node": node, "net": net, "to": to, "snapshot": snapshot.id,
                               "candidates": [e.to_dict() for e in evidence]}))
    else:
        click.echo(describe(node, net, to, evidence))


@cli.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--protocol", type=click.Choice(["static"]), default="static", show_default=True)
@click.option("--seeds", type=int, default=3, show_default=True)
@click.option("--train-ratio", type=float, default=None, help="Seeded fraction of anchors.tsv instead of train.tsv.")
@click.option("--full-steps", type=int, default=200, show_default=True, help="Steps of ordinary training ('full').")
@click.option("--validation", is_flag=True,
              help="Score on a held-out quarter of the train anchors instead of the test anchors (to choose settings).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write results as JSON here.")
@click.pass_context
def bench(ctx, dataset_dir, protocol, seeds, train_ratio, full_steps, validation, json_out) -> None:
    """Alignment quality (Hits@1/5/10, MRR on test anchors), time and peak memory per seed: the meta-learned
    initialisation with few-step adaptation ('fast') next to ordinary full training ('full')."""
    from aligner.bench import bench_static, format_table

    cfg = _config(ctx, **ctx.obj["log_overrides"])
    result = bench_static(dataset_dir, cfg, seeds=seeds, train_ratio=train_ratio, full_steps=full_steps,
                          validation=validation, echo=lambda line: click.echo(line, err=True))
    click.echo(format_table(result))
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=1))


@cli.command()
@click.option("--state", "state_dir", type=click.Path(file_okay=False), default=".dynalign/demo", show_default=True)
@click.option("--windows", type=int, default=5, show_default=True)
@click.pass_context
def demo(ctx, state_dir, windows) -> None:
    """Stream the bundled sample through the service with embedded Redis and print quality, speed and queries."""
    from aligner.demo import run_demo

    cfg = _config(ctx, **{"service.state_dir": state_dir, **ctx.obj["log_overrides"]})
    run_demo(cfg, windows=windows, echo=click.echo)


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_show(ctx, as_json) -> None:
    """Print the effective configuration (file, environment, defaults), secrets masked."""
    cfg = _config(ctx.find_root(), **ctx.find_root().obj["log_overrides"])
    data = masked(cfg)
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    for section, values in data.items():
        click.echo(f"[{section}]")
        for key, value in values.items():
            click.echo(f"{key} = {json.dumps(value)}")
        click.echo()


class _redis_url:
    """Context manager yielding a Redis URL: the configured one, or the state dir's embedded server (started just
    for this command when no service is running, and stopped after)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.server = None

    def __enter__(self) -> str:
        if self.cfg.publish.redis_url:
            return self.cfg.publish.redis_url
        from aligner.embedded_redis import EmbeddedRedis

        directory = Path(self.cfg.service.state_dir) / "redis"
        if not directory.exists():
            raise click.ClickException(f"no embedded Redis under {self.cfg.service.state_dir}: pass --redis URL "
                                       "or the --state DIR of a dynalign run")
        self.server = EmbeddedRedis(directory).start()
        return self.server.url

    def __exit__(self, *exc) -> None:
        if self.server:
            self.server.stop()


def main() -> None:
    cli(prog_name="dynalign")


if __name__ == "__main__":
    main()
