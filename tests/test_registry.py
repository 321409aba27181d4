"""hardgen.core.registry: one declaration of every variant and policy, which the schema, the DAG, the filter, the report's
order and the cost table read."""

from __future__ import annotations

import pytest
import yaml

from hardgen.config.validation import (
    SCHEMA_PATH,
    ConfigError,
    load_config,
    load_schema,
    validate_config,
)
from hardgen.core import registry
from hardgen.report.plots import LORA_ORDER
from hardgen.report.tables import POLICY_ORDER, VARIANT_ORDER
from hardgen.scoring.filter import HARD_POLICIES, POLICIES, VARIANT_POLICIES

SCHEMA = load_schema()["properties"]
DEMO = SCHEMA_PATH.parents[3] / "config" / "config.yaml"


def test_the_schema_enums_are_filled_from_the_registry(tmp_path, monkeypatch):
    assert SCHEMA["generation"]["properties"]["variants"]["items"]["enum"] == list(registry.VARIANTS)
    assert SCHEMA["segment"]["properties"]["policies"]["items"]["enum"] == list(registry.POLICIES)
    # the file lists no names of its own: an entry added to the registry is a valid name, with no schema edit
    raw = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]
    assert "enum" not in raw["generation"]["properties"]["variants"]["items"]
    assert "enum" not in raw["segment"]["properties"]["policies"]["items"]
    monkeypatch.setitem(registry.VARIANTS, "twin", registry.Variant("twin", "plain", None, "pipeline"))
    monkeypatch.setitem(registry.POLICIES, "twin", registry.Policy("twin", "twin", "every", control="plain"))
    config = load_config([DEMO])
    config["generation"]["variants"].append("twin")
    config["segment"]["policies"].append("twin")
    validate_config(config)
    config["segment"]["policies"].append("triplet")
    with pytest.raises(ConfigError, match=r"segment.policies.\d+': 'triplet' is not one of \['real', 'plain'"):
        validate_config(config)
    # a schema that lists the names itself is refused (two lists would drift)
    listed = tmp_path / "schema.yaml"
    text = SCHEMA_PATH.read_text()
    at = text.index("items: {type: string}", text.index("\n      variants:"))
    listed.write_text(text[:at] + "items: {enum: [plain]}" + text[at + len("items: {type: string}"):])
    with pytest.raises(ConfigError, match=r"schema.yaml: generation.variants's enum comes from hardgen.core.registry"):
        load_schema(listed)


def test_the_guidance_checks_follow_the_variants_sampling(monkeypatch):
    """generation.mining_steps / generation.guided.window are checked when a variant samples that way, whatever its
    name."""
    config = load_config([DEMO])
    config["generation"].update(variants=["plain", "twin"], mining_steps=config["generation"]["steps"])
    config["segment"]["policies"], config["report"]["primary_contrast"] = ["real", "plain"], None
    config["generation"]["guided"]["window"] = [0.5, 0.5]
    validate_config(dict(config, generation=dict(config["generation"], variants=["plain"])))
    for sampling, key in (("mined", "generation.mining_steps"), ("guided", "generation.guided.window")):
        monkeypatch.setitem(registry.VARIANTS, "twin", registry.Variant("twin", "plain", None, sampling))
        with pytest.raises(ConfigError) as err:
            validate_config(config)
        assert f"config key '{key}'" in str(err.value) and len(str(err.value).splitlines()) == 2, sampling


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
    assert VARIANT_POLICIES == ("plain", "hard", "feedback", "mined", "guided", "inpaint", "hard_inpaint")
    assert HARD_POLICIES == ("hard_band", "hard_faithful")
    assert VARIANT_ORDER == ("real", *registry.VARIANTS)
    assert LORA_ORDER == ("plain", "hard", "feedback")
    # a lesion in a real frame against the whole image of the same LoRA (the registry's versus)
    assert {p.name: p.control for p in registry.POLICIES.values() if p.control} == {
        "hard": "plain", "feedback": "plain", "mined": "plain", "guided": "plain", "inpaint": "plain",
        "hard_inpaint": "hard", "hard_band": "hard", "hard_faithful": "hard"}


def test_trained_loras_and_what_each_variant_samples():
    assert registry.trained_loras(["plain", "mined"]) == ["plain"]
    assert registry.trained_loras(["guided", "feedback", "hard"]) == ["plain", "hard", "feedback"]
    assert [v.name for v in registry.VARIANTS.values() if v.uses_backbones] == ["mined", "guided"]
    assert [v.name for v in registry.VARIANTS.values() if v.inpaints] == ["inpaint", "hard_inpaint"]
    assert registry.trained_loras(["inpaint"]) == ["plain"] and registry.trained_loras(["hard_inpaint"]) == [
        "plain", "hard"]  # hard_inpaint samples the hard LoRA, which then trains
    assert registry.VARIANTS["mined"].generation_keys[-2:] == ("candidates", "mining_steps")
    assert registry.ordered(["x", "guided", "plain"], registry.VARIANTS) == ["plain", "guided", "x"]


def test_the_primary_contrast_is_a_paired_difference_the_registry_declares():
    """report.primary_contrast: a synthetic policy against real or against its entry's size-matched control."""
    config = load_config([DEMO])
    config["segment"]["policies"] = ["real", "plain", "hard", "hard_band"]
    contrast = config["report"]["primary_contrast"]
    for policy, versus in (("hard", "plain"), ("hard", "real"), ("hard_band", "hard"), ("hard_band", "real")):
        validate_config(dict(config, report=dict(config["report"], primary_contrast=dict(contrast, policy=policy,
                                                                                          versus=versus))))
    contrast.update(policy="hard_band", versus="plain")
    with pytest.raises(ConfigError, match=r"primary_contrast.versus': 'plain' is neither a real-only policy nor the "
                                          r"size-matched control of hard_band \(hard;"):
        validate_config(config)
    contrast.update(policy="real", versus="hard")
    with pytest.raises(ConfigError, match=r"primary_contrast.policy': 'real' must be a synthetic policy"):
        validate_config(config)
