"""The one declaration of every generated variant and every filtering policy (no torch, no science imports).

A variant is a way of making synthetic images: which Control-LoRA it samples (its own, trained with an objective, or
the plain one), how it samples (``sampling``: the pipeline as is, or with the in-loss backbones' discrepancy) and which
``generation.*`` keys that sampling reads. A policy is a training subset of the segmentation benchmark: which variant
its pool comes from, which rule (``pool``) picks that pool and which policy is its size-matched control. The schema's
enums of names (filled in by hardgen.config.validation.load_schema), the config checks, the workflow's DAG and exact
rule params, the filter, the report's order and paired differences and the cost table all read these tables, so
adding a variant or a policy is one entry here plus its own config keys and tests (README: "Adding a variant",
"Adding a filtering policy"). A new
sampling strategy or pool rule is new code: its name here and its branch in workflow/scripts/generate.py or
hardgen.scoring.filter.pool (an entry naming one that is not here is an error when this module loads).
"""

from __future__ import annotations

from dataclasses import dataclass

#: ``generation.*`` keys every variant's sampling reads (``shards``: the job split; images do not depend on it).
SAMPLING_KEYS: tuple[str, ...] = ("steps", "shards", "batch_size", "guidance_scale", "condition_scale", "dtype")
#: How a variant samples: its LoRA as is, with the in-loss backbones' discrepancy (hardgen.generator.mining), or
#: drawing the lesion into a real frame (``inpaint``: hardgen.models.inpainting, hardgen.data.placement).
SAMPLINGS: tuple[str, ...] = ("pipeline", "mined", "guided", "inpaint")
#: The samplings that read the in-loss backbones and their prototypes.
JUDGED_SAMPLINGS: tuple[str, ...] = ("mined", "guided")
#: How a policy picks its pool from its source variant's samples (hardgen.scoring.filter.pool), and the ``filter.*``
#: keys each rule reads: ``none`` no synthetic images (real only), ``every`` every sample, ``band`` the samples whose
#: hardness lies within the ``filter.band`` quantiles, ``fidelity`` those passing the fidelity guard.
POOL_RULES: dict[str, tuple[str, ...]] = {
    "none": (),
    "every": (),
    "band": ("band", "score_backbone"),
    "fidelity": ("min_fidelity",),
}
#: The pool rules that read the source's score table (hardness z, or the fidelity the score rule joins).
SCORED_RULES: tuple[str, ...] = ("band", "fidelity")


@dataclass(frozen=True)
class Variant:
    """One generator of synthetic images.

    ``lora``: the Control-LoRA it samples (its own name when it trains one). ``objective``: what its LoRA's training
    optimises (None: training-free, it samples another variant's LoRA). ``sampling``: ``pipeline`` (the LoRA as is),
    ``mined`` (best of several noises under the in-loss backbones), ``guided`` (the discrepancy gradient while
    sampling; these two read the in-loss backbones' prototypes) or ``inpaint`` (the lesion drawn into a real frame,
    the frame kept outside the dilated mask). ``keys``: the ``generation.*`` keys of its own sampling, beyond
    :data:`SAMPLING_KEYS`. ``rule``: the training rule of its LoRA (None: no training job). ``versus``: the variant
    whose every-sample policy is its every-sample policy's size-matched control (None: plain's, which has none).
    """

    name: str
    lora: str
    objective: str | None
    sampling: str
    keys: tuple[str, ...] = ()
    rule: str | None = None
    #: whether its training steers by the real-only feedback judge (rule train_judge; its cost is the variant's)
    judge: bool = False
    versus: str | None = "plain"

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"hardgen.core.registry: variant {self.name!r}: unknown sampling {self.sampling!r} "
                             f"(choose from {', '.join(SAMPLINGS)})")

    @property
    def trains(self) -> bool:
        return self.lora == self.name

    @property
    def uses_backbones(self) -> bool:
        """Whether sampling reads the in-loss backbones and their prototypes (``hard.loss_backbones``)."""
        return self.sampling in JUDGED_SAMPLINGS

    @property
    def inpaints(self) -> bool:
        """Whether it draws into real frames (``sampling: inpaint``): its generate jobs read the training frames (and
        ``data.background_frames``) and its samples are measured in ``results/tables/inpainting.csv``."""
        return self.sampling == "inpaint"

    @property
    def generation_keys(self) -> tuple[str, ...]:
        return SAMPLING_KEYS + self.keys


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("plain", "plain", "denoising (control-lora-v3)", "pipeline", rule="train_control_lora", versus=None),
        Variant("hard", "hard", "denoising + prototype discrepancy (hard.*)", "pipeline", rule="train_hard_lora"),
        Variant("feedback", "feedback", "denoising + the real-only judge's segmentation loss (feedback.*)",
                "pipeline", rule="train_feedback_lora", judge=True),
        Variant("mined", "plain", None, "mined", keys=("candidates", "mining_steps")),
        Variant("guided", "plain", None, "guided", keys=("guided",)),
        # a lesion drawn into a real frame (generation.inpaint): against the whole image of the same LoRA, at equal
        # count (does a real background help more than a generated one, plainly and hard?)
        Variant("inpaint", "plain", None, "inpaint", keys=("inpaint",)),
        Variant("hard_inpaint", "hard", None, "inpaint", keys=("inpaint",), versus="hard"),
    )
}


@dataclass(frozen=True)
class Policy:
    """One training subset of the benchmark: ``source`` is the variant its pool is drawn from (None: real only),
    ``pool`` the rule that picks the pool from the source's samples (:data:`POOL_RULES`). ``control``: its
    size-matched control, the policy the report compares it with at the same ratio (every synthetic policy trains
    with round(ratio × real images) synthetic images, the same seeded draw); None: only ``real`` is its reference."""

    name: str
    source: str | None
    pool: str
    description: str = ""
    control: str | None = None

    def __post_init__(self):
        if self.pool not in POOL_RULES:
            raise ValueError(f"hardgen.core.registry: policy {self.name!r}: unknown pool rule {self.pool!r} "
                             f"(choose from {', '.join(POOL_RULES)})")
        if (self.source is None) != (self.pool == "none"):
            raise ValueError(f"hardgen.core.registry: policy {self.name!r}: pool rule {self.pool!r} with source "
                             f"{self.source!r} (only rule 'none' has no source variant)")
        if self.control is not None and (self.control == self.name or self.pool == "none"):
            raise ValueError(f"hardgen.core.registry: policy {self.name!r}: control {self.control!r} (only a synthetic "
                             "policy has a control, another policy)")

    @property
    def keys(self) -> tuple[str, ...]:
        """The ``filter.*`` keys that pick its pool."""
        return POOL_RULES[self.pool]

    @property
    def scored(self) -> bool:
        """Whether its pool reads the source's score table (hardness or fidelity)."""
        return self.pool in SCORED_RULES


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("real", None, "none", "the real training images only (ratio 0)"),
        # which generator: every variant's samples against its versus's (plain's; the inpainting ones against the whole
        # images of their LoRA), the same conditions, the same size
        *(Policy(v.name, v.name, "every", f"every {v.name} sample", control=v.versus) for v in VARIANTS.values()),
        # which hard samples are kept: a selection against the uniform draw of the same variant, the same size
        Policy("hard_band", "hard", "band", "hard samples within filter.band", control="hard"),
        Policy("hard_faithful", "hard", "fidelity", "hard samples passing the fidelity guard", control="hard"),
    )
}


def _check_controls() -> None:
    """Every declared control is a declared policy, every variant's ``versus`` a variant (when this module loads)."""
    for v in VARIANTS.values():
        if v.versus is not None and (v.versus not in VARIANTS or v.versus == v.name):
            raise ValueError(f"hardgen.core.registry: variant {v.name!r}: versus {v.versus!r} is not another variant")
    for entry in POLICIES.values():
        if entry.control is not None and entry.control not in POLICIES:
            raise ValueError(f"hardgen.core.registry: policy {entry.name!r}: control {entry.control!r} is not a policy")


_check_controls()


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"generation.variants: unknown variant {name!r} (choose from {', '.join(VARIANTS)})")
    return VARIANTS[name]


def policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"segment.policies: unknown policy {name!r} (choose from {', '.join(POLICIES)})")
    return POLICIES[name]


def trained_loras(variants: list[str] | tuple[str, ...]) -> list[str]:
    """The Control-LoRAs a run trains for ``variants``: plain always (the others start from it), then each variant
    that trains its own, in registry order."""
    wanted = {variant(v).lora for v in variants}
    return ["plain", *(v.name for v in VARIANTS.values() if v.trains and v.name != "plain" and v.name in wanted)]


def ordered(names, table: dict) -> list[str]:
    """``names`` in the registry's order (the report's order), unknown names last in their given order."""
    names = list(names)
    return [n for n in table if n in names] + [n for n in names if n not in table]
