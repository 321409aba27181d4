"""Batched, shard-safe, resumable generation of one synthetic image per condition.

Determinism contract (why the work is split the way it is):

* every image's initial noise comes from its own ``torch.Generator`` seeded by
  :func:`hardgen.io.sample_seed` of its sample id, so a sample's noise never depends on its neighbours;
* batched kernels can still give bit-different results for different batch *compositions*, so work
  is cut into fixed chunks of ``batch_size`` consecutive (sorted) sample ids and chunk ``c`` runs on
  shard ``c % n_shards``: each batch is the same in any sharding, and the images are byte-identical
  whatever the shard count;
* resuming recomputes a partially written chunk as a whole (same composition again) and writes only
  the missing files, so a killed shard finishes with exactly the bytes of an uninterrupted run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from hardgen.io import (
    DataError,
    fit_square,
    read_mask,
    read_rgb,
    resolve_table_path,
    sample_seed,
    write_csv,
    write_image,
    write_mask,
)

if TYPE_CHECKING:  # diffusers/transformers take seconds to import; merging shards needs neither
    from hardgen.control_lora import ControlLoraPipeline, ControlLoraXLPipeline

log = logging.getLogger("hardgen.generate")

CONDITION_COLUMNS: tuple[str, ...] = ("sample_id", "condition", "mask")
MANIFEST_COLUMNS: list[str] = ["sample_id", "image", "mask", "condition", "variant"]

#: Adapter name under which the Control-LoRA file is loaded (training's default; files store no names).
ADAPTER_NAME = "condition"

#: A batch renderer: (condition images HxWx3 uint8, one generator per image) -> (B, H, W, 3) uint8.
RenderBatch = Callable[[list[np.ndarray], list[torch.Generator]], np.ndarray]


# --------------------------------------------------------------------------------- planning
def read_conditions(conditions: pd.DataFrame | str | Path) -> pd.DataFrame:
    """Load and check a conditions table (``sample_id, source_id, kind, condition, mask``).

    Sample ids must be unique and usable as file names; errors name the table. Relative paths in a
    CSV are resolved against the working directory, then against the CSV's folder (as in training).
    """
    if isinstance(conditions, pd.DataFrame):
        name, table = "conditions table", conditions.copy()
    else:
        path = Path(conditions)
        if not path.is_file():
            raise DataError(f"{path}: conditions table not found")
        name, table = str(path), pd.read_csv(path, dtype={"sample_id": str, "source_id": str})
        for column in ("condition", "mask"):
            if column in table.columns:
                table[column] = [str(resolve_table_path(v, path, column)) for v in table[column]]
    missing = [c for c in CONDITION_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{name}: lacks columns {missing} (has {list(table.columns)})")
    table["sample_id"] = table["sample_id"].astype(str)
    duplicated = table["sample_id"][table["sample_id"].duplicated()]
    if not duplicated.empty:
        raise DataError(f"{name}: duplicate sample_id {duplicated.iloc[0]!r}")
    bad = [s for s in table["sample_id"] if not s or "/" in s or "\\" in s or s.startswith(".")]
    if bad:
        raise DataError(f"{name}: sample_id {bad[0]!r} cannot be used as a file name")
    return table


def shard_chunks(sample_ids: Iterable[str], batch_size: int, shard_index: int, n_shards: int) -> list[list[str]]:
    """The chunks (batches) of sorted sample ids that shard ``shard_index`` of ``n_shards`` generates.

    Chunk ``c`` holds sorted ids ``[c*batch_size, (c+1)*batch_size)`` and belongs to shard ``c % n_shards``,
    so batch composition does not depend on the shard count.
    """
    if batch_size < 1:
        raise ValueError(f"generation.batch_size must be >= 1, got {batch_size}")
    if n_shards < 1:
        raise ValueError(f"generation.shards must be >= 1, got {n_shards}")
    if not 0 <= shard_index < n_shards:
        raise ValueError(f"shard index {shard_index} is outside [0, {n_shards})")
    ordered = sorted(sample_ids)
    chunks = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return [chunk for c, chunk in enumerate(chunks) if c % n_shards == shard_index]


# ---------------------------------------------------------------------------- image handling
def load_condition(path: str | Path, resolution: int) -> np.ndarray:
    """A condition image as ``resolution``² RGB uint8, brought to size exactly as training does (:func:`hardgen.io.fit_square`)."""
    image = read_rgb(path)
    if image.shape[:2] != (resolution, resolution):
        image = fit_square(image, resolution)
    return image


def resize_mask(path: str | Path, resolution: int) -> np.ndarray:
    """A mask brought to ``resolution``² by :func:`hardgen.io.fit_square` (nearest, so it stays binary)."""
    return fit_square(read_mask(path), resolution, is_mask=True)


def to_uint8(images01: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1] (float, ``output_type="np"``) -> uint8, rounding once and only here."""
    return (np.clip(np.asarray(images01, dtype=np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)


# ------------------------------------------------------------------------------- the shard loop
def run_shard(
    render_batch: RenderBatch,
    conditions: pd.DataFrame | str | Path,
    shard_index: int,
    n_shards: int,
    out_dir: str | Path,
    *,
    resolution: int,
    variant: str,
    seed: int = 0,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Generate this shard's missing images with ``render_batch`` and copy their masks; return the manifest.

    Model-agnostic core of :func:`generate_shard`. A chunk whose images all exist is skipped; a
    partially written chunk is re-rendered whole and only its missing files are written. Rows are
    streamed chunk by chunk, so memory does not grow with the number of images.
    Manifest columns: ``sample_id, image, mask, condition, variant`` (one row per sample of the shard).
    """
    table = read_conditions(conditions).set_index("sample_id")
    out_dir = Path(out_dir)
    images_dir, masks_dir = out_dir / "images", out_dir / "masks"
    chunks = shard_chunks(table.index, batch_size, shard_index, n_shards)
    rows: list[dict[str, str]] = []
    rendered = written = 0
    progress = tqdm(
        total=sum(len(c) for c in chunks), desc=f"generate {variant} shard {shard_index + 1}/{n_shards}", unit="img"
    )
    with progress:
        for chunk in chunks:
            image_paths = [images_dir / f"{sid}.png" for sid in chunk]
            mask_paths = [masks_dir / f"{sid}.png" for sid in chunk]
            for sid, mask_path in zip(chunk, mask_paths):
                if not mask_path.exists():
                    write_mask(mask_path, resize_mask(table.at[sid, "mask"], resolution))
            missing = [i for i, p in enumerate(image_paths) if not p.exists()]
            if missing:
                condition_images = [load_condition(table.at[sid, "condition"], resolution) for sid in chunk]
                # CPU generators: the same noise on any device, and independent of batch neighbours
                generators = [torch.Generator("cpu").manual_seed(sample_seed(sid, seed)) for sid in chunk]
                images = np.asarray(render_batch(condition_images, generators))
                expected = (len(chunk), resolution, resolution, 3)
                if images.shape != expected or images.dtype != np.uint8:
                    raise RuntimeError(f"renderer returned {images.dtype} {images.shape}, expected uint8 {expected}")
                for i in missing:
                    write_image(image_paths[i], images[i])
                rendered += len(chunk)
                written += len(missing)
            rows += [
                {
                    "sample_id": sid,
                    "image": str(image_path),
                    "mask": str(mask_path),
                    "condition": str(table.at[sid, "condition"]),
                    "variant": variant,
                }
                for sid, image_path, mask_path in zip(chunk, image_paths, mask_paths)
            ]
            progress.update(len(chunk))
    log.info(
        "%s shard %d/%d: %d samples, %d rendered, %d images written, %d already present",
        variant, shard_index, n_shards, len(rows), rendered, written, len(rows) - written,
    )
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


# --------------------------------------------------------------------------------- the model
def resolve_device_dtype(
    device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """Defaults: CUDA when available, fp16 on CUDA and fp32 on CPU (fp16 matmuls are slow or missing on CPU)."""
    resolved = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        return resolved, torch.float16 if resolved.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return resolved, dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "no": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
    return resolved, names[dtype]


def load_generation_pipeline(
    base: str | Path,
    lora_path: str | Path,
    *,
    family: str = "sd15",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    vae: str | Path | None = None,
    fuse: bool = True,
) -> ControlLoraPipeline | ControlLoraXLPipeline:
    """Base model + widened conv_in + Control-LoRA + UniPC, ready to sample.

    The base is read by :func:`hardgen.base_model.load_components` (``from_pretrained`` of each
    component), the same path for the tiny demo folder, SD1.5 and SDXL. The UniPC scheduler is built
    from the base's own scheduler config, so beta schedule and prediction type match the base.
    ``vae`` (``model.vae``) replaces the base's VAE, as in training. With ``fuse`` (the default: the LoRA is fixed
    for a whole shard) the LoRA deltas are merged into the UNet's weights once, so each sampling step costs the
    base UNet plus the wider ``conv_in`` instead of a LoRA detour at every adapted layer; images equal the
    unfused pipeline's within float tolerance.
    """
    if not Path(lora_path).exists():  # fail before the slow base load; a folder holding the file also works
        raise FileNotFoundError(f"{lora_path}: Control-LoRA weights not found")
    device, dtype = resolve_device_dtype(device, dtype)
    from diffusers import UniPCMultistepScheduler

    from hardgen.base_model import load_components
    from hardgen.control_lora import ControlLoraPipeline, ControlLoraXLPipeline, load_control_lora, widen_conv_in

    components = load_components(base, family=family, dtype=dtype, vae=vae)
    unet = components["unet"]
    widen_conv_in(unet, num_conditions=1)
    load_control_lora(unet, lora_path, adapter_name=ADAPTER_NAME)
    if fuse:
        # merge W + BA once, then drop the peft wrappers (their per-call dispatch is pure overhead now); the
        # UNet is then a stock UNet with a wider conv_in, and condition scales no longer apply
        unet.fuse_lora(adapter_names=[ADAPTER_NAME])
        unet.unload_lora()
    scheduler = UniPCMultistepScheduler.from_config(components["noise_scheduler"].config)
    shared = {"vae": components["vae"], "unet": unet, "scheduler": scheduler,
              "text_encoder": components["text_encoder"], "tokenizer": components["tokenizer"]}
    if family == "sdxl":
        pipe = ControlLoraXLPipeline(
            **shared, text_encoder_2=components["text_encoder_2"], tokenizer_2=components["tokenizer_2"]
        )
    else:
        pipe = ControlLoraPipeline(**shared, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    # components are already in ``dtype`` (load_components); casting again would be a no-op at best
    pipe = pipe.to(device=device)
    if torch.device(device).type == "cuda":  # channels-last convolutions are faster on tensor cores (not on CPU)
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)  # one tqdm bar per shard, not one per batch
    return pipe


def pipeline_renderer(
    pipe: ControlLoraPipeline | ControlLoraXLPipeline,
    *,
    prompt: str,
    resolution: int,
    steps: int,
    guidance_scale: float,
    condition_scale: float,
) -> RenderBatch:
    """Wrap a ``ControlLoraPipeline`` as a :data:`RenderBatch`."""

    def render(condition_images: list[np.ndarray], generators: list[torch.Generator]) -> np.ndarray:
        with torch.inference_mode():
            result = pipe(
                prompt=[prompt] * len(condition_images),
                condition=[Image.fromarray(c) for c in condition_images],
                condition_scale=condition_scale,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=generators,
                height=resolution,
                width=resolution,
                output_type="np",
            )
        return to_uint8(result.images)

    return render


def generate_shard(
    base: str | Path,
    lora_path: str | Path,
    conditions_df: pd.DataFrame | str | Path,
    shard_index: int,
    n_shards: int,
    out_dir: str | Path,
    *,
    family: str = "sd15",
    resolution: int,
    prompt: str,
    steps: int = 20,
    guidance_scale: float = 1.0,
    condition_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    variant: str,
    vae: str | Path | None = None,
) -> pd.DataFrame:
    """Generate one image per condition row of this shard with the Control-LoRA at ``lora_path``.

    Writes ``out_dir/images/<sample_id>.png`` (the generated RGB image, ``resolution``²) and
    ``out_dir/masks/<sample_id>.png`` (the paired mask resized with nearest neighbour, 0/255), each
    atomically; existing files are kept (resume). Returns the shard manifest with columns
    ``sample_id, image, mask, condition, variant``; the caller writes it.
    """
    if resolution < 8:
        raise ValueError(f"model.resolution must be >= 8, got {resolution}")
    table = read_conditions(conditions_df)
    chunks = shard_chunks(table["sample_id"], batch_size, shard_index, n_shards)
    out_dir = Path(out_dir)
    # loading the model is the slow part: skip it when a finished shard is rerun
    needs_model = any(not (out_dir / "images" / f"{sid}.png").exists() for chunk in chunks for sid in chunk)
    if needs_model:
        # the LoRA is fixed for the whole shard: fuse it once, unless a condition scale must act per layer call
        pipe = load_generation_pipeline(base, lora_path, family=family, device=device, dtype=dtype, vae=vae,
                                        fuse=condition_scale == 1.0)
        render = pipeline_renderer(
            pipe, prompt=prompt, resolution=resolution, steps=steps,
            guidance_scale=guidance_scale, condition_scale=condition_scale,
        )
    else:
        def render(condition_images: list[np.ndarray], generators: list[torch.Generator]) -> np.ndarray:
            raise RuntimeError("internal: no image was missing, yet a batch was to be rendered")
    return run_shard(
        render, table, shard_index, n_shards, out_dir,
        resolution=resolution, variant=variant, seed=seed, batch_size=batch_size,
    )


# ----------------------------------------------------------------------------------- merging
def merge_shards(
    shard_csvs: Sequence[str | Path], out_csv: str | Path, conditions: pd.DataFrame | str | Path | None = None
) -> pd.DataFrame:
    """Concatenate shard manifests into ``out_csv`` (atomically) after checking the ids.

    Raises :class:`DataError` for a sample id in two shards, an image or mask file that does not exist, or
    (with ``conditions``) a condition sample id that no shard generated or a generated id that is not
    a condition. Rows are sorted by sample id.
    """
    frames = []
    for path in shard_csvs:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: shard manifest not found")
        frame = pd.read_csv(path, dtype={"sample_id": str})
        missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: shard manifest lacks columns {missing}")
        frames.append(frame.assign(_shard=str(path)))
    if not frames:
        raise DataError(f"{out_csv}: no shard manifests to merge")
    merged = pd.concat(frames, ignore_index=True)
    duplicated = merged[merged["sample_id"].duplicated(keep=False)]
    if not duplicated.empty:
        sid = duplicated["sample_id"].iloc[0]
        shards = sorted(set(duplicated.loc[duplicated["sample_id"] == sid, "_shard"]))
        raise DataError(f"sample_id {sid!r} appears more than once, in {shards}")
    absent = [p for p in [*merged["image"], *merged["mask"]] if not Path(p).is_file()]
    if absent:
        raise DataError(f"{absent[0]}: listed in a shard manifest but missing ({len(absent)} missing files)")
    if conditions is not None:
        expected = set(read_conditions(conditions)["sample_id"])
        got = set(merged["sample_id"])
        if expected - got:
            raise DataError(f"{len(expected - got)} condition sample ids not generated, e.g. {sorted(expected - got)[0]!r}")
        if got - expected:
            raise DataError(f"{len(got - expected)} generated sample ids are not in the conditions, e.g. {sorted(got - expected)[0]!r}")
    merged = merged.drop(columns="_shard").sort_values("sample_id").reset_index(drop=True)[MANIFEST_COLUMNS]
    write_csv(out_csv, merged)
    return merged
