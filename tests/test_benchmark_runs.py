"""hardgen.benchmark.runs: one run's files are the same whether a job trains one run or a batch of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hardgen.benchmark.runs import (
    RunJob,
    RunPaths,
    SegmenterRun,
    train_run,
    training_pairs,
)
from hardgen.core.io import DataError
from hardgen.core.weights import load_state_dict
from hardgen.data import manifest as data
from hardgen.data.demo import make_demo_dataset

TESTSETS = ["CVC-300", "Kvasir"]
SPEC = {"arch": "Unet", "encoder": "resnet18", "encoder_weights": None}
SEGMENT = {"size": 32, "iterations": 2, "batch_size": 4, "learning_rate": 1e-3, "grad_clip": 0.5,
           "multi_scale": [1.0], "pixel_filter": None, "optimizer": "adam", "weight_decay": 0.0, "lr_decay": None,
           "augment": "hardgen", "loss": "structure", "resize": "hardgen"}


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root / "data", TESTSETS, n_train=4, n_test=2, min_size=40, max_size=48, seed=3)
    path = root / "manifest.csv"
    data.write_manifest(data.build_manifest(root / "data", TESTSETS), path)
    return path


def _job(manifest_path: Path) -> RunJob:
    return RunJob(manifest_path, SEGMENT, torch.device("cpu"), testsets=TESTSETS, protocol="polyp_toolbox")


def _run(manifest_path: Path, out: Path, subset: str | None, policy: str) -> tuple[dict, RunPaths]:
    paths = RunPaths(model=str(out / "model.safetensors"), run=str(out / "run.json"), subset=subset,
                     predictions=str(out / "maps"))
    record = train_run(_job(manifest_path), SegmenterRun("cnn", SPEC, policy, 0.5 if subset else 0.0, 0), paths)
    return record, paths


def test_a_run_is_reproducible_and_writes_model_record_and_maps(manifest_path: Path, tmp_path: Path) -> None:
    manifest = data.load_manifest(manifest_path)
    train = manifest[manifest["split"] == "train"]
    subset = tmp_path / "subset.csv"  # two real pairs posing as synthetic: the table a policy's subset has
    pd.DataFrame({"image": train["image"].head(2), "mask": train["mask"].head(2), "sample_id": ["s0", "s1"],
                  "variant": "hard"}).to_csv(subset, index=False)
    first, paths = _run(manifest_path, tmp_path / "a", str(subset), "hard")
    second, _ = _run(manifest_path, tmp_path / "b", str(subset), "hard")
    assert first == second
    assert first["real_images"] == 4 and first["synthetic_images"] == 2 and first["ratio"] == 0.5
    assert json.loads(Path(paths.run).read_text())["policy"] == "hard"
    a, b = load_state_dict(paths.model), load_state_dict(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    maps = sorted(Path(paths.predictions).rglob("*.png"))
    assert len(maps) == 2 * len(TESTSETS)
    assert [m.relative_to(paths.predictions) for m in maps] == \
        [m.relative_to(tmp_path / "b" / "maps") for m in sorted((tmp_path / "b" / "maps").rglob("*.png"))]


def test_training_pairs_adds_the_subset_and_names_a_missing_one(manifest_path: Path, tmp_path: Path) -> None:
    manifest = data.load_manifest(manifest_path)
    real = training_pairs(manifest, None)
    assert len(real) == 4 and set(real["variant"]) == {"real"}
    with pytest.raises(DataError, match=r"nope\.csv: subset table not found"):
        training_pairs(manifest, str(tmp_path / "nope.csv"))
    pd.DataFrame({"sample_id": ["007"], "image": ["a.png"], "mask": ["m.png"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DataError, match=r"s\.csv: subset table lacks columns \['variant'\]"):
        training_pairs(manifest, str(tmp_path / "s.csv"))
    pd.DataFrame({"sample_id": ["007"], "image": ["a.png"], "mask": ["m.png"], "variant": ["hard"]}).to_csv(
        tmp_path / "s.csv", index=False)
    assert training_pairs(manifest, str(tmp_path / "s.csv"))["sample_id"].tolist()[-1] == "007"  # an id, not 7
    assert np.all(real.columns == ["sample_id", "image", "mask", "variant"])


def test_an_infeasible_subset_skips_its_run_and_writes_its_declared_outputs(manifest_path: Path,
                                                                            tmp_path: Path) -> None:
    from hardgen.core.io import write_json
    from hardgen.core.layout import SKIPPED_MARKER
    from hardgen.scoring.filter import pool_record

    subset, record = tmp_path / "subset.csv", tmp_path / "subset.json"
    pd.DataFrame(columns=["image", "mask", "sample_id", "variant"]).to_csv(subset, index=False)
    write_json(record, pool_record("hard_faithful", 1.0, 0, 4, 3, 4, reason="holds 3"))
    out = tmp_path / "run"
    paths = RunPaths(model=str(out / "model.safetensors"), run=str(out / "run.json"), subset=str(subset),
                     predictions=str(out / "maps"), subset_record=str(record))
    result = train_run(_job(manifest_path), SegmenterRun("cnn", SPEC, "hard_faithful", 1.0, 0), paths)
    assert result["skipped"] is True and (result["pool"], result["need"], result["reason"]) == (3, 4, "holds 3")
    assert json.loads(Path(paths.run).read_text()) == result
    assert load_state_dict(paths.model) == {}  # no training, an empty weights file
    assert [p.name for p in Path(paths.predictions).iterdir()] == [SKIPPED_MARKER]
    # a feasible record trains as usual
    write_json(record, pool_record("hard_faithful", 1.0, 0, 4, 5, 4))
    pd.DataFrame({"image": [], "mask": [], "sample_id": [], "variant": []}).to_csv(subset, index=False)
    trained = train_run(_job(manifest_path), SegmenterRun("cnn", SPEC, "hard_faithful", 1.0, 0), paths)
    assert "skipped" not in trained and load_state_dict(paths.model)
