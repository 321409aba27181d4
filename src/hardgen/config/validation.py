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

from hardgen.core.registry import POLICIES as REGISTERED_POLICIES
from hardgen.core.registry import VARIANTS as REGISTERED_VARIANTS

#: The config schema, shipped in the package (package data): the one copy the workflow and the CLI validate with.
SCHEMA_PATH = Path(__file__).resolve().with_name("config.schema.yaml")

#: Policies that no longer exist, and why: every synthetic policy now trains with round(r × n_real) images at
#: each ratio r of segment.synthetic_ratios, so the benchmark's own policies are the size-matched controls.
REMOVED_POLICIES: dict[str, str] = {
    "hard_random": "Every policy now has round(r × real images) synthetic images at each segment.synthetic_ratios "
                   "entry, so 'hard' at that ratio is the size-matched random control of hard_band and "
                   "hard_faithful (same variant, same size, same seeded draw); drop 'hard_random' from "
                   "segment.policies and keep 'hard'.",
    "random": "Every policy now has round(r × real images) synthetic images at each segment.synthetic_ratios "
              "entry, so 'plain' at that ratio is the size-matched random control of hard, feedback and mined "
              "(same size, the same conditions); drop 'random' from segment.policies and keep 'plain'.",
}


def ratio_label(ratio: float) -> str:
    """A synthetic ratio as it appears in paths and tables: ``f"{r:g}"`` (0.5, 1, 2; the real policy: 0)."""
    return f"{float(ratio):g}"


#: The label of "every training image" in ``data.train_subsets``.
ALL_TRAIN = "all"


def train_subset_labels(config: Mapping[str, Any]) -> list[str]:
    """The real training-set sizes of the run as path labels (``"24"``, ``"all"``): ``data.train_subsets`` as
    written, or the one size of ``data.train_subset`` (``"all"`` when null). Two labels or more turn the data-scarcity
    curve on (:func:`scarcity`)."""
    sizes = config["data"].get("train_subsets")
    if sizes is None:
        single = config["data"].get("train_subset")
        return [ALL_TRAIN if single is None else str(int(single))]
    return [str(s) for s in sizes]


def train_subset_size(label: str) -> int | None:
    """A size label as :func:`hardgen.data.manifest.train_subset` takes it: the count, or None for ``all``."""
    return None if label == ALL_TRAIN else int(label)


def scarcity(config: Mapping[str, Any]) -> bool:
    """Whether the run is a data-scarcity curve: ``data.train_subsets`` with two sizes or more."""
    return len(train_subset_labels(config)) >= 2


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
    """Load and deep-merge YAML files in order (the demo config first, overlays after), then fill the
    schema's defaults (:func:`apply_defaults`), as the workflow sees it."""
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
    return apply_defaults(config)


def _key_path(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts) or "<root>"


#: The schema's enums of names that hardgen.core.registry declares: ``(section, key) -> registry table``, the enum
#: of ``properties.<section>.properties.<key>.items`` (an array of those names), filled in by :func:`load_schema`.
REGISTRY_ENUMS: dict[tuple[str, str], Mapping[str, object]] = {
    ("generation", "variants"): REGISTERED_VARIANTS,
    ("segment", "policies"): REGISTERED_POLICIES,
}


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The config schema at ``path``, its variant and policy enums filled from the registry (:data:`REGISTRY_ENUMS`,
    read when called: an entry added at run time is in)."""
    path = Path(path)
    schema = yaml.safe_load(path.read_text())
    for (section, key), table in REGISTRY_ENUMS.items():
        try:
            items = schema["properties"][section]["properties"][key]["items"]
        except (KeyError, TypeError) as err:
            raise ConfigError(f"{path}: no properties.{section}.properties.{key}.items (the registry's enum)") from err
        if "enum" in items:
            raise ConfigError(f"{path}: {section}.{key}'s enum comes from hardgen.core.registry; the schema lists none")
        items["enum"] = list(table)
    return schema


def resolve_ref(node: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """A schema node with its local ``$ref`` (``#/$defs/name``) followed: the target's keys, with the keys written
    beside the ref on top (``per_mask: {$ref: posint, default: 1}`` keeps its default and its description)."""
    ref = node.get("$ref")
    if not ref:
        return node
    if not ref.startswith("#/"):
        raise ConfigError(f"schema: only local $ref are supported, got {ref!r}")
    target: Any = schema
    for part in ref[2:].split("/"):
        target = target[part]
    return {**resolve_ref(target, schema), **{key: value for key, value in node.items() if key != "$ref"}}


def apply_defaults(config: dict[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fill every absent key that has a ``default`` in the schema, recursively (in place; also returned).

    The schema is the one place defaults live: stages read ``config[section][key]`` and never repeat a
    default of their own. Mapping-valued sections (``backbones``, ``segment.archs``) get the defaults of
    their entry schema.
    """
    schema = schema or load_schema()
    drop_removed_archs(config)

    def fill(instance: Any, node: Mapping[str, Any]) -> None:
        node = resolve_ref(node, schema)
        if not isinstance(instance, dict):
            return
        for key, child in node.get("properties", {}).items():
            child = resolve_ref(child, schema)
            if key not in instance and "default" in child:
                instance[key] = copy.deepcopy(child["default"])
            if key in instance:
                fill(instance[key], child)
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key, value in instance.items():
                if key not in node.get("properties", {}):
                    fill(value, extra)

    fill(config, schema)
    return config


def drop_removed_archs(config: dict[str, Any]) -> dict[str, Any]:
    """Remove the ``segment.archs`` entries an overlay set to null (in place; also returned).

    Overlays merge key by key, so an overlay that benchmarks other segmenters than the config it overlays says
    ``<key>: null`` for each arch it drops (config/paper.yaml drops the demo's cnn and transformer this way).
    """
    archs = config.get("segment", {}).get("archs") if isinstance(config.get("segment"), dict) else None
    if isinstance(archs, dict):
        for key in [k for k, v in archs.items() if v is None]:
            del archs[key]
    return config


def validate_config(config: dict[str, Any], schema: Mapping[str, Any] | None = None) -> None:
    """Fill schema defaults into ``config`` (in place), then raise :class:`ConfigError` listing every problem,
    each with its key path."""
    schema = schema or load_schema()
    apply_defaults(config, schema)
    validator = Draft202012Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = _key_path(err.absolute_path)
        if err.validator == "additionalProperties":
            problems.append(f"config key '{where}': {err.message} (unknown key)")
        elif err.validator == "enum" and err.instance in REMOVED_POLICIES and where.startswith("segment.policies"):
            problems.append(f"config key '{where}': policy '{err.instance}' was removed. "
                            f"{REMOVED_POLICIES[err.instance]}")
        else:
            problems.append(f"config key '{where}': {err.message}")
    if not problems:
        problems.extend(_cross_key_problems(config))
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _cross_key_problems(config: Mapping[str, Any]) -> list[str]:
    problems = _train_subsets_problems(config["data"])
    low, high = config["filter"]["band"]
    if not low < high:
        problems.append(f"config key 'filter.band': quantiles must be increasing, got [{low}, {high}]")
    cond = config["condition"]
    if cond["canny_low"] >= cond["canny_high"]:
        problems.append("config key 'condition.canny_low': must be below condition.canny_high")
    data = config["data"]
    demo = data["demo"]
    if demo["min_size"] > demo["max_size"]:
        problems.append("config key 'data.demo.min_size': must not exceed data.demo.max_size")
    if data["root"] is None:
        wanted = ["pranet", "table"] if demo["modality"] == "polyp" else ["folders", "table"]
        if data["layout"] not in wanted:
            problems.append(f"config key 'data.layout': the {demo['modality']} demo (data.root null, "
                            f"data.demo.modality) is written for layout {' or '.join(wanted)}, not {data['layout']}")
    if data["layout"] == "pranet" and list(data["train_splits"]) != ["train"]:
        problems.append(f"config key 'data.train_splits': the pranet layout has one training split, train "
                        f"(got {data['train_splits']})")
    clash = sorted(set(data["train_splits"]) & set(data["testsets"]) | ({"train"} & set(data["testsets"])))
    if clash:
        problems.append(f"config key 'data.testsets': {clash} also name training splits (or the manifest's train)")
    unknown = sorted(k for k, v in data["expected_sizes"].items() if v is not None and k not in ["train", *data["testsets"]])
    if unknown:
        problems.append(f"config key 'data.expected_sizes': {unknown} are neither train nor in data.testsets "
                        "(null clears an expectation)")
    if data["window"] is not None and not data["window"][0] < data["window"][1]:
        problems.append(f"config key 'data.window': need low < high, got {data['window']}")
    archs = config["segment"]["archs"]
    if config["feedback"]["segmenter"] not in archs:
        problems.append(
            f"config key 'feedback.segmenter': '{config['feedback']['segmenter']}' is not a key of segment.archs "
            f"({', '.join(archs)})"
        )
    score_backbone = config["filter"]["score_backbone"]
    if score_backbone != "all" and score_backbone not in config["backbones"]:
        problems.append(f"config key 'filter.score_backbone': '{score_backbone}' is not 'all' or a backbones key")
    fidelity_backbone = config["filter"]["fidelity_backbone"]
    if fidelity_backbone not in config["backbones"]:
        problems.append(f"config key 'filter.fidelity_backbone': '{fidelity_backbone}' is not a backbones key "
                        f"({', '.join(config['backbones'])})")
    elif fidelity_backbone in config["hard"]["loss_backbones"]:
        problems.append(f"config key 'filter.fidelity_backbone': '{fidelity_backbone}' is in hard.loss_backbones; "
                        "the fidelity guard needs a held-out backbone the hard generator never optimised against")
    if "real" not in config["segment"]["policies"]:
        problems.append("config key 'segment.policies': must include 'real' (the real-only segmenters are the "
                        "baseline of every paired difference, the fidelity guard's Dice judges and the hardness "
                        "transfer's segmenters)")
    labels = [ratio_label(r) for r in config["segment"]["synthetic_ratios"]]
    if len(set(labels)) != len(labels):
        problems.append(f"config key 'segment.synthetic_ratios': ratios {labels} coincide as path labels (f'{{r:g}}')")
    variants = set(config["generation"]["variants"])
    for policy in config["segment"]["policies"]:
        needed = REGISTERED_POLICIES[policy].source
        if needed is not None and needed not in variants:
            problems.append(f"config key 'segment.policies': policy '{policy}' needs generation.variants to "
                            f"include '{needed}'")
    generation = config["generation"]
    samplings = {REGISTERED_VARIANTS[v].sampling for v in variants}
    if "mined" in samplings and generation["mining_steps"] >= generation["steps"]:
        problems.append(f"config key 'generation.mining_steps': {generation['mining_steps']} must be below "
                        f"generation.steps ({generation['steps']}): candidates are scored part-way through sampling")
    start, end = generation["guided"]["window"]
    if "guided" in samplings and not start < end:
        problems.append(f"config key 'generation.guided.window': need start < end, got [{start}, {end}]")
    inpaint = generation["inpaint"]
    if inpaint["feather"] > inpaint["dilate"]:
        problems.append(f"config key 'generation.inpaint.feather': {inpaint['feather']} exceeds "
                        f"generation.inpaint.dilate ({inpaint['dilate']}): the mask itself must be fully generated")
    if ("inpaint" in samplings and "frames" in inpaint["placements"] and data["root"] is not None
            and data["background_frames"] is None):
        problems.append("config key 'generation.inpaint.placements': 'frames' needs data.background_frames (a folder "
                        "of lesion-free frames; only the demo renders its own)")
    for key in config["hard"]["loss_backbones"]:
        if key not in config["backbones"]:
            problems.append(f"config key 'hard.loss_backbones': '{key}' is not a backbones key "
                            f"({', '.join(config['backbones'])})")
    problems.extend(_report_problems(config))
    problems.extend(random_weight_problems(config))
    return problems


def _train_subsets_problems(data: Mapping[str, Any]) -> list[str]:
    sizes = data.get("train_subsets")
    if sizes is None:
        return []
    if data.get("train_subset") is not None:
        message = ("config key 'data.train_subsets': set together with data.train_subset; data.train_subset: N is "
                   "data.train_subsets: [N], set one of them")
        return [message]
    counts = [s for s in sizes if s != ALL_TRAIN]
    if counts != sorted(set(counts)) or sizes.count(ALL_TRAIN) > 1 or (ALL_TRAIN in sizes and sizes[-1] != ALL_TRAIN):
        return [f"config key 'data.train_subsets': sizes must be increasing and unique ('all' last), got {sizes}"]
    return []


def _report_problems(config: Mapping[str, Any]) -> list[str]:
    """report.primary_contrast must name a contrast the benchmark runs; a published model needs an anchors file."""
    problems = []
    report = config.get("report") or {}
    contrast = report.get("primary_contrast")
    if contrast:
        policies = config["segment"]["policies"]
        for key in ("policy", "versus"):
            if contrast[key] not in policies:
                problems.append(f"config key 'report.primary_contrast.{key}': '{contrast[key]}' is not in "
                                f"segment.policies ({', '.join(policies)})")
        # a name that is no policy is not in segment.policies either: said above
        policy, versus = (REGISTERED_POLICIES.get(contrast[key]) for key in ("policy", "versus"))
        if policy is not None and (policy.pool == "none" or policy == versus):
            problems.append(f"config key 'report.primary_contrast.policy': '{contrast['policy']}' must be a synthetic "
                            "policy other than versus")
        elif policy is not None and versus is not None and versus.pool != "none" and versus.name != policy.control:
            problems.append(f"config key 'report.primary_contrast.versus': '{versus.name}' is neither a real-only "
                            f"policy nor the size-matched control of {policy.name} ({policy.control}; "
                            "hardgen.core.registry): the benchmark has no such paired difference")
        labels = [ratio_label(r) for r in config["segment"]["synthetic_ratios"]]
        if ratio_label(contrast["ratio"]) not in labels:
            problems.append(f"config key 'report.primary_contrast.ratio': {contrast['ratio']:g} is not in "
                            f"segment.synthetic_ratios ({', '.join(labels)})")
    if report.get("anchors") is None:
        named = sorted(k for k, spec in config["segment"]["archs"].items() if spec.get("published"))
        if named:
            problems.append(f"config key 'report.anchors': null, but segment.archs {named} name a published model")
    return problems


def random_weight_problems(config: Mapping[str, Any]) -> list[str]:
    """Backbones and segmenter encoders that would start from random weights on real data.

    On real data (``data.root`` set) a feature extractor or encoder with neither pretrained weights nor a
    checkpoint is almost always a forgotten setting, and its numbers would look real: it is an error
    unless ``allow_random_weights: true``. The demo (``data.root: null``) runs random weights by design.
    """
    if config["data"]["root"] is None or config["allow_random_weights"]:
        return []
    problems = []
    hint = "; give pretrained weights or a checkpoint, or set allow_random_weights: true"
    for key, spec in config["backbones"].items():
        if not spec["pretrained"] and not spec["checkpoint"]:
            problems.append(f"config key 'backbones.{key}': neither pretrained nor checkpoint: random weights{hint}")
    for key, spec in config["segment"]["archs"].items():
        if not spec["encoder_weights"] and not spec["checkpoint"]:
            problems.append(f"config key 'segment.archs.{key}': neither encoder_weights nor checkpoint: "
                            f"random encoder{hint}")
    return problems


def timm_name_problem(name: str) -> str | None:
    """Why ``name`` (``architecture`` or ``architecture.tag``) is not a timm model with those weights; None if it is.

    ``timm.is_model`` ignores the tag, so a misspelt weight tag would silently pick other weights (and
    another feature scale, which an absolute margin depends on).
    """
    import timm  # local: config validation must not need torch

    if not timm.is_model(name):
        return f"unknown timm model {name!r}"
    if "." in name:
        try:
            timm.models.get_pretrained_cfg(name)
        except RuntimeError as err:
            tags = [t.split(".", 1)[1] for t in timm.list_pretrained(name.split(".", 1)[0] + ".*")]
            return f"{err} Known tags: {tags[:12]}"
    return None


def check_registries(config: Mapping[str, Any]) -> None:
    """Check timm backbone names, smp architectures/encoders and the field archs' encoders (:mod:`hardgen.models.archs`);
    raise :class:`ConfigError` naming the key."""
    import segmentation_models_pytorch as smp
    import timm
    from segmentation_models_pytorch.encoders import get_encoder_names

    problems = []
    for key, spec in config["backbones"].items():
        if spec.get("source", "timm") != "timm":
            continue  # a transformers hub id or folder: judged when it is loaded (features.load_backbone)
        problem = timm_name_problem(spec["name"])
        if problem:
            problems.append(f"config key 'backbones.{key}.name': {problem}")
    from hardgen.models.archs import FIELD_ARCHS, encoder_problem, is_field_arch

    arch_names = {name.lower() for name in smp.MODEL_ARCHITECTURES_MAPPING}
    encoders = set(get_encoder_names())
    for key, spec in config["segment"]["archs"].items():
        if is_field_arch(spec["arch"]):  # PraNet, PolypPVT, HFSegformer (hardgen.models.archs)
            problem = encoder_problem(spec["arch"], spec["encoder"])
            if problem:
                problems.append(f"config key 'segment.archs.{key}.encoder': {problem}")
            continue
        if spec["arch"].lower() not in arch_names:
            problems.append(f"config key 'segment.archs.{key}.arch': unknown architecture '{spec['arch']}' (smp's, "
                            f"or one of {[name for name, _ in FIELD_ARCHS.values()]})")
        encoder = spec["encoder"]
        known = encoder in encoders or (encoder.startswith("tu-") and timm.is_model(encoder[3:]))
        if not known:
            problems.append(f"config key 'segment.archs.{key}.encoder': unknown encoder '{encoder}'")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
