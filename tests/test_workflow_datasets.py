"""The same workflow, unchanged in code, on the second demo modality: grayscale 16-bit ultrasound-like lesions with 0/1
masks, custom split names, one test set and the binary protocol, in the folders layout (end to end) and in the table
layout (the same data as a CSV: manifest and evaluation)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from test_workflow import REPO, copy_workflow, quick_config, snakemake

BINARY_METRICS = ["mDice", "mIoU", "Accuracy", "Sensitivity", "Specificity", "HD95"]
TRAIN_SPLITS, TESTSET = ["scans"], "clinic-B"


def ultrasound_config(path, layout: str = "folders") -> list[str]:
    """The shrunk demo of test_workflow with config/demo-ultrasound.yaml's data and protocol (fewer images still)."""
    args = quick_config(path)
    cfg = yaml.safe_load(path.read_text())
    overlay = yaml.safe_load((REPO / "config" / "demo-ultrasound.yaml").read_text())
    cfg["data"].update(overlay["data"])
    cfg["data"].update(layout=layout, demo={**overlay["data"]["demo"], "n_train": 8, "n_test": 3, "min_size": 48,
                                            "max_size": 64})
    cfg["model"]["prompt"] = overlay["model"]["prompt"]
    # fewer generators and runs than the polyp quick run: the point is the data path and the protocol
    cfg["generation"].update(variants=["plain", "hard"], shards=1)
    cfg["segment"].update(policies=["real", "hard"], synthetic_ratios=[1.0])
    cfg["report"]["primary_contrast"] = {"policy": "hard", "versus": "real", "ratio": 1, "metric": "mIoU"}
    cfg["evaluate"] = overlay["evaluate"]
    assert cfg["data"]["train_splits"] == TRAIN_SPLITS and cfg["data"]["testsets"] == [TESTSET]
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return args


@pytest.fixture(scope="module")
def ultrasound_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("ultrasound"))
    args = ultrasound_config(workdir / "ultrasound.yaml")
    snakemake(workdir, "--cores", "2", *args)
    return workdir, args


@pytest.mark.workflow
def test_ultrasound_folders_layout_runs_end_to_end_with_the_binary_protocol(ultrasound_run):
    workdir, _ = ultrasound_run
    demo = workdir / "results" / "data" / "demo"
    image = Image.open(next((demo / "scans" / "images").iterdir()))
    assert image.mode == "I;16"  # the source images really are 16-bit grayscale, the masks 0/1
    assert set(np.unique(np.asarray(Image.open(next((demo / "scans" / "masks").iterdir())))).tolist()) <= {0, 1}

    manifest = pd.read_csv(workdir / "results" / "data" / "manifest.csv")
    assert manifest["split"].value_counts().to_dict() == {"train": 8, TESTSET: 3}
    assert manifest["id"].str.startswith("scans-").sum() == 8
    converted = workdir / "results" / "data" / "converted"
    for path in [*manifest["image"], *manifest["mask"]]:
        assert str(path).startswith(str(converted))  # 16-bit images and 0/1 masks: 8-bit PNG copies
    gray = np.asarray(Image.open(manifest["image"].iloc[0]))
    assert gray.dtype == np.uint8 and gray.ndim == 2
    assert set(np.unique(np.asarray(Image.open(manifest["mask"].iloc[0]))).tolist()) <= {0, 255}

    table = pd.read_csv(workdir / "results" / "eval" / "cnn" / "real" / "ratio-0" / "seed-0.csv")
    assert list(table["testset"].unique()) == [TESTSET, "overall"]
    assert list(table.loc[table.testset == TESTSET, "metric"]) == [*BINARY_METRICS, "HD95_undefined", "n_images"]
    values = table.set_index(["testset", "metric"])["value"]
    for metric in BINARY_METRICS[:-1]:
        assert 0.0 <= values[(TESTSET, metric)] <= 1.0
    assert math.isnan(values[(TESTSET, "HD95")]) or values[(TESTSET, "HD95")] >= 0.0
    assert values[(TESTSET, "n_images")] == 3 and 0 <= values[(TESTSET, "HD95_undefined")] <= 3
    assert math.isnan(values[(TESTSET, "HD95")]) == (values[(TESTSET, "HD95_undefined")] == 3)
    # the binary protocol's maps are probabilities x 255 without min-max: a map need not reach 0 and 255
    maps = sorted((workdir / "results" / "predictions" / "cnn" / "real" / "ratio-0" / "seed-0" / TESTSET).glob("*.png"))
    assert len(maps) == 3
    spans = [(int(m.min()), int(m.max())) for m in (np.asarray(Image.open(p)) for p in maps)]
    assert any(span != (0, 255) for span in spans)

    bench = pd.read_csv(workdir / "results" / "tables" / "benchmark.csv")
    assert set(bench["testset"]) == {TESTSET, "overall"}
    assert {"mDice", "mIoU"} <= set(bench["metric"])


@pytest.mark.workflow
def test_table_layout_gives_the_folders_manifest_and_scores(ultrasound_run, tmp_path):
    """The same data as a table (image, mask, split): the same pairs and, on the folders run's maps, the same scores."""
    folders_dir, _ = ultrasound_run
    workdir = copy_workflow(tmp_path / "table")
    args = ultrasound_config(workdir / "table.yaml", layout="table")
    snakemake(workdir, "--cores", "1", *args, "results/data/manifest.csv")
    assert (workdir / "results" / "data" / "demo" / "dataset.csv").is_file()
    by_table = pd.read_csv(workdir / "results" / "data" / "manifest.csv")
    by_folders = pd.read_csv(folders_dir / "results" / "data" / "manifest.csv")
    columns = ["id", "split", "width", "height", "fg_fraction"]
    pd.testing.assert_frame_equal(by_table[columns], by_folders[columns])
    for a, b in zip(by_table["image"], by_folders["image"]):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    # the evaluate rule on the folders run's maps, against the table run's ground truth
    predictions = workdir / "results" / "predictions" / "cnn" / "real" / "ratio-0"
    predictions.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(folders_dir / "results" / "predictions" / "cnn" / "real" / "ratio-0", predictions)
    out = "results/eval/cnn/real/ratio-0/seed-0.csv"
    snakemake(workdir, "--cores", "1", *args, out, "--allowed-rules", "evaluate", "prepare_data", "demo_data")
    pd.testing.assert_frame_equal(pd.read_csv(workdir / out), pd.read_csv(folders_dir / out))


# ------------------------------------------------------------------------------------------------------------------
# The hard cases of real data (issue 30), procedurally: polyps of the mucosa's colour (data.demo.lesion_colour:
# matched, so mask following's red-chromaticity measure has nothing to measure against) and lesion-free test frames
# (data.demo.empty_test_fraction: empty ground truths, so the binary protocol's HD95 is undefined there whatever the
# segmenter predicts). Two small runs cover both protocols: binary in the table layout with two custom test sets (the
# 16-bit-dataset case), polyp_toolbox in the pranet layout (the colonoscopy case); each must reach the report.
HARD_TESTSETS = ["site-A", "site-B"]
HARD_N_TEST, HARD_EMPTY = 4, 2  # per test set: 4 frames, floor(4 x 0.5) = 2 of them lesion-free


def hard_cases_config(path, protocol: str, layout: str) -> list[str]:
    """The shrunk demo of test_workflow on colour-matched polyps with lesion-free test frames (fewer runs still)."""
    args = quick_config(path)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"].update(layout=layout, testsets=HARD_TESTSETS,
                       demo={"n_train": 8, "n_test": HARD_N_TEST, "min_size": 48, "max_size": 64,
                             "lesion_colour": "matched", "empty_test_fraction": HARD_EMPTY / HARD_N_TEST})
    cfg["evaluate"] = {"protocol": protocol}
    cfg["generation"].update(variants=["plain", "hard"], shards=1)
    cfg["segment"].update(policies=["real", "hard"], synthetic_ratios=[1.0])
    cfg["report"]["primary_contrast"] = {"policy": "hard", "versus": "real", "ratio": 1, "metric": "mIoU"}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return args


def check_hard_case_report(workdir, protocol: str) -> None:
    """What both hard-case runs must show: the report, the data's hard cases, and undefined values that say why."""
    tables, results = workdir / "results" / "tables", workdir / "results"
    for name in ("benchmark.md", "benchmark.csv", "contrasts.csv", "mask_following.csv"):
        assert (tables / name).is_file(), name
    assert any((results / "plots").glob("*.png"))
    manifest = pd.read_csv(results / "data" / "manifest.csv")
    assert (manifest.loc[manifest["split"] == "train", "fg_fraction"] > 0).all()  # training frames show a polyp
    for testset in HARD_TESTSETS:
        rows = manifest[manifest["split"] == testset]
        assert len(rows) == HARD_N_TEST and int((rows["fg_fraction"] == 0).sum()) == HARD_EMPTY

    # the colour-matched polyps: the red-chromaticity measure is undefined for every variant, and says why
    following = pd.read_csv(tables / "mask_following.csv", keep_default_na=False)
    red = following[following["measure"] == "red_chromaticity"]
    assert set(red["variant"]) == {"real", "plain", "hard"}
    assert (red["status"] != "ok").all() and (red["reason"].str.len() > 0).all()
    markdown = (tables / "benchmark.md").read_text()
    assert "Mask following by red chromaticity is undefined" in markdown

    bench = pd.read_csv(tables / "benchmark.csv")
    assert set(bench["testset"]) == {*HARD_TESTSETS, "overall"} and set(bench["policy"]) == {"real", "hard"}
    scores = bench[bench["metric"].isin(["mDice", "mIoU"])]["value"]
    assert scores.notna().all() and scores.between(0, 1).all()  # lesion-free frames score, they are not dropped
    contrasts = pd.read_csv(tables / "contrasts.csv")
    assert "n" in contrasts.columns and len(contrasts) > 0
    defined = contrasts["n"] > 0
    assert contrasts.loc[defined, "mean_diff"].notna().all() and contrasts.loc[~defined, "mean_diff"].isna().all()
    if protocol == "binary":
        # HD95 is undefined on every lesion-free frame (an empty ground truth), whatever the prediction: counted per
        # test set, left out of the mean, and named in benchmark.md
        counts = bench[bench["metric"].isin(["HD95_undefined", "n_images"]) & bench["testset"].isin(HARD_TESTSETS)]
        per_run = counts.pivot_table(index=["arch", "policy", "ratio", "seed", "testset"], columns="metric",
                                     values="value")
        assert (per_run["n_images"] == HARD_N_TEST).all() and (per_run["HD95_undefined"] >= HARD_EMPTY).all()
        hd95 = bench[bench["metric"] == "HD95"]
        assert (hd95["value"].isna() | (hd95["value"] >= 0)).all()
        assert any("HD95" in line and "undefined" in line for line in markdown.splitlines())
        # every defined HD95 contrast pairs only the images defined in both runs: fewer than all of them
        hd95_contrasts = contrasts[contrasts["metric"].str.startswith("HD95")]
        if len(hd95_contrasts):
            assert (hd95_contrasts["n"] <= len(HARD_TESTSETS) * (HARD_N_TEST - HARD_EMPTY)).all()
    else:
        assert "HD95" not in set(bench["metric"])


@pytest.mark.workflow
def test_colour_matched_polyps_with_lesion_free_frames_reach_the_report_under_binary_in_the_table_layout(tmp_path):
    workdir = copy_workflow(tmp_path / "hard-binary")
    args = hard_cases_config(workdir / "hard.yaml", protocol="binary", layout="table")
    snakemake(workdir, "--cores", "2", *args)
    assert (workdir / "results" / "data" / "demo" / "dataset.csv").is_file()  # read through the demo's table
    check_hard_case_report(workdir, "binary")


@pytest.mark.workflow
def test_colour_matched_polyps_with_lesion_free_frames_reach_the_report_under_the_polyp_toolbox(tmp_path):
    workdir = copy_workflow(tmp_path / "hard-toolbox")
    args = hard_cases_config(workdir / "hard.yaml", protocol="polyp_toolbox", layout="pranet")
    snakemake(workdir, "--cores", "2", *args)
    check_hard_case_report(workdir, "polyp_toolbox")
