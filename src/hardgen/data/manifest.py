"""Datasets in the PraNet layout: a procedural colonoscopy-like demo set and a validated manifest.

PraNet layout (what the public polyp benchmarks ship as)::

    root/TrainDataset/image/*   root/TrainDataset/mask/*
    root/TestDataset/<name>/images/*   root/TestDataset/<name>/masks/*

:func:`make_demo_dataset` writes a small synthetic tree in that layout; :func:`build_manifest` turns any
such tree (demo or real) into one table, checking everything a later stage would trip over and
reporting all problems at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from hardgen.core.io import (
    IMAGE_SUFFIXES,
    DataError,
    atomic_folder,
    binarize,
    read_gray,
    read_rgb,
    to_uint8,
    write_image,
    write_mask,
    write_table,
    write_text,
)

LOG = logging.getLogger("hardgen.data.manifest")

#: Columns of the manifest, in order.
MANIFEST_COLUMNS = ("id", "split", "image", "mask", "width", "height", "fg_fraction")

TRAIN_SPLIT = "train"
#: Columns of the record of the real training subset (``data.train_subset``; rule prepare_data).
SUBSET_COLUMNS = ("id", "rank", "selected", "size", "seed")
TRAIN_DIR = Path("TrainDataset")
TRAIN_IMAGE_DIR, TRAIN_MASK_DIR = "image", "mask"
TEST_DIR = Path("TestDataset")
TEST_IMAGE_DIR, TEST_MASK_DIR = "images", "masks"

#: Written at the demo root so a rerun may replace its own earlier output but never a real dataset.
DEMO_MARKER = "hardgen-demo.json"

# ---------------------------------------------------------------------------------------------
# Demo dataset
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoStyle:
    """How one (real) polyp set looks, as far as the demo imitates it."""

    mucosa_rgb: tuple[float, float, float]  # base colour of the colon wall
    polyp_tint: tuple[float, float, float]  # multiplicative hue shift of polyp tissue
    colour_cast: tuple[float, float, float]  # camera white balance / processing of the set
    brightness: float
    blur_sigma: float
    noise_sigma: float
    polyp_radius: tuple[float, float]  # polyp radius as a fraction of the shorter image side
    two_polyp_prob: float
    size_range: tuple[float, float]  # long side as a position within [min_size, max_size]
    aspect_range: tuple[float, float]  # width / height


#: Styles follow how the public sets differ: Kvasir has large polyps and the biggest images,
#: ETIS small polyps on large frames, CVC-ColonDB is darker and blurrier, CVC-ClinicDB reddish 4:3.
DEMO_STYLES: dict[str, DemoStyle] = {
    "Kvasir": DemoStyle((214, 128, 98), (1.04, 0.90, 0.86), (1.03, 1.00, 0.94), 1.05, 0.4, 2.5,
                        (0.18, 0.38), 0.15, (0.65, 1.0), (0.8, 1.35)),
    "CVC-ClinicDB": DemoStyle((196, 98, 78), (1.06, 0.86, 0.84), (1.06, 0.96, 0.94), 1.0, 0.5, 3.0,
                              (0.10, 0.28), 0.10, (0.35, 0.8), (1.25, 1.4)),
    "CVC-300": DemoStyle((204, 112, 86), (1.03, 0.92, 0.88), (1.0, 1.0, 1.02), 1.0, 0.6, 2.5,
                         (0.10, 0.26), 0.10, (0.45, 0.9), (1.1, 1.2)),
    "CVC-ColonDB": DemoStyle((160, 86, 66), (1.05, 0.88, 0.86), (0.98, 0.96, 1.04), 0.78, 1.4, 3.5,
                             (0.09, 0.24), 0.05, (0.45, 0.9), (1.1, 1.2)),
    "ETIS-LaribPolypDB": DemoStyle((218, 136, 112), (1.02, 0.93, 0.92), (1.02, 1.02, 1.06), 1.1, 0.7, 2.0,
                                   (0.04, 0.11), 0.20, (0.7, 1.0), (1.2, 1.3)),
}
#: Used for a test-set name the demo does not know (a custom split in the config).
DEFAULT_STYLE = DEMO_STYLES["CVC-300"]
#: Share of Kvasir-like training images (the rest is ClinicDB-like), as in the PraNet training split.
TRAIN_KVASIR_SHARE = 0.6
#: Every JPEG_MASK_EVERY-th mask is stored as JPEG, like several public copies of these sets.
JPEG_MASK_EVERY = 3
#: ``data.demo.lesion_colour`` values: ``distinct`` (the lesion's own colour: a redder polyp, a darker ultrasound
#: lesion) or ``matched`` (the colour / grey level of its background: it shows by shape, shading and texture only,
#: as many real polyps and isoechoic lesions do).
LESION_COLOURS = ("distinct", "matched")
#: Relative amplitude of the matched polyp's luminance grain (its surface texture).
MATCHED_GRAIN = 0.12
#: Relative amplitude of the matched (isoechoic) ultrasound lesion's echotexture.
MATCHED_ECHO_GRAIN = 0.35


def lesion_free(index: int, fraction: float) -> bool:
    """Whether frame ``index`` of a demo test set is lesion-free (``data.demo.empty_test_fraction``).

    Frame i is lesion-free when ``floor((i + 1) f) > floor(i f)``: exactly ``floor(n f)`` of the first n frames,
    spread evenly (f = 0.5: every second frame), and a frame keeps its status when the set grows.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.demo.empty_test_fraction must lie in [0, 1) (got {fraction})")
    return int(np.floor((index + 1) * fraction)) > int(np.floor(index * fraction))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: random values on a coarse grid, cubic-upsampled."""
    gh, gw = max(2, round(h / cell)) + 1, max(2, round(w / cell)) + 1
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _image_size(rng: np.random.Generator, style: DemoStyle, min_size: int, max_size: int) -> tuple[int, int]:
    """(height, width) within [min_size, max_size], long side and aspect drawn from the style."""
    span = max_size - min_size
    long_side = min_size + span * rng.uniform(*style.size_range)
    aspect = rng.uniform(*style.aspect_range)
    if aspect >= 1.0:
        w, h = long_side, long_side / aspect
    else:
        w, h = long_side * aspect, long_side
    return int(np.clip(round(h), min_size, max_size)), int(np.clip(round(w), min_size, max_size))


def _octagon(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Bool mask of the endoscope's octagonal field of view (outside is the black border)."""
    cut = rng.uniform(0.10, 0.18) * min(h, w)
    m = rng.integers(1, 4)  # thin black margin on the straight sides
    pts = np.array(
        [(cut, m), (w - 1 - cut, m), (w - 1 - m, cut), (w - 1 - m, h - 1 - cut),
         (w - 1 - cut, h - 1 - m), (cut, h - 1 - m), (m, h - 1 - cut), (m, cut)],
        dtype=np.int32,
    )
    field = np.zeros((h, w), np.uint8)
    cv2.fillPoly(field, [pts], 1)
    return field.astype(bool)


def _polyp_shape(rng: np.random.Generator, h: int, w: int, radius: float) -> np.ndarray:
    """Bool mask of one irregular, roughly elliptical blob centred inside the field of view."""
    cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    theta = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    r = np.ones_like(theta)
    for k in (2, 3, 4, 5):  # low harmonics: lobed, not spiky
        r += rng.uniform(0.0, 0.14 / (k - 1)) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    stretch = rng.uniform(0.7, 1.3)
    rot = rng.uniform(0, np.pi)
    x, y = radius * r * np.cos(theta) * stretch, radius * r * np.sin(theta) / stretch
    xs = cx + x * np.cos(rot) - y * np.sin(rot)
    ys = cy + x * np.sin(rot) + y * np.cos(rot)
    shape = np.zeros((h, w), np.uint8)
    cv2.fillPoly(shape, [np.stack([xs, ys], axis=1).round().astype(np.int32)], 1)
    return shape.astype(bool)


def _draw_vessels(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float layer in [0, 1] of thin meandering vessels (random walks)."""
    layer = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(3, 9))):
        pos = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        angle = rng.uniform(0, 2 * np.pi)
        pts = [pos.copy()]
        for _ in range(int(rng.integers(8, 25))):
            angle += rng.normal(0, 0.45)
            pos = pos + 3.0 * np.array([np.cos(angle), np.sin(angle)])
            pts.append(pos.copy())
        cv2.polylines(layer, [np.array(pts).round().astype(np.int32)], False, float(rng.uniform(0.4, 1.0)), 1)
    return cv2.GaussianBlur(layer, (0, 0), 0.6)


def _render_demo_sample(
    rng: np.random.Generator, style: DemoStyle, min_size: int, max_size: int,
    lesion_colour: str = "distinct", lesion: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One colonoscopy-like RGB uint8 image and its bool polyp mask.

    ``lesion_colour`` (``data.demo.lesion_colour``): ``distinct`` tints the polyp tissue with the style's
    ``polyp_tint`` (redder than the mucosa: the default demo); ``matched`` keeps the mucosa's own colour, so the
    polyp shows by its shape, its shading (the lit dome), its specular spots and a fine granular surface texture
    (luminance only, from a generator spawned off ``rng``: the image is the ``distinct`` one everywhere outside the
    polyp, and the mask is the same). ``lesion`` False renders a lesion-free frame (empty mask): the polyps are not
    drawn, so the remaining draws of ``rng`` differ from the frame with a lesion.
    """
    if lesion_colour not in LESION_COLOURS:
        raise ValueError(f"data.demo.lesion_colour must be one of {list(LESION_COLOURS)} (got {lesion_colour!r})")
    matched = lesion_colour == "matched"
    # spawned before any draw: children of the generator's seed sequence, the parent's stream is untouched
    texture_rng = rng.spawn(1)[0] if matched else None
    h, w = _image_size(rng, style, min_size, max_size)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = _octagon(h, w, rng)

    # Mucosa luminance: large smooth shading, folds (warped sinusoids), a dark lumen, vignetting.
    lum = 1.0 + 0.10 * _smooth_noise(rng, h, w, cell=24)
    warp = 1.2 * _smooth_noise(rng, h, w, cell=40)
    for _ in range(int(rng.integers(1, 3))):
        angle, freq = rng.uniform(0, np.pi), rng.uniform(1.2, 3.0)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / max(h, w) * 2 * np.pi * freq
        wave = np.sin(phase + warp + rng.uniform(0, 2 * np.pi))
        # Haustral folds: a lit ridge followed by a narrow dark crease.
        lum += rng.uniform(0.05, 0.10) * wave - rng.uniform(0.15, 0.30) * np.clip(wave, 0, None) ** 8
    ly, lx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    lumen_r = rng.uniform(0.12, 0.25) * min(h, w)
    lum -= 0.55 * np.exp(-((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * lumen_r**2))
    rr = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
    lum *= 1.0 - 0.30 * rr
    colour = np.asarray(style.mucosa_rgb, np.float32)
    img = colour[None, None, :] * lum[..., None]
    img += 6.0 * np.stack([_smooth_noise(rng, h, w, cell=6) for _ in range(3)], axis=-1)  # fine texture

    vessels = _draw_vessels(rng, h, w)[..., None]
    img = img * (1 - 0.55 * vessels) + np.array([120, 28, 36], np.float32) * 0.55 * vessels

    # Polyps: shaded bumps (dome height map lit from one side), slightly different hue.
    mask = np.zeros((h, w), bool)
    n_polyps = 2 if rng.random() < style.two_polyp_prob else 1
    tint = np.ones(3, np.float32) if matched else np.asarray(style.polyp_tint, np.float32)
    for _ in range(n_polyps if lesion else 0):
        radius = rng.uniform(*style.polyp_radius) * min(h, w)
        shape = _polyp_shape(rng, h, w, radius) & field
        mask |= shape
        dist = cv2.distanceTransform(shape.astype(np.uint8), cv2.DIST_L2, 3)
        height = np.sqrt(dist / max(float(dist.max()), 1.0))
        gy, gx = np.gradient(cv2.GaussianBlur(height, (0, 0), 1.0))
        light = rng.uniform(0, 2 * np.pi)
        shade = 1.0 + 0.10 * height - 3.0 * radius * 0.05 * (gx * np.cos(light) + gy * np.sin(light))
        alpha = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), 0.8)[..., None]
        tissue = img * tint * np.clip(shade, 0.6, 1.4)[..., None]
        img = img * (1 - alpha) + tissue * alpha

    if matched and mask.any():
        # the polyp's granular surface (pit pattern): a luminance-only texture, every channel scaled alike, so the
        # tissue keeps the mucosa's chromaticity
        grain = 1.0 + MATCHED_GRAIN * _smooth_noise(texture_rng, h, w, cell=2.5)
        alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.8)
        img = img * (1.0 + (grain - 1.0) * alpha)[..., None]

    # Specular highlights: small white blobs, half of them on polyps where the light hits.
    spec = np.zeros((h, w), np.float32)
    ys_on, xs_on = np.nonzero(mask)
    for i in range(int(rng.integers(2, 7))):
        if i % 2 == 0 and len(xs_on):
            j = int(rng.integers(len(xs_on)))
            cx, cy = int(xs_on[j]), int(ys_on[j])
        else:
            cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        axes = (int(rng.integers(1, 4)), int(rng.integers(1, 3)))
        cv2.ellipse(spec, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    spec = cv2.GaussianBlur(spec, (0, 0), 0.7)[..., None]
    img = img + (255.0 - img) * np.clip(spec * 1.2, 0, 1)

    # Camera: colour cast, exposure, blur, sensor noise, then the black endoscope border.
    img = img * np.asarray(style.colour_cast, np.float32) * style.brightness
    img = cv2.GaussianBlur(img, (0, 0), style.blur_sigma)
    img += rng.normal(0.0, style.noise_sigma, img.shape).astype(np.float32)
    img[~field] = rng.uniform(0, 6)
    return np.clip(img, 0, 255).round().astype(np.uint8), mask


def _write_demo_pair(folder_image: Path, folder_mask: Path, stem: str, index: int,
                     image: np.ndarray, mask: np.ndarray) -> tuple[Path, Path]:
    """Write one pair; every JPEG_MASK_EVERY-th mask goes out as JPEG (with its compression noise). Returns the
    image's and the mask's paths."""
    write_image(folder_image / f"{stem}.png", image)
    mask_suffix = ".jpg" if index % JPEG_MASK_EVERY == JPEG_MASK_EVERY - 1 else ".png"
    write_mask(folder_mask / f"{stem}{mask_suffix}", mask)
    return folder_image / f"{stem}.png", folder_mask / f"{stem}{mask_suffix}"


def make_demo_dataset(
    root: str | Path,
    testsets: Sequence[str],
    n_train: int,
    n_test: int,
    min_size: int,
    max_size: int,
    seed: int,
    lesion_colour: str = "distinct",
    empty_test_fraction: float = 0.0,
) -> None:
    """Write a procedural colonoscopy-like dataset in the PraNet layout under ``root``.

    ``n_train`` training pairs (60 % Kvasir-like, 40 % ClinicDB-like) and ``n_test`` pairs per test
    set, each test set in its own style. Image sides lie in [min_size, max_size]. Output is fully
    determined by the arguments (same bytes on rerun). The tree is built in a temporary sibling and
    moved into place, so ``root`` is never half-written; an existing ``root`` is replaced only if it
    is empty or an earlier demo tree (it holds :data:`DEMO_MARKER`). ``root/dataset.csv``
    (:data:`DEMO_TABLE`) lists the same pairs as ``image, mask, split`` (split ``train`` and the test-set
    names): the ``table`` layout of the same data.

    The hard cases of real data, both off by default (the default demo's bytes do not depend on them):
    ``lesion_colour`` ``matched`` gives every polyp the mucosa's colour (:func:`_render_demo_sample`), and
    ``empty_test_fraction`` f makes ``floor(n_test f)`` frames of each test set lesion-free, with an empty mask
    (:func:`lesion_free`), as real test sets publish frames without a polyp. Training frames always show one.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"data.demo.n_train and data.demo.n_test must be >= 1 (got {n_train}, {n_test})")
    if not 16 <= min_size <= max_size:
        raise ValueError(f"data.demo.min_size/max_size must satisfy 16 <= min <= max (got {min_size}, {max_size})")
    if len(set(testsets)) != len(testsets) or not all(isinstance(t, str) and t.strip() for t in testsets):
        raise ValueError(f"data.testsets must be distinct non-empty names (got {list(testsets)})")
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not (root / DEMO_MARKER).is_file():
        raise FileExistsError(f"{root}: exists and is not a hardgen demo tree; refusing to overwrite it")
    for name in testsets:
        if name not in DEMO_STYLES:
            LOG.warning("demo: no style for test set %r; using the default style", name)
    if lesion_colour not in LESION_COLOURS:
        raise ValueError(f"data.demo.lesion_colour must be one of {list(LESION_COLOURS)} (got {lesion_colour!r})")
    lesion_free(0, empty_test_fraction)  # checks the fraction

    with atomic_folder(root) as staging:
        # One generator per image, keyed by (seed, split, index): changing n_test or adding a test set
        # leaves every other image's bytes unchanged.
        train_rng = np.random.default_rng([seed, 0])
        kvasir_like = np.zeros(n_train, bool)
        kvasir_like[: round(TRAIN_KVASIR_SHARE * n_train)] = True
        kvasir_like = train_rng.permutation(kvasir_like)
        jobs: list[tuple[Path, Path, str, int, DemoStyle, np.random.Generator, str, bool]] = []
        for i in range(n_train):
            style_name = "Kvasir" if kvasir_like[i] else "CVC-ClinicDB"
            stem = f"{'kvasir' if kvasir_like[i] else 'clinicdb'}_{i:04d}"
            jobs.append((staging / TRAIN_DIR / TRAIN_IMAGE_DIR, staging / TRAIN_DIR / TRAIN_MASK_DIR, stem, i,
                         DEMO_STYLES[style_name], np.random.default_rng([seed, 1, i]), TRAIN_SPLIT, True))
        for name in testsets:
            base = staging / TEST_DIR / name
            # Seed by name, not position, so reordering testsets keeps each set's bytes.
            name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
            for i in range(n_test):
                jobs.append((base / TEST_IMAGE_DIR, base / TEST_MASK_DIR, f"{i + 1}", i,
                             DEMO_STYLES.get(name, DEFAULT_STYLE), np.random.default_rng([seed, 2, name_key, i]),
                             name, not lesion_free(i, empty_test_fraction)))
        rows = []
        for image_dir, mask_dir, stem, index, style, rng, split, lesion in tqdm(jobs, desc="demo dataset", unit="img"):
            image, mask = _render_demo_sample(rng, style, min_size, max_size, lesion_colour, lesion)
            written = [p.relative_to(staging) for p in _write_demo_pair(image_dir, mask_dir, stem, index, image, mask)]
            rows.append({"image": written[0].as_posix(), "mask": written[1].as_posix(), "split": split})
        # in the order the pranet layout lists them: splits as given, stems sorted within each
        splits = [TRAIN_SPLIT, *testsets]
        rows.sort(key=lambda row: (splits.index(row["split"]), Path(row["image"]).stem))
        write_table(staging / DEMO_TABLE, pd.DataFrame(rows), TABLE_COLUMNS, "demo table")
        marker = {"testsets": list(testsets), "n_train": n_train, "n_test": n_test, "min_size": min_size,
                  "max_size": max_size, "seed": seed}
        if lesion_colour != "distinct" or empty_test_fraction:  # the default demo's marker stays as it was
            marker.update(lesion_colour=lesion_colour, empty_test_fraction=empty_test_fraction)
        write_text(staging / DEMO_MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")
    LOG.info("demo dataset: %d train + %d x %d test pairs under %s", n_train, len(testsets), n_test, root)


# ---------------------------------------------------------------------------------------------
# Second demo modality: grayscale ultrasound-like lesions in the folders / table layouts
# ---------------------------------------------------------------------------------------------

#: ``data.demo.modality`` values: the polyp demo (PraNet layout) and the ultrasound-like one (folders / table).
DEMO_MODALITIES = ("polyp", "ultrasound")
#: The ultrasound demo's table (``table`` layout): beside the split folders, paths relative to it.
DEMO_TABLE = "dataset.csv"
#: Values of the ultrasound demo's masks as stored: a binary mask in 0/1, not 0/255 (prepare_data converts it).
ULTRASOUND_MASK_VALUES = (0, 1)


def _render_ultrasound_sample(rng: np.random.Generator, min_size: int, max_size: int,
                              lesion_colour: str = "distinct", lesion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One B-mode-ultrasound-like 16-bit grey image and its bool lesion mask.

    A fan-shaped field of view (sector from an apex above the top edge), layered tissue echogenicity with smooth
    variation, multiplicative speckle (Rayleigh amplitude of a complex Gaussian, slightly smoothed), a dark
    hypoechoic lesion with a soft rim and posterior acoustic enhancement, depth attenuation with time-gain
    compensation, then log-compression into the 16-bit range.

    ``lesion_colour`` ``matched``: an isoechoic lesion instead (the grey level of the tissue around it, no posterior
    enhancement), shown by a thin hypoechoic halo just outside its border and a coarser echotexture inside (drawn
    from a generator spawned off ``rng``: the mask and the speckle are the ``distinct`` frame's). ``lesion`` False:
    a lesion-free frame (empty mask).
    """
    if lesion_colour not in LESION_COLOURS:
        raise ValueError(f"data.demo.lesion_colour must be one of {list(LESION_COLOURS)} (got {lesion_colour!r})")
    matched = lesion_colour == "matched"
    texture_rng = rng.spawn(1)[0] if matched else None
    h = int(rng.integers(min_size, max_size + 1))
    w = int(np.clip(round(h * rng.uniform(1.0, 1.35)), min_size, max_size))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    apex_y, apex_x = -0.15 * h, w / 2 + rng.uniform(-0.05, 0.05) * w
    radius = np.hypot(yy - apex_y, xx - apex_x)
    angle = np.arctan2(xx - apex_x, yy - apex_y)
    half_angle = np.deg2rad(rng.uniform(32, 42))
    r0, r1 = 0.2 * h, 1.12 * h
    fan = (np.abs(angle) <= half_angle) & (radius >= r0) & (radius <= r1)

    depth = np.clip((radius - r0) / (r1 - r0), 0, 1)
    tissue = 0.55 + 0.12 * _smooth_noise(rng, h, w, cell=18)
    for _ in range(int(rng.integers(1, 4))):  # bright fascia-like layers roughly parallel to the probe
        level = rng.uniform(0.1, 0.9)
        wobble = 0.03 * _smooth_noise(rng, h, w, cell=30)
        tissue += rng.uniform(0.2, 0.45) * np.exp(-((depth - level - wobble) ** 2) / (2 * 0.012**2))

    mask = np.zeros((h, w), bool)
    ys, xs = np.nonzero(fan & (depth > 0.2) & (depth < 0.75) & (np.abs(angle) < 0.7 * half_angle))
    if len(xs) and lesion:
        j = int(rng.integers(len(xs)))
        cy, cx = float(ys[j]), float(xs[j])
        ry = rng.uniform(0.08, 0.18) * h
        rx = ry * rng.uniform(1.0, 1.8)
        theta = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        r = 1.0 + sum(rng.uniform(0, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
        pts = np.stack([cx + rx * r * np.cos(theta), cy + ry * r * np.sin(theta)], axis=1).round().astype(np.int32)
        shape = np.zeros((h, w), np.uint8)
        cv2.fillPoly(shape, [pts], 1)
        mask = shape.astype(bool) & fan
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.2)
        if matched:
            # isoechoic: the tissue's own echogenicity, a coarser echotexture inside and a hypoechoic halo (a thin
            # capsule) just outside the border
            grain = 1.0 + MATCHED_ECHO_GRAIN * _smooth_noise(texture_rng, h, w, cell=4)
            tissue = tissue * (1.0 + (grain - 1.0) * soft)
            halo = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mask
            tissue = tissue * (1 - 0.6 * cv2.GaussianBlur(halo.astype(np.float32), (0, 0), 0.5))
        else:
            tissue = tissue * (1 - 0.8 * soft)  # hypoechoic lesion
            # posterior acoustic enhancement: a brighter band below the lesion along the beam
            below = (yy > cy) & (np.abs(xx - cx) < rx) & ~mask
            tissue += 0.25 * below * np.exp(-(yy - cy - ry) .clip(0) / (0.3 * h))

    speckle = np.hypot(rng.standard_normal((h, w)), rng.standard_normal((h, w))).astype(np.float32) / np.sqrt(2)
    speckle = cv2.GaussianBlur(speckle, (0, 0), 0.7)
    gain = np.exp(-1.2 * depth) * (1 + 0.9 * depth)  # attenuation, partly compensated (TGC)
    amplitude = np.clip(tissue, 0.02, None) * speckle * gain
    image = np.log1p(8.0 * amplitude) / np.log1p(8.0 * 2.5)  # log compression, ~[0, 1]
    image = np.where(fan, np.clip(image, 0, 1), 0.0)
    return np.round(image * 60000.0).astype(np.uint16), mask


def make_ultrasound_demo(
    root: str | Path, splits: Mapping[str, int], min_size: int, max_size: int, seed: int,
    lesion_colour: str = "distinct", empty_fraction: Mapping[str, float] | None = None,
) -> None:
    """Write a procedural grayscale ultrasound-like lesion dataset in the ``folders`` layout under ``root``.

    ``splits`` maps each split name (training and test splits alike, any names) to its pair count:
    ``root/<split>/images/<split>_<i>.png`` (16-bit grayscale) and ``root/<split>/masks/<split>_<i>.png`` (8-bit,
    values 0/1). ``root/dataset.csv`` (:data:`DEMO_TABLE`) lists the same pairs as ``image, mask, split`` relative
    to it: the ``table`` layout of the same data. Deterministic, written in a staging sibling and moved into place;
    an existing ``root`` is replaced only if it is empty or an earlier demo tree (:data:`DEMO_MARKER`).

    ``lesion_colour`` ``matched``: isoechoic lesions (:func:`_render_ultrasound_sample`); ``empty_fraction`` maps a
    split (the test sets, ``data.demo.empty_test_fraction``) to the share of its frames that are lesion-free
    (:func:`lesion_free`). Both off by default.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    if not splits or any(int(n) < 1 for n in splits.values()):
        raise ValueError(f"ultrasound demo: every split needs >= 1 pair (got {dict(splits)})")
    empty_fraction = dict(empty_fraction or {})
    for fraction in empty_fraction.values():
        lesion_free(0, fraction)  # checks the fraction
    if not 16 <= min_size <= max_size:
        raise ValueError(f"data.demo.min_size/max_size must satisfy 16 <= min <= max (got {min_size}, {max_size})")
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not (root / DEMO_MARKER).is_file():
        raise FileExistsError(f"{root}: exists and is not a hardgen demo tree; refusing to overwrite it")
    with atomic_folder(root) as staging:
        rows = []
        for split, n in splits.items():
            name_key = int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "little")
            for i in range(int(n)):
                image, mask = _render_ultrasound_sample(
                    np.random.default_rng([seed, 5, name_key, i]), min_size, max_size, lesion_colour,
                    not lesion_free(i, empty_fraction.get(split, 0.0)))
                stem = f"{slug(split)}_{i:03d}"
                image_rel = Path(split) / FOLDER_IMAGE_DIR / f"{stem}.png"
                mask_rel = Path(split) / FOLDER_MASK_DIR / f"{stem}.png"
                (staging / image_rel).parent.mkdir(parents=True, exist_ok=True)
                (staging / mask_rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(staging / image_rel)  # 16-bit grey PNG (mode I;16)
                Image.fromarray(mask.astype(np.uint8) * ULTRASOUND_MASK_VALUES[1]).save(staging / mask_rel)
                rows.append({"image": image_rel.as_posix(), "mask": mask_rel.as_posix(), "split": split})
        write_table(staging / DEMO_TABLE, pd.DataFrame(rows), TABLE_COLUMNS, "demo table")
        marker = {"modality": "ultrasound", "splits": dict(splits), "min_size": min_size, "max_size": max_size,
                  "seed": seed}
        if lesion_colour != "distinct" or any(empty_fraction.values()):
            marker.update(lesion_colour=lesion_colour, empty_fraction=empty_fraction)
        write_text(staging / DEMO_MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")
    LOG.info("ultrasound demo: %s pairs under %s", dict(splits), root)


#: Seed streams of :func:`render_demo_pool`. :func:`make_demo_dataset` draws its images from the streams
#: ``[seed, 1, i]`` (train) and ``[seed, 2, name, i]`` (test sets), so a pool drawn from stream 3 or above never
#: holds a demo image, whatever the two seeds: a base pre-trained on it has not seen the demo's test images.
PRETRAIN_STREAM, HELDOUT_STREAM = 3, 4


def render_demo_pool(
    n: int, seed: int, min_size: int, max_size: int, stream: int = PRETRAIN_STREAM
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``n`` (style name, RGB uint8 image, bool mask) triples from the demo's own renderer, kept in memory.

    Image ``i`` has style ``sorted(DEMO_STYLES)[i % 5]`` (every public set's look, in equal shares) and its
    own generator ``[seed, stream, i]``, so a larger pool keeps every smaller pool's images. ``stream`` must be
    >= :data:`PRETRAIN_STREAM`: lower streams are the demo dataset's.
    """
    if n < 1:
        raise ValueError(f"render_demo_pool: n must be >= 1 (got {n})")
    if seed < 0:
        raise ValueError(f"render_demo_pool: seed must be >= 0 (got {seed})")
    if stream < PRETRAIN_STREAM:
        raise ValueError(f"render_demo_pool: stream {stream} is the demo dataset's; use >= {PRETRAIN_STREAM}")
    if not 16 <= min_size <= max_size:
        raise ValueError(f"render_demo_pool: need 16 <= min_size <= max_size (got {min_size}, {max_size})")
    names = sorted(DEMO_STYLES)
    pool = []
    for i in tqdm(range(n), desc=f"demo pool (stream {stream})", unit="img"):
        name = names[i % len(names)]
        image, mask = _render_demo_sample(np.random.default_rng([seed, stream, i]), DEMO_STYLES[name], min_size, max_size)
        pool.append((name, image, mask))
    return pool


# ---------------------------------------------------------------------------------------------
# Mask checks
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------

_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}


def slug(text: str) -> str:
    """A file-name-safe id part: ASCII letters, digits, ``-`` and ``_``; a short hash keeps it unique.

    Unchanged text stays as is; anything else (spaces, non-ASCII, dots) becomes ``-`` and gets an
    8-hex-digit hash of the original so names differing only in such characters stay distinct.
    """
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")
    if cleaned == text and text:
        return text
    digest = hashlib.sha1(unicodedata.normalize("NFC", text).encode()).hexdigest()[:8]
    return f"{cleaned}-{digest}" if cleaned else digest


VOLUME_SUFFIXES = (".nii.gz", ".nii")


def _volume_suffix(path: Path) -> str | None:
    """``.nii`` / ``.nii.gz`` when ``path`` names a NIfTI volume, else None."""
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def file_stem(path: Path) -> str:
    """The name without its suffix (``.nii.gz`` counts as one suffix), NFC-normalised."""
    suffix = _volume_suffix(path)
    stem = path.name[: -len(suffix)] if suffix else path.stem
    return unicodedata.normalize("NFC", stem)


def _scan_folder(folder: Path, problems: list[str], log: logging.Logger) -> tuple[dict[str, Path], set[str]]:
    """(stem -> image file, duplicated stems) in ``folder``; stems are NFC-normalised, stray files skipped."""
    if not folder.is_dir():
        problems.append(f"{folder}: folder missing")
        return {}, set()
    by_stem: dict[str, list[Path]] = {}
    stray: list[str] = []
    for entry in sorted(folder.iterdir()):
        is_candidate = (
            entry.is_file()
            and not entry.name.startswith(".")  # .DS_Store, macOS ._resource forks, editor temp files
            and entry.name.lower() not in _IGNORED_NAMES
            and (entry.suffix.lower() in IMAGE_SUFFIXES or _volume_suffix(entry) is not None)
        )
        if not is_candidate:
            stray.append(entry.name)
            continue
        # macOS archives store names decomposed (NFD); pairing must not depend on that.
        by_stem.setdefault(file_stem(entry), []).append(entry)
    if stray:
        log.info("%s: ignored %d non-image entries: %s", folder, len(stray), ", ".join(stray))
    for stem, files in by_stem.items():
        if len(files) > 1:
            problems.append(f"{folder}: duplicate stem {stem!r}: " + ", ".join(f.name for f in files))
    if not by_stem:
        problems.append(f"{folder}: no images found (empty folder)")
    unique = {stem: files[0] for stem, files in by_stem.items() if len(files) == 1}
    return unique, set(by_stem) - set(unique)


#: ``data.layout`` values (see :func:`build_manifest`).
LAYOUTS = ("pranet", "folders", "table")
#: ``folders`` layout: ``<root>/<split>/images/`` and ``<root>/<split>/masks/``.
FOLDER_IMAGE_DIR, FOLDER_MASK_DIR = "images", "masks"
#: Columns of a ``table`` layout CSV (paths relative to the CSV's folder, or absolute).
TABLE_COLUMNS = ("image", "mask", "split")
#: Where :func:`build_manifest` writes converted pairs under its ``converted`` folder.
CONVERTED_IMAGE_DIR, CONVERTED_MASK_DIR = "images", "masks"


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


def _pranet_pairs(root: Path, testsets: Sequence[str], problems: list[str],
                  log: logging.Logger) -> list[tuple[str, Path, Path, str]]:
    splits = [(TRAIN_SPLIT, root / TRAIN_DIR / TRAIN_IMAGE_DIR, root / TRAIN_DIR / TRAIN_MASK_DIR)]
    splits += [(name, root / TEST_DIR / name / TEST_IMAGE_DIR, root / TEST_DIR / name / TEST_MASK_DIR)
               for name in testsets]
    return _folder_pairs(splits, problems, log, "test set folder", "training set folder")


def _folder_pairs(splits: Sequence[tuple[str, Path, Path]], problems: list[str], log: logging.Logger,
                  test_what: str, train_what: str, train_names: Sequence[str] = (TRAIN_SPLIT,),
                  ) -> list[tuple[str, Path, Path, str]]:
    """(source split, image, mask, stem) of the image/mask folders of each split, paired by stem."""
    pairs: list[tuple[str, Path, Path, str]] = []
    for split, image_dir, mask_dir in splits:
        if not image_dir.parent.is_dir():
            what = train_what if split in train_names else test_what
            problems.append(f"{image_dir.parent}: {what} {split!r} missing" if what == test_what
                            else f"{image_dir.parent}: {what} missing")
            continue
        images, duplicated_images = _scan_folder(image_dir, problems, log)
        masks, duplicated_masks = _scan_folder(mask_dir, problems, log)
        # A duplicated stem is already reported; do not report its partner as unpaired too.
        for stem in sorted(set(images) - set(masks) - duplicated_masks):
            problems.append(f"{images[stem]}: image without mask in {mask_dir}")
        for stem in sorted(set(masks) - set(images) - duplicated_images):
            problems.append(f"{masks[stem]}: mask without image in {image_dir}")
        pairs += [(split, images[stem], masks[stem], stem) for stem in sorted(set(images) & set(masks))]
    return pairs


def _table_pairs(table: Path, splits: Sequence[str], problems: list[str],
                 log: logging.Logger) -> list[tuple[str, Path, Path, str]]:
    """(split, image, mask, stem) of the rows of a ``table`` layout CSV whose split is one of ``splits``."""
    if not table.is_file():
        problems.append(f"{table}: dataset table (data.root, layout table) not found")
        return []
    try:
        frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        problems.append(f"{table}: not a readable CSV ({err})")
        return []
    missing = [c for c in TABLE_COLUMNS if c not in frame.columns]
    if missing:
        problems.append(f"{table}: lacks column(s) {missing} (needs {list(TABLE_COLUMNS)})")
        return []
    pairs: list[tuple[str, Path, Path, str]] = []
    for split in splits:
        if not (frame["split"] == split).any():
            problems.append(f"{table}: no rows of split {split!r}")
    other = sorted(set(frame["split"]) - set(splits))
    if other:
        log.info("%s: rows of split(s) %s are not in data.train_splits or data.testsets: ignored", table, other)
    for row_number, row in enumerate(frame.itertuples(index=False), start=2):  # line 1 is the header
        if row.split not in splits:
            continue
        paths = []
        for column in ("image", "mask"):
            value = getattr(row, column).strip()
            path = Path(value) if Path(value).is_absolute() else table.parent / value
            if not value:
                problems.append(f"{table}: line {row_number}: empty {column!r} cell")
            elif not path.is_file():
                problems.append(f"{table}: line {row_number}: {column} {path} not found")
            paths.append(path if value else None)
        if all(p is not None and p.is_file() for p in paths):
            pairs.append((row.split, paths[0].resolve(), paths[1].resolve(), file_stem(paths[0])))
    return pairs


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


def _needs_rgb_conversion(image_path: Path) -> bool:
    from hardgen.core.io import is_high_bit

    return is_high_bit(image_path)


def _check_pair(image_path: Path, mask_path: Path, problems: list[str],
                foreground: Sequence[int] | None = None,
                ) -> tuple[int, int, float, np.ndarray, bool] | None:
    """(width, height, fg_fraction, mask, mask differs from its file read as 0/255) of a valid 2D pair; otherwise
    append the problems and return None."""
    from hardgen.core.io import read_values

    try:
        image = read_rgb(image_path)
    except DataError as err:
        problems.append(str(err))
        image = None
    try:
        values = read_values(mask_path)
        mask = decode_mask(values, foreground, mask_path)
    except DataError as err:
        problems.append(str(err))
        return None
    if image is None:
        return None
    if mask.shape != image.shape[:2]:
        problems.append(f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                        f"{image_path} ({image.shape[1]}x{image.shape[0]})")
        return None
    differs = not np.array_equal(mask, binarize(read_gray(mask_path)))
    return image.shape[1], image.shape[0], float(mask.mean()), mask, differs


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


def _volume_slices(
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


def build_manifest(
    root: str | Path,
    testsets: Sequence[str],
    expected_sizes: Mapping[str, int] | None = None,
    log: logging.Logger | None = None,
    *,
    layout: str = "pranet",
    train_splits: Sequence[str] = (TRAIN_SPLIT,),
    foreground: Sequence[int] | None = None,
    window: Sequence[float] | None = None,
    volume: VolumeSlicing | None = None,
    converted: str | Path | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Validate a dataset in one of :data:`LAYOUTS` and list every image/mask pair.

    Layouts (``data.layout``):

    - ``pranet``: ``root/TrainDataset/{image,mask}/`` and ``root/TestDataset/<testset>/{images,masks}/``.
    - ``folders``: ``root/<split>/images/`` and ``root/<split>/masks/`` for every split named in ``train_splits``
      (``data.train_splits``) and ``testsets``.
    - ``table``: ``root`` is a CSV with columns ``image, mask, split`` (paths relative to the CSV's folder or
      absolute); rows of other splits are ignored.

    Returns a DataFrame with columns ``id, split, image, mask, width, height, fg_fraction``: ``split`` is ``train``
    for every training split and the test-set name otherwise; ``image``/``mask`` are absolute paths; ``id`` is
    unique and file-name safe (``<slug(source split)>-<slug(stem)>``, slices ``...-s<k>``). Pairs are matched by
    file stem (``folders``, ``pranet``) or by row (``table``).

    Images: 8- or 16-bit, grayscale or RGB, PNG/JPEG/TIFF/BMP (:mod:`hardgen.core.io`). Masks (:func:`decode_mask`):
    binary in any two values, an 8-bit 0/255 mask with JPEG noise, or a label map with ``foreground`` naming the
    foreground label(s). Volumes: a NIfTI image/mask pair (``.nii``, ``.nii.gz``) becomes 2D slices along
    ``volume.axis``, intensities through ``window`` (required), the slices without foreground kept at the share
    ``volume.keep_empty`` (seeded by ``seed`` and the volume's id); a volume's slices are in its split, and a file
    listed in two splits is an error, so no volume or image crosses splits.

    Conversion: a pair whose files downstream stages should not read as they are (a 16-bit or float image, a mask
    that is not 0/255 as stored, a volume slice) is written once as 8-bit PNGs ``<converted>/images/<id>.png`` (grey
    levels through :func:`hardgen.core.io.to_uint8`; ``window`` applies to 16-bit images too) and
    ``<converted>/masks/<id>.png`` (0/255), and the manifest points at those; every other pair keeps its original
    paths. ``converted`` None with a mask or volume to convert is an error; a 16-bit image then keeps its file
    (every stage reads it through :func:`hardgen.core.io.read_rgb`, the same conversion) unless ``window`` is set.

    All problems found (missing/unpaired/duplicate files, unreadable images, size mismatches, non-binary masks,
    empty folders, count mismatches against ``expected_sizes`` keyed by ``train`` and test-set names, counted in
    pairs after slicing) are raised together as one :class:`~hardgen.core.io.DataError`. Stray files are skipped and
    masks without foreground are kept; both are logged on ``log`` (default: the ``hardgen.data.manifest`` logger).
    """
    log = log or LOG
    root = Path(root).resolve()
    if layout not in LAYOUTS:
        raise DataError(f"data.layout: {layout!r} is not one of {list(LAYOUTS)}")
    train_splits = list(train_splits)
    if layout == "pranet" and train_splits != [TRAIN_SPLIT]:
        raise DataError(f"data.train_splits: the pranet layout has one training split, {TRAIN_SPLIT!r} "
                        f"(got {train_splits})")
    if not train_splits or len(set(train_splits)) != len(train_splits):
        raise DataError(f"data.train_splits: need one or more distinct names (got {train_splits})")
    for name in testsets:
        if name == TRAIN_SPLIT or name in train_splits:
            raise DataError(f"data.testsets: test set {name!r} is also a training split name")
    if layout == "table":
        if not root.is_file():
            raise DataError(f"{root}: dataset table (data.root, layout table) not found")
    elif not root.is_dir():
        raise DataError(f"{root}: dataset root (data.root) not found")
    volume = volume or VolumeSlicing()

    problems: list[str] = []
    if layout == "pranet":
        found = _pranet_pairs(root, testsets, problems, log)
    elif layout == "folders":
        splits = [(s, root / s / FOLDER_IMAGE_DIR, root / s / FOLDER_MASK_DIR) for s in [*train_splits, *testsets]]
        found = _folder_pairs(splits, problems, log, "split folder", "training split folder", train_splits)
    else:
        found = _table_pairs(root, [*train_splits, *testsets], problems, log)

    split_of: dict[Path, str] = {}
    for split, image_path, mask_path, _ in found:
        for path in (image_path, mask_path):
            first = split_of.setdefault(path.resolve(), split)
            if first != split:
                problems.append(f"{path}: listed in splits {first!r} and {split!r}; a file (or volume) may "
                                "belong to one split only")

    converted = Path(converted).resolve() if converted is not None else None  # the manifest's paths are absolute
    rows: list[dict[str, object]] = []

    def convert(sample_id: str, image: np.ndarray | None, mask: np.ndarray | None,
                image_path: Path, mask_path: Path) -> tuple[Path, Path]:
        if converted is None:
            raise DataError(f"{image_path} / {mask_path}: this pair must be converted to 8-bit PNGs but no "
                            "folder for converted pairs was given")
        out_image, out_mask = image_path, mask_path
        if image is not None:
            out_image = converted / CONVERTED_IMAGE_DIR / f"{sample_id}.png"
            write_image(out_image, image)
        if mask is not None:
            out_mask = converted / CONVERTED_MASK_DIR / f"{sample_id}.png"
            write_mask(out_mask, mask)
        return out_image, out_mask

    for split, image_path, mask_path, stem in tqdm(found, desc="manifest", unit="pair"):
        out_split = TRAIN_SPLIT if split in train_splits else split
        sample_id = f"{slug(split)}-{slug(stem)}"
        is_volume = _volume_suffix(image_path) is not None
        if is_volume != (_volume_suffix(mask_path) is not None):
            problems.append(f"{image_path} / {mask_path}: an image and its mask must both be NIfTI volumes or both 2D")
            continue
        try:
            if is_volume:
                for k, image, mask in _volume_slices(image_path, mask_path, sample_id, window, foreground, volume, seed):
                    slice_id = f"{sample_id}-s{k:04d}"
                    out_image, out_mask = convert(slice_id, image, mask, image_path, mask_path)
                    rows.append({"id": slice_id, "split": out_split, "image": str(out_image), "mask": str(out_mask),
                                 "width": image.shape[1], "height": image.shape[0], "fg_fraction": float(mask.mean())})
                continue
            checked = _check_pair(image_path, mask_path, problems, foreground)
            if checked is None:
                continue
            width, height, fg_fraction, mask, mask_differs = checked
            image = None
            # 16-bit images: converted whenever there is a folder for it (prepare_data) or a window to apply;
            # without either, hardgen.core.io.read_rgb gives every stage the same 8-bit values from the original file
            if (converted is not None or window is not None) and _needs_rgb_conversion(image_path):
                from hardgen.core.io import read_values

                image = to_uint8(read_values(image_path), window)
            if image is not None or mask_differs:
                image_path, mask_path = convert(sample_id, image, mask if mask_differs else None, image_path, mask_path)
        except DataError as err:
            problems.append(str(err))
            continue
        rows.append({"id": sample_id, "split": out_split, "image": str(image_path), "mask": str(mask_path),
                     "width": width, "height": height, "fg_fraction": fg_fraction})
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))

    duplicated = frame["id"][frame["id"].duplicated()].tolist()
    if duplicated:
        problems.append(f"{root}: ids not unique after slugging: {duplicated}")
    if expected_sizes:
        found_sizes = {s: int((frame["split"] == s).sum()) for s in [TRAIN_SPLIT, *testsets]}
        for split, expected in expected_sizes.items():
            if expected is None:  # explicitly no expectation (an overlay clearing another dataset's test sets)
                continue
            if split not in found_sizes:
                problems.append(f"data.expected_sizes: unknown split {split!r} (known: {sorted(found_sizes)})")
            elif found_sizes[split] != int(expected):
                problems.append(f"data.expected_sizes[{split!r}]: expected {int(expected)} pairs, "
                                f"found {found_sizes[split]} under {root}")
    if problems:
        raise DataError(f"{root}: {len(problems)} problem(s) in the dataset:\n  - " + "\n  - ".join(problems))

    empty = frame.loc[frame["fg_fraction"] == 0.0, "mask"].tolist()
    if empty:
        log.warning("%d mask(s) have no foreground (kept; prototypes skip them): %s", len(empty), ", ".join(empty))
    log.info("manifest: %s", ", ".join(f"{s}={n}" for s, n in frame.groupby("split", sort=False).size().items()))
    return frame


def nested_subsets(ids: Sequence[str], sizes: Sequence[int | None], seed: int,
                   key: str = "data.train_subset") -> dict[int, list[str]]:
    """Seeded, nested subsets of ``ids``: ``{size: sorted ids}``, each smaller subset inside every larger one.

    The ids are sorted, then ranked by one permutation of ``np.random.default_rng(seed)``; the subset of size n
    is the n first in that order (returned sorted). The result depends only on the set of ids, the sizes and the
    seed, never on the input order. ``None`` in ``sizes`` means all ids (key ``len(ids)``). A size below 1 or
    above ``len(ids)`` raises ValueError naming ``key`` (the config key that asked for the sizes).
    """
    ordered = _seeded_order(ids, seed)
    out: dict[int, list[str]] = {}
    for size in sizes:
        n = len(ordered) if size is None else int(size)
        if size is not None and (n != size or n < 1):
            raise ValueError(f"{key}: expected an integer >= 1 or null, got {size!r}")
        if n > len(ordered):
            raise ValueError(f"{key}: {n} training images asked for, only {len(ordered)} available")
        out[n] = sorted(ordered[:n])
    return out


def _seeded_order(ids: Sequence[str], seed: int) -> list[str]:
    unique = sorted({str(i) for i in ids})
    if len(unique) != len(ids):
        raise ValueError("nested_subsets: ids must be unique")
    permutation = np.random.default_rng(int(seed)).permutation(len(unique))
    return [unique[i] for i in permutation]


def train_subset(frame: pd.DataFrame, size: int | None, seed: int,
                 key: str = "data.train_subset") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep ``size`` seeded training rows of a manifest (``data.train_subset``; None keeps all); tests untouched.

    Returns the reduced manifest (its order kept) and the record ``id, rank, selected, size, seed``: every
    training id with its rank in the seeded order (:func:`nested_subsets`: the subset of size n is rank < n) and
    whether this run keeps it. Everything downstream (prototypes, conditions, judges, segmenters) reads the
    manifest's training rows, so it sees only the subset. ``key`` names the config key in errors (the
    scarcity curve's per-size manifests: ``data.train_subsets``).
    """
    is_train = frame["split"] == TRAIN_SPLIT
    train_ids = frame.loc[is_train, "id"].astype(str).tolist()
    n = len(train_ids) if size is None else size
    kept = set(nested_subsets(train_ids, [size], seed, key)[n])
    order = _seeded_order(train_ids, seed)
    record = pd.DataFrame({"id": order, "rank": range(len(order))})
    record["selected"] = record["id"].isin(kept)
    record["size"], record["seed"] = n, int(seed)
    reduced = frame[~is_train | frame["id"].astype(str).isin(kept)].reset_index(drop=True)
    if size is not None:
        LOG.info("%s: %d of %d training images (seed %d)", key, n, len(train_ids), seed)
    return reduced, record.sort_values("id", kind="stable").reset_index(drop=True)


def cap_test_sets(frame: pd.DataFrame, size: int | None, seed: int) -> pd.DataFrame:
    """Keep at most ``size`` rows of each test set of a manifest (``data.test_subset``; None keeps all).

    Each test set's ids in the seeded order of :func:`nested_subsets`; when the set holds both frames with an empty
    mask and frames with foreground and ``size`` >= 2, the first of each kind in that order is kept before the rest
    fills up, so the capped set keeps the case where a metric is undefined (an empty ground truth). Training rows
    and the manifest's order are kept.
    """
    if size is None:
        return frame
    if int(size) != size or size < 1:
        raise ValueError(f"data.test_subset: expected an integer >= 1 or null, got {size!r}")
    keep: set[str] = set()
    tests = frame[frame["split"] != TRAIN_SPLIT]
    for name, group in tests.groupby("split", sort=False):
        order = _seeded_order(group["id"].astype(str).tolist(), seed)
        empty = set(group.loc[group["fg_fraction"] == 0.0, "id"].astype(str))
        first = []
        if size >= 2 and 0 < len(empty) < len(order):
            first = [next(i for i in order if i in empty), next(i for i in order if i not in empty)]
        chosen = first + [i for i in order if i not in first][: size - len(first)]
        keep.update(chosen)
        if len(chosen) < len(order):
            LOG.info("data.test_subset: %d of %d pairs of test set %s (seed %d; %d with an empty mask)", len(chosen),
                     len(order), name, seed, len(empty & set(chosen)))
    is_kept = (frame["split"] == TRAIN_SPLIT) | frame["id"].astype(str).isin(keep)
    return frame[is_kept].reset_index(drop=True)


def write_manifest(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a manifest CSV atomically (columns in :data:`MANIFEST_COLUMNS` order)."""
    write_table(path, frame, MANIFEST_COLUMNS, "manifest")


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV written by :func:`write_manifest`; a wrong file raises DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        frame = pd.read_csv(
            path,
            dtype={"id": str, "split": str, "image": str, "mask": str},
            keep_default_na=False,  # a stem such as "NA" is a name, not a missing value
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path}: not a readable manifest CSV ({err})") from err
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: manifest lacks columns {missing} (expected {list(MANIFEST_COLUMNS)})")
    try:
        frame["width"] = frame["width"].astype(int)
        frame["height"] = frame["height"].astype(int)
        frame["fg_fraction"] = frame["fg_fraction"].astype(float)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: width/height/fg_fraction must be numeric ({err})") from err
    if frame["id"].duplicated().any():
        raise DataError(f"{path}: duplicate ids {frame['id'][frame['id'].duplicated()].tolist()}")
    if (frame["id"] == "").any() or (frame["split"] == "").any():
        raise DataError(f"{path}: empty id or split values")
    return frame[list(MANIFEST_COLUMNS)]
