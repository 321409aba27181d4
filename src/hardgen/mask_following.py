"""Do generated samples follow their masks? A model-free measure on the images alone (torch-free).

A polyp is redder than the mucosa around it, so in a real image the red chromaticity ``R / (R + G + B)`` is higher
inside the polyp's mask than outside it. A generator that places its polyp where the condition's mask says shows
the same contrast against its own mask; against the mask of another image (a seeded derangement of the masks: no
image keeps its own) the contrast is what chance placement gives. The measure is the gap between the two, as a
fraction of the real training crops' gap at the generator's resolution (``margin_vs_real``: 1 = follows its masks
as strongly as the real images do, 0 = ignores them). Chromaticity, not brightness, so a generator that gets the
exposure wrong is not penalised, and specular highlights (white: 1/3) pull every region towards neutral alike.
Grayscale modalities (ultrasound, CT, MRI: the real images' three channels are equal, :func:`hardgen.io.gray_to_rgb`)
carry no chromaticity; there the cue is the grey level (Rec. 601 luma / 255) instead (:func:`mask_cue`), and the
reference gap may be negative (a dark, hypoechoic lesion): the ratio keeps its meaning, only a zero gap is an error.

The second column counts what real endoscope frames nearly always show and a generator that learned only texture
does not: the black corners outside the octagonal field of view (:func:`dark_corners`).

Used by rule ``mask_following`` (``results/tables/mask_following.csv``: one row per variant plus ``real``) for
any base, tiny or SD1.5 on real data, and by the conditioning test of the training path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

LOG = logging.getLogger("hardgen.mask_following")

#: The table's columns, in order (``results/tables/mask_following.csv``).
COLUMNS = ("variant", "own", "shuffled", "margin_vs_real", "dark_corners")
#: Side of each corner patch as a fraction of the image side: 4 px at 64 px, 32 px at 512 px.
CORNER_FRACTION = 1 / 16
#: A corner patch is dark when its mean Rec. 601 luma (0-255) is below this. Measured on the demo's 24 training
#: images at 64 px: 67 % of them have four dark corners (the octagonal endoscope mask cuts 10-18 % of the short
#: side off each corner; centre crops of wide frames lose some of it).
DARK_LUMA = 40.0
#: Rec. 601 luma weights (R, G, B).
LUMA = np.array([0.299, 0.587, 0.114])


def red_chromaticity(image: np.ndarray) -> np.ndarray:
    """``R / (R + G + B)`` per pixel of an ``(H, W, 3)`` image; black pixels (sum 0) count as neutral, 1/3."""
    rgb = np.asarray(image, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"red_chromaticity: expected an (H, W, 3) image, got shape {rgb.shape}")
    total = rgb.sum(axis=-1)
    return np.divide(rgb[..., 0], total, out=np.full(total.shape, 1 / 3), where=total > 0)


def is_grayscale(images: Sequence[np.ndarray]) -> bool:
    """Whether every image's three channels are equal (a grayscale modality brought to RGB)."""
    return all(np.array_equal(im[..., 0], im[..., 1]) and np.array_equal(im[..., 1], im[..., 2]) for im in images)


def mask_cue(image: np.ndarray, cue: str = "red") -> np.ndarray:
    """The per-pixel cue whose inside-vs-outside gap is measured: ``red`` chromaticity (colour images) or ``luma``
    (Rec. 601 luma / 255: grayscale modalities)."""
    if cue == "red":
        return red_chromaticity(image)
    if cue == "luma":
        return (np.asarray(image, dtype=np.float64)[..., :3] @ LUMA) / 255.0
    raise ValueError(f"mask following: unknown cue {cue!r} (red | luma)")


def _check_pairs(images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
    if len(images) != len(masks):
        raise ValueError(f"mask following: {len(images)} images but {len(masks)} masks")
    if not len(images):
        raise ValueError("mask following: no images")


def chroma_contrasts(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], cue: str = "red") -> np.ndarray:
    """Per image: mean red chromaticity inside its mask minus outside it; NaN where the mask is empty or full.

    Each mask must have its image's height and width (a mismatch raises ``ValueError`` naming the index).
    """
    _check_pairs(images, masks)
    out = np.full(len(images), np.nan)
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != np.shape(image)[:2]:
            raise ValueError(f"mask following: mask {i} has shape {mask.shape}, its image {np.shape(image)[:2]}")
        inside = int(mask.sum())
        if 0 < inside < mask.size:
            chroma = mask_cue(image, cue)
            out[i] = chroma[mask].mean() - chroma[~mask].mean()
    return out


def red_chromaticity_margin(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], cue: str = "red") -> float:
    """Mean over images of (mean red chromaticity inside the mask − outside it).

    Images whose mask is empty or covers the whole image have no inside or no outside and are left out (logged);
    if none is left, ``ValueError``.
    """
    contrasts = chroma_contrasts(images, masks, cue)
    valid = np.isfinite(contrasts)
    if not valid.any():
        raise ValueError("mask following: every mask is empty or full; the margin is undefined")
    if not valid.all():
        LOG.info("mask following: %d of %d masks empty or full, left out", int((~valid).sum()), len(contrasts))
    return float(contrasts[valid].mean())


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` with no fixed point (Sattolo's algorithm: one random n-cycle)."""
    if n < 2:
        raise ValueError(f"derangement: needs at least 2 items (got {n}): a single image has no other mask")
    rng = np.random.default_rng(seed)
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: Sattolo, every element moves
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def shuffled_margin(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], seed: int = 0,
                    cue: str = "red") -> float:
    """:func:`red_chromaticity_margin` against another image's mask (:func:`derangement` of the masks)."""
    _check_pairs(images, masks)
    perm = derangement(len(masks), seed)
    return red_chromaticity_margin(images, [masks[j] for j in perm], cue)


def dark_corners(images: Sequence[np.ndarray], fraction: float = CORNER_FRACTION,
                 threshold: float = DARK_LUMA) -> float:
    """Share of images whose four corner patches are all dark: the endoscope's black border.

    A corner patch is the ``max(1, round(fraction × side))`` square in each corner (4 px at 64 px); it is dark when
    its mean Rec. 601 luma (0-255 scale) is below ``threshold``.
    """
    if not len(images):
        raise ValueError("dark_corners: no images")
    dark = []
    for image in images:
        luma = np.asarray(image, dtype=np.float64)[..., :3] @ LUMA
        h, w = luma.shape
        ph, pw = max(1, round(fraction * h)), max(1, round(fraction * w))
        patches = (luma[:ph, :pw], luma[:ph, -pw:], luma[-ph:, :pw], luma[-ph:, -pw:])
        dark.append(all(p.mean() < threshold for p in patches))
    return float(np.mean(dark))


def mask_following_row(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], seed: int = 0,
                       cue: str = "red") -> dict[str, float]:
    """``own``, ``shuffled`` (margins of ``cue``) and ``dark_corners`` of one set of images and their masks."""
    return {"own": red_chromaticity_margin(images, masks, cue), "shuffled": shuffled_margin(images, masks, seed, cue),
            "dark_corners": dark_corners(images)}


Pairs = tuple[Sequence[np.ndarray], Sequence[np.ndarray]]


def mask_following_table(real: Pairs, variants: Mapping[str, Pairs], seed: int = 0) -> pd.DataFrame:
    """One row per set (``real`` first, then ``variants`` in order): ``variant, own, shuffled, margin_vs_real,
    dark_corners``, with ``margin_vs_real = (own − shuffled) / (real own − real shuffled)``.

    ``real`` and each variant are ``(images, masks)``: RGB uint8 ``(H, W, 3)`` images with their bool masks, every
    set at the same resolution (the generator's). The cue is red chromaticity, or the grey level when every real
    image is grayscale (:func:`mask_cue`). A real margin ≤ 0 for red (0 for grey; a dark lesion gives a negative one)
    means the real images' cue does not mark their masks, so nothing can be measured against it: ``ValueError``.
    """
    if "real" in variants:
        raise ValueError("mask following: 'real' is the reference row's name, not a variant")
    cue = "luma" if is_grayscale(real[0]) else "red"  # grayscale modalities: the grey level, not chromaticity
    rows = [{"variant": "real", **mask_following_row(*real, seed=seed, cue=cue)}]
    rows += [{"variant": name, **mask_following_row(*pairs, seed=seed, cue=cue)} for name, pairs in variants.items()]
    reference = rows[0]["own"] - rows[0]["shuffled"]
    if not (reference > 0 if cue == "red" else reference != 0):
        raise ValueError(f"mask following: the real images' own-vs-shuffled margin is {reference:.4g}: their "
                         f"{'red chromaticity' if cue == 'red' else 'grey level'} does not mark their masks, so no "
                         "sample can be measured against it")
    LOG.info("mask following: cue %s (real images %s)", cue, "grayscale" if cue == "luma" else "in colour")
    for row in rows:
        row["margin_vs_real"] = (row["own"] - row["shuffled"]) / reference
    return pd.DataFrame(rows, columns=list(COLUMNS))


# ---------------------------------------------------------------------------------------------- files
def read_pairs(images: Sequence[str | Path], masks: Sequence[str | Path], size: int) -> Pairs:
    """Read image and mask files and bring both to ``size``² with :func:`hardgen.io.fit_square` (the workflow's
    one transform; a no-op for files already at ``size``)."""
    from hardgen.io import fit_square, read_mask, read_rgb

    if len(images) != len(masks):
        raise ValueError(f"mask following: {len(images)} image files but {len(masks)} mask files")
    return ([fit_square(read_rgb(p), size) for p in images],
            [fit_square(read_mask(p), size, is_mask=True) for p in masks])


def mask_following_from_files(
    conditions_csv: str | Path,
    data_manifest_csv: str | Path,
    generated: Mapping[str, str | Path],
    size: int,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`mask_following_table` of the workflow's files.

    ``real``: the real training images of the conditions table (layouts without a real image are left out) at
    ``size`` with their conditions' masks; each variant: the images and masks of its generated manifest
    (``results/generated/<variant>/manifest.csv``).
    """
    from hardgen.io import DataError
    from hardgen.train_data import load_training_pairs

    pairs = load_training_pairs(conditions_csv, data_manifest_csv)  # kind == real rows: layouts have no real image
    if len(pairs) < 2:
        raise DataError(f"{conditions_csv}: {len(pairs)} conditions with a real image; mask following needs >= 2")
    real = read_pairs(list(pairs["image"]), list(pairs["mask"]), size)
    variants = {}
    for name, manifest in generated.items():
        frame = pd.read_csv(manifest)
        missing = [c for c in ("image", "mask") if c not in frame.columns]
        if missing:
            raise DataError(f"{manifest}: generated manifest lacks columns {missing}")
        variants[name] = read_pairs(list(frame["image"]), list(frame["mask"]), size)
    return mask_following_table(real, variants, seed=seed)
