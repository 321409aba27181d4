"""NIfTI volumes as 2D pairs: an image/mask volume pair becomes the slices along one axis, intensities through a
window, the slices without foreground kept at a seeded share (``data.volume``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardgen.core.io import DataError, to_uint8
from hardgen.data.masks import decode_mask

#: File suffixes of a NIfTI volume.
VOLUME_SUFFIXES = (".nii.gz", ".nii")


def volume_suffix(path: Path) -> str | None:
    """``.nii`` / ``.nii.gz`` when ``path`` names a NIfTI volume, else None."""
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


@dataclass(frozen=True)
class VolumeSlicing:
    """How NIfTI volumes become 2D pairs: slice ``axis`` (0, 1, 2 of the stored array) and the share of slices
    without foreground that are kept (``keep_empty``, a seeded draw per volume; slices with foreground are all kept)."""

    axis: int = 2
    keep_empty: float = 0.0

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2):
            raise ValueError(f"data.volume.axis must be 0, 1 or 2 (got {self.axis})")
        if not 0.0 <= self.keep_empty <= 1.0:
            raise ValueError(f"data.volume.keep_empty must lie in [0, 1] (got {self.keep_empty})")


def _read_volume(path: Path, what: str) -> np.ndarray:
    import nibabel as nib  # local: only NIfTI datasets need it

    try:
        volume = nib.load(str(path))
        data = volume.get_fdata(dtype=np.float32) if what == "image" else np.asanyarray(volume.dataobj)
    except Exception as err:  # nibabel raises several types for bad files
        raise DataError(f"{path}: unreadable NIfTI {what} ({type(err).__name__}: {err})") from err
    data = np.squeeze(np.asarray(data))
    if data.ndim != 3:
        raise DataError(f"{path}: NIfTI {what} must be a 3D volume, got shape {data.shape}")
    return data


def volume_slices(
    image_path: Path, mask_path: Path, sample_id: str, window: Sequence[float] | None, foreground: Sequence[int] | None,
    slicing: VolumeSlicing, seed: int,
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(slice index, uint8 image, bool mask) of the kept slices of one image/mask volume pair."""
    if window is None:
        raise DataError(f"{image_path}: a NIfTI volume needs data.window: [low, high] (its intensity window, e.g. "
                        "CT Hounsfield units [-160, 240])")
    image = _read_volume(image_path, "image")
    labels = _read_volume(mask_path, "mask")
    if image.shape != labels.shape:
        raise DataError(f"{mask_path}: mask volume shape {labels.shape} differs from its image {image_path} "
                        f"{image.shape}")
    if np.issubdtype(labels.dtype, np.floating):
        labels = np.rint(labels).astype(np.int64)
    flat = labels.reshape(labels.shape[0], -1)
    mask = decode_mask(flat, foreground, mask_path).reshape(labels.shape)
    image, mask = np.moveaxis(image, slicing.axis, 0), np.moveaxis(mask, slicing.axis, 0)
    has_fg = mask.reshape(mask.shape[0], -1).any(axis=1)
    empty = np.flatnonzero(~has_fg)
    rng = np.random.default_rng([seed, int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:4], "little")])
    kept_empty = rng.choice(empty, size=round(slicing.keep_empty * len(empty)), replace=False) if len(empty) else []
    keep = sorted(set(np.flatnonzero(has_fg).tolist()) | {int(k) for k in kept_empty})
    # slice k of the stored array, transposed: the first remaining voxel axis runs along the image's width
    return [(k, to_uint8(image[k].T, window), np.ascontiguousarray(mask[k].T)) for k in keep]
