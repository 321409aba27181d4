"""Test helper: an independent NumPy transcription of the polyp evaluation toolbox (PraNet / Polyp-PVT ``Eval``).

Written from the MATLAB definitions, not from PySODMetrics, so that ``hardgen.evaluation.metrics`` (which uses
PySODMetrics) can be checked against it. Deliberately literal and slow (per pixel, per threshold); only for the
small maps of the tests.

What is transcribed, per test set (``main.m``):

- GT: the mask file's first channel (``rgb2gray`` for a 3-channel file) ``> 128`` as logical.
- map: ``im2double`` (``/ 255`` for 8-bit), then ``mapminmax(x, 0, 1)`` over the whole image (offset, then multiply by
  the gain ``1 / (max - min)``; a constant map passes through unchanged).
- thresholds ``1:-1/255:0`` (256 values, built like MATLAB's colon: from both ends towards the middle); binary map
  ``map >= t``.
- ``Fmeasure_calu``: Dice ``2 TP / (|GT| + |pred|)`` and IoU ``TP / (FN + |pred|)``; every value is 0 when TP == 0.
- ``Enhancedmeasure`` on the binary map (empty GT: ``1 - FM``; full GT: ``FM``; else the enhanced alignment
  matrix); ``sum / (w h - 1 + eps)``.
- ``StructureMeasure`` (alpha 0.5): ``S_object`` with ``std`` (N - 1, 0 for one pixel) and ``S_region`` with the
  1-based centroid ``round(sum(i * col_sum) / total)`` (MATLAB rounds halves away from zero) and ``var``/``cov``.
- ``original_WFb`` (beta 1): ``bwdist`` by brute force (ties between equally near GT pixels go to the lowest
  column-major index: MATLAB does not document its choice), ``fspecial('gaussian', 7, 5)``, ``imfilter`` with zero
  padding. The toolbox cannot score an empty GT (``bwdist`` returns index 0 and MATLAB errors); here, as in
  PySODMetrics, an empty GT scores 0.
- MAE ``mean2(|GT - map|)``.
- Per test set: the Dice / IoU / E curves are averaged over images, then ``mean`` / ``max`` over thresholds give
  meanDic / maxDic, meanIoU / maxIoU, meanEm / maxEm; Sm, wFm and MAE are per-image means.

Also ``dice05`` / ``iou05``: Dice / IoU of ``map > 0.5`` with the same zero-TP rule (not a toolbox number; hardgen's
``Dice@0.5`` / ``IoU@0.5`` extras).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

EPS = 2.220446049250313e-16  # MATLAB eps


# ----------------------------------------------------------------------------------------------- MATLAB basics
def matlab_round(x):
    """MATLAB ``round``: halves away from zero."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def matlab_colon(a: float, d: float, b: float) -> np.ndarray:
    """``a:d:b`` as MATLAB builds it: the first half counted from ``a``, the second half from ``b``."""
    tol = 2.0 * EPS * max(abs(a), abs(b))
    n = int(np.floor((b - a) / d + tol))
    if np.sign(d) * (a + n * d - b) < -tol:  # b is not reached exactly: the last element is a + n d
        b = a + n * d
    out = np.empty(n + 1)
    for k in range(n // 2 + 1):
        out[k] = a + k * d
        out[n - k] = b - k * d
    if n % 2 == 0:
        out[n // 2] = (a + b) / 2
    return out


#: The toolbox's ``Thresholds = 1:-1/255:0``.
THRESHOLDS = matlab_colon(1.0, -1.0 / 255.0, 0.0)


def im2double_u8(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise TypeError(f"expected an 8-bit map, got {image.dtype}")
    return image.astype(np.float64) / 255.0


def mapminmax01(x: np.ndarray) -> np.ndarray:
    """``reshape(mapminmax(x(:)', 0, 1), size(x))``: offset by the minimum, multiply by the gain."""
    xmin, xmax = float(x.min()), float(x.max())
    xrange = xmax - xmin
    gain = 1.0 / xrange if xrange != 0 else np.inf
    if not np.isfinite(xrange) or xrange == 0 or abs(gain) > 1e14:
        gain, offset = 1.0, 0.0  # mapminmax's "fix": ymin offset, unit gain
    else:
        offset = xmin
    return (x - offset) * gain + 0.0


def rgb2gray_u8(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return matlab_round(0.298936021293775 * r + 0.587043074451121 * g + 0.114020904255103 * b).astype(np.uint8)


def read_map(path: str | Path) -> np.ndarray:
    """``resmap(:,:,1)`` of an 8-bit map file."""
    arr = np.asarray(Image.open(path))
    return arr[..., 0] if arr.ndim == 3 else arr


def read_gt(path: str | Path) -> np.ndarray:
    """``gt(:,:,1) > 128`` (after ``rgb2gray`` for a colour file)."""
    arr = np.asarray(Image.open(path))
    if arr.dtype == bool:
        return arr
    if arr.ndim == 3:
        arr = rgb2gray_u8(arr[..., :3])
    return arr > 128


# ----------------------------------------------------------------------------------------------- the measures
def fmeasure_calu(smap: np.ndarray, gt: np.ndarray, threshold: float) -> tuple[float, float]:
    """(Dice, IoU) of ``smap >= threshold``; both 0 when no foreground pixel is hit."""
    threshold = min(threshold, 1.0)
    label = smap >= threshold
    num_rec = int(label.sum())
    num_and = int((label & gt).sum())
    num_obj = int(gt.sum())
    if num_and == 0:
        return 0.0, 0.0
    fn = num_obj - num_and
    return 2.0 * num_and / (num_obj + num_rec), num_and / (fn + num_rec)


def enhanced_measure(fm: np.ndarray, gt: np.ndarray) -> float:
    """``Enhancedmeasure(FM, GT)`` of a binary map."""
    dfm = np.asarray(fm, dtype=bool).astype(np.float64)
    dgt = np.asarray(gt, dtype=bool).astype(np.float64)
    if dgt.sum() == 0:
        enhanced = 1.0 - dfm
    elif (1 - dgt).sum() == 0:
        enhanced = dfm
    else:
        align_fm = dfm - dfm.mean()
        align_gt = dgt - dgt.mean()
        align = 2.0 * (align_gt * align_fm) / (align_gt * align_gt + align_fm * align_fm + EPS)
        enhanced = ((align + 1.0) ** 2) / 4.0
    return float(enhanced.sum() / (dgt.size - 1 + EPS))


def _object(prediction: np.ndarray, region: np.ndarray) -> float:
    values = prediction[region]
    if values.size == 0:
        return 0.0
    x = values.mean()
    sigma = values.std(ddof=1) if values.size > 1 else 0.0
    return float(2.0 * x / (x * x + 1.0 + sigma + EPS))


def s_object(prediction: np.ndarray, gt: np.ndarray) -> float:
    fg = np.where(gt, prediction, 0.0)
    bg = np.where(gt, 0.0, 1.0 - prediction)
    u = gt.mean()
    return u * _object(fg, gt) + (1 - u) * _object(bg, ~gt)


def _var(v: np.ndarray) -> float:
    return float(v.var(ddof=1)) if v.size > 1 else (0.0 if v.size == 1 else np.nan)


def _cov(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return np.nan
    if a.size == 1:
        return 0.0
    return float(((a - a.mean()) * (b - b.mean())).sum() / (a.size - 1))


def _ssim(prediction: np.ndarray, gt: np.ndarray) -> float:
    p, g = prediction.ravel(), gt.ravel().astype(np.float64)
    if p.size == 0:
        return np.nan  # mean2 of an empty block is NaN in MATLAB
    x, y = p.mean(), g.mean()
    sigma_x2, sigma_y2, sigma_xy = _var(p), _var(g), _cov(p, g)
    alpha = 4 * x * y * sigma_xy
    beta = (x * x + y * y) * (sigma_x2 + sigma_y2)
    if alpha != 0:
        return float(alpha / (beta + EPS))
    if beta == 0:
        return 1.0
    return 0.0


def centroid(gt: np.ndarray) -> tuple[int, int]:
    """1-based (X, Y) = (column, row) of the GT's centre of mass, MATLAB-rounded."""
    rows, cols = gt.shape
    total = gt.sum()
    if total == 0:
        return int(matlab_round(cols / 2)), int(matlab_round(rows / 2))
    x = matlab_round((gt.sum(axis=0) * np.arange(1, cols + 1)).sum() / total)
    y = matlab_round((gt.sum(axis=1) * np.arange(1, rows + 1)).sum() / total)
    return int(x), int(y)


def s_region(prediction: np.ndarray, gt: np.ndarray) -> float:
    x, y = centroid(gt)
    hei, wid = gt.shape
    area = wid * hei
    # MATLAB's GT(1:Y, 1:X) etc. are the 0-based slices [:Y, :X]
    blocks = [(slice(0, y), slice(0, x)), (slice(0, y), slice(x, wid)),
              (slice(y, hei), slice(0, x)), (slice(y, hei), slice(x, wid))]
    w1 = x * y / area
    w2 = (wid - x) * y / area
    w3 = x * (hei - y) / area
    weights = [w1, w2, w3, 1.0 - w1 - w2 - w3]
    return float(sum(w * _ssim(prediction[b], gt[b]) for w, b in zip(weights, blocks)))


def structure_measure(prediction: np.ndarray, gt: np.ndarray) -> float:
    y = gt.mean()
    if y == 0:
        return float(1.0 - prediction.mean())
    if y == 1:
        return float(prediction.mean())
    alpha = 0.5
    return alpha * s_object(prediction, gt) + (1 - alpha) * s_region(prediction, gt)


def bwdist(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance of every pixel to the nearest GT pixel and that pixel's (row, col), by brute force.

    Among equally near GT pixels the one with the lowest column-major index wins.
    """
    h, w = gt.shape
    fg_rows, fg_cols = np.nonzero(gt.T)[::-1]  # column-major order of the GT pixels
    rr, cc = np.mgrid[:h, :w]
    d2 = (rr[..., None] - fg_rows) ** 2 + (cc[..., None] - fg_cols) ** 2  # (h, w, n_fg)
    nearest = d2.argmin(axis=-1)  # first minimum = lowest column-major index
    dist = np.sqrt(np.take_along_axis(d2, nearest[..., None], axis=-1)[..., 0].astype(np.float64))
    return dist, np.stack([fg_rows[nearest], fg_cols[nearest]])


def fspecial_gaussian(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    half = (size - 1) / 2
    x, y = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1))
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < EPS * h.max()] = 0
    return h / h.sum() if h.sum() != 0 else h


def imfilter_zero(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``imfilter(image, kernel)``: correlation, zero padding, output the size of ``image``."""
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    padded = np.zeros((image.shape[0] + 2 * ph, image.shape[1] + 2 * pw))
    padded[ph:ph + image.shape[0], pw:pw + image.shape[1]] = image
    out = np.zeros_like(image, dtype=np.float64)
    for u in range(kh):
        for v in range(kw):
            out += kernel[u, v] * padded[u:u + image.shape[0], v:v + image.shape[1]]
    return out


def original_wfb(fg: np.ndarray, gt: np.ndarray) -> float:
    """Weighted F-measure, beta = 1."""
    if not gt.any():
        return 0.0  # the toolbox errors here (see module docstring); 0 as in PySODMetrics
    dgt = gt.astype(np.float64)
    e = np.abs(fg - dgt)
    dst, (near_r, near_c) = bwdist(gt)
    et = e.copy()
    et[~gt] = e[near_r[~gt], near_c[~gt]]
    ea = imfilter_zero(et, fspecial_gaussian(7, 5.0))
    min_e_ea = e.copy()
    better = gt & (ea < e)
    min_e_ea[better] = ea[better]
    b = np.ones_like(dgt)
    b[~gt] = 2.0 - 1 * np.exp(np.log(1 - 0.5) / 5 * dst[~gt])
    ew = min_e_ea * b
    tpw = dgt.sum() - ew[gt].sum()
    fpw = ew[~gt].sum()
    r = 1 - ew[gt].mean()
    p = tpw / (EPS + tpw + fpw)
    return float(2 * (r * p) / (EPS + r + p))


# ------------------------------------------------------------------------------------------ per image / set
@dataclass
class ImageResult:
    dice: np.ndarray  # (256,) over THRESHOLDS
    iou: np.ndarray
    em: np.ndarray
    sm: float
    wfm: float
    mae: float
    dice05: float
    iou05: float


def score_image(map_u8: np.ndarray, gt: np.ndarray) -> ImageResult:
    """All toolbox quantities of one 8-bit map against a logical GT of the same size."""
    if map_u8.shape != gt.shape:
        raise ValueError(f"map {map_u8.shape} and GT {gt.shape} differ in size")
    resmap = mapminmax01(im2double_u8(map_u8))
    gt = gt.astype(bool)
    dice, iou, em = (np.zeros(len(THRESHOLDS)) for _ in range(3))
    for t, threshold in enumerate(THRESHOLDS):
        dice[t], iou[t] = fmeasure_calu(resmap, gt, threshold)
        em[t] = enhanced_measure(resmap >= threshold, gt)
    # Dice / IoU of ``map > 0.5``: the same zero-TP rule through fmeasure_calu at the next representable threshold
    dice05, iou05 = fmeasure_calu(resmap, gt, np.nextafter(0.5, 1.0))
    return ImageResult(
        dice=dice, iou=iou, em=em,
        sm=structure_measure(resmap, gt),
        wfm=original_wfb(resmap, gt),
        mae=float(np.abs(gt.astype(np.float64) - resmap).mean()),
        dice05=dice05, iou05=iou05,
    )


def summarize(images: list[ImageResult]) -> dict[str, float]:
    """main.m's per-test-set numbers (toolbox names) from per-image results."""
    column_dic = np.mean([r.dice for r in images], axis=0)
    column_iou = np.mean([r.iou for r in images], axis=0)
    column_e = np.mean([r.em for r in images], axis=0)
    return {
        "meanDic": float(column_dic.mean()), "meanIoU": float(column_iou.mean()),
        "wFm": float(np.mean([r.wfm for r in images])), "Sm": float(np.mean([r.sm for r in images])),
        "meanEm": float(column_e.mean()), "maxEm": float(column_e.max()),
        "mae": float(np.mean([r.mae for r in images])),
        "maxDic": float(column_dic.max()), "maxIoU": float(column_iou.max()),
        "dice05": float(np.mean([r.dice05 for r in images])), "iou05": float(np.mean([r.iou05 for r in images])),
    }


def score_files(pairs: list[tuple[str | Path, str | Path]]) -> list[ImageResult]:
    return [score_image(read_map(pred), read_gt(gt)) for pred, gt in pairs]
