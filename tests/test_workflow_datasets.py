"""The same workflow, unchanged in code, on the second demo modality: grayscale 16-bit ultrasound-like lesions with 0/1
masks, custom split names, one test set and the binary protocol, in the folders layout (end to end) and in the table
layout (the same data as a CSV: manifest and evaluation); its lesions are isoechoic and a test frame is lesion-free (the
hard cases of real data under the binary protocol; test_workflow's quick run has the colonoscopy ones)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from test_workflow import (
    REPO,
    check_hard_case_report,
    copy_workflow,
    quick_config,
    snakemake,
)

BINARY_METRICS = ["mDice", "mIoU", "Accuracy", "Sensitivity", "Specificity", "HD95"]
TRAIN_SPLITS, TESTSET = ["scans"], "clinic-B"
US_EMPTY = 1  # lesion-free frames of the ultrasound run's 3 test frames (data.demo.empty_test_fraction 1/3)


def ultrasound_config(path, layout: str = "folders") -> list[str]:
    """The shrunk demo of test_workflow with config/demo-ultrasound.yaml's data and protocol (fewer images still)."""
    args = quick_config(path)
    cfg = yaml.safe_load(path.read_text())
    overlay = yaml.safe_load((REPO / "config" / "demo-ultrasound.yaml").read_text())
    cfg["data"].update(overlay["data"])
    # isoechoic lesions (the luma measure has nothing to measure) and one lesion-free frame of the 3 test frames (its
    # HD95 is undefined whatever the segmenter predicts): the hard cases of real data, on this one run
    cfg["data"].update(layout=layout, demo={**overlay["data"]["demo"], "n_train": 8, "n_test": 3, "min_size": 48,
                                            "max_size": 64, "lesion_colour": "matched",
                                            "empty_test_fraction": US_EMPTY / 3})
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
    lesion_free = manifest["fg_fraction"] == 0
    assert int(lesion_free.sum()) == US_EMPTY
    for path in [*manifest["image"], *manifest.loc[~lesion_free, "mask"]]:
        assert str(path).startswith(str(converted))  # 16-bit images and 0/1 masks: 8-bit PNG copies
    for path in manifest.loc[lesion_free, "mask"]:  # an all-zero mask reads the same at 0/1 and 0/255: kept as it is
        assert not str(path).startswith(str(converted)) and not np.asarray(Image.open(path)).any()
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
# The hard cases of real data (issue 30), procedurally: lesions of the background's colour and lesion-free test frames.
# The binary case is the ultrasound run above (16-bit, isoechoic, a lesion-free frame); the colonoscopy case under the
# polyp toolbox is the quick run of test_workflow (colour-matched polyps, a lesion-free frame per test set).
@pytest.mark.workflow
def test_isoechoic_lesions_and_a_lesion_free_frame_reach_the_report_under_binary(ultrasound_run):
    workdir, _ = ultrasound_run
    check_hard_case_report(workdir, "binary", [TESTSET], 3, US_EMPTY, "luma", {"plain", "hard"}, {"real", "hard"})
