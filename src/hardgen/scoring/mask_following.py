"""Do generated samples follow their masks? Two measures, each against the real images' own gap.

Both compare each image with its own mask against a seeded derangement of the masks (another image's different
mask: no image keeps its own, nor an identical copy of it, :func:`mask_derangement`), averaged over the set, and scale the gap by the real training images' same gap
at the generator's resolution (``margin_vs_real``: 1 = follows its masks as strongly as the real images do, 0 =
ignores them).

- **The image's own cue** (measure ``red_chromaticity``, or ``luma``; model-free, torch-free). A polyp is usually
  redder than the mucosa around it, so in a real image the red chromaticity ``R / (R + G + B)`` is higher inside
  the polyp's mask than outside it; a generator that places its polyp where the condition's mask says shows the
  same contrast against its own mask, and against another image's mask what chance placement gives. Chromaticity,
  not brightness, so a generator that gets the exposure wrong is not penalised, and specular highlights (white: 1/3)
  pull every region towards neutral alike. Grayscale modalities (ultrasound, CT, MRI: the real images' three
  channels are equal, :func:`hardgen.core.io.gray_to_rgb`) carry no chromaticity; there the cue is the grey level (Rec.
  601 luma / 255) instead (:func:`mask_cue`), and the reference gap may be negative (a dark, hypoechoic lesion).
  The cue need not mark the masks at all: many real colonoscopy polyps have the mucosa's colour (real gap ~0). The
  cue is *validated* when the real gap is > 0 (red) or != 0 (grey level) beyond chance: the 95 % bootstrap
  interval of the real images' mean paired gap (each image against its own minus against the shuffled mask,
  :func:`gap_interval`) excludes 0 (measured on 16 real breast-ultrasound scans, one of them with a coloured
  caliper: a red-chromaticity gap of 0.002 that only the interval exposes as noise); otherwise every row of the measure is
  written with its ``own`` and ``shuffled`` values, ``margin_vs_real`` NaN, ``status`` ``undefined`` and the
  ``reason``: nothing can be measured against a reference that does not mark the masks.
- **The real-only judges' Dice** (measure ``judge_dice:<arch>``, modality-agnostic: :func:`judge_dice_margins`).
  Each judge (rule ``train_judge``, one per ``segment.archs`` entry at seed ``feedback.judge_seed``) predicts
  every image; its Dice against the image's own mask minus against the deranged mask (the same derangement, the
  same seed), over the real gap. The reference images are the judges' own training images, so the reference gap is
  the judge at its best (a training-set Dice) and a sample's ratio is conservative: a generator whose samples are
  as segmentable as unseen real images scores below 1. A real gap <= 0, or one within chance (the same interval),
  means the judge did not learn the masks, which is then the rows' reason.

The last measure-free column counts what real endoscope frames nearly always show and a generator that learned
only texture does not: the black corners outside the octagonal field of view (:func:`dark_corners`); it is a
property of a set of images, written on the cue's rows and NaN on the judges' rows.

Used by rule ``mask_following`` (``results/tables/mask_following.csv``: per measure, the ``real`` row then one row
per variant; :func:`mask_following_sentences` says it in words for the report) for any base, tiny or SD1.5 on real
data, by the conditioning test of the training path and the pre-training model cards (the cue alone:
:func:`mask_following_table` without judges, :func:`measure_rows`), and by the LoRA training's validation (the cue's
margin of a few samples against a reference computed once: :func:`real_reference`, :func:`margin_vs_reference`).
The module imports no torch; the judges' loading (:func:`load_judge_predictors`) imports it when called.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hardgen.core.io import LUMA

LOG = logging.getLogger("hardgen.scoring.mask_following")

#: The table's columns, in order (``results/tables/mask_following.csv``).
COLUMNS = ("variant", "measure", "own", "shuffled", "margin_vs_real", "dark_corners", "status", "reason")
#: The cue measure's name per cue (:func:`mask_cue`).
CUE_MEASURES = {"red": "red_chromaticity", "luma": "luma"}
#: A judge's measure: ``judge_dice:<arch>`` (the ``segment.archs`` key).
JUDGE_PREFIX = "judge_dice:"
#: ``status`` of a row: its ``margin_vs_real`` is a number (``ok``) or NaN for the ``reason`` given (``undefined``).
OK, UNDEFINED = "ok", "undefined"
#: Side of each corner patch as a fraction of the image side: 4 px at 64 px, 32 px at 512 px.
CORNER_FRACTION = 1 / 16
#: A corner patch is dark when its mean Rec. 601 luma (0-255) is below this. Measured on the demo's 24 training
#: images at 64 px: 67 % of them have four dark corners (the octagonal endoscope mask cuts 10-18 % of the short
#: side off each corner; centre crops of wide frames lose some of it).
DARK_LUMA = 40.0
#: :func:`is_grayscale`: a pixel carries colour when its channels are more than this many grey levels apart, an image
#: is grayscale when at most this fraction of its pixels do, and a set when at least this share of its images are.
GRAY_SPREAD, GRAY_FRACTION, GRAY_SHARE = 8, 0.1, 0.9
#: The real images validate a measure when the 95 % interval of their mean paired gap (each image against its own
#: mask minus against the shuffled one) excludes 0: a percentile bootstrap over the images
#: (:func:`hardgen.evaluation.contrasts.bootstrap_interval`), this many seeded resamples. A gap that chance alone could give
#: (a few real images, a cue that barely marks the masks) is no reference to divide by.
VALIDATION_RESAMPLES = 2000
#: Fewer real images with a defined paired gap than this validate nothing (a percentile bootstrap of 2 values is
#: their range).
MIN_PAIRED = 5

#: A judge as the table reads it: RGB uint8 (H, W, 3) images in, one bool (H, W) predicted mask per image out.
Predict = Callable[[Sequence[np.ndarray]], Sequence[np.ndarray]]


def red_chromaticity(image: np.ndarray) -> np.ndarray:
    """``R / (R + G + B)`` per pixel of an ``(H, W, 3)`` image; black pixels (sum 0) count as neutral, 1/3."""
    rgb = np.asarray(image, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"red_chromaticity: expected an (H, W, 3) image, got shape {rgb.shape}")
    total = rgb.sum(axis=-1)
    return np.divide(rgb[..., 0], total, out=np.full(total.shape, 1 / 3), where=total > 0)


def is_grayscale(images: Sequence[np.ndarray], spread: int = GRAY_SPREAD, fraction: float = GRAY_FRACTION,
                 share: float = GRAY_SHARE) -> bool:
    """Whether a set of images is a grayscale modality brought to RGB: at least ``share`` of its images have at most
    ``fraction`` of their pixels with channels more than ``spread`` grey levels apart. Exactly equal channels
    (:func:`hardgen.core.io.gray_to_rgb`) are grayscale; so is a set of scans stored as colour JPEG (channel noise of a few
    levels), with burnt-in coloured calipers and boxes (real breast ultrasound: 3 % of one scan's pixels, none in 15
    others) or a few colour-Doppler frames. Real colonoscopy frames are far from it (58-94 % of their pixels carry
    colour, measured on 48 Kvasir-SEG and PolypGen frames)."""
    grey = []
    for image in images:
        rgb = np.asarray(image, dtype=np.int16)[..., :3]
        grey.append(((rgb.max(axis=-1) - rgb.min(axis=-1)) > spread).mean() <= fraction)
    return bool(grey) and float(np.mean(grey)) >= share


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


def _mask_key(mask: np.ndarray) -> tuple:
    """A mask's content as a hashable key: equal keys, identical masks."""
    mask = np.asarray(mask, dtype=bool)
    return mask.shape, np.packbits(mask).tobytes()


def mask_derangement(masks: Sequence[np.ndarray], seed: int = 0) -> np.ndarray:
    """For each image, the index of another image whose mask *differs* from its own: :func:`derangement` over the
    distinct masks (in order of first appearance), each image taking the first image of its mask's partner.

    Samples generated from one condition (``generation.per_mask`` > 1) share their mask; a derangement of the images
    alone would pair some of them with an identical copy of their own mask, and their "shuffled" value would be their
    own. With every mask distinct this is exactly :func:`derangement` ``(len(masks), seed)``. Fewer than 2 distinct
    masks: ``ValueError``.
    """
    groups: dict[tuple, int] = {}
    first: list[int] = []
    group_of = []
    for i, mask in enumerate(masks):
        key = _mask_key(mask)
        if key not in groups:
            groups[key] = len(first)
            first.append(i)
        group_of.append(groups[key])
    if len(first) < 2:
        raise ValueError(f"mask following: {len(masks)} images but {len(first)} distinct mask: no other mask to "
                         "shuffle against")
    partner = derangement(len(first), seed)
    return np.array([first[partner[g]] for g in group_of], dtype=int)


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


# ---------------------------------------------------------------------------------------------- the judges' Dice
def judge_dice_margins(predictions: Sequence[np.ndarray], masks: Sequence[np.ndarray], seed: int = 0
                       ) -> tuple[float, float]:
    """``(own, shuffled)``: the mean Dice of each image's predicted mask against its own mask and against the mask
    :func:`mask_derangement` (``seed``) gives it, the cue measure's pairing.

    Bool ``(H, W)`` predictions and masks, one each per image, equal shapes (a mismatch raises ``ValueError`` naming
    the index); Dice as :func:`hardgen.evaluation.metrics.dice` (an empty prediction on an empty mask is 1). Needs two images.
    """
    own, shuffled = judge_dice_pairs(predictions, masks, seed)
    return float(np.mean(own)), float(np.mean(shuffled))


def judge_dice_pairs(predictions: Sequence[np.ndarray], masks: Sequence[np.ndarray], seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the Dice of :func:`judge_dice_margins` against its own and against another image's different mask
    (:func:`mask_derangement`)."""
    from hardgen.evaluation.metrics import dice

    _check_pairs(predictions, masks)
    perm = mask_derangement(masks, seed)
    own, shuffled = [], []
    for i, prediction in enumerate(predictions):
        prediction = np.asarray(prediction, dtype=bool)
        for mask, out in ((masks[i], own), (masks[perm[i]], shuffled)):
            mask = np.asarray(mask, dtype=bool)
            if prediction.shape != mask.shape:
                raise ValueError(f"mask following: prediction {i} has shape {prediction.shape}, the mask "
                                 f"{mask.shape}")
            out.append(float(dice(prediction, mask)))
    return np.asarray(own), np.asarray(shuffled)


def segmenter_predictor(model: Any, size: int, device: Any = "cpu", batch_size: int = 16, name: str = "judge"
                    ) -> Predict:
    """A trained segmenter (:func:`hardgen.segmentation.build.load_segmenter`) as a :data:`Predict`: each image
    resized to ``size`` and ImageNet-normalised (:func:`hardgen.segmentation.datasets.eval_transform`, as the judge was
    evaluated), its logits (:func:`hardgen.models.archs.predict_logits`) upsampled bilinearly to the image's own size
    (as the benchmark's maps, :mod:`hardgen.segmentation.predict`) and thresholded at sigmoid 0.5
    (:data:`hardgen.evaluation.metrics.PREDICTION_THRESHOLD`)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from hardgen.evaluation.metrics import PREDICTION_THRESHOLD
    from hardgen.models.archs import predict_logits
    from hardgen.segmentation.datasets import eval_transform

    transform = eval_transform(size)
    threshold = math.log(PREDICTION_THRESHOLD / (1.0 - PREDICTION_THRESHOLD))
    model = model.to(device).eval()

    @torch.inference_mode()
    def predict(images: Sequence[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in tqdm(range(0, len(images), batch_size), desc=f"mask following: {name}", unit="batch",
                          leave=False):
            batch = [np.asarray(image) for image in images[start:start + batch_size]]
            x = torch.stack([transform(image=image)["image"].float() for image in batch]).to(device)
            logits = predict_logits(model, x)
            for image, logit in zip(batch, logits, strict=True):
                up = F.interpolate(logit[None], size=image.shape[:2], mode="bilinear", align_corners=False)
                out.append((up[0, 0] >= threshold).cpu().numpy())
        return out

    return predict


def load_judge_predictors(specs: Mapping[str, Mapping[str, Any]], weights: Sequence[str | Path], size: int,
                device: Any = "cpu") -> dict[str, Predict]:
    """``{arch: Predict}`` of the real-only judges: ``specs`` are the ``segment.archs`` entries (in the order of
    ``weights``, each a ``model.safetensors`` of rule ``train_judge``), ``size`` is ``segment.size``. Imports torch."""
    from hardgen.segmentation.build import SegmenterSpec, load_segmenter

    weights = [str(w) for w in weights]
    if len(specs) != len(weights):
        raise ValueError(f"mask following: {len(specs)} judge specs ({list(specs)}) but {len(weights)} weight files")
    judges = {}
    for (arch, spec), path in zip(specs.items(), weights, strict=True):
        model = load_segmenter(SegmenterSpec.from_config(dict(spec), arch), path, device=device, config_key=arch)
        judges[arch] = segmenter_predictor(model, size, device, name=f"judge {arch}")
        LOG.info("mask following: judge %s from %s", arch, path)
    return judges


# ---------------------------------------------------------------------------------------------- the table
#: Why a set of one image has no shuffled value.
SINGLE = "a single image: no other image's mask to shuffle against"


#: ``(own, shuffled, why, paired)``: a set's mean margins (or NaN and why they are undefined) and each image's own
#: minus shuffled value where both are defined (the validation's data).
Values = tuple[float, float, str | None, np.ndarray]


#: Why a set whose images all share one mask has no shuffled value.
ONE_MASK = "every image has the same mask: no other mask to shuffle against"


def _unshufflable(images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> str | None:
    """Why a set has no shuffled value (one image, or one mask for every image), or None."""
    if len(images) < 2:
        return SINGLE
    if len({_mask_key(m) for m in masks}) < 2:
        return ONE_MASK
    return None


def _cue_values(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], seed: int, cue: str) -> Values:
    """The cue's :data:`Values` of one set (undefined on good data: one image or one mask, every mask empty or full).

    ``own`` and ``shuffled`` are means over the same images, those with both values defined (a mask with an inside
    and an outside, its own and its partner's), so ``own − shuffled`` is the mean of the per-image paired gaps that
    validate the measure."""
    why = _unshufflable(images, masks)
    if why:
        return math.nan, math.nan, why, np.empty(0)
    own = chroma_contrasts(images, masks, cue)
    shuffled = chroma_contrasts(images, [masks[j] for j in mask_derangement(masks, seed)], cue)
    both = np.isfinite(own) & np.isfinite(shuffled)
    if not both.any():
        return math.nan, math.nan, "every mask is empty or full: no inside and outside to compare", np.empty(0)
    if not both.all():
        LOG.info("mask following: %d of %d images left out (their own or their shuffled mask is empty or full)",
                 int((~both).sum()), len(own))
    return float(own[both].mean()), float(shuffled[both].mean()), None, own[both] - shuffled[both]


def _judge_values(predict: Predict, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], seed: int) -> Values:
    why = _unshufflable(images, masks)
    if why:
        return math.nan, math.nan, why, np.empty(0)
    predictions = list(predict(images))
    if len(predictions) != len(images):
        raise ValueError(f"mask following: the judge gave {len(predictions)} predictions for {len(images)} images")
    own, shuffled = judge_dice_pairs(predictions, masks, seed)
    return float(own.mean()), float(shuffled.mean()), None, own - shuffled


def gap_interval(paired: np.ndarray | Sequence[float], seed: int = 0) -> tuple[float, float]:
    """The 95 % percentile-bootstrap interval of the mean of per-image paired gaps (own minus shuffled), seeded;
    NaN for fewer than 2 values."""
    from hardgen.evaluation.contrasts import bootstrap_interval

    paired = np.asarray(paired, dtype=np.float64)
    if paired.size < 2:
        return math.nan, math.nan
    _, low, high = bootstrap_interval([paired], lambda groups: np.mean(groups[0], axis=-1),
                                      resamples=VALIDATION_RESAMPLES, seed=seed)
    return low, high


def _invalid_reference(measure: str, gap: float, paired: np.ndarray, seed: int = 0) -> str | None:
    """Why the real images do not validate ``measure`` (real gap ``gap``, per-image ``paired`` gaps), or None when
    they do: the gap must have the measure's sign (> 0; any sign for the grey level) and its 95 % interval
    (:func:`gap_interval`) must exclude 0."""
    if not math.isfinite(gap):
        return None  # the real row's own reason (every mask empty or full) says it
    if len(paired) < MIN_PAIRED:
        return (f"only {len(paired)} real image(s) with a defined gap (real gap {gap:.2g}): at least {MIN_PAIRED} "
                "are needed to tell it from chance")
    low, high = gap_interval(paired, seed)
    signed = measure != CUE_MEASURES["luma"]  # red chromaticity and a judge's Dice must rise on the own mask
    beyond = low > 0 if signed else (low > 0 or high < 0)  # the interval excludes 0 (on the measure's side)
    where = f"real gap {gap:.2g}, 95 % interval [{low:.2g}, {high:.2g}] over {len(paired)} images"
    if measure.startswith(JUDGE_PREFIX):
        if beyond:
            return None
        return (f"the {measure.removeprefix(JUDGE_PREFIX)} judge did not learn the masks: on its own training "
                f"images its Dice against their own masks is not above its Dice against shuffled ones beyond "
                f"chance ({where})")
    if beyond:
        return None
    cue = "red chromaticity" if measure == CUE_MEASURES["red"] else "grey level"
    return f"the real images' {cue} does not mark their masks beyond chance ({where})"


def _real_gap(measure: str, real: Values, seed: int = 0) -> tuple[float, str | None]:
    """The real images' gap of ``measure`` from their :data:`Values`, and why it is no reference (None: it is)."""
    own, shuffled, why, paired = real
    gap = own - shuffled
    return gap, (f"the real images' gap is undefined: {why}" if why else _invalid_reference(measure, gap, paired, seed))


def _measure_rows(measure: str, values: Mapping[str, Values], corners: Mapping[str, float] | None,
                  seed: int = 0) -> list[dict[str, Any]]:
    """One measure's rows (``real`` first): margins over the real gap, or NaN with the reason."""
    real_own, real_shuffled, _, _ = values["real"]
    gap, invalid = _real_gap(measure, values["real"], seed)
    if invalid:
        LOG.warning("mask following: %s is undefined: %s", measure, invalid)
    else:
        LOG.info("mask following: %s: the real images' gap %.4g (own %.4g, shuffled %.4g)", measure, gap, real_own,
                 real_shuffled)
    rows = []
    for name, (own, shuffled, why, _) in values.items():
        reason = invalid or why
        rows.append({
            "variant": name, "measure": measure, "own": own, "shuffled": shuffled,
            "margin_vs_real": math.nan if reason else (own - shuffled) / gap,
            "dark_corners": corners[name] if corners is not None else math.nan,
            "status": UNDEFINED if reason else OK, "reason": reason or "",
        })
    return rows


def mask_following_table(real: Pairs, variants: Mapping[str, Pairs], seed: int = 0,
                         judges: Mapping[str, Predict] | None = None) -> pd.DataFrame:
    """The table :data:`COLUMNS`: per measure, ``real`` first, then ``variants`` in order, with
    ``margin_vs_real = (own − shuffled) / (real own − real shuffled)``.

    ``real`` and each variant are ``(images, masks)``: RGB uint8 ``(H, W, 3)`` images with their bool masks, every
    set at the same resolution (the generator's). The cue measure comes first: red chromaticity
    (``red_chromaticity``), or the grey level (``luma``) when every real image is grayscale (:func:`mask_cue`); then
    one ``judge_dice:<arch>`` measure per entry of ``judges`` (``{arch: Predict}``, e.g.
    :func:`load_judge_predictors`; none: the cue alone, one row per set). ``dark_corners`` is on the cue's rows (NaN on the judges').

    A measure the real images do not validate (real gap ≤ 0 for red chromaticity and a judge's Dice, 0 for the grey
    level, a gap whose 95 % bootstrap interval over the real images includes 0 (:func:`gap_interval`: chance), or
    undefined) keeps its ``own`` and ``shuffled`` values with ``margin_vs_real`` NaN, ``status``
    ``undefined`` and the ``reason``; so does a variant whose own margins are undefined (one image, every mask empty
    or full). Invalid input raises ``ValueError``: fewer than 2 real images, images and masks of different counts or
    sizes, a variant named ``real``, an empty variant.
    """
    if "real" in variants:
        raise ValueError("mask following: 'real' is the reference row's name, not a variant")
    sets = {"real": real, **variants}
    for name, (images, masks) in sets.items():
        if len(images) != len(masks):
            raise ValueError(f"mask following: {name}: {len(images)} images but {len(masks)} masks")
        if not len(images):
            raise ValueError(f"mask following: {name}: no images")
    if len(real[0]) < 2:
        raise ValueError(f"mask following: {len(real[0])} real image; the reference needs at least 2 (a single "
                         "image has no other mask)")
    cue = "luma" if is_grayscale(real[0]) else "red"  # grayscale modalities: the grey level, not chromaticity
    LOG.info("mask following: cue %s (real images %s)", cue, "grayscale" if cue == "luma" else "in colour")
    corners = {name: dark_corners(images) for name, (images, _) in sets.items()}
    rows = _measure_rows(CUE_MEASURES[cue], {name: _cue_values(*pairs, seed, cue) for name, pairs in sets.items()},
                         corners, seed)
    for arch, predict in (judges or {}).items():
        values = {name: _judge_values(predict, *pairs, seed) for name, pairs in sets.items()}
        rows += _measure_rows(f"{JUDGE_PREFIX}{arch}", values, None, seed)
    return pd.DataFrame(rows, columns=list(COLUMNS))


@dataclass(frozen=True)
class Reference:
    """The real images' cue gap that :func:`margin_vs_reference` divides by, computed once (the table's ``real`` row
    of the cue measure): ``reason`` says why it is no reference (then every margin is NaN)."""

    measure: str
    cue: str
    gap: float
    reason: str | None


def real_reference(real: Pairs, seed: int = 0) -> Reference:
    """The cue measure's real gap of ``real`` (images, masks) and whether the real images validate it, as
    :func:`mask_following_table` decides both (its cue choice, pairing and bootstrap)."""
    images, masks = real
    _check_pairs(images, masks)
    cue = "luma" if is_grayscale(images) else "red"
    measure = CUE_MEASURES[cue]
    gap, reason = _real_gap(measure, _cue_values(images, masks, seed, cue), seed)
    return Reference(measure, cue, gap, reason)


def margin_vs_reference(reference: Reference, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                        seed: int = 0) -> tuple[float, str | None]:
    """``(margin_vs_real, reason)`` of one set of samples against a :func:`real_reference`: the table's
    ``(own − shuffled) / real gap``, or NaN and why (the reference's reason, or the set's: one image or one mask,
    every mask empty or full)."""
    if reference.reason:
        return math.nan, reference.reason
    own, shuffled, why, _ = _cue_values(images, masks, seed, reference.cue)
    if why:
        return math.nan, why
    return (own - shuffled) / reference.gap, None


def measure_rows(table: pd.DataFrame, measure: str | None = None) -> pd.DataFrame:
    """The rows of one measure indexed by ``variant``; ``measure`` None: the cue measure (``red_chromaticity`` or
    ``luma``), the one whose ``margin_vs_real`` the pre-training cards and the conditioning test read."""
    if measure is None:
        cues = [m for m in table["measure"].unique() if m in CUE_MEASURES.values()]
        if len(cues) != 1:
            raise ValueError(f"mask following: expected one cue measure in the table, found {cues}")
        measure = cues[0]
    rows = table[table["measure"] == measure]
    if rows.empty:
        raise ValueError(f"mask following: no rows of measure {measure!r} (measures: "
                         f"{list(table['measure'].unique())})")
    return rows.set_index("variant")


def _measure_label(measure: str) -> str:
    if measure.startswith(JUDGE_PREFIX):
        return f"the {measure.removeprefix(JUDGE_PREFIX)} judge's Dice"
    return {"red_chromaticity": "red chromaticity", "luma": "grey level"}.get(measure, measure)


def mask_following_sentences(table: pd.DataFrame | str | Path, variant: str = "plain") -> list[str]:
    """One plain sentence per measure of a mask-following table (a DataFrame or ``mask_following.csv``): whether
    the real images validate it and, if not, why its rows are undefined; on a validated measure, the ``variant``'s
    (the plain samples') ratio to the real images' gap, or why it has none."""
    from hardgen.core.io import DataError, table_or_csv

    name, frame = table_or_csv(table, "mask-following table", required_columns=COLUMNS)
    sentences = []
    for measure in frame["measure"].unique():
        rows = frame[frame["measure"] == measure].set_index("variant")
        label = _measure_label(measure)
        if "real" not in rows.index:
            raise DataError(f"{name}: measure {measure!r} has no real row")
        real = rows.loc["real"]
        if real["status"] != OK:
            reason = real["reason"] if isinstance(real["reason"], str) and real["reason"] else "no reason recorded"
            sentences.append(f"Mask following by {label} is undefined for every variant: {reason}.")
            continue
        sentence = (f"Mask following by {label}: the real images validate it (own mask {real['own']:.3g} against "
                    f"a shuffled mask {real['shuffled']:.3g})")
        if variant in rows.index:
            row = rows.loc[variant]
            if row["status"] == OK:
                sentence += (f"; the {variant} samples follow their masks at {row['margin_vs_real']:.2f} of the real "
                             "images' gap")
            else:
                sentence += f"; the {variant} samples' ratio is undefined ({row['reason']})"
        sentences.append(sentence + ".")
    return sentences


# ---------------------------------------------------------------------------------------------- files
def read_pairs(images: Sequence[str | Path], masks: Sequence[str | Path], size: int) -> Pairs:
    """Read image and mask files and bring both to ``size``² with :func:`hardgen.core.io.fit_square` (the workflow's
    one transform; a no-op for files already at ``size``)."""
    from hardgen.core.io import fit_square, read_mask, read_rgb

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
    judges: Mapping[str, Predict] | None = None,
) -> pd.DataFrame:
    """:func:`mask_following_table` of the workflow's files.

    ``real``: the real training images of the conditions table (layouts without a real image are left out) at
    ``size`` with their conditions' masks, the images the judges were trained on; each variant: the images and
    masks of its generated manifest (``results/generated/<variant>/manifest.csv``); ``judges``: as
    :func:`mask_following_table` (rule ``mask_following``: :func:`load_judge_predictors`).
    """
    from hardgen.core.io import DataError, read_csv_table
    from hardgen.data.train_data import load_training_pairs

    pairs = load_training_pairs(conditions_csv, data_manifest_csv)  # kind == real rows: layouts have no real image
    if len(pairs) < 2:
        raise DataError(f"{conditions_csv}: {len(pairs)} conditions with a real image; mask following needs >= 2")
    real = read_pairs(list(pairs["image"]), list(pairs["mask"]), size)
    variants = {}
    for name, manifest in generated.items():
        frame = read_csv_table(manifest, ("image", "mask"), "generated manifest")
        if frame.empty:
            raise DataError(f"{manifest}: generated manifest has no samples")
        variants[name] = read_pairs(list(frame["image"]), list(frame["mask"]), size)
    return mask_following_table(real, variants, seed=seed, judges=judges)
