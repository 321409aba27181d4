"""A knob reruns only what reads it, under Snakemake's *default* rerun triggers (mtime, params, input, code,
software-env): every rule's params hold exactly what its job reads, never a whole config section.

The demo's DAG is "finished" in seconds with ``--touch`` (every output created empty, then touched in DAG order: Snakemake
records each job's params, inputs and code as if it had run), then each change of the issue is dry-run and the
planned jobs compared with what the change touches. The quick workflow run of test_workflow (a real run to the end,
default triggers) gets the same changes in test_workflow's ``test_quick_run_reruns_only_what_a_knob_touches``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_workflow import (
    UPSTREAM,
    copy_workflow,
    overlay,
    plan_after,
    planned_jobs,
    snakemake,
)

from hardgen.core import registry

DEMO = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())

def touched_run(workdir: Path, args: list[str]) -> None:
    """Finish the DAG of ``args`` without running a job: every output made (empty file, or a folder when it has
    no suffix: the rules' directory() outputs), then ``--touch --forceall`` records every job's metadata."""
    plan = snakemake(workdir, "-n", "--forceall", "--cores", "1", *args).stdout
    outputs = [path.strip() for line in plan.splitlines() if line.strip().startswith("output:")
               for path in line.split(":", 1)[1].split(",")]
    assert len(outputs) > 30
    for output in outputs:
        target = workdir / output
        if target.suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        else:
            target.mkdir(parents=True, exist_ok=True)
    snakemake(workdir, "--touch", "--forceall", "--cores", "1", *args)
    assert "Nothing to be done" in "".join(snakemake(workdir, "-n", "--cores", "1", *args).stdout)


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("touched"))
    args = overlay(workdir, "demo")
    touched_run(workdir, args)
    return workdir


def test_adding_a_ratio_trains_and_evaluates_only_its_runs(finished_demo):
    segment = DEMO["segment"]
    jobs = plan_after(finished_demo, "ratio", segment={"synthetic_ratios": [*segment["synthetic_ratios"], 2.0]})
    # the new ratio's subsets and segmenters (one batch job each); evaluate_runs (every run of an arch) and the report
    assert jobs == {"filter": 1, "train_segmenters": 1, "evaluate_runs": len(segment["archs"]), "report": 1, "all": 1}


def test_adding_a_seed_reruns_no_generation_scoring_or_judge(finished_demo):
    segment, variants = DEMO["segment"], DEMO["generation"]["variants"]
    jobs = plan_after(finished_demo, "seed", segment={"seeds": [0, 1]})
    ratios = len(segment["synthetic_ratios"])
    assert not UPSTREAM & set(jobs)
    # the new seed's runs, subsets and evaluations, and its real-only segmenters' losses on every variant (the
    # transfer study, one job); the fidelity guard grades with the separate judges, so nothing is scored again
    assert variants and jobs == {"train_real": 1, "train_segmenters": ratios, "filter": ratios,
                                 "evaluate_runs": len(segment["archs"]), "segmenter_loss": 1, "report": 1, "all": 1}


def test_dropping_a_policy_reruns_no_upstream_work(finished_demo):
    segment = DEMO["segment"]
    policies = [p for p in segment["policies"] if p != "hard_faithful"]
    jobs = plan_after(finished_demo, "policy", segment={"policies": policies})
    assert set(jobs) == {"filter", "train_segmenters", "evaluate_runs", "report", "all"}


def test_adding_a_variant_generates_and_scores_only_it(finished_demo):
    generation = DEMO["generation"]
    assert "guided" not in generation["variants"]
    jobs = plan_after(finished_demo, "variant", generation={"variants": [*generation["variants"], "guided"]})
    # guided alone is generated, graded (judge_loss: every arch's judge) and scored; the transfer study's losses
    # (segmenter_loss), mask_following and the report read every variant's samples
    assert jobs == {"generate": generation["shards"], "generated_manifest": 1, "score": 1, "segmenter_loss": 1,
                    "judge_loss": 1, "mask_following": 1, "report": 1, "all": 1}


def test_generation_knob_of_one_variant_regenerates_only_it(finished_demo):
    # generation.candidates is read by mined's sampling alone
    jobs = plan_after(finished_demo, "candidates", generation={"candidates": DEMO["generation"]["candidates"] + 1})
    assert jobs["generate"] == DEMO["generation"]["shards"] and jobs["score"] == 1
    assert not {"train_control_lora", "train_hard_lora", "train_feedback_lora", "allocate", "train_judge"} & set(jobs)


def test_a_loss_margin_retrains_the_hard_lora_and_rescores_nothing_else(finished_demo):
    # backbones.<k>.margin belongs to the hardness loss: the prototypes, the other variants' scores and the
    # mined judge never read it; the variants sampling the hard LoRA (hard; hard_inpaint when run) are made and
    # scored again
    backbone = DEMO["hard"]["loss_backbones"][0]
    jobs = plan_after(finished_demo, "margin", backbones={backbone: {**DEMO["backbones"][backbone], "margin": 5.0}})
    hard = [v for v in DEMO["generation"]["variants"] if registry.VARIANTS[v].lora == "hard"]
    assert jobs["train_hard_lora"] == 1 and jobs["score"] == len(hard) >= 1
    assert jobs["generate"] == DEMO["generation"]["shards"] * len(hard)
    assert not {"prototype", "train_control_lora", "train_feedback_lora", "allocate", "train_judge"} & set(jobs)


@pytest.mark.parametrize(("setting", "value"), [("loss", "structure_released"), ("resize", "released")])
def test_an_arch_recipe_key_retrains_that_arch_and_trains_no_generator(finished_demo, setting, value):
    # segment.archs.<key>.loss / .resize are that arch's training recipe: its benchmark runs and its real-only judge
    # retrain (the judges allocate and grade the samples); the other arch's runs, the LoRAs and the prototypes never
    # read them
    archs = DEMO["segment"]["archs"]
    key = next(k for k in archs if k != DEMO["feedback"]["segmenter"])
    jobs = plan_after(finished_demo, f"arch-{setting}",
                      segment={"archs": {**archs, key: {**archs[key], setting: value}}})
    assert jobs["train_judge"] == 1 and jobs["train_real"] == 1 and "train_segmenters" in jobs
    assert not {"train_control_lora", "train_hard_lora", "train_feedback_lora", "prototype", "make_conditions",
                "prepare_data"} & set(jobs)


def test_the_judge_input_retrains_only_the_feedback_lora(finished_demo):
    # feedback.judge_input is read by the feedback LoRA's training alone: its samples are made and scored again; no
    # other generator, judge, prototype or real-only segmenter
    jobs = plan_after(finished_demo, "judge-input", feedback={"judge_input": "generated"})
    assert jobs["train_feedback_lora"] == 1 and jobs["generate"] == DEMO["generation"]["shards"]
    assert not {"train_control_lora", "train_hard_lora", "train_judge", "prototype", "allocate", "train_real",
                "make_conditions"} & set(jobs)


#: The second touched demo: the overlay's job shape (one job per subset and per run) on a data.train_subset run, so
#: that min_fidelity's per-run rules and the full-data baseline (which needs a subset) share one finished DAG.
SUBSET_UNBATCHED = {"data": {"train_subset": DEMO["data"]["demo"]["n_train"] // 2}, "segment": {"batch_runs": False}}


def subset_unbatched(**sections) -> dict[str, dict]:
    """:data:`SUBSET_UNBATCHED` with ``sections`` merged into its sections."""
    return {name: {**SUBSET_UNBATCHED.get(name, {}), **sections.get(name, {})}
            for name in {*SUBSET_UNBATCHED, *sections}}


@pytest.fixture(scope="module")
def finished_subset_unbatched(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("touched-subset"))
    touched_run(workdir, overlay(workdir, "subset-unbatched", **SUBSET_UNBATCHED))
    return workdir


def test_min_fidelity_retrains_only_the_faithful_runs_unbatched(finished_subset_unbatched):
    segment = DEMO["segment"]
    runs = len(segment["synthetic_ratios"]) * len(segment["seeds"])
    jobs = plan_after(finished_subset_unbatched, "fidelity",
                      **subset_unbatched(filter={"min_fidelity": DEMO["filter"]["min_fidelity"] + 0.1}))
    archs = len(segment["archs"])
    assert jobs == {"filter": runs, "train_segmenter": runs * archs, "evaluate": runs * archs, "report": 1, "all": 1}


def test_the_full_data_baseline_adds_only_the_anchored_archs_real_only_runs(finished_subset_unbatched):
    # segment.full_data_baseline on a data.train_subset run: the full manifest, one real-only run and its evaluation per
    # arch with a published anchor and seed, and the report (its reproduction table); nothing upstream, no benchmark run
    workdir = finished_subset_unbatched
    segment = DEMO["segment"]
    anchored = [key for key, spec in segment["archs"].items() if spec.get("published")]
    runs = len(anchored) * len(segment["seeds"])
    assert runs
    result = snakemake(workdir, "-n", "--cores", "1",
                       *overlay(workdir, "full", **subset_unbatched(segment={"full_data_baseline": True})))
    assert planned_jobs(result.stdout + result.stderr) == {"full_data_manifest": 1, "train_full_baseline": runs,
                                                           "evaluate_full_baseline": runs, "report": 1, "all": 1}
    for arch in anchored:
        assert f"results/segment-full/{arch}/seed-{segment['seeds'][0]}/run.json" in result.stdout
    # without a subset every run already trains on every image: the key adds no job
    plain = planned_jobs(snakemake(workdir, "-n", "--cores", "1", *overlay(
        workdir, "all", **subset_unbatched(data={"train_subset": None}, segment={"full_data_baseline": True}))).stdout)
    assert plain and not {"full_data_manifest", "train_full_baseline", "evaluate_full_baseline"} & set(plain)


def test_a_tracking_key_reruns_only_the_training_that_reads_it(finished_demo):
    # hard.validation_steps of its own: the hard LoRA alone among the trainings (and what its weights feed)
    jobs = plan_after(finished_demo, "validation", hard={"validation_steps": 5})
    assert jobs["train_hard_lora"] == 1
    assert not {"train_control_lora", "train_feedback_lora", "train_judge", "train_real"} & set(jobs)
    # train.report_to reaches the stages that inherit it (plain, feedback), never those with their own key
    jobs = plan_after(finished_demo, "tracker", train={"report_to": "none"}, hard={"report_to": "tensorboard"},
                      segment={"report_to": "tensorboard"})
    assert jobs["train_control_lora"] == jobs["train_feedback_lora"] == 1
    assert not {"train_judge", "train_real", "prototype"} & set(jobs)
