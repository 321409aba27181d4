"""hardgen.core.registry: one declaration of every variant and policy, which the schema, the DAG, the filter, the report's
order and the cost table read."""

from __future__ import annotations

from pathlib import Path

import yaml

from hardgen.config.validation import POLICY_VARIANTS
from hardgen.core import registry
from hardgen.report.tables import POLICY_ORDER, VARIANT_ORDER
from hardgen.scoring.filter import HARD_POLICIES, POLICIES, VARIANT_POLICIES

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow" / "schemas" /
                         "config.schema.yaml").read_text())["properties"]


def test_the_schema_enums_are_the_registry():
    assert SCHEMA["generation"]["properties"]["variants"]["items"]["enum"] == list(registry.VARIANTS)
    assert SCHEMA["segment"]["properties"]["policies"]["items"]["enum"] == list(registry.POLICIES)


def test_every_key_a_variant_or_policy_reads_is_a_config_key():
    generation, model = SCHEMA["generation"]["properties"], SCHEMA["model"]["properties"]
    for variant in registry.VARIANTS.values():
        assert set(variant.generation_keys) <= set(generation), variant.name
        assert variant.lora in registry.VARIANTS and registry.VARIANTS[variant.lora].trains
    assert set(registry.MODEL_KEYS) <= set(model)
    for policy in registry.POLICIES.values():
        assert set(policy.keys) <= set(SCHEMA["filter"]["properties"]), policy.name
        assert policy.source is None or policy.source in registry.VARIANTS


def test_the_filter_config_and_report_read_the_registry():
    assert POLICIES == tuple(registry.POLICIES) == POLICY_ORDER
    assert VARIANT_POLICIES == ("plain", "hard", "feedback", "mined", "guided")
    assert HARD_POLICIES == ("hard_band", "hard_faithful")
    assert POLICY_VARIANTS["hard_faithful"] == ("hard",) and POLICY_VARIANTS["real"] == ()
    assert VARIANT_ORDER == ("real", *registry.VARIANTS)


def test_trained_loras_and_what_each_variant_samples():
    assert registry.trained_loras(["plain", "mined"]) == ["plain"]
    assert registry.trained_loras(["guided", "feedback", "hard"]) == ["plain", "hard", "feedback"]
    assert [v.name for v in registry.VARIANTS.values() if v.uses_backbones] == ["mined", "guided"]
    assert registry.VARIANTS["mined"].generation_keys[-2:] == ("candidates", "mining_steps")
    assert registry.ordered(["x", "guided", "plain"], registry.VARIANTS) == ["plain", "guided", "x"]


def test_a_segmenter_job_is_given_every_segment_key_a_run_reads():
    import re

    from hardgen.segmentation.segment import ARCH_RECIPE_KEYS

    common = (Path(__file__).resolve().parents[1] / "workflow" / "rules" / "common.smk").read_text()
    declared = re.search(r"SEGMENT_RUN_KEYS = \(([^)]*)\)", common).group(1)
    keys = set(re.findall(r'"(\w+)"', declared))
    assert keys == {"size", "augment", *ARCH_RECIPE_KEYS}


def test_the_training_jobs_are_given_every_train_and_hard_key_and_no_other():
    import re

    from hardgen.generator.stages import FINETUNE_TRAIN_KEYS, PLAIN_TRAIN_KEYS

    # the plain training reads every train.* key; a fine-tuning every one but train.steps (its own section's steps)
    assert sorted(PLAIN_TRAIN_KEYS) == sorted(SCHEMA["train"]["properties"])
    assert sorted(FINETUNE_TRAIN_KEYS) == sorted(set(SCHEMA["train"]["properties"]) - {"steps"})
    common = (Path(__file__).resolve().parents[1] / "workflow" / "rules" / "common.smk").read_text()
    declared = re.search(r"HARD_KEYS = \(([^)]*)\)", common).group(1)
    assert sorted(re.findall(r'"(\w+)"', declared)) == sorted(SCHEMA["hard"]["properties"])
