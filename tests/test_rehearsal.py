"""`hardgen rehearse`: the user's config shrunk (config/rehearsal.yaml + the per-key shrinks of hardgen.app.rehearsal),
run in its own folder. The rehearsal keeps every rule the real run has (dry runs of config/paper.yaml and
config/demo-ultrasound.yaml); a real rehearsal of a user's dataset in the folders layout reaches the report in
test_workflow_datasets.py, whose end-to-end checks share that run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflow import REPO, copy_workflow, planned_jobs, snakemake

from hardgen.app import rehearsal
from hardgen.config.validation import load_config

FIXED = yaml.safe_load((REPO / "config" / "rehearsal.yaml").read_text())


def _config(*overlays: str) -> dict:
    return load_config([REPO / "config" / "config.yaml", *(REPO / "config" / o for o in overlays)])


def test_the_overlay_shrinks_models_and_sizes_and_keeps_the_users_keys() -> None:
    config = _config("paper.yaml")
    overlay = rehearsal.rehearsal_overlay(config, FIXED, REPO, REPO)
    # every backbone key kept, each a tiny random extractor of its kind; the loss's margin and resize_via untouched
    assert set(overlay["backbones"]) == set(config["backbones"]) == {"vit", "cnn", "heldout"}
    vit = overlay["backbones"]["vit"]  # transformers google/vit-large: a 2-layer random ViTConfig, same code path
    assert vit["pretrained"] is False and vit["config"]["num_hidden_layers"] == 2 and "name" not in vit
    assert overlay["backbones"]["cnn"]["name"] == "resnet18"  # resnet50.tv_in1k
    assert overlay["backbones"]["heldout"]["name"] == "vit_tiny_patch16_224"  # vit_base_patch16_224.dino
    assert all(b["checkpoint"] is None and b["input_size"] == rehearsal.TINY_INPUT_SIZE
               for b in overlay["backbones"].values())
    # every arch kept (its class and encoder), random weights; an arch's own iterations shrink with the rest
    assert set(overlay["segment"]["archs"]) == {"pranet", "polyp_pvt", "segformer"}
    assert all(a["encoder_weights"] is None and a["checkpoint"] is None for a in overlay["segment"]["archs"].values())
    assert overlay["segment"]["archs"]["polyp_pvt"]["iterations"] == FIXED["segment"]["iterations"]
    assert "iterations" not in overlay["segment"]["archs"]["pranet"]
    # a handful of real images; the tiny base and its adapter by absolute path (the rehearsal runs elsewhere)
    assert overlay["data"]["train_subset"] == 8 and overlay["data"]["test_subset"] == 3
    assert overlay["data"]["train_subsets"] is None
    assert overlay["model"]["base"] == str(REPO / "resources" / "tiny-sd-polyp")
    assert Path(overlay["lora"]["init_weights"]).is_file() and Path(overlay["report"]["anchors"]).is_file()
    # what the overlay leaves alone is the user's: the data, protocol, variants, policies, ratios
    for section in ("evaluate", "generation", "condition", "filter"):
        for key in overlay.get(section, {}):
            assert key not in ("protocol", "variants", "type", "band", "allocation", "per_mask"), (section, key)
    assert "root" not in overlay["data"] and "testsets" not in overlay["data"]
    assert not {"policies", "synthetic_ratios", "batch_runs", "pixel_filter"} & set(overlay["segment"])


def test_the_overlay_keeps_a_scarcity_curve_a_smaller_subset_and_the_random_tiny_base() -> None:
    config = _config()
    config["data"].update(train_subsets=[100, 400, "all"], train_subset=None)
    overlay = rehearsal.rehearsal_overlay(config, FIXED, REPO, REPO)
    assert overlay["data"]["train_subsets"] == rehearsal.SCARCITY_SIZES and overlay["data"]["train_subset"] is None
    config = _config()
    config["data"]["train_subset"] = 5
    assert rehearsal.rehearsal_overlay(config, FIXED, REPO, REPO)["data"]["train_subset"] == 5
    config["model"]["base"] = "tiny"
    overlay = rehearsal.rehearsal_overlay(config, FIXED, REPO, REPO)
    assert overlay["model"]["base"] == "tiny" and overlay["lora"]["init_weights"] is None


def test_relative_paths_resolve_where_the_user_runs(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    config = _config()
    config["data"]["root"] = "data"
    overlay = rehearsal.rehearsal_overlay(config, FIXED, tmp_path, REPO)
    assert overlay["data"]["root"] == str(tmp_path / "data")
    config["data"]["root"] = "/abs/elsewhere"
    assert "root" not in rehearsal.rehearsal_overlay(config, FIXED, tmp_path, REPO)["data"]


def _rules(output: str) -> dict[str, int]:
    jobs = planned_jobs(output)
    assert jobs, output[-3000:]
    return jobs


@pytest.mark.parametrize("overlay", ["paper.yaml", "demo-ultrasound.yaml"])
def test_the_rehearsal_dry_runs_every_rule_of_the_real_run(overlay: str, tmp_path: Path) -> None:
    """The rehearsal's DAG has exactly the rules of the user's own (fewer jobs: one seed, capped shards)."""
    real_dir = copy_workflow(tmp_path / "real")
    real = _rules(snakemake(real_dir, "-n", "--cores", "2", "--configfile", f"config/{overlay}").stdout)
    result = subprocess.run(
        [sys.executable, "-m", "hardgen.app.cli", "rehearse", str(REPO / "config" / overlay), "--dry-run",
         "--directory", str(tmp_path / "rehearsal"), "--workflow", str(REPO)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    rehearsed = _rules(result.stdout)
    assert set(rehearsed) == set(real)
    assert sum(rehearsed.values()) <= sum(real.values())
    derived = yaml.safe_load((tmp_path / "rehearsal" / rehearsal.DERIVED).read_text())
    assert derived["data"]["test_subset"] == 3
    assert not (tmp_path / "results").exists() and not (REPO / "rehearsal").exists()  # only its own folder


def test_the_workflow_checkout_is_given_or_found_from_the_current_directory(tmp_path):
    assert rehearsal.find_workflow(None, REPO / "config") == REPO  # a folder inside the checkout
    assert rehearsal.find_workflow(REPO, tmp_path) == REPO
    with pytest.raises(FileNotFoundError, match="neither it nor a parent folder is the workflow's checkout"):
        rehearsal.find_workflow(None, tmp_path)
    with pytest.raises(FileNotFoundError, match=f"--workflow {tmp_path}: no Snakefile"):
        rehearsal.find_workflow(tmp_path, REPO)
