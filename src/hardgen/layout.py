"""Where every artifact of the workflow lives: the one results layout (bottom layer: no science imports).

The rules (``workflow/rules/*.smk``, through ``common.smk``) and the Python code build paths from these patterns; no
code recovers a wildcard from a path (the tables carry their keys as columns, and wrappers receive keyed mappings).
A pattern keeps its wildcards in braces (``{arch}``): :func:`path` fills the ones it is given and leaves the others,
so the same pattern serves a Snakemake output (``path("model")``) and a concrete file (``path("model", arch="cnn",
...)``).

A benchmark run is keyed by :data:`RUN_KEYS`; every per-run artifact (subset, model, record, maps, evaluation) sits
under :data:`RUN_DIR`. A new run dimension (e.g. the real-data subset size of a nested ``data.train_subsets``) is one
more entry of :data:`RUN_KEYS` and one more level of :data:`RUN_DIR`.
"""

from __future__ import annotations

import string

#: The keys of one benchmark run, in path order (ratio as :func:`hardgen.config.ratio_label`; the real policy is 0).
RUN_KEYS: tuple[str, ...] = ("arch", "policy", "ratio", "seed")
#: The run's folder below each per-run artifact root.
RUN_DIR = "{arch}/{policy}/ratio-{ratio}/seed-{seed}"
#: A subset is shared by every arch: the run's folder without the arch.
SUBSET_DIR = "{policy}/ratio-{ratio}/seed-{seed}"

#: The file a skipped run's (empty) map folder holds instead of maps: a copy of its run record.
SKIPPED_MARKER = "skipped.json"

PATTERNS: dict[str, str] = {
    # data and conditions
    "demo_data": "results/data/demo",
    "manifest": "results/data/manifest.csv",
    "train_subset": "results/data/train_subset.csv",
    "converted": "results/data/converted",
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
    # report
    "table": "results/tables/{table}",
    "plots": "results/plots",
    "benchmarks": "results/benchmarks",
}


class _Keep(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def path(name: str, /, **wildcards: object) -> str:
    """The path of artifact ``name`` with ``wildcards`` filled in; wildcards not given stay as ``{key}``."""
    if name not in PATTERNS:
        raise KeyError(f"unknown artifact {name!r} (hardgen.layout.PATTERNS: {', '.join(PATTERNS)})")
    return string.Formatter().vformat(PATTERNS[name], (), _Keep({k: str(v) for k, v in wildcards.items()}))


def wildcards(name: str) -> list[str]:
    """The wildcards of artifact ``name``'s pattern, in order."""
    return [field for _, field, _, _ in string.Formatter().parse(PATTERNS[name]) if field]


def run_path(name: str, run: tuple | dict) -> str:
    """The path of a per-run artifact for ``run``: a mapping of :data:`RUN_KEYS` or a tuple in that order."""
    keys = dict(run) if isinstance(run, dict) else dict(zip(RUN_KEYS, run, strict=True))
    return path(name, **keys)
