"""PraNet / Polyp-PVT style evaluation of a segmenter, computed per image with PySODMetrics.

Protocol (PraNet's ``test.py`` + evaluation): each test image is resized to ``size`` x ``size`` and
ImageNet-normalised, the logits are upsampled bilinearly (``align_corners=False``) to the ground-truth
mask's own size and passed through a sigmoid; optionally min-max normalised per image (PraNet does this
before saving its PNG maps; off by default so that an all-background prediction stays all-background).
The ground truth is the mask file thresholded at 127 (:func:`hardgen.io.read_mask`).

Per image, with ``py_sod_metrics`` on the probability map ``p`` in [0, 1]:

- ``mDice`` / ``mIoU``: Dice / IoU of ``p > 0.5`` against the ground truth (``FmeasureV2`` binary mode
  with ``DICEHandler`` / ``IOUHandler``); an empty ground truth with an empty prediction scores 0
  (PySODMetrics' zero-denominator convention).
- ``wFm``: ``WeightedFmeasure`` (beta = 1; 0 for an empty ground truth, library convention).
- ``Sm``: ``Smeasure`` (alpha = 0.5).
- ``meanEm`` / ``maxEm``: mean / max of ``Emeasure``'s curve over the 256 thresholds.
- ``MAE``: mean absolute error between ``p`` and the ground truth.

Dataset scores are per-image means (:func:`summarize`), as PraNet averages per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import py_sod_metrics
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hardgen.io import read_pair
from hardgen.segment import eval_transform

#: Metric names, in report order. Higher is better for all except MAE.
METRICS = ("mDice", "mIoU", "wFm", "Sm", "meanEm", "maxEm", "MAE")

#: Threshold that turns probabilities into the binary map behind mDice / mIoU.
BINARY_THRESHOLD = 0.5


def image_metrics(prob: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """All :data:`METRICS` for one probability map ``prob`` (HxW, [0, 1]) against a bool mask ``gt`` (HxW)."""
    prob = np.clip(np.asarray(prob, dtype=np.float64), 0.0, 1.0)
    gt = np.asarray(gt, dtype=bool)
    if prob.shape != gt.shape:
        raise ValueError(f"prediction shape {prob.shape} differs from ground truth shape {gt.shape}")
    # Fresh evaluators per image: each keeps a list of per-image results, and we only want this one.
    binary = py_sod_metrics.FmeasureV2(
        metric_handlers={
            "dice": py_sod_metrics.DICEHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
            "iou": py_sod_metrics.IOUHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
        }
    )
    weighted_f = py_sod_metrics.WeightedFmeasure()
    s_measure = py_sod_metrics.Smeasure()
    e_measure = py_sod_metrics.Emeasure()
    mae = py_sod_metrics.MAE()
    for evaluator in (binary, weighted_f, s_measure, e_measure, mae):
        # normalize=False: inputs are already a [0, 1] map and a bool mask (no re-thresholding at 128)
        evaluator.step(pred=prob, gt=gt, normalize=False)
    binary_results = binary.get_results()
    em_curve = np.asarray(e_measure.get_results()["em"]["curve"], dtype=np.float64)
    return {
        "mDice": float(binary_results["dice"]["binary"]),
        "mIoU": float(binary_results["iou"]["binary"]),
        "wFm": float(weighted_f.get_results()["wfm"]),
        "Sm": float(s_measure.get_results()["sm"]),
        "meanEm": float(em_curve.mean()),
        "maxEm": float(em_curve.max()),
        "MAE": float(mae.get_results()["mae"]),
    }


class _TestImages(Dataset):
    """Test images resized/normalised for the model, with their full-resolution bool GT masks."""

    def __init__(self, test_df: pd.DataFrame, size: int) -> None:
        self.images = [str(p) for p in test_df["image"]]
        self.masks = [str(p) for p in test_df["mask"]]
        self.testsets = [str(s) for s in test_df["split"]]
        ids = test_df["id"] if "id" in test_df.columns else [Path(p).name for p in self.images]
        self.ids = [str(i) for i in ids]
        self.transform = eval_transform(size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, gt = read_pair(self.images[index], self.masks[index])
        return {
            "image": self.transform(image=image)["image"].float(),
            "gt": gt,
            "testset": self.testsets[index],
            "id": self.ids[index],
        }


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the equally sized model inputs; keep GT masks (sizes differ) as a list."""
    return {
        "image": torch.stack([item["image"] for item in items]),
        "gt": [item["gt"] for item in items],
        "testset": [item["testset"] for item in items],
        "id": [item["id"] for item in items],
    }


@torch.no_grad()
def evaluate_segmenter(
    model: nn.Module,
    test_df: pd.DataFrame,
    size: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    minmax_normalize: bool = False,
) -> pd.DataFrame:
    """Evaluate ``model`` on manifest rows of the test splits (columns id, split, image, mask, ...).

    Returns a long DataFrame with columns ``testset`` (the row's ``split``), ``image`` (the row's
    ``id``, else the image file name), ``metric`` (one of :data:`METRICS`) and ``value``: one row per
    image per metric, in input order. Streams ``batch_size`` images at a time. ``minmax_normalize``
    rescales each probability map to [0, 1] first, exactly as PraNet's test script does.
    """
    missing = [col for col in ("split", "image", "mask") if col not in test_df.columns]
    if missing:
        raise ValueError(f"test table: missing column(s) {missing}; got {list(test_df.columns)}")
    if len(test_df) == 0:
        raise ValueError("test table: no rows to evaluate")
    if size <= 0 or size % 32:
        raise ValueError(f"segment.size: {size} must be a positive multiple of 32 (smp encoders)")
    model = model.to(device).eval()
    loader = DataLoader(_TestImages(test_df, size), batch_size=batch_size, collate_fn=_collate)
    rows: list[tuple[str, str, str, float]] = []
    for batch in tqdm(loader, desc="evaluate", unit="batch", leave=False):
        logits = model(batch["image"].to(device)).float()
        for i, gt in enumerate(batch["gt"]):
            # PraNet upsamples the logits to the GT's own size, then applies the sigmoid.
            up = F.interpolate(logits[i : i + 1], size=gt.shape, mode="bilinear", align_corners=False)
            prob = torch.sigmoid(up)[0, 0].cpu().numpy().astype(np.float64)
            if minmax_normalize:
                prob = (prob - prob.min()) / (prob.max() - prob.min() + 1e-8)
            scores = image_metrics(prob, gt)
            rows.extend((batch["testset"][i], batch["id"][i], name, scores[name]) for name in METRICS)
    return pd.DataFrame(rows, columns=["testset", "image", "metric", "value"])


def summarize(long_df: pd.DataFrame) -> pd.DataFrame:
    """Per-testset mean over images of each metric: columns ``testset, metric, value``.

    Test sets keep their order of first appearance; metrics follow :data:`METRICS` order.
    """
    missing = [col for col in ("testset", "image", "metric", "value") if col not in long_df.columns]
    if missing:
        raise ValueError(f"evaluation table: missing column(s) {missing}; got {list(long_df.columns)}")
    unknown = sorted(set(long_df["metric"]) - set(METRICS))
    if unknown:
        raise ValueError(f"evaluation table: unknown metric name(s) {unknown}; expected {list(METRICS)}")
    means = long_df.groupby(["testset", "metric"], sort=False)["value"].mean().reset_index()
    testset_order = {name: i for i, name in enumerate(pd.unique(long_df["testset"]))}
    metric_order = {name: i for i, name in enumerate(METRICS)}
    means = means.sort_values(
        by=["testset", "metric"],
        key=lambda col: col.map(testset_order if col.name == "testset" else metric_order),
    )
    return means.reset_index(drop=True)[["testset", "metric", "value"]]


#: The name docs/architecture.md uses for :func:`evaluate_segmenter`.
evaluate_model = evaluate_segmenter
