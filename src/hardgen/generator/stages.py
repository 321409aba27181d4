"""Glue between the workflow config and the library for the GPU stages (training, generation).

Keeps the Snakemake scripts thin and the mapping testable: config sections in, library settings out. Also owns
how a stage resumes safely (fingerprinted work folders) and how training fans out over several GPUs.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hardgen.core.io import file_digest, reset_if_changed

log = logging.getLogger("hardgen.generator.stages")

#: TrainSettings fields that may change without invalidating checkpoints (they do not affect the weights).
_RESUME_NEUTRAL = (
    "resume_from_checkpoint", "validation_steps", "validation_samples", "validation_inference_steps",
    "num_workers", "checkpoints_total_limit",
)


#: ``train`` keys copied into TrainSettings as they are (the schema fills their defaults).
TRAIN_KEYS = (
    "batch_size", "learning_rate", "lr_scheduler", "lr_warmup_steps", "gradient_accumulation_steps",
    "mixed_precision", "gradient_checkpointing", "loraplus_lr_ratio", "use_8bit_adam", "max_grad_norm",
    "empty_prompt_prob", "prediction_type", "checkpointing_steps", "checkpoints_total_limit",
    "validation_steps", "num_workers",
)
#: ``train`` keys a hard / feedback fine-tuning reads (its steps are its own section's).
FINETUNE_TRAIN_KEYS = (*TRAIN_KEYS, "images_per_step")
#: ``train`` keys the plain training reads.
PLAIN_TRAIN_KEYS = ("steps", *FINETUNE_TRAIN_KEYS)


def train_settings(
    mode: str,
    *,
    base: str,
    conditions_csv: str,
    manifest_csv: str,
    out_dir: str,
    model: Mapping[str, Any],
    lora: Mapping[str, Any],
    train: Mapping[str, Any],
    seed: int,
    init_lora: str | None = None,
    finetune: Mapping[str, Any] | None = None,
    backbones: Mapping[str, Any] | None = None,
    prototypes: Mapping[str, str] | None = None,
    segmenter: Mapping[str, Any] | None = None,
    segmenter_weights: str | None = None,
    segment_size: int | None = None,
    crop_pad: int = 10,
    num_gpus: int = 1,
    condition_type: str | None = None,
):
    """Build :class:`hardgen.generator.train_settings.TrainSettings` from validated config sections.

    ``finetune`` is the ``hard`` or ``feedback`` section. In hard mode ``backbones`` is the whole
    ``backbones`` section: only the keys in ``hard.loss_backbones`` enter the loss (with their prototype
    files from ``prototypes`` and their absolute ``margin`` where set); the others are held-out judges
    that never reach the generator. ``num_gpus`` (the rule's GPUs) turns ``train.images_per_step`` into
    gradient accumulation steps, so a run sees the same images per optimiser step on any GPU count.
    """
    from hardgen.generator.train_settings import TrainSettings

    values: dict[str, Any] = dict(
        base=base,
        conditions_csv=conditions_csv,
        manifest_csv=manifest_csv,
        out_dir=out_dir,
        family=model["family"],
        vae=model["vae"],
        resolution=model["resolution"],
        prompt=model["prompt"],
        condition_type=condition_type,
        mode=mode,
        init_lora=init_lora,
        preset=lora["preset"],
        rank=lora["rank"],
        conv_in_rank=lora["conv_in_rank"],
        lora_init=lora["init"],
        seed=seed,
        resume_from_checkpoint="latest",
        crop_pad=crop_pad,
        # a fine-tuning run's length is its own section's (hard / feedback.steps): it never reads train.steps
        steps=train["steps"] if finetune is None else finetune["steps"],
        **{key: train[key] for key in TRAIN_KEYS},
    )
    images_per_step, batch_size = train["images_per_step"], train["batch_size"]
    if finetune is not None:
        # feedback.batch_size / images_per_step: the run's own batch (the authors' feedback run: 2 per GPU, 4 GPUs)
        if finetune.get("batch_size") is not None:
            batch_size = values["batch_size"] = finetune["batch_size"]
        if finetune.get("images_per_step") is not None:
            images_per_step = finetune["images_per_step"]
    if images_per_step is not None:
        values["gradient_accumulation_steps"] = accumulation_steps(images_per_step, batch_size, num_gpus)
    if finetune is not None:
        # hard.init / feedback.init: fresh = new adapters from the base (lora.*), as the plain run starts
        values["fresh_start"] = finetune.get("init", "plain") == "fresh"
        values["lambda_"] = finetune["lambda"]
        values["margin_factor"] = finetune["margin_factor"]
        values["calibration_samples"] = finetune["calibration_samples"]
        if finetune["learning_rate"] is not None:
            values["learning_rate"] = finetune["learning_rate"]
        # A fine-tuning run checkpoints at most as often as it has steps.
        values["checkpointing_steps"] = min(values["checkpointing_steps"] or finetune["steps"], finetune["steps"])
    if mode == "hard":
        if finetune is None or backbones is None:
            raise ValueError("hard mode needs the hard section and the backbones section")
        in_loss = list(finetune["loss_backbones"])
        unknown = [key for key in in_loss if key not in backbones]
        if unknown:
            raise ValueError(f"hard.loss_backbones: {unknown} are not keys of backbones ({sorted(backbones)})")
        prototypes = dict(prototypes or {})
        values["backbones"] = {k: {f: v for f, v in backbones[k].items() if f != "margin"} for k in in_loss}
        values["prototypes"] = {k: prototypes[k] for k in in_loss if k in prototypes}
        values["margins"] = {k: float(backbones[k]["margin"]) for k in in_loss if backbones[k]["margin"] is not None}
    if mode == "feedback":
        values["feedback_loss"] = finetune["loss"]
        values["seg_loss"] = finetune.get("seg_loss", "structure")
    if segmenter is not None:
        values["segmenter"] = dict(segmenter)
        values["segmenter_weights"] = segmenter_weights
        values["segment_size"] = segment_size
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
