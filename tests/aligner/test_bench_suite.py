"""`dynalign bench DIR --suite`: a tiny suite with good, broken and non-pair folders gives one row each, the
baseline difference comes from the suite README's table, and the reverse direction is a score of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from aligner.bench.suite import parse_baseline_table, skip_reason
from aligner.cli import cli
from tests.aligner.test_service import FAST
from tests.synthetic import write_pair_dataset

SUITE_README = """# A tiny suite

| dataset | source / target | nodes |
|---|---|---|
| clean | a / b | 60 |

## Reference
| dataset | Hits@1 | Hits@10 | MRR | wall | peak |
|---|---|---|---|---|---|
| clean | 0.250 | 0.900 | 0.500 | 1,234 s | 0.5 GB |
| noisy | not measured: too slow here | | | > 1,800 s | |
"""
REAL_README = Path("/work/shared/data/README.md")


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suite")
    write_pair_dataset(root / "clean", n=60, seed=1, edge_keep=1.0)
    # 30% of edges dropped: the two directions rank different candidate sets and must not come out identical.
    write_pair_dataset(root / "noisy", n=60, seed=2, edge_keep=0.7)
    broken = write_pair_dataset(root / "broken", n=60, seed=3)
    (broken / "anchors.tsv").unlink()
    (root / "multi" / "networks").mkdir(parents=True)
    (root / "README.md").write_text(SUITE_README)
    return root


def test_the_suite_gives_one_row_per_folder_with_baseline_diff_errors_and_skips(suite, tmp_path):
    out = tmp_path / "suite.json"
    env = {**FAST, "DYNALIGN_SERVICE_THREADS": "1"}
    result = CliRunner().invoke(cli, ["bench", str(suite), "--suite", "--seeds", "1", "--json", str(out)], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    rows = {r["pair"]: r for r in data["rows"]}
    assert list(rows) == ["broken", "clean", "multi", "noisy"]

    assert rows["broken"]["status"] == "error" and "anchors.tsv" in rows["broken"]["note"]
    assert rows["multi"]["status"] == "skipped" and "multi-network" in rows["multi"]["note"]

    clean, noisy = rows["clean"], rows["noisy"]
    assert clean["status"] == noisy["status"] == "ok"
    for row in (clean, noisy):
        s2t, t2s, both = row["source_to_target"], row["target_to_source"], row["both"]
        for k in ("hits@1", "hits@10", "mrr"):
            assert both[k] == pytest.approx((s2t[k] + t2s[k]) / 2, abs=1e-4)
        # A real ranking the other way: well above chance (1/60) and consistent with itself.
        assert t2s["hits@1"] <= t2s["hits@10"] and t2s["mrr"] > 0.1
        assert row["per_seed"][0]["fast"]["target_to_source"]["hits@1"] == t2s["hits@1"]
        assert "full" not in row["per_seed"][0]  # the suite trains the fast model only
        assert row["peak_rss_mb"]["max"] > 0 and row["wall_s"]["mean"] > 0
    # With noise the two directions rank different candidate sets (target→source against source nodes): on a
    # noisy pair two independent rankings agreeing on every metric would mean one is a copy of the other.
    assert noisy["source_to_target"] != noisy["target_to_source"]

    # The baseline from the README's table; the "not measured" row gives no figure and no difference.
    assert clean["baseline"]["hits1"] == 0.25 and clean["baseline"]["wall_s"] == 1234
    assert clean["diff_hits@1"] == pytest.approx(clean["source_to_target"]["hits@1"] - 0.25, abs=1e-4)
    assert noisy["baseline"]["hits1"] is None and noisy["diff_hits@1"] is None
    assert "not measured" in noisy["note"]
    assert data["suite_mean"]["pairs"] == ["clean"]

    table = result.stdout.splitlines()
    line = next(r for r in table if r.startswith("clean"))
    assert f"{clean['diff_hits@1']:+.3f}" in line and "0.250" in line
    assert any(r.startswith("broken") and "error: " in r for r in table)
    assert any(r.startswith("suite mean") for r in table)
    assert "[1/4] broken" in result.stderr


def test_suite_options_are_checked(suite):
    runner = CliRunner()
    bad = runner.invoke(cli, ["bench", str(suite), "--suite", "--only", "clean,nope"])
    assert bad.exit_code == 1 and "dynalign: error: --only: no folder nope" in bad.stderr
    assert runner.invoke(cli, ["bench", str(suite), "--only", "clean"]).exit_code == 2  # --only without --suite
    no_table = suite / "README.md"
    bad = runner.invoke(cli, ["bench", str(suite), "--suite", "--baseline", str(suite / "clean" / "meta.json")])
    assert bad.exit_code == 1 and "no baseline table found" in bad.stderr and no_table.exists()


def test_skip_reason_tells_pairs_from_other_folders(suite):
    assert skip_reason(suite / "clean") is None
    assert skip_reason(suite / "broken") is None  # a pair, broken: that is an error when it runs, not a skip
    assert "networks/" in skip_reason(suite / "multi")
    assert "source.edges.tsv" in skip_reason(suite / "multi" / "networks")


@pytest.mark.skipif(not REAL_README.exists(), reason="the shared development suite is not here")
def test_the_real_suite_readme_table_parses():
    table = parse_baseline_table(REAL_README.read_text())
    assert table["douban"].hits1 == pytest.approx(0.739) and table["douban"].mrr == pytest.approx(0.827)
    assert table["acm-dblp"].wall_s == 1783 and table["acm-dblp"].peak_gb == pytest.approx(13.7)
    assert table["arenas"].hits1 == 1.0
    # "not measured" rows: no figure (a "> 1,800 s" bound is not one), the reason kept.
    assert table["allmovie-imdb"].hits1 is None and table["allmovie-imdb"].wall_s is None
    assert table["allmovie-imdb"].note.startswith("not measured")
    # Only the reference table: the datasets table above it has no Hits@1 column.
    assert "enron-10k-3views" not in table
