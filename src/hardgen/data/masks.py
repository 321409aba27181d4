"""The mask rule: which stored values of a mask file are foreground, and when an 8-bit mask is binary.

:func:`decode_mask` reads any mask a dataset may ship (two values, a 0/255 mask with JPEG or anti-aliasing noise,
a label map with ``data.foreground``); :func:`binary_mask_problem` says why a grey-level mask is not binary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from hardgen.core.io import DataError, binarize

#: Grey levels in this closed range are "undecided": neither background nor foreground.
MID_GREY = (32, 223)
#: (1) At most this share of a mask's pixels may be mid-grey. A photograph has far more (> 30 %); 5 %
#: rather than 2 % leaves room for small masks with long boundaries (a 2x bilinear upscale of a
#: 100 px mask reaches 2 %).
MAX_MID_GREY_FRACTION = 0.05
#: (2) At most this many mid-grey pixels per boundary pixel: anti-aliasing, bilinear resizing and JPEG
#: leave a band about one pixel wide (measured: JPEG q30 <= 0.6, 2x bilinear = 1.0); a soft map blurred
#: with sigma >= 1 px has a wider band (measured >= 1.2).
MAX_MID_GREY_PER_BOUNDARY_PX = 1.1
#: (3) At least this share of mid-grey pixels must lie within NEAR_BOUNDARY_PX (Chebyshev) of the
#: boundary: JPEG ringing stays inside the 8x8 blocks that the edge crosses.
MIN_MID_GREY_NEAR_BOUNDARY = 0.90
NEAR_BOUNDARY_PX = 8


def binary_mask_problem(gray: np.ndarray) -> str | None:
    """Why a grey-level mask is not a (possibly JPEG-compressed) binary mask, or None if it is one.

    Rule, with *mid* = pixels whose grey level lies in [32, 223] and *boundary* = the morphological
    gradient (3x3 cross) of the mask thresholded at 127. A mask is binary when all hold:
    (1) mid <= 5 % of all pixels; (2) mid <= 1.1 x boundary pixels (the grey band is at most about one
    pixel wide); (3) >= 90 % of mid pixels lie within 8 px of the boundary. JPEG noise and anti-aliased
    edges pass; a photograph fails (1), a blurred soft or probability map fails (2).
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected an HxW uint8 grey-level mask, got {gray.dtype} {gray.shape}")
    mid = (gray >= MID_GREY[0]) & (gray <= MID_GREY[1])
    n_mid = int(mid.sum())
    if n_mid == 0:
        return None
    mid_fraction = n_mid / mid.size
    if mid_fraction > MAX_MID_GREY_FRACTION:
        return (f"not a binary mask: {mid_fraction:.1%} of pixels are mid-grey {list(MID_GREY)} "
                f"(allowed {MAX_MID_GREY_FRACTION:.0%}); a photograph or a soft map?")
    fg = binarize(gray).astype(np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    boundary = cv2.dilate(fg, cross) != cv2.erode(fg, cross)
    per_boundary_px = n_mid / max(int(boundary.sum()), 1)
    if per_boundary_px > MAX_MID_GREY_PER_BOUNDARY_PX:
        return (f"not a binary mask: {per_boundary_px:.2f} mid-grey pixels per boundary pixel "
                f"(allowed {MAX_MID_GREY_PER_BOUNDARY_PX}); a soft or probability map?")
    window = np.ones((2 * NEAR_BOUNDARY_PX + 1,) * 2, np.uint8)
    near = cv2.dilate(boundary.astype(np.uint8), window).astype(bool)
    near_share = float((mid & near).sum()) / n_mid
    if near_share < MIN_MID_GREY_NEAR_BOUNDARY:
        return (f"not a binary mask: only {near_share:.0%} of its mid-grey pixels lie within "
                f"{NEAR_BOUNDARY_PX} px of the mask boundary (need {MIN_MID_GREY_NEAR_BOUNDARY:.0%})")
    return None


def decode_mask(values: np.ndarray, foreground: Sequence[int] | None, name: str | Path) -> np.ndarray:
    """The bool foreground of a mask's stored values (see :func:`build_manifest` for the rule).

    ``foreground`` (``data.foreground``): the label values that are foreground, everything else background. Without
    it: one or two distinct values are a binary mask in those values (the higher one is foreground; a single value
    is all background when 0, else all foreground); more values are accepted only as an 8-bit 0/255 mask with
    JPEG or anti-aliasing noise (:func:`binary_mask_problem`, thresholded at 127, as before layouts existed).
    Anything else - a label map (0, 1, 2, ...: all values below 32, or large mid-grey classes), a soft map - raises
    :class:`DataError` naming ``name``.
    """
    values = np.asarray(values)
    if values.dtype == bool:
        values = values.astype(np.uint8)
    if values.ndim != 2:
        raise DataError(f"{name}: a mask must be single-channel, got shape {values.shape}")
    if foreground is not None:
        return np.isin(values, np.asarray(list(foreground)))
    distinct = np.unique(values)
    if len(distinct) == 1:
        return np.full(values.shape, bool(distinct[0] > 0))
    if len(distinct) == 2:
        return values == distinct[1]
    problem = None
    if values.dtype != np.uint8:
        problem = "not a binary mask: more than two values in a non-8-bit mask"
    elif distinct[-1] < MID_GREY[0]:
        problem = "not a binary mask: more than two values, all below 32 (a label map?)"
    else:
        problem = binary_mask_problem(values)
    if problem is not None:
        shown = ", ".join(str(v) for v in distinct[:8]) + (", ..." if len(distinct) > 8 else "")
        raise DataError(f"{name}: {problem} (the mask has {len(distinct)} distinct values: {shown}; a label map "
                        "needs data.foreground: [labels] naming the foreground class(es))")
    return binarize(values)
