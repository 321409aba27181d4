"""Where every artifact of the workflow lives: the one results layout (bottom layer: no science imports).

The rules (``workflow/rules/*.smk``, through ``common.smk``) and the Python code build paths from these patterns; no
code recovers a wildcard from a path (the tables carry their keys as columns, and wrappers receive keyed mappings).
A pattern keeps its wildcards in braces (``{arch}``): :func:`path` fills the ones it is given and leaves the others,
so the same pattern serves a Snakemake output (``path("model")``) and a concrete file (``path("model", arch="cnn",
...)``).

A benchmark run is keyed by :data:`RUN_KEYS`; every per-run artifact (subset, model, record, maps, evaluation) sits
under :data:`RUN_DIR`. A new run dimension is one more entry of :data:`RUN_KEYS` and one more level of :data:`RUN_DIR`.

The data-scarcity curve (``data.train_subsets`` with two sizes or more) is a dimension above the runs: every artifact
downstream of the real training data (:data:`PER_N`: the per-N manifest, conditions, prototypes, generators, scores,
subsets, segmenters, judges, evaluations, the per-N report) sits under :data:`N_DIR` right below ``results/``, e.g.
``results/n-24/segment/...``. :func:`path` inserts that level only when given ``n_real`` (a label as written in the
config, ``24`` or ``all``, or the wildcard ``"{n_real}"``), so with the dimension off every path is the one above.
"""

from __future__ import annotations

import string
from pathlib import Path

#: The keys of one benchmark run, in path order (ratio as :func:`hardgen.config.validation.ratio_label`; the real policy is 0).
RUN_KEYS: tuple[str, ...] = ("arch", "policy", "ratio", "seed")
#: The run's folder below each per-run artifact root.
RUN_DIR = "{arch}/{policy}/ratio-{ratio}/seed-{seed}"
#: A subset is shared by every arch: the run's folder without the arch.
SUBSET_DIR = "{policy}/ratio-{ratio}/seed-{seed}"

#: The file a skipped run's (empty) map folder holds instead of maps: a copy of its run record.
SKIPPED_MARKER = "skipped.json"

#: The data-scarcity level (``data.train_subsets``): one folder per real training-set size label below ``results/``.
N_DIR = "n-{n_real}"

PATTERNS: dict[str, str] = {
    # data and conditions
    "demo_data": "results/data/demo",
    # the demo's lesion-free frames (rule background_frames): the inpainting placement `frames` draws into them
    "background_frames": "results/data/background",
    # rule prepare_data: the dataset's manifest (with data.train_subset: only its images) and the subset's record;
    # with data.train_subsets (the scarcity curve) every training image, and each size's manifest is "manifest"
    "data_manifest": "results/data/manifest.csv",
    "data_train_subset": "results/data/train_subset.csv",
    # the manifest everything downstream reads (the same file as data_manifest unless the scarcity curve is on)
    "manifest": "results/data/manifest.csv",
    "train_subset": "results/data/train_subset.csv",
    "converted": "results/data/converted",
    # segment.full_data_baseline (rule full_data_manifest): every validated training image beside data.train_subset's
    "full_manifest": "results/data/full/manifest.csv",
    "full_train_subset": "results/data/full/train_subset.csv",
    "full_converted": "results/data/full/converted",
    "conditions": "results/conditions/conditions.csv",
    "squash_conditions": "results/conditions/squash/conditions.csv",
    "squash_images": "results/conditions/squash/images",
    "squash_masks": "results/conditions/squash/masks",
    "condition_images": "results/conditions/images",
    "condition_masks": "results/conditions/masks",
    "base_model": "results/base_model",
    # generators
    "lora": "results/lora/{variant}/pytorch_lora_weights.safetensors",
    "train_log": "results/lora/{variant}/train_log.csv",
    "validation": "results/lora/{variant}/validation.png",
    # the validation metrics (stage, step, metric, value; rows with train.validation_steps > 0); the grids of each
    # validation step beside it (validation/step-<N>.png) and the tracker's files (tensorboard/) are not outputs
    "validation_metrics": "results/lora/{variant}/validation.csv",
    "plan": "results/generated/plan.csv",
    "shard": "results/generated/{variant}/shard-{shard}.csv",
    "shard_dir": "results/generated/{variant}/shard-{shard}",
    "generated": "results/generated/{variant}/manifest.csv",
    # hardness and filtering
    "prototype": "results/prototypes/{backbone}.safetensors",
    "scores": "results/scores/{scored}.csv",
    "features": "results/scores/{scored}.features.safetensors",
    "fidelity": "results/fidelity/{scored}.csv",
    "subset": f"results/subsets/{SUBSET_DIR}.csv",
    "subset_record": f"results/subsets/{SUBSET_DIR}.json",
    # segmentation benchmark
    "model": f"results/segment/{RUN_DIR}/model.safetensors",
    "run": f"results/segment/{RUN_DIR}/run.json",
    "predictions": f"results/predictions/{RUN_DIR}",
    "eval": f"results/eval/{RUN_DIR}.csv",
    "eval_images": f"results/eval/{RUN_DIR}.images.csv",
    "sample_loss": "results/eval/{arch}/seed-{seed}/sample_loss.csv",
    "judge": "results/judge/{arch}/seed-{seed}/model.safetensors",
    "judge_run": "results/judge/{arch}/seed-{seed}/run.json",
    "judge_loss": "results/judge/{arch}/seed-{seed}/sample_loss/{variant}.csv",
    # segment.full_data_baseline: an anchored arch's real-only run on every training image (rules train_full_baseline,
    # evaluate_full_baseline), outside the benchmark's runs: the reproduction table's like-for-like baseline
    "full_model": "results/segment-full/{arch}/seed-{seed}/model.safetensors",
    "full_run": "results/segment-full/{arch}/seed-{seed}/run.json",
    "full_predictions": "results/predictions-full/{arch}/seed-{seed}",
    "full_eval": "results/eval-full/{arch}/seed-{seed}.csv",
    "full_eval_images": "results/eval-full/{arch}/seed-{seed}.images.csv",
    # report
    "table": "results/tables/{table}",
    "plots": "results/plots",
    "benchmarks": "results/benchmarks",
    # every model the run builds, with its parameter count (rule models_table): one per run, like the base model
    "models_table": "results/tables/models.csv",
    # the data-scarcity curve (rule scarcity): every size's tables in one, with n_real, and the curve
    "scarcity_table": "results/tables/{table}",
    "scarcity_plot": "results/plots/scarcity.png",
}

#: segment.full_data_baseline's artifacts: the full manifest and the anchored archs' real-only runs on it, one copy per
#: run (never per size: they train on every image).
FULL_DATA: frozenset[str] = frozenset(name for name in PATTERNS if name.startswith("full_"))

#: The artifacts downstream of the real training data: with ``data.train_subsets`` one copy per size, under
#: :data:`N_DIR` (everything but the dataset, the demo's background frames, its full manifest, the base model, the
#: models table and the cross-size summary).
PER_N: frozenset[str] = frozenset(PATTERNS) - FULL_DATA - {
    "demo_data", "background_frames", "converted", "data_manifest", "data_train_subset", "base_model",
    "scarcity_table", "scarcity_plot",
    "models_table"}


#: a LoRA's ``validation.csv`` (the pattern ``validation_metrics``): one row per validation step and metric
VALIDATION_COLUMNS = ("stage", "step", "metric", "value")


def validation_grid(lora_dir: str | Path, step: int) -> Path:
    """The grid a LoRA's training writes at validation ``step``, in its folder beside ``validation.csv``."""
    return Path(lora_dir) / "validation" / f"step-{int(step)}.png"


class _Keep(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def pattern(name: str, n_real: object = None) -> str:
    """Artifact ``name``'s pattern; with ``n_real`` (not None) a :data:`PER_N` artifact gets the :data:`N_DIR` level."""
    if name not in PATTERNS:
        raise KeyError(f"unknown artifact {name!r} (hardgen.core.layout.PATTERNS: {', '.join(PATTERNS)})")
    if n_real is None or name not in PER_N:
        return PATTERNS[name]
    root, rest = PATTERNS[name].split("/", 1)
    return f"{root}/{N_DIR}/{rest}"


def path(name: str, /, n_real: object = None, **wildcards: object) -> str:
    """The path of artifact ``name`` with ``wildcards`` filled in; wildcards not given stay as ``{key}``.

    ``n_real`` (the scarcity level, :data:`N_DIR`): None leaves it out (the dimension is off); a label (``24``,
    ``all``) fills it and ``"{n_real}"`` keeps it a wildcard. Artifacts outside :data:`PER_N` never have it.
    """
    if n_real is not None:
        wildcards["n_real"] = n_real
    return string.Formatter().vformat(pattern(name, n_real), (), _Keep({k: str(v) for k, v in wildcards.items()}))


def wildcards(name: str, n_real: object = None) -> list[str]:
    """The wildcards of artifact ``name``'s pattern (with the scarcity level when ``n_real`` is given), in order."""
    return [field for _, field, _, _ in string.Formatter().parse(pattern(name, n_real)) if field]


def run_path(name: str, run: tuple | dict) -> str:
    """The path of a per-run artifact for ``run``: a mapping of :data:`RUN_KEYS` or a tuple in that order."""
    keys = dict(run) if isinstance(run, dict) else dict(zip(RUN_KEYS, run, strict=True))
    return path(name, **keys)
