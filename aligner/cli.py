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
    from aligner.runtime import release_freed_tensors

    release_freed_tensors()

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
    from aligner.service import AlignmentService

    cfg = _config(ctx, **{
        "service.state_dir": state_dir, "publish.redis_url": redis_url, "snapshots.window_seconds": window_seconds,
        "snapshots.every_events": every_events, "snapshots.lateness_seconds": lateness_seconds,
        "service.pairs": pairs, "service.seed": seed, **ctx.obj["log_overrides"],
    })
    try:
        summary = AlignmentService(cfg, source, progress=not as_json, until_idle_s=until_idle_s,
                                   savepoint=Path(savepoint) if savepoint else None).run()
    except ValueError as e:
        if savepoint is None:
            raise
        raise click.ClickException(str(e)) from None
    out = {
        "records": summary.records, "accepted": summary.accepted, "restored": summary.restored,
        "dead_letters": summary.dead_letters, "snapshots": summary.snapshots, "published": summary.published,
        "late": summary.late, "version": summary.last_version, "versions": summary.versions, "lag": summary.lag,
        "events_per_s": round(summary.events_per_s, 1),
        "ingest_events_per_s": round(summary.ingest_events_per_s, 1), "wall_s": round(summary.wall_s, 2),
        "align_s": round(summary.align_s, 2), "learn_s": round(summary.learn_s, 2),
        "refresh_s": round(summary.refresh_s, 2), "ingest_s": round(summary.ingest_s, 2),
        "state_s": round(summary.state_s, 2), "publish_s": round(summary.publish_s, 2),
        "checkpoint_s": round(summary.checkpoint_s, 2), "state_dir": cfg.service.state_dir, "cutter": summary.cutter,
    }
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"{summary.records} records, {summary.accepted} accepted, {summary.dead_letters} dead letters "
               f"({Path(cfg.service.state_dir) / 'deadletter.jsonl'}), {summary.snapshots} snapshots, "
               f"{summary.published} versions published, {summary.late} late events, {out['events_per_s']} events/s")
    if not cfg.publish.redis_url:
        click.echo(f"query it: dynalign query NODE --net NET --to NET --state {cfg.service.state_dir}")


@cli.command()
@click.argument("node")
@click.option("--net", required=True, help="Network of NODE.")
@click.option("--to", "to", required=True, help="Network to find candidates in.")
@click.option("--k", type=int, default=10, show_default=True)
@click.option("--version", type=int, default=None, help="A retained version instead of the current one.")
@click.option("--at", "at", default=None,
              help="As published at this event time (unix seconds or ISO-8601), from the state dir's history.")
@click.option("--snapshot", "snapshot_id", type=int, default=None,
              help="As published for this snapshot (the newest version of a snapshot <= it), from the history.")
@click.option("--redis", "redis_url", default=None, help="Redis URL.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False), default=None,
              help="Read the embedded Redis of this state dir (started for the query if it is not running), or its "
                   "history with --at/--snapshot.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def query(ctx, node, net, to, k, version, at, snapshot_id, redis_url, state_dir, as_json) -> None:
    """Top-k candidates in network TO for NODE of network NET, with scores: from Redis, or with --at/--snapshot
    from the alignment history on disk (versions Redis no longer holds included)."""
    from aligner.redis_alignments import AlignmentClient

    cfg = _config(ctx, **{"publish.redis_url": redis_url, "service.state_dir": state_dir})
    if at is not None or snapshot_id is not None:
        _query_history(cfg, node, net, to, k, at, snapshot_id, as_json)
        return
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


def _query_history(cfg: Config, node: str, net: str, to: str, k: int, at: str | None, snapshot_id: int | None,
                   as_json: bool) -> None:
    from aligner.replay import parse_time
    from snapshots.history import AlignmentHistory

    history = AlignmentHistory(_existing_state(cfg.service.state_dir) / "history")
    try:
        when = None if at is None else parse_time(at)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--at") from None
    entry = history.as_of(net, to, snapshot=snapshot_id, at=when)
    if entry is None:
        raise click.ClickException(f"no alignments of {net} and {to} recorded as of "
                                   f"{'snapshot ' + str(snapshot_id) if snapshot_id is not None else 'time ' + at}")
    cands = history.load(entry).candidates(node, net, to, k)
    if as_json:
        click.echo(json.dumps({"node": node, "net": net, "to": to, "version": entry["version"],
                               "snapshot": entry["snapshot"], "end_time": entry["end_time"],
                               "model_version": entry["model_version"],
                               "candidates": [{"node": c, "score": s} for c, s in cands]}))
        return
    if not cands:
        raise click.ClickException(f"node {node!r} of {net} had no candidates in {to} (version {entry['version']}, "
                                   f"snapshot {entry['snapshot']})")
    click.echo(f"{net}:{node} -> {to}  (version {entry['version']}, snapshot {entry['snapshot']}, "
               f"event time {entry['end_time']:g}, from history)")
    for rank, (c, score) in enumerate(cands, 1):
        click.echo(f"  {rank:>3}. {c:<24} {score:.4f}")


def _existing_state(state_dir: str) -> Path:
    path = Path(state_dir)
    if not (path / "snapshots").is_dir():
        raise click.ClickException(f"{path} is not the state dir of a dynalign run (no snapshots/ in it)")
    return path


@cli.group("snapshots")
def snapshots_group() -> None:
    """Look at the snapshots a state dir keeps (time travel)."""


@snapshots_group.command("list")
@click.option("--state", "state_dir", type=click.Path(file_okay=False), required=True)
@click.option("--json", "as_json", is_flag=True)
def snapshots_list(state_dir, as_json) -> None:
    """Every retained snapshot: kind (base/delta), event-time range, events, nodes and edges, bytes."""
    from snapshots.history import AlignmentHistory
    from snapshots.store import SnapshotStore

    root = _existing_state(state_dir)
    store = SnapshotStore(root)
    entries = store.list_snapshots()
    sizes = {**store.size_bytes(), "history": AlignmentHistory(root / "history").size_bytes()}
    if as_json:
        click.echo(json.dumps({"snapshots": entries, "bytes": sizes}))
        return
    click.echo(f"{'id':>6} {'kind':<5} {'start':>14} {'end':>14} {'events':>8} {'edges':>9} {'bytes':>10}  model")
    for e in entries:
        edges = sum(n["edges"] for n in e["networks"].values())
        click.echo(f"{e['id']:>6} {e.get('kind', 'base'):<5} {e['start_time']:>14.0f} {e['end_time']:>14.0f} "
                   f"{e['events']:>8} {edges:>9} {e['bytes']:>10}  {e.get('model_version') or '-'}")
    click.echo(f"{len(entries)} snapshots; bytes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))


@snapshots_group.command("show")
@click.argument("snapshot_id", type=int)
@click.option("--state", "state_dir", type=click.Path(file_okay=False), required=True)
@click.option("--json", "as_json", is_flag=True)
def snapshots_show(snapshot_id, state_dir, as_json) -> None:
    """One snapshot: its manifest entry (sizes, event-time range, log lines, counts) and the alignment versions
    published for it."""
    from snapshots.history import AlignmentHistory
    from snapshots.store import SnapshotStore, StoreCorruption

    root = _existing_state(state_dir)
    store = SnapshotStore(root)
    try:
        entry = store.snapshot_entry(snapshot_id)
        snapshot = store.load_snapshot(snapshot_id)
    except (KeyError, StoreCorruption) as e:
        raise click.ClickException(str(e).strip('"')) from None
    history = AlignmentHistory(root / "history")
    versions = [{k: v for k, v in e.items() if k in ("pair", "version", "model_version", "nodes")}
                for pair in history.pairs() for e in history.entries(*pair) if e["snapshot"] == snapshot_id]
    if as_json:
        click.echo(json.dumps({**entry, "versions": versions}))
        return
    click.echo(f"snapshot {snapshot_id} ({entry.get('kind', 'base')}, {entry['bytes']} bytes, sha256 "
               f"{entry['sha256'][:12]}…): event time [{entry['start_time']:.0f}, {entry['end_time']:.0f}), "
               f"{entry['events']} events applied, event-log lines {entry.get('log')}, model "
               f"{entry.get('model_version') or '-'}")
    for name, net in snapshot.networks.items():
        click.echo(f"  {name}: {net.num_nodes} nodes ({int(net.alive.sum())} alive, {len(net.changed)} changed), "
                   f"{net.num_edges} edges" + (f", {net.attrs.shape[1]} attributes" if net.attrs is not None else ""))
    for (a, b), pairs in snapshot.anchors.items():
        click.echo(f"  anchors {a}|{b}: {len(pairs)}")
    for v in versions:
        click.echo(f"  published {'|'.join(v['pair'])} version {v['version']} (model {v['model_version'] or '-'})")


@cli.command()
@click.option("--state", "state_dir", type=click.Path(file_okay=False), required=True)
@click.option("--from", "start", default=None, help="First snapshot: ID, or TIME (@UNIX_SECONDS or ISO-8601).")
@click.option("--to", "end", default=None, help="Last snapshot: ID, or TIME.")
@click.option("--to-kafka", "kafka_url", default=None, help="Re-feed the recorded events to kafka://HOST:PORT/TOPIC.")
@click.option("--rate", type=float, default=None, help="With --to-kafka: events per second (default: full speed).")
@click.option("--realign", is_flag=True, help="Align the snapshots again with the configured model; report changes.")
@click.option("--name", default=None, help="With --realign: the replay's name (STATE/replays/NAME); default: a timestamp.")
@click.option("--savepoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --realign: start from this savepoint's aligner instead of a fresh, seeded one.")
@click.option("--publish", "publish_url", default=None,
              help="With --realign: also publish to this Redis, in the namespace NS:replay:NAME.")
@click.option("--export", "export_dir", type=click.Path(file_okay=False), default=None,
              help="Write the snapshots as a torch-geometric-temporal dataset plus edge lists here.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def replay(ctx, state_dir, start, end, kafka_url, rate, realign, name, savepoint, publish_url, export_dir,
           as_json) -> None:
    """Go back over the snapshots [--from, --to] of a state dir: re-feed their events to Kafka, re-align them, or
    export them. Never touches the live alignments."""
    from aligner.replay import parse_bound, select
    from snapshots.store import SnapshotStore

    if not (kafka_url or realign or export_dir):
        raise click.UsageError("choose at least one of --to-kafka URL, --realign, --export DIR")
    cfg = _config(ctx, **{"service.state_dir": state_dir, **ctx.obj["log_overrides"]})
    root = _existing_state(state_dir)
    try:
        bounds = [None if b is None else parse_bound(b) for b in (start, end)]
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    store = SnapshotStore(root)
    entries = select(store, *bounds)
    if not entries:
        raise click.ClickException(f"no retained snapshot in the range (state dir has "
                                   f"{len(store.list_snapshots())})")
    out: dict = {"snapshots": [entries[0]["id"], entries[-1]["id"]]}
    if kafka_url:
        from aligner.service import kafka_settings
        from aligner.replay import replay_to_kafka

        summary = replay_to_kafka(store, entries, kafka_url, settings=kafka_settings(cfg), rate=rate)
        out["kafka"] = {"events": summary.events, "messages": summary.messages, "failed": summary.failed,
                        "seconds": round(summary.seconds, 2)}
        if summary.failed:
            raise click.ClickException(f"{summary.failed} messages not acknowledged by Kafka ({summary.first_error})")
    if export_dir:
        from snapshots.export import export_snapshots

        meta = export_snapshots((store.load_snapshot(e["id"]) for e in entries), Path(export_dir))
        out["export"] = {"dir": export_dir, "snapshots": len(meta["snapshots"]), "networks": meta["networks"]}
    if realign:
        out["realign"] = _realign(cfg, root, entries, name, savepoint, publish_url, as_json)
    if as_json:
        click.echo(json.dumps(out))
    else:
        for what, detail in out.items():
            click.echo(f"{what}: {json.dumps(detail)}")


def _realign(cfg: Config, root: Path, entries: list, name: str | None, savepoint: str | None,
             publish_url: str | None, quiet: bool) -> dict:
    import time

    from aligner.replay import realign
    from aligner.savepoint import read_savepoint

    name = name or time.strftime("realign-%Y%m%dT%H%M%S")
    state = None
    if savepoint:
        try:
            state = read_savepoint(Path(savepoint))["checkpoint"].get("aligner")
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    publisher = None
    if publish_url:
        import redis

        from aligner.redis_alignments import RedisPublisher

        namespace = f"{cfg.publish.namespace}:replay:{name}"
        publisher = RedisPublisher(redis.Redis.from_url(publish_url), namespace, cfg.publish.retain_versions,
                                   worker=f"replay/{name}")
    try:
        report = realign(cfg, root, entries, name, aligner_state=state, publisher=publisher,
                         echo=(lambda line: None) if quiet else (lambda line: click.echo(line, err=True)))
    except FileExistsError as e:
        raise click.ClickException(str(e)) from None
    return {"name": name, "report": str(root / "replays" / name / "report.json"),
            **{k: report[k] for k in ("compared", "identical", "top1_changed", "seconds")}}


@cli.command()
@click.option("--state", "state_dir", type=click.Path(file_okay=False), required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Savepoint file (default: STATE/savepoints/savepoint-<snapshot>-<time>.dsp).")
@click.option("--json", "as_json", is_flag=True)
def savepoint(state_dir, output, as_json) -> None:
    """Bundle the state dir's newest checkpoint (model weights, meta-learned initialisation, online learners'
    and drift state, graph, stream offsets, snapshot id) into one file for `run --from-savepoint`."""
    import time

    from aligner.savepoint import write_savepoint
    from snapshots.store import SnapshotStore

    root = _existing_state(state_dir)
    checkpoint = SnapshotStore(root).read_checkpoint()
    if checkpoint is None:
        raise click.ClickException(f"{root} has no intact checkpoint yet: run the service first")
    path = Path(output) if output else (root / "savepoints" /
                                        f"savepoint-{checkpoint.get('snapshot_id') or 0}-{time.strftime('%Y%m%dT%H%M%S')}.dsp")
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = write_savepoint(root, path)
    if as_json:
        click.echo(json.dumps({"path": str(path), **summary}))
    else:
        click.echo(f"savepoint {path}: snapshot {summary['snapshot_id']}, model {summary['model_version']}, "
                   f"{summary['bytes']} bytes; resume: dynalign run --from-savepoint {path} --state NEW_DIR --source ...")


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
                          limit=count, progress=None if bar is None else bar.update, stop=stop)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if bar is not None:  # a tqdm bar without a total has no truth value
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
@click.option("--protocol", type=click.Choice(["static", "stream"]), default="static", show_default=True)
@click.option("--seeds", type=int, default=3, show_default=True)
@click.option("--train-ratio", type=float, default=None, help="Seeded fraction of anchors.tsv instead of train.tsv.")
@click.option("--full-steps", type=int, default=200, show_default=True, help="Steps of ordinary training ('full').")
@click.option("--validation", is_flag=True,
              help="Score on a held-out quarter of the train anchors instead of the test anchors (to choose settings).")
@click.option("--windows", type=int, default=10, show_default=True, help="Stream protocol: event-time windows.")
@click.option("--variants", default=",".join(("dynalign", "retrain", "frozen", "init:meta", "init:pretrained",
                                             "init:random")), show_default=True,
              help="Stream protocol: which variants to run, comma-separated.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None,
              help="Stream protocol: write accuracy and compute per window as a PNG here.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write results as JSON here.")
@click.pass_context
def bench(ctx, dataset_dir, protocol, seeds, train_ratio, full_steps, validation, windows, variants, plot_out,
          json_out) -> None:
    """Alignment quality (Hits@1/5/10, MRR on test anchors), time and peak memory per seed.

    static: the meta-learned initialisation with few-step adaptation ('fast') next to ordinary full training
    ('full'). stream: the dataset replayed in windows; incremental dynalign next to retraining on every window,
    a frozen model and the initialisation ablation (meta-learned / pretrained / random)."""
    cfg = _config(ctx, **ctx.obj["log_overrides"])
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    if protocol == "stream":
        from aligner.stream_bench import VARIANTS, bench_stream, format_stream_table, plot_stream

        chosen = tuple(v.strip() for v in variants.split(",") if v.strip())
        unknown = sorted(set(chosen) - set(VARIANTS))
        if unknown:
            raise click.BadParameter(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}",
                                     param_hint="--variants")
        result = bench_stream(dataset_dir, cfg, seeds=seeds, windows=windows, full_steps=full_steps,
                              variants=chosen, validation=validation, echo=echo)
        click.echo(format_stream_table(result))
        if plot_out:
            plot_stream(result, plot_out)
    else:
        from aligner.bench import bench_static, format_table

        result = bench_static(dataset_dir, cfg, seeds=seeds, train_ratio=train_ratio, full_steps=full_steps,
                              validation=validation, echo=echo)
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
