"""The procedural demo datasets: a colonoscopy-like polyp set in the PraNet layout and a grayscale ultrasound-like
lesion set in the folders / table layouts, both written deterministically from a seed.

:func:`make_demo_dataset` writes the polyp demo, :func:`make_ultrasound_demo` the ultrasound one (both with their
``dataset.csv`` table); :func:`render_demo_pool` draws the polyp renderer's images in memory, on seed streams the
demo dataset never uses (pre-training); :func:`make_background_frames` writes lesion-free frames for the inpainting
variants' placement ``frames``. :mod:`hardgen.data.manifest` reads either tree like any real dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from hardgen.core.io import (
    atomic_folder,
    write_image,
    write_mask,
    write_table,
    write_text,
)
from hardgen.data.manifest import (
    FOLDER_IMAGE_DIR,
    FOLDER_MASK_DIR,
    TABLE_COLUMNS,
    TEST_DIR,
    TEST_IMAGE_DIR,
    TEST_MASK_DIR,
    TRAIN_DIR,
    TRAIN_IMAGE_DIR,
    TRAIN_MASK_DIR,
    TRAIN_SPLIT,
    slug,
)

LOG = logging.getLogger("hardgen.data.demo")

#: Written at the demo root so a rerun may replace its own earlier output but never a real dataset.
DEMO_MARKER = "hardgen-demo.json"
#: ``data.demo.modality`` values: the polyp demo (PraNet layout) and the ultrasound-like one (folders / table).
DEMO_MODALITIES = ("polyp", "ultrasound")
#: Each demo's table (``table`` layout of the same pairs): at the demo root, paths relative to it.
DEMO_TABLE = "dataset.csv"

# ---------------------------------------------------------------------------------------------
# Polyp demo (PraNet layout)
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


def _mucosa(rng: np.random.Generator, style: DemoStyle, h: int, w: int) -> np.ndarray:
    """Float HxWx3 colon wall: smooth shading, haustral folds, a dark lumen, vignetting, fine texture, vessels."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
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
    return img * (1 - 0.55 * vessels) + np.array([120, 28, 36], np.float32) * 0.55 * vessels


def _add_polyps(rng: np.random.Generator, style: DemoStyle, img: np.ndarray, field: np.ndarray, tint: np.ndarray,
                lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    """(image, bool mask) with the style's one or two polyps drawn in: shaded bumps (a dome height map lit from one
    side) of tissue tinted by ``tint``. The polyp count is drawn even when ``lesion`` is False (nothing drawn)."""
    h, w = field.shape
    mask = np.zeros((h, w), bool)
    n_polyps = 2 if rng.random() < style.two_polyp_prob else 1
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
    return img, mask


def _add_grain(texture_rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The matched polyp's granular surface (pit pattern): a luminance-only texture, every channel scaled alike, so
    the tissue keeps the mucosa's chromaticity."""
    h, w = mask.shape
    grain = 1.0 + MATCHED_GRAIN * _smooth_noise(texture_rng, h, w, cell=2.5)
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.8)
    return img * (1.0 + (grain - 1.0) * alpha)[..., None]


def _add_speculars(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Specular highlights: small white blobs, half of them on polyps where the light hits."""
    h, w = mask.shape
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
    return img + (255.0 - img) * np.clip(spec * 1.2, 0, 1)


def _through_camera(rng: np.random.Generator, style: DemoStyle, img: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Camera: colour cast, exposure, blur, sensor noise, then the black endoscope border; RGB uint8."""
    img = img * np.asarray(style.colour_cast, np.float32) * style.brightness
    img = cv2.GaussianBlur(img, (0, 0), style.blur_sigma)
    img += rng.normal(0.0, style.noise_sigma, img.shape).astype(np.float32)
    img[~field] = rng.uniform(0, 6)
    return np.clip(img, 0, 255).round().astype(np.uint8)


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
    field = _octagon(h, w, rng)
    img = _mucosa(rng, style, h, w)
    tint = np.ones(3, np.float32) if matched else np.asarray(style.polyp_tint, np.float32)
    img, mask = _add_polyps(rng, style, img, field, tint, lesion)
    if matched and mask.any():
        img = _add_grain(texture_rng, img, mask)
    img = _add_speculars(rng, img, mask)
    return _through_camera(rng, style, img, field), mask


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
        rng = np.random.default_rng([seed, stream, i])
        image, mask = _render_demo_sample(rng, DEMO_STYLES[name], min_size, max_size)
        pool.append((name, image, mask))
    return pool


#: Seed stream of :func:`make_background_frames`: none of the demo dataset's (1, 2), the pre-training pools' (3, 4) or
#: the ultrasound demo's (5), so no background frame is a demo image.
BACKGROUND_STREAM = 6


def make_background_frames(root: str | Path, n: int, min_size: int, max_size: int, seed: int,
                           modality: str = "polyp", lesion_colour: str = "distinct") -> list[Path]:
    """Write ``n`` procedural lesion-free frames under ``root`` (``frame_<i>.png``): the demo's renderer of
    ``modality`` without its lesion (as ``data.demo.empty_test_fraction`` renders a test set's lesion-free frames),
    what the inpainting variants' placement ``frames`` draws into when ``data.background_frames`` is null.

    Polyp: the training styles (Kvasir- and ClinicDB-like, alternating), RGB; ultrasound: 16-bit grey, as the demo's
    images. Frame ``i`` has its own generator ``[seed, BACKGROUND_STREAM, i]`` (a larger ``n`` keeps every frame of a
    smaller one). Written in a staging sibling and moved into place; returns the files in order.
    """
    if n < 1:
        raise ValueError(f"background frames: n must be >= 1 (got {n})")
    if seed < 0:
        raise ValueError(f"background frames: seed must be >= 0 (got {seed})")
    if modality not in DEMO_MODALITIES:
        raise ValueError(f"data.demo.modality must be one of {list(DEMO_MODALITIES)} (got {modality!r})")
    names = []
    with atomic_folder(root) as staging:
        for i in range(n):
            rng = np.random.default_rng([seed, BACKGROUND_STREAM, i])
            name = f"frame_{i:04d}.png"
            if modality == "polyp":
                style = DEMO_STYLES["Kvasir" if i % 2 == 0 else "CVC-ClinicDB"]
                image, _ = _render_demo_sample(rng, style, min_size, max_size, lesion_colour, lesion=False)
                write_image(staging / name, image)
            else:
                image, _ = _render_ultrasound_sample(rng, min_size, max_size, lesion_colour, lesion=False)
                Image.fromarray(image).save(staging / name)  # 16-bit grey PNG, as the demo's scans
            names.append(name)
    LOG.info("background frames: %d lesion-free %s frames under %s", n, modality, root)
    return [Path(root) / name for name in names]
