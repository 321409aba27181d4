"""Training-step time and memory: Control-LoRA (control-lora-v3 design) vs a diffusers ControlNet.

Both methods train on the same frozen base UNet (random init from a config: no downloads) at the same
resolution and batch size, with AdamW. A Control-LoRA step VAE-encodes the condition (its real per-step
cost) and runs the widened UNet with LoRA; a ControlNet step runs ``ControlNetModel.from_unet(unet)`` on
the pixel-space condition and feeds its residuals to the frozen UNet. Target-image latents are encoded
once beforehand, since both methods pay that cost identically.

Memory: on CUDA, the peak allocated memory of each method's warm-up steps, and that peak minus the memory
already resident before them (all models, both methods, stay loaded). On CPU (no allocator statistics), the
bytes that matter for a GPU budget: trainable parameters, their gradients and AdamW state, and the
activations autograd saves for the backward pass (frozen weights excluded, shared storages counted once).

    python benchmarks/control_lora_vs_controlnet.py                        # tiny model, CPU
    python benchmarks/control_lora_vs_controlnet.py --sd15 --resolution 512 --batch 4 --device cuda \\
        --mixed-precision fp16

The last line of stdout is a JSON object with all figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDPMScheduler,
    UNet2DConditionModel,
)
from diffusers.training_utils import cast_training_params
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hardgen.models.control_lora import (  # noqa: E402
    add_control_lora,
    encode_condition,
    widen_conv_in,
)

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15", action="store_true", help="SD1.5 architecture (random init) instead of tiny")
    parser.add_argument("--resolution", type=int, default=None, help="image size (default 64 tiny, 512 sd15)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method first (memory is measured here)")
    parser.add_argument("--mixed-precision", choices=sorted(DTYPES), default="no")
    parser.add_argument("--preset", default="half_skip_attn")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--conv-in-rank", type=int, default=64)
    return parser.parse_args(argv)


def build_base(sd15: bool, device: torch.device, dtype: torch.dtype) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """Frozen random-init UNet and VAE from the repository's offline config files."""
    unet_config = REPO / "resources" / ("sd15-unet" if sd15 else "tiny-sd/unet") / "config.json"
    vae_config = REPO / "resources" / ("sd15-vae" if sd15 else "tiny-sd/vae") / "config.json"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(json.loads(unet_config.read_text()))
    vae = AutoencoderKL.from_config(json.loads(vae_config.read_text()))
    for model in (unet, vae):
        model.requires_grad_(False)
        model.to(device)
        if dtype != torch.float32:  # casting an fp32 model to fp32 only triggers a diffusers warning
            model.to(dtype)
    return unet, vae


class SavedActivations:
    """Counts the bytes autograd saves for backward, excluding given (frozen/trainable) parameter storages."""

    def __init__(self, exclude: list[torch.Tensor]) -> None:
        self.excluded = {p.untyped_storage().data_ptr() for p in exclude}
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.excluded:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())


class Method:
    """One training method: a step closure, its trainable parameters and an AdamW optimizer."""

    def __init__(self, name: str, step: Callable[[], torch.Tensor], trainable: list[torch.nn.Parameter],
                 frozen: list[torch.Tensor]) -> None:
        self.name, self.step_fn, self.trainable, self.frozen = name, step, trainable, frozen
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-5)
        self.times: list[float] = []
        self.figures: dict[str, float] = {}

    def step(self, args: argparse.Namespace, device: torch.device, saved: SavedActivations | None = None) -> float:
        """One optimizer step; returns its wall time (CUDA synchronised)."""
        autocast = (
            torch.autocast(device.type, dtype=DTYPES[args.mixed_precision])
            if args.mixed_precision != "no"
            else nullcontext()
        )
        hooks = torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t) if saved else nullcontext()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast, hooks:
            loss = self.step_fn()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start


def benchmark(methods: list[Method], args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, float]]:
    """Memory per method (warm-up steps, one method at a time), then time with the methods interleaved.

    Interleaving makes both methods see the same machine load (the CPU may be shared); the step time
    reported is the median.
    """
    for method in methods:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            resident = torch.cuda.memory_allocated(device)
        saved = SavedActivations(method.frozen + list(method.trainable))
        for index in range(max(args.warmup, 1)):
            method.step(args, device, saved if index == 0 else None)
        state_bytes = sum(
            t.numel() * t.element_size()
            for state in method.optimizer.state.values()
            for t in state.values()
            if torch.is_tensor(t)
        )
        param_bytes = sum(p.numel() * p.element_size() for p in method.trainable)
        method.figures = {
            "trainable_params": sum(p.numel() for p in method.trainable),
            "trainable_state_mib": (2 * param_bytes + state_bytes) / 2**20,  # weights + grads + AdamW moments
            "saved_activations_mib": saved.nbytes / 2**20,
        }
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            method.figures["peak_allocated_mib"] = peak / 2**20
            # what the step needs beyond the models already resident (grads, AdamW state, activations)
            method.figures["step_extra_mib"] = (peak - resident) / 2**20
    for _ in tqdm(range(args.steps), desc="timed steps (interleaved)", file=sys.stderr):
        for method in methods:
            method.times.append(method.step(args, device))
    return {m.name: {"step_s": statistics.median(m.times), **m.figures} for m in methods}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    resolution = args.resolution or (512 if args.sd15 else 64)
    weight_dtype = DTYPES[args.mixed_precision]
    unet, vae = build_base(args.sd15, device, weight_dtype)
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if resolution % vae_factor:
        raise ValueError(f"--resolution must be a multiple of {vae_factor}")

    g = torch.Generator(device="cpu").manual_seed(0)
    batch = args.batch
    images = (torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1).to(device, weight_dtype)
    conditions = (torch.rand(batch, 3, resolution, resolution, generator=g) > 0.5).to(device, weight_dtype)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g).to(device, weight_dtype)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    with torch.no_grad():
        latents = encode_condition(vae, images, mode="sample")  # the shared target latents, encoded once

    def noisy_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
        return scheduler.add_noise(latents, noise, timesteps), noise, timesteps

    # Control-LoRA: widened conv_in + LoRA; the condition goes through the VAE every step.
    lora_unet = widen_conv_in(copy.deepcopy(unet), 1)
    add_control_lora(lora_unet, "bench", args.preset, args.rank, args.conv_in_rank)
    cast_training_params(lora_unet, dtype=torch.float32)  # fp32 master weights under mixed precision
    lora_params = [p for p in lora_unet.parameters() if p.requires_grad]
    lora_unet.train()

    def lora_step() -> torch.Tensor:
        noisy, noise, timesteps = noisy_batch()
        with torch.no_grad():
            condition_latents = encode_condition(vae, conditions * 2 - 1, mode="sample")
        pred = lora_unet(torch.cat([noisy, condition_latents], 1), timesteps, encoder_hidden_states=text).sample
        return torch.nn.functional.mse_loss(pred.float(), noise.float())

    with torch.no_grad():
        cached_condition = encode_condition(vae, conditions * 2 - 1, mode="sample")

    def lora_cached_step() -> torch.Tensor:
        """The same step with condition latents encoded once (what a latent cache would give)."""
        noisy, noise, timesteps = noisy_batch()
        pred = lora_unet(torch.cat([noisy, cached_condition], 1), timesteps, encoder_hidden_states=text).sample
        return torch.nn.functional.mse_loss(pred.float(), noise.float())

    frozen_lora = [p for p in lora_unet.parameters() if not p.requires_grad] + list(vae.parameters())
    control_lora = Method("control_lora", lora_step, lora_params, frozen_lora)
    control_lora_cached = Method("cl_cached_cond", lora_cached_step, lora_params, frozen_lora)

    # ControlNet: trainable copy of the encoder; its conditioning embedding downsamples by the VAE factor.
    n_down = int(math.log2(vae_factor))
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(16, 32, 96, 256)[: n_down + 1]
    )
    controlnet.to(device)  # from_unet copies the base's dtype; the trainable copy must be fp32 master weights
    cast_training_params(controlnet, dtype=torch.float32)
    controlnet.train()
    controlnet_params = list(controlnet.parameters())

    def controlnet_step() -> torch.Tensor:
        noisy, noise, timesteps = noisy_batch()
        down, mid = controlnet(
            noisy, timesteps, encoder_hidden_states=text, controlnet_cond=conditions, return_dict=False
        )
        pred = unet(
            noisy,
            timesteps,
            encoder_hidden_states=text,
            down_block_additional_residuals=[r.to(weight_dtype) for r in down],
            mid_block_additional_residual=mid.to(weight_dtype),
        ).sample
        return torch.nn.functional.mse_loss(pred.float(), noise.float())

    frozen_cn = list(unet.parameters()) + list(vae.parameters())
    results = benchmark(
        [control_lora, control_lora_cached, Method("controlnet", controlnet_step, controlnet_params, frozen_cn)],
        args,
        device,
    )

    setting = {
        "model": "sd15" if args.sd15 else "tiny",
        "resolution": resolution,
        "batch": batch,
        "device": str(device),
        "mixed_precision": args.mixed_precision,
        "lora": f"{args.preset} r{args.rank} conv_in r{args.conv_in_rank}",
        "torch_threads": torch.get_num_threads(),
    }
    print("setting: " + ", ".join(f"{k}={v}" for k, v in setting.items()))
    columns = list(results["control_lora"])
    print(f"{'method':<16}" + "".join(f"{c:>24}" for c in columns))
    for method, figures in results.items():
        print(f"{method:<16}" + "".join(f"{figures.get(c, float('nan')):>24,.3f}" for c in columns))
    print(json.dumps({"setting": setting, "results": results}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
