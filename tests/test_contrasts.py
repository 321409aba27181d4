"""Intervals of the benchmark's paired contrasts (hardgen.contrasts) on synthetic numbers with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hardgen import contrasts, report
from hardgen.io import DataError

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
    evals, image_paths = [], []
    per_image = {("cnn", "real", 0.0): [0.5, 0.6, 0.7, 0.8], ("cnn", "plain", 1.0): [0.5, 0.62, 0.7, 0.8],
                 ("cnn", "hard", 1.0): [0.55, 0.66, 0.74, 0.85]}
    for (arch, policy, ratio), values in per_image.items():
        path = root / arch / policy / f"ratio-{ratio:g}" / "seed-0.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        mean = float(np.mean(values))
        pd.DataFrame({"testset": ["Clinic-X", "overall"], "metric": "mIoU", "value": [mean, mean]}).to_csv(
            path, index=False)
        images = path.with_name("seed-0" + report.IMAGES_SUFFIX)
        _images({"Clinic-X": values}).to_csv(images, index=False)
        evals.append(path)
        image_paths.append(images)
    long = report.benchmark_long(evals)
    table = contrasts.contrast_table(report.paired_differences(long, testsets=["Clinic-X"]), ["Clinic-X"],
                                     report._images_mapping(image_paths))
    hard_plain = table[(table.policy == "hard") & (table.versus == "plain") & (table.metric == "mIoU")].iloc[0]
    assert hard_plain["mean_diff"] == pytest.approx(np.mean([0.05, 0.04, 0.04, 0.05]))
    assert hard_plain["n"] == 4 and hard_plain["ci_low"] > 0  # every image better: the interval excludes 0
    assert set(zip(table.policy, table.versus)) == {("plain", "real"), ("hard", "real"), ("hard", "plain")}
    md = report.benchmark_markdown(long, testsets=["Clinic-X"], contrasts=table,
                                   primary={"policy": "hard", "versus": "plain", "ratio": 1, "metric": "mIoU"})
    assert "| arch | policy | ratio | seeds | Clinic-X | mean | overall |" in md
    assert md.index("## Primary contrast") < md.index("## Which differences") < md.index("## mIoU")
    assert "| cnn | 4 | bootstrap_images | +0.045 |" in md
