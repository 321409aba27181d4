"""hardgen.config.settings: one dataclass field per schema key and one schema key per field, the schema's defaults,
and the exact params each job's fields derive (the rules' params: tests/test_rerun_triggers.py)."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from hardgen.config import settings as st
from hardgen.config.validation import load_config, load_schema, resolve_ref

SCHEMA = load_schema()


def _ref(node: dict) -> dict:
    return resolve_ref(node, SCHEMA)


def _sections(cls: type[st.Section], node: dict, path: str):
    """(path, settings class, schema object) of every schema object with properties, from the top down."""
    node = _ref(node)
    yield path, cls, node
    for key, f in cls.keys().items():
        child = _ref(node["properties"][key])
        if f.metadata["section"] is not None:
            yield from _sections(f.metadata["section"], child, f"{path}.{key}".lstrip("."))
        if f.metadata["entries"] is not None:
            yield from _sections(f.metadata["entries"], child["additionalProperties"], f"{path}.{key}.*".lstrip("."))


SECTIONS = list(_sections(st.Settings, SCHEMA, ""))


def test_every_schema_key_has_exactly_one_field_and_every_field_one_key():
    assert len(SECTIONS) >= 20
    for path, cls, node in SECTIONS:
        assert cls.PATH == path
        fields = [st.schema_key(f) for f in dataclasses.fields(cls) if f.metadata.get("schema", True)]
        assert sorted(fields) == sorted(node["properties"]), path
        assert len(set(fields)) == len(fields), path
        for key, f in cls.keys().items():
            child = _ref(node["properties"][key])
            # a schema object with keys is a settings class; a keyed mapping of such objects is entries of one
            nested = "properties" in child
            entries = isinstance(child.get("additionalProperties"), dict) and "$ref" in child["additionalProperties"]
            assert (f.metadata["section"] is not None) == nested, f"{path}.{key}"
            assert (f.metadata["entries"] is not None) == entries, f"{path}.{key}"


def _filled(default, node: dict):
    """A schema default as the validated config holds it: an object's own keys' defaults filled in."""
    node = _ref(node)
    if isinstance(default, dict) and "properties" in node:
        default = copy.deepcopy(default)
        for key, child in node["properties"].items():
            child = _ref(child)
            if key not in default and "default" in child:
                default[key] = _filled(child["default"], child)
    return default


def test_the_dataclass_defaults_are_the_schema_defaults():
    for path, cls, node in SECTIONS:
        required = set(node.get("required", []))
        for key, f in cls.keys().items():
            child = _ref(node["properties"][key])
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            assert has_default == ("default" in child), f"{path}.{key}: a default in one of schema and settings"
            assert not (has_default and key in required), f"{path}.{key}"
            if not has_default:
                continue
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            value = value.as_config() if isinstance(value, st.Section) else value
            assert value == _filled(child["default"], child), f"{path}.{key}"
            assert type(value) is type(_filled(child["default"], child)), f"{path}.{key}"


def test_every_field_is_documented_by_its_schema_description():
    for _, cls, _ in SECTIONS:
        for f in dataclasses.fields(cls):
            if f.metadata.get("schema", True):
                assert st.description(cls, f.name), f"{cls.PATH}.{f.name}"
    assert st.description(st.HardConfig, "lambda_").startswith("weight λ of the hardness term")


@pytest.fixture(scope="module", params=[["config.yaml"], ["config.yaml", "sd15-polyp.yaml"],
                                        ["config.yaml", "paper.yaml"], ["config.yaml", "rehearsal.yaml"]])
def config(request, repo_root):
    from hardgen.config.validation import validate_config

    config = load_config([repo_root / "config" / name for name in request.param])
    validate_config(config)
    return config


def test_settings_hold_the_validated_config_in_its_order(config):
    settings = st.Settings.from_config(config)
    assert settings.as_config() == config
    assert repr(settings.as_config()) == repr(config)  # key order too: a rule's params are compared by repr
    assert settings.hard.lambda_ == config["hard"]["lambda"]
    assert settings.segment.archs[config["feedback"]["segmenter"]].arch
    assert settings.data.demo.n_train == config["data"]["demo"]["n_train"]


def test_the_training_jobs_read_every_train_and_hard_key(config):
    settings = st.Settings.from_config(config)
    train = list(SCHEMA["properties"]["train"]["properties"])
    # the stage's tracker and validation cadence reach each job resolved (its own key or train's: tracking), never raw
    tracked = {"report_to", "validation_steps"}
    # the plain training reads every train.* key; a fine-tuning every one but train.steps (its own section's steps)
    assert sorted(settings.train.params("plain")) == sorted(set(train) - tracked)
    assert sorted(settings.train.params("finetune")) == sorted(set(train) - {"steps"} - tracked)
    assert sorted(settings.hard.params("hard")) == sorted(set(SCHEMA["properties"]["hard"]["properties"]) - tracked)
    # the judge's segmenter and seed are the feedback job's input, not params
    assert sorted(settings.feedback.params("feedback")) == sorted(
        set(SCHEMA["properties"]["feedback"]["properties"]) - {"segmenter", "judge_seed"} - tracked)
    assert settings.tracking("plain") == {"report_to": "tensorboard", "validation_steps": config["train"][
        "validation_steps"]}
    own = st.Settings.from_config({**config, "hard": {**config["hard"], "report_to": "none", "validation_steps": 7}})
    assert own.tracking("hard") == {"report_to": "none", "validation_steps": 7}
    assert own.report_to("feedback") == own.report_to("segment") == own.report_to("plain") == config["train"]["report_to"]
    assert list(settings.model.params("generator")) == ["family", "vae", "resolution", "prompt"]
    assert list(settings.lora.params("adapters")) == ["preset", "rank", "conv_in_rank", "init", "condition_latent"]


def test_a_segmenter_job_is_given_every_segment_key_a_run_reads(config):
    settings = st.Settings.from_config(config)
    # size, augment and every recipe key an arch may override (segment.* and segment.archs.<key>.* of one name)
    recipe = set(st.SegmenterConfig.keys()) & set(st.SegmentConfig.keys())
    assert set(settings.segment.params("run")) == {"size", "augment", *recipe}
    assert list(settings.segment.params("filtered_run")) == [*settings.segment.params("run"), "pixel_filter"]
    for key, arch in settings.segment.archs.items():
        assert arch.params("segmenter") == {k: v for k, v in config["segment"]["archs"][key].items()
                                            if k != "published"}


def test_a_feature_extractor_never_reads_the_hardness_margin(config):
    settings = st.Settings.from_config(config)
    prototype = ("prototype_crop", "prototype")  # the prototype job's recipe and a user's file: neither is trained on
    for key, backbone in settings.backbones.items():
        entry = config["backbones"][key]
        hard = {k: v for k, v in entry.items() if k not in prototype}
        assert backbone.params("hard") == hard and list(backbone.params("hard")) == list(hard)
        assert backbone.params("extractor") == {k: v for k, v in hard.items() if k != "margin"}
        assert backbone.params("prototype") == {"prototype_crop": entry["prototype_crop"]}


def test_a_job_view_holds_only_its_params(config):
    settings = st.Settings.from_config(config)
    view = st.TrainConfig.from_params("finetune", settings.train.params("finetune"))
    assert view.steps is st.UNREAD and view.batch_size == settings.train.batch_size
    assert view.params("finetune") == settings.train.params("finetune")
    with pytest.raises(st.ConfigKeyError, match="train: job 'finetune' params hold"):
        st.TrainConfig.from_params("finetune", settings.train.params("plain"))
    with pytest.raises(st.ConfigKeyError, match="no key is read by job 'plain'"):
        settings.hard.params("plain")


def test_a_config_that_is_not_validated_is_named():
    with pytest.raises(st.ConfigKeyError, match=r"'condition': unknown keys \['kind'\], missing keys \['type'\]"):
        st.ConditionConfig.from_config({"kind": "mask", "layouts_per_mask": 0, "canny_low": 1, "canny_high": 2})


def test_lora_summary_takes_the_adapter_shape_it_is_not_given_from_the_config(repo_root, capsys):
    import json

    from hardgen.app.cli import main

    unet = repo_root / "resources" / "sd15-unet" / "config.json"
    # the demo's lora section: half_skip_attn, rank 16, conv_in rank 64
    demo = repo_root / "config" / "config.yaml"
    assert main(["lora-summary", "--unet-config", str(unet), "--config", str(demo)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"modules": 66, "trainable_params": 5_447_168}
    # every flag given: no config is read
    argv = ["lora-summary", "--unet-config", str(unet), "--preset", "full", "--rank", "16", "--conv-in-rank", "64",
            "--config", str(repo_root / "no-such.yaml")]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"modules": 282, "trainable_params": 16_950_848}
    assert main(["lora-summary", "--unet-config", str(unet), "--config", str(repo_root / "no-such.yaml")]) == 1
    assert "no-such.yaml" in capsys.readouterr().err


def test_the_key_lists_outside_the_config_package_are_settings_keys():
    """segment.archs' keys and recipe keys are derived from the settings; the pretrain stages' config paths (their own
    settings' names, some renamed: condition.type is ``condition``) each name a settings key."""
    from hardgen.pretrain import adapter, decoder, tiny_sd
    from hardgen.segmentation.build import ARCH_KEYS
    from hardgen.segmentation.recipes import ARCH_RECIPE_KEYS, SHARED_RECIPE_KEYS

    assert ARCH_RECIPE_KEYS == ("optimizer", "learning_rate", "weight_decay", "lr_decay", "batch_size", "iterations",
                                "multi_scale", "grad_clip", "loss", "resize")
    assert SHARED_RECIPE_KEYS == ("size", "augment")
    assert set(ARCH_KEYS) == {"arch", "encoder", "encoder_weights", "checkpoint", "published", *ARCH_RECIPE_KEYS}
    for module, settings in ((tiny_sd, tiny_sd.PretrainSettings), (adapter, adapter.AdapterSettings),
                             (decoder, decoder.DecoderSettings)):
        for name, path in module.CONFIG_FIELDS.items():
            assert name in {f.name for f in dataclasses.fields(settings)}, (module.__name__, name)
            section: type[st.Section] = st.Settings
            for part in path[:-1]:
                section = section.keys()[part].metadata["section"]
            assert path[-1] in section.keys(), (module.__name__, name, path)
