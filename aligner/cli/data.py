"""Events in: ``events`` writes a dataset as an event stream, ``feed`` produces a file to Kafka."""

from __future__ import annotations

import sys

import click

from aligner.cli.app import cli, config_for, log


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
    """Write a dataset (exchange format: a pair folder, or a multi-network folder with networks/) as an event
    stream: edges, attributes and train anchors only."""
    from stream import datasets, multi_datasets

    replay = dict(protocol=protocol, windows=windows, seed=seed, window_seconds=window_seconds)
    if datasets.is_multi_dataset(dataset_dir):
        multi = multi_datasets.load_multi_dataset(dataset_dir)
        train = multi_datasets.split_multi_anchors(multi, train_ratio, seed)[0]
        stream = multi_datasets.multi_dataset_events(multi, train=train, **replay)
    else:
        ds = datasets.load_dataset(dataset_dir)
        stream = datasets.dataset_events(ds, train=datasets.split_anchors(ds, train_ratio, seed)[0], **replay)
    if output == "-":
        n = datasets.write_events(stream, sys.stdout)
    else:
        with open(output, "w") as f:
            n = datasets.write_events(stream, f)
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

    from aligner.service.connections import kafka_settings
    from stream.producer import feed as produce

    cfg = config_for(ctx, **ctx.obj["log_overrides"])
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
