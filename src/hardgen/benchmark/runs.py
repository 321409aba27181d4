"""One benchmark (or judge) segmenter run end to end: training table, optional pixel filter, training, record, maps.

Rules ``train_segmenter`` (one run per job), ``train_segmenters`` and ``train_real`` (``segment.batch_runs``: the
synthetic runs of one ratio and seed, the real-only runs of one seed, every architecture) and ``train_judge`` all
call :func:`train_run`, so a run gives the same model, record and maps whichever way it was scheduled. Batching
exists for small machines: on 2 CPU cores most of a demo run's job time is interpreter start-up and imports (~7 s
per torch job), not training.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hardgen.benchmark.records import write_run_record
from hardgen.core.io import read_csv_table
from hardgen.data.manifest import load_manifest
from hardgen.scoring.filter import SUBSET_COLUMNS
from hardgen.segmentation.build import SegmenterSpec, load_segmenter
from hardgen.segmentation.recipes import SegmentRecipe, resolve_recipe
from hardgen.segmentation.training import train_segmenter

log = logging.getLogger(__name__)

#: The feedback judge (rule ``train_judge``) trains with seed ``JUDGE_SEED_OFFSET + feedback.judge_seed``.
#: Benchmark seeds are below 2**31 (schema), so the judge's initialisation and data stream never equal a
#: benchmark run's, even when ``feedback.judge_seed`` equals one of ``segment.seeds``.
JUDGE_SEED_OFFSET = 2**31


@dataclass(frozen=True)
class RunPaths:
    """Where one run reads its subset and writes its outputs (``predictions`` None: a judge, no test maps)."""

    model: str
    run: str
    subset: str | None = None
    predictions: str | None = None
    #: the subset's pool record (rule filter): an infeasible subset skips the run (filter.on_short_pool: skip)
    subset_record: str | None = None


def skip_run(paths: RunPaths, arch: str, policy: str, ratio: float, seed: int, pool: Mapping[str, Any]
             ) -> dict[str, Any]:
    """The outputs of a run whose subset could not be filled (its pool record says infeasible), without training:
    ``run.json`` with ``skipped: true`` and the pool record's reason, pool size and need; an empty weights file whose
    metadata says skipped; and, for a benchmark run, an empty map folder holding only
    :data:`hardgen.core.layout.SKIPPED_MARKER` (the evaluate rules then write a header-only table)."""
    from hardgen.core.io import write_json
    from hardgen.core.layout import SKIPPED_MARKER
    from hardgen.core.weights import save_state_dict

    record = {"arch": str(arch), "policy": str(policy), "ratio": float(ratio), "seed": int(seed), "skipped": True,
              "reason": pool.get("reason"), "pool": pool.get("pool"), "need": pool.get("need"),
              "real_images": pool.get("real_images")}
    save_state_dict(paths.model, {}, metadata={"skipped": "true", "reason": str(pool.get("reason"))})
    write_json(paths.run, record)
    if paths.predictions:
        Path(paths.predictions).mkdir(parents=True, exist_ok=True)
        write_json(Path(paths.predictions) / SKIPPED_MARKER, record)
    log.warning("%s/%s/ratio %s/seed-%s skipped: %s", arch, policy, ratio, seed, record["reason"])
    return record


def training_pairs(manifest: pd.DataFrame, subset_path: str | None) -> pd.DataFrame:
    """The real training pairs (variant ``real``) plus the policy's synthetic subset table, if any (a missing file or
    column: :class:`~hardgen.core.io.DataError` naming it)."""
    pairs = manifest.loc[manifest["split"] == "train", ["id", "image", "mask"]].rename(columns={"id": "sample_id"})
    pairs = pairs.assign(variant="real")
    if subset_path:
        subset = read_csv_table(subset_path, SUBSET_COLUMNS, "subset table", dtype={"sample_id": str})
        pairs = pd.concat([pairs, subset], ignore_index=True)
    return pairs


@dataclass(frozen=True)
class RunJob:
    """What the runs of one segmenter job share: the data manifest, the ``segment.*`` settings, the device, the test
    sets and ``evaluate.protocol`` of the test maps (required when a run writes maps) and ``filter_judge_cache``, a
    dict kept across the job's runs: each pixel-filter judge is loaded once and the class means of its real images
    computed once (the same model, record and maps as without it)."""

    manifest_path: str | Path
    segment: Mapping[str, Any]
    device: torch.device
    testsets: Sequence[str] = ()
    protocol: str | None = None
    filter_judge_cache: dict[tuple[str, str], Any] | None = None
    #: the tracker of each run's training curve (``segment.report_to``, null: ``train.report_to``)
    report_to: str = "none"


@dataclass(frozen=True)
class SegmenterRun:
    """Which run: its arch (``spec_config``: the arch's ``segment.archs`` entry), policy, ratio and seed.

    ``feedback_judge``: the feedback judge's run (training seed ``JUDGE_SEED_OFFSET + seed``, no test maps).
    ``filter_judge``: the real-only judge's weights when ``segment.pixel_filter`` is on for this (synthetic) run:
    synthetic pixels it finds too hard are left out of the loss (:mod:`hardgen.scoring.pixel_filter`).
    """

    arch: str
    spec_config: Mapping[str, Any]
    policy: str
    ratio: float
    seed: int
    feedback_judge: bool = False
    filter_judge: str | None = None


def train_run(job: RunJob, run: SegmenterRun, paths: RunPaths) -> dict[str, Any]:
    """Train one segmenter on real + its subset for its arch's iterations; write model, run.json, maps.

    The recipe is the arch's (:func:`hardgen.segmentation.recipes.resolve_recipe`: ``segment.*`` with the arch entry's
    own optimizer, learning rate, weight decay, lr decay, batch size, iterations, multi-scale, clip and loss on top),
    so every policy of one arch gets that arch's budget; run.json records it. ``paths.subset_record``: the subset's pool
    record; when it says infeasible the run is skipped (:func:`skip_run`). Returns the run record.
    """
    arch, seed, device = run.arch, run.seed, job.device
    if paths.subset_record:
        from hardgen.scoring.filter import read_pool_record

        pool = read_pool_record(paths.subset_record)
        if not pool["feasible"]:
            return skip_run(paths, arch, run.policy, run.ratio, seed, pool)
    spec = SegmenterSpec.from_config(dict(run.spec_config), arch)
    recipe = resolve_recipe(job.segment, run.spec_config, arch)
    manifest = load_manifest(job.manifest_path)
    pairs = training_pairs(manifest, paths.subset)
    ignore_masks = None
    if run.filter_judge:
        ignore_masks = pixel_filter_ignore_masks(spec, recipe, job.segment["pixel_filter"], pairs, arch,
                                                 run.filter_judge, device, job.filter_judge_cache)
    name = f"judge/{arch}/seed-{seed}" if run.feedback_judge else f"segment/{arch}/{run.policy}/{run.ratio}/seed-{seed}"
    summary = train_segmenter(pairs, spec, Path(paths.model).parent, recipe,
                              seed=JUDGE_SEED_OFFSET + seed if run.feedback_judge else seed, device=device,
                              config_key=arch, ignore_masks=ignore_masks, report_to=job.report_to, run_name=name)
    record = write_run_record(paths.run, arch, run.policy, seed, summary, ratio=run.ratio)
    if paths.predictions:
        if job.protocol is None:
            raise ValueError("train_run: test maps need evaluate.protocol (RunJob.protocol)")
        test_rows = manifest[manifest["split"].isin(list(job.testsets))]
        save_test_maps(spec, paths.model, test_rows, recipe.size, paths.predictions, job.protocol, device)
    log.info("%s/%s/seed-%s%s: %s", arch, run.policy, seed, " (feedback judge)" if run.feedback_judge else "", record)
    return record


def pixel_filter_ignore_masks(spec: SegmenterSpec, recipe: SegmentRecipe, factor: float, pairs: pd.DataFrame,
                              arch: str, filter_judge: str, device: torch.device,
                              filter_judge_cache: dict[tuple[str, str], Any] | None) -> list[np.ndarray | None]:
    """The ignore maps of ``pairs`` under ``segment.pixel_filter`` (``factor``): the synthetic pixels the real-only
    judge ``filter_judge`` (weights of ``spec``) finds too hard (:mod:`hardgen.scoring.pixel_filter`).

    The judge and the class means of its real images are kept in ``filter_judge_cache`` under
    ``(arch, filter_judge)``; without a cache the judge is freed on return, before training.
    """
    from hardgen.scoring.pixel_filter import pixel_filter_masks

    cache = {} if filter_judge_cache is None else filter_judge_cache
    key = (arch, str(filter_judge))
    if key not in cache:
        cache[key] = (load_segmenter(spec, filter_judge, device=device), {})
    judge_model, class_means = cache[key]
    return pixel_filter_masks(judge_model, pairs, size=recipe.size, factor=factor, batch_size=recipe.batch_size,
                              device=device, class_means_cache=class_means).ignore


def save_test_maps(spec: SegmenterSpec, weights: str, test_rows: pd.DataFrame, size: int, out_root: str,
                   protocol: str, device: torch.device) -> None:
    """The trained model's PraNet-style maps of ``test_rows`` under ``out_root``, saved as ``protocol``
    (``evaluate.protocol``) says: min-max normalised or the probability as it is."""
    from hardgen.evaluation.metrics import MAP_MIN_MAX, check_protocol
    from hardgen.segmentation.predict import save_prediction_maps

    model = load_segmenter(spec, weights, device=device)
    maps = save_prediction_maps(model, test_rows, size=size, out_root=out_root, device=device,
                                min_max=MAP_MIN_MAX[check_protocol(protocol)])
    log.info("%d prediction maps in %s", len(maps), out_root)
