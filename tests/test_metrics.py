"""Tests for hardgen.metrics: per-image PraNet metrics via pysodmetrics, streaming evaluation, summaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from hardgen import metrics
from hardgen.io import write_image, write_mask


class RedChannelOracle(nn.Module):
    """Predicts foreground exactly where the (ImageNet-normalised) red channel is bright."""

    def __init__(self, gain: float = 10.0) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * x[:, 0:1]  # red 255 -> +2.2, red 0 -> -2.1 after normalisation


class ConstantLogits(nn.Module):
    """Predicts the same logit everywhere."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, 0:1], self.value)


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


@pytest.fixture()
def test_df(tmp_path: Path) -> pd.DataFrame:
    """Manifest-like rows: two test sets, images whose red channel marks the polyp exactly."""
    rows = []
    specs = [("CVC-300", 64, 64, 5.0), ("CVC-300", 64, 64, 10.0), ("Kvasir", 64, 64, 14.0),
             ("Kvasir", 64, 64, 8.0), ("Kvasir", 64, 64, 12.0)]
    for i, (split, h, w, r) in enumerate(specs):
        mask = _disc(h, w, h / 2, w / 2 + i, r)
        image = np.zeros((h, w, 3), dtype=np.uint8)
        image[..., 1:] = 90
        image[mask, 0] = 255
        write_image(tmp_path / split / "images" / f"{i}.png", image)
        write_mask(tmp_path / split / "masks" / f"{i}.png", mask)
        rows.append({"id": f"{split}/{i}", "split": split, "image": str(tmp_path / split / "images" / f"{i}.png"),
                     "mask": str(tmp_path / split / "masks" / f"{i}.png"), "width": w, "height": h,
                     "fg_fraction": mask.mean()})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------- per-image metrics
def test_image_metrics_perfect_prediction() -> None:
    gt = _disc(48, 40, 20, 22, 9)
    scores = metrics.image_metrics(gt.astype(np.float64), gt)
    assert set(scores) == set(metrics.METRICS)
    assert scores["mDice"] == pytest.approx(1.0)
    assert scores["mIoU"] == pytest.approx(1.0)
    assert scores["MAE"] == pytest.approx(0.0)
    assert scores["Sm"] == pytest.approx(1.0, abs=1e-6)
    assert scores["wFm"] == pytest.approx(1.0, abs=1e-6)
    assert scores["maxEm"] == pytest.approx(1.0, abs=1e-3)


def test_image_metrics_all_zero_prediction() -> None:
    gt = _disc(48, 40, 20, 22, 9)
    scores = metrics.image_metrics(np.zeros(gt.shape), gt)
    assert scores["mDice"] == 0.0
    assert scores["mIoU"] == 0.0
    assert scores["wFm"] == pytest.approx(0.0, abs=1e-9)
    assert scores["MAE"] == pytest.approx(gt.mean())
    assert scores["Sm"] < 0.6
    assert scores["meanEm"] < 0.5


def test_image_metrics_partial_overlap_matches_hand_counts() -> None:
    gt = np.zeros((20, 20), dtype=bool)
    gt[5:15, 5:15] = True  # 100 px
    pred = np.zeros((20, 20))
    pred[5:15, 10:20] = 0.9  # 50 px overlap, 50 px false positive
    pred[0, 0] = 0.4  # below the 0.5 threshold: not foreground for Dice / IoU
    scores = metrics.image_metrics(pred, gt)
    assert scores["mDice"] == pytest.approx(2 * 50 / (100 + 100))
    assert scores["mIoU"] == pytest.approx(50 / 150)
    expected_mae = (50 * 0.1 + 50 * 0.9 + 50 * 1.0 + 0.4) / 400
    assert scores["MAE"] == pytest.approx(expected_mae)
    assert 0 < scores["meanEm"] <= scores["maxEm"] <= 1


def test_image_metrics_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        metrics.image_metrics(np.zeros((4, 4)), np.zeros((4, 5), dtype=bool))


# ---------------------------------------------------------------------------- evaluate_segmenter
def test_evaluate_perfect_model_rows_and_values(test_df: pd.DataFrame) -> None:
    long = metrics.evaluate_segmenter(RedChannelOracle(), test_df, size=64, batch_size=2)
    assert list(long.columns) == ["testset", "image", "metric", "value"]
    assert len(long) == len(test_df) * len(metrics.METRICS)
    assert long.groupby("image").size().eq(len(metrics.METRICS)).all()
    assert long["image"].unique().tolist() == test_df["id"].tolist()
    assert long.groupby("testset")["image"].nunique().to_dict() == {"CVC-300": 2, "Kvasir": 3}
    by_metric = long.groupby("metric")["value"]
    assert by_metric.min()["mDice"] == pytest.approx(1.0)
    assert by_metric.min()["mIoU"] == pytest.approx(1.0)
    assert by_metric.max()["MAE"] < 1e-6


def test_evaluate_all_zero_model(test_df: pd.DataFrame) -> None:
    long = metrics.evaluate_segmenter(ConstantLogits(-30.0), test_df, size=64)
    dice = long[long["metric"] == "mDice"]["value"]
    assert (dice == 0.0).all()
    mae = long[long["metric"] == "MAE"].set_index("image")["value"]
    expected = test_df.set_index("id")["fg_fraction"]
    np.testing.assert_allclose(mae.loc[expected.index].to_numpy(), expected.to_numpy(), atol=1e-9)


def test_evaluate_upsamples_to_gt_size_and_batches_do_not_matter(tmp_path: Path) -> None:
    rows = []
    for i, (h, w) in enumerate([(72, 96), (100, 80), (64, 64)]):
        mask = _disc(h, w, h / 2, w / 2, min(h, w) / 4)
        image = np.zeros((h, w, 3), dtype=np.uint8)
        image[mask, 0] = 255
        write_image(tmp_path / f"i{i}.png", image)
        write_mask(tmp_path / f"m{i}.png", mask)
        rows.append({"split": "ETIS", "image": str(tmp_path / f"i{i}.png"), "mask": str(tmp_path / f"m{i}.png")})
    frame = pd.DataFrame(rows)  # no id column: image file names identify rows
    one = metrics.evaluate_segmenter(RedChannelOracle(), frame, size=64, batch_size=1)
    many = metrics.evaluate_segmenter(RedChannelOracle(), frame, size=64, batch_size=8)
    pd.testing.assert_frame_equal(one, many)
    assert one["image"].unique().tolist() == ["i0.png", "i1.png", "i2.png"]
    dice = one[one["metric"] == "mDice"]["value"]
    assert (dice > 0.9).all()  # resize to 64 and back to the GT size keeps the disc


def test_evaluate_minmax_normalisation_option(test_df: pd.DataFrame) -> None:
    raw = metrics.evaluate_segmenter(ConstantLogits(0.0), test_df, size=64)
    normed = metrics.evaluate_segmenter(ConstantLogits(0.0), test_df, size=64, minmax_normalize=True)
    raw_mae = raw[raw["metric"] == "MAE"]["value"]
    normed_mae = normed[normed["metric"] == "MAE"]["value"].to_numpy()
    assert raw_mae.to_numpy() == pytest.approx(0.5)  # sigmoid(0) everywhere
    # PraNet's (p - min) / (max - min + eps) maps a constant map to 0: MAE = foreground fraction.
    np.testing.assert_allclose(normed_mae, test_df["fg_fraction"].to_numpy(), atol=1e-6)


def test_evaluate_errors_name_the_problem(test_df: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing column.*'split'"):
        metrics.evaluate_segmenter(RedChannelOracle(), test_df.drop(columns="split"), size=64)
    with pytest.raises(ValueError, match="no rows"):
        metrics.evaluate_segmenter(RedChannelOracle(), test_df.iloc[:0], size=64)
    with pytest.raises(ValueError, match=r"segment\.size"):
        metrics.evaluate_segmenter(RedChannelOracle(), test_df, size=50)
    write_mask(tmp_path / "wrong.png", np.zeros((8, 8), dtype=bool))
    bad = test_df.copy()
    bad.loc[1, "mask"] = str(tmp_path / "wrong.png")
    with pytest.raises(ValueError, match="wrong.png"):
        metrics.evaluate_segmenter(RedChannelOracle(), bad, size=64)


# -------------------------------------------------------------------------------------- summarize
def test_summarize_means_per_testset_in_metric_order() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for testset, n in (("Kvasir", 3), ("CVC-300", 2)):
        for i in range(n):
            for name in metrics.METRICS:
                rows.append((testset, f"{testset}-{i}", name, float(rng.random())))
    long = pd.DataFrame(rows, columns=["testset", "image", "metric", "value"])
    summary = metrics.summarize(long)
    assert list(summary.columns) == ["testset", "metric", "value"]
    assert len(summary) == 2 * len(metrics.METRICS)
    assert summary["testset"].tolist() == ["Kvasir"] * 7 + ["CVC-300"] * 7
    assert summary["metric"].tolist()[:7] == list(metrics.METRICS)
    for testset, metric_name, value in summary.itertuples(index=False):
        subset = long[(long["testset"] == testset) & (long["metric"] == metric_name)]["value"]
        assert value == pytest.approx(subset.mean())


def test_summarize_rejects_bad_tables() -> None:
    with pytest.raises(ValueError, match=r"missing column.*'value'"):
        metrics.summarize(pd.DataFrame({"testset": ["a"], "image": ["x"], "metric": ["mDice"]}))
    with pytest.raises(ValueError, match="unknown metric.*Dice"):
        metrics.summarize(pd.DataFrame({"testset": ["a"], "image": ["x"], "metric": ["Dice"], "value": [1.0]}))


def test_metric_names_are_the_published_set() -> None:
    assert metrics.METRICS == ("mDice", "mIoU", "wFm", "Sm", "meanEm", "maxEm", "MAE")
