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
import os
import re
import shutil
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from hardgen.io import (
    IMAGE_SUFFIXES,
    MASK_THRESHOLD,
    DataError,
    binarize,
    read_gray,
    read_rgb,
    write_table,
    write_image,
    write_mask,
    write_text,
)

LOG = logging.getLogger("hardgen.data")

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
    rng: np.random.Generator, style: DemoStyle, min_size: int, max_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One colonoscopy-like RGB uint8 image and its bool polyp mask."""
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
    for _ in range(n_polyps):
        radius = rng.uniform(*style.polyp_radius) * min(h, w)
        shape = _polyp_shape(rng, h, w, radius) & field
        mask |= shape
        dist = cv2.distanceTransform(shape.astype(np.uint8), cv2.DIST_L2, 3)
        height = np.sqrt(dist / max(float(dist.max()), 1.0))
        gy, gx = np.gradient(cv2.GaussianBlur(height, (0, 0), 1.0))
        light = rng.uniform(0, 2 * np.pi)
        shade = 1.0 + 0.10 * height - 3.0 * radius * 0.05 * (gx * np.cos(light) + gy * np.sin(light))
        alpha = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), 0.8)[..., None]
        tissue = img * np.asarray(style.polyp_tint, np.float32) * np.clip(shade, 0.6, 1.4)[..., None]
        img = img * (1 - alpha) + tissue * alpha

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
                     image: np.ndarray, mask: np.ndarray) -> None:
    """Write one pair; every JPEG_MASK_EVERY-th mask goes out as JPEG (with its compression noise)."""
    write_image(folder_image / f"{stem}.png", image)
    mask_suffix = ".jpg" if index % JPEG_MASK_EVERY == JPEG_MASK_EVERY - 1 else ".png"
    write_mask(folder_mask / f"{stem}{mask_suffix}", mask)


def make_demo_dataset(
    root: str | Path,
    testsets: Sequence[str],
    n_train: int,
    n_test: int,
    min_size: int,
    max_size: int,
    seed: int,
) -> None:
    """Write a procedural colonoscopy-like dataset in the PraNet layout under ``root``.

    ``n_train`` training pairs (60 % Kvasir-like, 40 % ClinicDB-like) and ``n_test`` pairs per test
    set, each test set in its own style. Image sides lie in [min_size, max_size]. Output is fully
    determined by the arguments (same bytes on rerun). The tree is built in a temporary sibling and
    moved into place, so ``root`` is never half-written; an existing ``root`` is replaced only if it
    is empty or an earlier demo tree (it holds :data:`DEMO_MARKER`).
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

    root.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would carry over to the renamed tree; mkdir honours the umask.
    staging = root.parent / f".{root.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        # One generator per image, keyed by (seed, split, index): changing n_test or adding a test set
        # leaves every other image's bytes unchanged.
        train_rng = np.random.default_rng([seed, 0])
        kvasir_like = np.zeros(n_train, bool)
        kvasir_like[: round(TRAIN_KVASIR_SHARE * n_train)] = True
        kvasir_like = train_rng.permutation(kvasir_like)
        jobs: list[tuple[Path, Path, str, int, DemoStyle, np.random.Generator]] = []
        for i in range(n_train):
            style_name = "Kvasir" if kvasir_like[i] else "CVC-ClinicDB"
            stem = f"{'kvasir' if kvasir_like[i] else 'clinicdb'}_{i:04d}"
            jobs.append((staging / TRAIN_DIR / TRAIN_IMAGE_DIR, staging / TRAIN_DIR / TRAIN_MASK_DIR, stem, i,
                         DEMO_STYLES[style_name], np.random.default_rng([seed, 1, i])))
        for name in testsets:
            base = staging / TEST_DIR / name
            # Seed by name, not position, so reordering testsets keeps each set's bytes.
            name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
            for i in range(n_test):
                jobs.append((base / TEST_IMAGE_DIR, base / TEST_MASK_DIR, f"{i + 1}", i,
                             DEMO_STYLES.get(name, DEFAULT_STYLE), np.random.default_rng([seed, 2, name_key, i])))
        for image_dir, mask_dir, stem, index, style, rng in tqdm(jobs, desc="demo dataset", unit="img"):
            image, mask = _render_demo_sample(rng, style, min_size, max_size)
            _write_demo_pair(image_dir, mask_dir, stem, index, image, mask)
        write_text(staging / DEMO_MARKER, json.dumps(
            {"testsets": list(testsets), "n_train": n_train, "n_test": n_test, "min_size": min_size,
             "max_size": max_size, "seed": seed}, indent=2, sort_keys=True) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    LOG.info("demo dataset: %d train + %d x %d test pairs under %s", n_train, len(testsets), n_test, root)


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
            and entry.suffix.lower() in IMAGE_SUFFIXES
        )
        if not is_candidate:
            stray.append(entry.name)
            continue
        # macOS archives store names decomposed (NFD); pairing must not depend on that.
        by_stem.setdefault(unicodedata.normalize("NFC", entry.stem), []).append(entry)
    if stray:
        log.info("%s: ignored %d non-image entries: %s", folder, len(stray), ", ".join(stray))
    for stem, files in by_stem.items():
        if len(files) > 1:
            problems.append(f"{folder}: duplicate stem {stem!r}: " + ", ".join(f.name for f in files))
    if not by_stem:
        problems.append(f"{folder}: no images found (empty folder)")
    unique = {stem: files[0] for stem, files in by_stem.items() if len(files) == 1}
    return unique, set(by_stem) - set(unique)


def _check_pair(image_path: Path, mask_path: Path, problems: list[str]) -> tuple[int, int, float] | None:
    """(width, height, fg_fraction) of a valid pair; otherwise append the problems and return None."""
    try:
        image = read_rgb(image_path)
    except DataError as err:
        problems.append(str(err))
        image = None
    try:
        gray = read_gray(mask_path)
    except DataError as err:
        problems.append(str(err))
        return None
    if image is None:
        return None
    if gray.shape != image.shape[:2]:
        problems.append(f"{mask_path}: mask size {gray.shape[1]}x{gray.shape[0]} differs from its image "
                        f"{image_path} ({image.shape[1]}x{image.shape[0]})")
        return None
    reason = binary_mask_problem(gray)
    if reason is not None:
        problems.append(f"{mask_path}: {reason}")
        return None
    return image.shape[1], image.shape[0], float((gray > MASK_THRESHOLD).mean())


def build_manifest(
    root: str | Path,
    testsets: Sequence[str],
    expected_sizes: Mapping[str, int] | None = None,
    log: logging.Logger | None = None,
) -> pd.DataFrame:
    """Validate a PraNet-layout tree and list every image/mask pair.

    Returns a DataFrame with columns ``id, split, image, mask, width, height, fg_fraction``: ``split`` is
    ``train`` or a test-set name, ``image``/``mask`` are absolute paths, ``id`` is unique and file-name
    safe (``train-<slug(stem)>`` / ``<slug(testset)>-<slug(stem)>``). Pairs are matched by file stem.
    All problems found (missing/unpaired/duplicate files, unreadable images, size mismatches, non-binary
    masks, empty folders, count mismatches against ``expected_sizes``) are raised together as one
    :class:`~hardgen.io.DataError`. Stray files are skipped and masks without foreground are kept; both
    are logged on ``log`` (default: the ``hardgen.data`` logger).
    """
    log = log or LOG
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: dataset root (data.root) not found")
    splits = [(TRAIN_SPLIT, root / TRAIN_DIR / TRAIN_IMAGE_DIR, root / TRAIN_DIR / TRAIN_MASK_DIR)]
    for name in testsets:
        if name == TRAIN_SPLIT:
            raise DataError(f"data.testsets: a test set may not be called {TRAIN_SPLIT!r}")
        splits.append((name, root / TEST_DIR / name / TEST_IMAGE_DIR, root / TEST_DIR / name / TEST_MASK_DIR))

    problems: list[str] = []
    pairs: list[tuple[str, str, Path, Path]] = []
    for split, image_dir, mask_dir in splits:
        if split != TRAIN_SPLIT and not image_dir.parent.is_dir():
            problems.append(f"{image_dir.parent}: test set folder {split!r} missing")
            continue
        if split == TRAIN_SPLIT and not image_dir.parent.is_dir():
            problems.append(f"{image_dir.parent}: training set folder missing")
            continue
        images, duplicated_images = _scan_folder(image_dir, problems, log)
        masks, duplicated_masks = _scan_folder(mask_dir, problems, log)
        # A duplicated stem is already reported; do not report its partner as unpaired too.
        for stem in sorted(set(images) - set(masks) - duplicated_masks):
            problems.append(f"{images[stem]}: image without mask in {mask_dir}")
        for stem in sorted(set(masks) - set(images) - duplicated_images):
            problems.append(f"{masks[stem]}: mask without image in {image_dir}")
        prefix = slug(split)
        pairs += [(f"{prefix}-{slug(stem)}", split, images[stem], masks[stem])
                  for stem in sorted(set(images) & set(masks))]

    rows: list[dict[str, object]] = []
    for sample_id, split, image_path, mask_path in tqdm(pairs, desc="manifest", unit="pair"):
        checked = _check_pair(image_path, mask_path, problems)
        if checked is not None:
            width, height, fg_fraction = checked
            rows.append({"id": sample_id, "split": split, "image": str(image_path), "mask": str(mask_path),
                         "width": width, "height": height, "fg_fraction": fg_fraction})
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))

    duplicated = frame["id"][frame["id"].duplicated()].tolist()
    if duplicated:
        problems.append(f"{root}: ids not unique after slugging: {duplicated}")
    if expected_sizes:
        found = {split: len(frame[frame["split"] == split]) for split, _, _ in splits}
        for split, expected in expected_sizes.items():
            if split not in found:
                problems.append(f"data.expected_sizes: unknown split {split!r} (known: {sorted(found)})")
            elif found[split] != int(expected):
                problems.append(f"data.expected_sizes[{split!r}]: expected {int(expected)} pairs, "
                                f"found {found[split]} under {root}")
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
