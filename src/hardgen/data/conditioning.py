"""Condition images for Control-LoRA: a mask's canny edges (default) or the mask itself.

Besides one condition per real training mask, :func:`make_conditions` invents new mask layouts by
geometric transforms of real masks (affine, flips, elastic/grid distortion), so generation is not
limited to the training layouts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from hardgen.core.io import (
    DataError,
    fit_square,
    fit_to,
    read_csv_table,
    read_mask,
    sample_seed,
    write_image,
    write_mask,
    write_table,
)

# albumentations otherwise checks PyPI for a newer version at import; the machines may be offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

LOG = logging.getLogger("hardgen.data.conditioning")

CONDITION_KINDS = ("canny", "mask")
#: Columns of the conditions table, in order; ``kind`` is ``real`` or ``layout``.
CONDITIONS_COLUMNS = ("sample_id", "source_id", "kind", "condition", "mask")

#: A new layout must keep at least this share of its source's foreground area ...
MIN_LAYOUT_AREA_RATIO = 0.25
#: ... and at least this many pixels, ...
MIN_LAYOUT_PIXELS = 4
#: ... must not cover more than this share of the image ...
MAX_LAYOUT_FRACTION = 0.85
#: ... and gets this many draws to satisfy that before falling back to a flipped source.
MAX_LAYOUT_ATTEMPTS = 30


def mask_to_condition(mask: np.ndarray, kind: str, low: int = 100, high: int = 200) -> np.ndarray:
    """Turn a bool HxW mask into an HxWx3 uint8 condition image.

    ``canny``: ``cv2.Canny(mask_0_255, low, high)`` repeated to 3 channels (0/255 edges on the mask
    boundary); ``mask``: the 0/255 mask as 3 channels.
    """
    if kind not in CONDITION_KINDS:
        raise ValueError(f"condition.type must be one of {list(CONDITION_KINDS)}, got {kind!r}")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    mask_u8 = mask.astype(bool).astype(np.uint8) * 255
    single = cv2.Canny(mask_u8, low, high) if kind == "canny" else mask_u8
    return np.repeat(single[..., None], 3, axis=2)


def layout_transform() -> A.Compose:
    """Geometric transforms that turn a real mask into a new plausible layout (seed it per sample)."""
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Affine(scale=(0.7, 1.3), rotate=(-180, 180), translate_percent=(-0.2, 0.2), shear=(-10, 10),
                 interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
        A.OneOf([
            A.ElasticTransform(alpha=30, sigma=6, interpolation=cv2.INTER_LINEAR,
                               border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
            A.GridDistortion(num_steps=5, distort_limit=0.3, interpolation=cv2.INTER_LINEAR,
                             border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
        ], p=0.8),
    ])


def _layout_acceptable(layout: np.ndarray, source: np.ndarray) -> bool:
    """A layout keeps a reasonable foreground: big enough, not filling the frame, not the source itself."""
    area = int(layout.sum())
    if area < max(MIN_LAYOUT_PIXELS, MIN_LAYOUT_AREA_RATIO * int(source.sum())):
        return False
    if area > MAX_LAYOUT_FRACTION * layout.size:
        return False
    touches_all_sides = layout[0].any() and layout[-1].any() and layout[:, 0].any() and layout[:, -1].any()
    return not touches_all_sides and not np.array_equal(layout, source)


def make_layout(mask: np.ndarray, sample_id: str, seed: int, transform: A.Compose | None = None) -> np.ndarray:
    """A new bool layout from a non-empty bool mask, deterministic in (sample_id, seed).

    Transforms run on the 0/255 mask with bilinear interpolation and are re-thresholded, so edges
    stay smooth; draws are retried until :func:`_layout_acceptable`, else the source is flipped.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError(f"{sample_id}: cannot make a layout from an empty mask")
    transform = transform or layout_transform()
    transform.set_random_seed(sample_seed(sample_id, seed) % (2**32))  # albumentations wants 32-bit seeds
    mask_u8 = mask.astype(np.uint8) * 255
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        layout = transform(image=mask_u8)["image"] > 127
        if _layout_acceptable(layout, mask):
            return layout
    LOG.warning("%s: no acceptable random layout in %d draws; using the flipped source", sample_id,
                MAX_LAYOUT_ATTEMPTS)
    return mask[::-1, ::-1].copy()


def make_conditions(
    manifest: pd.DataFrame | str | Path,
    out_dir: str | Path,
    kind: str,
    layouts_per_mask: int,
    size: int,
    seed: int,
    low: int = 100,
    high: int = 200,
) -> pd.DataFrame:
    """Write a condition image and its mask for every training mask, plus new layouts.

    For each ``train`` row of ``manifest`` (a DataFrame or a manifest CSV path): the mask is thresholded,
    brought to ``size`` x ``size`` by :func:`hardgen.core.io.fit_square` (short side to ``size``, centre crop,
    nearest) and written as ``out_dir/masks/real-<id>.png`` (0/255) with its
    condition in ``out_dir/images/real-<id>.png``; then ``layouts_per_mask`` transformed layouts
    ``layout-<id>-<k>`` (k = 0..n-1), seeded by :func:`hardgen.core.io.sample_seed`. Masks empty at this size
    get no layouts (logged). Returns the table ``sample_id, source_id, kind, condition, mask`` with
    ``kind`` = ``real`` | ``layout`` and absolute paths; write it with :func:`write_conditions_table`.
    """
    if kind not in CONDITION_KINDS:
        raise ValueError(f"condition.type must be one of {list(CONDITION_KINDS)}, got {kind!r}")
    if int(layouts_per_mask) != layouts_per_mask or layouts_per_mask < 0:
        raise ValueError(f"condition.layouts_per_mask must be an integer >= 0, got {layouts_per_mask!r}")
    if int(size) != size or size < 8:
        raise ValueError(f"condition size (model.resolution) must be an integer >= 8, got {size!r}")
    if not isinstance(manifest, pd.DataFrame):
        from hardgen.data.manifest import (
            load_manifest,  # local import: data is only needed for a path argument
        )

        manifest = load_manifest(manifest)
    missing = [c for c in ("id", "split", "mask") if c not in manifest.columns]
    if missing:
        raise DataError(f"manifest lacks columns {missing}")
    train = manifest[manifest["split"] == "train"]
    if train.empty:
        raise DataError("manifest has no 'train' rows to make conditions from")

    out_dir = Path(out_dir).resolve()
    transform = layout_transform()
    rows: list[dict[str, str]] = []
    skipped: list[str] = []

    def emit(sample_id: str, source_id: str, row_kind: str, mask: np.ndarray) -> None:
        condition_path = out_dir / "images" / f"{sample_id}.png"
        mask_path = out_dir / "masks" / f"{sample_id}.png"
        write_mask(mask_path, mask)
        write_image(condition_path, mask_to_condition(mask, kind, low, high))
        rows.append({"sample_id": sample_id, "source_id": source_id, "kind": row_kind,
                     "condition": str(condition_path), "mask": str(mask_path)})

    for source_id, mask_file in tqdm(list(zip(train["id"], train["mask"])), desc="conditions", unit="mask"):
        full = read_mask(mask_file)
        # The training image's own transform (short side to `size`, centre crop; nearest keeps it binary),
        # so condition, mask and image stay aligned and keep their aspect ratio.
        mask = fit_square(full, size, is_mask=True)
        emit(f"real-{source_id}", source_id, "real", mask)
        if layouts_per_mask and not mask.any():
            skipped.append(f"{source_id} ({'no foreground' if not full.any() else f'foreground lost at {size} px'})")
            continue
        for k in range(int(layouts_per_mask)):
            layout_id = f"layout-{source_id}-{k}"
            emit(layout_id, source_id, "layout", make_layout(mask, layout_id, seed, transform))
    if skipped:
        LOG.warning("no layouts for %d empty mask(s): %s", len(skipped), ", ".join(skipped))
    LOG.info("conditions (%s, %d px): %d rows in %s", kind, size, len(rows), out_dir)
    return pd.DataFrame(rows, columns=list(CONDITIONS_COLUMNS))


def generation_conditions(
    conditions: pd.DataFrame | str | Path,
    manifest: pd.DataFrame | str | Path,
    out_dir: str | Path,
    fit: str,
    kind: str,
    size: int,
    low: int = 100,
    high: int = 200,
) -> pd.DataFrame:
    """The conditions generation samples from when it fits masks otherwise than training (``generation.condition_fit``).

    Training pairs each real image with its mask brought to ``size`` by :func:`hardgen.core.io.fit_square` (the
    conditions table of :func:`make_conditions`); the authors sampled with the whole mask squashed to ``size``²
    (``fit`` = ``squash``, :func:`hardgen.core.io.squash_square`). For every ``real`` row the source mask (the
    manifest's, by ``source_id``) is refitted and written with its condition to
    ``out_dir/{images,masks}/<sample_id>.png``; ``layout`` rows (already drawn at ``size`` from the cropped mask) keep
    their files. Same ids, same columns: the generated samples are paired with these masks. Returns the table; write
    it with :func:`write_conditions_table`.
    """
    if kind not in CONDITION_KINDS:
        raise ValueError(f"condition.type must be one of {list(CONDITION_KINDS)}, got {kind!r}")
    if not isinstance(conditions, pd.DataFrame):
        conditions = load_conditions_table(conditions)
    if not isinstance(manifest, pd.DataFrame):
        from hardgen.data.manifest import load_manifest

        manifest = load_manifest(manifest)
    masks = dict(zip(manifest["id"].astype(str), manifest["mask"]))
    out_dir = Path(out_dir).resolve()
    rows = []
    for row in tqdm(conditions.to_dict("records"), desc=f"conditions ({fit})", unit="mask"):
        if row["kind"] == "real":
            source = str(row["source_id"])
            if source not in masks:
                raise DataError(f"conditions table: source_id {source!r} is not in the manifest")
            mask = fit_to(read_mask(masks[source]), size, fit, is_mask=True)
            row = {**row, "condition": str(out_dir / "images" / f"{row['sample_id']}.png"),
                   "mask": str(out_dir / "masks" / f"{row['sample_id']}.png")}
            write_mask(row["mask"], mask)
            write_image(row["condition"], mask_to_condition(mask, kind, low, high))
        rows.append(row)
    LOG.info("generation conditions (%s, %d px): %d rows in %s", fit, size, len(rows), out_dir)
    return pd.DataFrame(rows, columns=list(CONDITIONS_COLUMNS))


def write_conditions_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write the conditions table atomically (columns in :data:`CONDITIONS_COLUMNS` order)."""
    write_table(path, frame, CONDITIONS_COLUMNS, "conditions table")


def load_conditions_table(path: str | Path) -> pd.DataFrame:
    """Read a conditions table; a missing file or missing columns raise DataError naming it."""
    frame = read_csv_table(path, CONDITIONS_COLUMNS, "conditions table", dtype=str, keep_default_na=False)
    return frame[list(CONDITIONS_COLUMNS)]
