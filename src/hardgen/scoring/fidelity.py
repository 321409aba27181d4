"""The fidelity guard: does a generated sample still show the polyp its conditioning mask promises?

A hard sample that no longer shows its polyp is label noise, not hardness: its mask says "polyp here" over
plain mucosa. The guard grades every generated sample on two views, each in [0, 1]:

- ``fidelity_dice`` — the Dice between the sample's conditioning mask and the prediction of separate
  real-only judge runs (rule ``train_judge``: every ``segment.archs`` family at seed ``feedback.judge_seed``,
  ``results/judge/<arch>/seed-<s>/``, averaged), the prediction thresholded at sigmoid 0.5 and both at
  ``segment.size`` (:func:`dice`; an empty mask against an empty prediction is a perfect 1). They are never
  benchmark runs (``results/segment/``): ``hard_faithful``'s pool is chosen by these grades, so grading with the
  benchmark's own ``real`` segmenters would let the guard pick samples by the very runs the policy is then
  compared against (:func:`judge_run_name` refuses any other name). They are trained on real data only, so the guard
  never depends on synthetic data. The feedback LoRA's judge (``feedback.segmenter`` at that seed) is one of them:
  the feedback variant is partly graded by the model it was trained to make samples hard for, which can only
  lower its grades.
- ``fidelity_separation`` — how distinct the held-out backbone's (``filter.fidelity_backbone``, a
  backbone outside ``hard.loss_backbones``: the hard generator never optimised against it) features are
  inside and outside the mask: ``1 − cos(f_in, f_out)`` of the mask-pooled and background-pooled vectors
  of one spatial feature map (:func:`spatial_features`, :func:`mask_separation`), of the whole image
  brought to ``model.resolution`` by :func:`hardgen.core.io.fit_square` (as scoring does). Raw separations
  have no natural scale, so they are calibrated on the real training images: a sample's separation is
  divided by the median real separation and clipped to [0, 1] (:func:`calibrate_separation`), so a
  typical real image/mask pair maps to 1 and an image whose polyp was erased towards 0.

``fidelity`` is the mean of the two (:func:`combine`); a sample passes the guard when
``fidelity >= filter.min_fidelity`` (:func:`passes`). A mask with no foreground (or no background) has
no inside/outside to compare: its separation is undefined (NaN in ``fidelity_separation``) and its
``fidelity`` is its Dice alone; the workflow logs how many samples that concerns.

Real training images get no fidelity columns in ``results/scores/real.csv``: they are the separation's
calibration (``results/fidelity/real.csv`` holds their raw separations) and the real-only segmenters'
own training data, whose Dice would be a training-set Dice, not a judgement of fidelity.

Everything here is plain functions on arrays, tensors and tables; the workflow entry points are
:func:`build_reference` and :func:`build_fidelity`, both run by rule ``score``
(:func:`hardgen.scoring.score.score_with_fidelity`: the ``real`` job writes the reference, each generated variant's job
its table).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hardgen.core import io
from hardgen.core.io import DataError

if TYPE_CHECKING:  # torch is imported where it is needed, so the table functions stay light
    import torch

    from hardgen.scoring.features import FeatureExtractor

log = logging.getLogger("hardgen.scoring.fidelity")

#: The separation uses the deepest feature map with at least this many cells per side: on a coarser grid
#: (a CNN's last 2 × 2 map at the demo's 64 px) every cell mixes polyp and background and the pooled
#: vectors cannot differ (measured on the demo: erased polyps were not told from real ones at 2 × 2).
MIN_GRID = 4

#: Columns of ``results/fidelity/<variant>.csv`` (generated variants).
FIDELITY_COLUMNS: list[str] = ["sample_id", "variant", "fidelity_dice", "separation", "fidelity_separation",
                               "fidelity", "judges"]
#: The columns the score rule joins into ``results/scores/<variant>.csv``.
SCORE_FIDELITY_COLUMNS: list[str] = ["fidelity_dice", "fidelity_separation", "fidelity"]
#: Columns of ``results/fidelity/real.csv`` (the calibration reference).
REFERENCE_COLUMNS: list[str] = ["sample_id", "separation"]
#: Columns of ``results/tables/fidelity.csv`` (``judges``: the judge runs whose Dice graded the variant).
SUMMARY_COLUMNS: list[str] = ["variant", "n", "mean_fidelity", "rejected", "rejected_fraction", "min_fidelity",
                              "mean_fidelity_dice", "mean_fidelity_separation", "judges"]
#: How the ``judges`` column joins the judge runs' names.
JUDGE_SEPARATOR = ";"
#: A judge run's name: ``judge/<arch>/seed-<s>`` (its folder under ``results/``).
_JUDGE_NAME = re.compile(r"^judge/[A-Za-z0-9_]+/seed-\d+$")
_JUDGE_PATH = re.compile(r"(?:^|/)(judge/[A-Za-z0-9_]+/seed-\d+)/sample_loss\.csv$")


def judge_run_name(name_or_path: str | Path) -> str:
    """The judge run's name ``judge/<arch>/seed-<s>`` of a name or of its ``.../judge/<arch>/seed-<s>/sample_loss.csv``.

    Anything else (a benchmark run, ``results/eval/<arch>/seed-<s>/...`` or ``results/segment/...``) is a
    :class:`DataError`: the guard never grades with a benchmark run.
    """
    text = Path(name_or_path).as_posix()
    if _JUDGE_NAME.match(text):
        return text
    match = _JUDGE_PATH.search(text)
    if match is None:
        raise DataError(f"fidelity guard: {text!r} is not a real-only judge run (judge/<arch>/seed-<s>, rule "
                        "train_judge); the guard never grades with a benchmark run")
    return match.group(1)


# ------------------------------------------------------------------------------------------ separation
def spatial_features(backbone: FeatureExtractor, images01: torch.Tensor, min_grid: int = MIN_GRID) -> torch.Tensor:
    """(B, C, h, w) spatial features of (B, 3, H, W) images in [0, 1] under a frozen :class:`FeatureExtractor`.

    The images go through the extractor's own preprocessing (resize to its ``input_size``, its
    normalisation) and timm's ``forward_intermediates`` (NCHW for CNNs and ViTs alike, prefix tokens
    dropped); the map returned is the deepest one with at least ``min_grid`` cells per side: the last
    one whenever the backbone's input is large enough (ViT-B/16 at 224 px: 14 × 14).
    """
    import torch

    model = backbone.model
    if not hasattr(model, "forward_intermediates") or not getattr(model, "feature_info", None):
        raise ValueError(f"filter.fidelity_backbone: {backbone.name} has no timm forward_intermediates; choose a "
                         "backbone with spatial features (timm CNNs and ViTs have them)")
    with torch.inference_mode():
        maps = model.forward_intermediates(backbone.preprocess(images01), indices=len(model.feature_info),
                                           intermediates_only=True)
    usable = [m for m in maps if m.ndim == 4 and min(m.shape[-2:]) >= min_grid]
    if not usable:
        grids = [tuple(m.shape[-2:]) for m in maps]
        raise ValueError(f"filter.fidelity_backbone: {backbone.name} at input_size {backbone.input_size} has no "
                         f"feature map of at least {min_grid} × {min_grid} cells (grids {grids}); raise its "
                         "input_size")
    return usable[-1].float()


def mask_separation(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``1 − cos(f_in, f_out)`` per sample: (B, C, h, w) features, (B, H, W) masks (bool or [0, 1]) → (B,).

    Each feature cell is weighted by the fraction of its area the mask covers (the mask area-resized to
    the feature grid): ``f_in`` is the weighted mean of the cells, ``f_out`` the mean weighted by the
    complement. The result lies in [0, 2]; it is NaN where the mask has no foreground or no background.
    """
    import torch
    import torch.nn.functional as F

    if features.ndim != 4 or masks.ndim != 3 or features.shape[0] != masks.shape[0]:
        raise ValueError(f"mask_separation: expected (B, C, h, w) features and (B, H, W) masks, got "
                         f"{tuple(features.shape)} and {tuple(masks.shape)}")
    weights = F.interpolate(masks[:, None].to(features.dtype), size=features.shape[-2:], mode="area")
    inside, outside = weights.sum(dim=(1, 2, 3)), (1.0 - weights).sum(dim=(1, 2, 3))
    f_in = (features * weights).sum(dim=(2, 3)) / inside.clamp_min(1e-12)[:, None]
    f_out = (features * (1.0 - weights)).sum(dim=(2, 3)) / outside.clamp_min(1e-12)[:, None]
    separation = 1.0 - F.cosine_similarity(f_in, f_out, dim=1, eps=1e-12)
    foreground = masks.flatten(1).to(features.dtype).sum(dim=1)
    defined = (foreground > 0) & (foreground < masks[0].numel())
    return torch.where(defined, separation, torch.full_like(separation, float("nan")))


def calibrate_separation(raw: np.ndarray | Sequence[float], reference: np.ndarray | Sequence[float],
                         where: str = "real training images") -> np.ndarray:
    """Raw separations divided by the median of the real ``reference`` separations, clipped to [0, 1].

    A typical real image/mask pair maps to 1 (half of the real pairs reach it exactly), an image whose
    features no longer differ inside and outside the mask towards 0. NaN (undefined) stays NaN. Raises
    :class:`DataError` naming ``where`` when the reference has no finite value or a median <= 0 (the
    backbone does not tell polyp from background even on real images: the guard would be meaningless).
    """
    reference = np.asarray(reference, dtype=np.float64)
    finite = reference[np.isfinite(reference)]
    if finite.size == 0:
        raise DataError(f"{where}: no defined separation to calibrate against (every mask empty or full?)")
    median = float(np.median(finite))
    if not median > 0:
        raise DataError(f"{where}: median separation {median:.3g} <= 0: the fidelity backbone's features do not "
                        "differ inside and outside the real masks (filter.fidelity_backbone)")
    return np.clip(np.asarray(raw, dtype=np.float64) / median, 0.0, 1.0)


def combine(fidelity_dice: np.ndarray | Sequence[float], fidelity_separation: np.ndarray | Sequence[float]) -> np.ndarray:
    """``fidelity`` = mean of Dice and calibrated separation; the Dice alone where the separation is undefined."""
    d = np.asarray(fidelity_dice, dtype=np.float64)
    s = np.asarray(fidelity_separation, dtype=np.float64)
    if d.shape != s.shape:
        raise ValueError(f"combine: {d.shape} Dice values for {s.shape} separations")
    if not np.isfinite(d).all():
        raise ValueError("combine: every sample needs a finite Dice")
    return np.where(np.isfinite(s), 0.5 * (d + s), d)


def passes(fidelity: np.ndarray | Sequence[float] | pd.Series, min_fidelity: float) -> np.ndarray:
    """Which samples pass the guard: ``fidelity >= min_fidelity`` (``filter.min_fidelity``, in [0, 1])."""
    if not 0.0 <= float(min_fidelity) <= 1.0:
        raise ValueError(f"filter.min_fidelity: must lie in [0, 1], got {min_fidelity!r}")
    values = np.asarray(fidelity, dtype=np.float64)
    if not np.isfinite(values).all():
        raise DataError("fidelity guard: a sample without a finite fidelity (rerun the score rule)")
    return values >= float(min_fidelity)


def image_separations(
    backbone: FeatureExtractor,
    pairs: pd.DataFrame,
    resolution: int | None,
    batch_size: int = 16,
    min_grid: int = MIN_GRID,
) -> pd.DataFrame:
    """Raw :func:`mask_separation` of every image/mask pair (columns ``sample_id``/``id``, ``image``, ``mask``).

    Each image and its mask are first brought to ``resolution`` (``model.resolution``) by
    :func:`hardgen.core.io.fit_square`, the transform scoring uses, so real and generated images are compared
    at one scale. Returns ``sample_id, separation`` in input order.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    id_column = next((c for c in ("sample_id", "id") if c in pairs.columns), None)
    missing = sorted({"image", "mask"} - set(pairs.columns)) + ([] if id_column else ["sample_id"])
    if missing:
        raise DataError(f"pairs table: missing columns {missing}")
    device = backbone.mean.device
    ids: list[str] = []
    values: list[float] = []
    for start in range(0, len(pairs), batch_size):
        rows = pairs.iloc[start:start + batch_size]
        images, masks = [], []
        for image_path, mask_path in zip(rows["image"], rows["mask"]):
            image, mask = io.read_pair(image_path, mask_path)
            if resolution is not None:
                image, mask = io.fit_square(image, resolution), io.fit_square(mask, resolution, is_mask=True)
            if images and image.shape != images[0].shape:
                raise DataError(f"{image_path}: size {image.shape[:2]} differs from the batch's {images[0].shape[:2]} "
                                "(set model.resolution)")
            images.append(image)
            masks.append(mask)
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0).to(device)
        features = spatial_features(backbone, batch, min_grid)
        separation = mask_separation(features, torch.from_numpy(np.stack(masks)).to(device))
        ids.extend(str(i) for i in rows[id_column])
        values.extend(separation.double().cpu().tolist())
    return pd.DataFrame({"sample_id": ids, "separation": np.asarray(values, dtype=np.float64)})


# ------------------------------------------------------------------------------------------- tables
def guard_dice(sample_loss_tables: Mapping[str, str | Path | pd.DataFrame], variant: str,
               sample_ids: Sequence[str]) -> pd.DataFrame:
    """Mean Dice over the real-only judges for every sample of ``variant``: ``sample_id, fidelity_dice, judges``.

    ``sample_loss_tables`` maps a judge run's name (``judge/<arch>/seed-<s>``, :func:`judge_run_name`) to its
    ``sample_loss.csv`` (columns ``sample_id, variant, dice``, from rule ``judge_loss``). Every judge must have
    graded every sample in ``sample_ids`` exactly once (a missing grade is a :class:`DataError` naming the table).
    ``judges`` names them, joined by :data:`JUDGE_SEPARATOR`.
    """
    if not sample_loss_tables:
        raise DataError("fidelity guard: no real-only judge graded the samples (rule judge_loss)")
    names = {judge_run_name(name): source for name, source in sample_loss_tables.items()}
    wanted = pd.Index([str(s) for s in sample_ids])
    columns = {}
    for name, source in sorted(names.items()):
        where = str(source) if not isinstance(source, pd.DataFrame) else f"sample losses ({name})"
        table = source if isinstance(source, pd.DataFrame) else io.read_csv_table(
            source, (), "sample loss table", dtype={"sample_id": str})
        missing = [c for c in ("sample_id", "variant", "dice") if c not in table.columns]
        if missing:
            raise DataError(f"{where}: sample loss table lacks columns {missing} (rerun segmenter_loss)")
        rows = table[table["variant"].astype(str) == variant]
        grades = pd.Series(pd.to_numeric(rows["dice"], errors="coerce").to_numpy(),
                           index=rows["sample_id"].astype(str))
        if grades.index.duplicated().any():
            raise DataError(f"{where}: sample {grades.index[grades.index.duplicated()][0]!r} of {variant!r} graded twice")
        absent = wanted.difference(grades.index)
        if len(absent):
            raise DataError(f"{where}: no Dice for {len(absent)} {variant} samples, e.g. {list(absent[:3])}")
        grades = grades.reindex(wanted)
        if not (np.isfinite(grades.to_numpy()) & (grades.to_numpy() >= 0) & (grades.to_numpy() <= 1)).all():
            raise DataError(f"{where}: Dice values of {variant!r} must be numbers in [0, 1]")
        columns[name] = grades
    frame = pd.DataFrame(columns)
    return pd.DataFrame({"sample_id": wanted, "fidelity_dice": frame.mean(axis=1).to_numpy(),
                         "judges": JUDGE_SEPARATOR.join(columns)})


def fidelity_table(
    generated: pd.DataFrame,
    dice_table: pd.DataFrame,
    separations: pd.DataFrame,
    reference: np.ndarray | Sequence[float],
) -> pd.DataFrame:
    """One row per generated sample: :data:`FIDELITY_COLUMNS`.

    ``generated``: the variant's manifest (``sample_id, variant``); ``dice_table``: :func:`guard_dice`;
    ``separations``: :func:`image_separations` of the samples; ``reference``: the real training images'
    raw separations (:func:`calibrate_separation`).
    """
    variants = generated["variant"].astype(str).unique() if "variant" in generated.columns else []
    if len(variants) != 1:
        raise DataError(f"generated manifest: expected exactly one variant, found {list(variants)}")
    ids = generated["sample_id"].astype(str)
    if ids.duplicated().any():
        raise DataError(f"generated manifest: duplicate sample_id {ids[ids.duplicated()].iloc[0]!r}")
    table = pd.DataFrame({"sample_id": ids.to_numpy(), "variant": variants[0]})
    for name, part, column in (("Dice", dice_table, "fidelity_dice"), ("separation", separations, "separation")):
        part = part.assign(sample_id=part["sample_id"].astype(str))
        if part["sample_id"].duplicated().any():
            raise DataError(f"fidelity guard: two {name} rows for sample {part.loc[part['sample_id'].duplicated(), 'sample_id'].iloc[0]!r}")
        lacking = sorted(set(table["sample_id"]) - set(part["sample_id"]))
        if lacking:
            raise DataError(f"fidelity guard: no {name} for samples {lacking[:3]} ({len(lacking)} total)")
        table = table.merge(part[["sample_id", column, *(["judges"] if column == "fidelity_dice" else [])]],
                            on="sample_id", how="left", validate="one_to_one")
    table["fidelity_separation"] = calibrate_separation(table["separation"], reference)
    table["fidelity"] = combine(table["fidelity_dice"], table["fidelity_separation"])
    return table[FIDELITY_COLUMNS]


def join_fidelity(scores: pd.DataFrame, fidelity: pd.DataFrame, where: str = "fidelity table") -> pd.DataFrame:
    """Add :data:`SCORE_FIDELITY_COLUMNS` to a score table (one row per sample and backbone), by sample_id.

    Every scored sample must have its fidelity (:class:`DataError` naming ``where`` otherwise).
    """
    missing = [c for c in ["sample_id", *SCORE_FIDELITY_COLUMNS] if c not in fidelity.columns]
    if missing:
        raise DataError(f"{where}: lacks columns {missing}")
    part = fidelity[["sample_id", *SCORE_FIDELITY_COLUMNS]].assign(sample_id=fidelity["sample_id"].astype(str))
    if part["sample_id"].duplicated().any():
        raise DataError(f"{where}: duplicate sample_id {part.loc[part['sample_id'].duplicated(), 'sample_id'].iloc[0]!r}")
    joined = scores.drop(columns=[c for c in SCORE_FIDELITY_COLUMNS if c in scores.columns])
    joined = joined.assign(sample_id=joined["sample_id"].astype(str)).merge(part, on="sample_id", how="left")
    lacking = joined.loc[joined["fidelity"].isna(), "sample_id"].unique().tolist()
    if lacking:
        raise DataError(f"{where}: no fidelity for scored samples {lacking[:3]} ({len(lacking)} total)")
    return joined


def fidelity_summary(scores: pd.DataFrame, min_fidelity: float, judges: Mapping[str, str]) -> pd.DataFrame:
    """Per generated variant: how many samples the guard grades and how many it rejects (:data:`SUMMARY_COLUMNS`).

    ``scores``: concatenated score tables; ``real`` rows (no fidelity: the guard's calibration) are left out,
    and each sample counts once (score tables repeat it per backbone). ``rejected`` = samples with
    ``fidelity < min_fidelity``: what ``hard_faithful`` drops from the hard pool, and what each other
    variant would lose. ``judges``: ``{variant: judge runs}`` (:func:`guard_judges`), each name checked by
    :func:`judge_run_name`. A generated sample without a fidelity, or a variant without judges, is a
    :class:`DataError`.
    """
    needed = ["sample_id", "variant", *SCORE_FIDELITY_COLUMNS]
    missing = [c for c in needed if c not in scores.columns]
    if missing:
        raise DataError(f"score tables: lack fidelity columns {missing} (the score rule joins "
                        "results/fidelity/<variant>.csv)")
    generated = scores[scores["variant"].astype(str) != "real"]
    ungraded = generated.loc[generated["fidelity"].isna(), ["variant", "sample_id"]].drop_duplicates()
    if len(ungraded):
        raise DataError(f"score tables: {len(ungraded)} generated samples without a fidelity, e.g. "
                        f"{ungraded.head(3).to_dict('records')}")
    graded = generated.drop_duplicates(["variant", "sample_id"])
    rows = []
    for variant, group in graded.groupby("variant", sort=False):
        kept = passes(group["fidelity"], min_fidelity)
        rows.append({"variant": variant, "n": len(group), "mean_fidelity": float(group["fidelity"].mean()),
                     "rejected": int((~kept).sum()), "rejected_fraction": float((~kept).mean()),
                     "min_fidelity": float(min_fidelity),
                     "mean_fidelity_dice": float(group["fidelity_dice"].mean()),
                     "mean_fidelity_separation": float(group["fidelity_separation"].mean()),
                     "judges": _checked_judges(judges, variant)})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _checked_judges(judges: Mapping[str, str], variant: str) -> str:
    if variant not in judges or not str(judges[variant]):
        raise DataError(f"fidelity guard: no judge runs recorded for variant {variant!r} (results/fidelity/{variant}.csv)")
    return JUDGE_SEPARATOR.join(judge_run_name(n) for n in str(judges[variant]).split(JUDGE_SEPARATOR))


def guard_judges(fidelity_tables: Mapping[str, str | Path | pd.DataFrame]) -> dict[str, str]:
    """``{variant: judge runs}`` from each generated variant's ``results/fidelity/<variant>.csv`` (its ``judges``
    column, one value for every sample). Errors name the table."""
    found = {}
    for variant, source in fidelity_tables.items():
        table = source if isinstance(source, pd.DataFrame) else io.read_csv_table(
            source, (), "fidelity table", dtype={"sample_id": str})
        values = table["judges"].dropna().astype(str).unique() if "judges" in table.columns else []
        if len(values) != 1:
            raise DataError(f"{source if not isinstance(source, pd.DataFrame) else variant}: expected one set of "
                            f"judges in column 'judges', found {list(values)} (rerun the score rule)")
        found[str(variant)] = values[0]
    return found


# ------------------------------------------------------------------------------------- entry points
def build_reference(
    manifest_csv: str | Path,
    backbone: FeatureExtractor,
    out_path: str | Path,
    resolution: int | None,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Rule ``score``, set ``real``: raw separations of the real training images with a polyp
    (``results/fidelity/real.csv``: ``sample_id, separation``), the guard's calibration."""
    from hardgen.scoring.features import real_training_pairs

    pairs = real_training_pairs(io.read_csv_table(manifest_csv, ("split", "fg_fraction", "image", "mask"), "data manifest"))
    if pairs.empty:
        raise DataError(f"{manifest_csv}: no training image with a polyp to calibrate the fidelity guard on")
    table = image_separations(backbone, pairs, resolution, batch_size)
    calibrate_separation(table["separation"], table["separation"], where=str(manifest_csv))  # fails early if unusable
    io.write_table(out_path, table, REFERENCE_COLUMNS, "fidelity reference")
    return table


def build_fidelity(
    generated_csv: str | Path,
    sample_loss_csvs: Mapping[str, str | Path],
    reference_csv: str | Path,
    backbone: FeatureExtractor,
    out_path: str | Path,
    resolution: int | None,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Rule ``score``, a generated variant: every sample graded (``results/fidelity/<variant>.csv``)."""
    generated = io.read_csv_table(generated_csv, ("sample_id", "image", "mask", "variant"), "generated manifest",
                                  dtype={"sample_id": str})
    generated = generated.assign(
        image=[io.resolve_table_path(v, generated_csv, "image") for v in generated["image"]],
        mask=[io.resolve_table_path(v, generated_csv, "mask") for v in generated["mask"]],
    )
    variant = str(generated["variant"].iloc[0]) if len(generated) else "?"
    reference = io.read_csv_table(reference_csv, ("separation",), "fidelity reference", dtype={"sample_id": str})
    dice_table = guard_dice(sample_loss_csvs, variant, generated["sample_id"].astype(str).tolist())
    separations = image_separations(backbone, generated, resolution, batch_size)
    table = fidelity_table(generated, dice_table, separations, reference["separation"].to_numpy(dtype=float))
    undefined = int(table["fidelity_separation"].isna().sum())
    if undefined:
        log.warning("%s: %d samples have an empty or full mask: no separation, fidelity = Dice alone",
                    variant, undefined)
    io.write_table(out_path, table, FIDELITY_COLUMNS, "fidelity table")
    return table
