"""Config -> TrainSettings mapping, checkpoint fingerprints, multi-GPU launch and generation folder reset."""

from __future__ import annotations

import json
import subprocess

import pytest

from hardgen.config.settings import UNREAD, Settings
from hardgen.config.validation import load_config
from hardgen.core.io import reset_if_changed
from hardgen.generator import stages


@pytest.fixture(scope="module")
def demo(repo_root):
    return load_config([repo_root / "config" / "config.yaml"])


@pytest.fixture(scope="module")
def real(repo_root):
    return load_config([repo_root / "config" / "config.yaml", repo_root / "config" / "sd15-polyp.yaml"])


def job_for(config, mode, *, loss_backbones=None):
    """The LoraJob of a training rule, from the params workflow/rules/train.smk gives it."""
    s = Settings.from_config(config)
    params = dict(base="b", model=s.model.params("generator"), lora=s.lora.params("adapters"),
                  train=s.train.params("plain" if mode == "plain" else "finetune"), tracking=s.tracking(mode),
                  seed=s.seed, condition_type=s.condition.type)
    if mode == "hard":
        keys = s.hard.loss_backbones if loss_backbones is None else loss_backbones
        params.update(hard=s.hard.params("hard"), backbones={k: s.backbones[k].params("hard") for k in keys})
    if mode == "feedback":
        params.update(feedback=s.feedback.params("feedback"), crop_pad=s.hard.crop_pad,
                      segmenter=s.segment.archs[s.feedback.segmenter].params("segmenter"),
                      segment_size=s.segment.size)
    return stages.LoraJob.from_params(mode, params)


def files_for(tmp_path, mode, **extra):
    return stages.TrainFiles(base="results/base_model", conditions_csv="c.csv", manifest_csv="m.csv",
                             out_dir=str(tmp_path / mode), **extra)


def settings_for(config, mode, tmp_path):
    init = tmp_path / "plain.safetensors"
    init.write_bytes(b"x")
    if mode == "plain":
        return stages.train_settings(job_for(config, "plain"), files_for(tmp_path, mode))
    if mode == "hard":
        protos = {}
        for key in config["backbones"]:
            protos[key] = str(tmp_path / f"{key}.safetensors")
            (tmp_path / f"{key}.safetensors").write_bytes(b"x")
        # every backbone's entry given: only the in-loss ones reach the generator
        job = job_for(config, "hard", loss_backbones=list(config["backbones"]))
        return stages.train_settings(job, files_for(tmp_path, mode, init_lora=str(init), prototypes=protos))
    weights = tmp_path / "seg.safetensors"
    weights.write_bytes(b"x")
    files = files_for(tmp_path, mode, init_lora=str(init), segmenter_weights=str(weights))
    return stages.train_settings(job_for(config, "feedback"), files)


def test_plain_settings_follow_the_config(demo, tmp_path):
    s = settings_for(demo, "plain", tmp_path)
    assert (s.mode, s.steps, s.learning_rate, s.rank, s.conv_in_rank) == ("plain", 40, 1e-3, 16, 64)
    assert (s.preset, s.lora_init, s.resolution, s.family) == ("half_skip_attn", "gaussian", 64, "sd15")
    assert s.resume_from_checkpoint == "latest" and s.checkpointing_steps == 20


def test_finetune_overrides_steps_lr_and_margin(demo, real, tmp_path):
    hard = settings_for(demo, "hard", tmp_path)
    assert hard.steps == demo["hard"]["steps"] and hard.learning_rate == demo["hard"]["learning_rate"]
    assert hard.margins == {} and hard.margin_factor == 1.5
    # only the in-loss backbones reach the generator; the held-out one never does
    assert set(hard.backbones) == set(hard.prototypes) == {"cnn", "vit"} and "heldout" in demo["backbones"]
    assert hard.checkpointing_steps <= hard.steps and hard.calibration_samples == 64
    paper = settings_for(real, "hard", tmp_path)
    # the paper's loss: ViT-L/16 alone, absolute margin 50, pinned weights
    assert set(paper.backbones) == {"vit"} and paper.margins == {"vit": 50.0}
    assert paper.backbones["vit"]["name"] == "vit_large_patch16_224.augreg_in21k_ft_in1k"
    assert "margin" not in paper.backbones["vit"]
    assert paper.learning_rate == 1e-4 and paper.rank == 128 and paper.resolution == 512
    feedback = settings_for(real, "feedback", tmp_path)
    assert feedback.segmenter["encoder"] == "mit_b2" and feedback.segment_size == 352
    assert feedback.feedback_loss == "hinge" and feedback.calibration_samples >= 64


def test_images_per_step_holds_on_any_gpu_count(real, tmp_path):
    """The paper's 4 images per optimiser step (batch 1 on 4 GPUs) on 1, 2 or 4 GPUs."""
    assert real["train"]["images_per_step"] == 4 and real["train"]["batch_size"] == 1
    init = tmp_path / "plain.safetensors"
    init.write_bytes(b"x")
    job, files = job_for(real, "plain"), files_for(tmp_path, "o")
    for gpus, accumulation in ((1, 4), (2, 2), (4, 1)):
        s = stages.train_settings(job, files, num_gpus=gpus)
        assert s.gradient_accumulation_steps == accumulation
        assert s.batch_size * gpus * s.gradient_accumulation_steps == 4
    with pytest.raises(ValueError, match="train.images_per_step: 4 is not a multiple"):
        stages.train_settings(job, files, num_gpus=3)


def test_unknown_loss_backbone_is_named(demo, tmp_path):
    config = {**demo, "hard": {**demo["hard"], "loss_backbones": ["cnn", "dino"]}}
    with pytest.raises(ValueError, match="hard.loss_backbones.*dino"):
        settings_for(config, "hard", tmp_path)


def test_checkpoints_kept_only_for_the_same_settings(demo, tmp_path):
    settings = settings_for(demo, "plain", tmp_path)
    inputs = {"manifest": tmp_path / "m.csv"}
    inputs["manifest"].write_text("a")
    checkpoints = tmp_path / "plain" / "checkpoints"
    assert stages.prepare_resume(settings, inputs) is False
    (checkpoints / "checkpoint-20").mkdir()
    assert stages.prepare_resume(settings, inputs) is True  # a crashed rerun resumes
    assert (checkpoints / "checkpoint-20").is_dir()
    settings.validation_steps = 5  # does not change the weights: still resumable
    assert stages.prepare_resume(settings, inputs) is True
    inputs["manifest"].write_text("changed data")  # other inputs: start afresh
    assert stages.prepare_resume(settings, inputs) is False
    assert not (checkpoints / "checkpoint-20").exists()
    (checkpoints / "checkpoint-20").mkdir()
    settings.learning_rate = 0.5  # other settings: start afresh
    assert stages.prepare_resume(settings, inputs) is False
    assert not (checkpoints / "checkpoint-20").exists()


def test_multi_gpu_training_goes_through_accelerate(demo, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
    settings = settings_for(demo, "plain", tmp_path)
    assert stages.run_training(settings, num_gpus=4) == {"launched_processes": 4}
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[-4:] == ["-m", "hardgen.generator.train", "--settings", str(tmp_path / "plain" / "settings.json")]
    saved = json.loads((tmp_path / "plain" / "settings.json").read_text())
    assert saved["steps"] == 40 and saved["out_dir"] == str(tmp_path / "plain")


def test_generation_folder_reset_when_lora_changes(tmp_path):
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"weights v1")
    shard = tmp_path / "shard-0"
    params = {"steps": 20, "shards": 2}
    assert reset_if_changed(shard, stages.generation_fingerprint(str(lora), "base", params)) is False
    (shard / "images").mkdir()
    (shard / "images" / "a.png").write_bytes(b"png")
    assert reset_if_changed(shard, stages.generation_fingerprint(str(lora), "base", params)) is True
    assert (shard / "images" / "a.png").exists()
    lora.write_bytes(b"weights v2")
    assert reset_if_changed(shard, stages.generation_fingerprint(str(lora), "base", params)) is False
    assert not (shard / "images" / "a.png").exists()
    assert reset_if_changed(shard, stages.generation_fingerprint(str(lora), "base", {**params, "steps": 10})) is False


def test_hard_and_feedback_init_batch_and_seg_loss_reach_the_settings(real, tmp_path):
    hard = job_for({**real, "hard": {**real["hard"], "init": "fresh", "steps": 5000}}, "hard")
    protos = {}
    for key in real["backbones"]:
        protos[key] = str(tmp_path / f"{key}.safetensors")
        (tmp_path / f"{key}.safetensors").write_bytes(b"x")
    s = stages.train_settings(hard, files_for(tmp_path, "o", prototypes=protos))
    assert s.fresh_start and s.init_lora is None and s.steps == 5000 and s.rank == real["lora"]["rank"]
    with pytest.raises(ValueError, match="init_lora"):  # plain (the default) needs the plain LoRA
        stages.train_settings(job_for(real, "hard"), files_for(tmp_path, "o", prototypes=protos))
    weights = tmp_path / "seg.safetensors"
    weights.write_bytes(b"x")
    init = tmp_path / "plain.safetensors"
    init.write_bytes(b"x")
    files = files_for(tmp_path, "o", init_lora=str(init), segmenter_weights=str(weights))
    feedback = {**real["feedback"], "seg_loss": "ce", "loss": "negated", "lambda": 0.01, "batch_size": 2,
                "images_per_step": 8}
    f = stages.train_settings(job_for({**real, "feedback": feedback}, "feedback"), files, num_gpus=1)
    assert (f.seg_loss, f.feedback_loss, f.lambda_, f.batch_size) == ("ce", "negated", 0.01, 2)
    assert f.gradient_accumulation_steps == 4  # 8 images per step = 2 per GPU × 1 GPU × 4
    assert f.segmenter["encoder"] == "mit_b2" and f.segment_size == 352
    default = stages.train_settings(job_for(real, "feedback"), files)
    assert (default.seg_loss, default.batch_size, default.fresh_start) == ("structure", 1, False)
    # images_per_step alone (train.batch_size 1): 8 images per step on 2 GPUs = accumulation 4, never ignored
    alone = job_for({**real, "feedback": {**real["feedback"], "images_per_step": 8}}, "feedback")
    alone = stages.train_settings(alone, files, num_gpus=2)
    assert alone.batch_size == 1 and alone.gradient_accumulation_steps == 4


def test_condition_latent_reaches_every_lora_training_and_paper_yaml_samples(demo, repo_root, tmp_path):
    """lora.condition_latent: the mode by default (what sampling reads), a posterior sample in paper.yaml (the
    authors' training); the plain, hard and feedback trainings all read it."""
    paper = load_config([repo_root / "config" / "config.yaml", repo_root / "config" / "paper.yaml"])
    assert demo["lora"]["condition_latent"] == "mode" and paper["lora"]["condition_latent"] == "sample"
    for mode in ("plain", "hard", "feedback"):
        assert settings_for(demo, mode, tmp_path).condition_latent == "mode"
        sampled = {**demo, "lora": {**demo["lora"], "condition_latent": "sample"}}
        assert settings_for(sampled, mode, tmp_path).condition_latent == "sample"
    with pytest.raises(ValueError, match="TrainSettings.condition_latent"):
        stages.train_settings(job_for({**demo, "lora": {**demo["lora"], "condition_latent": "mean"}}, "plain"),
                              files_for(tmp_path, "plain"))


def test_a_job_reads_exactly_its_rule_params(demo):
    params = dict(model={}, lora={}, train={}, tracking={}, seed=0, condition_type="mask")
    with pytest.raises(ValueError, match="model: job 'generator' params hold"):
        stages.LoraJob.from_params("plain", params)
    with pytest.raises(ValueError, match="unknown training mode 'soft'"):
        stages.LoraJob.from_params("soft", params)
    plain = job_for(demo, "plain")
    assert plain.train.steps == demo["train"]["steps"] and plain.finetune is None
    hard = job_for(demo, "hard")
    assert hard.train.steps is UNREAD and hard.crop_pad == demo["hard"]["crop_pad"]
