"""Configuration loading and validation shared by the workflow and the CLI.

Two levels, so that `snakemake -n` stays fast:

* :func:`validate_config` — JSON schema (types, ranges, unknown keys) plus cross-key rules. Pure Python, no torch;
  runs when the Snakefile is parsed.
* :func:`check_registries` — names that only a library can judge (timm backbones, smp architectures and encoders).
  Imports torch, so the workflow runs it in ``onstart`` (before any job starts, skipped on dry runs) and
  ``hardgen validate-config`` runs both.

Every error names the offending key path, e.g. ``config key 'train.steps': -3 is less than the minimum of 1``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"

#: Which generated variant each segmentation policy draws its samples from.
POLICY_VARIANTS = {"real": None, "plain": "plain", "hard": "hard", "feedback": "feedback", "hard_band": "hard", "random": "plain"}


class ConfigError(ValueError):
    """Invalid configuration; the message names the key path(s)."""


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``overlay`` onto ``base`` (overlay wins; mappings merge, everything else replaces)."""
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(paths: Iterable[str | Path]) -> dict[str, Any]:
    """Load and deep-merge YAML files in order (the demo config first, overlays after)."""
    config: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read config ({err})") from err
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: top level must be a mapping")
        config = deep_merge(config, data)
    return config


def _key_path(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts) or "<root>"


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ConfigError` listing every problem, each with its key path."""
    schema = schema or load_schema()
    validator = Draft202012Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = _key_path(err.absolute_path)
        if err.validator == "additionalProperties":
            problems.append(f"config key '{where}': {err.message} (unknown key)")
        else:
            problems.append(f"config key '{where}': {err.message}")
    if not problems:
        problems.extend(_cross_key_problems(config))
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _cross_key_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    low, high = config["filter"]["band"]
    if not low < high:
        problems.append(f"config key 'filter.band': quantiles must be increasing, got [{low}, {high}]")
    cond = config["condition"]
    if cond.get("canny_low", 100) >= cond.get("canny_high", 200):
        problems.append("config key 'condition.canny_low': must be below condition.canny_high")
    demo = config["data"].get("demo", {})
    if demo.get("min_size", 0) > demo.get("max_size", 10**9):
        problems.append("config key 'data.demo.min_size': must not exceed data.demo.max_size")
    archs = config["segment"]["archs"]
    if config["feedback"]["segmenter"] not in archs:
        problems.append(
            f"config key 'feedback.segmenter': '{config['feedback']['segmenter']}' is not a key of segment.archs "
            f"({', '.join(archs)})"
        )
    score_backbone = config["filter"].get("score_backbone", "all")
    if score_backbone != "all" and score_backbone not in config["backbones"]:
        problems.append(f"config key 'filter.score_backbone': '{score_backbone}' is not 'all' or a backbones key")
    variants = set(config["generation"].get("variants", ["plain", "hard", "feedback"]))
    for policy in config["segment"]["policies"]:
        needed = POLICY_VARIANTS[policy]
        if needed and needed not in variants:
            problems.append(f"config key 'segment.policies': policy '{policy}' needs generation.variants to include '{needed}'")
    if config["model"]["base"] == "tiny" and not config["model"].get("tiny_config"):
        problems.append("config key 'model.tiny_config': required when model.base is 'tiny'")
    return problems


def check_registries(config: Mapping[str, Any]) -> None:
    """Check timm backbone names and smp architectures/encoders; raise :class:`ConfigError` naming the key."""
    import segmentation_models_pytorch as smp
    import timm
    from segmentation_models_pytorch.encoders import get_encoder_names

    problems = []
    for key, spec in config["backbones"].items():
        if not timm.is_model(spec["name"]):
            problems.append(f"config key 'backbones.{key}.name': unknown timm model '{spec['name']}'")
    arch_names = {name.lower() for name in smp.MODEL_ARCHITECTURES_MAPPING}
    encoders = set(get_encoder_names())
    for key, spec in config["segment"]["archs"].items():
        if spec["arch"].lower() not in arch_names:
            problems.append(f"config key 'segment.archs.{key}.arch': unknown architecture '{spec['arch']}'")
        encoder = spec["encoder"]
        known = encoder in encoders or (encoder.startswith("tu-") and timm.is_model(encoder[3:]))
        if not known:
            problems.append(f"config key 'segment.archs.{key}.encoder': unknown encoder '{encoder}'")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
