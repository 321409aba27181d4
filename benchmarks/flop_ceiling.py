"""What caps the Control-LoRA / ControlNet generation ratio: model FLOPs per call, counted on meta tensors.

A fused Control-LoRA sampling step is one base UNet call with a wider ``conv_in``; a ControlNet step is the same
UNet plus a ControlNet (a copy of the UNet's encoder and mid block, and a conditioning embedding run at pixel
resolution every step). Where the hardware is compute-bound, the best ratio a Control-LoRA can reach is therefore
the ratio of these FLOPs, whatever its implementation. This script counts them with ``torch.utils.flop_counter``
on the meta device (no weights, no arithmetic: SD1.5 at 512 px counts in seconds on a laptop), from the configs
of any diffusers Stable Diffusion folder, and prints per step and per whole call (``steps`` UNet steps, plus the
Control-LoRA's once-per-image condition encode and both pipelines' decode):

    python benchmarks/flop_ceiling.py                                         # the demo's tiny base, 64 px
    python benchmarks/flop_ceiling.py --base resources/sd15-random --resolution 512

The text encoder and the scheduler are left out (the same in both pipelines, and small). Attention is counted
with the math kernel (the counter has formulas for its matrix products).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

#: diffusers' default ControlNet conditioning-embedding widths (SD1.5 ControlNets use these)
CN_EMBEDDING = (16, 32, 96, 256)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=REPO / "resources" / "tiny-sd-polyp",
                        help="a diffusers SD folder (only its unet/ and vae/ config.json are read)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    return parser.parse_args(argv)


def _config(base: Path, part: str) -> dict:
    path = base / part / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {part} config in --base {base}")
    return json.loads(path.read_text())


def _latent_side(base: Path, resolution: int) -> int:
    return resolution // 2 ** (len(_config(base, "vae")["block_out_channels"]) - 1)


def _embedding(base: Path) -> tuple[int, ...]:
    """The ControlNet conditioning embedding's widths: one stride-2 stage per VAE downsampling."""
    return CN_EMBEDDING[: len(_config(base, "vae")["block_out_channels"])]


def _meta_inputs(base: Path, resolution: int):
    """One image's noisy latent, timestep, 77-token text embedding and condition image, on the meta device."""
    import torch

    unet_config = _config(base, "unet")
    side = _latent_side(base, resolution)
    with torch.device("meta"):
        return (torch.zeros(1, unet_config["in_channels"], side, side), torch.full((1,), 500),
                torch.zeros(1, 77, unet_config["cross_attention_dim"]), torch.zeros(1, 3, resolution, resolution))


def _counted(fn) -> float:
    """The FLOPs torch counts while ``fn()`` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def count_flops(base: Path, resolution: int) -> dict[str, float]:
    """FLOPs per image of one call of each part, at ``resolution`` px, on meta tensors.

    Keys: ``unet`` (the stock UNet), ``control_lora_unet`` (its ``conv_in`` widened to take the condition latent,
    i.e. a fused Control-LoRA), ``unet_with_residuals`` (the UNet as a ControlNet pipeline calls it),
    ``controlnet`` (``ControlNetModel.from_unet`` with diffusers' default embedding), ``vae_encode`` and
    ``vae_decode``.
    """
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from torch.nn.attention import SDPBackend, sdpa_kernel

    unet_config, vae_config = _config(base, "unet"), _config(base, "vae")
    latent_ch = unet_config["in_channels"]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        cl_unet = UNet2DConditionModel.from_config({**unet_config, "in_channels": 2 * latent_ch})
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=_embedding(base),
                                               load_weights_from_unet=False)
        vae = AutoencoderKL.from_config(vae_config)
    x, t, text, image = _meta_inputs(base, resolution)

    out: dict[str, float] = {}
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        out["unet"] = _counted(lambda: unet(x, t, encoder_hidden_states=text))
        out["control_lora_unet"] = _counted(lambda: cl_unet(torch.cat([x, x], 1), t, encoder_hidden_states=text))
        down, mid = controlnet(x, t, encoder_hidden_states=text, controlnet_cond=image, return_dict=False)
        out["controlnet"] = _counted(lambda: controlnet(x, t, encoder_hidden_states=text, controlnet_cond=image,
                                                     return_dict=False))
        out["unet_with_residuals"] = _counted(lambda: unet(x, t, encoder_hidden_states=text,
                                                        down_block_additional_residuals=down,
                                                        mid_block_additional_residual=mid))
        out["vae_encode"] = _counted(lambda: vae.encode(image))
        out["vae_decode"] = _counted(lambda: vae.decode(x))
    return out


def count_training_flops(base: Path, resolution: int, preset: str = "half_skip_attn", rank: int = 16,
                         conv_in_rank: int = 64) -> dict[str, float]:
    """FLOPs per image of one training step's forward and backward (the optimizer left out), on meta tensors.

    ``control_lora``: the widened UNet with a Control-LoRA (peft, unfused as it trains) reading the cached
    condition latent; ``controlnet``: a trainable ``ControlNetModel.from_unet`` feeding the frozen UNet. Both
    backpropagate an MSE on the UNet output, as `make bench`'s minimal loops do.
    """
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from hardgen.models.control_lora import add_control_lora, widen_conv_in

    unet_config = _config(base, "unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config).requires_grad_(False)
        lora_unet = UNet2DConditionModel.from_config(unet_config)
        widen_conv_in(lora_unet, 1)
        add_control_lora(lora_unet, "flops", preset, rank, conv_in_rank)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=_embedding(base),
                                               load_weights_from_unet=False)
    x, t, text, image = _meta_inputs(base, resolution)

    def step(forward) -> float:  # an MSE on the UNet output, backpropagated
        return _counted(lambda: forward().float().pow(2).mean().backward())

    def controlnet_forward():
        down, mid = controlnet(x, t, encoder_hidden_states=text, controlnet_cond=image, return_dict=False)
        return unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample

    with sdpa_kernel(SDPBackend.MATH):
        return {"control_lora": step(lambda: lora_unet(torch.cat([x, x], 1), t, encoder_hidden_states=text).sample),
                "controlnet": step(controlnet_forward)}


def ceilings(parts: dict[str, float], steps: int) -> dict[str, float]:
    """The Control-LoRA / ControlNet FLOP ratio per denoising step and per whole call of ``steps`` steps."""
    cl_step = parts["control_lora_unet"]
    cn_step = parts["unet_with_residuals"] + parts["controlnet"]
    cl_call = steps * cl_step + parts["vae_encode"] + parts["vae_decode"]
    cn_call = steps * cn_step + parts["vae_decode"]
    return {"controlnet_share_of_unet": parts["controlnet"] / parts["unet"], "step_ratio": cn_step / cl_step,
            "call_ratio": cn_call / cl_call}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    parts = count_flops(args.base, args.resolution)
    print(f"{args.base.name} at {args.resolution} px, GFLOP per image per call:")
    for name, value in parts.items():
        print(f"  {name:<22} {value / 1e9:10.3f}")
    limits = ceilings(parts, args.steps)
    print(f"ControlNet / UNet: {limits['controlnet_share_of_unet']:.3f}")
    print(f"FLOP ceiling of control_lora / controlnet: {limits['step_ratio']:.3f} per step, "
          f"{limits['call_ratio']:.3f} per call of {args.steps} steps")
    train = count_training_flops(args.base, args.resolution)
    print(f"training step (forward + backward), GFLOP per image: control_lora {train['control_lora'] / 1e9:.3f}, "
          f"controlnet {train['controlnet'] / 1e9:.3f} (ratio {train['controlnet'] / train['control_lora']:.3f})")


if __name__ == "__main__":
    main()
