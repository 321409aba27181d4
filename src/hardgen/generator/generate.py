"""Batched, shard-safe, resumable generation of the planned samples (one or more per condition).

Determinism contract (why the work is split the way it is):

* every image's initial noise comes from its own ``torch.Generator`` seeded by
  :func:`hardgen.core.io.sample_seed` of its sample id, so a sample's noise never depends on its neighbours;
* batched kernels can still give bit-different results for different batch *compositions*, so work
  is cut into fixed chunks of ``batch_size`` consecutive (sorted) sample ids and chunk ``c`` runs on
  shard ``c % n_shards``: each batch is the same in any sharding, and the images are byte-identical
  whatever the shard count;
* resuming recomputes a partially written chunk as a whole (same composition again) and writes only
  the missing files, so a killed shard finishes with exactly the bytes of an uninterrupted run.

Which samples exist is the generation plan's business (:mod:`hardgen.scoring.allocation`: ``generation.per_mask``
samples per condition, allocated uniformly or by hardness; each with its own id and seed). Without a plan,
every condition row is one sample seeded by its own id. The training-free variants plug in here
(:mod:`hardgen.generator.mining`): ``mined`` picks each sample's initial noise among candidates before rendering, and
``guided`` renders with a discrepancy gradient on the latents; the inpainting ones (:mod:`hardgen.generator.inpaint`,
:mod:`hardgen.models.inpainting`) draw each sample's lesion into a real frame (its scene) and keep the frame outside it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from hardgen.core.io import (
    DataError,
    fit_square,
    read_mask,
    read_rgb,
    sample_seed,
    write_image,
    write_json,
    write_mask,
)
from hardgen.generator.shards import (  # noqa: F401
    CONDITION_COLUMNS,
    INPAINT_COLUMNS,
    MANIFEST_COLUMNS,
    MINING_COLUMNS,
    SEED_COLUMN,
    merge_shards,
    planned_samples,
    read_conditions,
    shard_chunks,
)

# The torch-free half (the samples each shard makes, merging shard manifests) lives in hardgen.generator.shards, so rule
# generated_manifest imports no torch; hardgen.generator.generate re-exports it (merge_shards, CONDITION_COLUMNS).
from hardgen.models.sampling import (  # noqa: F401 (re-exported)
    PickedNoise,
    PickNoise,
    RenderBatch,
    RenderInto,
    Sampling,
    unit_to_uint8,
)

if TYPE_CHECKING:  # diffusers/transformers take seconds to import; shard planning and merging need neither
    from hardgen.generator.inpaint import InpaintScene, InpaintSettings
    from hardgen.generator.mining import GuidanceSettings, MiningSettings, ScoreFn
    from hardgen.models.control_lora import ControlLoraPipeline, ControlLoraXLPipeline

log = logging.getLogger("hardgen.generator.generate")


#: Adapter name under which the Control-LoRA file is loaded (training's default; files store no names).
ADAPTER_NAME = "condition"

#: The scenes of a chunk's samples (``inpaint``): (sample ids, their seeds) -> one scene each.
PlanScenes = Callable[[list[str], list[int]], "list[InpaintScene]"]


@dataclass(frozen=True)
class Inpainting:
    """An inpainting shard's halves: each sample's scene (``scenes``) and the renderer that draws into the frames
    (``render``; None for a shard whose every file exists: calling it is then an error)."""

    scenes: PlanScenes | None
    render: RenderInto | None


# ---------------------------------------------------------------------------- image handling
def load_condition(path: str | Path, resolution: int) -> np.ndarray:
    """A condition image as ``resolution``² RGB uint8, brought to size exactly as training does
    (:func:`hardgen.core.io.fit_square`)."""
    image = read_rgb(path)
    if image.shape[:2] != (resolution, resolution):
        image = fit_square(image, resolution)
    return image


def load_conditions(paths: list[str | Path], resolution: int) -> list[np.ndarray]:
    """:func:`load_condition` of each path, each distinct path read once: samples sharing a condition get the very
    same array object, which the pipeline then VAE-encodes once per batch (``generation.per_mask`` samples per
    condition, and ``mined``'s candidates of one sample, share it)."""
    loaded: dict[str, np.ndarray] = {}
    for path in paths:
        if str(path) not in loaded:
            loaded[str(path)] = load_condition(path, resolution)
    return [loaded[str(path)] for path in paths]


def resize_mask(path: str | Path, resolution: int) -> np.ndarray:
    """A mask brought to ``resolution``² by :func:`hardgen.core.io.fit_square` (nearest, so it stays binary)."""
    return fit_square(read_mask(path), resolution, is_mask=True)


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
    pick_noise: PickNoise | None = None,
    inpaint: Inpainting | None = None,
) -> pd.DataFrame:
    """Generate this shard's missing images with ``render_batch`` and copy their masks; return the manifest.

    Model-agnostic core of :func:`generate_shard`. ``conditions`` holds one row per sample (``sample_id,
    condition, mask`` and optionally ``seed``; without it a sample's seed is :func:`hardgen.core.io.sample_seed` of
    its id and ``seed``). A chunk whose images all exist is skipped; a partially written chunk is re-rendered
    whole and only its missing files are written. Rows are streamed chunk by chunk, so memory does not grow with
    the number of images.

    ``pick_noise`` (``mined``) chooses each sample's initial noise before rendering; its choice is written to
    ``out_dir/mining/<sample_id>.json`` before the image, so a resumed shard reports it without mining again.

    ``inpaint`` (the inpainting variants; ``render_batch`` is then unused): each sample's scene is planned
    (``inpaint.scenes``) and recorded in ``out_dir/scenes/<sample_id>.json`` (placement and frame) before the image;
    the mask written is the scene's label, ``frames/`` and ``regions/`` hold the frame drawn into and the region
    redrawn, and ``inpaint.render`` draws the lesion into the frame (:func:`_inpaint_chunk`).

    Manifest columns: ``sample_id, image, mask, condition, variant, seed`` (+ ``candidate, mining_score`` with
    ``pick_noise``, + ``placement, frame_id, frame, region`` with ``inpaint``), one row per sample of the shard. Wall
    seconds spent mining and rendering are logged.
    """
    table = read_conditions(conditions).set_index("sample_id")
    out_dir = Path(out_dir)
    chunks = shard_chunks(table.index, batch_size, shard_index, n_shards)
    own_seeds = {sid: int(table.at[sid, SEED_COLUMN]) if SEED_COLUMN in table.columns else sample_seed(sid, seed)
                 for chunk in chunks for sid in chunk}
    rows: list[dict[str, Any]] = []
    rendered = written = 0
    seconds = {"mining": 0.0, "rendering": 0.0}
    progress = tqdm(
        total=sum(len(c) for c in chunks), desc=f"generate {variant} shard {shard_index + 1}/{n_shards}", unit="img"
    )
    with progress:
        for chunk in chunks:
            if inpaint is not None:
                chunk_rows, drawn = _inpaint_chunk(inpaint, table, chunk, out_dir, variant, own_seeds, resolution,
                                                   seconds)
                rows += chunk_rows
                rendered += len(chunk) if drawn else 0
                written += drawn
                progress.update(len(chunk))
                continue
            image_paths = [out_dir / "images" / f"{sid}.png" for sid in chunk]
            mask_paths = [out_dir / "masks" / f"{sid}.png" for sid in chunk]
            pick_paths = [out_dir / "mining" / f"{sid}.json" for sid in chunk]
            missing = [i for i, p in enumerate(image_paths) if not p.exists()]
            picks_missing = pick_noise is not None and not all(p.exists() for p in pick_paths)
            if missing or picks_missing or not all(p.exists() for p in mask_paths):
                masks = _write_masks(table, chunk, mask_paths, resolution)
            if missing or picks_missing:
                condition_images = load_conditions([table.at[sid, "condition"] for sid in chunk], resolution)
                picks = _picked_noise(pick_noise, condition_images, masks, [own_seeds[sid] for sid in chunk],
                                      pick_paths, seconds)
                images = _render_chunk(render_batch, condition_images, picks, masks, resolution, seconds)
                for i in missing:
                    write_image(image_paths[i], images[i])
                rendered += len(chunk)
                written += len(missing)
            rows += _chunk_rows(table, chunk, image_paths, mask_paths, pick_paths, variant, own_seeds,
                                mined=pick_noise is not None)
            progress.update(len(chunk))
    log.info(
        "%s shard %d/%d: %d samples, %d rendered, %d images written, %d already present; wall seconds: "
        "mining %.1f, rendering %.1f (%.3f s per rendered image all told)",
        variant, shard_index, n_shards, len(rows), rendered, written, len(rows) - written, seconds["mining"],
        seconds["rendering"], (seconds["mining"] + seconds["rendering"]) / rendered if rendered else 0.0,
    )
    columns = (MANIFEST_COLUMNS + [SEED_COLUMN] + (MINING_COLUMNS if pick_noise is not None else [])
               + (INPAINT_COLUMNS if inpaint is not None else []))
    return pd.DataFrame(rows, columns=columns)


def _inpaint_files(out_dir: Path, chunk: list[str]) -> dict[str, list[Path]]:
    """An inpainting chunk's files, per sample: ``images, masks, frames, regions`` (PNG) and ``scenes`` (the records)."""
    paths = {kind: [out_dir / kind / f"{sid}.png" for sid in chunk] for kind in ("images", "masks", "frames", "regions")}
    return paths | {"scenes": [out_dir / "scenes" / f"{sid}.json" for sid in chunk]}


def _inpaint_chunk(inpaint: Inpainting, table: pd.DataFrame, chunk: list[str], out_dir: Path, variant: str,
                   own_seeds: dict[str, int], resolution: int, seconds: dict[str, float]
                   ) -> tuple[list[dict[str, Any]], int]:
    """An inpainting chunk: where any of its files is missing, its scenes planned and the missing files written
    (the scene record, the label as the mask, the frame, the region, then the image drawn by ``inpaint.render``, the
    whole chunk rendered as in :func:`run_shard`); its manifest rows and the count of images written."""
    paths = _inpaint_files(out_dir, chunk)
    records = paths["scenes"]
    missing = [i for i, path in enumerate(paths["images"]) if not path.exists()]
    drawn = 0
    if not all(path.exists() for files in paths.values() for path in files):
        if inpaint.scenes is None:
            raise RuntimeError("internal: every scene file exists, yet a chunk was to be planned")
        scenes = inpaint.scenes(chunk, [own_seeds[sid] for sid in chunk])
        for i, item in enumerate(scenes):
            scene = item.scene
            if not records[i].exists():
                write_json(records[i], {"placement": scene.placement, "frame_id": scene.frame_id})
            for kind, array in (("masks", scene.label), ("regions", scene.region)):
                if not paths[kind][i].exists():
                    write_mask(paths[kind][i], array)
            if not paths["frames"][i].exists():
                write_image(paths["frames"][i], scene.frame)
        if missing:
            if inpaint.render is None:
                raise RuntimeError("internal: no image was missing, yet a batch was to be rendered")
            render = inpaint.render

            def render_batch(condition_images: list[np.ndarray], generators: list[torch.Generator],
                             masks: list[np.ndarray]) -> np.ndarray:
                return render(condition_images, generators, [s.scene.frame for s in scenes],
                              [s.scene.region for s in scenes], masks)

            images = _render_chunk(render_batch, [s.condition for s in scenes],
                                   [PickedNoise(own_seeds[sid]) for sid in chunk], [s.scene.lesion for s in scenes],
                                   resolution, seconds)
            for i in missing:
                write_image(paths["images"][i], images[i])
            drawn = len(missing)
    rows = _chunk_rows(table, chunk, paths["images"], paths["masks"], records, variant, own_seeds, mined=False)
    for row, record, frame, region in zip(rows, records, paths["frames"], paths["regions"], strict=True):
        row |= _read_scene(record) | {"frame": str(frame), "region": str(region)}
    return rows, drawn


def _read_scene(path: Path) -> dict[str, str]:
    """A sample's recorded scene (``placement, frame_id``); errors name the file."""
    try:
        record = json.loads(path.read_text())
        return {"placement": str(record["placement"]), "frame_id": str(record["frame_id"])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: unreadable scene record ({err}); delete it to plan the sample again") from err


def _write_masks(table: pd.DataFrame, chunk: list[str], mask_paths: list[Path], resolution: int) -> list[np.ndarray]:
    """The chunk's masks at ``resolution`` (:func:`resize_mask`), the ones not on disk yet written."""
    masks = [resize_mask(table.at[sid, "mask"], resolution) for sid in chunk]
    for mask, mask_path in zip(masks, mask_paths):
        if not mask_path.exists():
            write_mask(mask_path, mask)
    return masks


def _picked_noise(pick_noise: PickNoise | None, condition_images: list[np.ndarray], masks: list[np.ndarray],
                  own_seeds: list[int], pick_paths: list[Path], seconds: dict[str, float]) -> list[PickedNoise]:
    """Each sample's initial noise: its own seed, or ``pick_noise``'s choice (written to ``pick_paths`` where absent;
    its wall time added to ``seconds["mining"]``)."""
    if pick_noise is None:
        return [PickedNoise(s) for s in own_seeds]
    started = time.perf_counter()
    picks = list(pick_noise(condition_images, masks, own_seeds))
    seconds["mining"] += time.perf_counter() - started
    if len(picks) != len(own_seeds):
        raise RuntimeError(f"noise picker returned {len(picks)} choices for {len(own_seeds)} samples")
    for pick, path in zip(picks, pick_paths):
        if not path.exists():
            write_json(path, {"seed": pick.seed, "candidate": pick.candidate, "mining_score": pick.score})
    return picks


def _render_chunk(render_batch: RenderBatch, condition_images: list[np.ndarray], picks: list[PickedNoise],
                  masks: list[np.ndarray], resolution: int, seconds: dict[str, float]) -> np.ndarray:
    """(B, H, W, 3) uint8 images of the chunk from the picked noises, checked; wall time added to
    ``seconds["rendering"]``."""
    # CPU generators: the same noise on any device, and independent of batch neighbours
    generators = [torch.Generator("cpu").manual_seed(pick.seed) for pick in picks]
    started = time.perf_counter()
    images = np.asarray(render_batch(condition_images, generators, masks))
    seconds["rendering"] += time.perf_counter() - started
    expected = (len(picks), resolution, resolution, 3)
    if images.shape != expected or images.dtype != np.uint8:
        raise RuntimeError(f"renderer returned {images.dtype} {images.shape}, expected uint8 {expected}")
    return images


def _chunk_rows(table: pd.DataFrame, chunk: list[str], image_paths: list[Path], mask_paths: list[Path],
                pick_paths: list[Path], variant: str, own_seeds: dict[str, int], *,
                mined: bool) -> list[dict[str, Any]]:
    """The shard manifest's rows of a chunk (a mined sample's seed and score from its pick file)."""
    rows = []
    for sid, image_path, mask_path, pick_path in zip(chunk, image_paths, mask_paths, pick_paths):
        row = {"sample_id": sid, "image": str(image_path), "mask": str(mask_path),
               "condition": str(table.at[sid, "condition"]), "variant": variant}
        if not mined:
            row[SEED_COLUMN] = own_seeds[sid]
        else:
            pick = _read_pick(pick_path)
            row |= {SEED_COLUMN: pick["seed"], "candidate": pick["candidate"], "mining_score": pick["mining_score"]}
        rows.append(row)
    return rows


def _read_pick(path: Path) -> dict[str, Any]:
    """A sample's recorded mining choice (``seed, candidate, mining_score``); errors name the file."""
    try:
        record = json.loads(path.read_text())
        return {"seed": int(record["seed"]), "candidate": int(record["candidate"]),
                "mining_score": float(record["mining_score"])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: unreadable mining record ({err}); delete it to mine the sample again") from err


# --------------------------------------------------------------------------------- the model
def resolve_device_dtype(
    device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """Defaults: CUDA when available, fp16 on CUDA and fp32 on CPU (fp16 matmuls are slow or missing on CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if dtype is None:
        return resolved, torch.float16 if resolved.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return resolved, dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "no": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
    return resolved, names[dtype]


def cpu_float16_supported() -> bool:
    """Whether this torch runs the float16 kernels sampling needs on the CPU (a convolution, a matmul, a softmax and
    group norm: the UNet's and the VAE's ops); torch 2.x does."""
    try:
        x = torch.randn(1, 4, 8, 8).half()
        y = torch.nn.functional.conv2d(x, torch.randn(4, 4, 3, 3).half(), padding=1)
        y = torch.nn.functional.group_norm(y, 2)
        z = torch.softmax(y.flatten(1) @ y.flatten(1).T, dim=-1)
    except RuntimeError:
        return False
    return bool(z.dtype == torch.float16 and torch.isfinite(z).all())


def check_generation_dtype(device: str | torch.device | None, dtype: str | torch.dtype | None) -> None:
    """``generation.dtype`` float16 on a CPU job runs where torch has the CPU kernels (:func:`cpu_float16_supported`),
    else is an error: never a silent fall-back to fp32, which would misreport the run."""
    resolved, resolved_dtype = resolve_device_dtype(device, dtype)
    if dtype is not None and resolved_dtype == torch.float16 and resolved.type == "cpu" and not cpu_float16_supported():
        raise ValueError(f"generation.dtype: float16 needs a GPU (torch {torch.__version__} lacks the CPU float16 "
                         "kernels); use auto, float32 or bfloat16")


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

    The base is read by :func:`hardgen.models.base_model.load_components` (``from_pretrained`` of each
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

    from hardgen.models.base_model import load_components
    from hardgen.models.control_lora import (
        ControlLoraPipeline,
        ControlLoraXLPipeline,
        load_control_lora,
        widen_conv_in,
    )

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
    """Wrap a ``ControlLoraPipeline`` as a :data:`RenderBatch` (masks are not needed and ignored)."""
    sampling = Sampling(prompt, resolution, steps, guidance_scale, condition_scale)

    def render(condition_images: list[np.ndarray], generators: list[torch.Generator],
               masks: list[np.ndarray] | None = None) -> np.ndarray:
        with torch.inference_mode():
            result = sampling(pipe, condition_images, generators)
        return unit_to_uint8(result.images)

    return render


@dataclass(frozen=True)
class GenerationShard:
    """One shard of one variant's samples: the model files it samples (base, Control-LoRA, ``model.vae``), the samples
    (condition rows, or the generation ``plan``'s rows over them), which shard of how many, its output folder and, for
    an inpainting variant, the frames it draws into (the data ``manifest``'s training images, the ``backgrounds``)."""

    base: str | Path
    lora_path: str | Path
    conditions: pd.DataFrame | str | Path
    shard_index: int
    n_shards: int
    out_dir: str | Path
    variant: str
    plan: pd.DataFrame | str | Path | None = None
    vae: str | Path | None = None
    #: the inpainting variants: the data manifest (the training frames) and data.background_frames' folder (or None)
    manifest: str | Path | None = None
    backgrounds: str | Path | None = None


@dataclass(frozen=True)
class GenerationSettings:
    """How a variant's samples are rendered: the pipeline call (:class:`Sampling`), ``model.family``, the base seed of
    samples without a planned seed, ``generation.batch_size``, device and dtype (None: :func:`resolve_device_dtype`'s
    defaults) and, for the training-free variants, ``mining`` or ``guidance`` with the ``judge`` they score with, or
    ``inpaint`` (the inpainting variants: :class:`hardgen.generator.inpaint.InpaintSettings`)."""

    sampling: Sampling
    family: str = "sd15"
    seed: int = 0
    batch_size: int = 16
    device: str | torch.device | None = None
    dtype: str | torch.dtype | None = None
    mining: MiningSettings | None = None
    guidance: GuidanceSettings | None = None
    judge: Callable[[torch.device], ScoreFn] | None = None
    inpaint: InpaintSettings | None = None


def _check_shard_arguments(settings: GenerationSettings, variant: str) -> None:
    """Raise ValueError, naming the setting, on settings :func:`generate_shard` cannot work with."""
    mining, guidance = settings.mining, settings.guidance
    if settings.sampling.resolution < 8:
        raise ValueError(f"model.resolution must be >= 8, got {settings.sampling.resolution}")
    if sum(x is not None for x in (mining, guidance, settings.inpaint)) > 1:
        raise ValueError(f"variant {variant!r}: give mining, guidance or inpaint settings, not more than one")
    if settings.inpaint is not None:
        settings.inpaint.check()
    if (mining is not None or guidance is not None) and settings.judge is None:
        raise ValueError(f"variant {variant!r}: mining and guidance need a judge (the in-loss backbones)")
    if mining is not None:
        mining.check(settings.sampling.steps)
    if guidance is not None:
        guidance.check()
    check_generation_dtype(settings.device, settings.dtype)


def _variant_renderer(
    pipe: ControlLoraPipeline | ControlLoraXLPipeline, sampling: Sampling, mining: MiningSettings | None,
    guidance: GuidanceSettings | None, judge: Callable[[torch.device], ScoreFn] | None, batch_size: int,
) -> tuple[RenderBatch, PickNoise | None]:
    """(renderer, noise picker) of a variant on a loaded pipeline: the plain pipeline renderer, with ``mining`` a
    noise picker, with ``guidance`` the guided renderer instead (both scoring with ``judge(pipe.device)``)."""
    render = pipeline_renderer(
        pipe, prompt=sampling.prompt, resolution=sampling.resolution, steps=sampling.steps,
        guidance_scale=sampling.guidance_scale, condition_scale=sampling.condition_scale,
    )
    if mining is None and guidance is None:
        return render, None
    from hardgen.generator import mining as mining_module

    score = judge(pipe.device)
    if mining is not None:
        return render, mining_module.noise_picker(pipe, sampling, score, mining, batch_size=batch_size)
    return mining_module.guided_renderer(pipe, sampling, score, guidance), None


def _finished_shard_renderer(mining: MiningSettings | None) -> tuple[RenderBatch, PickNoise | None]:
    """(renderer, noise picker) of a shard whose every image (and mining record) exists: both raise if called."""
    def render(condition_images: list[np.ndarray], generators: list[torch.Generator],
               masks: list[np.ndarray]) -> np.ndarray:
        raise RuntimeError("internal: no image was missing, yet a batch was to be rendered")

    def pick_noise(condition_images: list[np.ndarray], masks: list[np.ndarray], seeds: list[int]) -> list[PickedNoise]:
        raise RuntimeError("internal: every mining record exists, yet a chunk was to be mined")

    # a finished mined shard: its choices are read back from the records
    return render, pick_noise if mining is not None else None


def generate_shard(shard: GenerationShard, settings: GenerationSettings) -> pd.DataFrame:
    """Generate this shard's samples with the Control-LoRA at ``shard.lora_path``.

    Samples: the rows of ``shard.plan`` (:mod:`hardgen.scoring.allocation`; each names its condition and seed) or,
    without a plan, one per condition row. Writes ``out_dir/images/<sample_id>.png`` (the generated RGB image,
    ``resolution``²) and ``out_dir/masks/<sample_id>.png`` (the paired mask resized with nearest neighbour,
    0/255), each atomically; existing files are kept (resume). Returns the shard manifest (columns as
    :func:`run_shard`); the caller writes it.

    Training-free hardness (:mod:`hardgen.generator.mining`): with ``settings.mining`` each sample's noise is the most
    discrepant of ``mining.candidates`` seeded noises (``mined``), with ``settings.guidance`` the discrepancy gradient
    steers the latents while sampling (``guided``). Both score with ``judge(device)``, a differentiable
    ``(images01, masks) -> (B,)`` discrepancy built once per shard (:func:`hardgen.generator.mining.load_judge`).
    With ``settings.inpaint`` (``inpaint``, ``hard_inpaint``) each sample's lesion is drawn into a real frame
    (``shard.conditions`` must then be the training conditions, whose real rows are the frames; :func:`run_shard`).
    """
    _check_shard_arguments(settings, shard.variant)
    sampling, mining = settings.sampling, settings.mining
    table = (planned_samples(shard.plan, shard.conditions) if shard.plan is not None
             else read_conditions(shard.conditions))
    chunks = shard_chunks(table["sample_id"], settings.batch_size, shard.shard_index, shard.n_shards)
    out_dir = Path(shard.out_dir)
    # loading the model is the slow part: skip it when a finished shard is rerun
    needs_model = any(not (out_dir / "images" / f"{sid}.png").exists() for chunk in chunks for sid in chunk)
    if mining is not None:
        needs_model |= any(not (out_dir / "mining" / f"{sid}.json").exists() for chunk in chunks for sid in chunk)
    if settings.inpaint is not None:  # a chunk missing any of its files is planned again (:func:`_inpaint_chunk`)
        needs_model |= any(not path.exists() for chunk in chunks
                           for files in _inpaint_files(out_dir, chunk).values() for path in files)
    inpaint = None
    if needs_model:
        # the LoRA is fixed for the whole shard: fuse it once, unless a condition scale must act per layer call
        pipe = load_generation_pipeline(shard.base, shard.lora_path, family=settings.family, device=settings.device,
                                        dtype=settings.dtype, vae=shard.vae, fuse=sampling.condition_scale == 1.0)
        render, pick_noise = _variant_renderer(pipe, sampling, mining, settings.guidance, settings.judge,
                                               settings.batch_size)
        if settings.inpaint is not None:
            inpaint = _inpainting(pipe, sampling, table, shard, settings.inpaint)
    else:
        render, pick_noise = _finished_shard_renderer(mining)
        if settings.inpaint is not None:
            inpaint = Inpainting(None, None)
    return run_shard(
        render, table, shard.shard_index, shard.n_shards, out_dir, resolution=sampling.resolution,
        variant=shard.variant, seed=settings.seed, batch_size=settings.batch_size, pick_noise=pick_noise,
        inpaint=inpaint,
    )


def _inpainting(pipe: ControlLoraPipeline | ControlLoraXLPipeline, sampling: Sampling, table: pd.DataFrame,
                shard: GenerationShard, settings: InpaintSettings) -> Inpainting:
    """The scenes and the renderer of an inpainting shard (:mod:`hardgen.generator.inpaint`,
    :func:`hardgen.models.inpainting.inpaint_renderer`)."""
    from hardgen.generator.inpaint import ScenePlanner
    from hardgen.models.inpainting import inpaint_renderer

    if shard.manifest is None:
        raise ValueError(f"variant {shard.variant!r}: inpainting needs the data manifest (its training frames)")
    planner = ScenePlanner(table, shard.conditions, shard.manifest, shard.backgrounds, settings, sampling.resolution)
    return Inpainting(planner, inpaint_renderer(pipe, sampling, settings.feather))
