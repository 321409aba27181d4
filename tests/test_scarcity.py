"""The data-scarcity curve (data.train_subsets): the results layout's n-{n_real} level, the config keys, the per-size
manifests, the curve's tables and plot, the workflow's per-size plan and (workflow) a two-size run end to end."""

from __future__ import annotations

import copy
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from test_workflow import REPO, copy_workflow, planned_jobs, quick_config, snakemake

from hardgen.config.validation import (
    ConfigError,
    load_config,
    scarcity,
    train_subset_labels,
    validate_config,
)
from hardgen.core import layout
from hardgen.core.io import DataError
from hardgen.data.demo import make_demo_dataset
from hardgen.data.manifest import (
    build_manifest,
    load_manifest,
    train_subset,
    write_manifest,
)
from hardgen.report.run_records import RUNS_COLUMNS
from hardgen.report.scarcity import (
    SINGLE_SEED,
    T_SEEDS,
    scarcity_table,
    with_n_real,
    write_scarcity,
)
from hardgen.report.summary import BENCHMARK_COLUMNS

# ---- layout


def test_layout_has_the_size_level_only_when_asked():
    # off (None): every path as the one-size run has it
    assert layout.path("manifest") == "results/data/manifest.csv"
    assert layout.path("model", arch="cnn", policy="real", ratio="0", seed=0) == \
        "results/segment/cnn/real/ratio-0/seed-0/model.safetensors"
    # on: right below results/, filled or kept a wildcard
    assert layout.path("manifest", n_real="all") == "results/n-all/data/manifest.csv"
    assert layout.path("model", n_real=24, arch="cnn", policy="real", ratio="0", seed=0) == \
        "results/n-24/segment/cnn/real/ratio-0/seed-0/model.safetensors"
    assert layout.path("lora", n_real="{n_real}") == "results/n-{n_real}/lora/{variant}/pytorch_lora_weights.safetensors"
    assert layout.wildcards("eval", n_real="{n_real}") == ["n_real", "arch", "policy", "ratio", "seed"]
    assert layout.wildcards("eval") == ["arch", "policy", "ratio", "seed"]
    # the dataset, its full manifest, the base model and the cross-size summary never have it
    for name in ("demo_data", "converted", "data_manifest", "data_train_subset", "base_model", "scarcity_table", "scarcity_plot"):
        assert layout.path(name, n_real=24) == layout.path(name), name
    # every artifact downstream of the real data has it, and the full manifest is the per-size one's path when off
    assert {"conditions", "prototype", "lora", "generated", "scores", "fidelity", "subset", "model", "eval", "judge",
            "judge_loss", "sample_loss", "table", "plots", "benchmarks", "train_subset"} <= layout.PER_N
    assert layout.path("data_manifest") == layout.path("manifest")


# ---- config


@pytest.fixture(scope="module")
def demo(repo_root):
    return load_config([repo_root / "config" / "config.yaml"])


def with_data(demo, **data):
    config = copy.deepcopy(demo)
    config["data"].update(data)
    return config


def test_train_subsets_labels_and_switch(demo):
    off = with_data(demo)
    validate_config(off)
    assert train_subset_labels(off) == ["all"] and not scarcity(off)
    one = with_data(demo, train_subset=12)
    validate_config(one)
    assert train_subset_labels(one) == ["12"] and not scarcity(one)
    assert train_subset_labels(with_data(demo, train_subsets=[12])) == ["12"]  # train_subset: N is this
    on = with_data(demo, train_subsets=[4, 12, "all"])
    validate_config(on)
    assert train_subset_labels(on) == ["4", "12", "all"] and scarcity(on)


@pytest.mark.parametrize(("data", "expected"), [
    ({"train_subset": 4, "train_subsets": [4, "all"]}, "set together with data.train_subset"),
    ({"train_subsets": [12, 4]}, "increasing and unique"),
    ({"train_subsets": [4, 4]}, "increasing and unique"),
    ({"train_subsets": ["all", 4]}, "increasing and unique"),
    ({"train_subsets": [0, 4]}, "data.train_subsets"),
    ({"train_subsets": ["most"]}, "data.train_subsets"),
    ({"train_subsets": []}, "data.train_subsets"),
])
def test_bad_train_subsets_name_the_key(demo, data, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(with_data(demo, **data))
    assert expected in str(info.value) and "data.train_subsets" in str(info.value)


# ---- per-size manifests


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_demo_dataset(root, ["A"], n_train=10, n_test=3, min_size=32, max_size=40, seed=3)
    return build_manifest(root, ["A"])


def train_ids(frame):
    return set(frame.loc[frame["split"] == "train", "id"])


def test_sizes_are_nested_keep_every_test_row_and_too_many_names_the_key(manifest, tmp_path):
    small, small_record = train_subset(manifest, 3, seed=7, key="data.train_subsets")
    large, _ = train_subset(manifest, 6, seed=7, key="data.train_subsets")
    full, _ = train_subset(manifest, None, seed=7, key="data.train_subsets")
    assert len(train_ids(small)) == 3 and len(train_ids(large)) == 6 and len(train_ids(full)) == 10
    assert train_ids(small) < train_ids(large) < train_ids(full)
    assert (small["split"] != "train").sum() == (manifest["split"] != "train").sum() == 3
    assert int(small_record["selected"].sum()) == 3
    # the manifest round-trips (rule subset_manifest writes it from the full one)
    write_manifest(small, tmp_path / "m.csv")
    assert train_ids(load_manifest(tmp_path / "m.csv")) == train_ids(small)
    with pytest.raises(ValueError, match=r"data\.train_subsets: 11 training images asked for, only 10"):
        train_subset(manifest, 11, seed=7, key="data.train_subsets")


# ---- the curve


def benchmark(n_seeds: int, base: float, gain: float) -> pd.DataFrame:
    """Two test sets, mIoU and mDice; real at ``base`` + seed / 100, plain ``gain`` above it."""
    rows = []
    for seed in range(n_seeds):
        for policy, ratio, value in (("real", 0.0, base), ("plain", 1.0, base + gain)):
            for testset, shift in (("A", 0.0), ("B", 0.1)):
                for metric in ("mIoU", "mDice"):
                    rows.append(["cnn", policy, ratio, seed, testset, metric, value + shift + seed / 100])
    return pd.DataFrame(rows, columns=BENCHMARK_COLUMNS)


def test_scarcity_table_means_over_testsets_then_seeds_with_t_intervals(tmp_path):
    tables = {}
    for label, base in (("4", 0.2), ("all", 0.5)):
        tables[label] = tmp_path / f"bench-{label}.csv"
        benchmark(3, base, 0.05).to_csv(tables[label], index=False)
    long = with_n_real(tables, {"4": 4, "all": 10}, BENCHMARK_COLUMNS, "benchmark")
    assert long.columns[0] == "n_real" and sorted(long["n_real"].unique()) == [4, 10]
    curve = scarcity_table(long, "mIoU")
    assert len(curve) == 4 and set(curve["method"]) == {T_SEEDS} and (curve["seeds"] == 3).all()
    real4 = curve[(curve["policy"] == "real") & (curve["n_real"] == 4)].iloc[0]
    # per seed: mean over A and B = base + 0.05 + seed / 100; over seeds 0..2: base + 0.06
    assert real4["mean"] == pytest.approx(0.26)
    assert real4["ci_low"] < 0.26 < real4["ci_high"]
    plain10 = curve[(curve["policy"] == "plain") & (curve["n_real"] == 10)].iloc[0]
    assert plain10["mean"] == pytest.approx(0.61)
    # one seed: no interval, and the table says so
    benchmark(1, 0.2, 0.05).to_csv(tmp_path / "one.csv", index=False)
    one = scarcity_table(with_n_real({"4": tmp_path / "one.csv"}, {"4": 4}, BENCHMARK_COLUMNS, "b"), "mIoU")
    assert (one["method"] == SINGLE_SEED).all() and one["ci_low"].isna().all()
    assert one.loc[one["policy"] == "real", "mean"].iloc[0] == pytest.approx(0.25)


def test_write_scarcity_writes_tables_with_n_real_and_the_plot(tmp_path):
    benchmarks, runs, records = {}, {}, {}
    for label, n in (("4", 4), ("all", 10)):
        benchmarks[label] = tmp_path / f"b-{label}.csv"
        benchmark(2, 0.1 * n / 4, 0.02).to_csv(benchmarks[label], index=False)
        runs[label] = tmp_path / f"r-{label}.csv"
        pd.DataFrame([["cnn", "real", 0.0, 0, n, 0, 2, 8]], columns=RUNS_COLUMNS).to_csv(runs[label], index=False)
        records[label] = tmp_path / f"s-{label}.csv"
        pd.DataFrame({"id": [f"i{k}" for k in range(10)], "rank": range(10), "selected": [k < n for k in range(10)],
                      "size": n, "seed": 0}).to_csv(records[label], index=False)
    out = {"benchmark": tmp_path / "t/benchmark.csv", "runs": tmp_path / "t/runs.csv",
           "scarcity": tmp_path / "t/scarcity.csv", "plot": tmp_path / "p/scarcity.png"}
    write_scarcity(benchmarks, runs, records, out, "mIoU")
    assert sorted(pd.read_csv(out["benchmark"])["n_real"].unique()) == [4, 10]
    written_runs = pd.read_csv(out["runs"])
    assert written_runs["n_real"].tolist() == [4, 10] and written_runs["real_images"].tolist() == [4, 10]
    curve = pd.read_csv(out["scarcity"])
    assert set(curve["n_real"]) == {4, 10} and set(curve["metric"]) == {"mIoU"}
    assert out["plot"].stat().st_size > 1000
    # the real-only curve rises with n_real here, as the tables say
    real = curve[curve["policy"] == "real"].sort_values("n_real")["mean"].to_numpy()
    assert np.all(np.diff(real) > 0)


# ---- the workflow's plan


def job_outputs(output: str) -> list[tuple[str, str]]:
    """(rule, output line) of every job of a dry run."""
    jobs, rule = [], None
    for line in output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):", line.strip()):
            rule = match.group(1)
        elif line.strip().startswith("output:") and rule:
            jobs.append((rule, line.strip()))
    return jobs


def sized_overlay(workdir, sizes) -> list[str]:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["data"]["train_subsets"] = sizes
    (workdir / "sizes.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return ["--configfile", "sizes.yaml", "--replace-workflow-config"]


def test_two_sizes_plan_every_downstream_job_per_size_and_one_curve(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    one = planned_jobs(snakemake(workdir, "-n", "--cores", "1").stdout)
    result = snakemake(workdir, "-n", "--cores", "1", *sized_overlay(workdir, [8, "all"]))
    two = planned_jobs(result.stdout + result.stderr)
    # the dataset, the demo's lesion-free frames (inpainting) and the target: one each, never per size
    shared = {"demo_data", "background_frames", "prepare_data", "all"}
    for rule in ("train_control_lora", "train_hard_lora", "train_feedback_lora", "train_judge", "judge_loss",
                 "generate", "score", "filter", "train_segmenters", "train_real", "evaluate_runs", "prototype",
                 "make_conditions", "report"):
        assert two[rule] == 2 * one[rule], rule
    assert {r: two[r] for r in shared} == {r: one[r] for r in shared}
    assert two["subset_manifest"] == 2 and two["scarcity"] == 1 and "scarcity" not in one
    for rule, line in job_outputs(result.stdout):
        if rule not in shared | {"scarcity", "models_table"}:  # the curve and the run's models: one per run
            assert "results/n-8/" in line or "results/n-all/" in line, (rule, line)
    assert "results/plots/scarcity.png" in result.stdout and "results/tables/benchmark.csv" in result.stdout


# ---- end to end


@pytest.mark.slow  # about 4.5 minutes on 2 shared cores
@pytest.mark.workflow
def test_two_sizes_run_end_to_end_and_a_new_size_reruns_nothing_of_the_others(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    quick_config(workdir / "quick.yaml")
    cfg = yaml.safe_load((workdir / "quick.yaml").read_text())
    # the quick run, shrunk further: one variant, real and plain at one ratio
    cfg["data"]["train_subsets"] = [4, "all"]
    cfg["generation"].update(variants=["plain"], shards=1)
    cfg["segment"].update(policies=["real", "plain"], synthetic_ratios=[1.0])
    cfg["filter"]["band"] = [0.1, 0.9]
    cfg["report"]["primary_contrast"] = {"policy": "plain", "versus": "real", "ratio": 1.0, "metric": "mIoU"}
    (workdir / "quick.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    args = ["--configfile", "quick.yaml", "--replace-workflow-config"]
    snakemake(workdir, "--cores", "2", *args)
    results = workdir / "results"
    assert (results / "plots" / "scarcity.png").stat().st_size > 1000
    bench = pd.read_csv(results / "tables" / "benchmark.csv")
    runs = pd.read_csv(results / "tables" / "runs.csv")
    assert sorted(bench["n_real"].unique()) == [4, 8] and sorted(runs["n_real"].unique()) == [4, 8]
    # each size trained its segmenters on its own count of real images
    assert (runs["real_images"] == runs["n_real"]).all()
    curve = pd.read_csv(results / "tables" / "scarcity.csv")
    assert set(curve["n_real"]) == {4, 8} and set(curve["policy"]) == {"real", "plain"}
    # nested: the 4 images inside the 8; the full manifest keeps every one
    small = load_manifest(results / "n-4" / "data" / "manifest.csv")
    full = load_manifest(results / "n-all" / "data" / "manifest.csv")
    assert len(train_ids(small)) == 4 and train_ids(small) < train_ids(full)
    assert train_ids(full) == train_ids(load_manifest(results / "data" / "manifest.csv"))
    # every size has its own report and generator
    for label in ("4", "all"):
        assert (results / f"n-{label}" / "tables" / "fidelity.csv").is_file()
        assert (results / f"n-{label}" / "lora" / "plain" / "pytorch_lora_weights.safetensors").is_file()
    # a size added later runs its own jobs and the curve, nothing of the sizes already there
    cfg["data"]["train_subsets"] = [4, 6, "all"]
    (workdir / "more.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = snakemake(workdir, "-n", "--cores", "1", "--configfile", "more.yaml", "--replace-workflow-config")
    jobs = job_outputs(result.stdout)
    assert jobs and planned_jobs(result.stdout)["subset_manifest"] == 1
    for rule, line in jobs:
        if rule not in {"scarcity", "all"}:
            assert "results/n-6/" in line, (rule, line)


def test_a_single_seed_point_gets_the_bootstrap_over_its_test_images(tmp_path):
    # one seed: real at 0.25 (mean over A and B); its per-image mIoU spread around the test sets' means
    benchmark(1, 0.2, 0.05).to_csv(tmp_path / "b.csv", index=False)
    bench = with_n_real({"4": tmp_path / "b.csv"}, {"4": 4}, BENCHMARK_COLUMNS, "b")
    rng = np.random.default_rng(0)
    rows = [[t, f"{t}{k}", "mIoU", centre + d] for t, centre in (("A", 0.2), ("B", 0.3))
            for k, d in enumerate(rng.normal(0, 0.05, 20))]
    pd.DataFrame(rows, columns=["testset", "image", "metric", "value"]).to_csv(tmp_path / "img.csv", index=False)
    empty = tmp_path / "skipped.csv"
    pd.DataFrame(columns=["testset", "image", "metric", "value"]).to_csv(empty, index=False)
    curve = scarcity_table(bench, "mIoU", ["A", "B"], images={(4, "cnn", "real", 0.0, 0): tmp_path / "img.csv",
                                                               (4, "cnn", "plain", 1.0, 0): empty})
    real = curve[curve["policy"] == "real"].iloc[0]
    assert real["method"] == "bootstrap_images" and real["ci_low"] < real["ci_high"]
    # the interval is around the images' mean over test sets, about ± 2 × 0.05 / sqrt(20) / sqrt(2) wide each side
    images_mean = pd.DataFrame(rows, columns=["t", "i", "m", "v"]).groupby("t")["v"].mean().mean()
    assert real["ci_low"] < images_mean < real["ci_high"] and real["ci_high"] - real["ci_low"] < 0.06
    plain = curve[curve["policy"] == "plain"].iloc[0]  # a skipped run's empty table: no interval
    assert plain["method"] == SINGLE_SEED and np.isnan(plain["ci_low"])


# ---- missing values (e.g. the binary protocol's HD95 where a segmenter predicts empty maps)


def test_missing_values_make_undefined_points_that_say_so_and_the_plot_skips_them(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from hardgen.evaluation.contrasts import bootstrap_interval, mean_over_testsets
    from hardgen.report import scarcity

    bench = benchmark(2, 0.2, 0.05)
    bench.loc[(bench["policy"] == "plain") & (bench["seed"] == 1) & (bench["testset"] == "B"), "value"] = np.nan
    long = pd.concat([bench.assign(n_real=4), benchmark(2, 0.5, 0.05).assign(n_real=10)], ignore_index=True)
    long.loc[(long["n_real"] == 10) & (long["policy"] == "real"), "value"] = np.nan  # no defined value at all
    curve = scarcity_table(long, "mIoU", ["A", "B"]).set_index(["policy", "n_real"])
    # plain at 4: seed 1 has no mean over the test sets (B missing), so the point is seed 0 alone, not a mean with 0
    assert curve.loc[("plain", 4), "seeds"] == 1 and curve.loc[("plain", 4), "method"] == SINGLE_SEED
    assert curve.loc[("plain", 4), "mean"] == pytest.approx(0.2 + 0.05 + 0.05)
    undefined = curve.loc[("real", 10)]
    assert undefined["method"] == scarcity.UNDEFINED and undefined["seeds"] == 0
    assert undefined[["mean", "ci_low", "ci_high"]].isna().all()
    assert curve.loc[("real", 4), "method"] == T_SEEDS and curve.loc[("plain", 10), "method"] == T_SEEDS

    # one seed's bootstrap over its test images leaves the missing images out, as the test-set means do
    rows = [["A", "a0", "mIoU", 0.2], ["A", "a1", "mIoU", np.nan], ["A", "a2", "mIoU", 0.3],
            ["B", "b0", "mIoU", 0.4], ["B", "b1", "mIoU", np.nan]]
    pd.DataFrame(rows, columns=["testset", "image", "metric", "value"]).to_csv(tmp_path / "img.csv", index=False)
    expected = bootstrap_interval([np.array([0.2, 0.3]), np.array([0.4])], mean_over_testsets)[1:]
    assert scarcity.image_interval(tmp_path / "img.csv", "mIoU", ["A", "B"]) == pytest.approx(expected)
    rows[3][3] = np.nan  # B: no defined image, so the mean over the test sets (and its interval) is undefined
    pd.DataFrame(rows, columns=["testset", "image", "metric", "value"]).to_csv(tmp_path / "img.csv", index=False)
    assert np.isnan(scarcity.image_interval(tmp_path / "img.csv", "mIoU", ["A", "B"])).all()
    rows[3][3] = "wide"  # a value that is not a number is still an error naming the file
    pd.DataFrame(rows, columns=["testset", "image", "metric", "value"]).to_csv(tmp_path / "img.csv", index=False)
    with pytest.raises(DataError, match=r"img\.csv: non-numeric"):
        scarcity.image_interval(tmp_path / "img.csv", "mIoU", ["A", "B"])

    figures = []
    original = scarcity.save_figure

    def save(figure: Figure, out_png) -> None:
        figures.append(figure)
        original(figure, out_png)

    monkeypatch.setattr(scarcity, "save_figure", save)
    scarcity.plot_scarcity(curve.reset_index(), tmp_path / "scarcity.png")
    assert (tmp_path / "scarcity.png").stat().st_size > 1000
    lines = {line.get_label(): np.ravel(line.get_ydata()) for line in figures[0].axes[0].get_lines()}
    assert lines["real only"].tolist() == pytest.approx([curve.loc[("real", 4), "mean"]])  # n_real 10 left out
    drawn = np.concatenate(list(lines.values()))
    assert np.isfinite(drawn).all() and 0.0 not in drawn


def test_the_full_data_baseline_runs_once_for_every_size(tmp_path):
    # segment.full_data_baseline with the curve: the anchored archs' real-only runs read prepare_data's full manifest,
    # once per (arch, seed) outside results/n-<size>/, and every size's report reads them
    workdir = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["data"]["train_subsets"] = [8, "all"]
    cfg["segment"]["full_data_baseline"] = True
    (workdir / "sizes.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = snakemake(workdir, "-n", "--cores", "1", "--configfile", "sizes.yaml", "--replace-workflow-config")
    jobs = planned_jobs(result.stdout + result.stderr)
    anchored = [key for key, spec in cfg["segment"]["archs"].items() if spec.get("published")]
    runs = len(anchored) * len(cfg["segment"]["seeds"])
    assert runs and jobs["train_full_baseline"] == jobs["evaluate_full_baseline"] == runs
    assert "full_data_manifest" not in jobs and jobs["prepare_data"] == 1
    outputs = [line for rule, line in job_outputs(result.stdout) if rule == "train_full_baseline"]
    assert outputs and all("results/segment-full/" in line and "/n-" not in line for line in outputs)
