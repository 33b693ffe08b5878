"""``query``: candidates of nodes from Redis, or from the state dir's history as of a time or snapshot."""

from __future__ import annotations

import json

import click

from aligner.cli.app import cli, config_for, redis_url_for
from aligner.cli.history import existing_state
from aligner.config import Config, mask_url
from aligner.logs import iso_time, printable


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

    from aligner.publish.redis_alignments import AlignmentClient

    cfg = config_for(ctx, **{"publish.redis_url": redis_url, "service.state_dir": state_dir})
    if at is not None or snapshot_id is not None:
        _query_history(cfg, nodes, net, to, k, at, snapshot_id, as_json)
        return
    with redis_url_for(cfg) as url:
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
    from aligner.tools.replay import parse_time
    from snapshots.files import StoreCorruption
    from snapshots.history import AlignmentHistory

    history = AlignmentHistory(existing_state(cfg.service.state_dir) / "history")
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
