# Everything that is not a rule: config validation, paths, wildcard constraints, input functions.

import importlib.util
import os
import re
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

import hardgen.config.validation as hgconfig
from hardgen.config.settings import Settings
from hardgen.core.io import segmenter_key
from hardgen.core.layout import path as layout_path
from hardgen.core.registry import POLICIES as POLICY_REGISTRY, VARIANTS as VARIANT_REGISTRY, trained_loras

# the schema shipped in the package (hardgen.config.validation.SCHEMA_PATH): defaults filled in, then checked
hgconfig.validate_config(config)
#: the validated config as typed settings (hardgen.config.settings): the rules read every value from here
SETTINGS = Settings.from_config(config)


onstart:
    # Library-registry names (timm, smp) need torch: checked once before any job starts, not on dry runs. A driver
    # with snakemake only (jobs in conda envs or a container) leaves this check to the jobs, which fail on bad names.
    if all(importlib.util.find_spec(m) for m in ("timm", "segmentation_models_pytorch")):
        hgconfig.check_registries(config)
    else:
        logger.warning("timm/smp not importable here: backbone and encoder names are checked by the jobs")


ENV = "../../envs/hardgen.yaml"

# data.train_subsets (the data-scarcity curve): with two sizes or more, every artifact downstream of the real data
# runs once per size, under results/n-{n_real}/ (hardgen.core.layout.PER_N), {n_real} a wildcard over the size labels
# ("24", "all"); with one size (data.train_subset) no path has the level and the workflow is the one-size run.
N_REALS = hgconfig.train_subset_labels(config)
SCARCITY = hgconfig.scarcity(config)
N_WILDCARD = "{n_real}" if SCARCITY else None


def L(name, /, **wildcards):
    """hardgen.core.layout.path with the scarcity level as a wildcard when the curve is on (or the n_real given)."""
    wildcards.setdefault("n_real", N_WILDCARD)
    return layout_path(name, **wildcards)


def expand_n(pattern, **lists):
    """expand() over ``lists``, the scarcity level {n_real} (when the curve is on) left a wildcard."""
    return expand(pattern, allow_missing=SCARCITY, **lists)


# the per-size logs and benchmark files, under the same level (a rule's log and outputs share their wildcards; the
# per-size report's timings read its size's benchmark folder)
def LOG(name):
    return f"logs/n-{{n_real}}/{name}" if SCARCITY else f"logs/{name}"


def BENCH(name):
    return f"{L('benchmarks')}/{name}"


TESTSETS = SETTINGS.data.testsets
BACKBONES = list(SETTINGS.backbones)
LOSS_BACKBONES = list(SETTINGS.hard.loss_backbones)  # the rest are held-out judges of hardness
# backbones.<key>.prototype: a file of the user's replaces rule prototype's for that backbone (a tracked input)
USER_PROTOTYPES = {key: SETTINGS.backbones[key].prototype for key in BACKBONES if SETTINGS.backbones[key].prototype}
for _key, _file in USER_PROTOTYPES.items():
    if not Path(_file).is_file():
        raise ValueError(f"backbones.{_key}.prototype: {_file}: file not found")
COMPUTED_PROTOTYPES = [key for key in BACKBONES if key not in USER_PROTOTYPES]  # rule prototype's outputs
VARIANTS = list(SETTINGS.generation.variants)
SCORED_VARIANTS = ["real"] + VARIANTS
# hardgen.core.registry declares each variant: the Control-LoRA it samples (mined and guided: the plain one) and whether
# its sampling reads the in-loss backbones' prototypes
VARIANT_LORA = {v: VARIANT_REGISTRY[v].lora for v in VARIANTS}
TRAINING_FREE = [v for v in VARIANTS if VARIANT_REGISTRY[v].uses_backbones]
# the inpainting variants (sampling inpaint): they draw into the real training frames (and, with the placement frames,
# into data.background_frames' lesion-free ones, or the demo's: rule background_frames), measured by rule inpainting
INPAINT_VARIANTS = [v for v in VARIANTS if VARIANT_REGISTRY[v].inpaints]
# the trained LoRAs: hard and feedback start from plain, so it always trains
LORAS = trained_loras(VARIANTS)
POLICIES = list(SETTINGS.segment.policies)
# the policies that add synthetic images: their registry entry's pool picks some (a real-only policy's pool is "none")
SYNTHETIC_POLICIES = [p for p in POLICIES if POLICY_REGISTRY[p].pool != "none"]
# segment.synthetic_ratios as path labels (f"{r:g}": 0.5, 1, 2); the real policy is ratio 0. Each synthetic policy runs
# at every ratio, real once: RUNS lists the (policy, ratio) pairs of the benchmark.
RATIOS = [hgconfig.ratio_label(r) for r in SETTINGS.segment.synthetic_ratios]
RUNS = [(p, r) for p in POLICIES for r in (RATIOS if p in SYNTHETIC_POLICIES else ["0"])]
SYNTHETIC_RUNS = [(p, r) for p, r in RUNS if p in SYNTHETIC_POLICIES]
# segment.batch_runs: the synthetic runs of one (arch, seed) train in one job (train_segmenters)
BATCH_RUNS = bool(SETTINGS.segment.batch_runs) and bool(SYNTHETIC_RUNS)
FIDELITY_BACKBONE = SETTINGS.filter.fidelity_backbone
ARCHS = list(SETTINGS.segment.archs)
SEEDS = [str(s) for s in SETTINGS.segment.seeds]
SHARDS = [str(k) for k in range(SETTINGS.generation.shards)]
DEMO = SETTINGS.data.root is None
TINY = SETTINGS.model.base == "tiny"

DATA_ROOT = L("demo_data") if DEMO else SETTINGS.data.root
# the lesion-free frames of the inpainting placement frames: the user's folder, else the demo's (rule background_frames)
BACKGROUNDS_NEEDED = bool(INPAINT_VARIANTS) and "frames" in SETTINGS.generation.inpaint.placements
BACKGROUND_FRAMES = SETTINGS.data.background_frames or (L("background_frames") if DEMO else None)
if BACKGROUNDS_NEEDED and SETTINGS.data.background_frames and not Path(BACKGROUND_FRAMES).is_dir():
    raise ValueError(f"data.background_frames: {BACKGROUND_FRAMES}: folder not found")
LAYOUT = SETTINGS.data.layout
# the dataset prepare_data reads: the root, or with the table layout the CSV (the ultrasound demo writes one)
DATA_SOURCE = f"{DATA_ROOT}/dataset.csv" if DEMO and LAYOUT == "table" else DATA_ROOT
PROTOCOL = SETTINGS.evaluate.protocol  # evaluate.protocol: how test maps are saved and scored
BASE_MODEL = L("base_model") if TINY else SETTINGS.model.base
# A local base folder (e.g. a cluster's SD1.5 copy) is tracked file by file, so a
# new base (e.g. rebuilt by `make tiny-sd`) reruns training and generation; a hub id is not tracked.
LOCAL_BASE = not TINY and Path(BASE_MODEL).is_dir()
BASE_FILES = sorted(str(p) for p in Path(BASE_MODEL).rglob("*") if p.is_file()) if LOCAL_BASE else []
# the shipped tiny base (the demo's, and a rehearsal's on real data: hardgen rehearse): its numbers are noise by design
SHIPPED_TINY = (
    LOCAL_BASE and Path(BASE_MODEL).resolve() == (Path(workflow.basedir) / "resources/tiny-sd-polyp").resolve()
)
# The feedback LoRA's judge: its own real-only segmenter (rule train_judge), never a benchmark run; its
# training seed is offset from feedback.judge_seed (hardgen.benchmark.runs.JUDGE_SEED_OFFSET) so it differs from every
# benchmark seed even when judge_seed equals one of segment.seeds.
JUDGE = SETTINGS.feedback.segmenter
JUDGE_SEED = str(SETTINGS.feedback.judge_seed)


# ---- exact params: every rule's params hold exactly the config values its job reads, never a whole section, so a
# knob reruns only the jobs that read it (Snakemake's default rerun triggers include params). Which job reads a key is
# declared on its settings field (hardgen.config.settings: read_by), so the params below are derived, never listed.

#: model.* keys of training and sampling (base is a param of its own)
MODEL = SETTINGS.model.params("generator")
#: lora.* keys of the adapters (init_weights is an input of the plain training, not a param)
LORA = SETTINGS.lora.params("adapters")
#: train.* keys of the plain training, and of a fine-tuning (hard / feedback), whose length is its own section's steps
PLAIN_TRAIN = SETTINGS.train.params("plain")
FINETUNE_TRAIN = SETTINGS.train.params("finetune")


def backbone_specs(keys, job):
    """backbones.<key> entries as ``job`` reads them: extractor (prototype, score, the mined/guided judge) without
    the hardness loss's margin; hard (the hard LoRA) with it; neither with the prototype's recipe and file."""
    return {key: SETTINGS.backbones[key].params(job) for key in keys}


def extractor_specs(keys):
    return backbone_specs(keys, "extractor")


def segment_recipe(pixel_filter=False):
    """segment.* keys one segmenter run reads (hardgen.benchmark.runs.train_run); pixel_filter only with a filter
    judge."""
    return SETTINGS.segment.params("filtered_run" if pixel_filter else "run")


def arch_spec(arch):
    """segment.archs.<arch> as a job reads it: without `published` (the report's anchors name, never a model's)."""
    return SETTINGS.segment.archs[arch].params("segmenter")


def arch_specs(archs):
    return {arch: arch_spec(arch) for arch in archs}


def generation_params(variant):
    """generation.* keys of one variant's sampling (hardgen.core.registry: the shared ones and its own)."""
    return SETTINGS.generation.values(VARIANT_REGISTRY[variant].generation_keys)


def policy_sources(policies):
    """The generated variants the pools of ``policies`` draw from, in generation.variants order."""
    sources = {POLICY_REGISTRY[p].source for p in policies}
    return [v for v in VARIANTS if v in sources]


def policy_scored(policies):
    """The variants whose score tables the pools of ``policies`` read (hard_band: hardness; hard_faithful: fidelity)."""
    sources = {POLICY_REGISTRY[p].source for p in policies if POLICY_REGISTRY[p].scored}
    return [v for v in VARIANTS if v in sources]


def filter_params(policies):
    """filter.* keys the pools of ``policies`` read (none for a variant's every-sample pool)."""
    keys = [k for p in policies for k in POLICY_REGISTRY[p].keys]
    return SETTINGS.filter.values(sorted(set(keys)))


wildcard_constraints:
    variant="|".join(VARIANTS),
    scored="|".join(SCORED_VARIANTS),
    policy="|".join(POLICIES),
    ratio="|".join(re.escape(r) for r in ["0", *RATIOS]),
    arch="|".join(ARCHS),
    backbone="|".join(BACKBONES),
    seed=r"\d+",
    shard=r"\d+",
    n_real="|".join(re.escape(n) for n in N_REALS),


def n_real(wildcards):
    """The job's scarcity level (its {n_real} wildcard), None when the curve is off: for paths built in functions."""
    return wildcards.n_real if SCARCITY else None


def base_model_input(wildcards):
    """The random tiny base is a workflow product (rule base_model); a local base folder is tracked by its files."""
    return BASE_MODEL if TINY else BASE_FILES


def demo_data_input(wildcards):
    return DATA_ROOT if DEMO else []


# Paths built inside input functions and params callables name their size (n=n_real(wildcards)): Snakemake fills
# wildcards into a rule's static strings only.
def lora_path(variant, n=N_WILDCARD):
    return L("lora", variant=variant, n_real=n)


def segmenter_path(arch, policy, ratio, seed, n=N_WILDCARD):
    return L("model", arch=arch, policy=policy, ratio=ratio, seed=seed, n_real=n)


#: every benchmark run, (arch, policy, ratio label, seed), in run_paths' order
RUN_ORDER = [(a, p, r, s) for a in ARCHS for p, r in RUNS for s in SEEDS]


def run_paths(pattern):
    # one path for each benchmark run, arch x (policy, ratio) x seed
    return [pattern.format(arch=a, policy=p, ratio=r, seed=s, n_real="{n_real}") for a, p, r, s in RUN_ORDER]


def generation_conditions_input(wildcards):
    # generation.condition_fit: crop samples the training conditions; squash its own refitted copy (rule
    # generation_conditions), so the knob never reruns the LoRA training. The inpainting variants draw into the
    # training frames, which the crop brought to the resolution: they read the training conditions whatever the fit
    if SETTINGS.generation.condition_fit == "squash" and wildcards.variant not in INPAINT_VARIANTS:
        return L("squash_conditions", n_real=n_real(wildcards))
    return L("conditions", n_real=n_real(wildcards))


def finetune_init_input(section):
    # hard.init / feedback.init: plain fine-tunes the plain LoRA (a tracked input); fresh starts new adapters
    def init(wildcards):
        return [lora_path("plain", n_real(wildcards))] if getattr(SETTINGS, section).init == "plain" else []

    return init


def plain_init_input(wildcards):
    # lora.init_weights: the plain Control-LoRA fine-tunes this one (a tracked input); null: fresh adapters
    init = SETTINGS.lora.init_weights
    return [init] if init else []


# segment.batch_runs: train_segmenters trains the synthetic runs of one ratio and seed, every arch (jobs of a size, so
# the DAG's last jobs share the cores), train_real the real-only runs of one seed; evaluate_runs and filter take every
# run of an (arch, seed) / every subset of a seed. Runs are (arch, policy, ratio label); "{ratio}" stays a wildcard.
RATIO_RUNS = [(a, p, "{ratio}") for a in ARCHS for p in SYNTHETIC_POLICIES]
REAL_RUNS = [(a, "real", "0") for a in ARCHS]


def batch_patterns(name, runs=SYNTHETIC_RUNS):
    # batch jobs' outputs: artifact name's path for each (policy, ratio) of runs, {arch} / {seed} left as wildcards
    return [L(name, policy=p, ratio=r) for p, r in runs]


def batch_paths(pattern, wildcards, runs):
    return [
        pattern.format(arch=wildcards.arch, policy=p, ratio=r, seed=wildcards.seed, n_real=n_real(wildcards))
        for p, r in runs
    ]


def run_patterns(pattern, runs):
    # batch jobs' outputs: one per (arch, policy, ratio) of runs, {seed} (and a "{ratio}" ratio) left as wildcards
    return [pattern.format(arch=a, policy=p, ratio=r, seed="{seed}", n_real="{n_real}") for a, p, r in runs]


def filter_policies(wildcards):
    # the policies of one filter job: every synthetic one (segment.batch_runs) or the job's own
    return SYNTHETIC_POLICIES if BATCH_RUNS else [wildcards.policy]


def ratio_runs(wildcards):
    # the (arch, policy, ratio) runs of one train_segmenters job
    return [(a, p, wildcards.ratio) for a, p, _ in RATIO_RUNS]


def judge_path(arch=JUDGE, seed=JUDGE_SEED, n=N_WILDCARD):
    return L("judge", arch=arch, seed=seed, n_real=n)


def filter_judges(archs, n=N_WILDCARD):
    # segment.pixel_filter (FreeMask): a synthetic run ignores the synthetic pixels that the real-only judge of its own
    # arch (seed feedback.judge_seed) finds too hard; {arch: that judge's weights}, {} when the filter is off
    if SETTINGS.segment.pixel_filter is None:
        return {}
    return {arch: judge_path(arch, n=n) for arch in archs}


def run_filter_judges(wildcards):
    # the pixel filter's judge of one train_segmenter run, as filter_judges; a real-only run trains on real pixels only
    return filter_judges([wildcards.arch], n_real(wildcards)) if wildcards.policy in SYNTHETIC_POLICIES else {}


def generation_lora(wildcards):
    return lora_path(VARIANT_LORA[wildcards.variant], n_real(wildcards))


def prototype_files(keys, n_real=N_WILDCARD):
    """The prototype of each backbone in ``keys``, in order: the user's file (backbones.<key>.prototype) or rule
    prototype's, at the scarcity level ``n_real`` (a wildcard when the curve is on)."""
    return [USER_PROTOTYPES.get(key) or L("prototype", backbone=key, n_real=n_real) for key in keys]


def generation_frames(wildcards):
    # an inpainting variant's frames: the data manifest (the training images) and the lesion-free frames' folder
    if wildcards.variant not in INPAINT_VARIANTS:
        return {"manifest": [], "backgrounds": []}
    return {
        "manifest": L("manifest", n_real=n_real(wildcards)),
        "backgrounds": BACKGROUND_FRAMES if BACKGROUNDS_NEEDED else [],
    }


def inpaint_condition(wildcards):
    # the condition.* keys an inpainting variant's job makes its condition images with (from each sample's label)
    if wildcards.variant not in INPAINT_VARIANTS:
        return None
    return SETTINGS.condition.values(["type", "canny_low", "canny_high"])


def generation_prototypes(wildcards):
    if wildcards.variant not in TRAINING_FREE:
        return []
    return prototype_files(LOSS_BACKBONES, n_real(wildcards))


def allocation_judges(wildcards):
    # generation.allocation hardness: every segment.archs entry's real-only judge (rule train_judge, seed
    # feedback.judge_seed), never a benchmark segmenter; uniform needs none.
    if SETTINGS.generation.allocation != "hardness":
        return []
    return [judge_path(arch, n=n_real(wildcards)) for arch in ARCHS]


def score_input(wildcards):
    if wildcards.scored == "real":
        return []
    return L("generated", variant=wildcards.scored, n_real=n_real(wildcards))


def fidelity_input(wildcards):
    # The score job of a generated variant also grades it (the fidelity guard): the real-only judges' Dice on that
    # variant's samples (judge_loss of every arch's judge; never a benchmark run) and the held-out backbone's
    # separation, calibrated on the real images' (results/fidelity/real.csv, written by the score job of real: the
    # calibration, no grades of its own).
    if wildcards.scored == "real":
        return {}
    n = n_real(wildcards)
    return {
        "sample_losses": guard_loss_tables([wildcards.scored], n),
        "reference": L("fidelity", scored="real", n_real=n),
    }


def subset_input(wildcards, name="subset"):
    # Subsets are per ratio and segmenter seed (random draws follow it). The real-only policy reads no subset, so
    # the real-trained segmenters (the hardness transfer's evaluators; the separate judges) never depend on
    # filtering or synthetic data, and forcing `filter` reruns only filter, train_segmenter, evaluate and report.
    if wildcards.policy not in SYNTHETIC_POLICIES:
        return []
    return L(name, policy=wildcards.policy, ratio=wildcards.ratio, seed=wildcards.seed, n_real=n_real(wildcards))


def subset_record_input(wildcards):
    # the subset's pool record: an infeasible subset (filter.on_short_pool: skip) skips its runs
    return subset_input(wildcards, "subset_record")


def eval_tables():
    return run_paths(L("eval"))


def eval_image_tables():
    return run_paths(L("eval_images"))


def anchors_input():
    # report.anchors: the published numbers the report stands beside the run's (null: none)
    anchors = SETTINGS.report.anchors
    return [anchors] if anchors else []


def run_records():
    return run_paths(L("run"))


# segment.full_data_baseline: each arch with a published anchor (segment.archs.<key>.published) also trains a real-only
# run per seed on every training image, outside the benchmark's runs (results/segment-full/...): the reproduction
# table's like-for-like baseline. Only when the benchmark's runs train on fewer (data.train_subset or the scarcity
# curve): with data.train_subset null they already train on every image. The scarcity curve's full manifest is
# prepare_data's; one size's is rule full_data_manifest's.
FULL_ARCHS = [a for a in ARCHS if SETTINGS.segment.archs[a].published is not None]
FULL_BASELINE = SETTINGS.segment.full_data_baseline and (SCARCITY or N_REALS[0] != hgconfig.ALL_TRAIN)
FULL_MANIFEST = L("data_manifest") if SCARCITY else L("full_manifest")
#: the full-data runs, (arch, seed), in full_baseline_paths' order
FULL_ORDER = [(a, s) for a in FULL_ARCHS for s in SEEDS] if FULL_BASELINE else []


def full_baseline_paths(name):
    # one path per full-data run (artifact full_run, full_eval, ...); none with segment.full_data_baseline off
    return [L(name, arch=a, seed=s) for a, s in FULL_ORDER]


def sample_loss_tables():
    # Hardness transfer uses the benchmark's real-policy segmenters of every arch and seed (never a judge;
    # segment.policies must include real, hardgen.config.validation): one table per (arch, seed) of every variant's samples, read
    # by the report alone (a new variant reruns the transfer study, which reads every sample, and grades nothing)
    return expand_n(L("sample_loss"), arch=ARCHS, seed=SEEDS)


def guard_loss_tables(variants=VARIANTS, n=N_WILDCARD):
    # The fidelity guard's Dice: every arch's separate real-only judge (rule train_judge, seed feedback.judge_seed;
    # the judges of allocation and the pixel filter), never a benchmark run, so hard_faithful's pool is not chosen by
    # the real-policy runs it is then compared against; one table per (arch, variant), so a new variant is graded
    # alone and a new segmenter seed grades nothing again
    return expand_n(L("judge_loss", n_real=n), arch=ARCHS, seed=[JUDGE_SEED], variant=variants)


def guard_judges():
    # the names of the guard's judges (judge/<arch>/seed-<s>, hardgen.scoring.fidelity.judge_run_name), in the order of
    # guard_loss_tables' arch
    return [f"judge/{segmenter_key(arch, JUDGE_SEED)}" for arch in ARCHS]


def run_description(wildcards):
    # what benchmark.md says about the run (hardgen.report.run_text.RunDescription): exactly the config values it reads;
    # the real training-set size is the job's own (its scarcity level, or data.train_subset)
    label = n_real(wildcards) or N_REALS[0]
    return {
        "dataset": SETTINGS.data.root,
        "layout": LAYOUT,
        "testsets": TESTSETS,
        "protocol": PROTOCOL,
        "per_mask": SETTINGS.generation.per_mask,
        "allocation": SETTINGS.generation.allocation,
        "variants": VARIANTS,
        "policies": POLICIES,
        "archs": ARCHS,
        "seeds": [int(s) for s in SEEDS],
        # model.base: tiny is random-init at model.tiny_config's sizes (the paper smoke's: SD1.5's), named as such
        "base": f"tiny ({SETTINGS.model.tiny_config}, random init)" if TINY else SETTINGS.model.base,
        "resolution": SETTINGS.model.resolution,
        "modality": SETTINGS.data.demo.modality if DEMO else None,
        "train_subset": hgconfig.train_subset_size(label),
    }


def final_outputs():
    # every size's report (results/n-{n_real}/tables/) and, with the scarcity curve on, the tables over the sizes
    tables = [
        L("table", table="benchmark.csv"),
        L("table", table="benchmark.md"),
        L("table", table="runs.csv"),
        L("table", table="reproduction.csv"),
        L("table", table="contrasts.csv"),
        L("table", table="infeasible.csv"),
        L("table", table="hardness.csv"),
        L("table", table="hardness_transfer.csv"),
        L("table", table="transfer_matrix.csv"),
        L("table", table="variant_cost.csv"),
        L("table", table="fidelity.csv"),
        L("table", table="mask_following.csv"),
    ] + ([L("table", table="inpainting.csv")] if INPAINT_VARIANTS else [])
    if not SCARCITY:
        return tables + [L("models_table")]
    return expand(tables, n_real=N_REALS) + scarcity_outputs() + [L("models_table")]


def scarcity_image_tables():
    # the scarcity curve: every size's per-image tables, sizes (N_REALS) outer, runs (RUN_ORDER) inner
    return [L("eval_images", n_real=n, arch=a, policy=p, ratio=r, seed=s) for n in N_REALS for a, p, r, s in RUN_ORDER]


def scarcity_outputs():
    return [L("scarcity_table", table=t) for t in SCARCITY_TABLES] + [L("scarcity_plot")]


#: the scarcity tables in results/tables/, every size's benchmark.csv and runs.csv with n_real, and the curve
SCARCITY_TABLES = ("benchmark.csv", "runs.csv", "scarcity.csv")
