"""The per-run record of one benchmark (or judge) segmenter run: ``run.json`` beside each model, read into
``results/tables/runs.csv`` by the report."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hardgen.core.io import write_json
from hardgen.segmentation.recipes import RECIPE_FIELDS

#: Fields of the per-run record (``run.json`` beside each model; ``results/tables/runs.csv``).
RUN_FIELDS: tuple[str, ...] = (
    "arch", "policy", "ratio", "seed", "real_images", "synthetic_images", "iterations", "images_seen",
)


def run_record(arch: str, policy: str, seed: int, summary: Mapping[str, Any], ratio: float | None = None
               ) -> dict[str, Any]:
    """The per-run record of one benchmark (or judge) run: :data:`RUN_FIELDS` from a training ``summary``
    (:func:`hardgen.segmentation.training.train_segmenter`).

    ``ratio`` is the run's synthetic ratio (``segment.synthetic_ratios``, the path's ``ratio-<r>``); the
    real policy (and the judge) is ratio 0 and may leave it out; a synthetic run without one records null
    (the report refuses such a record).

    ``seed`` is the configured seed (the path's ``seed-<s>``); ``training_seed`` (the seed the run
    actually used, ``summary['seed']``) is kept beside it, so a judge's offset seed stays visible, and
    so is ``ignored_pixel_fraction`` (segment.pixel_filter; null when no pixel filter ran).
    """
    counts = ("real_images", "synthetic_images", "iterations", "images_seen", "batch_size")
    missing = [k for k in (*counts, "seed") if k not in summary]
    if missing:
        raise ValueError(f"run record {arch}/{policy}/seed-{seed}: training summary lacks {missing}")
    if ratio is None and policy == "real":
        ratio = 0.0
    if ratio is not None and (not float(ratio) >= 0 or (policy == "real") != (float(ratio) == 0)):
        raise ValueError(f"run record {arch}/{policy}/seed-{seed}: ratio {ratio!r} (the real policy alone is ratio 0)")
    record: dict[str, Any] = {"arch": str(arch), "policy": str(policy),
                              "ratio": None if ratio is None else float(ratio), "seed": int(seed)}
    record.update({k: int(summary[k]) for k in counts})
    record["training_seed"] = int(summary["seed"])
    # segment.pixel_filter: the fraction of synthetic pixels left out of the loss (null: no filter / no synthetic)
    fraction = summary.get("ignored_pixel_fraction")
    record["ignored_pixel_fraction"] = None if fraction is None else float(fraction)
    # the training recipe the run used (per arch: segment.* with the arch's own keys on top)
    record.update({k: summary[k] for k in RECIPE_FIELDS if k in summary})
    return record


def write_run_record(path: str | Path, arch: str, policy: str, seed: int, summary: Mapping[str, Any],
                     ratio: float | None = None) -> dict[str, Any]:
    """Write :func:`run_record` as JSON to ``path``
    (``results/segment/<arch>/<policy>/ratio-<r>/seed-<s>/run.json``)."""
    record = run_record(arch, policy, seed, summary, ratio)
    write_json(path, record)
    return record

