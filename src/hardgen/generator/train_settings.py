"""Every option of a Control-LoRA training run (:class:`TrainSettings`), validated and JSON round-trippable.

Kept apart from the trainer so that the workflow glue (``hardgen.generator.stages``) can build and check settings
without importing diffusers or accelerate.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardgen.core.io import write_json
from hardgen.core.tracking import check_tracker
from hardgen.models.base_model import FAMILIES

MODES = ("plain", "hard", "feedback")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
PREDICTION_TYPES = ("epsilon", "v_prediction")
FEEDBACK_LOSSES = ("hinge", "negated")
#: the judge's per-sample loss in the feedback term: PraNet's structure loss, or pixel-wise cross-entropy (the
#: authors' SegFormer loss; binary: BCE on the logits)
SEG_LOSSES = ("structure", "ce")
#: what the judge sees (``feedback.judge_input``): x̂0 resized to ``segment.size`` (the size it was trained at) or as
#: generated (``resolution``; the authors feed their SegFormer the 512² x̂0)
JUDGE_INPUTS = ("segment_size", "generated")
#: the condition image's VAE latent in training (``lora.condition_latent``): the posterior mode (what sampling feeds
#: the UNet) or a fresh posterior draw per step (the authors' control-lora-v3 training)
CONDITION_LATENTS = ("mode", "sample")


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    """Every option of a training run in one place; round-trips through JSON."""

    base: str
    conditions_csv: str
    manifest_csv: str
    out_dir: str
    family: str = "sd15"
    #: optional VAE override (``model.vae``: a folder or hub id holding an AutoencoderKL)
    vae: str | None = None
    resolution: int = 512
    prompt: str = ""
    #: what the condition image shows (``condition.type``: canny | mask); recorded in the LoRA file's metadata
    condition_type: str | None = None
    mode: str = "plain"
    init_lora: str | None = None
    #: hard / feedback: start from new adapters (``hard.init`` / ``feedback.init: fresh``) instead of ``init_lora``
    fresh_start: bool = False
    # LoRA layout (control-lora-v3)
    preset: str = "half_skip_attn"
    rank: int = 16
    conv_in_rank: int = 64
    lora_init: str = "gaussian"
    #: ``mode``: every step reads the condition's posterior mode; ``sample``: a fresh posterior draw per step
    condition_latent: str = "mode"
    # optimisation
    steps: int = 1000
    batch_size: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    loraplus_lr_ratio: float = 1.0
    use_8bit_adam: bool = False
    max_grad_norm: float = 1.0
    empty_prompt_prob: float = 0.1
    #: None = the base model's scheduler decides (as control-lora-v3); an explicit value must agree with it
    prediction_type: str | None = None
    # checkpoints and validation
    checkpointing_steps: int = 0
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    #: validate at step 0, every this many steps and at the last (0: the end-of-run grid alone, no metrics)
    validation_steps: int = 0
    #: training masks of the validation set (seeded, recorded in summary.json)
    validation_samples: int = 4
    validation_inference_steps: int = 20
    #: the tracker of the curves and validation (hardgen.core.tracking.TRACKERS)
    report_to: str = "tensorboard"
    seed: int = 0
    num_workers: int = 0
    adapter_name: str = "condition"
    # hard / feedback fine-tuning
    lambda_: float = 1.0
    #: relative margin: factor × the init LoRA's mean x̂0 distance (or judge loss) on the calibration grid
    margin_factor: float = 1.5
    #: absolute margins per in-loss backbone key (the paper's 50 for ViT-L/16 CLS); others are calibrated
    margins: dict[str, float] = field(default_factory=dict)
    crop_pad: int = 10
    #: samples of the fixed calibration grid (images cycled, timesteps evenly spread over training's range)
    calibration_samples: int = 64
    #: the in-loss backbones (config key -> backbones.<key> entry) and their prototype files
    backbones: dict[str, dict[str, Any]] = field(default_factory=dict)
    prototypes: dict[str, str] = field(default_factory=dict)
    #: feedback term: ``hinge`` = λ·mean max(0, m − ℓ_seg)² (bounded), ``negated`` = −λ·mean ℓ_seg (the authors')
    feedback_loss: str = "hinge"
    #: the judge's per-sample loss (``feedback.seg_loss``): ``structure`` or ``ce``
    seg_loss: str = "structure"
    # feedback: the fixed real-trained segmenter (a segment.SegmenterSpec as a dict) and its weights
    segmenter: dict[str, Any] | None = None
    segmenter_weights: str | None = None
    segment_size: int = 352
    #: the judge's input (``feedback.judge_input``): ``segment_size`` or ``generated``
    judge_input: str = "segment_size"

    def validate(self) -> None:
        """Raise ValueError naming the offending key when a setting is out of range or inconsistent."""

        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"TrainSettings.{key}: {why} (got {getattr(self, key)!r})")

        choices = {
            "mode": MODES,
            "family": FAMILIES,
            "mixed_precision": MIXED_PRECISIONS,
            "feedback_loss": FEEDBACK_LOSSES,
            "seg_loss": SEG_LOSSES,
            "judge_input": JUDGE_INPUTS,
            "condition_latent": CONDITION_LATENTS,
        }
        if self.prediction_type is not None and self.prediction_type not in PREDICTION_TYPES:
            raise bad("prediction_type", f"must be one of {PREDICTION_TYPES} or None (the scheduler's)")
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise bad(key, f"must be one of {allowed}")
        if self.resolution <= 0 or self.resolution % 8:
            raise bad("resolution", "must be a positive multiple of 8")
        for key in ("steps", "batch_size", "gradient_accumulation_steps", "rank", "conv_in_rank"):
            if int(getattr(self, key)) < 1:
                raise bad(key, "must be >= 1")
        for key in ("lr_warmup_steps", "checkpointing_steps", "validation_steps", "num_workers", "crop_pad",
                    "validation_samples", "validation_inference_steps", "seed"):  # seed: hashed per sample, >= 0
            if int(getattr(self, key)) < 0:
                raise bad(key, "must be >= 0")
        if not self.learning_rate > 0:
            raise bad("learning_rate", "must be > 0")
        if not self.loraplus_lr_ratio > 0:
            raise bad("loraplus_lr_ratio", "must be > 0")
        if not 0.0 <= self.empty_prompt_prob <= 1.0:
            raise bad("empty_prompt_prob", "must be in [0, 1]")
        if self.validation_steps > 0 and self.validation_samples < 2:
            raise bad("validation_samples", "validation needs at least 2 (the margin shuffles masks between samples)")
        check_tracker(self.report_to, "TrainSettings.report_to")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise bad("checkpoints_total_limit", "must be >= 1 or null")
        if self.init_lora and not Path(self.init_lora).exists():
            raise bad("init_lora", f"{self.init_lora}: file or folder not found")
        if self.mode == "plain":
            return  # init_lora optional: fine-tune a given Control-LoRA (lora.init_weights) or start fresh
        if self.fresh_start and self.init_lora:
            raise bad("init_lora", "fresh_start trains new adapters; give no init_lora")
        if not self.init_lora and not self.fresh_start:
            raise bad("init_lora", f"mode={self.mode!r} fine-tunes a plain LoRA; give its path (or fresh_start)")
        if self.calibration_samples < 1:
            raise bad("calibration_samples", "must be >= 1")
        if not self.margin_factor > 0:
            raise bad("margin_factor", "must be > 0")
        for key, value in self.margins.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"TrainSettings.margins[{key!r}]: must be a finite number > 0 (got {value!r})")
        if self.lambda_ < 0:
            raise bad("lambda_", "must be >= 0")
        if self.mode == "hard":
            if not self.backbones:
                raise bad("backbones", "hard mode needs at least one backbone")
            if set(self.backbones) != set(self.prototypes):
                raise bad("prototypes", f"keys must match backbones {sorted(self.backbones)}")
            unknown = sorted(set(self.margins) - set(self.backbones))
            if unknown:
                raise bad("margins", f"keys {unknown} are not in-loss backbones {sorted(self.backbones)}")
            for key, path in self.prototypes.items():
                if not Path(path).is_file():
                    raise ValueError(f"TrainSettings.prototypes[{key!r}]: {path} not found")
        if self.mode == "feedback":
            if not self.segmenter:
                raise bad("segmenter", "feedback mode needs a segmenter spec")
            if not self.segmenter_weights or not Path(self.segmenter_weights).is_file():
                raise bad("segmenter_weights", "feedback mode needs the real-trained segmenter's weight file")
            if self.segment_size <= 0 or self.segment_size % 32:
                raise bad("segment_size", "must be a positive multiple of 32 (smp encoders downsample by 32)")
            if self.judge_input == "generated" and self.resolution % 32:
                raise bad("judge_input", f"generated: the judge sees x̂0 at resolution {self.resolution}, which must be "
                                         "a multiple of 32 (smp encoders downsample by 32)")

    def to_json(self, path: str | Path) -> None:
        """Write the settings as JSON, atomically."""
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "settings") -> TrainSettings:
        """Build settings from a mapping; unknown or missing keys raise ValueError naming ``source``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown TrainSettings keys {unknown}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in values]
        if missing:
            raise ValueError(f"{source}: missing required TrainSettings keys {missing}")
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainSettings:
        """Read settings written by :meth:`to_json`."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read TrainSettings JSON ({err})") from err
        if not isinstance(values, dict):
            raise ValueError(f"{path}: TrainSettings JSON must be an object")
        return cls.from_dict(values, source=str(path))
