"""The standard polyp evaluation (the PraNet / Polyp-PVT MATLAB toolbox, ``main.m``), computed with PySODMetrics.

Prediction maps are 8-bit PNGs at ``<root>/<testset>/<stem>.png`` (``stem`` = the GT file's stem), as PraNet and
every polyp model save them (hardgen's own: :func:`hardgen.segmentation.predict.save_prediction_maps`). This module only reads
maps and ground truths; it needs no model and no torch.

Scoring (:func:`score_map_pairs`, :func:`evaluate_maps`), per image, from the saved files:

- GT: the mask file as grey levels (colour files converted to grey), ``> 128``.
- map: the first channel ``/ 255``, then min-max normalised over the image (MATLAB ``mapminmax(x, 0, 1)``); a
  constant map is left as it is.
- 256 thresholds ``t = 1, 254/255, ..., 0``; the binary map at ``t`` is ``map >= t``. Per threshold:
  Dice ``2 TP / (|GT| + |pred|)``, IoU ``TP / |GT ∪ pred|`` (both 0 when TP = 0, also for an empty GT) and the
  E-measure of the binary map (empty GT: mean of ``1 - pred``; all-foreground GT: mean of ``pred``; the sum is
  divided by ``h w - 1``).
- Sm: S-measure, alpha = 0.5. wFm: weighted F-measure, beta = 1 (0 for an empty GT). MAE: mean ``|map - GT|``.

Per test set (``main.m``):

- ``mDice`` / ``mIoU`` (the toolbox's meanDic / meanIoU): the Dice / IoU curves are averaged over the images,
  then over the 256 thresholds.
- ``meanEm`` / ``maxEm``: mean / max over thresholds of the image-averaged E-measure curve (``maxEm`` is the max
  of the mean curve, not the mean of per-image maxima).
- ``wFm``, ``Sm``, ``MAE``: means over images.
- Extras (:data:`EXTRA_METRICS`): ``maxDice`` / ``maxIoU`` (the toolbox's maxDic / maxIoU: max over thresholds of
  the image-averaged curve) and ``Dice@0.5`` / ``IoU@0.5`` (per-image Dice / IoU of the normalised map ``> 0.5``,
  PySODMetrics' binary mode, averaged over images).

:data:`OVERALL` rows pool all images of all scored test sets: every per-image quantity (curves included) is
averaged over all images, so each image weighs the same; ``maxEm`` / ``maxDice`` / ``maxIoU`` are maxima of the
pooled mean curves.

PySODMetrics implements each definition (``FmeasureV2`` with ``DICEHandler`` / ``IOUHandler`` in dynamic and binary
mode, ``Emeasure``, ``Smeasure``, ``WeightedFmeasure``, ``MAE``, with its toolbox-style input preparation). Known
differences from the MATLAB code (per image mostly below 5e-4; up to about 4e-3 for the normalisation and centroid
cases; the tests hold every test-set score within 1e-3 of a transcription of the MATLAB code): thresholds are applied as
``floor(255 map) >= k`` rather than ``map >= k/255`` (a pixel lying exactly on a threshold may fall on the other
side by rounding), the min-max normalisation divides by ``max - min`` where MATLAB multiplies by its inverse
(for some maps that do not span 0..255 MATLAB leaves the brightest pixels an ulp below 1, so they are not counted
at t = 1), the S-measure centroid is rounded half-to-even where MATLAB rounds halves up (a GT whose centroid is a
tie moves one quadrant border by a pixel), ties in ``bwdist`` may resolve differently, a negative S-measure is
clipped to 0, and an empty GT's wFm is 0 (the MATLAB code cannot compute it). Maps saved by
:func:`hardgen.segmentation.predict.save_prediction_maps` span 0..255, so the normalisation difference never applies to them. The toolbox
resizes a map whose size differs from its GT; here that is an error.

Protocols (``evaluate.protocol``, ``hardgen evaluate-maps --protocol``): everything above is ``polyp_toolbox``.
``binary`` is the plain per-image protocol of the ISIC challenges and most non-polyp segmentation papers
(:data:`BINARY_METRICS`, :func:`score_binary_image`):

- maps are the sigmoid probability x 255, not min-max normalised (:data:`MAP_MIN_MAX`, what
  :func:`hardgen.segmentation.predict.save_prediction_maps` writes under this protocol), binarised at ``map >= 128``; GT: the
  mask file by the datasets' rule (:func:`hardgen.data.masks.decode_mask`: two values, the higher is foreground, or 0/255
  with JPEG noise; so a raw 0/1 mask scores right; prepare_data's masks are 0/255).
- per image: ``mDice`` ``2 TP / (2 TP + FP + FN)``, ``mIoU`` (Jaccard) ``TP / (TP + FP + FN)``, ``Accuracy``
  ``(TP + TN) / N``, ``Sensitivity`` ``TP / (TP + FN)``, ``Specificity`` ``TN / (TN + FP)``; a ratio whose
  denominator is 0 (e.g. an empty mask predicted empty) is 1. ``HD95``: the 95th-percentile symmetric Hausdorff
  distance between the two masks' boundaries in pixels (the larger of the two directed 95th percentiles, Euclidean);
  missing (NaN) when either side is empty, never 0.
- per test set and :data:`OVERALL`: the mean over images (``mDice`` / ``mIoU``: "m" = mean over images, as the
  toolbox's names, so the report's headline metrics read both protocols); ``HD95`` the mean over the images where
  it is defined (NaN if none is, never 0). Two count rows follow (:data:`BINARY_COUNTS`, not per-image metrics):
  ``HD95_undefined``, the number of images whose HD95 is undefined, and ``n_images``, the number of images scored,
  so a reader of the table sees over how many images the HD95 mean is.

MONAI computes them (``get_confusion_matrix`` + ``compute_confusion_matrix_metric``, ``compute_dice`` /
``compute_iou`` with ``ignore_empty=False``, ``compute_hausdorff_distance(percentile=95)``). Where MONAI's
convention differs it is overridden explicitly: its sensitivity / specificity are NaN for a zero denominator (here
1); its Dice and IoU already give 1 for an empty pair, and its HD95 is NaN with an empty side (both kept).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from hardgen.core.io import DataError, read_gray, read_rgb

if TYPE_CHECKING:
    import torch

#: The published metrics, in report order. Higher is better for all except MAE.
METRICS = ("mDice", "mIoU", "wFm", "Sm", "meanEm", "maxEm", "MAE")

#: Further rows after :data:`METRICS` (see the module docstring).
EXTRA_METRICS = ("maxDice", "maxIoU", "Dice@0.5", "IoU@0.5")

#: Every metric name written, in row order.
ALL_METRICS = METRICS + EXTRA_METRICS

#: Test-set name of the rows pooling all images of all scored test sets.
OVERALL = "overall"

#: Number of thresholds of the Dice / IoU / E-measure curves (``1:-1/255:0``).
N_THRESHOLDS = 256

#: Ground-truth file suffixes matched by :func:`find_map_pairs` (case-insensitive).
GT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: Columns of the evaluation tables.
TABLE_COLUMNS = ("testset", "metric", "value")

#: Columns of the per-image tables (``seed-<s>.images.csv`` beside each evaluation table).
IMAGE_COLUMNS = ("testset", "image", "metric", "value")

#: The metrics whose test-set score is the mean of a per-image score (per-image mDice / mIoU / meanEm: the mean
#: over the 256 thresholds of that image's curve), so the mean over a test set's images equals the test-set row;
#: maxEm / maxDice / maxIoU (maxima of image-averaged curves) have no per-image form.
IMAGE_METRICS = ("mDice", "mIoU", "wFm", "Sm", "meanEm", "MAE", "Dice@0.5", "IoU@0.5")

#: ``evaluate.protocol`` values.
PROTOCOLS = ("polyp_toolbox", "binary")

#: The binary protocol's metrics, in row order (higher is better except HD95, in pixels).
BINARY_METRICS = ("mDice", "mIoU", "Accuracy", "Sensitivity", "Specificity", "HD95")

#: The binary protocol's count rows after :data:`BINARY_METRICS`, per test set and overall (no per-image rows): the
#: number of images whose HD95 is undefined (an empty prediction or ground truth) and the number of images scored.
HD95_UNDEFINED = "HD95_undefined"
N_IMAGES = "n_images"
BINARY_COUNTS = (HD95_UNDEFINED, N_IMAGES)

#: Every metric name each protocol writes, in row order.
PROTOCOL_METRICS = {"polyp_toolbox": ALL_METRICS, "binary": BINARY_METRICS + BINARY_COUNTS}

#: The metrics of each protocol that have a per-image table (every binary metric is per image).
PROTOCOL_IMAGE_METRICS = {"polyp_toolbox": IMAGE_METRICS, "binary": BINARY_METRICS}

#: Whether a protocol's maps are min-max normalised per image before saving (the toolbox: PraNet's test script) or
#: are the sigmoid probability as it is (binary: a fixed 0.5 threshold needs the unnormalised probability).
MAP_MIN_MAX = {"polyp_toolbox": True, "binary": False}

#: The binary protocol's threshold on 8-bit maps: ``map >= 128`` (probability >= ~0.5).
BINARY_MAP_THRESHOLD = 128


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else a ValueError naming the config key."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"evaluate.protocol: {protocol!r} is not one of {list(PROTOCOLS)}")
    return protocol


# ------------------------------------------------------------------------------------------------ scoring
@dataclass(frozen=True)
class MapScores:
    """Per-image quantities of a set of maps (one row per image), enough for test-set and pooled scores.

    ``dice``, ``iou`` and ``em`` are (n, 256) curves over the thresholds (PySODMetrics' order, 1 down to 0);
    the other fields are (n,) vectors.
    """

    dice: np.ndarray
    iou: np.ndarray
    em: np.ndarray
    sm: np.ndarray
    wfm: np.ndarray
    mae: np.ndarray
    dice_binary: np.ndarray
    iou_binary: np.ndarray

    def __len__(self) -> int:
        return len(self.sm)

    @classmethod
    def concat(cls, parts: Iterable[MapScores]) -> MapScores:
        """All images of ``parts`` in one :class:`MapScores` (the pooled set)."""
        parts = list(parts)
        if not parts:
            raise ValueError("no scores to pool")
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.__dataclass_fields__})

    def summary(self) -> dict[str, float]:
        """The toolbox's numbers for this set of images, keyed by :data:`ALL_METRICS`."""
        if len(self) == 0:
            raise ValueError("no images to summarise")
        dice, iou, em = self.dice.mean(axis=0), self.iou.mean(axis=0), self.em.mean(axis=0)
        values = {
            "mDice": dice.mean(), "mIoU": iou.mean(), "wFm": self.wfm.mean(), "Sm": self.sm.mean(),
            "meanEm": em.mean(), "maxEm": em.max(), "MAE": self.mae.mean(),
            "maxDice": dice.max(), "maxIoU": iou.max(),
            "Dice@0.5": self.dice_binary.mean(), "IoU@0.5": self.iou_binary.mean(),
        }
        return {name: float(values[name]) for name in ALL_METRICS}

    def per_image(self) -> dict[str, np.ndarray]:
        """Each image's own score for :data:`IMAGE_METRICS` ((n,) vectors): curves averaged over the thresholds.

        Their mean over the images is :meth:`summary`'s value (the mean over images and thresholds commutes).
        """
        values = {
            "mDice": self.dice.mean(axis=1), "mIoU": self.iou.mean(axis=1), "wFm": self.wfm, "Sm": self.sm,
            "meanEm": self.em.mean(axis=1), "MAE": self.mae, "Dice@0.5": self.dice_binary, "IoU@0.5": self.iou_binary,
        }
        return {name: np.asarray(values[name], dtype=np.float64) for name in IMAGE_METRICS}


def _score_image(pred: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    """PySODMetrics on one 8-bit map and one 8-bit grey GT of the same size (toolbox preparation by the library)."""
    import py_sod_metrics  # here: it imports scikit-learn and scikit-image, which the other protocols never need

    curves = py_sod_metrics.FmeasureV2(
        metric_handlers={
            "dice": py_sod_metrics.DICEHandler(with_dynamic=True, with_adaptive=False, with_binary=True),
            "iou": py_sod_metrics.IOUHandler(with_dynamic=True, with_adaptive=False, with_binary=True),
        }
    )
    e_measure, s_measure = py_sod_metrics.Emeasure(), py_sod_metrics.Smeasure(alpha=0.5)
    weighted_f, mae = py_sod_metrics.WeightedFmeasure(beta=1), py_sod_metrics.MAE()
    for evaluator in (curves, e_measure, s_measure, weighted_f, mae):
        # normalize=True: im2double + mapminmax of the map, GT > 128 (PySODMetrics' prepare_data)
        evaluator.step(pred=pred, gt=gt, normalize=True)
    fm = curves.get_results()
    return {
        "dice": np.asarray(fm["dice"]["dynamic"], dtype=np.float64),
        "iou": np.asarray(fm["iou"]["dynamic"], dtype=np.float64),
        "em": np.asarray(e_measure.get_results()["em"]["curve"], dtype=np.float64),
        "sm": float(s_measure.get_results()["sm"]),
        "wfm": float(weighted_f.get_results()["wfm"]),
        "mae": float(mae.get_results()["mae"]),
        "dice_binary": float(fm["dice"]["binary"]),
        "iou_binary": float(fm["iou"]["binary"]),
    }


def _read_pair(pred_path: Path, gt_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The map's first channel and the GT's grey levels (uint8); errors name both files."""
    try:
        pred = read_rgb(pred_path)[..., 0]
        gt = read_gray(gt_path)
    except DataError as err:
        raise DataError(f"{err} [map {pred_path}, ground truth {gt_path}]") from err
    if pred.shape != gt.shape:
        raise DataError(
            f"{pred_path}: map size {pred.shape[1]}x{pred.shape[0]} differs from ground truth {gt_path} "
            f"size {gt.shape[1]}x{gt.shape[0]}"
        )
    return pred, gt


def _score_pairs(pairs: Iterable[tuple[str | Path, str | Path]], desc: str = "evaluate") -> MapScores:
    """Per-image scores of (map PNG, GT file) pairs, with a progress bar."""
    pairs = [(Path(p), Path(g)) for p, g in pairs]
    if not pairs:
        raise DataError(f"{desc}: no (map, ground truth) pairs to score")
    rows = [_score_image(*_read_pair(p, g)) for p, g in tqdm(pairs, desc=desc, unit="img", leave=False)]
    return MapScores(**{name: np.array([row[name] for row in rows], dtype=np.float64) for name in rows[0]})


# ------------------------------------------------------------------------------------------ binary protocol
def score_binary_image(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """The binary protocol's per-image values (keys :data:`BINARY_METRICS`) of two same-size bool masks."""
    import warnings

    import torch
    from monai.metrics import (
        compute_confusion_matrix_metric,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        get_confusion_matrix,
    )

    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"binary protocol: prediction {pred.shape} and ground truth {gt.shape} must be equal HxW")
    # MONAI's layout: (batch, class, H, W), one class (the foreground), so include_background=True
    p, g = (torch.from_numpy(a.astype(np.float32))[None, None] for a in (pred, gt))
    confusion = get_confusion_matrix(p, g, include_background=True)  # (1, 1, 4): TP, FP, TN, FN
    tp, fp, tn, fn = (float(v) for v in confusion.reshape(4))
    values = {
        "mDice": float(compute_dice(p, g, include_background=True, ignore_empty=False).item()),
        "mIoU": float(compute_iou(p, g, include_background=True, ignore_empty=False).item()),
    }
    for name, key, denominator in (("Accuracy", "accuracy", tp + fp + tn + fn),
                                   ("Sensitivity", "sensitivity", tp + fn),
                                   ("Specificity", "specificity", tn + fp)):
        # MONAI returns NaN for a zero denominator; the protocol counts it as 1
        values[name] = 1.0 if denominator == 0 else float(compute_confusion_matrix_metric(key, confusion).item())
    if pred.any() and gt.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI's deprecation notice about get_mask_edges' return type
            values["HD95"] = float(compute_hausdorff_distance(p, g, include_background=True, percentile=95).item())
    else:
        values["HD95"] = float("nan")  # an empty side: no boundary, no distance (MONAI: NaN too)
    return {name: values[name] for name in BINARY_METRICS}


def _read_binary_pair(pred_path: Path, gt_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The binarised map and the GT mask by the dataset's mask rule (:func:`hardgen.data.masks.decode_mask`: a mask in
    any two values, e.g. a 0/1 file of a raw dataset, or 0/255 with JPEG noise)."""
    from hardgen.core.io import read_values
    from hardgen.data.masks import decode_mask

    pred, _ = _read_pair(pred_path, gt_path)
    try:
        gt = decode_mask(read_values(gt_path), None, gt_path)
    except DataError as err:
        raise DataError(f"{err} [map {pred_path}]") from err
    return pred >= BINARY_MAP_THRESHOLD, gt


def _binary_scores(pairs: Iterable[tuple[str | Path, str | Path]], desc: str = "evaluate") -> pd.DataFrame:
    """Per-image binary-protocol values (rows: images, columns :data:`BINARY_METRICS`)."""
    pairs = [(Path(p), Path(g)) for p, g in pairs]
    if not pairs:
        raise DataError(f"{desc}: no (map, ground truth) pairs to score")
    rows = [score_binary_image(*_read_binary_pair(p, g)) for p, g in tqdm(pairs, desc=desc, unit="img", leave=False)]
    return pd.DataFrame(rows, columns=list(BINARY_METRICS))


def _binary_summary(per_image: pd.DataFrame) -> dict[str, float]:
    """Means over images; HD95 over the images where it is defined (NaN when none is); then the counts
    :data:`BINARY_COUNTS` (images whose HD95 is undefined, images scored)."""
    values = {name: float(per_image[name].mean(skipna=True)) if per_image[name].notna().any() else float("nan")
              for name in BINARY_METRICS}
    values[HD95_UNDEFINED] = float(per_image["HD95"].isna().sum())
    values[N_IMAGES] = float(len(per_image))
    return values


def score_map_pairs(pairs: Iterable[tuple[str | Path, str | Path]], desc: str = "evaluate") -> dict[str, float]:
    """Toolbox scores (keys :data:`ALL_METRICS`) of one test set given as (map PNG path, GT path) pairs."""
    return _score_pairs(pairs, desc=desc).summary()


def score_testsets(pairs_by_testset: Mapping[str, Iterable[tuple[str | Path, str | Path]]],
                   protocol: str = "polyp_toolbox") -> pd.DataFrame:
    """Score every test set (in the mapping's order), then the pooled :data:`OVERALL` set, under ``protocol``.

    Returns columns ``testset, metric, value``: per test set the protocol's rows (:data:`PROTOCOL_METRICS`; under
    ``binary`` the scores, then the counts :data:`BINARY_COUNTS`), then the overall rows.
    """
    return score_testsets_with_images(pairs_by_testset, protocol=protocol)[0]


def score_testsets_with_images(
    pairs_by_testset: Mapping[str, Iterable[tuple[str | Path, str | Path]]],
    protocol: str = "polyp_toolbox",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`score_testsets` and the per-image table it averages: ``testset, image, metric, value``.

    ``image`` is the map's file stem; per test set, the images' rows (:data:`PROTOCOL_IMAGE_METRICS`: the toolbox's
    :data:`IMAGE_METRICS` from :meth:`MapScores.per_image`, or every :data:`BINARY_METRICS`) average to that test
    set's row of the first table (binary HD95: over the images where it is defined, NaN in both tables where it is
    undefined; the count rows :data:`BINARY_COUNTS` have no per-image rows). A paired bootstrap over test images
    resamples these.
    """
    check_protocol(protocol)
    if not pairs_by_testset:
        raise DataError("no test sets to score")
    if OVERALL in pairs_by_testset:
        raise DataError(f"a test set may not be called {OVERALL!r}: that name holds the pooled scores")
    pairs_by_testset = {name: [(Path(p), Path(g)) for p, g in pairs] for name, pairs in pairs_by_testset.items()}
    if protocol == "binary":
        per_image = {name: _binary_scores(pairs, desc=name) for name, pairs in pairs_by_testset.items()}
        images = [
            pd.DataFrame({"testset": name, "image": [p.stem for p, _ in pairs_by_testset[name]], "metric": metric,
                          "value": frame[metric].to_numpy(dtype=np.float64)})
            for name, frame in per_image.items() for metric in BINARY_METRICS
        ]
        per_image[OVERALL] = pd.concat(list(per_image.values()), ignore_index=True)
        rows = [(name, metric, value) for name, frame in per_image.items()
                for metric, value in _binary_summary(frame).items()]
    else:
        parts = {name: _score_pairs(pairs, desc=name) for name, pairs in pairs_by_testset.items()}
        images = [
            pd.DataFrame({"testset": name, "image": [p.stem for p, _ in pairs_by_testset[name]], "metric": metric,
                          "value": values})
            for name, scores in parts.items() for metric, values in scores.per_image().items()
        ]
        parts[OVERALL] = MapScores.concat(parts.values())
        rows = [(name, metric, value) for name, scores in parts.items() for metric, value in scores.summary().items()]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS)), pd.concat(images, ignore_index=True)[list(IMAGE_COLUMNS)]


# ------------------------------------------------------------------------------------------- map folders
def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def find_map_pairs(pred_root: str | Path, gt_root: str | Path) -> dict[str, list[tuple[Path, Path]]]:
    """Match ``<pred_root>/<testset>/<stem>.png`` with ``<gt_root>/<testset>/masks/<stem>.<png|jpg|...>``.

    Every (non-hidden) folder of ``pred_root`` is a test set; test sets are sorted by name, pairs by stem.
    A map without its GT, a GT without its map, two GT files with one stem and a ``pred_root`` without test-set
    folders raise :class:`DataError` naming the paths.
    """
    pred_root, gt_root = Path(pred_root), Path(gt_root)
    if not pred_root.is_dir():
        raise DataError(f"{pred_root}: prediction folder not found (ground truth {gt_root})")
    testsets = sorted(p.name for p in pred_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not testsets:
        raise DataError(
            f"{pred_root}: no test-set folders (expected {pred_root}/<testset>/<stem>.png, "
            f"ground truth {gt_root}/<testset>/masks/)"
        )
    found: dict[str, list[tuple[Path, Path]]] = {}
    for testset in testsets:
        pred_dir, gt_dir = pred_root / testset, gt_root / testset / "masks"
        maps = {p.stem: p for p in _visible_files(pred_dir) if p.suffix.lower() == ".png"}
        gts: dict[str, Path] = {}
        if gt_dir.is_dir():
            for path in _visible_files(gt_dir):
                if path.suffix.lower() not in GT_SUFFIXES:
                    continue
                if path.stem in gts:
                    raise DataError(f"{gts[path.stem]} and {path}: two ground-truth files for one stem")
                gts[path.stem] = path
        for stem, pred in maps.items():
            if stem not in gts:
                raise DataError(f"{pred}: no ground truth {gt_dir}/{stem}.<{'|'.join(s[1:] for s in GT_SUFFIXES)}>")
        for stem, gt in gts.items():
            if stem not in maps:
                raise DataError(f"{gt}: ground truth without its prediction map {pred_dir / (stem + '.png')}")
        if not maps:
            raise DataError(f"{pred_dir}: no prediction maps (*.png) and no ground truth in {gt_dir}")
        found[testset] = [(maps[stem], gts[stem]) for stem in sorted(maps)]
    return found


def evaluate_maps(pred_root: str | Path, gt_root: str | Path, protocol: str = "polyp_toolbox") -> pd.DataFrame:
    """Score saved maps against a GT tree (``<gt_root>/<testset>/masks/``: PraNet's ``TestDataset`` or a
    ``folders`` root): :func:`find_map_pairs`, then :func:`score_testsets` under ``protocol``."""
    return score_testsets(find_map_pairs(pred_root, gt_root), protocol=protocol)


def prediction_table(test_df: pd.DataFrame, out_root: str | Path) -> pd.DataFrame:
    """``testset, stem, pred, gt`` for manifest rows (split, image, mask): where each row's map lives under
    ``out_root`` (``<split>/<mask stem>.png``) and its GT file. Names are checked, nothing is read."""
    out_root = Path(out_root)
    missing = [col for col in ("split", "image", "mask") if col not in test_df.columns]
    if missing:
        raise ValueError(f"test table: missing column(s) {missing}; got {list(test_df.columns)}")
    if len(test_df) == 0:
        raise ValueError("test table: no rows to evaluate")
    table = pd.DataFrame({
        "testset": [str(s) for s in test_df["split"]],
        "stem": [Path(str(m)).stem for m in test_df["mask"]],
        "gt": [str(m) for m in test_df["mask"]],
    })
    bad = sorted({t for t in table["testset"] if t in ("", OVERALL) or t.startswith(".") or "/" in t})
    if bad:
        raise DataError(f"test table: split name(s) {bad} cannot be test-set folders")
    table["pred"] = [str(out_root / t / f"{s}.png") for t, s in zip(table["testset"], table["stem"])]
    clash = table[table.duplicated(["testset", "stem"], keep=False)]
    if len(clash):
        raise DataError(f"masks {clash['gt'].tolist()[:4]} share a stem in one test set: their maps would collide")
    return table[["testset", "stem", "pred", "gt"]]


def evaluate_table(table: pd.DataFrame, protocol: str = "polyp_toolbox") -> pd.DataFrame:
    """Score the maps of a :func:`prediction_table` against its GT files under ``protocol``.

    Every listed map must exist (a missing one is named with its GT); test sets are scored in name
    order, pairs in stem order, exactly as :func:`evaluate_maps` orders a folder tree, so both give
    the same numbers for the same maps.
    """
    return evaluate_table_with_images(table, protocol=protocol)[0]


def evaluate_table_with_images(table: pd.DataFrame,
                               protocol: str = "polyp_toolbox") -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`evaluate_table` and its per-image table (:func:`score_testsets_with_images`): the workflow's
    ``evaluate`` rule writes both."""
    absent = [(p, g) for p, g in zip(table["pred"], table["gt"]) if not Path(p).is_file()]
    if absent:
        raise DataError(f"prediction map {absent[0][0]} for ground truth {absent[0][1]} not found "
                        f"({len(absent)} missing)")
    pairs = {
        testset: sorted(zip(group["pred"], group["gt"]), key=lambda pair: Path(pair[0]).stem)
        for testset, group in sorted(table.groupby("testset", sort=False), key=lambda item: item[0])
    }
    return score_testsets_with_images(pairs, protocol=protocol)


#: Probability threshold of a segmenter's prediction (sigmoid(logit) >= 0.5, i.e. logit >= 0).
PREDICTION_THRESHOLD = 0.5

#: Dice of an empty prediction against an empty mask: both say "no polyp", a perfect agreement.
EMPTY_DICE = 1.0
# ------------------------------------------------------------------------------------------------- Dice
def dice(prediction: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Dice ``2|P ∩ M| / (|P| + |M|)`` per sample of bool (B, H, W) arrays (or one (H, W) pair → shape ()).

    An empty prediction against an empty mask scores :data:`EMPTY_DICE` (1: both say "no polyp"); an
    empty prediction against a polyp, or a prediction against an empty mask, scores 0.
    """
    prediction, mask = np.asarray(prediction), np.asarray(mask)
    if prediction.shape != mask.shape or prediction.ndim not in (2, 3):
        raise ValueError(f"dice: prediction {prediction.shape} and mask {mask.shape} must be equal (H, W) or "
                         "(B, H, W) shapes")
    if prediction.dtype != bool or mask.dtype != bool:
        raise ValueError(f"dice: expected bool arrays, got {prediction.dtype} and {mask.dtype} (threshold first)")
    axes = (-2, -1)
    intersection = np.logical_and(prediction, mask).sum(axis=axes)
    total = prediction.sum(axis=axes) + mask.sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(total == 0, EMPTY_DICE, 2.0 * intersection / np.maximum(total, 1))
    return scores.astype(np.float64)


def prediction_dice(logits: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Dice per sample between a segmenter's (B, 1, H, W) logits, thresholded at sigmoid 0.5, and (B, 1, H, W)
    masks in [0, 1] (> 0.5 is foreground), at the resolution given (both must match)."""
    if logits.shape != masks.shape:
        raise ValueError(f"prediction_dice: logits {tuple(logits.shape)} and masks {tuple(masks.shape)} differ")
    threshold = math.log(PREDICTION_THRESHOLD / (1.0 - PREDICTION_THRESHOLD))  # the logit of 0.5, i.e. 0
    prediction = (logits.detach() >= threshold).flatten(0, 1).cpu().numpy()
    return dice(prediction, (masks.detach() > 0.5).flatten(0, 1).cpu().numpy())
