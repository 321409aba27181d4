"""Report tables and plots on synthetic evaluation / score tables with known numbers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata, spearmanr

from hardgen.core import registry
from hardgen.core.io import DataError, write_image, write_mask
from hardgen.evaluation import reproduction as repro
from hardgen.report import (
    hardness,
    markdown,
    plots,
    run_records,
    summary,
    tables,
)
from hardgen.report.write_report import (
    ReportInputs,
    ReportOptions,
    ReportSettings,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]
#: The demo's data.testsets (the report takes them from config, in this order).
TESTSETS = ["CVC-300", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "Kvasir"]


def _write_eval(path: Path, per_testset: dict[str, dict[str, float]]) -> Path:
    """Write an evaluation CSV (testset, metric, value): per_testset[testset][metric] = toolbox score."""
    rows = [{"testset": t, "metric": m, "value": v} for t, metrics in per_testset.items() for m, v in metrics.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _scores(base: float) -> dict[str, dict[str, float]]:
    """Test-set k scores mDice base + 0.1 k, mIoU base − 0.1; overall (image-weighted) is base + 0.05."""
    table = {t: {"mDice": base + 0.1 * k, "mIoU": base - 0.1, "MAE": 0.06} for k, t in enumerate(TESTSETS)}
    table[summary.OVERALL] = {"mDice": base + 0.05, "mIoU": base - 0.05, "MAE": 0.06}
    return table


#: (arch, policy, ratio, seed) -> base score of the eval_tree fixture.
BASES = {
    ("cnn", "real", 0, 0): 0.6, ("cnn", "real", 0, 1): 0.7,
    ("cnn", "hard_band", 1, 0): 0.65, ("cnn", "hard_band", 1, 1): 0.8,
    ("cnn", "hard", 1, 0): 0.6, ("cnn", "hard", 1, 1): 0.65,
    ("cnn", "hard_band", 0.5, 0): 0.62,
    ("transformer", "real", 0, 0): 0.5, ("transformer", "hard", 1, 0): 0.55,
}


def _write_images(path: Path, per_testset: dict[str, dict[str, float]], base: float) -> Path:
    """The per-image table beside an evaluation CSV: three images per test set whose mDice / mIoU average to the
    test-set score, spread ± (0.01 + base / 20) (so paired differences vary from image to image)."""
    spread = 0.01 + base / 20
    rows = [{"testset": t, "image": f"{t}-{i}", "metric": m, "value": v + (i - 1) * spread}
            for t, metrics in per_testset.items() if t != summary.OVERALL
            for m, v in metrics.items() if m in ("mDice", "mIoU") for i in range(3)]
    out = path.with_name(path.stem + summary.IMAGES_SUFFIX)
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


def _image_paths(eval_tree: dict[tuple, Path]) -> dict[tuple, Path]:
    return {key: p.with_name(p.stem + summary.IMAGES_SUFFIX) for key, p in eval_tree.items()}


@pytest.fixture()
def eval_tree(tmp_path: Path) -> dict[tuple, Path]:
    """cnn: real, hard_band and its control hard at ratio 1 with seeds 0 and 1, hard_band at ratio 0.5 with seed 0;
    transformer: real, hard at ratio 1 with seed 0 (see BASES); laid out as results/eval/<arch>/<policy>/ratio-<r>/,
    each with its per-image table (seed-<s>.images.csv, :func:`_write_images`)."""
    root = tmp_path / "results" / "eval"
    paths = {}
    for (a, p, r, s), base in BASES.items():
        path = _write_eval(root / a / p / f"ratio-{r:g}" / f"seed-{s}.csv", _scores(base))
        _write_images(path, _scores(base), base)
        paths[(a, p, float(r), s)] = path
    return paths


def test_benchmark_long_reads_scores_as_given(eval_tree: dict[tuple, Path]) -> None:
    long = summary.benchmark_long(eval_tree)
    assert list(long.columns) == ["arch", "policy", "ratio", "seed", "testset", "metric", "value"]
    # 9 runs x (5 test sets + overall) x 3 metrics
    assert len(long) == 9 * 6 * 3
    def value(arch, policy, seed, testset, metric, ratio=1.0):
        sel = long[(long.arch == arch) & (long.policy == policy) & (long.seed == seed) & (long.testset == testset)
                   & (long.metric == metric) & (long.ratio == ratio)]
        return sel["value"].item()
    # CVC-ColonDB is the third test set (k=2)
    assert value("cnn", "real", 1, "CVC-ColonDB", "mDice", ratio=0.0) == pytest.approx(0.9)
    assert value("cnn", "hard_band", 1, "overall", "mIoU") == pytest.approx(0.75)
    assert value("cnn", "hard_band", 0, "overall", "mIoU", ratio=0.5) == pytest.approx(0.57)
    # the ratio comes from the path: real runs are ratio 0, synthetic ones their segment.synthetic_ratios entry
    assert long.groupby("policy")["ratio"].unique().map(sorted).to_dict() == {
        "real": [0.0], "hard": [1.0], "hard_band": [0.5, 1.0]}
    assert np.allclose(long[long.metric == "MAE"]["value"], 0.06)


def test_benchmark_long_accepts_mapping_and_rejects_bad_tables(eval_tree: dict[tuple, Path], tmp_path: Path) -> None:
    # keys come with the tables (the workflow: each run record's), never from the paths
    with pytest.raises(TypeError, match="not read off paths"):
        summary.benchmark_long(list(eval_tree.values()))
    bad = tmp_path / "eval" / "cnn" / "real" / "ratio-0" / "seed-3.csv"
    bad.parent.mkdir(parents=True)
    pd.DataFrame({"testset": ["Kvasir"], "value": [0.5]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"seed-3\.csv.*metric"):
        summary.benchmark_long({("cnn", "real", 0.0, 3): bad})
    # the old per-image format is refused, not averaged
    pd.DataFrame({"testset": ["Kvasir"] * 2, "image": ["a.png", "b.png"], "metric": ["mDice"] * 2,
                  "value": [0.4, 0.6]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"seed-3\.csv.*extra \['image'\]"):
        summary.benchmark_long({("cnn", "real", 0.0, 3): bad})
    pd.DataFrame({"testset": ["Kvasir"] * 2, "metric": ["mDice"] * 2, "value": [0.4, 0.6]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"seed-3\.csv.*more than one row.*Kvasir"):
        summary.benchmark_long({("cnn", "real", 0.0, 3): bad})


def test_benchmark_summary_means_over_testsets_without_overall(eval_tree: dict[tuple, Path]) -> None:
    wide = summary.benchmark_summary(summary.benchmark_long(eval_tree))
    row = wide[(wide.arch == "cnn") & (wide.policy == "real") & (wide.seed == 0) & (wide.metric == "mDice")]
    assert row["ratio"].item() == 0.0
    assert row["mean"].item() == pytest.approx(0.6 + 0.2)  # 0.6 + 0.1 * mean(0..4); overall not averaged in
    assert row["overall"].item() == pytest.approx(0.65)


def test_paired_differences_against_real_and_the_size_matched_control(eval_tree: dict[tuple, Path]) -> None:
    diffs = summary.paired_differences(summary.benchmark_long(eval_tree))
    assert list(diffs.columns) == ["arch", "policy", "ratio", "reference", "seed", "metric", "d_mean", "d_overall"]
    band = diffs[(diffs.policy == "hard_band") & (diffs.metric == "mDice") & (diffs.ratio == 1.0)].set_index(
        ["reference", "seed"])
    assert band.loc[("real", 0), "d_mean"] == pytest.approx(0.05)
    assert band.loc[("real", 1), "d_mean"] == pytest.approx(0.10)
    # hard at the same ratio is hard_band's size-matched random control
    assert registry.POLICIES["hard_band"].control == registry.POLICIES["hard_faithful"].control == "hard"
    assert band.loc[("hard", 0), "d_mean"] == pytest.approx(0.05)
    assert band.loc[("hard", 1), "d_overall"] == pytest.approx(0.15)
    # hard_band at ratio 0.5 has no hard run at 0.5: it pairs with real only, never with hard at another ratio
    half = diffs[(diffs.policy == "hard_band") & (diffs.ratio == 0.5)]
    assert set(half["reference"]) == {"real"} and half.loc[half.metric == "mDice", "d_mean"].item() == pytest.approx(0.02)
    # hard's own control (plain) is not in the benchmark: only its pair with real
    assert set(diffs.loc[diffs.policy == "hard", "reference"]) == {"real"}
    assert "real" not in set(diffs["policy"])
    assert set(diffs.loc[diffs.arch == "transformer", "policy"]) == {"hard"}


def test_benchmark_markdown_tables_differences_protocol(eval_tree: dict[tuple, Path]) -> None:
    long = summary.benchmark_long(eval_tree)
    anchors = repro.load_anchors(REPO / "resources" / "anchors" / "polyp.csv")
    md = markdown.markdown_report(markdown.BenchmarkTables(long, anchors=anchors),
                                  markdown.MarkdownOptions(testsets=TESTSETS))
    assert ("| arch | policy | ratio | seeds | CVC-300 | CVC-ClinicDB | CVC-ColonDB | ETIS-LaribPolypDB | Kvasir | mean | "
            "overall |" in md)
    cnn_real_dice = next(line for line in md.splitlines() if line.startswith("| cnn | real |"))
    cells = [c.strip() for c in cnn_real_dice.strip("|").split("|")]
    # seeds 0 and 1: CVC-300 is 0.6 and 0.7 -> 0.650 ± sd(ddof=1) 0.071
    assert cells[2] == "0" and cells[3] == "2"
    assert cells[4] == f"0.650 ± {np.std([0.6, 0.7], ddof=1):.3f}"
    # mean over test sets per seed: 0.8 and 0.9; overall 0.65 and 0.75
    assert cells[-2] == f"0.850 ± {np.std([0.8, 0.9], ddof=1):.3f}"
    assert cells[-1] == f"0.700 ± {np.std([0.65, 0.75], ddof=1):.3f}"
    one_seed = next(line for line in md.splitlines() if line.startswith("| transformer | hard |"))
    assert "±" not in one_seed and "0.750" in one_seed
    # policy order: real, hard, ..., hard_band within an arch; ratios ascending within a policy
    assert md.index("| cnn | real |") < md.index("| cnn | hard | 1 |") < md.index("| cnn | hard_band | 0.5 |") < (
        md.index("| cnn | hard_band | 1 |"))
    assert "## mIoU" in md
    # paired differences within a ratio: hard_band − hard at ratio 1 over seeds 0 and 1 = 0.05 and 0.15
    pair = next(line for line in md.splitlines() if line.startswith("| mDice | cnn | hard_band | 1 | hard |"))
    pair_cells = [c.strip() for c in pair.strip("|").split("|")]
    assert pair_cells[5] == "2"
    assert pair_cells[6] == f"+0.100 ± {np.std([0.05, 0.15], ddof=1):.3f}"
    assert pair_cells[7] == f"+0.100 ± {np.std([0.05, 0.15], ddof=1):.3f}"
    assert "| mIoU | transformer | hard | 1 | real | 1 | +0.050 | +0.050 | – |" in md  # no intervals given
    assert "| mDice | cnn | hard_band | 0.5 | real | 1 | +0.020 | +0.020 | – |" in md
    assert "| mDice | cnn | hard_band | 0.5 | hard |" not in md
    for model in ("PraNet", "SANet", "Polyp-PVT"):
        assert f"| {model} |" in md
    assert "0.937 / 0.889" in md and "0.628 / 0.567" in md
    assert ("Trained on (real images, published checkpoint): PraNet 1,450, final; SANet 1,450, final; Polyp-PVT "
            "1,450, best on test." in md)
    assert "86.84 % mean mIoU" in md  # the paper's headline, a testset-`mean` row of the anchors file
    # the protocol follows the anchors; the demo note only with demo=True
    protocol = md.index("**Protocol.**")
    assert protocol > md.index("| Polyp-PVT |")
    for phrase in ("GT > 128", "min-max", "256 thresholds", "meanDic", "same number of iterations", "not hardgen runs"):
        assert phrase in md[protocol:], phrase
    assert "noise by design" not in md
    demo = markdown.markdown_report(markdown.BenchmarkTables(long), markdown.MarkdownOptions(demo=True))
    assert "noise by design" in demo and demo.index("noise by design") < demo.index("## mDice")


def _noise_section(md: str) -> str:
    """benchmark.md's section on which differences can be told from noise, up to the next heading."""
    return md.split("## Which differences can be told from noise?\n")[1].split("\n## ")[0].strip()


def test_the_noise_section_tables_the_primary_metric_largest_difference_first(eval_tree: dict[tuple, Path]) -> None:
    """One table row per contrast on the primary metric, sorted by |Δ| (ties in display order), undefined rows last
    with their reason; the other metrics only in contrasts.csv."""
    long = summary.benchmark_long(eval_tree)
    rows = [("cnn", "hard", "plain", "mIoU", 3, 0.03, 0.01, 0.05),
            ("cnn", "hard", "real", "mIoU", 3, -0.08, -0.12, -0.04),
            ("transformer", "hard", "plain", "mIoU", 3, 0.005, -0.02, 0.03),
            ("transformer", "plain", "real", "mIoU", 3, 0.03, -0.01, 0.07),
            ("cnn", "hard_band", "hard", "mIoU", 0, np.nan, np.nan, np.nan),
            ("cnn", "hard", "plain", "mIoU@overall", 3, 0.2, 0.1, 0.3),
            ("cnn", "hard", "plain", "mDice", 3, 0.5, 0.4, 0.6)]
    table = pd.DataFrame([{"arch": a, "policy": p, "ratio": 1.0, "versus": v, "metric": m, "n": n, "mean_diff": d,
                           "ci_low": lo, "ci_high": hi, "method": "t_seeds" if n else "bootstrap_images"}
                          for a, p, v, m, n, d, lo, hi in rows])
    primary = {"policy": "hard", "versus": "plain", "ratio": 1, "metric": "mIoU"}
    md = markdown.markdown_report(markdown.BenchmarkTables(long, contrasts=table),
                                  markdown.MarkdownOptions(primary=primary))
    assert md.index("## Primary contrast") < md.index("## Which differences can be told from noise?")
    section = _noise_section(md)
    lines = section.splitlines()
    header = lines.index("| arch | policy | vs | ratio | n | method | Δ | 95 % interval | excludes 0 |")
    body = [line for line in lines[header + 2:] if line.startswith("|")]
    assert body == ["| cnn | hard | real | 1 | 3 | t_seeds | -0.080 | [-0.120, -0.040] | yes |",
                    "| cnn | hard | plain | 1 | 3 | t_seeds | +0.030 | [+0.010, +0.050] | yes |",
                    "| transformer | plain | real | 1 | 3 | t_seeds | +0.030 | [-0.010, +0.070] | no |",
                    "| transformer | hard | plain | 1 | 3 | t_seeds | +0.005 | [-0.020, +0.030] | no |",
                    "| cnn | hard_band | hard | 1 | 0 | bootstrap_images | – | undefined | – |"]
    assert "Every contrast on mIoU, the mean over the test sets (`report.primary_contrast.metric`)" in section
    assert "told from seed noise when its 95 % interval excludes 0: 2 of 4 can." in section
    assert "The full list, every metric (each also pooled over all test images: `@overall`), stays in " \
           "`results/tables/contrasts.csv`." in section
    assert "The last 1 row is undefined (n = 0): no test image has a value in both runs." in section
    assert "+0.500" not in section and "+0.200" not in section and "mDice" not in section
    assert "single seed" not in section  # t-intervals over seeds: no bootstrap caveat

    # the primary contrast's metric picks the rows; without a primary contrast, mIoU
    on_dice = _noise_section(markdown.markdown_report(markdown.BenchmarkTables(long, contrasts=table),
                                                      markdown.MarkdownOptions(primary={**primary, "metric": "mDice"})))
    assert [line for line in on_dice.splitlines() if line.startswith("| cnn")] == [
        "| cnn | hard | plain | 1 | 3 | t_seeds | +0.500 | [+0.400, +0.600] | yes |"]
    no_primary = markdown.markdown_report(markdown.BenchmarkTables(long, contrasts=table))
    assert "## Primary contrast" not in no_primary
    assert "Every contrast on mIoU, the mean over the test sets (mIoU: no `report.primary_contrast`)" in no_primary
    # one seed: test-image noise, and the caveat that it is not seed noise
    single = _noise_section(markdown.markdown_report(
        markdown.BenchmarkTables(long, contrasts=table.assign(method="bootstrap_images"))))
    assert "told from test-image sampling noise" in single and "not how much it varies between training seeds" in single
    # no contrast, or none defined: the sentences, still pointing to contrasts.csv
    none = _noise_section(markdown.markdown_report(markdown.BenchmarkTables(long, contrasts=table.head(0))))
    assert none == "No contrasts: the benchmark has no `real` runs or controls paired by arch and seed."
    assert "| arch |" not in none
    undefined = table.assign(mean_diff=np.nan, ci_low=np.nan, ci_high=np.nan, n=0)
    said = _noise_section(markdown.markdown_report(markdown.BenchmarkTables(long, contrasts=undefined)))
    assert said.startswith("Every contrast is undefined") and "cnn: hard − real ×1, mIoU undefined" in said
    assert said.endswith("stays in `results/tables/contrasts.csv`.")
    assert "| arch |" not in said


def test_the_polyp_anchors_file_is_complete() -> None:
    anchors = repro.load_anchors(REPO / "resources" / "anchors" / "polyp.csv")
    per_testset = anchors[anchors["testset"] != repro.MEAN]
    assert set(per_testset["model"]) == {"PraNet", "SANet", "Polyp-PVT"}
    for model, group in per_testset.groupby("model"):
        assert set(zip(group["testset"], group["metric"])) == {(t, m) for t in TESTSETS for m in ("mDice", "mIoU")}
        wide = group.pivot(index="testset", columns="metric", values="value")
        assert ((0 < wide["mIoU"]) & (wide["mIoU"] < wide["mDice"]) & (wide["mDice"] < 1)).all(), model
    values = per_testset.set_index(["model", "testset", "metric"])["value"]
    assert values[("PraNet", "CVC-ClinicDB", "mDice")] == 0.899 and values[("Polyp-PVT", "Kvasir", "mIoU")] == 0.864
    headline = anchors[anchors["testset"] == repro.MEAN]
    assert headline[["metric", "value"]].values.tolist() == [["mIoU", 0.8684]]


def _write_scores(tmp_path: Path) -> tuple[list[Path], pd.DataFrame]:
    rng = np.random.default_rng(0)
    frames = []
    for variant, shift in (("real", 0.0), ("plain", 1.0), ("hard", 3.0)):
        ids = [f"{variant}-{i}" if variant == "real" else f"s{i}" for i in range(10)]
        for backbone in ("cnn", "vit"):
            distance = shift + np.arange(10, dtype=float) + (0.5 if backbone == "vit" else 0.0)
            frames.append(pd.DataFrame({"sample_id": ids, "variant": variant, "backbone": backbone,
                                        "distance": distance, "z": rng.normal(size=10)}))
    paths = []
    for frame in frames:
        path = tmp_path / "scores" / f"{frame.variant.iloc[0]}-{frame.backbone.iloc[0]}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths, pd.concat(frames, ignore_index=True)


def test_hardness_table(tmp_path: Path) -> None:
    paths, _ = _write_scores(tmp_path)
    table = hardness.hardness_table(paths, loss_backbones=["vit"])
    assert list(table.columns) == ["variant", "backbone", "mean_discrepancy", "n", "in_loss"]
    assert list(table["variant"]) == ["real", "real", "plain", "plain", "hard", "hard"]
    hard_vit = table[(table.variant == "hard") & (table.backbone == "vit")]
    assert hard_vit["mean_discrepancy"].item() == pytest.approx(3.0 + 4.5 + 0.5)
    assert (table["n"] == 10).all()
    assert table.set_index(["variant", "backbone"])["in_loss"].xs("cnn", level="backbone").tolist() == [False] * 3
    assert table.loc[table.backbone == "vit", "in_loss"].tolist() == [True] * 3
    both = hardness.hardness_table(paths, loss_backbones=["cnn", "vit"])
    assert both["in_loss"].all()
    with pytest.raises(ValueError, match=r"hard\.loss_backbones.*swin"):
        hardness.hardness_table(paths, loss_backbones=["swin"])


def test_partial_spearman_removes_what_foreground_explains() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    fg = rng.random(n)
    # hardness and loss both follow the polyp size, and nothing else: spearman high, partial ~ 0
    distance = -fg + 0.15 * rng.normal(size=n)
    loss = -fg + 0.15 * rng.normal(size=n)
    assert tables.spearman(pd.Series(distance), pd.Series(loss)) > 0.8
    assert abs(tables.partial_spearman(distance, loss, fg)) < 0.06
    # loss follows hardness beyond the size: partial stays high
    distance2 = rng.normal(size=n) - fg
    loss2 = distance2 + 0.3 * rng.normal(size=n)
    assert tables.partial_spearman(distance2, loss2, fg) > 0.85

    # against the residual definition on ranks: regress the ranks of x and y on the ranks of z, correlate residuals
    def residual_partial(x, y, z):
        rx, ry, rz = (rankdata(v) for v in (x, y, z))
        design = np.c_[np.ones(len(rz)), rz]
        res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (rx, ry)]
        return np.corrcoef(res[0], res[1])[0, 1]

    small = rng.normal(size=(3, 25))
    small[1] += small[0]
    small[2] += 0.5 * small[0]
    assert tables.partial_spearman(*small) == pytest.approx(residual_partial(*small), abs=1e-10)
    # by hand, 7 samples: ranks x = (1 2 3 5 7 6 4), y = (1 3 4 2 5 7 6), z = (1 .. 7) give r_xy = 9/14,
    # r_xz = 3/4, r_yz = 6/7 and r_xy − r_xz r_yz = 9/14 − 18/28 = 0: all of the association goes through z.
    # Monotone transforms of the values (exp, cube) leave the ranks and so the result unchanged.
    x_hand = np.exp([1, 2, 3, 5, 7, 6, 4])
    y_hand = np.array([1, 3, 4, 2, 5, 7, 6], dtype=float) ** 3
    z_hand = np.linspace(0.05, 0.35, 7)
    assert tables.spearman(pd.Series(x_hand), pd.Series(y_hand)) == pytest.approx(9 / 14)
    assert tables.partial_spearman(x_hand, y_hand, z_hand) == pytest.approx(0.0, abs=1e-12)
    # ... and the same x, y with a z unrelated to both keep their association: partial ≈ spearman
    z_unrelated = np.array([4, 1, 7, 3, 2, 6, 5], dtype=float)
    r = np.corrcoef([rankdata(x_hand), rankdata(y_hand), z_unrelated])
    expected = (r[0, 1] - r[0, 2] * r[1, 2]) / np.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    assert tables.partial_spearman(x_hand, y_hand, z_unrelated) == pytest.approx(expected)
    assert tables.partial_spearman(x_hand, y_hand, z_unrelated) > 0.6
    # x = y exactly: whatever z is, the partial correlation is 1
    assert tables.partial_spearman([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1.0)
    # undefined: too few samples, constant covariate, or a covariate that determines x
    assert np.isnan(tables.partial_spearman([1, 2, 3], [1, 2, 3], [3, 1, 2]))
    assert np.isnan(tables.partial_spearman([1, 2, 3, 4], [2, 1, 4, 3], [1, 1, 1, 1]))
    assert np.isnan(tables.partial_spearman([1, 2, 3, 4], [2, 1, 4, 3], [10, 20, 30, 40]))


def test_hardness_transfer_spearman(tmp_path: Path) -> None:
    paths, scores = _write_scores(tmp_path)
    # segmenter A: loss a monotone (nonlinear) function of distance -> rho = 1 everywhere, pooled too
    # segmenter B: loss decreasing in distance -> rho = -1
    # segmenter C: increasing within each variant, but hard samples get lower loss -> 1 per variant, < 1 pooled
    # every sample's foreground fraction follows a fixed shuffle, unrelated to distance
    fg_of = dict(zip(range(10), np.random.default_rng(5).permutation(10) / 20 + 0.05))
    rows: dict[str, list[dict[str, object]]] = {"cnn/seed-0": [], "cnn/seed-1": [], "vit/seed-0": []}
    for variant in ("real", "plain", "hard"):
        sub = scores[(scores.variant == variant) & (scores.backbone == "cnn")]
        for k, (s, d) in enumerate(zip(sub.sample_id, sub.distance)):
            fg = fg_of[k]
            rows["cnn/seed-0"].append({"sample_id": s, "variant": variant, "loss": np.exp(d), "fg_fraction": fg})
            rows["cnn/seed-1"].append({"sample_id": s, "variant": variant, "loss": -d, "fg_fraction": fg})
            rows["vit/seed-0"].append({"sample_id": s, "variant": variant,
                                       "loss": d - (100.0 if variant == "hard" else 0.0), "fg_fraction": fg})
    loss_paths = {}
    for name, data in rows.items():
        loss_paths[name] = tmp_path / f"loss_{name.replace('/', '_')}.csv"
        pd.DataFrame(data).to_csv(loss_paths[name], index=False)
    table = hardness.hardness_transfer(paths, loss_paths)
    assert list(table.columns) == ["backbone", "segmenter", "variant", "spearman", "partial_spearman", "n"]
    assert set(table["variant"]) == {"real", "plain", "hard", "all"}
    assert set(table["segmenter"]) == {"cnn/seed-0", "cnn/seed-1", "vit/seed-0"}
    assert len(table) == 2 * 3 * 4  # backbones x segmenters x (3 variants + all)
    a = table[table.segmenter == "cnn/seed-0"]
    assert np.allclose(a["spearman"], 1.0)
    # loss is a function of the distance alone: controlling for the (unrelated) size leaves it at 1
    assert np.allclose(a["partial_spearman"], 1.0)
    b = table[table.segmenter == "cnn/seed-1"]
    assert np.allclose(b["spearman"], -1.0) and np.allclose(b["partial_spearman"], -1.0)
    c = table[table.segmenter == "vit/seed-0"]
    assert np.allclose(c[c.variant != "all"]["spearman"], 1.0)
    pooled = c[c.variant == "all"]
    # 'all' pools plain + hard (20 samples; shared sample ids kept apart by the variant join), not real
    assert (pooled["n"] == 20).all()
    plain_d, hard_d = np.arange(10) + 1.0, np.arange(10) + 3.0
    expected = spearmanr(np.r_[plain_d, hard_d], np.r_[plain_d, hard_d - 100.0]).statistic
    assert np.allclose(pooled["spearman"], expected) and (pooled["spearman"] < 0.5).all()
    fgs = np.r_[[fg_of[k] for k in range(10)], [fg_of[k] for k in range(10)]]
    expected_partial = tables.partial_spearman(np.r_[plain_d, hard_d], np.r_[plain_d, hard_d - 100.0], fgs)
    assert np.allclose(pooled["partial_spearman"], expected_partial)


def test_hardness_transfer_needs_the_foreground_fraction(tmp_path: Path) -> None:
    paths, _ = _write_scores(tmp_path)
    dup = tmp_path / "dup.csv"
    pd.DataFrame({"sample_id": ["s1", "s1"], "loss": [0.1, 0.2], "fg_fraction": [0.1, 0.1]}).to_csv(dup, index=False)
    with pytest.raises(DataError, match="dup.csv.*duplicate"):
        hardness.hardness_transfer(paths, {"seg": dup})
    no_fg = tmp_path / "nofg.csv"
    pd.DataFrame({"sample_id": ["s1"], "loss": [0.1]}).to_csv(no_fg, index=False)
    with pytest.raises(DataError, match=r"nofg\.csv.*fg_fraction"):
        hardness.hardness_transfer(paths, {"seg": no_fg})


def _run_records(eval_tree: dict[tuple, Path], iterations: int = 12) -> list[dict[str, object]]:
    records = []
    for arch, policy, ratio, seed in eval_tree:
        synthetic = round(ratio * 24)
        records.append({"arch": arch, "policy": policy, "ratio": ratio, "seed": seed, "real_images": 24,
                        "synthetic_images": synthetic, "iterations": iterations, "images_seen": iterations * 8})
    return records


def test_runs_table_orders_checks_and_refuses_unequal_budgets(eval_tree: dict[tuple, Path], tmp_path: Path) -> None:
    records = _run_records(eval_tree)
    paths = []
    for record in records:
        paths.append(tmp_path / "segment" / str(record["arch"]) / str(record["policy"]) / f"ratio-{record['ratio']:g}"
                     / f"seed-{record['seed']}.json")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        paths[-1].write_text(json.dumps({**record, "training_seed": record["seed"], "batch_size": 8}))
    runs = run_records.runs_table(paths)
    assert list(runs.columns) == run_records.RUNS_COLUMNS
    assert runs[["arch", "seed", "policy", "ratio"]].values.tolist()[:4] == [
        ["cnn", 0, "real", 0.0], ["cnn", 0, "hard", 1.0], ["cnn", 0, "hard_band", 0.5], ["cnn", 0, "hard_band", 1.0]]
    assert (runs["images_seen"] == 96).all()
    assert runs.set_index(["policy", "ratio"])["synthetic_images"].groupby(level=[0, 1]).first().to_dict() == {
        ("real", 0.0): 0, ("hard", 1.0): 24, ("hard_band", 0.5): 12, ("hard_band", 1.0): 24}
    with pytest.raises(DataError, match=r"lacks \['ratio'\]"):  # a synthetic run.json without its ratio
        run_records.runs_table([{**records[2], "ratio": None}])
    with pytest.raises(DataError, match="duplicate runs"):
        run_records.runs_table([*paths, paths[0]])
    with pytest.raises(DataError, match=r"unequal training budgets for arch 'transformer', seed 0"):
        run_records.runs_table([*records[:-1], {**records[-1], "iterations": 13, "images_seen": 104}])
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"arch": "cnn"}))
    with pytest.raises(DataError, match=r"broken\.json.*lacks"):
        run_records.runs_table([broken])


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_plots_and_write_report(tmp_path: Path, eval_tree: dict[tuple, Path]) -> None:
    score_paths, scores = _write_scores(tmp_path)
    rng = np.random.default_rng(1)
    data_rows, cond_rows = [], []
    gen: dict[str, list[dict[str, str]]] = {"plain": [], "hard": []}
    for i in range(4):
        img, mask, cond = tmp_path / f"real/{i}.png", tmp_path / f"real/m{i}.png", tmp_path / f"cond/{i}.png"
        write_image(img, rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
        write_mask(mask, rng.random((20, 24)) > 0.5)
        write_image(cond, rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
        data_rows.append({"id": f"r{i}", "image": str(img), "mask": str(mask)})
        cond_rows.append({"sample_id": f"s{i}", "source_id": f"r{i}", "kind": "real", "condition": str(cond),
                          "mask": str(mask)})
        for variant in gen:
            if variant == "hard" and i == 3:
                continue  # one variant misses a sample: the grid must prefer fully covered rows
            out = tmp_path / f"generated/{variant}/{i}.png"
            write_image(out, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
            gen[variant].append({"sample_id": f"s{i}", "image": str(out), "mask": str(mask)})
    pd.DataFrame(data_rows).to_csv(tmp_path / "manifest.csv", index=False)
    pd.DataFrame(cond_rows).to_csv(tmp_path / "conditions.csv", index=False)
    manifests = {}
    for variant, rows in gen.items():
        manifests[variant] = tmp_path / f"generated/{variant}/manifest.csv"
        pd.DataFrame(rows).to_csv(manifests[variant], index=False)

    shown = plots.plot_grid(plots.real_pairs_from(tmp_path / "conditions.csv", tmp_path / "manifest.csv"),
                             manifests, tmp_path / "g.png", n=3)
    assert shown == ["s0", "s1", "s2"]
    assert _is_png(tmp_path / "g.png")

    loss = tmp_path / "loss.csv"
    pd.DataFrame({"sample_id": [f"s{i}" for i in range(10)], "variant": "plain", "loss": np.arange(10.0),
                  "fg_fraction": np.linspace(0.1, 0.3, 10)[::-1]}).to_csv(loss, index=False)
    runs = _run_records(eval_tree)
    inputs = ReportInputs(eval_tree, score_paths, manifests, tmp_path / "manifest.csv", run_records=runs,
                          sample_loss_csvs={"cnn/seed-0": loss}, conditions_csv=tmp_path / "conditions.csv",
                          eval_images=_image_paths(eval_tree))
    written = write_report(ReportSettings(inputs, ReportOptions(loss_backbones=["vit"], demo=True, testsets=TESTSETS),
                                          tmp_path / "tables", tmp_path / "plots"))
    for name in ("benchmark.csv", "benchmark.md", "runs.csv", "hardness.csv", "hardness_transfer.csv"):
        assert (tmp_path / "tables" / name).stat().st_size > 0
    for name in ("grid.png", "histograms.png", "benchmark.png", "ratio.png"):
        assert _is_png(tmp_path / "plots" / name)
    assert set(written) >= {"benchmark_csv", "benchmark_md", "runs_csv", "hardness_csv", "hardness_transfer_csv",
                            "grid_png", "histograms_png", "benchmark_png", "ratio_png"}
    assert {"transfer_matrix_csv", "transfer_matrix_png", "hardest_png"} <= set(written)  # transfer, gallery
    matrix = pd.read_csv(written["transfer_matrix_csv"])  # hardgen.report.transfer; tested on known relations there
    assert list(matrix.columns)[:6] == ["source", "evaluator", "evaluator_kind", "spearman", "partial_spearman", "n"]
    assert _is_png(written["transfer_matrix_png"]) and _is_png(written["hardest_png"])
    bench = pd.read_csv(written["benchmark_csv"])
    assert list(bench.columns) == summary.BENCHMARK_COLUMNS
    assert "overall" in set(bench["testset"])
    runs_csv = pd.read_csv(written["runs_csv"])
    assert list(runs_csv.columns) == ["arch", "policy", "ratio", "seed", "real_images", "synthetic_images", "iterations",
                                      "images_seen"]
    assert len(runs_csv) == len(eval_tree) and (runs_csv["iterations"] == 12).all()
    md = written["benchmark_md"].read_text()
    assert "noise by design" in md and "## Training budget" in md and "12 iterations, 96 images seen" in md
    hardness_df = pd.read_csv(written["hardness_csv"])
    assert hardness_df.groupby("backbone")["in_loss"].all().to_dict() == {"cnn": False, "vit": True}
    transfer = pd.read_csv(written["hardness_transfer_csv"])
    assert list(transfer.columns) == hardness.TRANSFER_COLUMNS
    assert set(transfer["segmenter"]) == {"cnn/seed-0"}
    plain = transfer.loc[transfer.variant == "plain"]
    assert plain["spearman"].tolist() == pytest.approx([1.0, 1.0])
    # here the foreground fraction orders the samples exactly like the distance (and the loss): once it is
    # controlled for, nothing is left to correlate, so the partial correlation is undefined
    assert (plain["n"] == 10).all() and plain["partial_spearman"].isna().all()
    # no temporary files left behind by the atomic writes
    assert not [p for p in (tmp_path / "plots").iterdir() if p.name.startswith(".")]

    # the workflow's form: lists of paths laid out as in results/, and no conditions table
    loss_in_tree = tmp_path / "results" / "eval" / "cnn" / "seed-0" / "sample_loss.csv"
    loss_in_tree.parent.mkdir(parents=True)
    loss_in_tree.write_bytes(loss.read_bytes())
    for variant, rows in gen.items():
        frame = pd.DataFrame(rows).assign(mask=[r["mask"] for r in cond_rows[: len(rows)]],
                                          condition=[r["condition"] for r in cond_rows[: len(rows)]])
        frame.to_csv(manifests[variant], index=False)
    again = write_report(ReportSettings(
        ReportInputs(eval_tree, score_paths, manifests, tmp_path / "manifest.csv", run_records=runs,
                     sample_loss_csvs={"cnn/seed-0": loss_in_tree}, eval_images=_image_paths(eval_tree)),
        ReportOptions(loss_backbones=["vit"]), tmp_path / "tables2", tmp_path / "plots2"))
    assert _is_png(again["grid_png"])
    pd.testing.assert_frame_equal(pd.read_csv(again["hardness_transfer_csv"]), transfer)
    assert "noise by design" not in again["benchmark_md"].read_text()


def test_plot_histograms_requires_columns(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="distance"):
        plots.plot_histograms(pd.DataFrame({"variant": ["a"], "backbone": ["b"]}), tmp_path / "h.png")


# ------------------------------------------------------------------------------------ training curves
def _train_log(path: Path, steps: int, extra: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    step = np.arange(1, steps + 1)
    pd.DataFrame({"step": step, "loss": 1.0 / step + extra, "mse": 1.0 / step, "extra": extra * np.exp(-step / 5),
                  "active_fraction": 0.5, "lr": 1e-3}).to_csv(path, index=False)
    return path


def test_training_loss_plot_reads_every_variant_log(tmp_path: Path) -> None:
    logs = {v: _train_log(tmp_path / "lora" / v / "train_log.csv", steps, extra)
            for v, steps, extra in (("plain", 40, 0.0), ("hard", 20, 0.3), ("feedback", 20, 0.2))}
    plots.plot_training_loss(logs, tmp_path / "loss.png")
    assert _is_png(tmp_path / "loss.png")
    # plain only (no fine-tuned variant): the right panel says so instead of failing
    plots.plot_training_loss({"plain": logs["plain"]}, tmp_path / "plain.png")
    assert _is_png(tmp_path / "plain.png")


def test_training_loss_plot_names_bad_logs(tmp_path: Path) -> None:
    bad = tmp_path / "lora" / "hard" / "train_log.csv"
    bad.parent.mkdir(parents=True)
    pd.DataFrame({"step": [1], "loss": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"train_log\.csv: training log \(hard\) table lacks columns"):
        plots.plot_training_loss({"hard": bad}, tmp_path / "x.png")
    with pytest.raises(DataError, match="no training steps"):
        plots.plot_training_loss({}, tmp_path / "x.png")


def test_write_report_adds_the_training_loss_plot_from_log_paths(tmp_path: Path, eval_tree: dict[tuple, Path]) -> None:
    score_paths, _ = _write_scores(tmp_path)
    rng = np.random.default_rng(2)
    img, mask = tmp_path / "real/0.png", tmp_path / "real/m0.png"
    write_image(img, rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    write_mask(mask, rng.random((20, 24)) > 0.5)
    pd.DataFrame([{"id": "s0", "image": str(img), "mask": str(mask)}]).to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "generated/plain/0.png"
    write_image(out, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    manifest = tmp_path / "generated/plain/manifest.csv"
    pd.DataFrame([{"sample_id": "s0", "image": str(out), "mask": str(mask), "condition": str(mask)}]).to_csv(
        manifest, index=False)
    logs = [_train_log(tmp_path / "results/lora" / v / "train_log.csv", 10, e) for v, e in (("plain", 0), ("hard", 1))]
    inputs = ReportInputs(eval_tree, score_paths, {"plain": manifest}, tmp_path / "manifest.csv",
                          run_records=_run_records(eval_tree), train_logs=dict(zip(("plain", "hard"), logs)),
                          eval_images=_image_paths(eval_tree))
    options = ReportOptions(loss_backbones=["vit"])
    written = write_report(ReportSettings(inputs, options, tmp_path / "tables", tmp_path / "plots"))
    assert written["training_loss_png"] == tmp_path / "plots" / "training_loss.png"
    assert _is_png(written["training_loss_png"])
    with pytest.raises(TypeError, match="train logs: pass a"):  # names are never read off paths
        write_report(ReportSettings(replace(inputs, train_logs=[tmp_path / "elsewhere.csv"]), options,
                                    tmp_path / "t2", tmp_path / "p2"))


# ------------------------------------------------------------------------------ ratio and fidelity guard
def test_ratio_plot_draws_score_against_ratio(tmp_path: Path, eval_tree: dict[tuple, Path]) -> None:
    long = summary.benchmark_long(eval_tree)
    plots.plot_ratio(long, tmp_path / "ratio.png")
    assert _is_png(tmp_path / "ratio.png")
    # real-only rows alone (no synthetic ratio yet) still plot: the real line
    plots.plot_ratio(long[long.policy == "real"], tmp_path / "real.png")
    assert _is_png(tmp_path / "real.png")
    with pytest.raises(DataError, match="no mDice/mIoU rows"):
        plots.plot_ratio(long[long.metric == "MAE"], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_write_report_writes_the_fidelity_table_and_the_ratio_plot(tmp_path: Path, eval_tree: dict[tuple, Path]) -> None:
    rng = np.random.default_rng(3)
    img, mask = tmp_path / "real/0.png", tmp_path / "real/m0.png"
    write_image(img, rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    write_mask(mask, rng.random((20, 24)) > 0.5)
    pd.DataFrame([{"id": "r0", "image": str(img), "mask": str(mask)}]).to_csv(tmp_path / "manifest.csv", index=False)
    scores, manifests = [], {}
    # fidelity per sample: plain 0.9 each; hard: 0.1, 0.3, 0.5, 0.7 (two below min_fidelity 0.5; 0.5 passes)
    fidelities = {"plain": [0.9] * 4, "hard": [0.1, 0.3, 0.5, 0.7]}
    for variant, values in fidelities.items():
        rows = []
        for i, value in enumerate(values):
            out = tmp_path / f"generated/{variant}/{i}.png"
            write_image(out, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
            rows.append({"sample_id": f"s{i}", "image": str(out), "mask": str(mask), "condition": str(mask)})
            for backbone in ("cnn", "vit"):  # score tables repeat the fidelity per backbone
                scores.append({"sample_id": f"s{i}", "variant": variant, "backbone": backbone, "distance": 1.0 + i,
                               "z": float(i), "fidelity_dice": value, "fidelity_separation": value,
                               "fidelity": value})
        manifests[variant] = tmp_path / f"generated/{variant}/manifest.csv"
        pd.DataFrame(rows).to_csv(manifests[variant], index=False)
    for i in range(3):  # real images: the guard's calibration, no fidelity
        scores += [{"sample_id": f"r{i}", "variant": "real", "backbone": b, "distance": 0.5, "z": 0.0}
                   for b in ("cnn", "vit")]
    score_csv = tmp_path / "scores.csv"
    pd.DataFrame(scores).to_csv(score_csv, index=False)
    # each variant's results/fidelity/<variant>.csv names the judge runs that graded it
    judges = "judge/cnn/seed-0;judge/transformer/seed-0"
    fidelity_csvs = {}
    for variant, values in fidelities.items():
        path = tmp_path / "results" / "fidelity" / f"{variant}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"sample_id": [f"s{i}" for i in range(len(values))], "judges": judges}).to_csv(path, index=False)
        fidelity_csvs[variant] = path
    inputs = ReportInputs(eval_tree, [score_csv], manifests, tmp_path / "manifest.csv",
                          run_records=_run_records(eval_tree), eval_images=_image_paths(eval_tree))
    options = ReportOptions(loss_backbones=["vit"], min_fidelity=0.5)
    with pytest.raises(DataError, match="name the guard's judges"):
        write_report(ReportSettings(inputs, options, tmp_path / "t0", tmp_path / "p0"))
    written = write_report(ReportSettings(replace(inputs, fidelity_csvs=fidelity_csvs), options, tmp_path / "tables",
                                          tmp_path / "plots"))
    assert written["fidelity_csv"] == tmp_path / "tables" / "fidelity.csv"
    table = pd.read_csv(written["fidelity_csv"]).set_index("variant")
    assert list(table.reset_index().columns)[:4] == ["variant", "n", "mean_fidelity", "rejected"]
    assert table.loc["hard", ["n", "rejected"]].tolist() == [4, 2] and table.loc["plain", "rejected"] == 0
    assert table.loc["hard", "mean_fidelity"] == pytest.approx(0.4) and "real" not in table.index
    # the guard's judges are separate real-only runs: no name points at a benchmark run (results/segment, eval)
    assert (table["judges"] == judges).all()
    for name in judges.split(";"):
        assert name.startswith("judge/") and "segment" not in name and "ratio-" not in name
    md = written["benchmark_md"].read_text()
    assert "## Fidelity guard" in md and "| hard | 4 | 0.400 | 2 (50%) |" in md
    assert _is_png(written["ratio_png"])
    bench = pd.read_csv(written["benchmark_csv"])
    assert "ratio" in bench.columns and set(bench.loc[bench.policy == "real", "ratio"]) == {0}
    assert set(bench.loc[bench.policy == "hard_band", "ratio"]) == {0.5, 1.0}


def test_skipped_runs_are_listed_as_infeasible_and_left_out_of_every_comparison(eval_tree: dict[tuple, Path],
                                                                                 tmp_path: Path) -> None:
    records = _run_records(eval_tree)
    # hard_faithful at ratio 1, seed 0: its pool was short, both archs' runs skipped (header-only eval tables)
    skipped = [{"arch": a, "policy": "hard_faithful", "ratio": 1.0, "seed": 0, "skipped": True, "pool": 20, "need": 24,
                "real_images": 24, "reason": "policy 'hard_faithful' at ratio 1: needs 24 ..., holds 20"}
               for a in ("transformer", "cnn")]
    empty = {}
    for a in ("cnn", "transformer"):
        path = tmp_path / "results" / "eval" / a / "hard_faithful" / "ratio-1" / "seed-0.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(columns=["testset", "metric", "value"]).to_csv(path, index=False)
        empty[a] = path
    infeasible = run_records.infeasible_table([*records, *skipped])
    assert list(infeasible.columns) == run_records.INFEASIBLE_COLUMNS
    assert infeasible[["policy", "ratio", "seed", "pool", "need", "archs"]].values.tolist() == [
        ["hard_faithful", 1.0, 0, 20, 24, "cnn transformer"]]
    assert len(run_records.runs_table([*records, *skipped])) == len(records)  # skipped runs have no budget to compare
    keys = [("cnn", "hard_faithful", 1.0, 0), ("transformer", "hard_faithful", 1.0, 0)]
    keyed = {("cnn", "hard_faithful", 1.0, 0): empty["cnn"], ("transformer", "hard_faithful", 1.0, 0): empty["transformer"]}
    long = summary.benchmark_long({**eval_tree, **keyed}, skipped=keys)
    assert "hard_faithful" not in set(long["policy"]) and len(long) == 9 * 6 * 3
    with pytest.raises(DataError, match="no rows"):  # an empty table of a run that was not skipped
        summary.benchmark_long({**eval_tree, **keyed}, skipped=keys[1:])
    md = markdown.markdown_report(markdown.BenchmarkTables(long, infeasible=infeasible))
    assert "## Subsets that could not be filled" in md and "| hard_faithful | 1 | 0 | 20 | 24 |" in md
    none_infeasible = markdown.BenchmarkTables(long, infeasible=infeasible.head(0))
    assert "could not be filled" not in markdown.markdown_report(none_infeasible)


# ------------------------------------------------------------- missing values (the binary protocol's HD95)
def test_benchmark_long_keeps_missing_values_and_names_a_non_numeric_one(tmp_path: Path) -> None:
    path = tmp_path / "eval" / "seed-0.csv"
    path.parent.mkdir(parents=True)
    path.write_text("testset,metric,value\nA,mDice,0.5\nA,HD95,\nB,HD95,nan\nB,mDice,0.7\n")
    long = summary.benchmark_long({("cnn", "real", 0.0, 0): path}).set_index(["testset", "metric"])["value"]
    assert long.isna().to_dict() == {("A", "HD95"): True, ("A", "mDice"): False, ("B", "HD95"): True,
                                     ("B", "mDice"): False}
    path.write_text("testset,metric,value\nA,mDice,0.5\nA,HD95,n/a px\n")
    with pytest.raises(DataError, match=r"seed-0\.csv: non-numeric entry 'n/a px'.*testset A, metric HD95"):
        summary.benchmark_long({("cnn", "real", 0.0, 0): path})


def _hd95_long() -> pd.DataFrame:
    """HD95 of cnn on test sets A and B, seeds 0 and 1: real's B is undefined for every seed (no defined image),
    hard's seed 1 has no defined HD95 anywhere; plus mDice, always defined."""
    rows = []
    for policy, ratio, values in (("real", 0.0, {0: (4.0, np.nan), 1: (6.0, np.nan)}),
                                  ("hard", 1.0, {0: (3.0, 5.0), 1: (np.nan, np.nan)})):
        for seed, (a, b) in values.items():
            rows += [("cnn", policy, ratio, seed, "A", "HD95", a), ("cnn", policy, ratio, seed, "B", "HD95", b),
                     ("cnn", policy, ratio, seed, "A", "mDice", 0.5 + seed / 10),
                     ("cnn", policy, ratio, seed, "B", "mDice", 0.6)]
    return pd.DataFrame(rows, columns=summary.BENCHMARK_COLUMNS)


def test_means_with_missing_values_are_nan_never_0_nor_over_the_other_testsets() -> None:
    wide = summary.benchmark_summary(_hd95_long(), metrics=["HD95"], testsets=["A", "B"])
    cells = wide.set_index(["policy", "seed"])
    assert list(wide.columns[-4:]) == ["A", "B", "mean", "overall"]  # B kept though all its values are missing
    assert cells.loc[("real", 0), "A"] == 4.0 and np.isnan(cells.loc[("real", 0), "B"])
    assert np.isnan(cells.loc[("real", 0), "mean"])  # not 4.0 (A alone) and not 2.0 (B as 0)
    assert cells.loc[("hard", 0), "mean"] == pytest.approx(4.0)
    assert np.isnan(cells.loc[("hard", 1), "mean"])  # a run whose every value is missing keeps its row
    # the cells over seeds: the defined seeds, and how many of them; none defined: "–", never 0
    assert markdown._mean_sd(pd.Series([4.0, 6.0])) == f"5.000 ± {np.std([4.0, 6.0], ddof=1):.3f}"
    assert markdown._mean_sd(cells.loc["hard", "A"]) == "3.000 (1 of 2 seeds)"
    assert markdown._mean_sd(cells.loc["real", "mean"]) == "–"


class _Saved:
    """Captures the figures a plot function saves (then saves them as it would)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.figures, original = [], tables.save_figure

        def save(figure, out_png):
            self.figures.append(figure)
            original(figure, out_png)

        monkeypatch.setattr(plots, "save_figure", save)


def test_plots_skip_missing_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _Saved(monkeypatch)
    long = _hd95_long()
    long.loc[(long.policy == "hard") & (long.metric == "mDice"), "value"] = np.nan  # hard: no defined mDice
    plots.plot_benchmark(long, tmp_path / "benchmark.png")
    assert _is_png(tmp_path / "benchmark.png")
    bars = [p.get_height() for p in saved.figures[-1].axes[0].patches]
    # real's bar alone: mean over seeds of (0.5 + 0.6) / 2 and (0.6 + 0.6) / 2; hard has none (not a bar of 0)
    assert bars == pytest.approx([(0.55 + 0.6) / 2])
    plots.plot_ratio(long, tmp_path / "ratio.png", metrics=["mDice", "HD95"])
    assert _is_png(tmp_path / "ratio.png")
    drawn = [y for ax in saved.figures[-1].axes for line in ax.get_lines() for y in np.atleast_1d(line.get_ydata())]
    assert drawn and np.isfinite(drawn).all() and 0.0 not in drawn
    hd95 = next(ax for ax in saved.figures[-1].axes if ax.get_title() == "cnn: HD95")
    assert hd95.get_legend_handles_labels()[1] == ["hard"]  # real's HD95 mean is missing for both seeds: no line
    assert np.ravel(hd95.get_lines()[0].get_ydata()).tolist() == [4.0]  # hard seed 0 only (seed 1: no mean)


def _one_sample_manifests(tmp_path: Path) -> dict[str, Path]:
    """manifest.csv with one real image (r0) and the plain and hard manifests of the scores' generated sample s0, drawn
    as the real image: the inputs write_report reads beside the scores."""
    img, mask = tmp_path / "real/0.png", tmp_path / "real/m0.png"
    write_image(img, np.full((20, 24, 3), 90, np.uint8))
    write_mask(mask, np.eye(20, 24, dtype=bool))
    pd.DataFrame([{"id": "r0", "image": str(img), "mask": str(mask)}]).to_csv(tmp_path / "manifest.csv", index=False)
    manifests = {v: tmp_path / "generated" / f"{v}.csv" for v in ("plain", "hard")}
    manifests["plain"].parent.mkdir(parents=True)
    for manifest in manifests.values():
        pd.DataFrame([{"sample_id": "s0", "image": str(img), "mask": str(mask), "condition": str(mask)}]).to_csv(
            manifest, index=False)
    return manifests


def test_write_report_with_undefined_hd95(tmp_path: Path, eval_tree: dict[tuple, Path]) -> None:
    """Binary-protocol tables: HD95 with undefined images beside mDice / mIoU; cnn real seed 0 has none defined on
    Kvasir, and its per-image table holds the NaN. Every table and plot is written; benchmark.csv keeps the NaN."""
    for (arch, policy, ratio, seed), path in eval_tree.items():
        table = pd.read_csv(path)
        counts = {t: (2 if t == "CVC-300" else 0, 3) for t in TESTSETS}
        if (arch, policy, ratio, seed) == ("cnn", "real", 0.0, 0):
            counts["Kvasir"] = (3, 3)
        rows = [(t, m, v) for t, (undefined, n) in counts.items()
                for m, v in (("HD95", np.nan if undefined == n else 5.0), ("HD95_undefined", undefined),
                             ("n_images", n))]
        extra = pd.DataFrame(rows, columns=["testset", "metric", "value"])
        pd.concat([table, extra], ignore_index=True).to_csv(path, index=False)
        images = path.with_name(path.stem + summary.IMAGES_SUFFIX)
        per_image = pd.read_csv(images)
        hd95 = per_image[per_image.metric == "mDice"].assign(metric="HD95", value=np.nan)
        pd.concat([per_image, hd95], ignore_index=True).to_csv(images, index=False)
    manifests = _one_sample_manifests(tmp_path)
    score_paths, _ = _write_scores(tmp_path)
    inputs = ReportInputs(eval_tree, score_paths, manifests, tmp_path / "manifest.csv",
                          run_records=_run_records(eval_tree), eval_images=_image_paths(eval_tree))
    written = write_report(ReportSettings(inputs, ReportOptions(loss_backbones=["vit"], testsets=TESTSETS),
                                          tmp_path / "tables", tmp_path / "plots"))
    bench = pd.read_csv(written["benchmark_csv"])
    assert list(bench.columns) == summary.BENCHMARK_COLUMNS
    cell = bench[(bench.arch == "cnn") & (bench.policy == "real") & (bench.seed == 0) & (bench.metric == "HD95")]
    assert cell.set_index("testset")["value"].isna().to_dict() == {
        **dict.fromkeys(TESTSETS, False), "Kvasir": True}  # NaN in benchmark.csv, not 0
    md = written["benchmark_md"].read_text()
    assert "| cnn/real | 0 | 5 | 15 | Kvasir |" in md
    assert "| transformer/hard ×1 | 0 | 2 | 15 | – |" in md
    assert f"{len(eval_tree)} runs have undefined HD95s" in md  # one table row per run, not a sentence each
    assert f"HD95: undefined for some test images in {len(eval_tree)} run(s)" in md
    contrasts = pd.read_csv(written["contrasts_csv"])
    assert len(contrasts) and contrasts["mean_diff"].notna().all()  # mDice / mIoU: defined for every image
    for name in ("benchmark_png", "ratio_png"):
        assert _is_png(written[name])


def test_write_report_compares_the_full_data_baseline_like_for_like(tmp_path: Path,
                                                                      eval_tree: dict[tuple, Path]) -> None:
    """segment.full_data_baseline: transformer's real-only runs on every image (made-up scores, 1,450 images) stand in
    for its 24-image benchmark baseline in reproduction.csv and benchmark.md; the benchmark tables never see them; cnn
    (no full-data runs) keeps its own. The anchors' model trained on 1,450 images."""
    manifests = _one_sample_manifests(tmp_path)
    score_paths, _ = _write_scores(tmp_path)
    # full-data scores: mDice 0.9 + 0.01 k on test set k, mIoU 0.85; the anchors: 0.01 below, 0.85
    full = {t: {"mDice": 0.9 + 0.01 * k, "mIoU": 0.85} for k, t in enumerate(TESTSETS)}
    full_evals = {("transformer", "real", 0.0, s): _write_eval(tmp_path / f"results/eval-full/transformer/seed-{s}.csv",
                                                               full) for s in (0, 1)}
    full_records = [{"arch": "transformer", "policy": "real", "ratio": 0.0, "seed": s, "real_images": 1450,
                     "synthetic_images": 0, "iterations": 12, "images_seen": 96} for s in (0, 1)]
    anchors = pd.DataFrame(
        [{"model": model, "testset": t, "metric": m, "value": full[t][m] - (0.01 if m == "mDice" else 0.0),
          "n_train": 1450, "selection": "final"}
         for model in ("PVT", "UNet") for t in TESTSETS for m in ("mDice", "mIoU")])
    anchors.to_csv(tmp_path / "anchors.csv", index=False)
    inputs = ReportInputs(eval_tree, score_paths, manifests, tmp_path / "manifest.csv",
                          run_records=_run_records(eval_tree), eval_images=_image_paths(eval_tree),
                          anchors_csv=tmp_path / "anchors.csv", full_data_evals=full_evals,
                          full_data_records=full_records)
    published = {"cnn": "UNet", "transformer": "PVT"}
    written = write_report(ReportSettings(inputs, ReportOptions(loss_backbones=["vit"], testsets=TESTSETS,
                                                                published=published),
                                          tmp_path / "tables", tmp_path / "plots"))
    table = pd.read_csv(written["reproduction_csv"])
    pvt = table[(table.arch == "transformer") & (table.testset != repro.MEAN)]
    assert (pvt["n_real"] == 1450).all() and (pvt["published_n_train"] == 1450).all()
    assert pvt.set_index(["testset", "metric"])["ours"].to_dict() == pytest.approx(
        {(t, m): full[t][m] for t in TESTSETS for m in ("mDice", "mIoU")})
    assert pvt.set_index(["testset", "metric"])["diff"].to_dict() == pytest.approx(
        {(t, m): 0.01 if m == "mDice" else 0.0 for t in TESTSETS for m in ("mDice", "mIoU")})
    cnn = table[table.arch == "cnn"]
    assert (cnn["n_real"] == 24).all() and cnn["diff"].isna().all()  # its 24-image baseline: not like for like
    md = written["benchmark_md"].read_text()
    assert "transformer's real-only baseline reproduces PVT's published mDice / mIoU by +0.010 / +0.000" in md
    assert "cnn's real-only baseline trained on 24 real images and UNet's published numbers on 1,450" in md
    # the benchmark's own tables: the 24-image runs only
    assert len(pd.read_csv(written["runs_csv"])) == len(eval_tree)
    bench = pd.read_csv(written["benchmark_csv"])
    assert set(map(tuple, bench[["arch", "policy", "ratio", "seed"]].drop_duplicates().values)) == {
        (a, p, float(r), s) for a, p, r, s in eval_tree}
