"""Glue between the workflow config and the library for the GPU stages (training, generation).

Keeps the Snakemake scripts thin and the mapping testable: a job's settings (its rule's params) in, library settings
out. Also owns how a stage resumes safely (fingerprinted work folders) and how training fans out over several GPUs.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardgen.config.settings import (
    BackboneConfig,
    FeedbackConfig,
    HardConfig,
    LoraConfig,
    ModelConfig,
    SegmenterConfig,
    TrainConfig,
)
from hardgen.core.io import file_digest, reset_if_changed

log = logging.getLogger("hardgen.generator.stages")

#: TrainSettings fields that may change without invalidating checkpoints (they do not affect the weights).
_RESUME_NEUTRAL = (
    "resume_from_checkpoint", "validation_steps", "validation_samples", "validation_inference_steps",
    "num_workers", "checkpoints_total_limit", "report_to",
)


@dataclass(frozen=True)
class TrainFiles:
    """The files of one Control-LoRA training job: its base, tables, output folder and what it starts from."""

    base: str
    conditions_csv: str
    manifest_csv: str
    out_dir: str
    #: the LoRA it fine-tunes (hard / feedback init plain) or starts from (lora.init_weights); None: fresh adapters
    init_lora: str | None = None
    #: hard: the prototype file of each in-loss backbone
    prototypes: Mapping[str, str] = field(default_factory=dict)
    #: feedback: the real-only judge's weights
    segmenter_weights: str | None = None


@dataclass(frozen=True)
class LoraJob:
    """The settings one Control-LoRA training job reads: its rule's params (workflow/rules/train.smk) as job views
    of the config's settings (:meth:`hardgen.config.settings.Section.from_params`)."""

    mode: str
    model: ModelConfig
    lora: LoraConfig
    train: TrainConfig
    seed: int
    condition_type: str | None
    #: the stage's tracker and validation cadence, resolved (its own key or train's: Settings.tracking)
    report_to: str
    validation_steps: int
    #: hard: the hard section; feedback: the feedback section; plain: None
    finetune: HardConfig | FeedbackConfig | None = None
    #: hard: the in-loss ``backbones.<key>`` entries
    backbones: Mapping[str, BackboneConfig] = field(default_factory=dict)
    #: feedback: the judge's ``segment.archs`` entry and the size it predicts at
    segmenter: SegmenterConfig | None = None
    segment_size: int | None = None
    crop_pad: int = 10

    @classmethod
    def from_params(cls, mode: str, params: Mapping[str, Any]) -> LoraJob:
        """The job of rule train_control_lora (plain), train_hard_lora (hard) or train_feedback_lora (feedback) from
        its params."""
        from hardgen.generator.train_settings import MODES

        if mode not in MODES:
            raise ValueError(f"unknown training mode {mode!r} (choose from {', '.join(MODES)})")
        values: dict[str, Any] = dict(
            mode=mode,
            model=ModelConfig.from_params("generator", params["model"]),
            lora=LoraConfig.from_params("adapters", params["lora"]),
            train=TrainConfig.from_params("plain" if mode == "plain" else "finetune", params["train"]),
            seed=params["seed"],
            condition_type=params["condition_type"],
            report_to=params["tracking"]["report_to"],
            validation_steps=params["tracking"]["validation_steps"],
        )
        if mode == "hard":
            hard = HardConfig.from_params("hard", params["hard"])
            backbones = {key: BackboneConfig.from_params("hard", entry, f"backbones.{key}")
                         for key, entry in params["backbones"].items()}
            values.update(finetune=hard, backbones=backbones, crop_pad=hard.crop_pad)
        if mode == "feedback":
            values.update(finetune=FeedbackConfig.from_params("feedback", params["feedback"]),
                          segmenter=SegmenterConfig.from_params("segmenter", params["segmenter"]),
                          segment_size=params["segment_size"], crop_pad=params["crop_pad"])
        return cls(**values)


def train_settings(job: LoraJob, files: TrainFiles, num_gpus: int = 1):
    """Build :class:`hardgen.generator.train_settings.TrainSettings` for a training job.

    In hard mode only the in-loss backbones (``hard.loss_backbones``) enter the loss, with their prototype files and
    their absolute ``margin`` where set; the feature extractor reads each entry without it. ``num_gpus`` (the rule's
    GPUs) turns ``images_per_step`` into gradient accumulation steps, so a run sees the same images per optimiser
    step on any GPU count.
    """
    from hardgen.core.tracking import check_tracker
    from hardgen.generator.train_settings import TrainSettings

    check_tracker(job.report_to, "train.report_to" if job.mode == "plain" else
                  f"{job.mode}.report_to (null: train.report_to)")
    model, lora, train, finetune = job.model, job.lora, job.train, job.finetune
    values: dict[str, Any] = dict(
        base=files.base,
        conditions_csv=files.conditions_csv,
        manifest_csv=files.manifest_csv,
        out_dir=files.out_dir,
        family=model.family,
        vae=model.vae,
        resolution=model.resolution,
        prompt=model.prompt,
        condition_type=job.condition_type,
        mode=job.mode,
        init_lora=files.init_lora,
        preset=lora.preset,
        rank=lora.rank,
        conv_in_rank=lora.conv_in_rank,
        lora_init=lora.init,
        condition_latent=lora.condition_latent,
        seed=job.seed,
        resume_from_checkpoint="latest",
        crop_pad=job.crop_pad,
        report_to=job.report_to,
        validation_steps=job.validation_steps,
        # a fine-tuning run's length is its own section's (hard / feedback.steps): it never reads train.steps
        steps=train.steps if finetune is None else finetune.steps,
        **train.params("copied"),
    )
    images_per_step, batch_size = train.images_per_step, train.batch_size
    if isinstance(finetune, FeedbackConfig):
        # feedback.batch_size / images_per_step: the run's own batch (the authors' feedback run: 2 per GPU, 4 GPUs)
        if finetune.batch_size is not None:
            batch_size = values["batch_size"] = finetune.batch_size
        if finetune.images_per_step is not None:
            images_per_step = finetune.images_per_step
    if images_per_step is not None:
        values["gradient_accumulation_steps"] = accumulation_steps(images_per_step, batch_size, num_gpus)
    if finetune is not None:
        # hard.init / feedback.init: fresh = new adapters from the base (lora.*), as the plain run starts
        values["fresh_start"] = finetune.init == "fresh"
        values["lambda_"] = finetune.lambda_
        values["margin_factor"] = finetune.margin_factor
        values["calibration_samples"] = finetune.calibration_samples
        if finetune.learning_rate is not None:
            values["learning_rate"] = finetune.learning_rate
        # A fine-tuning run checkpoints at most as often as it has steps.
        values["checkpointing_steps"] = min(values["checkpointing_steps"] or finetune.steps, finetune.steps)
    if isinstance(finetune, HardConfig):
        in_loss = list(finetune.loss_backbones)
        unknown = [key for key in in_loss if key not in job.backbones]
        if unknown:
            raise ValueError(f"hard.loss_backbones: {unknown} are not keys of backbones ({sorted(job.backbones)})")
        values["backbones"] = {key: job.backbones[key].params("extractor") for key in in_loss}
        values["prototypes"] = {key: files.prototypes[key] for key in in_loss if key in files.prototypes}
        values["margins"] = {key: float(job.backbones[key].margin) for key in in_loss
                             if job.backbones[key].margin is not None}
    if isinstance(finetune, FeedbackConfig):
        values["feedback_loss"] = finetune.loss
        values["seg_loss"] = finetune.seg_loss
        values["judge_input"] = finetune.judge_input
    if job.segmenter is not None:
        values["segmenter"] = job.segmenter.params("segmenter")
        values["segmenter_weights"] = files.segmenter_weights
        values["segment_size"] = job.segment_size
    settings = TrainSettings.from_dict(values, source="workflow config")
    settings.validate()
    return settings


def accumulation_steps(images_per_step: int, batch_size: int, num_gpus: int) -> int:
    """Gradient accumulation that makes ``images_per_step`` images per optimiser step with ``num_gpus`` processes."""
    per_micro_step = batch_size * max(1, num_gpus)
    if images_per_step % per_micro_step:
        raise ValueError(f"train.images_per_step: {images_per_step} is not a multiple of train.batch_size × GPUs "
                         f"= {batch_size} × {max(1, num_gpus)}")
    return images_per_step // per_micro_step


def prepare_resume(settings, inputs: Mapping[str, str]) -> bool:
    """Keep ``out_dir/checkpoints`` only if made by the same settings and input files; True when kept."""
    import dataclasses

    fingerprint = {k: v for k, v in dataclasses.asdict(settings).items() if k not in _RESUME_NEUTRAL}
    fingerprint["inputs"] = {name: file_digest(path) for name, path in sorted(inputs.items()) if Path(path).is_file()}
    kept = reset_if_changed(Path(settings.out_dir) / "checkpoints", fingerprint)
    log.info("checkpoints %s", "kept for resuming" if kept else "started afresh")
    return kept


def run_training(settings, num_gpus: int) -> dict[str, Any]:
    """Train in this process, or through ``accelerate launch`` with one process per GPU when ``num_gpus > 1``."""
    from hardgen.generator.train import train_control_lora

    if num_gpus <= 1:
        return train_control_lora(settings)
    settings_path = Path(settings.out_dir) / "settings.json"
    settings.to_json(settings_path)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_gpus),
        "-m", "hardgen.generator.train", "--settings", str(settings_path),
    ]
    log.info("launching %s", " ".join(command))
    subprocess.run(command, check=True)  # list form: no shell, config values never reach one
    return {"launched_processes": num_gpus}


def generation_fingerprint(lora_path: str, base: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """What a generated image depends on: the LoRA bytes, the base and every generation setting."""
    return {"lora": file_digest(lora_path), "base": str(base), **{k: params[k] for k in sorted(params)}}
