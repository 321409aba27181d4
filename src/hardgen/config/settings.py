"""The validated config as typed, frozen settings: one dataclass per schema section, one field per schema key.

:meth:`Settings.from_config` reads a config that :func:`hardgen.config.validation.validate_config` has checked and
filled with the schema's defaults. Each field's documentation is its schema description (:func:`description`); the
schema (``config.schema.yaml`` beside this module) stays the one place of types, ranges and defaults, and
tests/test_settings.py keeps fields, keys and defaults equal.

Which jobs read a field is declared on the field (``read_by``), so a rule's exact params are derived, never listed:
``settings.train.params("finetune")`` is every ``train.*`` value a fine-tuning job reads, in a fixed order (a rule's
params are compared by their repr: Snakemake's params rerun trigger). A whole mapping entry (``backbones.<key>``,
``segment.archs.<key>``) keeps the config's key order. The jobs:

* ``generator``: ``model.*`` keys of every Control-LoRA training and sampling job (``base`` is a param of its own).
* ``adapters``: ``lora.*`` keys of every LoRA training (plain, hard, feedback; ``init_weights`` is an input of the
  plain training, not a param); generation reads none.
* ``plain`` / ``finetune``: ``train.*`` keys of the plain training and of a hard / feedback fine-tuning (whose length
  is its own section's ``steps``); ``copied``: those copied into TrainSettings as they are.
* ``hard`` / ``feedback``: ``hard.*`` / ``feedback.*`` keys of that fine-tuning; ``hard`` also the in-loss
  ``backbones.<key>`` entries (without the prototype's recipe and file: it reads the prototype file itself).
* ``extractor``: ``backbones.<key>`` as a feature extractor reads it (prototype, score, the mined/guided judge):
  without the hardness loss's ``margin``, which only the hard LoRA reads.
* ``prototype``: ``backbones.<key>.prototype_crop``, the prototype job's recipe (``prototype``, a file of the user's
  that replaces the job for that backbone, is an input of the jobs that read prototypes, not a param).
* ``segmenter``: ``segment.archs.<key>`` as a job reads it: without ``published`` (the report's anchors name).
* ``run`` / ``filtered_run``: ``segment.*`` keys of one segmenter run (size, augment and the recipe keys an arch may
  override); ``filtered_run`` also ``pixel_filter``, read only with a filter judge.

A stage key that inherits train's when null (``hard.validation_steps``, ``feedback.report_to``, ``segment.report_to``)
reaches its job resolved (:meth:`Settings.tracking`, :meth:`Settings.report_to`), never as the two raw keys, so
setting it reruns that stage alone and a change of train's reruns only the stages that inherit it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field
from functools import cache
from typing import Any, ClassVar, TypeVar

from hardgen.config.validation import load_schema, resolve_ref

S = TypeVar("S", bound="Section")


class ConfigKeyError(ValueError):
    """A mapping that is not the validated config section it is read as; the message names the key path."""


class _Unread:
    """The value of a field a job's params do not carry (:meth:`Section.from_params`)."""

    def __repr__(self) -> str:
        return "<not a param of this job>"


#: What :meth:`Section.from_params` leaves in the fields its job does not read.
UNREAD: Any = _Unread()


def setting(*, read_by: tuple[str, ...] = (), key: str | None = None, default: Any = MISSING,
            factory: Any = MISSING, section: type[Section] | None = None,
            entries: type[Section] | None = None) -> Any:
    """A settings field: ``key`` its schema key (when not the field's name), ``read_by`` the jobs whose params carry
    it, ``section`` / ``entries`` the settings class of a nested object / of every entry of a keyed mapping."""
    metadata = {"read_by": read_by, "key": key, "section": section, "entries": entries}
    return field(default=default, default_factory=factory, metadata=metadata)


def schema_key(f: dataclasses.Field) -> str:
    """The schema key of a settings field."""
    return f.metadata.get("key") or f.name


@dataclass(frozen=True, kw_only=True)
class Section:
    """One schema object as settings (subclasses declare its keys as :func:`setting` fields)."""

    #: The schema path of this object ("train", "backbones.*"), for messages and :func:`description`.
    PATH: ClassVar[str] = ""
    #: Whether params keep the config's key order (a whole mapping entry) rather than the fields' order.
    CONFIG_ORDER: ClassVar[bool] = False
    #: The key order of the config mapping it was read from (empty when built in code).
    order: tuple[str, ...] = field(default=(), repr=False, compare=False, metadata={"schema": False})

    @classmethod
    def keys(cls) -> dict[str, dataclasses.Field]:
        """{schema key: field} of every schema key of this object."""
        return {schema_key(f): f for f in dataclasses.fields(cls) if f.metadata.get("schema", True)}

    @classmethod
    def job_keys(cls, job: str) -> list[str]:
        """The schema keys a job reads, in the fields' order; an error for a job no field names."""
        keys = [key for key, f in cls.keys().items() if job in f.metadata["read_by"]]
        if not keys:
            raise ConfigKeyError(f"{cls.PATH or 'config'}: no key is read by job {job!r}")
        return keys

    @classmethod
    def from_config(cls: type[S], mapping: Mapping[str, Any], path: str | None = None) -> S:
        """The settings of a validated config mapping (every key present: the schema's defaults filled)."""
        path = cls.PATH if path is None else path
        return cls._build(mapping, path, cls.keys())

    @classmethod
    def from_params(cls: type[S], job: str, params: Mapping[str, Any], path: str | None = None) -> S:
        """A job's view from its rule's params (exactly :meth:`job_keys`); the fields it does not read are
        :data:`UNREAD`."""
        path = cls.PATH if path is None else path
        wanted = cls.job_keys(job)
        if sorted(params) != sorted(wanted):
            raise ConfigKeyError(f"{path}: job {job!r} params hold {sorted(params)}, not its keys {sorted(wanted)}")
        fields = cls.keys()
        return cls._build(params, path, {key: fields[key] for key in wanted},
                          unread={f.name: UNREAD for key, f in fields.items() if key not in wanted})

    @classmethod
    def _build(cls, mapping: Mapping[str, Any], path: str, fields: Mapping[str, dataclasses.Field],
               unread: Mapping[str, Any] | None = None) -> Any:
        if not isinstance(mapping, Mapping):
            raise ConfigKeyError(f"config key '{path}': expected a mapping, got {mapping!r}")
        unknown = sorted(set(mapping) - set(fields))
        missing = sorted(set(fields) - set(mapping))
        if unknown or missing:
            raise ConfigKeyError(f"config key '{path}': unknown keys {unknown}, missing keys {missing} (settings are "
                                 "read from the validated config, with the schema's defaults filled)")
        values = {f.name: _read(f, mapping[key], f"{path}.{key}" if path else key) for key, f in fields.items()}
        return cls(**values, **(unread or {}), order=tuple(mapping))

    def value(self, key: str) -> Any:
        """The config value of a schema key: as the config has it (a nested object as a mapping)."""
        fields = self.keys()
        if key not in fields:
            raise ConfigKeyError(f"{self.PATH or 'config'}: no key {key!r} (keys: {', '.join(fields)})")
        return _plain(getattr(self, fields[key].name))

    def values(self, keys: Iterable[str]) -> dict[str, Any]:
        """{key: :meth:`value`} for ``keys``, in their order (the keys a registry entry names)."""
        return {key: self.value(key) for key in keys}

    def params(self, job: str) -> dict[str, Any]:
        """The values a job reads (the fields that name it in ``read_by``): a rule's exact params."""
        keys = self.job_keys(job)
        if self.CONFIG_ORDER and self.order:
            keys = [key for key in self.order if key in keys]
        return self.values(keys)

    def as_config(self) -> dict[str, Any]:
        """The config mapping of this object, in the config's key order."""
        keys = [key for key in self.order if key in self.keys()] or list(self.keys())
        return self.values(keys)


def _read(f: dataclasses.Field, value: Any, path: str) -> Any:
    section, entries = f.metadata.get("section"), f.metadata.get("entries")
    if section is not None and value is not None:
        return section.from_config(value, path)
    if entries is not None:
        if not isinstance(value, Mapping):
            raise ConfigKeyError(f"config key '{path}': expected a mapping of entries, got {value!r}")
        return {key: entries.from_config(entry, f"{path}.{key}") for key, entry in value.items()}
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.as_config()
    if isinstance(value, dict) and value and all(isinstance(v, Section) for v in value.values()):
        return {key: entry.as_config() for key, entry in value.items()}
    return value


@cache
def _schema() -> dict[str, Any]:
    return load_schema()


def description(section: type[Section], name: str) -> str:
    """The schema description of a settings field (its documentation)."""
    schema = _schema()
    node: dict[str, Any] = schema
    for part in [p for p in section.PATH.split(".") if p]:
        node = resolve_ref(node, schema)
        node = node["properties"][part] if part != "*" else node["additionalProperties"]
    node = resolve_ref(node, schema)
    key = schema_key(next(f for f in dataclasses.fields(section) if f.name == name))
    return " ".join(str(resolve_ref(node["properties"][key], schema).get("description", "")).split())


# ---- data


@dataclass(frozen=True, kw_only=True)
class VolumeConfig(Section):
    """NIfTI volumes: how they become 2D slices."""

    PATH = "data.volume"
    axis: int = setting(default=2)
    keep_empty: float = setting(default=0.0)


@dataclass(frozen=True, kw_only=True)
class DemoConfig(Section):
    """The procedural demo set made when data.root is null."""

    PATH = "data.demo"
    modality: str = setting(default="polyp")
    n_train: int = setting(default=24)
    n_test: int = setting(default=6)
    min_size: int = setting(default=72)
    max_size: int = setting(default=112)
    lesion_colour: str = setting(default="distinct")
    empty_test_fraction: float = setting(default=0)


@dataclass(frozen=True, kw_only=True)
class DataConfig(Section):
    """Where the images and masks come from."""

    PATH = "data"
    root: str | None = setting()
    layout: str = setting(default="pranet")
    train_splits: list[str] = setting(factory=lambda: ["train"])
    testsets: list[str] = setting()
    expected_sizes: dict[str, int | None] = setting(factory=dict)
    foreground: list[int] | None = setting(default=None)
    window: list[float] | None = setting(default=None)
    volume: VolumeConfig = setting(factory=VolumeConfig, section=VolumeConfig)
    train_subset: int | None = setting(default=None)
    test_subset: int | None = setting(default=None)
    train_subsets: list[int | str] | None = setting(default=None)
    background_frames: str | None = setting(default=None)
    demo: DemoConfig = setting(factory=DemoConfig, section=DemoConfig)


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(Section):
    """How the benchmark segmenters' test maps are saved and scored."""

    PATH = "evaluate"
    protocol: str = setting(default="polyp_toolbox")


@dataclass(frozen=True, kw_only=True)
class ConditionConfig(Section):
    """How each mask becomes the Control-LoRA's condition image."""

    PATH = "condition"
    type: str = setting()
    layouts_per_mask: int = setting(default=0)
    canny_low: int = setting(default=100)
    canny_high: int = setting(default=200)


# ---- the generators


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Section):
    """The Stable Diffusion base model, its resolution and prompt."""

    PATH = "model"
    base: str = setting()
    family: str = setting(read_by=("generator",))
    tiny_config: str = setting(default="resources/tiny-sd")
    vae: str | None = setting(default=None, read_by=("generator",))
    resolution: int = setting(read_by=("generator",))
    prompt: str = setting(read_by=("generator",))


@dataclass(frozen=True, kw_only=True)
class LoraConfig(Section):
    """The shape of the Control-LoRA adapters and the condition latent their training reads."""

    PATH = "lora"
    preset: str = setting(read_by=("adapters",))
    rank: int = setting(read_by=("adapters",))
    conv_in_rank: int = setting(read_by=("adapters",))
    init_weights: str | None = setting(default=None)
    init: str = setting(read_by=("adapters",))
    condition_latent: str = setting(default="mode", read_by=("adapters",))


_TRAIN = ("plain", "finetune", "copied")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Section):
    """Training of the plain Control-LoRA; hard and feedback fine-tuning reuse these unless they override them."""

    PATH = "train"
    steps: int = setting(read_by=("plain",))
    batch_size: int = setting(read_by=_TRAIN)
    learning_rate: float = setting(read_by=_TRAIN)
    lr_scheduler: str = setting(default="constant", read_by=_TRAIN)
    lr_warmup_steps: int = setting(default=0, read_by=_TRAIN)
    gradient_accumulation_steps: int = setting(default=1, read_by=_TRAIN)
    mixed_precision: str = setting(default="no", read_by=_TRAIN)
    gradient_checkpointing: bool = setting(default=False, read_by=_TRAIN)
    loraplus_lr_ratio: float = setting(default=1.0, read_by=_TRAIN)
    use_8bit_adam: bool = setting(default=False, read_by=_TRAIN)
    max_grad_norm: float = setting(default=1.0, read_by=_TRAIN)
    empty_prompt_prob: float = setting(default=0.1, read_by=_TRAIN)
    prediction_type: str | None = setting(default=None, read_by=_TRAIN)
    checkpointing_steps: int = setting(default=500, read_by=_TRAIN)
    checkpoints_total_limit: int | None = setting(default=None, read_by=_TRAIN)
    # the stage's tracking keys reach each training job resolved (Settings.validation_steps / report_to): not copied
    validation_steps: int = setting(default=0)
    validation_samples: int = setting(default=4, read_by=_TRAIN)
    validation_inference_steps: int = setting(default=20, read_by=_TRAIN)
    report_to: str = setting(default="tensorboard")
    num_workers: int = setting(default=0, read_by=_TRAIN)
    # a gradient accumulation once the job's GPUs are known (hardgen.generator.stages), not copied
    images_per_step: int | None = setting(default=None, read_by=("plain", "finetune"))


@dataclass(frozen=True, kw_only=True)
class HardConfig(Section):
    """The hard generator: the plain Control-LoRA fine-tuned with the prototype-discrepancy term L_dis."""

    PATH = "hard"
    init: str = setting(default="plain", read_by=("hard",))
    steps: int = setting(read_by=("hard",))
    learning_rate: float | None = setting(default=None, read_by=("hard",))
    loss_backbones: list[str] = setting(read_by=("hard",))
    lambda_: float = setting(key="lambda", read_by=("hard",))
    margin_factor: float = setting(read_by=("hard",))
    crop_pad: int = setting(default=10, read_by=("hard",))
    calibration_samples: int = setting(default=64, read_by=("hard",))
    # null = train's: resolved for the job (Settings.validation_steps / report_to), never a param of their own
    validation_steps: int | None = setting(default=None)
    report_to: str | None = setting(default=None)


@dataclass(frozen=True, kw_only=True)
class FeedbackConfig(Section):
    """The model-specific baseline: fine-tuned to raise one real-trained segmenter's loss."""

    PATH = "feedback"
    steps: int = setting(read_by=("feedback",))
    learning_rate: float | None = setting(default=None, read_by=("feedback",))
    lambda_: float = setting(key="lambda", read_by=("feedback",))
    margin_factor: float = setting(read_by=("feedback",))
    loss: str = setting(default="hinge", read_by=("feedback",))
    calibration_samples: int = setting(default=64, read_by=("feedback",))
    validation_steps: int | None = setting(default=None)
    report_to: str | None = setting(default=None)
    init: str = setting(default="plain", read_by=("feedback",))
    seg_loss: str = setting(default="structure", read_by=("feedback",))
    judge_input: str = setting(default="segment_size", read_by=("feedback",))
    batch_size: int | None = setting(default=None, read_by=("feedback",))
    images_per_step: int | None = setting(default=None, read_by=("feedback",))
    # the judge (an input of the job, not a param)
    segmenter: str = setting()
    judge_seed: int = setting(default=0)


_EXTRACTOR = ("extractor", "hard")


@dataclass(frozen=True, kw_only=True)
class BackboneConfig(Section):
    """One frozen feature extractor (``backbones.<key>``)."""

    PATH = "backbones.*"
    CONFIG_ORDER = True
    name: str = setting(read_by=_EXTRACTOR)
    source: str = setting(default="timm", read_by=_EXTRACTOR)
    resize_via: int | None = setting(default=None, read_by=_EXTRACTOR)
    config: dict[str, Any] | None = setting(default=None, read_by=_EXTRACTOR)
    pretrained: bool = setting(default=False, read_by=_EXTRACTOR)
    checkpoint: str | None = setting(default=None, read_by=_EXTRACTOR)
    input_size: int = setting(read_by=_EXTRACTOR)
    # the hardness loss's, not the extractor's
    margin: float | None = setting(default=None, read_by=("hard",))
    # the prototype job's recipe; a file of the user's replaces the job (an input of its readers, not a param)
    prototype_crop: str = setting(default="hardgen", read_by=("prototype",))
    prototype: str | None = setting(default=None)


@dataclass(frozen=True, kw_only=True)
class GuidedConfig(Section):
    """guided: the discrepancy gradient on the latents while sampling."""

    PATH = "generation.guided"
    strength: float = setting(default=0.5)
    window: list[float] = setting(factory=lambda: [0.0, 0.5])


@dataclass(frozen=True, kw_only=True)
class InpaintConfig(Section):
    """inpaint / hard_inpaint: the lesion drawn into a real frame, the frame kept outside the dilated mask."""

    PATH = "generation.inpaint"
    dilate: int = setting(default=8)
    feather: int = setting(default=8)
    placements: list[str] = setting(factory=lambda: ["in_place", "relocated"])


@dataclass(frozen=True, kw_only=True)
class GenerationConfig(Section):
    """Sampling the planned samples from each generator variant (a variant's keys: hardgen.core.registry)."""

    PATH = "generation"
    steps: int = setting()
    shards: int = setting()
    batch_size: int = setting(default=16)
    guidance_scale: float = setting(default=1.0)
    condition_scale: float = setting(default=1.0)
    dtype: str = setting(default="auto")
    condition_fit: str = setting(default="crop")
    variants: list[str] = setting(factory=lambda: ["plain", "hard", "feedback"])
    per_mask: int = setting(default=1)
    allocation: str = setting(default="uniform")
    candidates: int = setting(default=4)
    mining_steps: int = setting(default=2)
    guided: GuidedConfig = setting(factory=GuidedConfig, section=GuidedConfig)
    inpaint: InpaintConfig = setting(factory=InpaintConfig, section=InpaintConfig)


# ---- pools, segmenters, report


@dataclass(frozen=True, kw_only=True)
class FilterConfig(Section):
    """The pools of hard_band (hardness band) and hard_faithful (fidelity guard) (a policy's keys:
    hardgen.core.registry)."""

    PATH = "filter"
    band: list[float] = setting()
    score_backbone: str = setting(default="all")
    min_fidelity: float = setting(default=0.5)
    on_short_pool: str = setting(default="skip")
    fidelity_backbone: str = setting(default="heldout")


@dataclass(frozen=True, kw_only=True)
class LrDecayConfig(Section):
    """A step decay of the learning rate."""

    PATH = "segment.lr_decay"
    CONFIG_ORDER = True
    at: float = setting()
    factor: float = setting()


@dataclass(frozen=True, kw_only=True)
class ArchLrDecayConfig(LrDecayConfig):
    """An arch's own step decay."""

    PATH = "segment.archs.*.lr_decay"


_SEGMENTER = ("segmenter",)


@dataclass(frozen=True, kw_only=True)
class SegmenterConfig(Section):
    """One segmenter family (``segment.archs.<key>``), with its own training recipe where it sets one."""

    PATH = "segment.archs.*"
    CONFIG_ORDER = True
    arch: str = setting(read_by=_SEGMENTER)
    encoder: str = setting(read_by=_SEGMENTER)
    encoder_weights: str | None = setting(default=None, read_by=_SEGMENTER)
    checkpoint: str | None = setting(default=None, read_by=_SEGMENTER)
    # the report's anchors name, never a model's
    published: str | None = setting(default=None)
    optimizer: str | None = setting(default=None, read_by=_SEGMENTER)
    learning_rate: float | None = setting(default=None, read_by=_SEGMENTER)
    weight_decay: float | None = setting(default=None, read_by=_SEGMENTER)
    lr_decay: ArchLrDecayConfig | None = setting(default=None, read_by=_SEGMENTER, section=ArchLrDecayConfig)
    batch_size: int | None = setting(default=None, read_by=_SEGMENTER)
    iterations: int | None = setting(default=None, read_by=_SEGMENTER)
    multi_scale: list[float] | None = setting(default=None, read_by=_SEGMENTER)
    grad_clip: float | None = setting(default=None, read_by=_SEGMENTER)
    loss: str | None = setting(default=None, read_by=_SEGMENTER)
    resize: str | None = setting(default=None, read_by=_SEGMENTER)


_RUN = ("run", "filtered_run")


@dataclass(frozen=True, kw_only=True)
class SegmentConfig(Section):
    """The segmentation benchmark: segmenters trained on real + each subset, evaluated on data.testsets."""

    PATH = "segment"
    size: int = setting(read_by=_RUN)
    augment: str = setting(default="hardgen", read_by=_RUN)
    optimizer: str = setting(default="adam", read_by=_RUN)
    learning_rate: float = setting(read_by=_RUN)
    weight_decay: float = setting(default=0, read_by=_RUN)
    lr_decay: LrDecayConfig | None = setting(default=None, read_by=_RUN, section=LrDecayConfig)
    batch_size: int = setting(read_by=_RUN)
    iterations: int = setting(read_by=_RUN)
    multi_scale: list[float] = setting(factory=lambda: [1.0], read_by=_RUN)
    grad_clip: float | None = setting(default=0.5, read_by=_RUN)
    loss: str = setting(default="structure", read_by=_RUN)
    resize: str = setting(default="hardgen", read_by=_RUN)
    pixel_filter: float | None = setting(default=None, read_by=("filtered_run",))
    seeds: list[int] = setting()
    batch_runs: bool = setting(default=False)
    # null = train.report_to: resolved for the job (Settings.report_to)
    report_to: str | None = setting(default=None)
    # the anchored archs' real-only runs on every training image (rules train_full_baseline, evaluate_full_baseline)
    full_data_baseline: bool = setting(default=False)
    synthetic_ratios: list[float] = setting(factory=lambda: [1.0])
    policies: list[str] = setting()
    archs: dict[str, SegmenterConfig] = setting(entries=SegmenterConfig)


@dataclass(frozen=True, kw_only=True)
class PrimaryContrastConfig(Section):
    """The one contrast the study is about."""

    PATH = "report.primary_contrast"
    CONFIG_ORDER = True
    policy: str = setting()
    versus: str = setting()
    ratio: float = setting()
    metric: str = setting()


@dataclass(frozen=True, kw_only=True)
class ReportConfig(Section):
    """What the report stands beside a run's numbers and which contrast it leads with."""

    PATH = "report"
    anchors: str | None = setting(default="resources/anchors/polyp.csv")
    reproduce_tolerance: float = setting(default=0.02)
    primary_contrast: PrimaryContrastConfig | None = setting(
        factory=lambda: PrimaryContrastConfig(policy="hard", versus="plain", ratio=1, metric="mIoU"),
        section=PrimaryContrastConfig,
    )


@dataclass(frozen=True, kw_only=True)
class Settings(Section):
    """The whole validated config (:meth:`from_config`)."""

    PATH = ""
    seed: int = setting()
    container: str | None = setting(default=None)
    allow_random_weights: bool = setting(default=False)
    data: DataConfig = setting(section=DataConfig)
    evaluate: EvaluateConfig = setting(factory=EvaluateConfig, section=EvaluateConfig)
    condition: ConditionConfig = setting(section=ConditionConfig)
    model: ModelConfig = setting(section=ModelConfig)
    lora: LoraConfig = setting(section=LoraConfig)
    train: TrainConfig = setting(section=TrainConfig)
    hard: HardConfig = setting(section=HardConfig)
    feedback: FeedbackConfig = setting(section=FeedbackConfig)
    backbones: dict[str, BackboneConfig] = setting(entries=BackboneConfig)
    generation: GenerationConfig = setting(section=GenerationConfig)
    filter: FilterConfig = setting(section=FilterConfig)
    segment: SegmentConfig = setting(section=SegmentConfig)
    report: ReportConfig = setting(factory=ReportConfig, section=ReportConfig)

    def validation_steps(self, stage: str) -> int:
        """The validation cadence of a LoRA training stage (plain, hard, feedback): its own key, or
        ``train.validation_steps`` where that is null."""
        own = {"plain": None, "hard": self.hard.validation_steps, "feedback": self.feedback.validation_steps}
        if stage not in own:
            raise ConfigKeyError(f"validation_steps: no LoRA training stage {stage!r} (plain, hard, feedback)")
        return self.train.validation_steps if own[stage] is None else own[stage]

    def report_to(self, stage: str) -> str:
        """The tracker of a training stage (plain, hard, feedback, segment): its own key, or ``train.report_to`` where
        that is null."""
        own = {"plain": None, "hard": self.hard.report_to, "feedback": self.feedback.report_to,
               "segment": self.segment.report_to}
        if stage not in own:
            raise ConfigKeyError(f"report_to: no training stage {stage!r} (plain, hard, feedback, segment)")
        return self.train.report_to if own[stage] is None else own[stage]

    def tracking(self, stage: str) -> dict[str, Any]:
        """What a LoRA training job of ``stage`` tracks (its rule's ``tracking`` param): the resolved ``report_to`` and
        ``validation_steps``, so a stage's own key, or train's that it inherits, reruns that stage alone."""
        return {"report_to": self.report_to(stage), "validation_steps": self.validation_steps(stage)}
