"""The rehearsal (``hardgen rehearse``): your own config, shrunk, through every rule to the report in minutes on a CPU.

A real run trains for hours on a GPU before its last rules read the data in new ways (the judges, the evaluation's
empty maps, the report's per-image tables); a problem of the data found there costs the run. The rehearsal runs the
same workflow on the same config files first, keeping everything that decides which rules run and what they read -
the dataset, its layout, splits, test sets and expected sizes, the protocol, the conditions, the variants, the
policies, the ratios, the filters, the archs (class and encoder), the judges, batch_runs, the scarcity curve - and
shrinking only sizes, steps and models:

* ``config/rehearsal.yaml`` (an ordinary overlay, applied after your files): a handful of real images
  (``data.train_subset``, and ``data.test_subset`` per test set, drawn after ``prepare_data`` has validated every
  pair), the shipped tiny Stable Diffusion at 32 px, 2 steps of every training and sampling, 2 segmenter
  iterations at 64 px, one seed, random weights allowed.
* What a fixed overlay cannot name, derived here from your merged config (:func:`rehearsal_overlay`): every
  ``backbones`` entry becomes a tiny random extractor of its kind (timm: ``vit_tiny_patch16_224`` for a ViT,
  ``convnext_atto`` for a ConvNeXt, else ``resnet18``; transformers: a 2-layer ``ViTConfig``), keeping its key,
  ``resize_via``, ``margin`` and ``prototype_crop`` (a ``prototype`` file is dropped: rule prototype computes the
  tiny one's); every ``segment.archs`` entry keeps its arch and encoder with random weights (no download, no
  checkpoint) and the rehearsal's ``iterations`` / ``batch_size`` where it overrides them;
  ``data.train_subsets`` (the scarcity curve) becomes two small nested sizes; ``model.base: tiny`` stays the
  random-init build (rule ``base_model``); relative paths become absolute.

The run happens in its own working directory (``rehearsal/`` by default: its ``results/``, ``logs/`` and
``.snakemake/``), since the workflow's results folder is fixed (``hardgen.core.layout``): nothing mixes with the real
run's results, and a rehearsal may run beside it. The derived overlay is written there
(``rehearsal/rehearsal.yaml``), and the command is snakemake's own, printed before it runs::

    snakemake --snakefile <repo>/Snakefile --directory rehearsal --cores 2 \\
        --configfile <repo>/config/config.yaml <your files...> rehearsal/rehearsal.yaml
"""

from __future__ import annotations

import argparse
import copy
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hardgen.config.validation import (
    ALL_TRAIN,
    deep_merge,
    load_config,
    validate_config,
)

#: The rehearsal's fixed overlay (relative to the workflow's checkout).
OVERLAY = Path("config") / "rehearsal.yaml"
#: Where a rehearsal runs by default (relative to the current directory).
DEFAULT_DIR = Path("rehearsal")
#: The derived overlay's name in the rehearsal's directory.
DERIVED = "rehearsal.yaml"
#: timm models a rehearsal backbone becomes, by the kind of the original's name (first match), else resnet18.
TINY_TIMM = (("vit", "vit_tiny_patch16_224"), ("deit", "vit_tiny_patch16_224"), ("convnext", "convnext_atto"))
TINY_TIMM_DEFAULT = "resnet18"
#: A transformers backbone becomes a random ViT of this shape (backbones.<key>.config: ViTConfig arguments).
TINY_VIT_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                   "image_size": 32, "patch_size": 8}
#: The rehearsal backbones' input size: 64 px gives a ViT/16 a 4 x 4 grid, the least the fidelity guard's
#: separation reads (hardgen.scoring.fidelity), as in the demo.
TINY_INPUT_SIZE = 64
#: The scarcity curve's sizes in a rehearsal (nested seeded subsets, as data.train_subsets draws them).
SCARCITY_SIZES = [4, 8]
#: segment.archs.<key> recipe keys a rehearsal sets to its own segment.* value when an arch overrides them.
ARCH_RECIPE_SHRUNK = ("iterations", "batch_size")
#: Config values that are paths (relative ones are resolved against the directory the rehearsal is started from).
PATH_KEYS = (("data", "root"), ("model", "base"), ("model", "tiny_config"), ("model", "vae"), ("lora", "init_weights"),
             ("report", "anchors"), ("container",))


_MISSING = object()


def _get(config: Mapping[str, Any], keys: Sequence[str], default: Any = None) -> Any:
    node: Any = config
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def _set(overlay: dict[str, Any], keys: Sequence[str], value: Any) -> None:
    node = overlay
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def _absolute(value: Any, bases: Sequence[Path]) -> Any:
    """``value`` as an absolute path when it names an existing file or folder relative to one of ``bases`` (the
    first that has it); else as is (a hub id, ``tiny``, a path that does not exist here)."""
    if not isinstance(value, str) or not value or Path(value).is_absolute():
        return value
    for base in bases:
        if (base / value).exists():
            return str((base / value).resolve())
    return value


def tiny_backbone(entry: Mapping[str, Any], input_size: int) -> dict[str, Any]:
    """A ``backbones.<key>`` entry shrunk to a tiny random extractor of its kind (see the module docstring)."""
    # a prototype file of yours belongs to the real backbone: the rehearsal computes its tiny one's
    out: dict[str, Any] = {"pretrained": False, "checkpoint": None, "input_size": input_size, "prototype": None}
    if entry.get("source", "timm") == "transformers":
        out.update(config=dict(TINY_VIT_CONFIG, image_size=input_size))
        return out  # the name (a hub id or a folder) is kept: without pretrained weights only its config is read
    name = str(entry.get("name", "")).lower()
    out["name"] = next((tiny for kind, tiny in TINY_TIMM if kind in name), TINY_TIMM_DEFAULT)
    return out


def rehearsal_overlay(config: Mapping[str, Any], fixed: Mapping[str, Any], base: Path,
                      workflow: Path) -> dict[str, Any]:
    """The whole overlay a rehearsal applies after the user's files: ``fixed`` (config/rehearsal.yaml) and what
    depends on the user's merged ``config`` (see the module docstring). Relative paths of ``config`` are resolved
    against ``base`` (where the user runs the workflow), then the ``workflow`` checkout; ``fixed``'s against the
    checkout."""
    overlay = copy.deepcopy(dict(fixed))
    size = int(_get(fixed, ("segment", "size")) or 64)
    input_size = TINY_INPUT_SIZE
    overlay["backbones"] = {key: tiny_backbone(entry, input_size) for key, entry in config["backbones"].items()}
    archs: dict[str, Any] = {}
    for key, entry in config["segment"]["archs"].items():
        archs[key] = {"encoder_weights": None, "checkpoint": None}
        for recipe_key in ARCH_RECIPE_SHRUNK:
            if entry.get(recipe_key) is not None and _get(fixed, ("segment", recipe_key)) is not None:
                archs[key][recipe_key] = fixed["segment"][recipe_key]
    overlay.setdefault("segment", {})["archs"] = archs
    overlay["segment"].setdefault("size", size)
    shards = _get(fixed, ("generation", "shards"))
    if shards is not None:  # never more shards (generate jobs) than the real run has
        overlay["generation"]["shards"] = min(int(shards), int(config["generation"]["shards"]))
    data = overlay.setdefault("data", {})
    cap = data.get("train_subset")
    sizes = config["data"].get("train_subsets")
    if sizes is not None and len(sizes) >= 2:  # the scarcity curve: rehearse it, at two small sizes
        data.update(train_subsets=list(SCARCITY_SIZES), train_subset=None)
    else:
        user = sizes[0] if sizes else config["data"].get("train_subset")
        if user is not None and user != ALL_TRAIN and cap is not None:
            cap = min(int(user), int(cap))
        data.update(train_subsets=None, train_subset=cap)
    if config["model"]["base"] == "tiny":  # the random-init build (rule base_model) stays: the same rules run
        overlay.setdefault("model", {})["base"] = "tiny"
        overlay.setdefault("lora", {})["init_weights"] = None
    for keys in PATH_KEYS:  # the rehearsal runs in its own directory: every relative path made absolute
        if _get(overlay, keys, _MISSING) is not _MISSING:  # the overlay's own value (null included) wins
            _set(overlay, keys, _absolute(_get(overlay, keys), [workflow]))
        elif _get(config, keys) is not None:
            absolute = _absolute(_get(config, keys), [base, workflow])
            if absolute != _get(config, keys):
                _set(overlay, keys, absolute)
    return overlay


def find_workflow(given: str | Path | None, cwd: str | Path | None = None) -> Path:
    """The workflow's checkout: ``given`` (--workflow), else the current directory or the nearest of its parents that
    holds one (a Snakefile beside workflow/rules/); an error naming where it looked otherwise."""
    if given is not None:
        given = Path(given).resolve()
        if not (given / "Snakefile").is_file():
            raise FileNotFoundError(f"--workflow {given}: no Snakefile there (give the workflow's checkout)")
        return given
    cwd = Path(cwd or Path.cwd()).resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "Snakefile").is_file() and (folder / "workflow" / "rules").is_dir():
            return folder
    raise FileNotFoundError(f"{cwd}: neither it nor a parent folder is the workflow's checkout (a Snakefile beside "
                            "workflow/rules/); run hardgen rehearse from the checkout or give --workflow")


def prepare(configfiles: Sequence[str | Path], workflow: str | Path, directory: str | Path = DEFAULT_DIR,
            cwd: str | Path | None = None) -> tuple[Path, list[str]]:
    """Write the derived overlay into ``directory`` and return it with the ``--configfile`` list of the rehearsal:
    the workflow's config/config.yaml, the user's files (absolute) and the overlay, in that order (later files win,
    key by key, as snakemake merges them). Raises :class:`hardgen.config.validation.ConfigError` if the result is invalid."""
    cwd = Path(cwd or Path.cwd()).resolve()
    workflow = Path(workflow).resolve()
    files = [str(workflow / "config" / "config.yaml")] + [str((cwd / f).resolve()) for f in configfiles]
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: config file not found")
    user = load_config(files)
    fixed = yaml.safe_load((workflow / OVERLAY).read_text()) or {}
    overlay = rehearsal_overlay(user, fixed, cwd, workflow)
    validate_config(deep_merge(user, overlay))  # the rehearsal's own config, as the workflow will see it
    directory = (cwd / directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    derived = directory / DERIVED
    header = ("# Written by `hardgen rehearse` (config/rehearsal.yaml + what depends on your config); rewritten on "
              "every rehearsal.\n# Applied after: " + " ".join(files) + "\n")
    derived.write_text(header + yaml.safe_dump(overlay, sort_keys=False))
    return derived, [*files, str(derived)]


def command(configfiles: Sequence[str], directory: Path, workflow: Path, cores: int, dry_run: bool,
            extra: Sequence[str] = ()) -> list[str]:
    """The snakemake command line of a rehearsal."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(Path(workflow) / "Snakefile"), "--directory",
           str(directory), "--cores", str(cores), "--configfile", *configfiles]
    return cmd + (["--dry-run"] if dry_run else []) + list(extra)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configfiles", nargs="+", help="your config files, in the order you give them to snakemake's "
                        "--configfile (config/config.yaml comes first by itself)")
    parser.add_argument("--directory", type=Path, default=DEFAULT_DIR,
                        help="the rehearsal's working directory: its results/, logs/ and .snakemake/ (default: "
                        "rehearsal/)")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2)")
    parser.add_argument("--dry-run", "-n", action="store_true", help="list the jobs only (snakemake -n)")
    parser.add_argument("--workflow", type=Path, default=None,
                        help="the workflow's checkout (default: the current directory or the nearest parent that holds "
                        "a Snakefile beside workflow/rules/)")
    parser.add_argument("--snakemake-args", default="",
                        help="more snakemake arguments, one string (e.g. \"--keep-going --sdm conda\")")


def run(args: argparse.Namespace) -> int:
    workflow = find_workflow(args.workflow)
    extra = shlex.split(args.snakemake_args)
    derived, files = prepare(args.configfiles, workflow, args.directory)
    cmd = command(files, derived.parent, workflow, args.cores, args.dry_run, extra)
    print("rehearsal: " + shlex.join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd)
