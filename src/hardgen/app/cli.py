"""The ``hardgen`` console script.

Subcommands register themselves in :data:`SUBCOMMANDS` (name → (add_arguments, run)); to add one, write
the two functions and add an entry. ``run`` returns the exit code. Results meant for machines are printed
as one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hardgen.pretrain.tiny_sd import CheckpointOptions, Pretraining


def _add_lora_summary(parser: argparse.ArgumentParser) -> None:
    # the presets as the config schema lists them (lora.preset), so that building the parser imports no torch
    from hardgen.config.validation import load_schema

    presets = load_schema()["properties"]["lora"]["properties"]["preset"]["enum"]
    parser.add_argument("--unet-config", type=Path, help="UNet config.json (or its folder), e.g. resources/sd15-unet")
    parser.add_argument("--config", type=Path, nargs="+", default=[Path("config/config.yaml")],
                        help="workflow config(s), merged in order: its lora section gives the adapter shape flags not "
                        "given (default config/config.yaml)")
    parser.add_argument("--preset", choices=presets, default=None, help="target-module preset (default: lora.preset)")
    parser.add_argument("--rank", type=int, default=None,
                        help="LoRA rank of every layer but conv_in (default: lora.rank)")
    parser.add_argument("--conv-in-rank", type=int, default=None,
                        help="LoRA rank of conv_in (default: lora.conv_in_rank)")
    parser.add_argument(
        "--load",
        type=Path,
        help="summarise this control-lora-v3 file instead (checked against --unet-config when given): modules, "
        "trainable_params, abs_sum, and stored_params / live_params (half the stored count for a PiSSA file, "
        "saved at doubled rank) with lora_init from its header",
    )


def _run_lora_summary(args: argparse.Namespace) -> int:
    from hardgen.models.control_lora import lora_summary, lora_summary_from_file

    if args.load is not None:
        summary = lora_summary_from_file(args.load, args.unet_config)
    elif args.unet_config is None:
        raise ValueError("lora-summary: give --unet-config (or --load FILE)")
    else:
        summary = lora_summary(args.unet_config, *_lora_shape(args))
    print(json.dumps(summary, sort_keys=True))
    return 0


def _lora_shape(args: argparse.Namespace) -> tuple[str, int, int]:
    """(preset, rank, conv_in_rank): the flags given, the others from the config's lora section (read only when a
    flag is missing)."""
    given = (args.preset, args.rank, args.conv_in_rank)
    if None not in given:
        return given
    from hardgen.config.settings import Settings
    from hardgen.config.validation import load_config, validate_config

    config = load_config(args.config)
    validate_config(config)
    lora = Settings.from_config(config).lora
    preset, rank, conv_in_rank = (flag if flag is not None else value
                                  for flag, value in zip(given, (lora.preset, lora.rank, lora.conv_in_rank)))
    return preset, rank, conv_in_rank


def _add_build_tiny_sd(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-dir", type=Path, required=True, help="tiny-SD config folder (resources/tiny-sd)")
    parser.add_argument("--out", type=Path, required=True, help="output diffusers pipeline folder")
    parser.add_argument("--seed", type=int, default=0)


def _run_build_tiny_sd(args: argparse.Namespace) -> int:
    from hardgen.models.base_model import build_tiny_sd

    build_tiny_sd(args.config_dir, args.out, seed=args.seed)
    print(json.dumps({"out": str(args.out)}))
    return 0


def _add_settings_and_checkpoints(parser: argparse.ArgumentParser, pretraining: Pretraining, also: str = "") -> None:
    """One ``--name`` flag per settings field not read from the config (``pretraining.config_fields``), plus the
    ``--config`` and checkpoint flags."""
    defaults, from_config = pretraining.settings(), pretraining.config_fields
    read = ", ".join(".".join(path) for path in from_config.values()) + also
    parser.add_argument("--config", type=Path, nargs="+", default=[Path("config/config.yaml")],
                        help=f"workflow config(s), merged in order: {read} come from here")
    for name in pretraining.setting_names():
        if name in from_config:
            continue
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(default), default=None,
                            help=f"default {default}")
    run = parser.add_argument_group("checkpoints (never change the weights)")
    run.add_argument("--checkpoint-dir", type=Path, default=None,
                     help="where the resumable state goes (default: OUT's parent/.NAME.pretrain-checkpoint; removed "
                     "once OUT is saved)")
    run.add_argument("--checkpoint-minutes", type=float, default=5.0, help="save the state this often (default 5)")
    run.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                     help="resume a checkpoint made with the same settings (default); --no-resume starts over")
    run.add_argument("--stop-after-steps", type=int, default=None,
                     help="end this session after N steps with a checkpoint (rerun to go on)")
    run.add_argument("--stop-after-minutes", type=float, default=None,
                     help="end this session after M minutes with a checkpoint (rerun to go on)")


def _given_flags(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    return [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in names if getattr(args, name, None) is not None]


def _checkpointing(args: argparse.Namespace) -> CheckpointOptions:
    from hardgen.pretrain.tiny_sd import CheckpointOptions

    return CheckpointOptions(checkpoint_dir=args.checkpoint_dir, checkpoint_minutes=args.checkpoint_minutes,
                             resume=args.resume, stop_after_steps=args.stop_after_steps,
                             stop_after_minutes=args.stop_after_minutes)


def _add_pretrain_tiny(parser: argparse.ArgumentParser) -> None:
    from hardgen.pretrain.tiny_sd import PRETRAINING

    parser.add_argument("--out", type=Path, required=True,
                        help="output diffusers folder (make tiny-sd: build/tiny-sd-polyp-base, then pretrain-decoder)")
    parser.add_argument("--config-dir", type=Path, default=None,
                        help="tiny-SD config folder (default: the config's model.tiny_config)")
    _add_settings_and_checkpoints(parser, PRETRAINING, " and model.tiny_config")


def _run_pretraining(args: argparse.Namespace, pretraining: Pretraining,
                     first: Callable[[dict[str, Any]], Path], extra: list[str]) -> int:
    """Shared by ``pretrain-tiny``, ``pretrain-decoder`` and ``pretrain-adapter``: settings from the config and flags,
    the command for the model card, the run (``pretraining.run(first(config), out, settings, command=...,
    checkpointing=...)``), the summary printed as one JSON line."""
    from hardgen.config.validation import load_config

    config = load_config(args.config)
    names = pretraining.setting_names()
    settings = pretraining.settings_from_config(config, {name: getattr(args, name, None) for name in names})
    command = " ".join([f"hardgen {pretraining.name} --out", str(args.out), *extra, *_given_flags(args, names)])
    summary = pretraining.run(first(config), args.out, settings, command=command, checkpointing=_checkpointing(args))
    print(json.dumps(summary, sort_keys=True))
    return 0


def _run_pretrain_tiny(args: argparse.Namespace) -> int:
    from hardgen.pretrain.tiny_sd import PRETRAINING
    return _run_pretraining(args, PRETRAINING,
                            lambda config: args.config_dir or Path(config["model"]["tiny_config"]), [])


def _add_pretrain_adapter(parser: argparse.ArgumentParser) -> None:
    from hardgen.pretrain.adapter import PRETRAINING

    parser.add_argument("--base", type=Path, default=None,
                        help="the pre-trained base folder (default: the config's model.base)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output adapter folder (resources/tiny-sd-polyp-mask)")
    _add_settings_and_checkpoints(parser, PRETRAINING, " and model.base")


def _run_pretrain_adapter(args: argparse.Namespace) -> int:
    from hardgen.pretrain.adapter import PRETRAINING
    return _run_pretraining(args, PRETRAINING, lambda config: args.base or Path(config["model"]["base"]),
                            [f"--base {args.base}"] if args.base else [])


def _add_pretrain_decoder(parser: argparse.ArgumentParser) -> None:
    from hardgen.pretrain.decoder import PRETRAINING

    parser.add_argument("--base", type=Path, required=True,
                        help="the pre-trained base folder whose VAE decoder is fine-tuned (pretrain-tiny's --out)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output diffusers folder: the base with the new decoder (resources/tiny-sd-polyp)")
    _add_settings_and_checkpoints(parser, PRETRAINING)


def _run_pretrain_decoder(args: argparse.Namespace) -> int:
    from hardgen.pretrain.decoder import PRETRAINING
    return _run_pretraining(args, PRETRAINING, lambda config: args.base, [f"--base {args.base}"])


def _add_validate_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", type=Path, nargs="+", help="config files, merged in order (demo config first)")
    parser.add_argument("--schema", type=Path, default=None,
                        help="JSON-schema YAML (default: the one shipped in the package)")


def _run_validate_config(args: argparse.Namespace) -> int:
    from hardgen.config.validation import (
        check_registries,
        load_config,
        load_schema,
        validate_config,
    )

    config = load_config(args.configs)
    validate_config(config, load_schema(args.schema) if args.schema else None)
    check_registries(config)
    print(json.dumps({"valid": True, "configs": [str(p) for p in args.configs]}))
    return 0


def _add_segmenter_summary(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, nargs="+", required=True,
                        help="config file(s), merged in order with the schema's defaults (as validate-config does); "
                        "the segment.archs entries are summarised")


def _run_segmenter_summary(args: argparse.Namespace) -> int:
    from hardgen.config.validation import ConfigError, load_config, load_schema

    config = load_config(args.config)
    archs = (config.get("segment") or {}).get("archs")
    if not archs:
        raise ValueError(f"{', '.join(map(str, args.config))}: no segment.archs entries")
    from jsonschema import Draft202012Validator

    schema = load_schema()
    entry_schema = {**schema["$defs"]["segmenter"], "$defs": schema["$defs"]}
    problems = [f"config key 'segment.archs.{key}{'.' if err.absolute_path else ''}"
                f"{'.'.join(map(str, err.absolute_path))}': {err.message}"
                for key, entry in archs.items() for err in Draft202012Validator(entry_schema).iter_errors(entry)]
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    from hardgen.segmentation.build import summarize_segmenter

    for key, entry in archs.items():
        print(json.dumps(summarize_segmenter(entry, key)))
    return 0


def _add_evaluate_maps(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", type=Path, required=True,
                        help="prediction root: PRED/<testset>/<stem>.png, 8-bit maps (every folder is a test set)")
    parser.add_argument("--gt", type=Path, required=True,
                        help="ground-truth root: GT/<testset>/masks/<stem>.<png|jpg|jpeg|bmp|tif> (PraNet's TestDataset "
                             "or a folders-layout root)")
    parser.add_argument("--out", type=Path, required=True, help="output CSV: testset, metric, value")
    parser.add_argument("--protocol", choices=["polyp_toolbox", "binary"], default="polyp_toolbox",
                        help="polyp_toolbox (default): min-max maps, the toolbox's metrics; binary: maps = probability "
                             "x 255 binarised at >= 128, per-image mDice, mIoU, Accuracy, Sensitivity, Specificity, "
                             "HD95 (pixels) averaged over images")


def _run_evaluate_maps(args: argparse.Namespace) -> int:
    from hardgen.core.io import write_csv
    from hardgen.evaluation.metrics import find_map_pairs, score_testsets

    pairs = find_map_pairs(args.pred, args.gt)  # evaluate_maps, keeping the pairs for the image count
    table = score_testsets(pairs, protocol=args.protocol)
    write_csv(args.out, table)
    wide = table.pivot(index="testset", columns="metric", values="value")
    print(wide.reindex(index=table["testset"].unique(), columns=table["metric"].unique()).round(4).to_string())
    print(json.dumps({"out": str(args.out), "protocol": args.protocol, "testsets": list(pairs),
                      "images": sum(len(p) for p in pairs.values())}))
    return 0


def _add_rehearse(parser: argparse.ArgumentParser) -> None:
    from hardgen.app.rehearsal import add_arguments

    add_arguments(parser)


def _run_rehearse(args: argparse.Namespace) -> int:
    from hardgen.app.rehearsal import run

    return run(args)


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "lora-summary": ("Control-LoRA layer and parameter counts", _add_lora_summary, _run_lora_summary),
    "build-tiny-sd": ("build the tiny random-init SD folder", _add_build_tiny_sd, _run_build_tiny_sd),
    "pretrain-tiny": ("pre-train the tiny SD (VAE, then UNet) on procedural polyp images into a diffusers folder",
                      _add_pretrain_tiny, _run_pretrain_tiny),
    "pretrain-decoder": ("fine-tune the pre-trained base's VAE decoder (encoder frozen, latents unchanged)",
                         _add_pretrain_decoder, _run_pretrain_decoder),
    "pretrain-adapter": ("pre-train the demo's condition adapter (a Control-LoRA on the pre-trained base, lora.* shape)",
                         _add_pretrain_adapter, _run_pretrain_adapter),
    "validate-config": ("validate merged config files (schema, cross-key rules, timm/smp names)",
                        _add_validate_config, _run_validate_config),
    "segmenter-summary": (("one JSON line per segment.archs entry: arch (the key), params, maps (random weights, "
                           "nothing downloaded)"), _add_segmenter_summary, _run_segmenter_summary),
    "evaluate-maps": (("score saved 8-bit prediction maps with the polyp toolbox's or the binary protocol "
                      "(per test set + overall)"),
                      _add_evaluate_maps, _run_evaluate_maps),
    "rehearse": (("run YOUR config shrunk (a few images, tiny models, 2 steps) through every rule to the report, in "
                  "rehearsal/, before the GPU run (config/rehearsal.yaml)"), _add_rehearse, _run_rehearse),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argparse parser with one sub-parser per entry of :data:`SUBCOMMANDS`; only ``command``'s (None: every
    one's) gets its arguments. Some arguments come from settings classes whose modules import torch: a command
    that needs no torch (``validate-config``, ``rehearse``) starts in a fraction of a second."""
    parser = argparse.ArgumentParser(prog="hardgen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in SUBCOMMANDS.items():
        subparser = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            add_arguments(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hardgen`` script; returns the exit code (1 on bad input, with the reason on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # the command is the first argument not an option (the top-level parser has only -h)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in SUBCOMMANDS else None).parse_args(argv)
    _, _, run = SUBCOMMANDS[args.command]
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"hardgen {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
