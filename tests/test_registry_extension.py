"""A variant is one ``Variant(...)`` entry and a policy one ``Policy(...)`` entry (hardgen.core.registry; README:
"Adding a variant", "Adding a filtering policy"): a throwaway variant ``twin`` (training-free, the plain LoRA sampled
with another strategy) and throwaway policies drawing from it, registered through the registry alone, are sampled as
their entry says (workflow/scripts/generate.py), get the pool their entry's rule picks (hardgen.scoring.filter) and
are planned by the workflow (a dry run of a temp copy of the repository whose registry.py holds the entries, its
only edit: the schema's enums of names come from the registry).
"""

from __future__ import annotations

import re
import runpy
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from hardgen.config.validation import SCHEMA_PATH
from hardgen.core import layout, registry
from hardgen.core.registry import Policy, Variant
from hardgen.generator.inpaint import InpaintSettings
from hardgen.scoring.filter import ShortPool, pool, select_subset

REPO = Path(__file__).resolve().parents[1]
N, N_REAL = 40, 10
#: The throwaway entries (their reprs are the source lines the workflow test writes into a registry.py copy).
TWIN = Variant("twin", "plain", None, "guided", keys=("guided",))
TWIN_BAND = Policy("twin_band", "twin", "band", "twin samples within filter.band")
TWIN_FAITHFUL = Policy("twin_faithful", "twin", "fidelity", "twin samples passing the fidelity guard")


@pytest.fixture
def twin(monkeypatch):
    """The throwaway variant and its policies, registered in-process (undone after the test); ``twin`` is the
    every-sample policy the registry gives each variant."""
    monkeypatch.setitem(registry.VARIANTS, "twin", TWIN)
    monkeypatch.setitem(registry.POLICIES, "twin", Policy("twin", "twin", "every", "every twin sample"))
    monkeypatch.setitem(registry.POLICIES, "twin_band", TWIN_BAND)
    monkeypatch.setitem(registry.POLICIES, "twin_faithful", TWIN_FAITHFUL)


def tables() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Generated manifests and one-backbone scores of plain and twin; twin's z is a shuffled 0..N-1 (returned), its
    fidelity (i mod 10) / 10; plain's z runs the other way, so a selection reading the wrong variant is seen."""
    z = np.random.default_rng(0).permutation(N).astype(float)
    generated, scores = [], []
    for variant, sign in (("plain", -1.0), ("twin", 1.0)):
        for i in range(N):
            sid = f"c{i:03d}"
            generated.append({"sample_id": sid, "image": f"gen/{variant}/{sid}.png", "mask": f"m/{sid}.png",
                              "condition": f"cond/{sid}.png", "variant": variant})
            fidelity = (i % 10) / 10 if variant == "twin" else 1.0 - (i % 10) / 10
            scores.append({"sample_id": sid, "variant": variant, "backbone": "cnn", "distance": sign * z[i],
                           "z": sign * z[i], "fidelity": fidelity})
    return pd.DataFrame(scores), pd.DataFrame(generated), z


def test_the_filter_selects_a_new_policys_pool_by_its_entrys_rule(twin):
    scores, generated, z = tables()
    every = pool("twin", scores, generated)
    assert len(every) == N and set(every["variant"]) == {"twin"}
    band = pool("twin_band", scores, generated, band=(0.5, 0.9))
    low, high = np.quantile(z, [0.5, 0.9])
    assert set(band["sample_id"]) == {f"c{i:03d}" for i in range(N) if low <= z[i] <= high}
    assert set(band["variant"]) == {"twin"} and len(band) == 16
    faithful = pool("twin_faithful", scores, generated, min_fidelity=0.5)
    assert set(faithful["sample_id"]) == {f"c{i:03d}" for i in range(N) if i % 10 >= 5}
    drawn = select_subset("twin_band", scores, generated, 1, N_REAL, band=(0.5, 0.9), seed=2)
    assert len(drawn) == N_REAL and set(drawn["sample_id"]) <= set(band["sample_id"])
    # the short pool names what the entry's rule picked, from the entry's source
    with pytest.raises(ShortPool, match=r"its pool \(twin samples within filter.band \[0.5, 0.9\]\) holds 16"):
        select_subset("twin_band", scores, generated, 2, N_REAL, band=(0.5, 0.9))


def test_an_unknown_rule_or_sampling_is_an_error(monkeypatch):
    with pytest.raises(ValueError, match=r"registry: policy 'x': unknown pool rule 'hard_band'"):
        Policy("x", "hard", "hard_band")
    with pytest.raises(ValueError, match=r"registry: policy 'x': pool rule 'every' with source None"):
        Policy("x", None, "every")
    with pytest.raises(ValueError, match=r"registry: variant 'x': unknown sampling 'beam'"):
        Variant("x", "plain", None, "beam")
    # a rule declared in the registry that the filter has no selection for stops the filter (no silent fidelity)
    monkeypatch.setitem(registry.POOL_RULES, "diverse", ())
    monkeypatch.setitem(registry.POLICIES, "plain_diverse", Policy("plain_diverse", "plain", "diverse"))
    scores, generated, _ = tables()
    with pytest.raises(ValueError, match=r"pool rule 'diverse' .* has no selection in hardgen.scoring.filter.pool"):
        pool("plain_diverse", scores, generated)


@pytest.mark.parametrize("sampling", ["mined", "guided", "pipeline", "inpaint"])
def test_generate_samples_as_the_entry_says_not_by_the_name(tmp_path, monkeypatch, sampling):
    import hardgen.core.devices as devices
    import hardgen.generator.generate as generate
    import hardgen.generator.mining as mining

    monkeypatch.setitem(registry.VARIANTS, "twin", Variant("twin", "plain", None, sampling))
    called = {}

    def generate_shard(shard, settings):
        called.update(variant=shard.variant, mining=settings.mining, guidance=settings.guidance, judge=settings.judge,
                      inpaint=settings.inpaint, frames=(shard.manifest, shard.backgrounds))
        return pd.DataFrame(columns=["sample_id"])

    monkeypatch.setattr(generate, "generate_shard", generate_shard)
    monkeypatch.setattr(devices, "configure_torch", lambda threads: "cpu")  # the test process keeps its threads
    monkeypatch.setattr(mining, "load_judge", lambda *a, **k: pytest.fail("the judge loads in generate_shard"))
    for name in ("lora.safetensors", "cnn.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    gen = {"shards": 1, "steps": 2, "guidance_scale": 1.0, "condition_scale": 1.0, "batch_size": 1, "dtype": "auto",
           "candidates": 3, "mining_steps": 1, "guided": {"strength": 0.5, "window": [0.0, 0.5]},
           "inpaint": {"dilate": 4, "feather": 2, "placements": ["relocated"]}}
    draws = sampling == "inpaint"
    uses = sampling in ("mined", "guided")  # the samplings that read the in-loss backbones
    snakemake = SimpleNamespace(
        log=[str(tmp_path / "log.txt")], resources={}, threads=1, output=[str(tmp_path / "shard.csv")],
        wildcards=SimpleNamespace(variant="twin", shard="0"),
        input=SimpleNamespace(lora=str(tmp_path / "lora.safetensors"), conditions="c.csv", plan="p.csv",
                              prototypes=[str(tmp_path / "cnn.safetensors")] if uses else [],
                              manifest="m.csv" if draws else [], backgrounds=[]),
        params=SimpleNamespace(generation=gen, base="base", seed=0, out_dir=str(tmp_path / "shard"),
                               model={"family": "sd15", "resolution": 32, "prompt": "p", "vae": None},
                               backbones={"cnn": {}} if uses else {}, pad=4 if uses else None,
                               condition={"type": "mask", "canny_low": 100, "canny_high": 200} if draws else None),
    )
    runpy.run_path(str(REPO / "workflow" / "scripts" / "generate.py"), init_globals={"snakemake": snakemake})
    assert called["variant"] == "twin"
    assert called["mining"] == (mining.MiningSettings(candidates=3, mining_steps=1) if sampling == "mined" else None)
    assert called["guidance"] == (mining.GuidanceSettings(0.5, (0.0, 0.5)) if sampling == "guided" else None)
    assert callable(called["judge"]) is uses
    assert called["inpaint"] == (InpaintSettings(4, 2, ("relocated",)) if draws else None)
    assert called["frames"] == (("m.csv", None) if draws else (None, None))


def dry_run_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """The jobs of a dry run's plan: (rule, {field: value}), the fields its block prints (input, output, wildcards)."""
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in output.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line)
        if match:
            jobs.append((match.group(1), {}))
        elif jobs and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            jobs[-1][1][key] = value
    return jobs


def wildcards(fields: dict[str, str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in fields.get("wildcards", "").split(", ") if pair)


def with_entry(text: str, after: str, entry: str) -> str:
    """``text`` with ``entry`` as the next entry of the registry tuple whose line starts with ``after``."""
    lines = text.splitlines(keepends=True)
    at = [k for k, line in enumerate(lines) if line.strip().startswith(after)]
    assert len(at) == 1, after
    return "".join(lines[: at[0] + 1] + [f"        {entry},\n"] + lines[at[0] + 1:])


@pytest.mark.workflow
def test_the_dag_plans_a_new_variant_and_policy_from_their_entries(tmp_path):
    from test_workflow import copy_workflow, overlay, snakemake

    workdir = copy_workflow(tmp_path / "wf")
    # the workflow imports hardgen from the copy's src/ (common.smk puts it first on the path)
    shutil.copytree(REPO / "src", workdir / "src", ignore=shutil.ignore_patterns("__pycache__"))
    source = workdir / "src" / "hardgen" / "core" / "registry.py"
    text = with_entry(source.read_text(), 'Variant("guided"', repr(TWIN))
    source.write_text(with_entry(text, 'Policy("hard_faithful"', repr(TWIN_BAND)))
    # registry.py is the only file edited: the schema's enums of names are filled from it when it is loaded
    assert "twin" not in (workdir / SCHEMA_PATH.relative_to(REPO)).read_text()
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    generation, segment = demo["generation"], demo["segment"]
    args = overlay(workdir, "twin", generation={"variants": [*generation["variants"], "twin"]},
                   segment={"policies": [*segment["policies"], "twin", "twin_band"], "batch_runs": False})
    result = snakemake(workdir, "-n", "--cores", "1", *args, timeout=300)
    jobs = [(rule, fields, wildcards(fields)) for rule, fields in dry_run_jobs(result.stdout + result.stderr)]

    def of(rule: str, **wanted: str) -> list[dict[str, str]]:
        return [f for r, f, w in jobs if r == rule and all(w.get(k) == v for k, v in wanted.items())]

    # twin is generated from the entry's LoRA (plain, no training job of its own), with the in-loss backbones'
    # prototypes its guided sampling reads, then graded and scored like any variant
    generate = of("generate", variant="twin")
    assert len(generate) == generation["shards"]
    inputs = set(generate[0]["input"].split(", "))
    assert layout.path("lora", variant="plain") in inputs
    assert {layout.path("prototype", backbone=b) for b in demo["hard"]["loss_backbones"]} <= inputs
    assert not [r for r, _, _ in jobs if "twin" in r]
    assert len(of("score", scored="twin")) == 1 and len(of("generated_manifest", variant="twin")) == 1
    # twin_band's subsets read twin's score table (a band rule), twin's (every sample) only its manifest
    runs = len(segment["synthetic_ratios"]) * len(segment["seeds"])
    for policy, reads_scores in (("twin_band", True), ("twin", False)):
        subsets = of("filter", policy=policy)
        assert len(subsets) == runs, policy
        for fields in subsets:
            inputs = set(fields["input"].split(", "))
            assert layout.path("generated", variant="twin") in inputs
            assert (layout.path("scores", scored="twin") in inputs) is reads_scores
            assert not {layout.path("scores", scored=v) for v in registry.VARIANTS if v != "twin"} & inputs
        assert len(of("train_segmenter", policy=policy)) == runs * len(segment["archs"]), policy
        assert len(of("evaluate", policy=policy)) == runs * len(segment["archs"]), policy
