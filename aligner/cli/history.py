"""The state dir's history: ``snapshots list|show|verify``, ``replay``, ``savepoint``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from aligner.cli.app import cli, config_for
from aligner.config import Config
from aligner.logs import iso_time, printable


def existing_state(state_dir: str) -> Path:
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

    root = existing_state(state_dir)
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

    cfg = config_for(ctx, **ctx.obj["log_overrides"])
    store = SnapshotStore(existing_state(state_dir))
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

    root = existing_state(state_dir)
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
    from aligner.tools.replay import parse_bound, select
    from snapshots.store import SnapshotStore

    if not (kafka_url or realign or export_dir):
        raise click.UsageError("choose at least one of --to-kafka URL, --realign, --export DIR")
    from stream.events import NAME_PATTERN

    if name is not None and not NAME_PATTERN.match(name):  # it names a folder under STATE/replays: nothing else
        raise click.BadParameter(f"{name!r} is not a name: 1-64 letters, digits, '_', '.', '-', not starting with "
                                 "'.' or '-'", param_hint="--name")
    cfg = config_for(ctx, **{"service.state_dir": state_dir, **ctx.obj["log_overrides"]})
    root = existing_state(state_dir)
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
        from aligner.service.connections import kafka_settings
        from aligner.tools.replay import replay_to_kafka

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

    from aligner.service.savepoint import read_savepoint
    from aligner.tools.replay import realign

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

        from aligner.publish.redis_alignments import RedisPublisher

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

    from aligner.service.savepoint import write_savepoint
    from snapshots.store import SnapshotStore

    root = existing_state(state_dir)
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
