"""The same workflow, unchanged in code, on the second demo modality: grayscale 16-bit ultrasound-like lesions with 0/1
masks, custom split names, two test sets and the binary protocol. One run serves every end-to-end check here: a user's
dataset of that kind in the folders layout, run as a user rehearses it (``hardgen rehearse``: the shrunk config, its
own folder) to the report; its lesions are isoechoic and each test set has a lesion-free frame (the hard cases of real
data under the binary protocol; test_workflow's quick run has the colonoscopy ones). The table layout (the same data as
a CSV) is checked against the folders layout on the manifest and the evaluation."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from test_workflow import (
    check_hard_case_report,
    copy_workflow,
    snakemake,
)

from hardgen.data.demo import make_ultrasound_demo

BINARY_METRICS = ["mDice", "mIoU", "Accuracy", "Sensitivity", "Specificity", "HD95"]
TRAIN_SPLITS, TESTSETS = ["scans"], ["clinic-B", "clinic-C"]
#: the user's folders: 12 training and 6 + 5 test pairs, every one validated (expected_sizes); the rehearsal uses 8
#: and 3 + 3 of them (data.train_subset, data.test_subset), a capped test set keeping its lesion-free frame
SITE_SIZES = {"scans": 12, "clinic-B": 6, "clinic-C": 5}
N_TRAIN, N_TEST = 8, 3
US_EMPTY = 1  # lesion-free frames per test set (empty fraction 0.2: 1 of 6 and 1 of 5; kept by the cap)


@pytest.fixture(scope="module")
def ultrasound_rehearsal(tmp_path_factory):
    """``hardgen rehearse my-data.yaml`` in the user's folder: 16-bit grey images with 0/1 masks, isoechoic lesions,
    lesion-free test frames, the folders layout, two test sets, the binary protocol. Returns (site, run folder,
    workflow checkout)."""
    root = tmp_path_factory.mktemp("ultrasound")
    site = root / "site"
    make_ultrasound_demo(site / "data", SITE_SIZES, 48, 64, 1, lesion_colour="matched",
                         empty_fraction={name: 0.2 for name in TESTSETS})
    (site / "my-data.yaml").write_text(yaml.safe_dump({
        "data": {"root": "data", "layout": "folders", "train_splits": TRAIN_SPLITS, "testsets": TESTSETS,
                 "expected_sizes": {"train": SITE_SIZES["scans"], **{t: SITE_SIZES[t] for t in TESTSETS}}},
        "evaluate": {"protocol": "binary"},
        # one variant (the generators are not what a rehearsal of a dataset tests): mined, the best of 2 noises of the
        # plain LoRA (the polyp quick run of test_workflow has the others); 2 shards (a GPU cluster's) stay 2
        "generation": {"variants": ["mined"], "shards": 2},
        "segment": {"policies": ["real", "mined"], "synthetic_ratios": [1.0], "archs": {"transformer": None}},
        "report": {"primary_contrast": {"policy": "mined", "versus": "real", "ratio": 1, "metric": "mIoU"}},
    }))
    workflow = copy_workflow(root / "workflow")
    result = subprocess.run(
        [sys.executable, "-m", "hardgen.app.cli", "rehearse", "my-data.yaml", "--workflow", str(workflow)],
        cwd=site, capture_output=True, text=True, timeout=1500, check=False)
    assert result.returncode == 0, result.stderr[-6000:]
    assert not (workflow / "results").exists()
    return site, site / "rehearsal", workflow


@pytest.mark.workflow
def test_a_rehearsal_of_a_folders_dataset_reaches_the_report_in_its_own_folder(ultrasound_rehearsal) -> None:
    site, run, _ = ultrasound_rehearsal
    results = run / "results"
    manifest = pd.read_csv(results / "data" / "manifest.csv")
    assert manifest["split"].value_counts().to_dict() == {"train": N_TRAIN, **{t: N_TEST for t in TESTSETS}}
    for name in ("benchmark.md", "benchmark.csv", "contrasts.csv", "mask_following.csv"):
        assert (results / "tables" / name).is_file(), name
    assert any((results / "plots").glob("*.png"))
    assert not (site / "results").exists()  # only its own folder
    # the shards (generate jobs) merged into the variant's manifest, as in the real run
    shards = [pd.read_csv(results / "generated" / "mined" / f"shard-{i}.csv") for i in range(2)]
    merged = pd.read_csv(results / "generated" / "mined" / "manifest.csv")
    assert all(len(shard) > 0 for shard in shards) and len(merged) == sum(len(shard) for shard in shards)
    assert set(merged["sample_id"]) == set(pd.concat(shards)["sample_id"])
    # real data on the shipped tiny base: benchmark.md says the numbers are noise, and describes the user's run
    markdown = (results / "tables" / "benchmark.md").read_text()
    assert "noise by design" in markdown and "2 test sets (`clinic-B`, `clinic-C`)" in markdown
    assert "`evaluate.protocol: binary`" in markdown


@pytest.mark.workflow
def test_ultrasound_folders_layout_runs_end_to_end_with_the_binary_protocol(ultrasound_rehearsal):
    site, workdir, _ = ultrasound_rehearsal
    image = Image.open(next((site / "data" / "scans" / "images").iterdir()))
    assert image.mode == "I;16"  # the source images really are 16-bit grayscale, the masks 0/1
    assert set(np.unique(np.asarray(Image.open(next((site / "data" / "scans" / "masks").iterdir())))).tolist()) <= {0, 1}

    manifest = pd.read_csv(workdir / "results" / "data" / "manifest.csv")
    assert manifest["id"].str.startswith("scans-").sum() == N_TRAIN
    converted = workdir / "results" / "data" / "converted"
    lesion_free = manifest["fg_fraction"] == 0
    assert int(lesion_free.sum()) == US_EMPTY * len(TESTSETS)
    for path in [*manifest["image"], *manifest.loc[~lesion_free, "mask"]]:
        assert str(path).startswith(str(converted))  # 16-bit images and 0/1 masks: 8-bit PNG copies
    for path in manifest.loc[lesion_free, "mask"]:  # an all-zero mask reads the same at 0/1 and 0/255: kept as it is
        assert not str(path).startswith(str(converted)) and not np.asarray(Image.open(path)).any()
    gray = np.asarray(Image.open(manifest["image"].iloc[0]))
    assert gray.dtype == np.uint8 and gray.ndim == 2
    assert set(np.unique(np.asarray(Image.open(manifest["mask"].iloc[0]))).tolist()) <= {0, 255}

    table = pd.read_csv(workdir / "results" / "eval" / "cnn" / "real" / "ratio-0" / "seed-0.csv")
    assert list(table["testset"].unique()) == [*TESTSETS, "overall"]
    values = table.set_index(["testset", "metric"])["value"]
    for testset in TESTSETS:
        assert list(table.loc[table.testset == testset, "metric"]) == [*BINARY_METRICS, "HD95_undefined", "n_images"]
        for metric in BINARY_METRICS[:-1]:
            assert 0.0 <= values[(testset, metric)] <= 1.0
        hd95, undefined = values[(testset, "HD95")], values[(testset, "HD95_undefined")]
        assert math.isnan(hd95) or hd95 >= 0.0
        assert values[(testset, "n_images")] == N_TEST and US_EMPTY <= undefined <= N_TEST
        assert math.isnan(hd95) == (undefined == N_TEST)
        # the binary protocol's maps are probabilities x 255 without min-max: a map need not reach 0 and 255
        maps = sorted((workdir / "results" / "predictions" / "cnn" / "real" / "ratio-0" / "seed-0" / testset)
                      .glob("*.png"))
        assert len(maps) == N_TEST
        spans = [(int(m.min()), int(m.max())) for m in (np.asarray(Image.open(p)) for p in maps)]
        assert any(span != (0, 255) for span in spans)

    bench = pd.read_csv(workdir / "results" / "tables" / "benchmark.csv")
    assert set(bench["testset"]) == {*TESTSETS, "overall"}
    assert {"mDice", "mIoU"} <= set(bench["metric"])


@pytest.mark.workflow
def test_table_layout_gives_the_folders_manifest_and_scores(ultrasound_rehearsal, tmp_path):
    """The user's same pairs as a table (a CSV of image, mask, split beside the folders): rule prepare_data gives the
    folders run's manifest, and rule evaluate on the folders run's maps gives its scores."""
    site, run, workflow = ultrasound_rehearsal
    rows = [{"image": str(image.relative_to(site)), "mask": str(mask.relative_to(site)), "split": split}
            for split in SITE_SIZES
            for image, mask in zip(sorted((site / "data" / split / "images").iterdir()),
                                   sorted((site / "data" / split / "masks").iterdir()), strict=True)]
    pd.DataFrame(rows).to_csv(site / "pairs.csv", index=False)
    (tmp_path / "table.yaml").write_text(yaml.safe_dump({"data": {"root": str(site / "pairs.csv"), "layout": "table"}}))
    workdir = tmp_path / "table"
    out = "results/eval/cnn/real/ratio-0/seed-0.csv"
    maps = Path("results") / "predictions" / "cnn" / "real" / "ratio-0"
    shutil.copytree(run / maps, workdir / maps)
    # the rehearsal's own config files (snakemake's order), then the table
    configs = [str(workflow / "config" / "config.yaml"), str(site / "my-data.yaml"),
               str(run / "rehearsal.yaml"), str(tmp_path / "table.yaml")]
    snakemake(tmp_path, "--snakefile", str(workflow / "Snakefile"), "--directory", str(workdir),
              "--cores", "1", "--configfile", *configs, "--allowed-rules", "prepare_data", "evaluate", "--", out)
    by_table = pd.read_csv(workdir / "results" / "data" / "manifest.csv")
    by_folders = pd.read_csv(run / "results" / "data" / "manifest.csv")
    columns = ["id", "split", "width", "height", "fg_fraction"]
    pd.testing.assert_frame_equal(by_table[columns], by_folders[columns])
    for a, b in zip(by_table["image"], by_folders["image"], strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    pd.testing.assert_frame_equal(pd.read_csv(workdir / out), pd.read_csv(run / out))


# ------------------------------------------------------------------------------------------------------------------
# The hard cases of real data (issue 30), procedurally: lesions of the background's colour and lesion-free test frames.
# The binary case is the ultrasound rehearsal above (16-bit, isoechoic, a lesion-free frame per test set); the colonoscopy case under the
# polyp toolbox is the quick run of test_workflow (colour-matched polyps, a lesion-free frame per test set).
@pytest.mark.workflow
def test_isoechoic_lesions_and_a_lesion_free_frame_reach_the_report_under_binary(ultrasound_rehearsal):
    _, workdir, _ = ultrasound_rehearsal
    check_hard_case_report(workdir, "binary", TESTSETS, N_TEST, US_EMPTY, "luma", {"mined"}, {"real", "mined"})
