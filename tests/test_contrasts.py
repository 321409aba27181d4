"""Intervals of the benchmark's paired contrasts (hardgen.evaluation.contrasts) on synthetic numbers with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hardgen.core.io import DataError
from hardgen.evaluation import contrasts
from hardgen.report import markdown, summary

TESTSETS = ["Site-A", "Site-B"]


def test_t_interval_matches_the_textbook_numbers() -> None:
    # d = 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t(0.975, 2) = 4.302653 -> half-width 4.302653 * 0.1 / sqrt(3) = 0.248414
    mean, low, high = contrasts.t_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.2 - 0.2484138, 0.2 + 0.2484138), abs=1e-6)
    # two seeds: t(0.975, 1) = 12.7062; identical differences: a degenerate interval at the mean
    _, low2, high2 = contrasts.t_interval([0.0, 0.1])
    assert high2 - low2 == pytest.approx(2 * 12.7062047 * np.std([0.0, 0.1], ddof=1) / np.sqrt(2), rel=1e-6)
    assert contrasts.t_interval([0.05, 0.05, 0.05]) == pytest.approx((0.05, 0.05, 0.05))
    with pytest.raises(ValueError, match="at least 2"):
        contrasts.t_interval([0.1])


def test_bootstrap_interval_is_seeded_contains_the_mean_and_narrows_with_more_images() -> None:
    rng = np.random.default_rng(0)
    small = [rng.normal(0.02, 0.1, 20), rng.normal(0.02, 0.1, 10)]
    large = [rng.normal(0.02, 0.1, 2000), rng.normal(0.02, 0.1, 1000)]
    for statistic in (contrasts.mean_over_testsets, contrasts.pooled_mean):
        observed, low, high = contrasts.bootstrap_interval(small, statistic)
        assert low <= observed <= high and low < high
        assert contrasts.bootstrap_interval(small, statistic) == (observed, low, high)  # seeded
        _, low_l, high_l = contrasts.bootstrap_interval(large, statistic)
        assert high_l - low_l < (high - low) / 3  # ~ 1 / sqrt(100) as wide
    # the observed statistics: the mean of the test-set means vs the mean of all images pooled
    assert contrasts.bootstrap_interval(small, contrasts.mean_over_testsets)[0] == pytest.approx(
        np.mean([small[0].mean(), small[1].mean()]))
    assert contrasts.bootstrap_interval(small, contrasts.pooled_mean)[0] == pytest.approx(np.concatenate(small).mean())
    # every image equally better: no sampling noise at all
    assert contrasts.bootstrap_interval([np.full(5, 0.03)], contrasts.pooled_mean) == pytest.approx((0.03,) * 3)
    # a clear effect excludes 0, no effect does not
    assert contrasts.bootstrap_interval([rng.normal(0.2, 0.05, 50)], contrasts.pooled_mean)[1] > 0
    _, low0, high0 = contrasts.bootstrap_interval([rng.normal(0.0, 0.1, 200)], contrasts.pooled_mean)
    assert low0 < 0 < high0


def _images(values: dict[str, list[float]], metric: str = "mIoU") -> pd.DataFrame:
    return pd.DataFrame([{"testset": t, "image": f"{t}-{i}", "metric": metric, "value": v}
                         for t, vs in values.items() for i, v in enumerate(vs)])


def _differences(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["arch", "policy", "ratio", "reference", "seed", "metric", "d_mean",
                                       "d_overall"])


def test_contrast_table_uses_t_over_seeds_and_bootstrap_over_images_for_one_seed() -> None:
    diffs = _differences([
        # cnn: hard − plain at ratio 1 over three seeds (t-interval)
        ("cnn", "hard", 1.0, "plain", 0, "mIoU", 0.1, 0.05), ("cnn", "hard", 1.0, "plain", 1, "mIoU", 0.2, 0.05),
        ("cnn", "hard", 1.0, "plain", 2, "mIoU", 0.3, 0.05),
        # transformer: hard − real at ratio 1, one seed (bootstrap over the two runs' images)
        ("transformer", "hard", 1.0, "real", 0, "mIoU", 0.025, 0.02),
    ])
    hard = _images({"Site-A": [0.6, 0.7, 0.8], "Site-B": [0.5, 0.6]})
    real = _images({"Site-A": [0.6, 0.65, 0.8], "Site-B": [0.5, 0.55]})
    images = {("transformer", "hard", 1.0, 0): hard, ("transformer", "real", 0.0, 0): real}
    table = contrasts.contrast_table(diffs, TESTSETS, images)
    assert list(table.columns) == contrasts.CONTRAST_COLUMNS
    row = table[(table.arch == "cnn") & (table.metric == "mIoU")].iloc[0]
    assert (row["method"], row["n"], row["versus"]) == ("t_seeds", 3, "plain")
    assert (row["mean_diff"], row["ci_low"], row["ci_high"]) == pytest.approx((0.2, 0.2 - 0.2484138, 0.2 + 0.2484138),
                                                                              abs=1e-6)
    overall = table[(table.arch == "cnn") & (table.metric == "mIoU@overall")].iloc[0]
    assert overall["mean_diff"] == pytest.approx(0.05) and overall["ci_low"] == pytest.approx(0.05)
    one = table[(table.arch == "transformer")].set_index("metric")
    assert set(one["method"]) == {"bootstrap_images"} and (one["n"] == 5).all()
    # per-image differences: Site-A 0, 0.05, 0; Site-B 0, 0.05 -> mean over test sets (0.05/3 + 0.025) / 2,
    # pooled 0.1 / 5
    assert one.loc["mIoU", "mean_diff"] == pytest.approx((0.05 / 3 + 0.025) / 2)
    assert one.loc["mIoU@overall", "mean_diff"] == pytest.approx(0.02)
    assert ((table["ci_low"] <= table["mean_diff"]) & (table["mean_diff"] <= table["ci_high"])).all()
    assert one.loc["mIoU", "ci_low"] >= 0 and one.loc["mIoU", "ci_high"] <= 0.05  # within the per-image range
    # a single-seed contrast without its per-image tables, or with unpaired images, is an error
    with pytest.raises(DataError, match="per-image table was not given"):
        contrasts.contrast_table(diffs, TESTSETS, {})
    unpaired = {**images, ("transformer", "real", 0.0, 0): real.assign(image=real["image"] + "x")}
    with pytest.raises(DataError, match="cannot pair them"):
        contrasts.contrast_table(diffs, TESTSETS, unpaired)


def test_primary_contrast_and_the_noise_sentences() -> None:
    table = pd.DataFrame([
        {"arch": "cnn", "policy": "hard", "ratio": 1.0, "versus": "plain", "metric": "mIoU", "n": 3,
         "mean_diff": 0.03, "ci_low": 0.01, "ci_high": 0.05, "method": "t_seeds"},
        {"arch": "cnn", "policy": "hard", "ratio": 1.0, "versus": "real", "metric": "mIoU", "n": 3,
         "mean_diff": 0.01, "ci_low": -0.02, "ci_high": 0.04, "method": "t_seeds"},
        {"arch": "cnn", "policy": "hard", "ratio": 1.0, "versus": "plain", "metric": "mIoU@overall", "n": 3,
         "mean_diff": 0.03, "ci_low": 0.01, "ci_high": 0.05, "method": "t_seeds"},
    ])
    assert contrasts.excludes_zero(table).tolist() == [True, False, True]
    primary = {"policy": "hard", "versus": "plain", "ratio": 1, "metric": "mIoU"}
    assert contrasts.primary_rows(table, primary).index.tolist() == [0]
    with pytest.raises(DataError, match="report.primary_contrast"):
        contrasts.primary_rows(table, {**primary, "versus": "feedback"})
    text = " ".join(contrasts.noise_sentences(table))
    distinct, rest = text.split("Not distinguishable")
    assert "seed noise" in distinct and "hard − plain ×1, mIoU +0.030 [+0.010, +0.050] (t over 3 seeds)" in distinct
    assert "hard − real ×1" in rest and "hard − real" not in distinct
    assert "@overall" not in text  # the sentences speak of the means over test sets
    single = table.assign(method="bootstrap_images", n=60)
    said = contrasts.noise_sentences(single)
    assert said[0].startswith("Distinguishable from test-image sampling noise")  # not seed noise: one seed
    assert "not how much it varies between training seeds" in said[-1]


def test_report_contrasts_from_eval_tables_with_one_custom_test_set(tmp_path) -> None:
    """The whole path on a benchmark with a single, non-polyp test set: eval + per-image tables -> contrasts."""
    root = tmp_path / "results" / "eval"
    evals, image_paths = {}, {}
    per_image = {("cnn", "real", 0.0): [0.5, 0.6, 0.7, 0.8], ("cnn", "plain", 1.0): [0.5, 0.62, 0.7, 0.8],
                 ("cnn", "hard", 1.0): [0.55, 0.66, 0.74, 0.85]}
    for (arch, policy, ratio), values in per_image.items():
        path = root / arch / policy / f"ratio-{ratio:g}" / "seed-0.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        mean = float(np.mean(values))
        pd.DataFrame({"testset": ["Clinic-X", "overall"], "metric": "mIoU", "value": [mean, mean]}).to_csv(
            path, index=False)
        images = path.with_name("seed-0" + summary.IMAGES_SUFFIX)
        _images({"Clinic-X": values}).to_csv(images, index=False)
        evals[(arch, policy, ratio, 0)] = path
        image_paths[(arch, policy, ratio, 0)] = images
    long = summary.benchmark_long(evals)
    table = contrasts.contrast_table(summary.paired_differences(long, testsets=["Clinic-X"]), ["Clinic-X"],
                                     image_paths)
    hard_plain = table[(table.policy == "hard") & (table.versus == "plain") & (table.metric == "mIoU")].iloc[0]
    assert hard_plain["mean_diff"] == pytest.approx(np.mean([0.05, 0.04, 0.04, 0.05]))
    assert hard_plain["n"] == 4 and hard_plain["ci_low"] > 0  # every image better: the interval excludes 0
    assert set(zip(table.policy, table.versus)) == {("plain", "real"), ("hard", "real"), ("hard", "plain")}
    md = markdown.markdown_report(markdown.BenchmarkTables(long, contrasts=table), markdown.MarkdownOptions(
        testsets=["Clinic-X"], primary={"policy": "hard", "versus": "plain", "ratio": 1, "metric": "mIoU"}))
    assert "| arch | policy | ratio | seeds | Clinic-X | mean | overall |" in md
    assert md.index("## Primary contrast") < md.index("## Which differences") < md.index("## mIoU")
    assert "| cnn | 4 | bootstrap_images | +0.045 |" in md


# ----------------------------------------------------------------- missing per-image values (e.g. binary HD95)
NAN = float("nan")


def test_the_bootstrap_pairs_only_images_defined_in_both_runs(caplog) -> None:
    """Per-image HD95 where a segmenter predicted empty maps (NaN): n is the count of images defined on both sides, and
    the interval is the bootstrap over exactly those hand-filtered pairs."""
    mine = _images({"Site-A": [3.0, NAN, 5.0, 2.0, 4.0], "Site-B": [NAN, 6.0, 1.5]}, "HD95")
    theirs = _images({"Site-A": [2.0, 4.0, NAN, 2.5, 1.0], "Site-B": [3.0, 5.0, 1.0]}, "HD95")
    images = {("cnn", "hard", 1.0, 0): mine, ("cnn", "real", 0.0, 0): theirs}
    diffs = _differences([("cnn", "hard", 1.0, "real", 0, "HD95", NAN, 0.4)])  # a test-set mean may be NaN too
    table = contrasts.contrast_table(diffs, TESTSETS, images).set_index("metric")
    # by hand: Site-A images 0, 3, 4 are defined in both runs, Site-B images 1, 2
    pairs = [np.array([3.0 - 2.0, 2.0 - 2.5, 4.0 - 1.0]), np.array([6.0 - 5.0, 1.5 - 1.0])]
    assert table["n"].tolist() == [5, 5] and set(table["method"]) == {"bootstrap_images"}
    for metric, statistic in (("HD95", contrasts.mean_over_testsets), ("HD95@overall", contrasts.pooled_mean)):
        expected = contrasts.bootstrap_interval(pairs, statistic)
        assert tuple(table.loc[metric, ["mean_diff", "ci_low", "ci_high"]]) == pytest.approx(expected, abs=1e-12)
    # a test set with no image defined in both runs is left out of that contrast, and the log says so
    gone = {**images, ("cnn", "real", 0.0, 0): theirs.assign(
        value=np.where(theirs["testset"] == "Site-B", NAN, theirs["value"]))}
    with caplog.at_level("INFO", logger="hardgen.evaluation.contrasts"):
        left = contrasts.contrast_table(diffs, TESTSETS, gone).set_index("metric")
    assert left.loc["HD95", "n"] == 3
    assert left.loc["HD95", "mean_diff"] == pytest.approx(contrasts.bootstrap_interval(pairs[:1],
                                                                                       contrasts.mean_over_testsets)[0])
    assert "no image of Site-B has a value in both runs" in caplog.text


def test_a_contrast_without_any_defined_pair_is_an_undefined_row() -> None:
    mine = _images({"Site-A": [NAN, NAN], "Site-B": [NAN]}, "HD95")  # an empty map on every image
    theirs = _images({"Site-A": [2.0, 3.0], "Site-B": [1.0]}, "HD95")
    diffs = _differences([("cnn", "hard", 1.0, "real", 0, "HD95", NAN, NAN)])
    table = contrasts.contrast_table(diffs, TESTSETS, {("cnn", "hard", 1.0, 0): mine, ("cnn", "real", 0.0, 0): theirs})
    assert table["metric"].tolist() == ["HD95", "HD95@overall"]  # kept, not dropped and not an error
    assert (table["n"] == 0).all() and table[["mean_diff", "ci_low", "ci_high"]].isna().all(axis=None)
    assert contrasts.undefined(table).all() and not contrasts.excludes_zero(table).any()
    assert contrasts.describe(table.iloc[0]) == ("cnn: hard − real ×1, HD95 undefined (no test image with a value "
                                                 "in both runs)")
    # the noise sentences: undefined rows are listed as such, never counted as distinguishable or not
    defined = pd.DataFrame([{"arch": "cnn", "policy": "plain", "ratio": 1.0, "versus": "real", "metric": "HD95",
                             "n": 5, "mean_diff": 0.5, "ci_low": 0.1, "ci_high": 0.9, "method": "bootstrap_images"}])
    text = " ".join(contrasts.noise_sentences(pd.concat([table, defined], ignore_index=True), ["HD95"]))
    distinct, rest = text.split("Undefined")
    assert "plain − real ×1, HD95 +0.500" in distinct and "hard − real" not in distinct and "nan" not in text
    assert "hard − real ×1, HD95 undefined" in rest and "Not distinguishable" not in text
    only = contrasts.noise_sentences(table, ["HD95"])
    assert only[0].startswith("Every contrast is undefined") and "distinguishable" not in " ".join(only)


def test_seeds_with_an_undefined_difference_are_dropped_before_the_t_interval() -> None:
    rows = [("cnn", "hard", 1.0, "real", s, "HD95", d, d) for s, d in enumerate([0.1, NAN, 0.3, 0.2])]
    table = contrasts.contrast_table(_differences(rows), TESTSETS).set_index("metric")
    assert table.loc["HD95", "n"] == 3 and table.loc["HD95", "method"] == "t_seeds"
    assert table.loc["HD95", "mean_diff"] == pytest.approx(contrasts.t_interval([0.1, 0.3, 0.2])[0])
    # one seed left: the bootstrap over that seed's images (seed 2), as with a single seed
    one_left = [("cnn", "hard", 1.0, "real", s, "HD95", d, d) for s, d in enumerate([NAN, NAN, 0.3])]
    mine, theirs = _images({"Site-A": [3.0, NAN], "Site-B": [2.0]}, "HD95"), _images({"Site-A": [2.0, 1.0],
                                                                                       "Site-B": [2.5]}, "HD95")
    images = {("cnn", "hard", 1.0, 2): mine, ("cnn", "real", 0.0, 2): theirs}
    boot = contrasts.contrast_table(_differences(one_left), TESTSETS, images).set_index("metric")
    assert boot.loc["HD95", "method"] == "bootstrap_images" and boot.loc["HD95", "n"] == 2
    assert boot.loc["HD95", "mean_diff"] == pytest.approx((1.0 - 0.5) / 2)


def test_missing_per_image_values_are_data_a_string_is_an_error(tmp_path) -> None:
    path = tmp_path / "seed-0.images.csv"
    path.write_text("testset,image,metric,value\nA,a,HD95,\nA,b,HD95,nan\nA,c,HD95,2.5\nA,c,mDice,0.8\n")
    table = contrasts.read_images(path)
    assert table["value"].isna().tolist() == [True, True, False, False]
    path.write_text("testset,image,metric,value\nA,a,HD95,\nA,b,HD95,far\n")
    with pytest.raises(DataError, match=r"seed-0\.images\.csv: non-numeric per-image values.*'far'"):
        contrasts.read_images(path)
