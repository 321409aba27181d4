"""Config validation: every bad value names its key path; overlays merge; registry names are checked."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from hardgen.config.validation import (
    ConfigError,
    check_registries,
    deep_merge,
    load_config,
    validate_config,
)


@pytest.fixture(scope="module")
def demo(repo_root):
    return load_config([repo_root / "config" / "config.yaml"])


def errors_for(config) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    return str(info.value)


def test_demo_and_real_overlay_validate(demo, repo_root):
    validate_config(demo)
    real = load_config([repo_root / "config" / "config.yaml", repo_root / "config" / "sd15-polyp.yaml"])
    validate_config(real)
    assert real["model"]["resolution"] == 512 and real["lora"]["rank"] == 128
    assert real["segment"]["archs"]["cnn"]["encoder"] == "tu-res2net50_26w_4s"
    # the overlay keeps demo keys it does not mention (its variants are its own: no inpainting one, which would need
    # data.background_frames for the demo's placement frames)
    assert real["generation"]["inpaint"] == demo["generation"]["inpaint"]
    assert not {"inpaint", "hard_inpaint"} & set(real["generation"]["variants"])


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("train", "steps"), -3, "'train.steps'"),
        (("train", "steps"), "10", "'train.steps'"),
        (("generation", "shards"), 0, "'generation.shards'"),
        (("lora", "preset"), "quarter", "'lora.preset'"),
        (("filter", "band"), [0.2, 1.5], "'filter.band.1'"),
        (("filter", "band"), [0.9, 0.5], "'filter.band'"),
        (("condition", "type"), "depth", "'condition.type'"),
        (("model", "resolution"), 60, "'model.resolution'"),
        (("lora", "init"), "kaiming", "'lora.init'"),
        (("feedback", "segmenter"), "nope", "'feedback.segmenter'"),
        (("filter", "score_backbone"), "clip", "'filter.score_backbone'"),
    ],
)
def test_bad_values_name_their_key(demo, path, value, expected):
    config = copy.deepcopy(demo)
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert expected in errors_for(config)


def test_unknown_keys_are_errors(demo):
    config = copy.deepcopy(demo)
    config["train"]["stepz"] = 10
    config["colour"] = "blue"
    message = errors_for(config)
    assert "'train'" in message and "stepz" in message and "unknown key" in message
    assert "colour" in message


def test_policy_needs_its_variant(demo):
    config = copy.deepcopy(demo)
    config["generation"]["variants"] = ["plain"]
    message = errors_for(config)
    assert "policy 'hard'" in message and "policy 'feedback'" in message
    # the filtered hard pools draw from the hard variant
    assert "policy 'hard_faithful' needs generation.variants to include 'hard'" in message


def test_removed_controls_explain_why(demo):
    config = copy.deepcopy(demo)
    config["segment"]["policies"] = [*demo["segment"]["policies"], "hard_random", "random"]
    message = errors_for(config)
    assert "policy 'hard_random' was removed" in message and "policy 'random' was removed" in message
    assert "'hard' at that ratio is the size-matched random control of hard_band and hard_faithful" in message
    assert "'plain' at that ratio is the size-matched random control" in message


def test_fidelity_backbone_ratios_and_real_policy_are_checked(demo):
    config = copy.deepcopy(demo)
    config["filter"]["fidelity_backbone"] = demo["hard"]["loss_backbones"][0]
    assert "'filter.fidelity_backbone'" in errors_for(config) and "held-out" in errors_for(config)
    config["filter"]["fidelity_backbone"] = "dino"
    assert "'dino' is not a backbones key" in errors_for(config)
    config = copy.deepcopy(demo)
    config["segment"]["policies"] = ["hard", "hard_band"]
    assert "must include 'real'" in errors_for(config)
    config = copy.deepcopy(demo)
    config["segment"]["synthetic_ratios"] = [0.5, 0]
    assert "'segment.synthetic_ratios.1'" in errors_for(config)
    config["segment"]["synthetic_ratios"] = [0.1234567, 0.1234568]
    assert "coincide as path labels" in errors_for(config)
    config = copy.deepcopy(demo)
    config["filter"]["min_fidelity"] = 1.2
    assert "'filter.min_fidelity'" in errors_for(config)


def test_registry_names_are_checked(demo):
    check_registries(demo)
    config = copy.deepcopy(demo)
    config["backbones"]["vit"]["name"] = "vit_gigantic_nonexistent"
    config["segment"]["archs"]["cnn"]["encoder"] = "resnet9000"
    config["segment"]["archs"]["transformer"]["arch"] = "UNetPlusPlusPlus"
    with pytest.raises(ConfigError) as info:
        check_registries(config)
    message = str(info.value)
    assert "'backbones.vit.name'" in message
    assert "'segment.archs.cnn.encoder'" in message
    assert "'segment.archs.transformer.arch'" in message


def test_paper_overlay_keys_validate_and_a_transformers_backbone_is_no_timm_name(demo, repo_root):
    import yaml

    paper = load_config([repo_root / "config" / "config.yaml", repo_root / "config" / "paper.yaml"])
    assert paper["backbones"]["vit"]["source"] == "transformers" and paper["backbones"]["cnn"]["source"] == "timm"
    assert (paper["generation"]["guidance_scale"], paper["generation"]["dtype"],
            paper["generation"]["condition_fit"], paper["generation"]["per_mask"]) == (7.5, "float16", "squash", 1)
    assert (paper["hard"]["init"], paper["hard"]["steps"], paper["data"]["train_subset"]) == ("fresh", 5000, 100)
    assert (paper["feedback"]["seg_loss"], paper["feedback"]["loss"], paper["feedback"]["lambda"],
            paper["feedback"]["batch_size"]) == ("ce", "negated", 0.01, 2)
    assert yaml.safe_load((repo_root / "config" / "paper.yaml").read_text())["seed"] == 42
    config = copy.deepcopy(demo)
    config["backbones"]["vit"] = {**config["backbones"]["vit"], "source": "transformers",
                                  "name": "google/vit-large-patch16-224"}
    validate_config(config)
    check_registries(config)  # a hub id, judged when loaded, not a timm name
    config["backbones"]["vit"]["source"] = "keras"
    assert "'backbones.vit.source'" in errors_for(config)


def test_deep_merge_is_recursive_and_pure():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    merged = deep_merge(base, {"a": {"c": 3}, "d": [2]})
    assert merged == {"a": {"b": 1, "c": 3}, "d": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}


def test_validate_config_cli_exit_code(repo_root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generation:\n  shards: 0\n")
    cmd = [sys.executable, "-m", "hardgen.app.cli", "validate-config", str(repo_root / "config" / "config.yaml")]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    failed = subprocess.run([*cmd, str(bad)], capture_output=True, text=True)
    assert failed.returncode != 0
    assert "generation.shards" in failed.stderr


def test_schema_defaults_fill_the_config_in_one_place(repo_root):
    config = load_config([repo_root / "config" / "config.yaml"])
    assert config["allow_random_weights"] is False and config["model"]["vae"] is None
    assert config["train"]["prediction_type"] is None and config["train"]["images_per_step"] is None
    assert config["feedback"]["loss"] == "hinge" and config["backbones"]["heldout"]["margin"] is None
    raw = {"hard": {"steps": 1}, "backbones": {"x": {"name": "resnet18", "input_size": 32}}}
    from hardgen.config.validation import apply_defaults

    filled = apply_defaults(raw)
    assert filled["hard"]["crop_pad"] == 10 and filled["hard"]["calibration_samples"] == 64
    assert filled["backbones"]["x"]["pretrained"] is False and filled["backbones"]["x"]["margin"] is None
    # a default written beside a $ref (per_mask: {$ref: posint, default: 1}) is a default too
    generation = apply_defaults({"generation": {}})["generation"]
    assert (generation["per_mask"], generation["candidates"], generation["mining_steps"]) == (1, 4, 2)


def test_real_data_without_weights_is_refused_unless_allowed(demo):
    real_data = copy.deepcopy(demo)
    real_data["data"]["root"] = "/data/polyp"
    real_data["data"]["background_frames"] = "/data/polyp-normal"  # the demo's placement frames (test below)
    message = errors_for(real_data)
    for key in ("backbones.cnn", "backbones.vit", "backbones.heldout", "segment.archs.cnn",
                "segment.archs.transformer"):
        assert f"'{key}'" in message
    assert "allow_random_weights" in message
    real_data["backbones"]["cnn"]["checkpoint"] = "/models/resnet18.safetensors"
    assert "'backbones.cnn'" not in errors_for(real_data)
    real_data["allow_random_weights"] = True
    validate_config(real_data)
    validate_config(copy.deepcopy(demo))  # the demo (data.root: null) needs no flag


def test_inpainting_into_lesion_free_frames_on_real_data_needs_them(demo):
    config = copy.deepcopy(demo)
    config.update(allow_random_weights=True)
    config["data"]["root"] = "/data/polyp"
    assert "'generation.inpaint.placements': 'frames' needs data.background_frames" in errors_for(config)
    config["generation"]["inpaint"]["placements"] = ["in_place", "relocated"]
    validate_config(copy.deepcopy(config))
    config["generation"]["inpaint"].update(dilate=2, feather=3)
    assert "'generation.inpaint.feather': 3 exceeds generation.inpaint.dilate (2)" in errors_for(config)


def test_loss_backbones_must_be_backbones(demo):
    config = copy.deepcopy(demo)
    config["hard"]["loss_backbones"] = ["vit", "clip"]
    assert "'hard.loss_backbones': 'clip' is not a backbones key" in errors_for(config)


def test_pinned_weight_tags_are_checked(demo, repo_root):
    real = load_config([repo_root / "config" / "config.yaml", repo_root / "config" / "sd15-polyp.yaml"])
    assert all("." in spec["name"] for spec in real["backbones"].values())  # every overlay backbone pinned
    assert real["hard"]["loss_backbones"] == ["vit"] and real["backbones"]["vit"]["margin"] == 50.0
    check_registries(real)
    config = copy.deepcopy(demo)
    config["backbones"]["cnn"]["name"] = "resnet18.not_a_tag"
    with pytest.raises(ConfigError, match=r"'backbones.cnn.name'.*not_a_tag.*Known tags"):
        check_registries(config)


def test_report_keys_are_checked_against_the_benchmark(demo):
    config = copy.deepcopy(demo)
    assert config["report"]["primary_contrast"] == {"policy": "hard", "versus": "plain", "ratio": 1, "metric": "mIoU"}
    assert config["report"]["anchors"] == "resources/anchors/polyp.csv"
    # the demo's Polyp-PVT stands beside the published one (a reproduction row); the cnn keeps the schema's default
    assert {k: spec["published"] for k, spec in config["segment"]["archs"].items()} == {"cnn": None,
                                                                                         "transformer": "Polyp-PVT"}
    config["report"]["primary_contrast"] = {"policy": "guided", "versus": "plain", "ratio": 3, "metric": "mIoU"}
    errors = errors_for(config)
    assert "'report.primary_contrast.policy': 'guided' is not in segment.policies" in errors
    assert "'report.primary_contrast.ratio': 3 is not in segment.synthetic_ratios" in errors
    config["report"]["primary_contrast"] = {"policy": "hard", "versus": "plain", "ratio": 1, "metric": "wFm"}
    assert "'report.primary_contrast.metric'" in errors_for(config)
    config = copy.deepcopy(demo)
    config["report"]["primary_contrast"] = None  # allowed: every contrast is still in contrasts.csv
    validate_config(config)
    config["report"]["anchors"] = None
    config["segment"]["archs"]["cnn"]["published"] = "PraNet"
    assert "'report.anchors': null, but segment.archs ['cnn', 'transformer'] name a published model" in errors_for(
        config)


def test_a_published_model_is_not_a_segmenter_setting():
    from hardgen.segmentation.build import SegmenterSpec

    spec = SegmenterSpec.from_config({"arch": "Unet", "encoder": "resnet18", "published": "PraNet"}, "cnn")
    assert (spec.arch, spec.encoder) == ("Unet", "resnet18")
    with pytest.raises(ValueError, match="unknown keys"):
        SegmenterSpec.from_config({"arch": "Unet", "encoder": "resnet18", "publishd": "PraNet"}, "cnn")
