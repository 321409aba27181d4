"""Per-sample measures of (image, mask) pairs, e.g. generated samples: a trained segmenter's loss and Dice on each
(:func:`sample_losses`: hardness and the fidelity guard's first view) and each mask's foreground fraction
(:func:`foreground_fractions`: the covariate of the hardness-transfer table).
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hardgen.core.io import read_mask
from hardgen.models.archs import predict_logits
from hardgen.segmentation.datasets import (
    SegmentationPairs,
    check_pairs,
    check_size,
    sample_ids,
)
from hardgen.segmentation.losses import structure_loss_per_sample


@torch.no_grad()
def sample_losses(
    model: nn.Module,
    pairs_df: pd.DataFrame,
    size: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Per-sample structure loss and Dice of a trained segmenter on (image, mask) pairs, e.g. generated samples.

    Images and masks are resized to ``size`` without augmentation; the model is put in eval mode. Returns
    a DataFrame with columns ``sample_id`` (the column if present, else the image file stem), ``loss``
    and ``dice`` (the prediction thresholded at sigmoid 0.5 against the mask, both at ``size``; an empty
    prediction on an empty mask is 1: :func:`hardgen.evaluation.metrics.prediction_dice`), in input order. Higher
    loss = harder sample for this segmenter; low Dice on a generated sample = the segmenter does not find
    the polyp its conditioning mask promises (the fidelity guard).
    """
    from hardgen.evaluation.metrics import prediction_dice

    check_size(size)
    dataset = SegmentationPairs(pairs_df, size, augment=False)
    model = model.to(device).eval()
    ids: list[str] = []
    losses: list[float] = []
    dices: list[float] = []
    for images, masks, batch_ids in tqdm(DataLoader(dataset, batch_size=batch_size), desc="sample losses",
                                         unit="batch", leave=False):
        logits = predict_logits(model, images.to(device))
        losses.extend(structure_loss_per_sample(logits, masks.to(device)).cpu().tolist())
        dices.extend(prediction_dice(logits, masks).tolist())
        ids.extend(batch_ids)
    return pd.DataFrame({"sample_id": ids, "loss": losses, "dice": dices})


def foreground_fractions(pairs_df: pd.DataFrame) -> pd.DataFrame:
    """Per sample, the fraction of its mask's pixels above 127 (the file as stored, not resized).

    Columns ``sample_id`` (as :func:`sample_losses`) and ``fg_fraction``, in input order; the
    covariate the hardness-transfer table partials out (bigger polyps are easier to segment).
    """
    check_pairs(pairs_df, "pairs table")
    fractions = [float(read_mask(path).mean()) for path in pairs_df["mask"]]
    return pd.DataFrame({"sample_id": sample_ids(pairs_df), "fg_fraction": fractions})
