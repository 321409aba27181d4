"""The one place for image I/O, mask thresholding, atomic writes and per-sample seeds.

Every stage reads images and masks through these functions so that grayscale, RGBA, palette and
16-bit files, JPEG masks and odd file names are handled the same way everywhere.

Modalities and bit depths (the one place): Stable Diffusion, the backbones and the segmenters all take 8-bit RGB.
:func:`to_uint8` brings any array to uint8 (8-bit as is; 16-bit integer data divided by 257 when it exceeds 255,
i.e. the full 16-bit range maps onto 0..255; floats in [0, 1] times 255; or, with ``window=(low, high)``, the
linear intensity window clipped to 0..255, e.g. CT Hounsfield units) and :func:`gray_to_rgb` repeats a grayscale
plane into the 3 identical channels (ultrasound, CT, MRI, X-ray). :func:`read_rgb` applies both, so every stage sees
a grayscale modality as an RGB image whose three channels are equal. ``prepare_data`` writes 16-bit images,
windowed volumes and non-0/255 masks once as ordinary 8-bit PNGs (:mod:`hardgen.data.manifest`), so downstream files are
always plain 8-bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Masks are binarised at this grey level (PraNet convention; public masks are often JPEG).
MASK_THRESHOLD = 127

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: Rec. 601 luma weights (R, G, B).
LUMA = np.array([0.299, 0.587, 0.114])

#: PIL modes of more than 8 bits per sample (read as grayscale, converted by :func:`to_uint8`).
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


class DataError(ValueError):
    """Bad input data; the message names the offending file."""


def _open(path: str | Path) -> Image.Image:
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # forces decoding so truncated files fail here, not later
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path}: unreadable or truncated image ({err})") from err


def to_uint8(arr: np.ndarray, window: Sequence[float] | None = None) -> np.ndarray:
    """Any image array as uint8 (see the module docstring): the one 8-bit conversion of every reader and writer.

    ``window=(low, high)`` maps ``low`` to 0 and ``high`` to 255 linearly and clips (any dtype); without it uint8 is
    kept, bool becomes 0/255, integers above 255 (16-bit) are divided by 257, floats up to 1 are scaled by 255,
    everything else is rounded and clipped to 0..255.
    """
    arr = np.asarray(arr)
    if window is not None:
        low, high = (float(v) for v in window)
        if not high > low:
            raise ValueError(f"intensity window must have low < high, got [{low}, {high}] (data.window)")
        scaled = (arr.astype(np.float64) - low) / (high - low) * 255.0
        return scaled.round().clip(0, 255).astype(np.uint8)
    return _to_uint8(arr)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """An HxW grayscale plane as HxWx3 (three equal channels): how grayscale modalities enter the RGB models."""
    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise ValueError(f"gray_to_rgb: expected an HxW array, got shape {gray.shape}")
    return np.repeat(gray[..., None], 3, axis=2)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer) and arr.max(initial=0) > 255:
        return (arr.astype(np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)  # 16-bit
    if np.issubdtype(arr.dtype, np.floating):
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return (arr * scale).round().clip(0, 255).astype(np.uint8)
    return arr.clip(0, 255).astype(np.uint8)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read any supported image as an HxWx3 uint8 RGB array (alpha dropped, palette expanded)."""
    im = _open(path)
    if im.mode in HIGH_BIT_MODES:
        return gray_to_rgb(to_uint8(np.asarray(im)))
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def is_high_bit(path: str | Path) -> bool:
    """Whether an image file holds more than 8 bits per sample (16-bit or 32-bit integer, float)."""
    return _open(path).mode in HIGH_BIT_MODES


def read_values(path: str | Path) -> np.ndarray:
    """A single-channel file's stored values as they are (label maps: 0, 1, 2, ...; 16-bit masks); colour files
    as 8-bit grey levels."""
    im = _open(path)
    if im.mode in HIGH_BIT_MODES or im.mode in ("L", "1"):
        return np.asarray(im)
    if im.mode == "P":  # a palette label map: the indices are the labels
        return np.asarray(im)
    return read_gray(path)


def read_gray(path: str | Path) -> np.ndarray:
    """Read any supported image as an HxW uint8 grey-level array."""
    im = _open(path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_uint8(np.asarray(im))
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGB")
    return np.asarray(im.convert("L"), dtype=np.uint8)


def binarize(gray: np.ndarray) -> np.ndarray:
    """Threshold a grey-level mask at :data:`MASK_THRESHOLD` (values > 127 are foreground)."""
    return gray > MASK_THRESHOLD


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as an HxW bool array."""
    return binarize(read_gray(path))


def read_pair(image_path: str | Path, mask_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its bool mask; a size mismatch raises :class:`DataError` naming both files."""
    image, mask = read_rgb(image_path), read_mask(mask_path)
    if image.shape[:2] != mask.shape:
        raise DataError(f"{mask_path}: mask size {mask.shape} differs from image {image_path} size {image.shape[:2]}")
    return image, mask


def fg_bbox(mask: np.ndarray, pad: int = 0) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1), exclusive ends, of a bool mask's foreground, padded and clipped.

    Returns None for an empty mask.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    h, w = mask.shape[:2]
    return (
        max(int(xs.min()) - pad, 0),
        max(int(ys.min()) - pad, 0),
        min(int(xs.max()) + 1 + pad, w),
        min(int(ys.max()) + 1 + pad, h),
    )


def fit_square(array: np.ndarray, size: int, is_mask: bool = False) -> np.ndarray:
    """Resize the short side to ``size`` and centre-crop to ``size``² (control-lora-v3's transform).

    The aspect ratio is kept. Images shrink with area interpolation (no aliasing) and grow bilinearly;
    bool masks use nearest neighbour so they stay binary. The one transform that brings a real image,
    its mask and its condition to the generator's resolution, so real and generated samples are
    compared at the same scale and framing.
    """
    import cv2  # local: only the stages that resize need OpenCV

    if size < 1:
        raise ValueError(f"fit_square: size must be >= 1, got {size}")
    h, w = array.shape[:2]
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_h, new_w) != (h, w):
        if is_mask:
            array = cv2.resize(array.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        else:
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            array = cv2.resize(array, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    out = array[top:top + size, left:left + size]
    return out.astype(bool) if is_mask else np.array(out)  # a writable copy, never a view of the input


def squash_square(array: np.ndarray, size: int, is_mask: bool = False) -> np.ndarray:
    """Resize the whole array to ``size``² (PIL bilinear), the aspect ratio not kept: the authors' ``gen.py``.

    Nothing is cropped. A bool mask is resized as 0/255 and thresholded at 127 (:func:`binarize`), so it stays
    binary and its border follows the bilinear image the authors handed their pipeline.
    """
    if size < 1:
        raise ValueError(f"squash_square: size must be >= 1, got {size}")
    source = array.astype(np.uint8) * 255 if is_mask else np.asarray(array)
    out = np.asarray(Image.fromarray(source).resize((size, size), Image.Resampling.BILINEAR))
    return binarize(out) if is_mask else np.array(out)


def fit_to(array: np.ndarray, size: int, fit: str, is_mask: bool = False) -> np.ndarray:
    """``fit`` = ``crop`` (:func:`fit_square`, hardgen's and control-lora-v3's training transform) or ``squash``
    (:func:`squash_square`, the authors' sampling transform); ``generation.condition_fit``."""
    if fit == "crop":
        return fit_square(array, size, is_mask=is_mask)
    if fit == "squash":
        return squash_square(array, size, is_mask=is_mask)
    raise ValueError(f"generation.condition_fit must be 'crop' or 'squash', got {fit!r}")


def sample_seed(sample_id: str, base_seed: int = 0) -> int:
    """A stable 63-bit seed from a sample id, independent of shard layout and process."""
    digest = hashlib.sha256(f"{base_seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file: either the old file (or none) or the complete new one.
    The temporary name keeps the suffix so libraries that infer the format from it still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_folder(root: str | Path) -> Iterator[Path]:
    """Yield an empty staging sibling of folder ``root``; on success it replaces ``root`` whole (the old tree, if any,
    is removed first), on failure it is removed: readers never see a half-written tree.

    Not ``tempfile.mkdtemp``: its 0700 mode would carry over to the renamed tree; ``mkdir`` honours the umask.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        yield staging
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def path_list(value: str | Path | Sequence[str | Path]) -> list[str]:
    """One path or several as a list of strings: a workflow input or output entry that is a single file for a per-run
    rule and a list for its batched twin."""
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


def write_image(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 (HxW or HxWx3) array atomically; the format follows the suffix."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(_to_uint8(np.asarray(array))).save(tmp, format=_pil_format(path))


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a bool mask as a 0/255 single-channel image, atomically."""
    write_image(path, np.asarray(mask, dtype=bool).astype(np.uint8) * 255)


def _pil_format(path: Path) -> str:
    ext = path.suffix.lower()
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}.get(
        ext, "PNG"
    )


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | Path, frame: Any) -> None:
    """Write a pandas DataFrame atomically (no index)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_table(path: str | Path, frame: Any, columns: Sequence[str], what: str = "table") -> None:
    """Write ``frame``'s ``columns`` (in that order) atomically; missing columns raise ValueError naming ``path``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: {what} to write lacks columns {missing}")
    write_csv(path, frame[list(columns)])


#: Identifier columns of hardgen's tables: always read as strings, so an id such as ``007`` (a dataset of numbered
#: files) stays itself and joins across tables.
ID_COLUMNS: tuple[str, ...] = ("id", "sample_id", "source_id", "condition_id")


def read_csv_table(path: str | Path, required_columns: Iterable[str], what: str,
                   dtype: type | dict[str, Any] | None = None, sep: str = ",", keep_default_na: bool = True) -> Any:
    """The one CSV reader: the pandas DataFrame at ``path``, which must have ``required_columns`` (others may follow).

    ``what`` names what the file holds (``"score table"``); ``sep``: ``"\t"`` for a TSV; ``dtype``: pandas' (``str``
    for every column, or by column); ``keep_default_na=False`` keeps empty cells and words such as ``NA`` as
    strings (a user's file names); the :data:`ID_COLUMNS` present are strings unless ``dtype`` says otherwise. A
    missing file, an unreadable one (not CSV, empty, not text, a value its dtype
    does not fit) or a missing column is a :class:`DataError` naming the file, ``what`` and the missing columns.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    if dtype is None or isinstance(dtype, dict):
        dtype = {column: str for column in ID_COLUMNS} | (dtype or {})
    try:
        frame = pd.read_csv(path, dtype=dtype, sep=sep, keep_default_na=keep_default_na)
    except ValueError as err:  # pandas' ParserError and EmptyDataError, UnicodeDecodeError, a dtype a value misfits
        raise DataError(f"{path}: unreadable {what} ({err})") from err
    require_columns(frame, required_columns, f"{path}: {what}")
    return frame


def read_json_record(path: str | Path, required_keys: Iterable[str], what: str) -> dict[str, Any]:
    """The one reader of a JSON record (a run's ``run.json``, a subset's pool record): the object at ``path``, which
    must have ``required_keys``. A missing file, unreadable JSON, a value that is not an object or a missing key is a
    :class:`DataError` naming the file, ``what`` and the missing keys."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable {what} ({err})") from err
    if not isinstance(record, dict):
        raise DataError(f"{path}: {what} is not a JSON object")
    missing = [k for k in required_keys if k not in record]
    if missing:
        raise DataError(f"{path}: {what} lacks {missing}")
    return record


def require_columns(table: Any, required_columns: Iterable[str], what: str) -> None:
    """A :class:`DataError` when ``table`` lacks any of ``required_columns``; ``what`` names the table (its file, when
    it has one)."""
    missing = [c for c in required_columns if c not in table.columns]
    if missing:
        raise DataError(f"{what} lacks columns {missing} (has {list(table.columns)})")


def table_or_csv(source: Any, what: str, dtype: dict[str, Any] | None = None,
                 required_columns: Iterable[str] = ()) -> tuple[str, Any]:
    """``(name, table)`` of a pandas DataFrame (a copy, named ``what``) or of a CSV file (named by its path, read by
    :func:`read_csv_table`); either must have ``required_columns``.
    """
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        require_columns(source, required_columns, what)
        return what, source.copy()
    return str(source), read_csv_table(source, required_columns, what, dtype=dtype)


def numbers_or_missing(column: Any) -> tuple[Any, Any]:
    """``(values, bad)`` of a table's value column: the values as floats, a missing entry (empty or NaN: a measure
    undefined there) as NaN, and the bool mask of entries that are present but not a number (the caller's error)."""
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce")
    present = column.notna() & column.astype(str).str.strip().ne("")
    return values.astype(float), values.isna() & present


def resolve_table_path(value: object, table: str | Path, column: str) -> Path:
    """A path cell of a CSV table: absolute, relative to the working directory, or relative to the table's folder."""
    if not isinstance(value, str) or not value:
        raise DataError(f"{table}: empty or invalid path in column {column!r}")
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    beside = Path(table).parent / path
    return beside if beside.exists() else path


def reset_if_changed(folder: str | Path, fingerprint: dict[str, Any]) -> bool:
    """Keep ``folder`` for resuming only if it was made with the same ``fingerprint``; else empty it.

    Resumable stages (training checkpoints, generation shards) keep partial work between runs. Work made under
    other settings or inputs must not be resumed, so each such folder records what produced it.
    Returns True when existing work was kept.
    """
    import shutil

    folder = Path(folder)
    stamp = folder / ".fingerprint.json"
    wanted = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == wanted:
                return True
        except json.JSONDecodeError:
            pass
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json(stamp, wanted)
    return False


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def folder_digests(folder: str | Path, skip_names: Sequence[str] = ()) -> dict[str, str]:
    """:func:`file_digest` of every file below ``folder`` (but those named in ``skip_names``), keyed by its posix path
    relative to ``folder``, in sorted order: a folder's fingerprint (resumable runs stamp their checkpoints with it)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): file_digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip_names}


def segmenter_key(arch: str, seed: int | str) -> str:
    """The name of one segmenter (a real-only benchmark run or a judge) in tables and plots: ``<arch>/seed-<s>``."""
    return f"{arch}/seed-{int(seed)}"


def read_keyed_losses(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Per-sample loss tables (rules ``segmenter_loss`` / ``judge_loss``: one per segmenter and variant, keyed by
    their ``arch`` and ``seed`` columns) as ``{segmenter_key: one table of every variant}``."""
    import pandas as pd

    frames: dict[str, list] = {}
    for path in path_list(list(paths)):
        # the key columns: a table of an older segmenter_loss lacks them (rerun it)
        table = read_csv_table(path, ("arch", "seed"), "sample loss table", dtype={"sample_id": str})
        for (arch, seed), rows in table.groupby(["arch", "seed"], sort=False):
            frames.setdefault(segmenter_key(arch, seed), []).append(rows)
    return {key: pd.concat(parts, ignore_index=True) for key, parts in frames.items()}
