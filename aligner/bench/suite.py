"""``dynalign bench DIR --suite``: one table of accuracy, time and memory over every pair of a development suite.

A suite is a folder of datasets in the exchange format (``../shared/data``). Every pair runs through
:func:`aligner.bench.static.bench_static` with the same settings, the ``fast`` model only (``full`` would double the cost
and is not what the service runs), each seed in its own process. Per pair: Hits@1, Hits@10 and MRR source→target
and target→source (mean over seeds) and the mean of both directions, the PlanetAlign benchmark's convention; wall
time and peak memory per seed. Beside them, the baseline figures of a markdown table (by default the suite's
README), with the difference. A pair that fails is a row with its error, and a folder that is not a pair (the
multi-network format, anything else) a row saying why it was skipped: one bad folder must not lose a long run.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Callable

from aligner.bench.static import bench_static
from aligner.config import Config

METRICS = ("hits@1", "hits@1_shared", "hits@10", "mrr")
BASELINE_COLUMNS = {"dataset": "dataset", "hits@1": "hits@1", "hits@10": "hits@10", "mrr": "mrr", "wall": "wall_s",
                    "peak": "peak_gb"}


class Status(str, Enum):
    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True)
class Baseline:
    """One row of a baseline table; a figure the table does not give (e.g. "not measured") is None."""
    hits1: float | None
    hits10: float | None
    mrr: float | None
    wall_s: float | None
    peak_gb: float | None
    note: str = ""


def _number(cell: str) -> float | None:
    """``0.739``, ``1,783 s``, ``13.7 GB`` → the number; anything with a qualifier (``> 1,800 s``) or words → None,
    since a bound is not a figure to take a difference with."""
    m = re.fullmatch(r"\s*([0-9][0-9,]*(?:\.[0-9]+)?)\s*(?:s|GB)?\s*", cell)
    return float(m.group(1).replace(",", "")) if m else None


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_baseline_table(text: str) -> dict[str, Baseline]:
    """The first markdown table whose header has ``dataset``, ``Hits@1``, ``Hits@10`` and ``MRR`` (and optionally
    ``wall`` and ``peak``) columns, as dataset name → :class:`Baseline`. ``ValueError`` when there is none."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("|"):
            continue
        header = [c.lower() for c in _cells(line)]
        if not {"dataset", "hits@1", "hits@10", "mrr"} <= set(header):
            continue
        col = {BASELINE_COLUMNS[h]: j for j, h in enumerate(header) if h in BASELINE_COLUMNS}
        out = {}
        for row in lines[i + 2:]:  # past the header's |---| line
            if not row.lstrip().startswith("|"):
                break
            cells = _cells(row) + [""] * len(header)
            figures = {name: _number(cells[j]) for name, j in col.items() if name != "dataset"}
            hits1 = figures.get("hits@1")
            # A row without figures says why in its first cell after the name ("not measured: ...").
            note = "" if hits1 is not None else cells[col["hits@1"]]
            out[cells[col["dataset"]]] = Baseline(hits1, figures.get("hits@10"), figures.get("mrr"),
                                                  figures.get("wall_s"), figures.get("peak_gb"), note)
        return out
    raise ValueError("no baseline table found: expected a markdown table with columns dataset | Hits@1 | Hits@10 | "
                     "MRR (e.g. the suite README's 'Reference' table); pass one with --baseline FILE")


def load_baseline(path: Path) -> dict[str, Baseline]:
    try:
        return parse_baseline_table(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def skip_reason(folder: Path) -> str | None:
    """Why ``folder`` is not a source/target pair of the exchange format, or None when it is one (it may still be a
    broken one: that shows when it is loaded)."""
    if (folder / "networks").is_dir():
        return "multi-network format (networks/), not a source/target pair: dynalign bench DIR --protocol multi"
    missing = [f for f in ("source.edges.tsv", "target.edges.tsv") if not (folder / f).exists()]
    if missing:
        return f"not a pair dataset: no {' or '.join(missing)}"
    return None


def suite_folders(root: Path, only: list[str] | None = None, skip: list[str] | None = None) -> list[Path]:
    """The dataset folders of a suite, by name; ``only`` and ``skip`` must name folders that exist (a typo would
    otherwise silently run everything, or nothing)."""
    if not root.is_dir():
        raise FileNotFoundError(f"suite folder {root} does not exist")
    folders = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    for flag, names in (("--only", only), ("--skip", skip)):
        unknown = sorted(set(names or ()) - set(folders))
        if unknown:
            raise ValueError(f"{flag}: no folder {', '.join(unknown)} in {root} (folders: {', '.join(folders)})")
    chosen = [p for name, p in folders.items() if (not only or name in only) and name not in (skip or ())]
    if not chosen:
        raise ValueError(f"no dataset folder to run in {root}")
    return chosen


def _pair_row(folder: Path, cfg: Config, seeds: int, train_ratio: float | None, validation: bool,
              baseline: Baseline | None, echo: Callable[[str], None]) -> dict:
    row: dict = {"pair": folder.name, "baseline": None if baseline is None else dataclasses.asdict(baseline)}
    reason = skip_reason(folder)
    if reason:
        return {**row, "status": Status.SKIPPED.value, "note": reason}
    started = time.perf_counter()
    try:
        result = bench_static(folder, cfg, seeds=seeds, train_ratio=train_ratio, validation=validation,
                              echo=lambda line: echo(f"{folder.name}: {line}"), variants=("fast",))
    except Exception as e:  # noqa: BLE001 — any failure of one pair is its row; the suite goes on
        text = str(e).strip().splitlines()
        return {**row, "status": Status.ERROR.value, "note": text[0] if text else type(e).__name__,
                "elapsed_s": round(time.perf_counter() - started, 1)}
    fast = result["summary"]["fast"]
    s2t = {k: fast[k]["mean"] for k in METRICS}
    t2s = {k: fast["target_to_source"][k]["mean"] for k in METRICS}
    row.update({
        "status": Status.OK.value, "note": "",
        "source_to_target": s2t, "target_to_source": t2s,
        "both": {k: round((s2t[k] + t2s[k]) / 2, 4) for k in METRICS},
        "std_source_to_target": {k: fast[k]["std"] for k in METRICS},
        "wall_s": result["summary"]["wall_s"], "peak_rss_mb": result["summary"]["peak_rss_mb"],
        # The baseline table reports source→target, so that is the direction compared.
        "diff_hits@1": None if baseline is None or baseline.hits1 is None else round(s2t["hits@1"] - baseline.hits1, 4),
        "per_seed": result["per_seed"],
    })
    notes = [calibration_note(result["per_seed"]), tie_note(fast)]
    if baseline is not None and baseline.hits1 is None:
        notes.append(f"baseline: {baseline.note}")
    row["note"] = "; ".join(n for n in notes if n)
    return row


def calibration_note(per_seed: list[dict]) -> str:
    """What self-calibration chose over the seeds, most frequent first, e.g. ``calibrated marginal=exact
    beta=0.3 x2, marginal=0.1 beta=0.3 x1``; empty when it did not run.

    >>> calibration_note([{"fast": {"calibrated": {"marginal_weight": None, "beta": 0.3}}}, {"fast": {}}])
    'calibrated marginal=exact beta=0.3 x1'
    """
    from aligner.matching.calibration import RefineSetting

    chosen = Counter(RefineSetting(**r["fast"]["calibrated"]).label for r in per_seed if "calibrated" in r["fast"])
    return "calibrated " + ", ".join(f"{label} x{n}" for label, n in chosen.most_common()) if chosen else ""


def tie_note(summary: dict) -> str:
    """Says how often the true partner shares first place (Hits@1 counts such a tie as a miss, "H@1 shared" as
    a fraction); empty below 1% of the pairs.

    >>> tie_note({"tied@1": {"mean": 0.044}})
    'ties: 4.4% of true partners share first place'
    """
    tied = summary.get("tied@1", {}).get("mean", 0.0)
    return f"ties: {tied:.1%} of true partners share first place" if tied >= 0.01 else ""


def bench_suite(folders: list[Path], cfg: Config, seeds: int = 3, baseline: dict[str, Baseline] | None = None,
                train_ratio: float | None = None, validation: bool = False,
                echo: Callable[[str], None] = print) -> dict:
    """Every folder with the same settings, in order; one row per folder (ok, error or skipped) and the suite mean
    over the pairs that have both our Hits@1 and a baseline one."""
    baseline = baseline or {}
    rows = []
    for i, folder in enumerate(folders, 1):
        echo(f"[{i}/{len(folders)}] {folder.name}")
        row = _pair_row(folder, cfg, seeds, train_ratio, validation, baseline.get(folder.name), echo)
        if row["status"] != Status.OK.value:
            echo(f"{folder.name}: {row['status']}: {row['note']}")
        rows.append(row)
    compared = [r for r in rows if r.get("diff_hits@1") is not None]
    mean = None
    if compared:
        mean = {"pairs": [r["pair"] for r in compared],
                "hits@1": round(statistics.fmean(r["source_to_target"]["hits@1"] for r in compared), 4),
                "hits@1_shared": round(statistics.fmean(r["source_to_target"]["hits@1_shared"] for r in compared), 4),
                "hits@10": round(statistics.fmean(r["source_to_target"]["hits@10"] for r in compared), 4),
                "mrr": round(statistics.fmean(r["source_to_target"]["mrr"] for r in compared), 4),
                "both_hits@1": round(statistics.fmean(r["both"]["hits@1"] for r in compared), 4),
                "baseline_hits@1": round(statistics.fmean(r["baseline"]["hits1"] for r in compared), 4),
                "diff_hits@1": round(statistics.fmean(r["diff_hits@1"] for r in compared), 4),
                "wall_s": round(statistics.fmean(r["wall_s"]["mean"] for r in compared), 2),
                "peak_rss_mb": max(r["peak_rss_mb"]["max"] for r in compared)}
    return {"protocol": "static", "model": "fast", "seeds": seeds, "train_ratio": train_ratio,
            "scored_on": "validation (held-out train anchors)" if validation else "test anchors",
            "rows": rows, "suite_mean": mean}


def format_suite_table(result: dict) -> str:
    """The suite as one fixed-width table; metrics are means over seeds, "both" the mean of the two directions."""
    head = ("pair", "H@1 s→t", "H@1 shared", "H@10", "MRR", "H@1 both", "baseline H@1", "diff", "s/seed", "peak GB",
            "note")
    widths = (18, 8, 10, 7, 7, 9, 13, 8, 8, 8, 0)

    def fmt(v: float | None, spec: str = ".3f") -> str:
        return "-" if v is None else format(v, spec)

    def line(cells) -> str:
        return "".join(c.ljust(w) if i in (0, len(head) - 1) else c.rjust(w) + "  "
                       for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [f"suite: {len(result['rows'])} folders, fast model, {result['seeds']} seed(s), scored on "
             f"{result['scored_on']}; H@1/H@10/MRR source→target, 'both' = mean of both directions, diff = H@1 s→t "
             "minus baseline; 'shared': ties for first place count as 1/(number tied), the expected Hits@1 under "
             "random tie-breaking (plain Hits@1 counts them as misses)", line(head)]
    for r in result["rows"]:
        b = r["baseline"] or {}
        if r["status"] != Status.OK.value:
            lines.append(line((r["pair"], *["-"] * 5, fmt(b.get("hits1")), "-", "-", "-",
                               f"{r['status']}: {r['note']}")))
            continue
        s2t = r["source_to_target"]
        lines.append(line((r["pair"], fmt(s2t["hits@1"]), fmt(s2t.get("hits@1_shared")), fmt(s2t["hits@10"]),
                           fmt(s2t["mrr"]),
                           fmt(r["both"]["hits@1"]), fmt(b.get("hits1")), fmt(r["diff_hits@1"], "+.3f"), fmt(r["wall_s"]["mean"], ".0f"),
                           fmt(r["peak_rss_mb"]["max"] / 1024, ".2f"), r["note"])))
    m = result["suite_mean"]
    if m:
        lines.append(line(("suite mean", fmt(m["hits@1"]), fmt(m.get("hits@1_shared")), fmt(m["hits@10"]),
                           fmt(m["mrr"]), fmt(m["both_hits@1"]),
                           fmt(m["baseline_hits@1"]), fmt(m["diff_hits@1"], "+.3f"), fmt(m["wall_s"], ".0f"),
                           fmt(m["peak_rss_mb"] / 1024, ".2f"), f"over {len(m['pairs'])} pair(s) with a baseline")))
    return "\n".join(lines)
