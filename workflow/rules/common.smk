# Everything that is not a rule: config validation, paths, wildcard constraints, input functions.

import importlib.util
import os
import sys
from pathlib import Path

from snakemake.logging import logger

# hardgen's library is this checkout's src/: the driver imports it from there and every job (in .venv, a conda env
# or a container) finds it through PYTHONPATH, which jobs inherit, so envs/*.yaml carry only the pinned stack.
SRC = str(Path(workflow.basedir) / "src")
if Path(SRC, "hardgen").is_dir():
    sys.path.insert(0, SRC)
    if SRC not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        # set, not read: PYTHONPATH is optional, so no `envvars:` assertion
        os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))

import hardgen.config as hgconfig

hgconfig.validate_config(config, hgconfig.load_schema(Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"))


onstart:
    # Library-registry names (timm, smp) need torch: checked once before any job starts, not on dry runs. A driver
    # with snakemake only (jobs in conda envs or a container) leaves this check to the jobs, which fail on bad names.
    if all(importlib.util.find_spec(m) for m in ("timm", "segmentation_models_pytorch")):
        hgconfig.check_registries(config)
    else:
        logger.warning("timm/smp not importable here: backbone and encoder names are checked by the jobs")


ENV = "../../envs/hardgen.yaml"

TESTSETS = config["data"]["testsets"]
BACKBONES = list(config["backbones"])
LOSS_BACKBONES = list(config["hard"]["loss_backbones"])  # the rest are held-out judges of hardness
VARIANTS = list(config["generation"]["variants"])
SCORED_VARIANTS = ["real"] + VARIANTS
LORAS = ["plain"] + [v for v in VARIANTS if v != "plain"]  # hard and feedback start from plain: it always trains
POLICIES = list(config["segment"]["policies"])
ARCHS = list(config["segment"]["archs"])
SEEDS = [str(s) for s in config["segment"]["seeds"]]
SHARDS = [str(k) for k in range(config["generation"]["shards"])]
DEMO = config["data"]["root"] is None
TINY = config["model"]["base"] == "tiny"

DATA_ROOT = "results/data/demo" if DEMO else config["data"]["root"]
BASE_MODEL = "results/base_model" if TINY else config["model"]["base"]
# The feedback LoRA's judge: its own real-only segmenter (rule train_judge), never a benchmark run; its
# training seed is offset from feedback.judge_seed (hardgen.segment.JUDGE_SEED_OFFSET) so it differs from every
# benchmark seed even when judge_seed equals one of segment.seeds.
JUDGE = config["feedback"]["segmenter"]
JUDGE_SEED = str(config["feedback"]["judge_seed"])


wildcard_constraints:
    variant="|".join(VARIANTS),
    scored="|".join(SCORED_VARIANTS),
    policy="|".join(POLICIES),
    arch="|".join(ARCHS),
    backbone="|".join(BACKBONES),
    seed=r"\d+",
    shard=r"\d+",


def base_model_input(wildcards):
    """The tiny base is a workflow product; a real base (hub id or local folder) is not tracked."""
    return BASE_MODEL if TINY else []


def demo_data_input(wildcards):
    return DATA_ROOT if DEMO else []


def lora_path(variant):
    return f"results/lora/{variant}/pytorch_lora_weights.safetensors"


def segmenter_path(arch, policy, seed):
    return f"results/segment/{arch}/{policy}/seed-{seed}/model.safetensors"


def judge_path(arch=JUDGE, seed=JUDGE_SEED):
    return f"results/judge/{arch}/seed-{seed}/model.safetensors"


def score_input(wildcards):
    if wildcards.scored == "real":
        return []
    return f"results/generated/{wildcards.scored}/manifest.csv"


def subset_input(wildcards):
    # Subsets are per segmenter seed (random draws follow it). The real-only policy reads no subset, so the
    # real-trained segmenters (and the separate feedback judge) never depend on filtering, and forcing `filter`
    # reruns only filter, train_segmenter, evaluate and report.
    return [] if wildcards.policy == "real" else f"results/subsets/{wildcards.policy}/seed-{wildcards.seed}.csv"


def eval_tables():
    return expand("results/eval/{arch}/{policy}/seed-{seed}.csv", arch=ARCHS, policy=POLICIES, seed=SEEDS)


def run_records():
    return expand("results/segment/{arch}/{policy}/seed-{seed}/run.json", arch=ARCHS, policy=POLICIES, seed=SEEDS)


def sample_loss_tables():
    # Hardness transfer is measured on the benchmark's real-policy segmenters of every seed (never the judge).
    if "real" not in POLICIES:
        return []
    return expand("results/eval/{arch}/seed-{seed}/sample_loss.csv", arch=ARCHS, seed=SEEDS)


def final_outputs():
    return [
        "results/tables/benchmark.csv",
        "results/tables/benchmark.md",
        "results/tables/runs.csv",
        "results/tables/hardness.csv",
        "results/tables/hardness_transfer.csv",
    ]
