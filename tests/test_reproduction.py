"""The reproduction check (hardgen.evaluation.reproduction) on made-up benchmark and anchor tables."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hardgen.core.io import DataError
from hardgen.evaluation import reproduction as repro
from hardgen.report import markdown, summary


def _long(rows: list[tuple]) -> pd.DataFrame:
    """Benchmark long rows (arch, policy, ratio, seed, testset, metric, value)."""
    return pd.DataFrame(rows, columns=summary.BENCHMARK_COLUMNS)


def _anchors(rows: list[tuple]) -> pd.DataFrame:
    return repro.check_anchors(pd.DataFrame(rows, columns=repro.ANCHOR_COLUMNS))


#: cnn's real-only runs: seeds 0 and 1 on two test sets (B first in data.testsets); a synthetic run that must be
#: ignored; transformer: one seed.
LONG = _long([
    ("cnn", "real", 0.0, 0, "A", "mDice", 0.80), ("cnn", "real", 0.0, 1, "A", "mDice", 0.90),
    ("cnn", "real", 0.0, 0, "A", "mIoU", 0.70), ("cnn", "real", 0.0, 1, "A", "mIoU", 0.80),
    ("cnn", "real", 0.0, 0, "B", "mDice", 0.60), ("cnn", "real", 0.0, 1, "B", "mDice", 0.60),
    ("cnn", "real", 0.0, 0, "B", "mIoU", 0.50), ("cnn", "real", 0.0, 1, "B", "mIoU", 0.52),
    ("cnn", "real", 0.0, 0, "overall", "mDice", 0.70), ("cnn", "hard", 1.0, 0, "A", "mDice", 0.10),
    ("transformer", "real", 0.0, 0, "A", "mDice", 0.50), ("transformer", "real", 0.0, 0, "A", "mIoU", 0.40),
    ("transformer", "real", 0.0, 0, "B", "mDice", 0.50), ("transformer", "real", 0.0, 0, "B", "mIoU", 0.40),
])
ANCHORS = _anchors([
    ("NetX", "A", "mDice", 0.86), ("NetX", "A", "mIoU", 0.76), ("NetX", "B", "mDice", 0.59),
    ("NetX", "B", "mIoU", 0.50), ("NetY", "A", "mDice", 0.90), ("NetY", "A", "mIoU", 0.85),
    ("Paper", "mean", "mIoU", 0.80),
])


def test_reproduction_table_puts_the_real_only_mean_over_seeds_beside_the_published_value() -> None:
    table = repro.reproduction_table(LONG, ANCHORS, {"cnn": "NetX", "transformer": None}, ["B", "A"])
    assert list(table.columns) == ["arch", "testset", "metric", "ours", "published", "diff"]
    assert set(table["arch"]) == {"cnn"}  # no published model, no rows
    rows = table.set_index(["testset", "metric"])
    assert list(dict.fromkeys(table["testset"])) == ["B", "A", "mean"]  # data.testsets order, then the mean rows
    assert rows.loc[("A", "mDice"), "ours"] == pytest.approx(0.85)  # mean over seeds 0.80 and 0.90, hard ignored
    assert rows.loc[("A", "mDice"), "diff"] == pytest.approx(0.85 - 0.86)
    assert rows.loc[("B", "mIoU"), "diff"] == pytest.approx(0.51 - 0.50)
    assert rows.loc[("mean", "mDice"), "ours"] == pytest.approx((0.85 + 0.60) / 2)
    assert rows.loc[("mean", "mDice"), "published"] == pytest.approx((0.86 + 0.59) / 2)
    # a model with one of the two test sets: NaN where there is no anchor, and no mean row
    partial = repro.reproduction_table(LONG, ANCHORS, {"transformer": "NetY"}, ["A", "B"]).set_index(
        ["testset", "metric"])
    assert partial.loc[("A", "mIoU"), "diff"] == pytest.approx(0.40 - 0.85)
    assert pd.isna(partial.loc[("B", "mIoU"), "published"]) and "mean" not in partial.index.get_level_values(0)


def test_reproduction_errors_name_the_config_key() -> None:
    with pytest.raises(DataError, match=r"segment.archs.cnn.published: 'PraNet' is not a model"):
        repro.reproduction_table(LONG, ANCHORS, {"cnn": "PraNet"}, ["A", "B"])
    with pytest.raises(DataError, match="segment.archs.other.published.*no real-only result"):
        repro.reproduction_table(LONG, ANCHORS, {"other": "NetX"}, ["A", "B"])
    with pytest.raises(DataError, match="may not be called 'mean'"):
        repro.reproduction_table(LONG, ANCHORS, {"cnn": "NetX"}, ["mean"])


def test_sentences_say_reproduces_or_misses_by_how_much() -> None:
    published = {"cnn": "NetX", "transformer": "NetY", "extra": None}
    table = repro.reproduction_table(LONG, ANCHORS, {k: v for k, v in published.items() if k != "extra"}, ["A", "B"])
    # cnn: |diff| mDice 0.01, 0.01 -> 0.01; mIoU 0.01, 0.01 -> 0.01: within 0.02
    verdicts = repro.reproduction_verdicts(table, 0.02).set_index("arch")
    assert verdicts.loc["cnn", "reproduces"] and not verdicts.loc["transformer", "reproduces"]
    assert verdicts.loc["cnn", "mean_abs_diff_mDice"] == pytest.approx(0.01)
    assert verdicts.loc["transformer", "n_testsets"] == 1  # NetY has no anchor for B
    sentences = repro.reproduction_sentences(table, published, 0.02)
    assert len(sentences) == 3
    # signed misses cancel (−0.01 on A, +0.01 on B); the mean |diff| says how far each test set is
    assert re.match(r"cnn's real-only baseline reproduces NetX's published mDice / mIoU by [+-]0\.000 / [+-]0\.000 on "
                    r"average over 2 test sets \(mean \|diff\| 0\.010 / 0\.010; \"reproduces\" means at most 0\.020",
                    sentences[0])
    assert sentences[1].startswith("transformer's real-only baseline misses NetY's published mDice / mIoU by "
                                   "-0.400 / -0.450 on average over 1 test set (")
    assert "no published anchor" in sentences[2] and "segment.archs.extra.published" in sentences[2]
    # a tighter tolerance turns cnn's verdict
    assert "cnn's real-only baseline misses" in repro.reproduction_sentences(table, published, 0.005)[0]
    with pytest.raises(ValueError, match="reproduce_tolerance"):
        repro.reproduction_verdicts(table, 0.0)


def test_load_anchors_checks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "anchors.csv"
    path.write_text("model,testset,metric,value\nNetX,A,mDice,0.9\n")
    assert repro.load_anchors(path)["value"].tolist() == [0.9]
    path.write_text("model,testset,metric,value\nNetX,A,mDice,89.9\n")  # percent, not a fraction
    with pytest.raises(DataError, match="fractions in \\[0, 1\\]"):
        repro.load_anchors(path)
    path.write_text("model,testset,metric,value\nNetX,A,mDice,0.9\nNetX,A,mDice,0.8\n")
    with pytest.raises(DataError, match="more than one value"):
        repro.load_anchors(path)
    path.write_text("model,set,metric,value\nNetX,A,mDice,0.9\n")
    with pytest.raises(DataError, match="exactly the columns"):
        repro.load_anchors(path)
    with pytest.raises(DataError, match="report.anchors"):
        repro.load_anchors(tmp_path / "missing.csv")


def test_the_report_works_with_one_custom_test_set(tmp_path: Path) -> None:
    """A non-polyp dataset with a single test set: names, order and anchors all come from config, not code."""
    long = _long([("unet", "real", 0.0, s, t, m, v) for s, base in ((0, 0.7), (1, 0.8))
                  for t, m, v in (("Site-Z", "mDice", base), ("Site-Z", "mIoU", base - 0.1),
                                  ("overall", "mDice", base), ("overall", "mIoU", base - 0.1))])
    anchors = _anchors([("SegNet-Z", "Site-Z", "mDice", 0.74), ("SegNet-Z", "Site-Z", "mIoU", 0.66)])
    published = {"unet": "SegNet-Z"}
    table = repro.reproduction_table(long, anchors, published, ["Site-Z"])
    assert table["testset"].tolist() == ["Site-Z", "Site-Z", "mean", "mean"]
    assert table["diff"].tolist() == pytest.approx([0.01, -0.01, 0.01, -0.01])
    md = markdown.markdown_report(markdown.BenchmarkTables(long, anchors=anchors, reproduction=table),
                                  markdown.MarkdownOptions(testsets=["Site-Z"], published=published))
    first = md.split("\n\n")[1]
    assert first.startswith("unet's real-only baseline reproduces SegNet-Z's published mDice / mIoU by +0.010 / "
                            "-0.010 on average over 1 test set")
    assert "| arch | policy | ratio | seeds | Site-Z | mean | overall |" in md
    assert "| model | Site-Z | mean |" in md and "| SegNet-Z | 0.740 / 0.660 | 0.740 / 0.660 |" in md
    for polyp in ("Kvasir", "CVC-300", "| PraNet |", "SANet", "86.84"):  # no polyp test set or anchor from code
        assert polyp not in md


def test_missing_real_only_scores_are_marked_not_fatal() -> None:
    """A real-only score that is undefined (NaN) for a seed is left out of the mean over seeds; one undefined for
    every seed keeps its row with NaN ``ours`` / ``diff`` and the sentence says what was left out."""
    nan = float("nan")
    long = _long([
        ("cnn", "real", 0.0, 0, "A", "mDice", 0.80), ("cnn", "real", 0.0, 1, "A", "mDice", nan),
        ("cnn", "real", 0.0, 0, "A", "mIoU", 0.70), ("cnn", "real", 0.0, 1, "A", "mIoU", 0.76),
        ("cnn", "real", 0.0, 0, "B", "mDice", nan), ("cnn", "real", 0.0, 1, "B", "mDice", nan),
        ("cnn", "real", 0.0, 0, "B", "mIoU", 0.50), ("cnn", "real", 0.0, 1, "B", "mIoU", 0.50),
    ])
    table = repro.reproduction_table(long, ANCHORS, {"cnn": "NetX"}, ["A", "B"]).set_index(["testset", "metric"])
    assert table.loc[("A", "mDice"), "ours"] == pytest.approx(0.80)  # seed 1's NaN left out, not counted as 0
    assert pd.isna(table.loc[("B", "mDice"), "ours"]) and pd.isna(table.loc[("B", "mDice"), "diff"])
    assert pd.isna(table.loc[("mean", "mDice"), "ours"])  # a mean over test sets with one undefined is undefined
    verdict = repro.reproduction_verdicts(table.reset_index(), 0.02).set_index("arch").loc["cnn"]
    assert verdict["undefined_mDice"] == 1 and verdict["undefined_mIoU"] == 0
    assert verdict["mean_abs_diff_mDice"] == pytest.approx(0.06)  # over A alone
    sentence = repro.reproduction_sentences(table.reset_index(), {"cnn": "NetX"}, 0.02)[0]
    assert "misses NetX's published mDice / mIoU" in sentence and "nan" not in sentence
    assert "(1 anchored test-set score left out: undefined for this arch)" in sentence
    # no defined mDice on any anchored test set: it cannot be checked, and the sentence says why
    none = long.assign(value=np.where(long["metric"] == "mDice", nan, long["value"]))
    table = repro.reproduction_table(none, ANCHORS, {"cnn": "NetX"}, ["A", "B"])
    assert repro.reproduction_sentences(table, {"cnn": "NetX"}, 0.02)[0].startswith(
        "cnn's real-only baseline cannot be checked against NetX on mDice: its own score is undefined (NaN) on every "
        "anchored test set (2 anchored test-set scores left out")
