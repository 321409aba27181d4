"""Prediction maps of a trained segmenter, saved as PraNet's test script saves them.

Each test image is resized to ``size`` x ``size`` and ImageNet-normalised
(:func:`hardgen.segmentation.datasets.eval_transform`), the logits are upsampled bilinearly (``align_corners=False``) to the ground-truth mask's own size, passed through a
sigmoid, min-max normalised per image, ``(p - min) / (max - min + 1e-8)``, and written as an 8-bit PNG,
``round(255 p)``, at ``<root>/<testset>/<stem>.png`` (``stem`` = the GT file's stem). The maps are then scored by
:mod:`hardgen.evaluation.metrics` (the polyp toolbox's definitions), which needs no model and no torch. Under the ``binary``
protocol (``min_max=False``, :data:`hardgen.evaluation.metrics.MAP_MIN_MAX`) the sigmoid probability is saved as it is,
``round(255 p)``, so that ``map >= 128`` is the fixed 0.5 threshold.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hardgen.core.io import DataError, read_pair, write_image
from hardgen.evaluation.metrics import (
    MAP_MIN_MAX,
    check_protocol,
    evaluate_table,
    prediction_table,
)
from hardgen.models.archs import predict_logits
from hardgen.segmentation.datasets import check_size, eval_transform


class _TestImages(Dataset):
    """Test images resized/normalised for the model, with the size of their GT mask."""

    def __init__(self, test_df: pd.DataFrame, size: int) -> None:
        self.images = [str(p) for p in test_df["image"]]
        self.masks = [str(p) for p in test_df["mask"]]
        self.transform = eval_transform(size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, gt = read_pair(self.images[index], self.masks[index])  # checks image and mask sizes agree
        return {"image": self.transform(image=image)["image"].float(), "shape": gt.shape, "index": index}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([item["image"] for item in items]),
        "shape": [item["shape"] for item in items],
        "index": [item["index"] for item in items],
    }


def _clear_map_folders(out_root: Path) -> None:
    """Remove the test-set folders of an existing ``out_root`` (flat folders of files only, else refuse)."""
    if out_root.exists() and not out_root.is_dir():
        raise DataError(f"{out_root}: prediction root is not a folder")
    if not out_root.is_dir():
        return
    for folder in sorted(p for p in out_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        nested = [p for p in folder.iterdir() if p.is_dir()]
        if nested:
            raise DataError(f"{folder}: not a folder of prediction maps (holds {nested[0]}); refusing to clear it")
        shutil.rmtree(folder)


@torch.no_grad()
def save_prediction_maps(
    model: nn.Module,
    test_df: pd.DataFrame,
    size: int,
    out_root: str | Path,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    min_max: bool = True,
) -> pd.DataFrame:
    """Write PraNet-style 8-bit maps ``<out_root>/<split>/<mask stem>.png`` for manifest rows (split, image, mask).

    ``min_max``: normalise each map to 0..1 first (the polyp toolbox's maps); False: the probability as it is (the
    binary protocol's). Existing test-set folders of ``out_root`` are removed first, so no stale map is ever scored. Returns
    ``testset, stem, pred, gt`` (paths) in row order.
    """
    check_size(size)
    out_root = Path(out_root)
    table = prediction_table(test_df, out_root)
    _clear_map_folders(out_root)
    model = model.to(device).eval()
    loader = DataLoader(_TestImages(test_df, size), batch_size=batch_size, collate_fn=_collate)
    for batch in tqdm(loader, desc="predict", unit="batch", leave=False):
        logits = predict_logits(model, batch["image"].to(device)).float()
        for i, (shape, index) in enumerate(zip(batch["shape"], batch["index"])):
            # PraNet: upsample the logits to the GT's own size, sigmoid, min-max normalise (toolbox), save 8-bit.
            up = F.interpolate(logits[i : i + 1], size=shape, mode="bilinear", align_corners=False)
            prob = torch.sigmoid(up)[0, 0].cpu().numpy().astype(np.float64)
            if min_max:
                prob = (prob - prob.min()) / (prob.max() - prob.min() + 1e-8)
            write_image(table["pred"].iat[index], np.round(prob * 255.0).clip(0, 255).astype(np.uint8))
    return table


def evaluate_segmenter(
    model: nn.Module,
    test_df: pd.DataFrame,
    size: int,
    pred_root: str | Path,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    protocol: str = "polyp_toolbox",
) -> pd.DataFrame:
    """:func:`save_prediction_maps` into ``pred_root`` (maps as ``protocol`` wants them), then score the saved maps
    against the rows' GT files.

    Scoring is :func:`score_testsets` (as in :func:`evaluate_maps`) over the test sets sorted by name; returns
    ``testset, metric, value`` including the :data:`OVERALL` rows.
    """
    written = save_prediction_maps(model, test_df, size, pred_root, batch_size=batch_size, device=device,
                                   min_max=MAP_MIN_MAX[check_protocol(protocol)])
    return evaluate_table(written, protocol=protocol)
