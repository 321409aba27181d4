"""The validated manifest of a dataset in any layout (``pranet``, ``folders``, ``table``; NIfTI volumes as slices).

PraNet layout (what the public polyp benchmarks ship as)::

    root/TrainDataset/image/*   root/TrainDataset/mask/*
    root/TestDataset/<name>/images/*   root/TestDataset/<name>/masks/*

:func:`build_manifest` turns any such tree (a real one or a demo of :mod:`hardgen.data.demo`) into one table,
checking everything a later stage would trip over and reporting all problems at once; :func:`train_subset` and
:func:`cap_test_sets` reduce it. The mask rule is :mod:`hardgen.data.masks`, volume slicing
:mod:`hardgen.data.volumes`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hardgen.core.io import (
    IMAGE_SUFFIXES,
    DataError,
    binarize,
    read_csv_table,
    read_gray,
    read_rgb,
    to_uint8,
    write_image,
    write_mask,
    write_table,
)
from hardgen.data.masks import decode_mask
from hardgen.data.volumes import VolumeSlicing, volume_slices, volume_suffix

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


def file_stem(path: Path) -> str:
    """The name without its suffix (``.nii.gz`` counts as one suffix), NFC-normalised."""
    suffix = volume_suffix(path)
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
            and (entry.suffix.lower() in IMAGE_SUFFIXES or volume_suffix(entry) is not None)
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
    try:  # every cell a string as written: a file named "NA" is a name, an empty cell is empty
        frame = read_csv_table(table, TABLE_COLUMNS, "dataset table (data.root, layout table)", dtype=str,
                               keep_default_na=False)
    except DataError as err:  # not found, unreadable or lacking a column: reported with the other problems
        problems.append(str(err))
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


def _check_arguments(root: Path, testsets: Sequence[str], layout: str, train_splits: list[str]) -> None:
    """Raise DataError naming the config key when :func:`build_manifest`'s layout, splits or root cannot work."""
    if layout not in LAYOUTS:
        raise DataError(f"data.layout: {layout!r} is not one of {list(LAYOUTS)}")
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


def _layout_pairs(root: Path, testsets: Sequence[str], layout: str, train_splits: list[str], problems: list[str],
                  log: logging.Logger) -> list[tuple[str, Path, Path, str]]:
    """(source split, image, mask, stem) of every pair the layout lists; problems appended."""
    if layout == "pranet":
        return _pranet_pairs(root, testsets, problems, log)
    if layout == "folders":
        splits = [(s, root / s / FOLDER_IMAGE_DIR, root / s / FOLDER_MASK_DIR) for s in [*train_splits, *testsets]]
        return _folder_pairs(splits, problems, log, "split folder", "training split folder", train_splits)
    return _table_pairs(root, [*train_splits, *testsets], problems, log)


def _cross_split_problems(found: Sequence[tuple[str, Path, Path, str]]) -> list[str]:
    """One problem per file (or volume) listed in more than one split."""
    problems = []
    split_of: dict[Path, str] = {}
    for split, image_path, mask_path, _ in found:
        for path in (image_path, mask_path):
            first = split_of.setdefault(path.resolve(), split)
            if first != split:
                problems.append(f"{path}: listed in splits {first!r} and {split!r}; a file (or volume) may "
                                "belong to one split only")
    return problems


def _convert(converted: Path | None, sample_id: str, image: np.ndarray | None, mask: np.ndarray | None,
             image_path: Path, mask_path: Path) -> tuple[Path, Path]:
    """Write the given 8-bit image and/or 0/255 mask of a pair under ``converted``; the pair's paths afterwards."""
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


def _pair_rows(
    sample_id: str, split: str, image_path: Path, mask_path: Path, problems: list[str], *,
    foreground: Sequence[int] | None, window: Sequence[float] | None, volume: VolumeSlicing,
    converted: Path | None, seed: int,
) -> list[dict[str, object]]:
    """The manifest rows of one listed pair: one for a 2D pair, one per kept slice of a volume pair, none for an
    invalid pair (its problems appended; a DataError of a conversion or a volume propagates)."""
    is_volume = volume_suffix(image_path) is not None
    if is_volume != (volume_suffix(mask_path) is not None):
        problems.append(f"{image_path} / {mask_path}: an image and its mask must both be NIfTI volumes or both 2D")
        return []
    if is_volume:
        rows = []
        for k, image, mask in volume_slices(image_path, mask_path, sample_id, window, foreground, volume, seed):
            slice_id = f"{sample_id}-s{k:04d}"
            out_image, out_mask = _convert(converted, slice_id, image, mask, image_path, mask_path)
            rows.append({"id": slice_id, "split": split, "image": str(out_image), "mask": str(out_mask),
                         "width": image.shape[1], "height": image.shape[0], "fg_fraction": float(mask.mean())})
        return rows
    checked = _check_pair(image_path, mask_path, problems, foreground)
    if checked is None:
        return []
    width, height, fg_fraction, mask, mask_differs = checked
    image = None
    # 16-bit images: converted whenever there is a folder for it (prepare_data) or a window to apply;
    # without either, hardgen.core.io.read_rgb gives every stage the same 8-bit values from the original file
    if (converted is not None or window is not None) and _needs_rgb_conversion(image_path):
        from hardgen.core.io import read_values

        image = to_uint8(read_values(image_path), window)
    if image is not None or mask_differs:
        image_path, mask_path = _convert(converted, sample_id, image, mask if mask_differs else None, image_path,
                                         mask_path)
    return [{"id": sample_id, "split": split, "image": str(image_path), "mask": str(mask_path),
             "width": width, "height": height, "fg_fraction": fg_fraction}]


def _manifest_frame(
    found: Sequence[tuple[str, Path, Path, str]], train_splits: Sequence[str], problems: list[str], *,
    foreground: Sequence[int] | None, window: Sequence[float] | None, volume: VolumeSlicing,
    converted: Path | None, seed: int,
) -> pd.DataFrame:
    """The manifest of the listed pairs (:func:`_pair_rows` each, every training split as ``train``); problems
    appended."""
    rows: list[dict[str, object]] = []
    for split, image_path, mask_path, stem in tqdm(found, desc="manifest", unit="pair"):
        out_split = TRAIN_SPLIT if split in train_splits else split
        sample_id = f"{slug(split)}-{slug(stem)}"
        try:
            rows += _pair_rows(sample_id, out_split, image_path, mask_path, problems, foreground=foreground,
                               window=window, volume=volume, converted=converted, seed=seed)
        except DataError as err:
            problems.append(str(err))
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def _size_problems(frame: pd.DataFrame, expected_sizes: Mapping[str, int] | None, testsets: Sequence[str],
                   root: Path) -> list[str]:
    """One problem per split whose pair count differs from ``data.expected_sizes`` (or that it does not know)."""
    if not expected_sizes:
        return []
    problems = []
    found_sizes = {s: int((frame["split"] == s).sum()) for s in [TRAIN_SPLIT, *testsets]}
    for split, expected in expected_sizes.items():
        if expected is None:  # explicitly no expectation (an overlay clearing another dataset's test sets)
            continue
        if split not in found_sizes:
            problems.append(f"data.expected_sizes: unknown split {split!r} (known: {sorted(found_sizes)})")
        elif found_sizes[split] != int(expected):
            problems.append(f"data.expected_sizes[{split!r}]: expected {int(expected)} pairs, "
                            f"found {found_sizes[split]} under {root}")
    return problems


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
    train_splits = list(train_splits)
    _check_arguments(root, testsets, layout, train_splits)
    volume = volume or VolumeSlicing()

    problems: list[str] = []
    found = _layout_pairs(root, testsets, layout, train_splits, problems, log)
    problems += _cross_split_problems(found)
    converted = Path(converted).resolve() if converted is not None else None  # the manifest's paths are absolute
    frame = _manifest_frame(found, train_splits, problems, foreground=foreground, window=window, volume=volume,
                            converted=converted, seed=seed)
    duplicated = frame["id"][frame["id"].duplicated()].tolist()
    if duplicated:
        problems.append(f"{root}: ids not unique after slugging: {duplicated}")
    problems += _size_problems(frame, expected_sizes, testsets, root)
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
    names = {"id": str, "split": str, "image": str, "mask": str}  # a stem such as "NA" is a name, not a missing value
    frame = read_csv_table(path, MANIFEST_COLUMNS, "manifest", dtype=names, keep_default_na=False)
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
