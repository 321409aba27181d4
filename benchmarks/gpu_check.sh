#!/usr/bin/env bash
# GPU figures in one command (issue: performance, measured side by side). On one H100 it finishes in about
# 8 minutes: the SD1.5 architecture with random weights, built offline from resources/sd15-random, at 512 px.
#   generation: images/s of hardgen's fused Control-LoRA path, the unfused pipeline and stock diffusers
#               ControlNet at batch 8 in fp16 and in bf16, with the model FLOPs per second and the MFU
#               (FLOPs counted per UNet / ControlNet call by torch, peak looked up from the device name);
#   training:   s/step and peak allocated memory of plain, hard and feedback Control-LoRA and of ControlNet at
#               batch 4 (fp16 autocast, fp32 LoRA master weights);
#   first, benchmarks/flop_ceiling.py: the compute-bound ceiling of the generation ratio at these shapes.
# Writes results/benchmarks/{generation,training}_gpu_fp16.csv, generation_gpu_bf16.csv and bench_*.png, and
# prints the tables. Needs the project's environment (make .venv/.hardgen-installed) on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
WORK="${WORK:-$(mktemp -d)}"   # the SD1.5 base is built once and shared by both runs
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# the FLOP ceiling of the generation ratio at these shapes (meta tensors, seconds): what a compute-bound card can reach
"$PY" benchmarks/flop_ceiling.py --base resources/sd15-random --resolution 512 --steps 20
"$PY" benchmarks/bench.py --sd15 --device cuda --resolution 512 --batch 8 --steps 20 --repeats 3 \
  --dtype fp16 --train-batch 4 --train-steps 10 --skip scoring --tag _gpu_fp16 --work "$WORK"
"$PY" benchmarks/bench.py --sd15 --device cuda --resolution 512 --batch 8 --steps 20 --repeats 3 \
  --dtype bf16 --skip training scoring --tag _gpu_bf16 --work "$WORK"
