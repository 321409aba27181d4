"""PraNet-style segmenter training at a fixed iteration budget (:func:`train_segmenter`).

Training follows PraNet: Adam (or Polyp-PVT's AdamW), multi-scale training (each batch is rescaled to
``round(size * s / 32) * 32`` for every ``s`` in ``multi_scale`` and each scale takes its own optimiser step),
gradient *value* clipping (PraNet's ``clip_gradient`` clamps every gradient entry to ``[-grad_clip, grad_clip]``),
and the structure loss (weighted BCE, or the released code's plain BCE: ``segment.loss``, + weighted IoU) summed
over the segmenter's maps.

Budgets are fixed in **iterations** (batches), not epochs: every run of one architecture and seed takes the same
number of batches and so sees the same number of images whatever the size of its training set, and a policy with
more synthetic images does not get more optimiser steps. The batches come from an endless seeded stream of shuffled
passes over the run's pairs (:class:`hardgen.segmentation.datasets.SeededEpochStream`), cut after ``iterations``
batches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hardgen.core.io import write_csv
from hardgen.core.tracking import open_tracker
from hardgen.core.weights import save_state_dict
from hardgen.models.archs import map_count, output_maps
from hardgen.segmentation.build import SegmenterSpec, build_segmenter
from hardgen.segmentation.datasets import (
    FilteredSegmentationPairs,
    SeededEpochStream,
    SegmentationPairs,
    count_real_synthetic,
)
from hardgen.segmentation.losses import maps_structure_loss
from hardgen.segmentation.recipes import SegmentRecipe, make_optimizer, scaled_size

log = logging.getLogger(__name__)

#: Columns of ``train_log.csv``: one row per optimiser step.
TRAIN_LOG_COLUMNS = ("iteration", "step", "scale", "loss")


def train_segmenter(
    pairs_df: pd.DataFrame,
    spec: SegmenterSpec,
    out_dir: str | Path,
    recipe: SegmentRecipe,
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    config_key: str | None = None,
    ignore_masks: Sequence[np.ndarray | None] | None = None,
    report_to: str = "none",
    run_name: str | None = None,
) -> dict[str, Any]:
    """Train a segmenter on ``pairs_df`` (columns image, mask [+ sample_id, variant]) the PraNet way.

    ``recipe`` (:class:`hardgen.segmentation.recipes.SegmentRecipe`; :func:`hardgen.segmentation.recipes.resolve_recipe`
    reads it from the config) says how: ``size``, ``optimizer`` with ``weight_decay``, ``learning_rate``, ``lr_decay``,
    ``batch_size``, ``iterations``, ``multi_scale``, ``grad_clip``, ``augment``, ``loss`` and ``resize`` (the
    released loaders' soft PIL-bilinear masks or hardgen's binary ones). A multi-map segmenter's
    loss is the structure loss of the recipe's kind summed over its maps
    (:func:`hardgen.segmentation.losses.maps_structure_loss`), each upsampled to the mask size.

    The budget is ``iterations`` batches of ``batch_size`` pairs, whatever the number of pairs: the batches are cut
    from an endless seeded stream of shuffled passes over the pairs, so every run of one seed sees
    ``iterations × batch_size`` images. As in PraNet, each batch takes one optimiser step per ``multi_scale`` entry
    (rescaled to :func:`hardgen.segmentation.recipes.scaled_size`), so the optimiser steps are
    ``iterations × len(multi_scale)``.

    Writes ``out_dir/model.safetensors`` (full state dict; metadata records iterations, images_seen, real and
    synthetic counts) and ``out_dir/train_log.csv`` (:data:`TRAIN_LOG_COLUMNS`; one row per optimiser step), both
    atomically and only after the last step. Real vs synthetic pairs are told apart by
    :func:`hardgen.segmentation.datasets.count_real_synthetic`. Returns ``{final_loss, last_step_loss, seconds,
    n_train, real_images, synthetic_images, iterations, batch_size, images_seen, steps, seed, ignored_pixel_fraction,
    maps}`` and the recipe's :data:`hardgen.segmentation.recipes.RECIPE_FIELDS`, where ``final_loss`` is the mean loss
    over the last ``min(iterations, ceil(n_train / batch_size))`` iterations (about the last pass over the data).
    Deterministic for a given ``seed`` on a given device. A non-finite loss raises RuntimeError naming the step;
    nothing is saved then.

    ``ignore_masks`` (segment.pixel_filter; one entry per row of ``pairs_df``: None or a bool ``(size, size)`` map,
    see :class:`hardgen.segmentation.datasets.FilteredSegmentationPairs`) leaves those pixels out of the structure
    loss; the maps follow each pair's augmentation and multi-scale resizing (nearest). Real rows must have None (real
    pixels are never filtered). The summary's ``ignored_pixel_fraction`` is the fraction of all synthetic pixels (at
    ``size``, before augmentation) that the maps ignore; None without maps.

    ``report_to`` (``segment.report_to``; :mod:`hardgen.core.tracking`) sends the training curve, the loss and learning
    rate of every optimiser step, to a tracker as ``run_name`` (tensorboard: ``out_dir/tensorboard``). Training
    loss only: no test set is ever evaluated during training.
    """
    out_dir = Path(out_dir)
    device = torch.device(device)
    dataset, counts, ignored_fraction = _training_set(pairs_df, recipe, ignore_masks)
    torch.manual_seed(seed)  # model initialisation
    model = build_segmenter(spec, config_key).to(device).train()
    n_maps = map_count(model)
    optim = make_optimizer(model.parameters(), recipe.optimizer, recipe.learning_rate, recipe.weight_decay, device)
    stream = SeededEpochStream(len(dataset), recipe.iterations * recipe.batch_size, torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=recipe.batch_size, sampler=stream, num_workers=num_workers)
    log.info("training %s/%s (%d maps) on %d pairs (%d real, %d synthetic), sizes %s, %d iterations of %d "
             "(%.2f passes), %s lr %g wd %g decay %s, augment %s, loss %s, resize %s", spec.arch, spec.encoder, n_maps,
             len(dataset), counts["real_images"], counts["synthetic_images"],
             [scaled_size(recipe.size, s) for s in recipe.multi_scale],
             recipe.iterations, recipe.batch_size, recipe.iterations * recipe.batch_size / len(dataset),
             recipe.optimizer, recipe.learning_rate, recipe.weight_decay, recipe.lr_decay, recipe.augment, recipe.loss,
             recipe.resize)

    start = time.perf_counter()
    tracker = open_tracker(report_to, run_name or str(out_dir), out_dir,
                           config={"arch": spec.arch, "encoder": spec.encoder, "seed": int(seed), **recipe.record()},
                           key="segment.report_to")
    try:
        train_log = _optimise(model, optim, loader, recipe, device, filtered=ignore_masks is not None,
                              out_dir=out_dir, tracker=tracker)
    finally:
        if tracker is not None:
            tracker.finish()
    seconds = time.perf_counter() - start
    _save_run(out_dir, model, train_log, spec, recipe, seed, counts, ignored_fraction)
    last = min(recipe.iterations, math.ceil(len(dataset) / recipe.batch_size))
    summary = {
        "final_loss": float(train_log.loc[train_log["iteration"] > recipe.iterations - last, "loss"].mean()),
        "last_step_loss": float(train_log["loss"].iloc[-1]),
        "seconds": seconds,
        "n_train": len(dataset),
        **counts,
        "iterations": recipe.iterations,
        "batch_size": recipe.batch_size,
        "images_seen": recipe.iterations * recipe.batch_size,
        "steps": len(train_log),
        "seed": int(seed),
        "ignored_pixel_fraction": ignored_fraction,
        "maps": n_maps,
        **recipe.record(),
    }
    log.info("segmenter trained: %s", summary)
    return summary


def _training_set(pairs_df: pd.DataFrame, recipe: SegmentRecipe, ignore_masks: Sequence[np.ndarray | None] | None
                  ) -> tuple[SegmentationPairs, dict[str, int], float | None]:
    """The augmented training pairs (with ignore maps when given), their real and synthetic counts, and the
    fraction of synthetic pixels the maps ignore (None without maps)."""
    real_images, synthetic_images = count_real_synthetic(pairs_df)
    counts = {"real_images": real_images, "synthetic_images": synthetic_images}
    if ignore_masks is None:
        dataset = SegmentationPairs(pairs_df, recipe.size, augment=True, augmentation=recipe.augment,
                                    resize=recipe.resize)
        return dataset, counts, None
    dataset = FilteredSegmentationPairs(pairs_df, recipe.size, ignore_masks, augment=True, augmentation=recipe.augment,
                                        resize=recipe.resize)
    return dataset, counts, ignored_pixel_fraction(pairs_df, ignore_masks, recipe.size, synthetic_images)


def _optimise(model: nn.Module, optim: torch.optim.Optimizer, loader: DataLoader, recipe: SegmentRecipe,
              device: torch.device, filtered: bool, out_dir: Path, tracker: Any = None) -> pd.DataFrame:
    """The training loop: every batch of ``loader`` at every scale of ``recipe.multi_scale``, one optimiser step
    each, with the recipe's step decay and gradient clipping; the train log (:data:`TRAIN_LOG_COLUMNS`), each step's
    loss and learning rate also to ``tracker`` (an accelerate tracker, or None).

    ``filtered``: the batches carry ignore maps (:class:`hardgen.segmentation.datasets.FilteredSegmentationPairs`).
    Raises RuntimeError on a non-finite loss (naming the step and ``out_dir``) or a stream of the wrong length.
    """
    decay = recipe.lr_decay
    decay_after = None if decay is None else round(decay[0] * recipe.iterations)
    train_sizes = [scaled_size(recipe.size, s) for s in recipe.multi_scale]
    rows: list[dict[str, Any]] = []
    step = 0
    progress = tqdm(loader, total=recipe.iterations, desc="segmenter", unit="batch", leave=False)
    for iteration, batch in enumerate(progress, start=1):
        if decay_after is not None and iteration == decay_after + 1:
            for group in optim.param_groups:
                group["lr"] = recipe.learning_rate * decay[1]
            log.info("iteration %d: learning rate x %g -> %g", iteration, decay[1], recipe.learning_rate * decay[1])
        images, masks = batch[0].to(device), batch[1].to(device)
        valid = 1.0 - batch[2].to(device) if filtered else None
        for scale, train_size in zip(recipe.multi_scale, train_sizes):
            step += 1
            batch_images, batch_masks, batch_valid = _rescaled(images, masks, valid, recipe.size, train_size)
            optim.zero_grad(set_to_none=True)
            loss = maps_structure_loss(output_maps(model, batch_images), batch_masks, batch_valid, recipe.loss)
            if not torch.isfinite(loss):
                raise RuntimeError(
                    f"non-finite segmentation loss ({loss.item()}) at step {step} (iteration {iteration}, "
                    f"scale {scale}); nothing saved to {out_dir}"
                )
            loss.backward()
            if recipe.grad_clip is not None:
                nn.utils.clip_grad_value_(model.parameters(), recipe.grad_clip)
            optim.step()
            rows.append({"iteration": iteration, "step": step, "scale": float(scale), "loss": float(loss.item())})
            if tracker is not None:
                tracker.log({"train/loss": rows[-1]["loss"], "train/lr": float(optim.param_groups[0]["lr"])}, step=step)
            progress.set_postfix(loss=f"{loss.item():.4f}")
    if step != recipe.iterations * len(recipe.multi_scale):  # the stream is exactly iterations full batches
        raise RuntimeError(f"segmenter training ran {step} steps, "
                           f"expected {recipe.iterations * len(recipe.multi_scale)}")
    return pd.DataFrame(rows, columns=list(TRAIN_LOG_COLUMNS))


def _rescaled(images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None, size: int, train_size: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A batch at one scale of PraNet's multi-scale training: image and mask rescaled bilinearly, the valid-pixel
    map (None: nothing ignored) nearest so it stays binary; unchanged at ``train_size == size``."""
    if train_size == size:
        return images, masks, valid
    shape = (train_size, train_size)
    batch_images = F.interpolate(images, size=shape, mode="bilinear", align_corners=True)
    batch_masks = F.interpolate(masks, size=shape, mode="bilinear", align_corners=True)
    batch_valid = None if valid is None else F.interpolate(valid, size=shape, mode="nearest")
    return batch_images, batch_masks, batch_valid


def _save_run(out_dir: Path, model: nn.Module, train_log: pd.DataFrame, spec: SegmenterSpec, recipe: SegmentRecipe,
              seed: int, counts: dict[str, int], ignored_fraction: float | None) -> None:
    """Write ``model.safetensors`` (metadata: arch, encoder, size, budget, counts, seed, ignored pixel fraction) and
    ``train_log.csv`` to ``out_dir``, atomically."""
    metadata = {"arch": spec.arch, "encoder": spec.encoder, "size": str(recipe.size),
                "iterations": str(recipe.iterations), "batch_size": str(recipe.batch_size),
                "images_seen": str(recipe.iterations * recipe.batch_size), "real_images": str(counts["real_images"]),
                "synthetic_images": str(counts["synthetic_images"]), "seed": str(seed)}
    if ignored_fraction is not None:
        metadata["ignored_pixel_fraction"] = str(ignored_fraction)
    save_state_dict(out_dir / "model.safetensors", model.state_dict(), metadata=metadata)
    write_csv(out_dir / "train_log.csv", train_log)


def ignored_pixel_fraction(pairs_df: pd.DataFrame, ignore_masks: Sequence[np.ndarray | None], size: int,
                           synthetic_images: int) -> float | None:
    """Fraction of all synthetic pixels (at ``size``) that ``ignore_masks`` ignore (None without synthetic pairs);
    refuses a map on a real row."""
    if len(ignore_masks) != len(pairs_df):
        raise ValueError(f"ignore maps: {len(ignore_masks)} entries for {len(pairs_df)} pairs")
    variants = pairs_df["variant"].astype(str).tolist() if "variant" in pairs_df.columns else ["real"] * len(pairs_df)
    ignored = 0
    for row, (variant, entry) in enumerate(zip(variants, ignore_masks)):
        if entry is None:
            continue
        if variant == "real":
            raise ValueError(f"ignore maps: pair {row} is a real image; real pixels are never filtered")
        ignored += int(np.count_nonzero(entry))
    if synthetic_images == 0:
        return None
    return ignored / (synthetic_images * size * size)
