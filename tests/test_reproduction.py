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


def _anchors(rows: list[tuple], n_train: int = 100, selection: str = "final") -> pd.DataFrame:
    """Anchor rows (model, testset, metric, value), every model trained on ``n_train`` real images."""
    return repro.check_anchors(pd.DataFrame(rows, columns=repro.ANCHOR_COLUMNS[:4]).assign(
        n_train=n_train, selection=selection))


#: The real images every arch's real-only runs trained on (runs.csv's real_images), as many as the anchors'.
N_REAL = {"cnn": 100, "transformer": 100, "unet": 100}


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
    table = repro.reproduction_table(LONG, ANCHORS, {"cnn": "NetX", "transformer": None}, ["B", "A"], N_REAL)
    assert list(table.columns) == ["arch", "testset", "metric", "ours", "published", "diff", "n_real",
                                   "published_n_train", "selection"]
    assert set(table["n_real"]) == {100} and set(table["published_n_train"]) == {100}
    assert set(table["selection"]) == {"final"}
    assert set(table["arch"]) == {"cnn"}  # no published model, no rows
    rows = table.set_index(["testset", "metric"])
    assert list(dict.fromkeys(table["testset"])) == ["B", "A", "mean"]  # data.testsets order, then the mean rows
    assert rows.loc[("A", "mDice"), "ours"] == pytest.approx(0.85)  # mean over seeds 0.80 and 0.90, hard ignored
    assert rows.loc[("A", "mDice"), "diff"] == pytest.approx(0.85 - 0.86)
    assert rows.loc[("B", "mIoU"), "diff"] == pytest.approx(0.51 - 0.50)
    assert rows.loc[("mean", "mDice"), "ours"] == pytest.approx((0.85 + 0.60) / 2)
    assert rows.loc[("mean", "mDice"), "published"] == pytest.approx((0.86 + 0.59) / 2)
    # a model with one of the two test sets: NaN where there is no anchor, and no mean row
    partial = repro.reproduction_table(LONG, ANCHORS, {"transformer": "NetY"}, ["A", "B"], N_REAL).set_index(
        ["testset", "metric"])
    assert partial.loc[("A", "mIoU"), "diff"] == pytest.approx(0.40 - 0.85)
    assert pd.isna(partial.loc[("B", "mIoU"), "published"]) and "mean" not in partial.index.get_level_values(0)


def test_reproduction_errors_name_the_config_key() -> None:
    with pytest.raises(DataError, match=r"segment.archs.cnn.published: 'PraNet' is not a model"):
        repro.reproduction_table(LONG, ANCHORS, {"cnn": "PraNet"}, ["A", "B"], N_REAL)
    with pytest.raises(DataError, match="segment.archs.other.published.*no real-only result"):
        repro.reproduction_table(LONG, ANCHORS, {"other": "NetX"}, ["A", "B"], N_REAL)
    with pytest.raises(DataError, match="may not be called 'mean'"):
        repro.reproduction_table(LONG, ANCHORS, {"cnn": "NetX"}, ["mean"], N_REAL)
    with pytest.raises(DataError, match=r"segment.archs.cnn.published.*runs.csv: real_images"):
        repro.reproduction_table(LONG, ANCHORS, {"cnn": "NetX"}, ["A", "B"], {})


def test_sentences_say_reproduces_or_misses_by_how_much() -> None:
    published = {"cnn": "NetX", "transformer": "NetY", "extra": None}
    table = repro.reproduction_table(LONG, ANCHORS, {k: v for k, v in published.items() if k != "extra"}, ["A", "B"],
                                     N_REAL)
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
    header = "model,testset,metric,value,n_train,selection\n"
    path.write_text(header + "NetX,A,mDice,0.9,1450,best_on_test\n")
    loaded = repro.load_anchors(path)
    assert loaded["value"].tolist() == [0.9] and loaded["n_train"].tolist() == [1450]
    assert loaded["selection"].tolist() == ["best_on_test"]
    path.write_text(header + "NetX,A,mDice,89.9,1450,final\n")  # percent, not a fraction
    with pytest.raises(DataError, match="fractions in \\[0, 1\\]"):
        repro.load_anchors(path)
    path.write_text(header + "NetX,A,mDice,0.9,1450,final\nNetX,A,mDice,0.8,1450,final\n")
    with pytest.raises(DataError, match="more than one value"):
        repro.load_anchors(path)
    path.write_text("model,set,metric,value,n_train,selection\nNetX,A,mDice,0.9,1450,final\n")
    with pytest.raises(DataError, match="exactly the columns"):
        repro.load_anchors(path)
    # the older four columns: an error naming the two it lacks, never a silent "unknown"
    path.write_text("model,testset,metric,value\nNetX,A,mDice,0.9\n")
    with pytest.raises(DataError, match=r"anchors.csv: anchors file lacks columns \['n_train', 'selection'\]"):
        repro.load_anchors(path)
    for rows, column in ((["NetX,A,mDice,0.9,,final"], "n_train"), (["NetX,A,mDice,0.9,14.5,final"], "n_train"),
                         (["NetX,A,mDice,0.9,0,final"], "n_train"), (["NetX,A,mDice,0.9,1450,best"], "selection"),
                         (["NetX,A,mDice,0.9,1450,final", "NetX,A,mIoU,0.8,100,final"], "n_train"),
                         (["NetX,A,mDice,0.9,1450,final", "NetX,A,mIoU,0.8,1450,best_on_test"], "selection")):
        path.write_text(header + "\n".join(rows) + "\n")
        with pytest.raises(DataError, match=f"anchors.csv: column {column}"):
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
    table = repro.reproduction_table(long, anchors, published, ["Site-Z"], N_REAL)
    assert table["testset"].tolist() == ["Site-Z", "Site-Z", "mean", "mean"]
    assert table["diff"].tolist() == pytest.approx([0.01, -0.01, 0.01, -0.01])
    md = markdown.markdown_report(markdown.BenchmarkTables(long, anchors=anchors, reproduction=table),
                                  markdown.MarkdownOptions(testsets=["Site-Z"], published=published))
    first = md.split("\n\n")[1]
    assert first.startswith("unet's real-only baseline reproduces SegNet-Z's published mDice / mIoU by +0.010 / "
                            "-0.010 on average over 1 test set")
    assert "| arch | policy | ratio | seeds | Site-Z | mean | overall |" in md
    assert "| model | Site-Z | mean |" in md and "| SegNet-Z | 0.740 / 0.660 | 0.740 / 0.660 |" in md
    assert "Trained on (real images, published checkpoint): SegNet-Z 100, final." in md
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
    table = repro.reproduction_table(long, ANCHORS, {"cnn": "NetX"}, ["A", "B"], N_REAL).set_index(
        ["testset", "metric"])
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
    table = repro.reproduction_table(none, ANCHORS, {"cnn": "NetX"}, ["A", "B"], N_REAL)
    assert repro.reproduction_sentences(table, {"cnn": "NetX"}, 0.02)[0].startswith(
        "cnn's real-only baseline cannot be checked against NetX on mDice: its own score is undefined (NaN) on every "
        "anchored test set (2 anchored test-set scores left out")


def test_a_baseline_on_100_images_is_never_judged_against_numbers_trained_on_1450() -> None:
    """PraNet's published numbers come from 1,450 training images: a baseline trained on 100 has no like-for-like
    anchor, so the report refuses the comparison instead of saying it does not reproduce."""
    full = _anchors(ANCHORS[ANCHORS["model"] == "NetX"][repro.ANCHOR_COLUMNS[:4]].values.tolist(), n_train=1450)
    table = repro.reproduction_table(LONG, full, {"cnn": "NetX"}, ["A", "B"], {"cnn": 100})
    assert set(table["n_real"]) == {100} and set(table["published_n_train"]) == {1450}
    assert table["published"].notna().all() and table["ours"].notna().all()  # both sides shown
    assert table["diff"].isna().all()  # never compared, the mean rows included
    verdict = repro.reproduction_verdicts(table, 0.02).set_index("arch").loc["cnn"]
    assert verdict["n_testsets"] == 0 and not verdict["reproduces"]
    sentence = repro.reproduction_sentences(table, {"cnn": "NetX"}, 0.02)[0]
    assert sentence == ("cnn's real-only baseline trained on 100 real images and NetX's published numbers on 1,450: "
                        "no like-for-like comparison, so it is not checked against them.")
    # the same baseline on 1,450 images is judged as before (cnn is within 0.010 of NetX on both metrics)
    same = repro.reproduction_table(LONG, full, {"cnn": "NetX"}, ["A", "B"], {"cnn": 1450})
    assert same["diff"].notna().all()
    assert same.drop(columns=["n_real", "published_n_train"]).equals(
        repro.reproduction_table(LONG, ANCHORS, {"cnn": "NetX"}, ["A", "B"], N_REAL).drop(
            columns=["n_real", "published_n_train"]))
    assert repro.reproduction_sentences(same, {"cnn": "NetX"}, 0.02)[0].startswith(
        "cnn's real-only baseline reproduces NetX's published mDice / mIoU by ")


def test_a_checkpoint_selected_on_test_is_named_in_the_table_and_the_sentence() -> None:
    """Polyp-PVT's released Train.py keeps the checkpoint with the best test Dice: the sentence says so, and that
    hardgen's side is the final weights; a ``final`` anchor adds nothing."""
    best = _anchors(ANCHORS[ANCHORS["model"] == "NetX"][repro.ANCHOR_COLUMNS[:4]].values.tolist(),
                    selection="best_on_test")
    table = repro.reproduction_table(LONG, best, {"cnn": "NetX"}, ["A", "B"], N_REAL)
    assert set(table["selection"]) == {"best_on_test"}
    sentence = repro.reproduction_sentences(table, {"cnn": "NetX"}, 0.02)[0]
    assert sentence.startswith("cnn's real-only baseline reproduces NetX's published mDice / mIoU by ")
    assert sentence.endswith("(NetX's published numbers come from the checkpoint with the best test score: selected "
                             "on the test sets; hardgen evaluates the final weights and never selects on test).")
    refused = repro.reproduction_table(LONG, best, {"cnn": "NetX"}, ["A", "B"], {"cnn": 50})
    assert "no like-for-like comparison" in (text := repro.reproduction_sentences(refused, {"cnn": "NetX"})[0])
    assert "best test score" in text
    final = repro.reproduction_table(LONG, ANCHORS, {"cnn": "NetX"}, ["A", "B"], N_REAL)
    assert "checkpoint" not in repro.reproduction_sentences(final, {"cnn": "NetX"}, 0.02)[0]


def test_real_only_sizes_come_from_the_runs_records() -> None:
    runs = pd.DataFrame({"arch": ["cnn", "cnn", "cnn", "unet"], "policy": ["real", "real", "hard", "real"],
                         "real_images": [100, 100, 100, 1450]})
    assert repro.real_only_sizes(runs) == {"cnn": 100, "unet": 1450}
    with pytest.raises(DataError, match=r"runs.csv: arch 'cnn'.*\[90, 100\]"):
        repro.real_only_sizes(runs.assign(real_images=[90, 100, 100, 1450]))
    with pytest.raises(DataError, match="runs table"):
        repro.real_only_sizes(runs.drop(columns="real_images"))


def test_the_polyp_anchors_say_what_each_model_was_trained_on() -> None:
    """Every model of resources/anchors/polyp.csv: the PraNet training set (Kvasir 900 + ClinicDB 550), and which
    checkpoint its authors' released code publishes."""
    anchors = repro.load_anchors(Path(__file__).resolve().parents[1] / "resources" / "anchors" / "polyp.csv")
    per_model = anchors.groupby("model")[["n_train", "selection"]].first()
    assert per_model["n_train"].to_dict() == {"PraNet": 1450, "SANet": 1450, "Polyp-PVT": 1450,
                                              "Wan et al. 2026": 1450}
    assert per_model["selection"].to_dict() == {"PraNet": "final", "SANet": "final", "Polyp-PVT": "best_on_test",
                                                "Wan et al. 2026": "unknown"}
