"""Offline tools over a state dir or dataset: ``evaluate``, ``explain``, ``bench``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from aligner.cli.app import cli, config_for


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
    from aligner.tools.evaluation import evaluate_state

    cfg = config_for(ctx, **{"service.state_dir": state_dir, **ctx.obj["log_overrides"]})
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
    from aligner.tools.evaluation import load_aligner_and_snapshot
    from aligner.tools.explain import Explainer, describe

    cfg = config_for(ctx, **{"service.state_dir": state_dir, **ctx.obj["log_overrides"]})
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


def chosen_variants(value: str | None, known: tuple[str, ...]) -> tuple:
    """``--variants`` as a tuple of ``known`` names (``None``: all of them)."""
    if value is None:
        return known
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = sorted(set(chosen) - set(known))
    if unknown or not chosen:
        raise click.BadParameter(f"unknown variant(s) {', '.join(unknown) or '(none given)'}; choose from "
                                 f"{', '.join(known)}", param_hint="--variants")
    return chosen


@cli.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--protocol", type=click.Choice(["static", "stream", "multi"]), default="static", show_default=True,
              help="multi: a multi-network folder, every pair aligned jointly next to each pair alone.")
@click.option("--seeds", type=int, default=3, show_default=True)
@click.option("--train-ratio", type=float, default=None, help="Seeded fraction of anchors.tsv instead of train.tsv.")
@click.option("--full-steps", type=int, default=200, show_default=True, help="Steps of ordinary training ('full').")
@click.option("--validation", is_flag=True,
              help="Score on a held-out quarter of the train anchors instead of the test anchors (to choose settings).")
@click.option("--windows", type=int, default=10, show_default=True, help="Stream protocol: event-time windows.")
@click.option("--variants", default=None,
              help="Stream protocol: which variants to run, comma-separated (default: dynalign, retrain, frozen, "
                   "init:meta, init:pretrained, init:random). Multi protocol: joint, alone (default both).")
@click.option("--train-share", "train_share", multiple=True, metavar="PAIR=SHARE",
              help="Multi protocol: keep this seeded share of a pair's train anchors (e.g. a~b=0.1), to measure a "
                   "few-anchor pair next to the others; repeatable.")
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
def bench(ctx, dataset_dir, protocol, seeds, train_ratio, full_steps, validation, windows, variants, train_share,
          plot_out, json_out, suite, only, skip, baseline_file) -> None:
    """Alignment quality (Hits@1/5/10, MRR on test anchors), time and peak memory per seed.

    static: the meta-learned initialisation with few-step adaptation ('fast') next to ordinary full training
    ('full'). stream: the dataset replayed in windows; incremental dynalign next to retraining on every window,
    a frozen model and the initialisation ablation (meta-learned / pretrained / random). --suite: every pair of
    a suite folder, 'fast' only, both directions, next to the baseline table of its README."""
    cfg = config_for(ctx, **ctx.obj["log_overrides"])
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    if not suite and (only or skip or baseline_file):
        raise click.UsageError("--only, --skip and --baseline go with --suite")
    if suite:
        from aligner.bench.suite import bench_suite, format_suite_table, load_baseline, suite_folders

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
    elif protocol == "multi":
        from aligner.bench.multi import MULTI_VARIANTS, bench_multi, format_multi_table, kept_train
        from stream.datasets import is_multi_dataset
        from stream.multi_datasets import MULTI_FORMAT_HINT, load_multi_dataset

        if not is_multi_dataset(dataset_dir):
            raise click.BadParameter(f"{dataset_dir} has no networks/ folder; the multi protocol takes "
                                     f"{MULTI_FORMAT_HINT}", param_hint="DATASET_DIR")
        shares = {}
        for item in train_share:
            name, _, value = item.partition("=")
            try:
                shares[name.strip()] = float(value)
            except ValueError:
                raise click.BadParameter(f"{item!r}: expected PAIR=SHARE, e.g. a~b=0.1",
                                         param_hint="--train-share") from None
        try:  # a share naming no pair, or out of range, is refused before any work
            kept_train(load_multi_dataset(dataset_dir).train, shares, seed=0)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--train-share") from None
        result = bench_multi(dataset_dir, cfg, seeds=seeds, echo=echo, train_share=shares,
                             variants=chosen_variants(variants, MULTI_VARIANTS))
        click.echo(format_multi_table(result))
    elif protocol == "stream":
        from aligner.bench.stream import VARIANTS, bench_stream, format_stream_table, plot_stream

        chosen = chosen_variants(variants, VARIANTS)
        result = bench_stream(dataset_dir, cfg, seeds=seeds, windows=windows, full_steps=full_steps,
                              variants=chosen, validation=validation, echo=echo)
        click.echo(format_stream_table(result))
        if plot_out:
            plot_stream(result, plot_out)
    else:
        from aligner.bench.static import bench_static, format_table

        result = bench_static(dataset_dir, cfg, seeds=seeds, train_ratio=train_ratio, full_steps=full_steps,
                              validation=validation, echo=echo)
        click.echo(format_table(result))
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=1))
