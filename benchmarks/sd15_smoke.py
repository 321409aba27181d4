"""SD1.5-shaped smoke run: random-init SD1.5 architecture through hardgen's real training and generation code.

No hub access is needed: the pipeline is built from ``resources/sd15-random`` (SD1.5's UNet/VAE configs, a
CLIP ViT-L/14-sized text encoder, SD1.5's DDPM schedule, the tiny local tokenizer) with random weights, saved
in diffusers format, and then read back through ``from_pretrained(dir)`` exactly as a real run reads SD1.5.
Stages, each in its own process (like the Snakemake jobs), so its peak memory is its own:

* ``base``     build and save the random SD1.5 pipeline (safetensors, ~4 GB fp32)
* ``data``     demo PraNet dataset, conditions at ``--resolution``, one small timm prototype
* ``plain``    plain Control-LoRA training, ``--steps`` steps
* ``hard``     hardness fine-tuning of the plain LoRA, ``--hard-steps`` steps
* ``feedback`` (``--feedback``) segmenter-feedback fine-tuning with a random-init smp segmenter
* ``generate`` ``generate_shard`` of ``--images`` images with the hard (else plain) LoRA

For every stage it prints the wall time, s/step (training; the mean over the run, first step included),
images/s (generation) and the peak memory: peak RSS (``resource.getrusage``) on CPU, plus
``torch.cuda.max_memory_allocated`` on CUDA.

CPU (2 cores, ~3 min; ``--mixed-precision bf16`` works on CPU, fp16 does too but is ~40x slower there)::

    python benchmarks/sd15_smoke.py --workdir /tmp/hardgen-sd15 --resolution 128 --batch 1 --steps 2 \\
        --hard-steps 2 --images 2 --inference-steps 4

GPU::

    python benchmarks/sd15_smoke.py --device cuda --mixed-precision fp16 --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SD15_CONFIG = REPO / "resources" / "sd15-random"
TESTSETS = ["CVC-300", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "Kvasir"]
PROMPT = "an endoscopic image of a colon polyp"
BACKBONE = {"name": "resnet18", "pretrained": False, "checkpoint": None, "input_size": 64}
SEGMENTER = {"arch": "Unet", "encoder": "resnet18", "encoder_weights": None}
STAGES = ("base", "data", "plain", "hard", "feedback", "generate")
RESULT_TAG = "SD15_SMOKE_RESULT "


# ------------------------------------------------------------------------------------------ stages
def _settings(args: argparse.Namespace, work: Path, mode: str, **extra: Any):
    from hardgen.generator.train import TrainSettings

    steps = args.steps if mode == "plain" else args.hard_steps
    values = dict(
        base=str(work / "base"), conditions_csv=str(work / "conditions.csv"), manifest_csv=str(work / "manifest.csv"),
        out_dir=str(work / "lora" / mode), family="sd15", resolution=args.resolution, prompt=PROMPT, mode=mode,
        preset="half_skip_attn", rank=16, conv_in_rank=64, steps=steps, batch_size=args.batch,
        learning_rate=1e-4, mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        checkpointing_steps=0, validation_samples=1, validation_inference_steps=2, seed=0,
        calibration_samples=max(1, args.batch),
    )
    if mode != "plain":
        values["init_lora"] = str(work / "lora" / "plain" / "pytorch_lora_weights.safetensors")
    values.update(extra)
    return TrainSettings.from_dict(values, source="sd15_smoke")


def _train(args: argparse.Namespace, work: Path, mode: str) -> dict[str, Any]:
    from hardgen.generator.train import train_control_lora

    extra: dict[str, Any] = {}
    if mode == "hard":
        extra = {"backbones": {"cnn": dict(BACKBONE)}, "prototypes": {"cnn": str(work / "proto-cnn.safetensors")}}
    elif mode == "feedback":
        extra = {"segmenter": dict(SEGMENTER), "segmenter_weights": str(work / "segmenter.safetensors"),
                 "segment_size": 64}
    summary = train_control_lora(_settings(args, work, mode, **extra))
    timings = summary["timings"]
    return {
        "steps": summary["steps"],
        "s_per_step": timings["train_s"] / summary["steps"],
        "setup_s": timings["setup_s"],
        "calibration_s": timings.get("calibration_s"),
        "validation_s": timings["validation_s"],
        "final": summary["final"],
        "margins": summary["margins"],
        "trainable_parameters": summary["trainable_parameters"],
    }


def run_stage(stage: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One stage in this process; returns its figures (timings are added by the caller)."""
    if stage == "base":
        from hardgen.models.base_model import build_random_sd

        build_random_sd(SD15_CONFIG, work / "base", seed=0)
        sizes = {p.parent.name: p.stat().st_size for p in (work / "base").glob("*/*.safetensors")}
        return {"weights_gib": {k: round(v / 2**30, 3) for k, v in sorted(sizes.items())}}
    if stage == "data":
        from hardgen.data.conditioning import make_conditions, write_conditions_table
        from hardgen.data.demo import make_demo_dataset
        from hardgen.data.manifest import build_manifest, write_manifest
        from hardgen.scoring.features import BackboneSpec, compute_prototype

        n_train = max(4, args.images, args.batch)
        make_demo_dataset(work / "pranet", TESTSETS, n_train=n_train, n_test=1, min_size=96, max_size=160, seed=0)
        manifest = build_manifest(work / "pranet", TESTSETS)
        write_manifest(manifest, work / "manifest.csv")
        conditions = make_conditions(manifest, work / "conditions", "canny", 0, args.resolution, 0)
        write_conditions_table(conditions, work / "conditions.csv")
        # generation uses the first --images conditions
        write_conditions_table(conditions.sort_values("sample_id").head(args.images), work / "generate.csv")
        proto = compute_prototype(manifest, BackboneSpec.from_config("cnn", dict(BACKBONE)),
                                  work / "proto-cnn.safetensors", batch_size=4, resolution=args.resolution)
        if args.feedback:
            from hardgen.core.weights import save_state_dict
            from hardgen.segmentation.build import SegmenterSpec, build_segmenter

            model = build_segmenter(SegmenterSpec.from_config(dict(SEGMENTER), "cnn"))
            save_state_dict(work / "segmenter.safetensors", model.state_dict())
        return {"conditions": len(conditions), "prototype_n": proto["n"]}
    if stage in ("plain", "hard", "feedback"):
        return _train(args, work, stage)
    if stage == "generate":
        from hardgen.generator.generate import (
            GenerationSettings,
            GenerationShard,
            generate_shard,
            load_generation_pipeline,
        )
        from hardgen.models.sampling import Sampling

        variant = "hard" if (work / "lora" / "hard" / "pytorch_lora_weights.safetensors").is_file() else "plain"
        lora = work / "lora" / variant / "pytorch_lora_weights.safetensors"
        dtype = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}[args.mixed_precision]
        # the model load is timed separately (one extra load) so images/s can be given without it
        t0 = time.perf_counter()
        pipe = load_generation_pipeline(work / "base", lora, device=args.device, dtype=dtype)
        load_s = time.perf_counter() - t0
        del pipe
        out_dir = work / "generated" / variant
        if out_dir.exists():
            import shutil

            shutil.rmtree(out_dir)  # a rerun must render again, not resume
        t0 = time.perf_counter()
        table = generate_shard(GenerationShard(work / "base", lora, work / "generate.csv", 0, 1, out_dir, variant),
                               GenerationSettings(Sampling(PROMPT, args.resolution, args.inference_steps),
                                                  batch_size=args.batch, device=args.device, dtype=dtype))
        total_s = time.perf_counter() - t0
        from hardgen.core.io import read_rgb

        first = read_rgb(table["image"].iloc[0])
        return {"variant": variant, "images": len(table), "inference_steps": args.inference_steps,
                "load_s": load_s, "generate_shard_s": total_s, "images_per_s": len(table) / total_s,
                "images_per_s_without_load": len(table) / max(total_s - load_s, 1e-9),
                "image_shape": list(first.shape), "image_std": float(first.std())}
    raise ValueError(f"unknown stage {stage!r}")


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = run_stage(args.stage, args, work)
    result["wall_s"] = time.perf_counter() - t0
    # Linux reports ru_maxrss in KiB
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["loadavg_1m"] = os.getloadavg()[0]  # timings on a shared machine are only as good as this is low
    if args.device.startswith("cuda"):
        result["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(RESULT_TAG + json.dumps(result, default=str), flush=True)


# ------------------------------------------------------------------------------------------ driver
def _stage_command(stage: str, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage]
    for key, value in vars(args).items():
        if key in ("stage", "stages") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        command += [flag] if value is True else [flag, str(value)]
    return command


def _line(stage: str, r: dict[str, Any]) -> str:
    parts = [f"{stage:9s} wall {r['wall_s']:8.1f} s"]
    if "s_per_step" in r:
        parts.append(f"{r['s_per_step']:7.2f} s/step ({r['steps']} steps; setup {r['setup_s']:.1f} s, "
                     f"validation {r['validation_s']:.1f} s"
                     + (f", calibration {r['calibration_s']:.1f} s" if r.get("calibration_s") else "") + ")")
    if "images_per_s" in r:
        parts.append(f"{r['images_per_s']:.3f} img/s end-to-end, {r['images_per_s_without_load']:.3f} img/s "
                     f"without the {r['load_s']:.1f} s load ({r['images']} images x {r['inference_steps']} steps)")
    parts.append(f"peak RSS {r['peak_rss_gib']:.2f} GiB")
    parts.append(f"load {r['loadavg_1m']:.1f}")
    if "cuda_max_allocated_gib" in r:
        parts.append(f"CUDA max allocated {r['cuda_max_allocated_gib']:.2f} GiB")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="work folder (default: a new /tmp/hardgen-sd15-*)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--resolution", type=int, default=None, help="px (default: 512 on CUDA, 128 on CPU)")
    parser.add_argument("--batch", type=int, default=1, help="training and generation batch size")
    parser.add_argument("--steps", type=int, default=2, help="plain training steps")
    parser.add_argument("--hard-steps", type=int, default=None, help="fine-tuning steps (default: --steps)")
    parser.add_argument("--images", type=int, default=2, help="images to generate")
    parser.add_argument("--inference-steps", type=int, default=4, help="UniPC steps per image")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--feedback", action="store_true", help="also run feedback fine-tuning")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=None,
                        help="run only these stages (default: all; earlier outputs must exist in --workdir)")
    parser.add_argument("--stage", choices=STAGES, default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.resolution is None:
        args.resolution = 512 if args.device.startswith("cuda") else 128
    if args.resolution % 8:
        parser.error(f"--resolution {args.resolution}: must be a multiple of 8 (SD1.5's VAE downsamples by 8)")
    if args.hard_steps is None:
        args.hard_steps = args.steps
    if args.stage is not None:
        _child(args)
        return 0

    args.workdir = args.workdir or tempfile.mkdtemp(prefix="hardgen-sd15-")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    stages = args.stages or [s for s in STAGES if s != "feedback" or args.feedback]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(
        [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # accelerate picks the GPU whenever it sees one
    print(f"# hardgen SD1.5 smoke: workdir {args.workdir}, device {args.device}, {args.resolution} px, "
          f"batch {args.batch}, mixed precision {args.mixed_precision}, gradient checkpointing "
          f"{args.gradient_checkpointing}, {args.threads} threads", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for stage in stages:
        log_path = Path(args.workdir) / f"{stage}.log"
        with open(log_path, "w") as log:
            proc = subprocess.run(_stage_command(stage, args), env=env, stdout=subprocess.PIPE, stderr=log,
                                  text=True)
        tagged = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
        if proc.returncode or not tagged:
            tail = log_path.read_text().splitlines()[-25:]
            print(f"{stage:9s} FAILED (exit {proc.returncode}); log {log_path}:\n  " + "\n  ".join(tail), flush=True)
            return 1
        results[stage] = json.loads(tagged[-1][len(RESULT_TAG):])
        print(_line(stage, results[stage]), flush=True)
    from hardgen.core.io import write_json

    write_json(Path(args.workdir) / "results.json", results)
    print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
