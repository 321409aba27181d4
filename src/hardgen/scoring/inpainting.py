"""Lesions drawn into real frames, measured: ``results/tables/inpainting.csv``, one row per inpainting variant and
placement (the generated manifest's ``placement``, ``frame`` and ``region`` columns; scoring never depends on how the
samples were made, these measures only read what the manifest records).

- ``outside_psnr``: outside the region redrawn (the dilated mask) the sample must *be* the real frame: the PSNR (dB,
  8-bit peak) of each sample against its frame over the pixels outside its region, the lowest over the set (inf: every
  such pixel equal; 60 dB or more is exact up to 8-bit rounding).
- ``seam_ratio``: the seam: the mean gradient magnitude (Sobel on the Rec. 601 luma) in a band of :func:`seam_band`
  px on either side of the region's border, inside the frame's field of view away from its black border, relative to
  the same band of the real frame, pooled over the set (1: as much structure as the real frame there; well above 1: a
  visible edge; well below: a smear).
- ``margin_vs_real``: does the lesion follow its mask: the red-chromaticity (grey-level) gap of the images against
  their labels over a shuffled mask, relative to the real training images' same gap (:mod:`hardgen.scoring.
  mask_following`'s cue measure).
- ``hardness``: the distance to the real prototype on the in-loss backbones (``hard.loss_backbones``): the mean over
  the set of each sample's mean z (the score table's, :mod:`hardgen.scoring.score`).

A measure the data leave undefined (no pixel outside the regions, an empty band, a real band without gradient, a cue
the real images do not validate, a sample without an in-loss score) is NaN in its row, with the reason logged
(:func:`inpainting_table` returns the notes), never an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from hardgen.core.io import (
    LUMA,
    DataError,
    fit_square,
    read_csv_table,
    read_mask,
    read_rgb,
)
from hardgen.data.placement import dilate_mask, erode_mask, field_of_view
from hardgen.scoring.mask_following import (
    Pairs,
    mask_following_table,
    measure_rows,
    read_pairs,
)

LOG = logging.getLogger("hardgen.scoring.inpainting")

#: The table's columns, in order (``results/tables/inpainting.csv``).
COLUMNS = ("variant", "placement", "outside_psnr", "seam_ratio", "margin_vs_real", "hardness")


def seam_band(resolution: int) -> int:
    """Half-width (px) of the seam's band at a resolution: 2 px at 64 px, 16 px at 512 px (1/32 of the side)."""
    return max(2, round(resolution / 32))


@dataclass(frozen=True)
class InpaintedSet:
    """One variant's samples of one placement: RGB uint8 images, their labels, frames and regions (bool)."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    frames: list[np.ndarray]
    regions: list[np.ndarray]


def outside_psnr(images: Sequence[np.ndarray], frames: Sequence[np.ndarray], regions: Sequence[np.ndarray]
                 ) -> tuple[float, str | None]:
    """(the lowest PSNR over the samples of image vs frame outside the region, or NaN, and why)."""
    values = []
    for image, frame, region in zip(images, frames, regions, strict=True):
        outside = ~np.asarray(region, dtype=bool)
        if not outside.any():
            continue
        error = np.mean((np.asarray(image, np.float64)[outside] - np.asarray(frame, np.float64)[outside]) ** 2)
        values.append(math.inf if error == 0 else 10 * math.log10(255.0 ** 2 / error))
    if not values:
        return math.nan, "every region covers its whole image: no pixel outside it"
    return float(min(values)), None


def _gradient(image: np.ndarray) -> np.ndarray:
    luma = np.asarray(image, dtype=np.float64)[..., :3] @ LUMA
    return np.hypot(cv2.Sobel(luma, cv2.CV_64F, 1, 0, ksize=3), cv2.Sobel(luma, cv2.CV_64F, 0, 1, ksize=3))


def seam_ratio(images: Sequence[np.ndarray], frames: Sequence[np.ndarray], regions: Sequence[np.ndarray],
               band: int) -> tuple[float, str | None]:
    """(the pooled mean gradient magnitude of the samples in the band along their regions' borders over the frames'
    in the same band, or NaN, and why). The band: ``band`` px either side of the border, inside the frame's field of
    view eroded by ``band`` + 1 px (the black border's own edge is no seam)."""
    sample_sum = frame_sum = 0.0
    pixels = 0
    for image, frame, region in zip(images, frames, regions, strict=True):
        region = np.asarray(region, dtype=bool)
        ring = dilate_mask(region, band) & ~erode_mask(region, band) & erode_mask(field_of_view(frame), band + 1)
        if not ring.any():
            continue
        sample_sum += float(_gradient(image)[ring].sum())
        frame_sum += float(_gradient(frame)[ring].sum())
        pixels += int(ring.sum())
    if not pixels:
        return math.nan, "no region has a border inside the field of view: no seam to measure"
    if frame_sum == 0:
        return math.nan, "the real frames are flat along the seams (no gradient to compare with)"
    return sample_sum / frame_sum, None


def inpainting_table(real: Pairs, sets: Mapping[tuple[str, str], InpaintedSet],
                     hardness: Mapping[tuple[str, str], float], resolution: int, seed: int = 0
                     ) -> tuple[pd.DataFrame, list[str]]:
    """The table :data:`COLUMNS`, one row per ``(variant, placement)`` of ``sets`` in their order, and the notes on
    its undefined values. ``real``: the real training images and masks (the mask-following reference);
    ``hardness``: each set's mean in-loss z (NaN: undefined)."""
    names = {key: f"{key[0]}:{key[1]}" for key in sets}
    following = measure_rows(mask_following_table(
        real, {names[key]: (s.images, s.labels) for key, s in sets.items()}, seed=seed))
    rows, notes = [], []
    for key, samples in sets.items():
        where = f"{key[0]} {key[1]}"
        psnr, why_psnr = outside_psnr(samples.images, samples.frames, samples.regions)
        seam, why_seam = seam_ratio(samples.images, samples.frames, samples.regions, seam_band(resolution))
        cue = following.loc[names[key]]
        margin = float(cue["margin_vs_real"])
        hard = float(hardness.get(key, math.nan))
        for measure, value, why in (("outside_psnr", psnr, why_psnr), ("seam_ratio", seam, why_seam),
                                    ("margin_vs_real", margin, cue["reason"] or None),
                                    ("hardness", hard, None if math.isfinite(hard) else
                                     "no in-loss score (z) for its samples")):
            if not (isinstance(value, float) and (math.isfinite(value) or value == math.inf)):
                notes.append(f"{where}: {measure} undefined: {why}")
        rows.append({"variant": key[0], "placement": key[1], "outside_psnr": psnr, "seam_ratio": seam,
                     "margin_vs_real": margin, "hardness": hard})
    for note in notes:
        LOG.warning("inpainting: %s", note)
    return pd.DataFrame(rows, columns=list(COLUMNS)), notes


def set_hardness(scores: pd.DataFrame, sample_ids: Sequence[str], loss_backbones: Sequence[str]) -> float:
    """The mean over ``sample_ids`` of each sample's mean z over ``loss_backbones`` (NaN when a sample lacks one)."""
    rows = scores[scores["backbone"].astype(str).isin([str(b) for b in loss_backbones])]
    z = rows.pivot_table(index="sample_id", columns="backbone", values="z", aggfunc="first")
    z = z.reindex(index=[str(s) for s in sample_ids], columns=[str(b) for b in loss_backbones])
    if z.empty or z.isna().any().any():
        return math.nan
    return float(z.mean(axis=1).mean())


def inpainting_from_files(conditions_csv: str | Path, manifest_csv: str | Path,
                          generated: Mapping[str, str | Path], scores: Mapping[str, str | Path],
                          loss_backbones: Sequence[str], size: int, seed: int = 0
                          ) -> tuple[pd.DataFrame, list[str]]:
    """:func:`inpainting_table` of the workflow's files: the real training pairs of the conditions table at ``size``,
    each inpainting variant's generated manifest (``{variant: manifest}``, with ``placement, frame, region``) and score
    table (``{variant: scores CSV}``); rows per variant in ``generated``'s order, placements in the manifest's order."""
    from hardgen.data.train_data import load_training_pairs

    pairs = load_training_pairs(conditions_csv, manifest_csv)
    if len(pairs) < 2:
        raise DataError(f"{conditions_csv}: {len(pairs)} conditions with a real image; the measures need >= 2")
    real = read_pairs(list(pairs["image"]), list(pairs["mask"]), size)
    sets: dict[tuple[str, str], InpaintedSet] = {}
    hardness: dict[tuple[str, str], float] = {}
    for variant, manifest in generated.items():
        frame = read_csv_table(manifest, ("sample_id", "image", "mask", "placement", "frame", "region"),
                               "inpainting manifest", dtype={"sample_id": str})
        if frame.empty:
            raise DataError(f"{manifest}: generated manifest has no samples")
        table = read_csv_table(scores[variant], ("sample_id", "backbone", "z"), "score table",
                               dtype={"sample_id": str})
        for placement in frame["placement"].drop_duplicates():
            rows = frame[frame["placement"] == placement]
            sets[(variant, placement)] = InpaintedSet(
                [fit_square(read_rgb(p), size) for p in rows["image"]],
                [fit_square(read_mask(p), size, is_mask=True) for p in rows["mask"]],
                [fit_square(read_rgb(p), size) for p in rows["frame"]],
                [fit_square(read_mask(p), size, is_mask=True) for p in rows["region"]])
            hardness[(variant, placement)] = set_hardness(table, list(rows["sample_id"]), loss_backbones)
    return inpainting_table(real, sets, hardness, size, seed)
