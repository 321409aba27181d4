"""Where an inpainted lesion goes: a frame's field of view, a mask placed into a frame off its own lesion, and each
planned sample's scene (the real frame, the lesion drawn, the label, the region redrawn).

The inpainting variants (``generation.inpaint``, :mod:`hardgen.models.inpainting`) draw a lesion into a real frame
and keep the frame outside the lesion's mask dilated by ``dilate`` px. Where the lesion goes is the sample's
placement (``generation.inpaint.placements``), the planned samples, sorted by id, taking them in turn
(:func:`assign_placements`):

* ``in_place``: the training image's own frame and mask (its lesion redrawn, a new appearance of the same mask);
* ``relocated``: the mask placed into another training frame (:func:`place_mask`): at a position inside the
  endoscope's field of view (:func:`field_of_view`: the black border and corners detected), with the redrawn region
  more than ``dilate`` px off that frame's own lesion, at a scale between the smallest and the largest real training
  lesion; the label is the union of both masks;
* ``frames``: the mask placed the same way into a lesion-free frame (``data.background_frames``; the demo renders
  procedural ones, :func:`hardgen.data.demo.make_background_frames`); the label is the placed mask.

Every draw comes from the sample's own seed, so a sample's scene depends on nothing else (the same scene for
``inpaint`` and ``hard_inpaint``). NumPy and OpenCV only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from hardgen.core.io import IMAGE_SUFFIXES, LUMA, DataError

#: ``generation.inpaint.placements`` values, in the schema's order.
PLACEMENTS: tuple[str, ...] = ("in_place", "relocated", "frames")
#: A pixel darker than this Rec. 601 luma (0-255) that is connected to the image border lies outside the field of
#: view: the endoscope's black border (the demo's is 0-6; real borders stay below ~15, a dark lumen inside the field
#: is not connected to the border through dark pixels).
FOV_LUMA = 20.0
#: The first scale of a placed mask is drawn in this range (times its own size), then shrunk by
#: :data:`SCALE_STEP` until it fits, never outside the real lesions' range of areas.
SCALE_RANGE = (0.8, 1.2)
SCALE_STEP = 0.85
#: Pixels between a relocated lesion's redrawn region and the frame's own lesion, at least.
LESION_GAP = 2


def dilate_mask(mask: np.ndarray, px: int) -> np.ndarray:
    """A bool mask dilated by ``px`` px (an elliptical (2 px + 1)² kernel; 0 = unchanged)."""
    mask = np.asarray(mask, dtype=bool)
    if px < 0:
        raise ValueError(f"dilate_mask: px must be >= 0, got {px}")
    if px == 0:
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def erode_mask(mask: np.ndarray, px: int) -> np.ndarray:
    """A bool mask eroded by ``px`` px (the kernel of :func:`dilate_mask`; outside the image counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    if px == 0:
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def field_of_view(frame: np.ndarray, threshold: float = FOV_LUMA) -> np.ndarray:
    """The endoscope's field of view of an RGB uint8 frame (bool): everything but the dark pixels connected to the
    image border (the black border and corners), then the largest connected part (text burnt into the border is
    left out). A frame without a border is its field of view whole, less dark pixels touching its edge."""
    luma = np.asarray(frame, dtype=np.float64)[..., :3] @ LUMA
    dark = (luma < threshold).astype(np.uint8)
    _, labels = cv2.connectedComponents(dark, connectivity=8)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[[dark[labels == e].any() for e in edge]] if len(edge) else edge
    inside = ~np.isin(labels, edge) | (dark == 0)
    count, parts, stats, _ = cv2.connectedComponentsWithStats(inside.astype(np.uint8), connectivity=4)
    if count <= 1:
        return np.zeros(dark.shape, bool)
    return parts == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


@dataclass(frozen=True)
class Frame:
    """A real frame at the generation resolution: its id, the id of its source image (a training image's manifest
    id; a background frame's file stem), the RGB uint8 image and its own lesion (bool; empty when lesion-free)."""

    id: str
    source: str
    image: np.ndarray
    lesion: np.ndarray
    fov: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fov", field_of_view(self.image))


@dataclass(frozen=True)
class Scene:
    """One inpainting sample: its placement, the frame it is drawn into, the lesion drawn (the condition's mask,
    placed), the label (the lesion and the frame's own), and the region redrawn (the lesion dilated by ``dilate``
    px, inside the field of view): outside it the sample is the frame."""

    placement: str
    frame_id: str
    frame: np.ndarray
    lesion: np.ndarray
    label: np.ndarray
    region: np.ndarray


def check_placements(placements: Sequence[str]) -> None:
    """Raise ValueError naming ``generation.inpaint.placements`` when it is empty or lists an unknown placement."""
    if not placements or any(p not in PLACEMENTS for p in placements):
        raise ValueError(f"generation.inpaint.placements: {list(placements)} (choose from {', '.join(PLACEMENTS)})")


def assign_placements(sample_ids: Sequence[str], layouts: Sequence[str], placements: Sequence[str]
                      ) -> dict[str, str]:
    """``{sample id: placement}``: the sorted ids take ``placements`` in turn; a sample of a layout condition
    (``layouts``: its ids; no frame of its own) given ``in_place`` takes the next placement listed instead."""
    check_placements(placements)
    others = [p for p in placements if p != "in_place"]
    layout_ids = set(layouts)
    out = {}
    for k, sid in enumerate(sorted(sample_ids)):
        at = k % len(placements)
        chosen = placements[at]
        if chosen == "in_place" and sid in layout_ids:
            if not others:
                raise DataError(f"sample {sid!r}: its condition is a layout (condition.layouts_per_mask), which has no "
                                "frame of its own, and generation.inpaint.placements lists only in_place")
            chosen = next(p for p in [*placements[at + 1:], *placements[:at]] if p != "in_place")
        out[sid] = chosen
    return out


def lesion_region(lesion: np.ndarray, fov: np.ndarray, dilate: int) -> np.ndarray:
    """The region redrawn for ``lesion``: the lesion dilated by ``dilate`` px, clipped to the field of view (the
    black border stays the frame's), the lesion itself always in."""
    return (dilate_mask(lesion, dilate) & fov) | np.asarray(lesion, dtype=bool)


def area_range(masks: Sequence[np.ndarray]) -> tuple[int, int]:
    """(smallest, largest) foreground pixel count of the non-empty ``masks``: the real lesions' scales."""
    areas = [int(np.count_nonzero(m)) for m in masks if np.any(m)]
    if not areas:
        raise DataError("relocation: no real training mask has a foreground: no lesion scale to follow")
    return min(areas), max(areas)


def place_mask(mask: np.ndarray, frame: Frame, rng: np.random.Generator, dilate: int,
               areas: tuple[int, int]) -> np.ndarray | None:
    """``mask``'s lesion (its bounding box, resized nearest) at a random position of ``frame`` (same size), or None
    when it fits nowhere at any allowed scale.

    Allowed: every lesion pixel lies in the field of view eroded by ``dilate`` px and more than ``dilate`` +
    :data:`LESION_GAP` px from the frame's own lesion, so the region redrawn (the lesion dilated by ``dilate``) stays in
    the field of view and never comes within :data:`LESION_GAP` px of the frame's lesion. The first scale is drawn
    from :data:`SCALE_RANGE`, then shrunk by :data:`SCALE_STEP` while nothing fits; every scale keeps the lesion's
    area within ``areas`` (the real lesions').
    """
    mask = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if not len(ys):
        raise DataError("relocation: an empty mask has no lesion to place")
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8)
    area = float(mask.sum())
    low, high = (max(areas[0] / area, 1e-6) ** 0.5, (areas[1] / area) ** 0.5)
    allowed = erode_mask(frame.fov, dilate) & ~dilate_mask(frame.lesion, dilate + LESION_GAP)
    if not allowed.any():
        return None
    scale = min(max(float(rng.uniform(*SCALE_RANGE)), low), high)
    while True:
        h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
        piece = cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST)
        if piece.any() and h <= mask.shape[0] and w <= mask.shape[1]:
            # top-left corners where the whole piece lies in the allowed pixels (outside the image: not allowed)
            fits = cv2.erode(allowed.astype(np.uint8), piece, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT,
                             borderValue=0)
            corners = np.argwhere(fits > 0)
            if len(corners):
                y, x = corners[int(rng.integers(len(corners)))]
                placed = np.zeros(mask.shape, bool)
                placed[y:y + h, x:x + w] = piece > 0
                return placed
        if scale * SCALE_STEP < low or scale < 1e-3:
            return None
        scale *= SCALE_STEP


def plan_scene(placement: str, mask: np.ndarray, own: Frame | None, frames: Sequence[Frame],
               backgrounds: Sequence[Frame], seed: int, dilate: int, areas: tuple[int, int],
               sample_id: str = "?") -> Scene:
    """One sample's :class:`Scene` (see the module doc). ``mask``: its condition's mask at the frames' size; ``own``:
    its training frame (None for a layout condition); ``frames``: the training frames, ``backgrounds`` the lesion-free
    ones; every draw from ``seed``.

    A lesion too large for the room any frame of its placement leaves (at the smallest real lesion's scale) is drawn
    in place instead: the scene's ``placement`` says ``in_place`` (the manifest records it) and the caller logs it; a
    layout, which has no frame of its own, then is a :class:`DataError` naming the sample."""
    mask = np.asarray(mask, dtype=bool)
    if placement == "in_place":
        if own is None:
            raise DataError(f"sample {sample_id!r}: in_place needs the condition's own training frame (a layout has "
                            "none)")
        return Scene(placement, own.id, own.image, mask, mask | own.lesion, lesion_region(mask, own.fov, dilate))
    if placement not in ("relocated", "frames"):
        raise ValueError(f"generation.inpaint.placements: unknown placement {placement!r}")
    pool = ([f for f in frames if own is None or f.source != own.source] if placement == "relocated"
            else list(backgrounds))
    if not pool:
        what = "another training frame" if placement == "relocated" else "a background frame (data.background_frames)"
        raise DataError(f"sample {sample_id!r}: placement {placement} needs {what}; there is none")
    rng = np.random.default_rng(seed)
    for index in rng.permutation(len(pool)):
        frame = pool[int(index)]
        placed = place_mask(mask, frame, rng, dilate, areas)
        if placed is not None:
            return Scene(placement, frame.id, frame.image, placed, placed | frame.lesion,
                         lesion_region(placed, frame.fov, dilate))
    if own is None:
        raise DataError(f"sample {sample_id!r}: its mask fits no {placement} frame's field of view off the frame's own "
                        f"lesion at any real lesion scale (generation.inpaint.dilate {dilate} px), and its condition "
                        "is a layout, which has no frame of its own to draw it in")
    return plan_scene("in_place", mask, own, frames, backgrounds, seed, dilate, areas, sample_id)


def background_files(folder: str | Path) -> list[Path]:
    """The image files of a background-frames folder (:data:`hardgen.core.io.IMAGE_SUFFIXES`), sorted by name; an error naming
    ``data.background_frames`` when it holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data.background_frames: {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"data.background_frames: {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files
