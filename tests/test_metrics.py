"""Tests for hardgen.evaluation.metrics: the polyp toolbox's protocol via PySODMetrics, checked against an independent NumPy
transcription of the MATLAB code (tests/toolbox_reference.py), which is itself checked on hand-computable cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import toolbox_reference as ref
import torch
from PIL import Image
from scipy.ndimage import distance_transform_edt, gaussian_filter, shift
from torch import nn

from hardgen.core.io import DataError, write_image, write_mask
from hardgen.evaluation import metrics
from hardgen.segmentation import predict

#: hardgen metric name -> the reference's (toolbox) name
TOOLBOX_NAMES = {
    "mDice": "meanDic", "mIoU": "meanIoU", "wFm": "wFm", "Sm": "Sm", "meanEm": "meanEm", "maxEm": "maxEm",
    "MAE": "mae", "maxDice": "maxDic", "maxIoU": "maxIoU", "Dice@0.5": "dice05", "IoU@0.5": "iou05",
}


# ------------------------------------------------------------------------------------------------ helpers
class RedChannelOracle(nn.Module):
    """Predicts foreground exactly where the (ImageNet-normalised) red channel is bright."""

    def __init__(self, gain: float = 10.0) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * x[:, 0:1]  # red 255 -> +2.2, red 0 -> -2.1 after normalisation


class ConstantLogits(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, 0:1], self.value)


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    return _ellipse(h, w, cy, cx, r, r)


def _u8(x: np.ndarray) -> np.ndarray:
    """PraNet's saving: per-image min-max, round to 8 bits."""
    x = np.asarray(x, dtype=np.float64)
    return np.round(255 * (x - x.min()) / (x.max() - x.min() + 1e-8)).astype(np.uint8)


def _toolbox_case(kind: str, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An 8-bit prediction map of a given kind for a bool GT."""
    soft = gaussian_filter(gt.astype(np.float64), 1.5)
    if kind == "blurred":
        return _u8(gaussian_filter(gt.astype(np.float64), 3.0))
    if kind == "shifted":
        return _u8(shift(soft, (3, -5), order=1))
    if kind == "low-contrast":  # values squeezed into 100..140: the min-max normalisation stretches them
        return np.round(100 + 40 * soft).astype(np.uint8)
    if kind == "missed":
        return np.zeros(gt.shape, dtype=np.uint8)
    if kind == "noisy":
        return _u8(soft + 0.35 * rng.standard_normal(gt.shape))
    if kind == "half":  # finds one of two polyps
        return _u8(soft * (np.arange(gt.shape[1]) < gt.shape[1] // 2))
    if kind == "constant":  # constant map: passes the normalisation unchanged (90 / 255 everywhere)
        return np.full(gt.shape, 90, dtype=np.uint8)
    if kind == "false-positive":
        return _u8(_ellipse(*gt.shape, 10, 12, 5, 7) + 0.2 * rng.standard_normal(gt.shape))
    raise ValueError(kind)


#: (test set, stem, (h, w), GT kind, map kind, GT suffix); several test sets of several images
TOOLBOX_CASES = [
    ("CVC-300", "blur", (40, 52), "ellipse", "blurred", ".png"),
    ("CVC-300", "shift", (40, 52), "ellipse", "shifted", ".png"),
    ("CVC-300", "low", (37, 45), "ellipse", "low-contrast", ".png"),
    ("CVC-300", "miss", (40, 52), "ellipse", "missed", ".png"),
    ("CVC-300", "noise", (37, 45), "ellipse", "noisy", ".png"),
    ("ETIS-LaribPolypDB", "empty-fp", (33, 41), "empty", "false-positive", ".png"),
    ("ETIS-LaribPolypDB", "empty-ok", (33, 41), "empty", "missed", ".png"),
    ("ETIS-LaribPolypDB", "full", (23, 31), "full", "noisy", ".png"),
    ("ETIS-LaribPolypDB", "two", (40, 52), "two", "half", ".png"),
    ("ETIS-LaribPolypDB", "const", (40, 52), "ellipse", "constant", ".png"),
    ("ETIS-LaribPolypDB", "square", (40, 52), "square", "blurred", ".png"),
    ("Kvasir", "k1", (41, 53), "jpeg", "blurred", ".jpg"),
    ("Kvasir", "k2", (39, 47), "jpeg", "shifted", ".jpg"),
    ("Kvasir", "k3", (45, 37), "jpeg", "noisy", ".jpg"),
    ("Kvasir", "k4", (41, 53), "jpeg", "low-contrast", ".jpg"),
]


def _gt_image(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """GT file content (uint8); 'jpeg' has grey edges (and is saved as JPEG)."""
    ellipse = _ellipse(h, w, h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65), h * 0.25, w * 0.2)
    if kind == "ellipse":
        return ellipse.astype(np.uint8) * 255
    if kind == "empty":
        return np.zeros((h, w), dtype=np.uint8)
    if kind == "full":
        return np.full((h, w), 255, dtype=np.uint8)
    if kind == "square":  # even extents: the centroid is a rounding tie (MATLAB rounds it up, PySODMetrics down)
        square = np.zeros((h, w), dtype=np.uint8)
        square[9:21, 14:28] = 255
        return square
    if kind == "two":
        return (_ellipse(h, w, 12, 12, 6, 8) | _ellipse(h, w, 27, 38, 7, 9)).astype(np.uint8) * 255
    if kind == "jpeg":
        return np.round(255 * gaussian_filter(ellipse.astype(np.float64), 1.0)).astype(np.uint8)
    raise ValueError(kind)


@pytest.fixture(scope="module")
def toolbox_tree(tmp_path_factory) -> tuple[Path, Path, dict[str, list[tuple[Path, Path]]]]:
    """A PraNet-layout GT tree and a prediction tree; also the expected (map, GT) pairs per test set."""
    root = tmp_path_factory.mktemp("toolbox")
    rng = np.random.default_rng(7)
    pairs: dict[str, list[tuple[Path, Path]]] = {}
    for testset, stem, (h, w), gt_kind, map_kind, suffix in TOOLBOX_CASES:
        gt_file = _gt_image(gt_kind, h, w, rng)
        pred = _toolbox_case(map_kind, gt_file > 128, rng)
        pred_path = root / "pred" / testset / f"{stem}.png"
        gt_path = root / "gt" / testset / "masks" / f"{stem}{suffix}"
        write_image(pred_path, pred)
        write_image(gt_path, gt_file)
        pairs.setdefault(testset, []).append((pred_path, gt_path))
    return root / "pred", root / "gt", pairs


# ----------------------------------------------------------------- the MATLAB reference on hand-computable cases
def _rect_gt(h: int = 20, w: int = 30) -> np.ndarray:
    gt = np.zeros((h, w), dtype=bool)
    gt[5:13, 8:20] = True  # G = 96 of N = 600
    return gt


def test_reference_thresholds_are_matlab_colon() -> None:
    t = ref.THRESHOLDS
    assert len(t) == 256 and t[0] == 1.0 and t[-1] == 0.0
    assert np.all(np.diff(t) < 0)
    np.testing.assert_allclose(t, (255 - np.arange(256)) / 255, rtol=0, atol=2e-16)


def test_reference_mapminmax() -> None:
    low = np.array([[100, 120], [140, 130]], dtype=np.uint8)
    np.testing.assert_allclose(ref.mapminmax01(ref.im2double_u8(low)), [[0, 0.5], [1, 0.75]], atol=1e-15)
    constant = np.full((3, 4), 90, dtype=np.uint8)
    assert np.array_equal(ref.mapminmax01(ref.im2double_u8(constant)), np.full((3, 4), 90 / 255))


def test_reference_perfect_map() -> None:
    gt = _rect_gt()
    g, n = gt.sum(), gt.size
    r = ref.score_image(gt.astype(np.uint8) * 255, gt)
    # every threshold > 0 recovers the GT; t = 0 takes the whole image (map >= 0)
    assert np.all(r.dice[:-1] == 1.0) and r.dice[-1] == pytest.approx(2 * g / (g + n))
    assert np.all(r.iou[:-1] == 1.0) and r.iou[-1] == pytest.approx(g / n)
    s = ref.summarize([r])
    assert s["meanDic"] == pytest.approx((255 + 2 * g / (g + n)) / 256, abs=1e-12)
    assert s["maxDic"] == 1.0 and s["dice05"] == 1.0 and s["mae"] == 0.0
    # E-measure: an exact match scores N / (N - 1) (the toolbox divides by w h - 1); the all-ones map at t = 0
    # has zero alignment everywhere: 1/4 per pixel
    np.testing.assert_allclose(r.em[:-1], n / (n - 1), rtol=1e-12)
    assert r.em[-1] == pytest.approx(n / 4 / (n - 1), rel=1e-12)
    assert s["maxEm"] == pytest.approx(n / (n - 1), rel=1e-12)
    assert r.sm == pytest.approx(1.0, abs=1e-12)
    assert r.wfm == pytest.approx(1.0, abs=1e-12)


def test_reference_all_zero_map_against_a_polyp() -> None:
    gt = _rect_gt()
    g, n = gt.sum(), gt.size
    r = ref.score_image(np.zeros(gt.shape, dtype=np.uint8), gt)
    assert np.all(r.dice[:-1] == 0.0) and np.all(r.iou[:-1] == 0.0)  # nothing predicted: TP = 0
    s = ref.summarize([r])
    assert s["meanDic"] == pytest.approx(2 * g / (g + n) / 256, abs=1e-12)  # only t = 0 hits the polyp
    assert s["meanIoU"] == pytest.approx(g / n / 256, abs=1e-12)
    assert s["dice05"] == 0.0 and s["mae"] == pytest.approx(g / n)
    np.testing.assert_allclose(r.em, n / 4 / (n - 1), rtol=1e-12)  # constant binary maps: no alignment
    assert r.wfm == 0.0


def test_reference_empty_gt() -> None:
    gt = np.zeros((20, 30), dtype=bool)
    n = gt.size
    r = ref.score_image(np.zeros(gt.shape, dtype=np.uint8), gt)
    assert np.all(r.dice == 0.0) and np.all(r.iou == 0.0)  # TP is always 0
    np.testing.assert_allclose(r.em[:-1], n / (n - 1), rtol=1e-12)  # 1 - FM, FM empty
    assert r.em[-1] == 0.0  # t = 0: FM is everything
    assert r.sm == 1.0 and r.mae == 0.0 and r.wfm == 0.0
    fp = np.zeros(gt.shape, dtype=np.uint8)
    fp[:4, :5] = 255
    r = ref.score_image(fp, gt)
    assert r.sm == pytest.approx(1 - 20 / n) and r.mae == pytest.approx(20 / n)
    assert r.em[0] == pytest.approx((n - 20) / (n - 1))


def test_reference_two_level_map_counts_thresholds() -> None:
    gt = _rect_gt()
    g, n = gt.sum(), gt.size
    fp = np.zeros(gt.shape, dtype=bool)
    fp[15:18, 0:10] = True  # F = 30 false positives at half height
    pred = np.where(gt, 170, np.where(fp, 85, 0)).astype(np.uint8)  # normalised: 1, 0.5, 0
    r = ref.score_image(pred, gt)
    f = fp.sum()
    # t = k/255: k >= 128 (128 thresholds) -> GT only; 1 <= k <= 127 -> GT + FP; k = 0 -> all
    assert np.all(r.dice[:128] == 1.0)
    np.testing.assert_allclose(r.dice[128:255], 2 * g / (2 * g + f))
    assert r.dice[255] == pytest.approx(2 * g / (g + n))
    assert ref.summarize([r])["meanDic"] == pytest.approx(
        (128 + 127 * 2 * g / (2 * g + f) + 2 * g / (g + n)) / 256, abs=1e-12
    )
    assert r.dice05 == 1.0  # 0.5 is not > 0.5


def test_reference_brightest_pixel_can_miss_threshold_one(tmp_path: Path) -> None:
    """A known toolbox quirk that hardgen does not reproduce: mapminmax multiplies by the gain 1 / (max - min), so
    for about 1 in 8 (min, max) pairs the brightest pixel lands an ulp below 1 and is not counted at t = 1.
    PySODMetrics divides, so hardgen counts it; the image's mDice then differs by Dice(t = 1) / 256. Maps saved
    by PraNet's test script span 0..255 (gain 1) and never hit this."""
    gt = _rect_gt()
    r = ref.score_image(gt.astype(np.uint8) * 200, gt)  # max 200: (200/255) * (1 / (200/255)) < 1
    assert r.dice[0] == 0.0 and np.all(r.dice[1:-1] == 1.0)
    assert ref.score_image(gt.astype(np.uint8) * 170, gt).dice[0] == 1.0  # 170: exactly 1
    write_image(tmp_path / "map.png", gt.astype(np.uint8) * 200)
    write_mask(tmp_path / "gt.png", gt)
    scores = metrics.score_map_pairs([(tmp_path / "map.png", tmp_path / "gt.png")])
    assert scores["mDice"] - ref.summarize([r])["meanDic"] == pytest.approx(1 / 256, abs=1e-12)


def test_reference_structure_measure_parts() -> None:
    full = np.ones((5, 6), dtype=bool)
    pred = np.linspace(0, 1, 30).reshape(5, 6)
    assert ref.structure_measure(pred, full) == pytest.approx(pred.mean())
    # uniform prediction 0.5 on a half/half GT: S_object = 2 * 0.5 / (0.25 + 1) for both halves
    half = np.zeros((4, 4), dtype=bool)
    half[:, :2] = True
    assert ref.s_object(np.full((4, 4), 0.5), half) == pytest.approx(1 / 1.25)


def test_reference_bwdist_and_kernel() -> None:
    gt = np.zeros((11, 13), dtype=bool)
    gt[3, 4] = gt[8, 10] = True
    dist, (rows, cols) = ref.bwdist(gt)
    np.testing.assert_allclose(dist, distance_transform_edt(~gt))
    assert (rows[0, 0], cols[0, 0]) == (3, 4) and (rows[10, 12], cols[10, 12]) == (8, 10)
    k = ref.fspecial_gaussian(7, 5.0)
    assert k.shape == (7, 7) and k.sum() == pytest.approx(1.0) and k[3, 3] == k.max()
    assert k[0, 0] / k[3, 3] == pytest.approx(np.exp(-18 / 50))
    ones = np.ones((5, 5))
    assert ref.imfilter_zero(ones, k)[2, 2] == pytest.approx(k[1:6, 1:6].sum())  # zero padding outside


def test_centroid_tie_rounds_like_matlab() -> None:
    gt = np.zeros((9, 12), dtype=bool)
    gt[2:6, 3:9] = True
    # 1-based column mean (4 + 9) / 2 = 6.5 -> 7; row mean (3 + 6) / 2 = 4.5 -> 5
    assert ref.centroid(gt) == (7, 5)


# ------------------------------------------------------------------------ hardgen against the reference
def test_scores_match_the_toolbox_reference(toolbox_tree) -> None:
    pred_root, gt_root, pairs = toolbox_tree
    table = metrics.evaluate_maps(pred_root, gt_root)
    per_image = {testset: ref.score_files(p) for testset, p in pairs.items()}
    expected = {testset: ref.summarize(results) for testset, results in per_image.items()}
    expected[metrics.OVERALL] = ref.summarize([r for results in per_image.values() for r in results])
    got = table.set_index(["testset", "metric"])["value"]
    diff = {name: max(abs(got[(t, name)] - expected[t][TOOLBOX_NAMES[name]]) for t in expected)
            for name in metrics.ALL_METRICS}
    print("\nmax |hardgen - toolbox reference| over test sets + overall:",
          ", ".join(f"{name} {value:.1e}" for name, value in diff.items()))
    assert max(diff.values()) < 1e-3, diff
    # the test sets are far apart, so agreement is not an accident of similar numbers
    mdice = [expected[t]["meanDic"] for t in pairs]
    assert max(mdice) - min(mdice) > 0.1


def test_max_em_is_the_max_of_the_mean_curve(toolbox_tree) -> None:
    pairs = toolbox_tree[2]
    results = ref.score_files(pairs["CVC-300"])
    mean_of_maxima = np.mean([r.em.max() for r in results])
    scores = metrics.score_map_pairs(pairs["CVC-300"], desc="CVC-300")
    assert scores["maxEm"] == pytest.approx(np.mean([r.em for r in results], axis=0).max(), abs=1e-3)
    assert mean_of_maxima - scores["maxEm"] > 5e-3  # the other definition would be measurably different


def test_overall_pools_images(toolbox_tree) -> None:
    pred_root, gt_root, pairs = toolbox_tree
    table = metrics.evaluate_maps(pred_root, gt_root)
    wide = table.pivot(index="testset", columns="metric", values="value")
    counts = pd.Series({t: len(p) for t, p in pairs.items()})
    sets = wide.drop(index=metrics.OVERALL)
    for name in ("mDice", "mIoU", "wFm", "Sm", "meanEm", "MAE", "Dice@0.5"):  # linear: image-weighted means
        weighted = (sets[name] * counts).sum() / counts.sum()
        assert wide.loc[metrics.OVERALL, name] == pytest.approx(weighted, abs=1e-12)
    pooled = metrics.score_map_pairs([pair for p in pairs.values() for pair in p], desc="all")
    assert wide.loc[metrics.OVERALL].to_dict() == pytest.approx(pooled, abs=1e-12)
    # maxEm of the pooled curve: at most the image-weighted mean of the per-set maxima, and here smaller
    assert wide.loc[metrics.OVERALL, "maxEm"] < (sets["maxEm"] * counts).sum() / counts.sum()


def test_table_layout(toolbox_tree) -> None:
    pred_root, gt_root, _ = toolbox_tree
    table = metrics.evaluate_maps(pred_root, gt_root)
    assert list(table.columns) == ["testset", "metric", "value"]
    n = len(metrics.ALL_METRICS)
    assert table["testset"].tolist() == (
        ["CVC-300"] * n + ["ETIS-LaribPolypDB"] * n + ["Kvasir"] * n + [metrics.OVERALL] * n
    )
    assert table["metric"].tolist() == list(metrics.ALL_METRICS) * 4
    assert table["value"].between(0, 1.01).all()


def test_metric_names() -> None:
    assert metrics.METRICS == ("mDice", "mIoU", "wFm", "Sm", "meanEm", "maxEm", "MAE")
    assert metrics.EXTRA_METRICS == ("maxDice", "maxIoU", "Dice@0.5", "IoU@0.5")
    assert metrics.ALL_METRICS == metrics.METRICS + metrics.EXTRA_METRICS
    assert metrics.OVERALL == "overall"


# ---------------------------------------------------------------------------- hardgen on hand-computable maps
def test_hand_computable_scores(tmp_path: Path) -> None:
    gt = _rect_gt()
    g, n = gt.sum(), gt.size
    fp = np.zeros(gt.shape, dtype=bool)
    fp[15:18, 0:10] = True
    f = fp.sum()
    maps = {
        "perfect": gt.astype(np.uint8) * 255,
        "zero": np.zeros(gt.shape, dtype=np.uint8),
        "two-level": np.where(gt, 170, np.where(fp, 85, 0)).astype(np.uint8),
    }
    write_mask(tmp_path / "gt.png", gt)
    scores = {}
    for name, pred in maps.items():
        write_image(tmp_path / f"{name}.png", pred)
        scores[name] = metrics.score_map_pairs([(tmp_path / f"{name}.png", tmp_path / "gt.png")], desc=name)
    perfect, zero, two = scores["perfect"], scores["zero"], scores["two-level"]
    assert perfect["mDice"] == pytest.approx((255 + 2 * g / (g + n)) / 256, abs=1e-12)
    assert perfect["mIoU"] == pytest.approx((255 + g / n) / 256, abs=1e-12)
    assert perfect["maxDice"] == 1.0 and perfect["Dice@0.5"] == 1.0 and perfect["MAE"] == 0.0
    assert perfect["maxEm"] == pytest.approx(n / (n - 1), rel=1e-12)
    assert perfect["Sm"] == pytest.approx(1.0) and perfect["wFm"] == pytest.approx(1.0)
    assert zero["mDice"] == pytest.approx(2 * g / (g + n) / 256, abs=1e-12)
    assert zero["Dice@0.5"] == 0.0 and zero["MAE"] == pytest.approx(g / n)
    assert zero["meanEm"] == pytest.approx(n / 4 / (n - 1), rel=1e-12)
    assert two["mDice"] == pytest.approx((128 + 127 * 2 * g / (2 * g + f) + 2 * g / (g + n)) / 256, abs=1e-12)
    assert two["Dice@0.5"] == 1.0 and two["IoU@0.5"] == 1.0


def test_gt_threshold_is_128_and_colour_maps_use_the_first_channel(tmp_path: Path) -> None:
    gt = np.zeros((20, 30), dtype=np.uint8)
    gt[5:13, 8:20] = 255
    gt[5:13, 20:24] = 128  # not foreground in the toolbox (> 128)
    write_image(tmp_path / "gt.png", gt)
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[5:13, 8:20, 0] = 255  # first channel = the GT; the others would be a wrong map
    rgb[..., 1] = 255 - rgb[..., 0]
    write_image(tmp_path / "map.png", rgb)
    scores = metrics.score_map_pairs([(tmp_path / "map.png", tmp_path / "gt.png")])
    assert scores["maxDice"] == 1.0 and scores["MAE"] == 0.0


# ----------------------------------------------------------------------------------------- folder errors
def _tree(tmp_path: Path, testset: str = "Kvasir", stems: tuple[str, ...] = ("a", "b")) -> tuple[Path, Path]:
    pred_root, gt_root = tmp_path / "pred", tmp_path / "gt"
    for stem in stems:
        write_image(pred_root / testset / f"{stem}.png", np.full((8, 10), 7, dtype=np.uint8))
        write_mask(gt_root / testset / "masks" / f"{stem}.png", _disc(8, 10, 4, 5, 2))
    return pred_root, gt_root


def _raises_naming(paths: list[Path], call) -> None:
    with pytest.raises(DataError) as info:
        call()
    for path in paths:
        assert str(path) in str(info.value), (path, str(info.value))


def test_map_without_ground_truth(tmp_path: Path) -> None:
    pred_root, gt_root = _tree(tmp_path)
    (gt_root / "Kvasir" / "masks" / "b.png").unlink()
    _raises_naming([pred_root / "Kvasir" / "b.png", gt_root / "Kvasir" / "masks" / "b"],
                   lambda: metrics.evaluate_maps(pred_root, gt_root))
    other = tmp_path / "other"  # no GT folder for the test set at all
    _raises_naming([pred_root / "Kvasir" / "a.png", other / "Kvasir" / "masks" / "a"],
                   lambda: metrics.evaluate_maps(pred_root, other))


def test_ground_truth_without_map(tmp_path: Path) -> None:
    pred_root, gt_root = _tree(tmp_path)
    (pred_root / "Kvasir" / "a.png").unlink()
    _raises_naming([gt_root / "Kvasir" / "masks" / "a.png", pred_root / "Kvasir" / "a.png"],
                   lambda: metrics.evaluate_maps(pred_root, gt_root))


def test_size_mismatch_and_unreadable_files(tmp_path: Path) -> None:
    pred_root, gt_root = _tree(tmp_path)
    write_image(pred_root / "Kvasir" / "a.png", np.zeros((8, 11), dtype=np.uint8))
    _raises_naming([pred_root / "Kvasir" / "a.png", gt_root / "Kvasir" / "masks" / "a.png"],
                   lambda: metrics.evaluate_maps(pred_root, gt_root))
    (pred_root / "Kvasir" / "a.png").write_bytes(b"not a png")
    _raises_naming([pred_root / "Kvasir" / "a.png", gt_root / "Kvasir" / "masks" / "a.png"],
                   lambda: metrics.evaluate_maps(pred_root, gt_root))


def test_root_and_stem_errors(tmp_path: Path) -> None:
    none, empty, gt = tmp_path / "none", tmp_path / "empty", tmp_path / "gt"
    _raises_naming([none, gt], lambda: metrics.evaluate_maps(none, gt))
    empty.mkdir()
    _raises_naming([empty, gt], lambda: metrics.evaluate_maps(empty, gt))
    pred_root, gt_root = _tree(tmp_path)
    write_mask(gt_root / "Kvasir" / "masks" / "a.jpg", _disc(8, 10, 4, 5, 2))
    _raises_naming([gt_root / "Kvasir" / "masks" / "a.png", gt_root / "Kvasir" / "masks" / "a.jpg"],
                   lambda: metrics.evaluate_maps(pred_root, gt_root))
    with pytest.raises(DataError, match="no .* pairs"):
        metrics.score_map_pairs([], desc="nothing")


def test_hidden_files_and_other_suffixes_are_ignored(tmp_path: Path) -> None:
    pred_root, gt_root = _tree(tmp_path, stems=("a",))
    (pred_root / "Kvasir" / ".a.png.tmp.png").write_bytes(b"partial")  # an interrupted atomic write
    (pred_root / "Kvasir" / "notes.txt").write_text("x")
    (gt_root / "Kvasir" / "masks" / "Thumbs.db").write_text("x")
    (pred_root / ".cache").mkdir()
    assert {t: [(p.name, g.name) for p, g in ps] for t, ps in metrics.find_map_pairs(pred_root, gt_root).items()} == {
        "Kvasir": [("a.png", "a.png")]
    }


# ------------------------------------------------------------------------------------ prediction maps
@pytest.fixture()
def test_df(tmp_path: Path) -> pd.DataFrame:
    """Manifest-like rows: two test sets, images whose red channel marks the polyp exactly (PraNet layout)."""
    rows = []
    specs = [("CVC-300", 64, 64, 5.0), ("CVC-300", 64, 64, 10.0), ("Kvasir", 64, 64, 14.0),
             ("Kvasir", 64, 64, 8.0), ("Kvasir", 64, 64, 12.0)]
    for i, (split, h, w, r) in enumerate(specs):
        mask = _disc(h, w, h / 2, w / 2 + i, r)
        image = np.zeros((h, w, 3), dtype=np.uint8)
        image[..., 1:] = 90
        image[mask, 0] = 255
        write_image(tmp_path / "data" / split / "images" / f"{i}.png", image)
        write_mask(tmp_path / "data" / split / "masks" / f"{i}.png", mask)
        rows.append({"id": f"{split}/{i}", "split": split,
                     "image": str(tmp_path / "data" / split / "images" / f"{i}.png"),
                     "mask": str(tmp_path / "data" / split / "masks" / f"{i}.png"), "width": w, "height": h,
                     "fg_fraction": mask.mean()})
    return pd.DataFrame(rows)


def test_save_prediction_maps_writes_pranet_maps(test_df: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    write_image(out / "Stale" / "old.png", np.zeros((4, 4), dtype=np.uint8))
    write_image(out / "CVC-300" / "old.png", np.zeros((4, 4), dtype=np.uint8))
    table = predict.save_prediction_maps(RedChannelOracle(), test_df, size=64, out_root=out, batch_size=2)
    assert list(table.columns) == ["testset", "stem", "pred", "gt"]
    assert table["pred"].tolist() == [str(out / s / f"{i}.png") for i, s in enumerate(test_df["split"])]
    assert table["gt"].tolist() == test_df["mask"].tolist()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "CVC-300/0.png", "CVC-300/1.png", "Kvasir/2.png", "Kvasir/3.png", "Kvasir/4.png"
    ]  # stale maps are gone
    for pred, gt in zip(table["pred"], table["gt"]):
        saved = np.asarray(Image.open(pred))
        mask = np.asarray(Image.open(gt)) > 128
        assert saved.dtype == np.uint8 and saved.shape == mask.shape
        assert saved.min() == 0 and saved.max() == 255  # min-max normalised per image
        assert np.array_equal(saved > 128, mask)


def test_save_prediction_maps_upsamples_to_gt_size_and_batches_do_not_matter(tmp_path: Path) -> None:
    rows = []
    for i, (h, w) in enumerate([(72, 96), (100, 80), (64, 64)]):
        mask = _disc(h, w, h / 2, w / 2, min(h, w) / 4)
        image = np.zeros((h, w, 3), dtype=np.uint8)
        image[mask, 0] = 255
        write_image(tmp_path / f"i{i}.png", image)
        write_mask(tmp_path / f"m{i}.png", mask)
        rows.append({"split": "ETIS", "image": str(tmp_path / f"i{i}.png"), "mask": str(tmp_path / f"m{i}.png")})
    frame = pd.DataFrame(rows)
    one = predict.save_prediction_maps(RedChannelOracle(), frame, size=64, out_root=tmp_path / "a", batch_size=1)
    many = predict.save_prediction_maps(RedChannelOracle(), frame, size=64, out_root=tmp_path / "b", batch_size=8)
    for p1, p2, gt in zip(one["pred"], many["pred"], frame["mask"]):
        a, b = np.asarray(Image.open(p1)), np.asarray(Image.open(p2))
        assert a.shape == np.asarray(Image.open(gt)).shape
        np.testing.assert_array_equal(a, b)


def test_constant_prediction_saves_an_all_zero_map(test_df: pd.DataFrame, tmp_path: Path) -> None:
    table = predict.save_prediction_maps(ConstantLogits(0.0), test_df, size=64, out_root=tmp_path / "pred")
    assert all(np.asarray(Image.open(p)).max() == 0 for p in table["pred"])  # (p - min) / (max - min + 1e-8) = 0


def test_save_prediction_maps_errors(test_df: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    with pytest.raises(ValueError, match=r"missing column.*'split'"):
        predict.save_prediction_maps(RedChannelOracle(), test_df.drop(columns="split"), 64, out)
    with pytest.raises(ValueError, match="no rows"):
        predict.save_prediction_maps(RedChannelOracle(), test_df.iloc[:0], 64, out)
    with pytest.raises(ValueError, match=r"segment\.size"):
        predict.save_prediction_maps(RedChannelOracle(), test_df, 50, out)
    clash = test_df.copy()
    clash.loc[1, "mask"] = str(tmp_path / "elsewhere" / "0.png")
    with pytest.raises(DataError, match="share a stem"):
        predict.save_prediction_maps(RedChannelOracle(), clash, 64, out)
    overall = test_df.assign(split=metrics.OVERALL)
    with pytest.raises(DataError, match="overall"):
        predict.save_prediction_maps(RedChannelOracle(), overall, 64, out)
    (tmp_path / "dataset" / "Kvasir" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="refusing"):
        predict.save_prediction_maps(RedChannelOracle(), test_df, 64, tmp_path / "dataset")
    assert (tmp_path / "dataset" / "Kvasir" / "images").is_dir()
    write_mask(tmp_path / "wrong.png", np.zeros((8, 8), dtype=bool))
    bad = test_df.copy()
    bad.loc[1, "mask"] = str(tmp_path / "wrong.png")
    with pytest.raises(ValueError, match="wrong.png"):
        predict.save_prediction_maps(RedChannelOracle(), bad, 64, out)


def test_evaluate_segmenter_equals_evaluate_maps_on_the_written_maps(test_df: pd.DataFrame, tmp_path: Path) -> None:
    # a PraNet-layout GT tree holding the manifest's masks
    gt_root = tmp_path / "TestDataset"
    for split, mask in zip(test_df["split"], test_df["mask"]):
        target = gt_root / split / "masks" / Path(mask).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(mask).read_bytes())
    shuffled = test_df.iloc[[4, 0, 3, 1, 2]]  # row order differs from the folder order
    scores = predict.evaluate_segmenter(RedChannelOracle(), shuffled, size=64, pred_root=tmp_path / "pred")
    pd.testing.assert_frame_equal(scores, metrics.evaluate_maps(tmp_path / "pred", gt_root), check_exact=True)
    assert scores["testset"].unique().tolist() == ["CVC-300", "Kvasir", metrics.OVERALL]
    wide = scores.pivot(index="testset", columns="metric", values="value")
    assert (wide["maxDice"] == 1.0).all()  # the oracle's map separates the polyp at some threshold
    assert (wide["mDice"] < 1.0).all()


def test_evaluate_table_scores_saved_maps_and_names_a_missing_one(test_df: pd.DataFrame, tmp_path: Path) -> None:
    """The workflow's evaluate rule: the maps listed for manifest rows, scored as evaluate_maps would."""
    predict.save_prediction_maps(RedChannelOracle(), test_df, size=64, out_root=tmp_path / "pred")
    table = metrics.prediction_table(test_df, tmp_path / "pred")
    scores = metrics.evaluate_table(table)
    pd.testing.assert_frame_equal(
        scores, predict.evaluate_segmenter(RedChannelOracle(), test_df, size=64, pred_root=tmp_path / "again"),
        check_exact=True,
    )
    Path(table["pred"].iat[2]).unlink()
    with pytest.raises(DataError, match=rf"{table['pred'].iat[2]}.*{table['gt'].iat[2]}"):
        metrics.evaluate_table(table)


def test_scoring_needs_no_torch() -> None:
    """The evaluate rule only reads maps: importing the scoring module must not pull in torch (a slow import)."""
    import subprocess
    import sys

    code = "import sys, hardgen.evaluation.metrics; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_per_image_scores_average_to_the_test_set_scores(toolbox_tree) -> None:
    """The per-image table beside each evaluation: its images' mean is the toolbox's test-set value, metric by
    metric (mDice / mIoU per image = the mean over the 256 thresholds of that image's curve)."""
    _, _, pairs = toolbox_tree
    table, images = metrics.score_testsets_with_images(pairs)
    pd.testing.assert_frame_equal(table, metrics.score_testsets(pairs), check_exact=True)
    assert list(images.columns) == ["testset", "image", "metric", "value"]
    n_images = sum(len(p) for p in pairs.values())
    assert len(images) == n_images * len(metrics.IMAGE_METRICS)
    assert not images.duplicated(["testset", "image", "metric"]).any()
    means = images.groupby(["testset", "metric"])["value"].mean()
    expected = table.set_index(["testset", "metric"])["value"]
    for (testset, metric), value in means.items():
        assert value == pytest.approx(expected[(testset, metric)], abs=1e-12), (testset, metric)
    # the per-image values differ (a real spread to resample), and are each image's own
    dice = images[images["metric"] == "mDice"]
    assert dice["value"].nunique() > 1
    testset, (pred, gt) = next(iter(pairs.items()))[0], next(iter(pairs.values()))[0]
    own = metrics.score_testsets({testset: [(pred, gt)]}).set_index(["testset", "metric"])["value"]
    row = dice[(dice["testset"] == testset) & (dice["image"] == Path(pred).stem)]
    assert row["value"].item() == pytest.approx(own[(testset, "mDice")], abs=1e-12)


def test_evaluate_table_with_images_matches_evaluate_table(test_df: pd.DataFrame, tmp_path: Path) -> None:
    predict.save_prediction_maps(RedChannelOracle(), test_df, size=64, out_root=tmp_path / "pred")
    table = metrics.prediction_table(test_df, tmp_path / "pred")
    scores, images = metrics.evaluate_table_with_images(table)
    pd.testing.assert_frame_equal(scores, metrics.evaluate_table(table), check_exact=True)
    assert sorted(images["image"].unique()) == sorted(table["stem"])
    assert set(images["testset"]) == set(test_df["split"])
