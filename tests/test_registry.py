"""hardgen.core.registry: one declaration of every variant and policy, which the schema, the DAG, the filter, the report's
order and the cost table read."""

from __future__ import annotations

from pathlib import Path

import yaml

from hardgen.config.validation import POLICY_VARIANTS
from hardgen.core import registry
from hardgen.report.tables import POLICY_ORDER, VARIANT_ORDER
from hardgen.scoring.filter import HARD_POLICIES, POLICIES, VARIANT_POLICIES

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "src" / "hardgen" / "config" /
                         "config.schema.yaml").read_text())["properties"]


def test_the_schema_enums_are_the_registry():
    assert SCHEMA["generation"]["properties"]["variants"]["items"]["enum"] == list(registry.VARIANTS)
    assert SCHEMA["segment"]["properties"]["policies"]["items"]["enum"] == list(registry.POLICIES)


def test_every_key_a_variant_or_policy_reads_is_a_config_key():
    generation = SCHEMA["generation"]["properties"]
    for variant in registry.VARIANTS.values():
        assert set(variant.generation_keys) <= set(generation), variant.name
        assert variant.lora in registry.VARIANTS and registry.VARIANTS[variant.lora].trains
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
