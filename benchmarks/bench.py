"""`make bench`: generation, training and scoring throughput, side by side in one run.

Generation (``generation.csv``: ``pipeline, images_per_s``), at equal steps, resolution, batch, UniPC scheduler and
threads, interleaved and best of ``--repeats``:

* ``control_lora`` — hardgen's generation path as the workflow runs it (``hardgen.generator.generate``: the Control-LoRA
  fused into the UNet once per shard);
* ``control_lora_unfused`` — the same pipeline with the LoRA applied by peft at every layer call;
* ``controlnet`` — diffusers' stock ``StableDiffusionControlNetPipeline`` with ``ControlNetModel.from_unet`` of
  the same base UNet.

Every sample has its own condition image (as at ``generation.per_mask: 1``), so the Control-LoRA rows VAE-encode
all of them. Beside ``images_per_s`` (wall clock) the table has ``cpu_images_per_s`` (the process's CPU time, CPU
only: it leaves out time spent waiting for a core, not a core shared with another process) and where the best
round's time went, in seconds per batch (CPU only): ``unet_s``, ``controlnet_s``, ``vae_encode_s`` (the
conditions), ``vae_decode_s`` and ``other_s`` (text encoder, scheduler, pre/post-processing), and
``gflop_per_step``, the model FLOPs of one denoising step of the batch (their ratio is the best a Control-LoRA can
do where the hardware is compute-bound). The tiny base is the
demo's (``resources/tiny-sd-polyp``).

Training (``training.csv``: ``method, s_per_step, peak_mem_mb, trainable_params``): hardgen's trainer in
``plain``, ``hard`` and ``feedback`` mode (s/step excludes setup, calibration and validation), and the same
minimal step loop for a Control-LoRA (``plain_loop``, condition latents cached as the trainer caches them) and a
ControlNet (``controlnet``) on the same batch. Each method runs in its own process; ``peak_mem_mb`` is the
peak allocated CUDA memory on a GPU, and on the CPU the process's peak resident memory (``VmHWM``) minus its
resident memory once the libraries are imported: models, gradients, optimizer state and activations.

Scoring (``scoring.csv``: ``backbone, images_per_s``): prototype-discrepancy scoring of generated-size images per
backbone (the demo's three families by default).

Figures are ratios measured in one run; absolute CPU times are noise. A plot (``bench.png``) shows all three.

    python benchmarks/bench.py                                  # tiny models, CPU, one thread (make bench)
    python benchmarks/bench.py --sd15 --device cuda --dtype fp16 --resolution 512 --batch 8   # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

PROMPT = "an endoscopic image of a colon polyp"
BACKBONES = {"cnn": "resnet18", "vit": "vit_tiny_patch16_224", "heldout": "convnext_atto"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--sd15", action="store_true", help="SD1.5 architecture (random weights) instead of tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--resolution", type=int, default=None, help="default 64 (tiny) / 512 (sd15)")
    parser.add_argument("--batch", type=int, default=16, help="generation batch")
    parser.add_argument("--steps", type=int, default=20, help="UniPC sampling steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed generation rounds (best counts)")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["generation", "training", "scoring"])
    parser.add_argument("--tag", default="", help="suffix of the CSV names (e.g. _fp16)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------- set-up
def _base(work: Path, sd15: bool) -> Path:
    from hardgen.models.base_model import build_random_sd

    if not sd15:  # the demo's base (model.base), shipped: the tiny shapes, pre-trained weights
        return REPO / "resources" / "tiny-sd-polyp"
    out = work / "sd15-base"
    if not (out / "model_index.json").is_file():
        build_random_sd(REPO / "resources" / "sd15-random", out, seed=0)
    return out


def _lora(work: Path, base: Path, rank: int = 16, conv_in_rank: int = 64) -> Path:
    """A Control-LoRA with non-zero B (a gaussian-init LoRA is exactly the base: no work to hide)."""
    import torch
    from diffusers import UNet2DConditionModel

    from hardgen.models.control_lora import (
        add_control_lora,
        save_control_lora,
        widen_conv_in,
    )

    out = work / "lora"
    if not (out / "pytorch_lora_weights.safetensors").is_file():
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        widen_conv_in(unet, 1)
        add_control_lora(unet, "bench", "half_skip_attn", rank, conv_in_rank)
        torch.manual_seed(0)
        with torch.no_grad():
            for name, param in unet.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.01)
        save_control_lora(out, unet, "bench")
    return out / "pytorch_lora_weights.safetensors"


def _dataset(work: Path, n: int, resolution: int) -> tuple[Path, Path]:
    """n image / mask / canny-condition triples in a conditions table and a manifest (as the workflow writes)."""
    import cv2
    import numpy as np
    import pandas as pd

    from hardgen.core.io import write_image, write_mask

    root = work / f"data-{resolution}"
    if (root / "conditions.csv").is_file():
        return root / "conditions.csv", root / "manifest.csv"
    rng = np.random.default_rng(0)
    manifest, conditions = [], []
    for k in range(n):
        yy, xx = np.mgrid[0:resolution, 0:resolution]
        image = rng.integers(40, 200, size=(resolution, resolution, 3)).astype(np.uint8)
        mask = ((yy - resolution / 2) / (resolution / 5 + k % 3)) ** 2 + ((xx - resolution / 2) / (resolution / 4)) ** 2 <= 1
        image[mask] = (image[mask] * 0.5 + 100).astype(np.uint8)
        condition = np.repeat(cv2.Canny(mask.astype(np.uint8) * 255, 100, 200)[..., None], 3, axis=2)
        sid = f"train-{k:03d}"
        write_image(root / "images" / f"{sid}.png", image)
        write_mask(root / "masks" / f"{sid}.png", mask)
        write_image(root / "conditions" / f"{sid}.png", condition)
        manifest.append({"id": sid, "split": "train", "image": str(root / "images" / f"{sid}.png"),
                         "mask": str(root / "masks" / f"{sid}.png"), "width": resolution, "height": resolution,
                         "fg_fraction": float(mask.mean())})
        conditions.append({"sample_id": f"real-{sid}", "source_id": sid, "kind": "real",
                           "condition": str(root / "conditions" / f"{sid}.png"), "mask": str(root / "masks" / f"{sid}.png")})
    pd.DataFrame(manifest).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame(conditions).to_csv(root / "conditions.csv", index=False)
    return root / "conditions.csv", root / "manifest.csv"


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------- generation
def generation(args: argparse.Namespace, work: Path, resolution: int) -> list[dict[str, Any]]:
    """Images per second of the three pipelines, interleaved rounds, best round each."""
    import numpy as np
    import torch
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetPipeline,
        UniPCMultistepScheduler,
    )
    from PIL import Image

    from hardgen.generator.generate import load_generation_pipeline, pipeline_renderer
    from hardgen.models.sampling import unit_to_uint8

    base = _base(work, args.sd15)
    lora = _lora(work, base)
    dtype = _torch_dtype(args.dtype)
    # one condition array per sample (distinct objects: each is VAE-encoded, as at generation.per_mask 1)
    conditions = [np.zeros((resolution, resolution, 3), np.uint8) for _ in range(args.batch)]
    for k, c in enumerate(conditions):
        c[resolution // 4: 3 * resolution // 4, resolution // 4 + k % 4] = 255
    renderers, pipes = {}, {}
    for name, fuse in (("control_lora", True), ("control_lora_unfused", False)):
        pipe = pipes[name] = load_generation_pipeline(base, lora, device=args.device, dtype=dtype, fuse=fuse)
        renderers[name] = pipeline_renderer(pipe, prompt=PROMPT, resolution=resolution, steps=args.steps,
                                            guidance_scale=1.0, condition_scale=1.0)
    stock = load_generation_pipeline(base, lora, device=args.device, dtype=dtype, fuse=False)
    controlnet = ControlNetModel.from_unet(
        _plain_unet(base, dtype), conditioning_embedding_out_channels=_cn_channels(stock.vae)
    ).to(args.device, dtype)
    cn_pipe = StableDiffusionControlNetPipeline(
        vae=stock.vae, text_encoder=stock.text_encoder, tokenizer=stock.tokenizer,
        unet=_plain_unet(base, dtype).to(args.device), controlnet=controlnet,
        scheduler=UniPCMultistepScheduler.from_config(stock.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    cn_pipe.set_progress_bar_config(disable=True)
    del stock

    def controlnet_render(images, generators):
        with torch.inference_mode():
            out = cn_pipe(prompt=[PROMPT] * len(images), image=[Image.fromarray(c) for c in images],
                          num_inference_steps=args.steps, guidance_scale=1.0, generator=generators,
                          height=resolution, width=resolution, output_type="np")
        return unit_to_uint8(out.images)  # the same uint8 images as the Control-LoRA renderers return

    renderers["controlnet"] = controlnet_render
    flops = _step_flops(renderers, cn_pipe, base, lora, args, resolution, dtype)
    on_cpu = torch.device(args.device).type == "cpu"
    parts: dict[str, float] = {}
    if on_cpu:  # where the time goes (forward hooks; a GPU would need a sync per call, which changes the timing)
        for pipe, modules in ((pipes["control_lora"], ("unet", "vae_encode", "vae_decode")),
                              (pipes["control_lora_unfused"], ("unet", "vae_encode", "vae_decode")),
                              (cn_pipe, ("unet", "controlnet", "vae_decode"))):
            for part in modules:
                module = {"unet": pipe.unet, "controlnet": getattr(pipe, "controlnet", None),
                          "vae_encode": pipe.vae.encoder, "vae_decode": pipe.vae.decoder}[part]
                _time_calls(module, part, parts)
    best = {name: (float("inf"), float("inf"), {}) for name in renderers}  # wall s, CPU s, parts of that round
    for round_ in range(args.repeats + 1):  # the first round warms up (allocations, kernel selection)
        for name, render in renderers.items():
            generators = [torch.Generator("cpu").manual_seed(k) for k in range(args.batch)]
            parts.clear()
            _sync(args.device)
            start, cpu_start = time.perf_counter(), time.process_time()
            render(conditions, generators)
            _sync(args.device)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if round_ > 0:
                best[name] = ((wall, best[name][1], dict(parts)) if wall < best[name][0] else best[name])
                best[name] = (best[name][0], min(best[name][1], cpu), best[name][2])
    peak = _peak_flops(args.device, args.dtype)
    rows = []
    nan = float("nan")
    for name, (seconds, cpu, spent) in best.items():
        achieved = flops[name] * args.steps / seconds  # model FLOPs per second while sampling the batch
        row = {"pipeline": name, "images_per_s": args.batch / seconds,
               "cpu_images_per_s": args.batch / cpu if on_cpu else nan,
               "tflops_per_s": achieved / 1e12, "mfu": achieved / peak if peak else nan,
               "gflop_per_step": flops[name] / 1e9}
        for part in ("unet", "controlnet", "vae_encode", "vae_decode"):
            row[f"{part}_s"] = spent.get(part, 0.0) if on_cpu else nan
        row["other_s"] = seconds - sum(spent.values()) if on_cpu else nan
        rows.append(row)
    return rows


def _time_calls(module, part: str, parts: dict[str, float]) -> None:
    """Add the wall seconds of every ``module`` call to ``parts[part]`` (forward hooks)."""
    started: list[float] = []
    module.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))

    def done(*_):
        parts[part] = parts.get(part, 0.0) + time.perf_counter() - started.pop()

    module.register_forward_hook(done)


#: Dense fp16/bf16 tensor-core peaks (FLOP/s) by device name, from the vendors' data sheets.
PEAK_FLOPS = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
              "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12, "V100": 125e12}


def _peak_flops(device: str, dtype: str) -> float | None:
    """The card's dense half-precision peak, looked up from its name (None on CPU, in fp32 or for unknown cards)."""
    import torch

    if torch.device(device).type != "cuda" or dtype == "fp32":
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, value in PEAK_FLOPS.items():  # most specific names first
        if key in name:
            return value
    return None


def _step_flops(renderers, cn_pipe, base, lora, args, resolution, dtype) -> dict[str, float]:
    """FLOPs of one denoising step of the batch per pipeline (UNet call; + ControlNet call), counted by torch.

    On the CPU counted with the math attention kernel: the counter has no formula for the CPU flash-attention
    kernel and would leave attention out."""
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from hardgen.generator.generate import load_generation_pipeline

    b, latent = args.batch, resolution // 2 ** (len(cn_pipe.vae.config.block_out_channels) - 1)
    device = torch.device(args.device)
    text = torch.zeros(b, 77, cn_pipe.unet.config.cross_attention_dim, device=device, dtype=dtype)
    x = torch.zeros(b, 4, latent, latent, device=device, dtype=dtype)
    t = torch.full((b,), 500, device=device)
    out = {}
    attention = sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()
    with torch.inference_mode(), attention:
        for name, fuse in (("control_lora", True), ("control_lora_unfused", False)):
            unet = load_generation_pipeline(base, lora, device=args.device, dtype=dtype, fuse=fuse).unet
            with FlopCounterMode(display=False) as counter:
                unet(torch.cat([x, x], 1), t, encoder_hidden_states=text)
            out[name] = float(counter.get_total_flops())
        cond = torch.zeros(b, 3, resolution, resolution, device=device, dtype=dtype)
        with FlopCounterMode(display=False) as counter:
            down, mid = cn_pipe.controlnet(x, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
            cn_pipe.unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid)
        out["controlnet"] = float(counter.get_total_flops())
    return out


def _plain_unet(base: Path, dtype):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=dtype)


def _cn_channels(vae) -> tuple[int, ...]:
    n_down = len(vae.config.block_out_channels) - 1
    return (16, 32, 96, 256)[: n_down + 1]


# --------------------------------------------------------------------------------------------- training
def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


_LIBRARIES_MB = 0.0  # resident memory once the libraries are imported (set in the child)


def _peak_mem_mb(device: str) -> float:
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _status_mb("VmHWM") - _LIBRARIES_MB


def train_child(args: argparse.Namespace, work: Path, resolution: int, method: str) -> dict[str, Any]:
    """One training method in this (fresh) process."""
    global _LIBRARIES_MB
    import diffusers  # noqa: F401  (the libraries every method imports, before the baseline is read)
    import timm  # noqa: F401

    import hardgen.generator.train  # noqa: F401

    _LIBRARIES_MB = _status_mb("VmRSS")
    if method in ("plain", "hard", "feedback"):
        return _trainer_method(args, work, resolution, method)
    return _loop_method(args, work, resolution, method)


def _trainer_method(args: argparse.Namespace, work: Path, resolution: int, mode: str) -> dict[str, Any]:
    from hardgen.generator.train import TrainSettings, train_control_lora

    base = _base(work, args.sd15)
    conditions_csv, manifest_csv = _dataset(work, max(8, args.train_batch * 2), resolution)
    extra: dict[str, Any] = {}
    if mode != "plain":
        extra["init_lora"] = str(_lora(work, base))
    if mode == "hard":
        extra.update(backbones={k: {"name": BACKBONES[k], "input_size": 64} for k in ("cnn", "vit")},
                     prototypes={k: str(_prototype(work, manifest_csv, k, resolution)) for k in ("cnn", "vit")})
    if mode == "feedback":
        extra.update(segmenter={"arch": "Unet", "encoder": "resnet18", "encoder_weights": None},
                     segmenter_weights=str(_segmenter(work)), segment_size=64)
    settings = TrainSettings(
        base=str(base), conditions_csv=str(conditions_csv), manifest_csv=str(manifest_csv),
        out_dir=str(work / f"train-{mode}"), resolution=resolution, prompt=PROMPT, mode=mode,
        steps=args.train_steps, batch_size=args.train_batch, learning_rate=1e-4, rank=16, conv_in_rank=64,
        mixed_precision={"fp32": "no"}.get(args.dtype, args.dtype), checkpointing_steps=0,
        validation_samples=1, validation_inference_steps=1, calibration_samples=8, seed=0, **extra,
    )
    summary = train_control_lora(settings)
    return {"method": mode, "s_per_step": summary["timings"]["train_s"] / summary["steps"],
            "peak_mem_mb": _peak_mem_mb(args.device), "trainable_params": summary["trainable_parameters"]}


def _prototype(work: Path, manifest_csv: Path, key: str, resolution: int) -> Path:
    import pandas as pd

    from hardgen.scoring.features import BackboneSpec, compute_prototype

    out = work / f"proto-{key}-{resolution}.safetensors"
    if not out.is_file():
        compute_prototype(pd.read_csv(manifest_csv), BackboneSpec(name=BACKBONES[key], input_size=64), out,
                          batch_size=8, resolution=resolution)
    return out


def _segmenter(work: Path) -> Path:
    import torch

    from hardgen.core.weights import save_state_dict
    from hardgen.segmentation.build import SegmenterSpec, build_segmenter

    out = work / "segmenter.safetensors"
    if not out.is_file():
        torch.manual_seed(0)
        save_state_dict(out, build_segmenter(SegmenterSpec(arch="Unet", encoder="resnet18")).state_dict())
    return out


def _loop_method(args: argparse.Namespace, work: Path, resolution: int, method: str) -> dict[str, Any]:
    """The same minimal step for a Control-LoRA (cached condition latents) and a ControlNet."""
    import torch
    import torch.nn.functional as F
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDPMScheduler,
        UNet2DConditionModel,
    )
    from diffusers.training_utils import cast_training_params

    from hardgen.models.control_lora import (
        add_control_lora,
        encode_condition,
        widen_conv_in,
    )

    base, device, dtype = _base(work, args.sd15), torch.device(args.device), _torch_dtype(args.dtype)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet").to(device, dtype).requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae").to(device, dtype).requires_grad_(False)
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    g = torch.Generator("cpu").manual_seed(0)
    b = args.train_batch
    images = (torch.rand(b, 3, resolution, resolution, generator=g) * 2 - 1).to(device, dtype)
    conditions = (torch.rand(b, 3, resolution, resolution, generator=g) > 0.5).to(device, dtype)
    text = torch.randn(b, 77, unet.config.cross_attention_dim, generator=g).to(device, dtype)
    with torch.no_grad():
        latents = encode_condition(vae, images, mode="mode")
        condition_latents = encode_condition(vae, conditions * 2 - 1, mode="mode")
    if method == "plain_loop":
        model = widen_conv_in(unet, 1)
        add_control_lora(model, "bench", "half_skip_attn", 16, 64)

        def forward(noisy, t):
            return model(torch.cat([noisy, condition_latents], 1), t, encoder_hidden_states=text).sample
    elif method == "controlnet":
        model = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=_cn_channels(vae)).to(device)

        def forward(noisy, t):
            down, mid = model(noisy, t, encoder_hidden_states=text, controlnet_cond=conditions, return_dict=False)
            return unet(noisy, t, encoder_hidden_states=text, down_block_additional_residuals=[r.to(dtype) for r in down],
                        mid_block_additional_residual=mid.to(dtype)).sample
    else:
        raise ValueError(f"unknown training method {method!r}")
    cast_training_params(model, dtype=torch.float32)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for step in range(args.train_steps + 1):
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=device)
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = F.mse_loss(forward(scheduler.add_noise(latents, noise, t), t).float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step:  # the first step warms up
            times.append(time.perf_counter() - start)
    return {"method": method, "s_per_step": sorted(times)[len(times) // 2], "peak_mem_mb": _peak_mem_mb(args.device),
            "trainable_params": sum(p.numel() for p in params)}


def training(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    rows = []
    for method in ("plain", "hard", "feedback", "plain_loop", "controlnet"):
        command = [sys.executable, __file__, "--child", f"training:{method}", "--work", str(work),
                   "--device", args.device, "--dtype", args.dtype, "--train-batch", str(args.train_batch),
                   "--train-steps", str(args.train_steps), "--threads", str(args.threads)]
        if args.sd15:
            command.append("--sd15")
        if args.resolution:
            command += ["--resolution", str(args.resolution)]
        result = subprocess.run(command, capture_output=True, text=True, env=_env(args))
        if result.returncode != 0:
            raise RuntimeError(f"training child {method} failed:\n{result.stderr[-4000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"  training {method}: {rows[-1]}", file=sys.stderr)
    return rows


def _env(args: argparse.Namespace) -> dict[str, str]:
    threads = str(args.threads)
    return dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, HF_HUB_OFFLINE="1",
                TOKENIZERS_PARALLELISM="false")


# ---------------------------------------------------------------------------------------------- scoring
def scoring(args: argparse.Namespace, work: Path, resolution: int) -> list[dict[str, Any]]:
    import pandas as pd

    from hardgen.scoring.features import BackboneSpec
    from hardgen.scoring.score import score_samples_with_features

    _, manifest_csv = _dataset(work, 64, resolution)
    pairs = pd.read_csv(manifest_csv).rename(columns={"id": "sample_id"})
    rows = []
    for key, name in BACKBONES.items():
        spec = BackboneSpec(name=name, input_size=64 if not args.sd15 else 224)
        proto = work / f"proto-score-{key}.safetensors"
        _prototype_for(pairs, spec, proto, resolution)
        score_samples_with_features(pairs.head(8), spec, proto, "bench", batch_size=16, device=args.device,
                                    resolution=resolution)
        start = time.perf_counter()
        score_samples_with_features(pairs, spec, proto, "bench", batch_size=16, device=args.device,
                                    resolution=resolution)
        rows.append({"backbone": key, "images_per_s": len(pairs) / (time.perf_counter() - start)})
    return rows


def _prototype_for(pairs, spec, out: Path, resolution: int) -> None:
    from hardgen.scoring.features import compute_prototype

    if not out.is_file():
        compute_prototype(pairs.rename(columns={"sample_id": "id"}).assign(split="train"), spec, out,
                          batch_size=16, resolution=resolution)


# ------------------------------------------------------------------------------------------------- main
def plot(tables: dict[str, Any], out_png: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(k, v) for k, v in tables.items() if v is not None]
    figure = Figure(figsize=(4.2 * len(panels), 3.2))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    spec = {"generation": ("pipeline", "images_per_s", "images / s (higher is better)"),
            "training": ("method", "s_per_step", "s / step (lower is better)"),
            "scoring": ("backbone", "images_per_s", "images / s (higher is better)")}
    for ax, (name, frame) in zip(axes, panels):
        label, value, title = spec[name]
        ax.bar(frame[label], frame[value])
        ax.set_title(f"{name}: {title}", fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    FigureCanvasAgg(figure)
    figure.savefig(out_png, dpi=100, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    resolution = args.resolution or (512 if args.sd15 else 64)
    if args.child:
        kind, method = args.child.split(":", 1)
        print(json.dumps(train_child(args, args.work, resolution, method)))
        return 0
    import pandas as pd

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        tables: dict[str, Any] = {"generation": None, "training": None, "scoring": None}
        for name, run in (("generation", lambda: generation(args, work, resolution)),
                          ("training", lambda: training(args, work)),
                          ("scoring", lambda: scoring(args, work, resolution))):
            if name in args.skip:
                continue
            start = time.perf_counter()
            tables[name] = pd.DataFrame(run())
            tables[name].to_csv(args.out / f"{name}{args.tag}.csv", index=False)
            print(f"\n{name} ({time.perf_counter() - start:.0f} s):\n{tables[name].to_string(index=False)}")
    if tables["generation"] is not None:
        g = tables["generation"].set_index("pipeline")["images_per_s"]
        print(f"\ncontrol_lora / controlnet = {g['control_lora'] / g['controlnet']:.2f}, "
              f"fused / unfused = {g['control_lora'] / g['control_lora_unfused']:.2f}")
        f = tables["generation"].set_index("pipeline")["gflop_per_step"]
        print(f"FLOP ceiling per denoising step (compute-bound): {f['controlnet'] / f['control_lora']:.2f} "
              "(benchmarks/flop_ceiling.py: per whole call, any base and resolution)")
        c = tables["generation"].set_index("pipeline")["cpu_images_per_s"]
        if c.notna().all():
            print(f"by CPU time: control_lora / controlnet = {c['control_lora'] / c['controlnet']:.2f}, "
                  f"fused / unfused = {c['control_lora'] / c['control_lora_unfused']:.2f}")
    plot(tables, args.out / f"bench{args.tag}.png")
    print(json.dumps({k: v.to_dict("records") for k, v in tables.items() if v is not None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
