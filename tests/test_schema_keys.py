"""Every key of the config schema is read by some stage, and every key is described.

A key nobody reads is a promise the workflow does not keep (a user sets it and nothing changes), so the
schema is walked leaf by leaf and each leaf must be read in the workflow or the library: as a job's param (its
settings field names the jobs that read it: hardgen.config.settings, ``read_by``), as an attribute of its settings
section (``SETTINGS.model.vae``, ``finetune.steps``), or as a subscript of its section (``config["model"]["vae"]``,
``model["vae"]``, or the section's local name in the code that receives it, such as ``demo["n_train"]``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from hardgen.config import settings as st
from hardgen.config.validation import resolve_ref

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "src" / "hardgen" / "config" / "config.schema.yaml").read_text())


def _ref(node: dict) -> dict:
    return resolve_ref(node, SCHEMA)

#: The local names a section's mapping goes by where it is consumed (params, function arguments).
ALIASES = {
    "": ["config"],
    "data": ["data"],
    "demo": ["demo"],
    "volume": ["volume"],
    "evaluate": ["evaluate"],
    "condition": ["condition", "cond"],
    "model": ["model"],
    "lora": ["lora"],
    # self.<section>: Settings' own methods that resolve a stage key against train's (Settings.tracking)
    "train": ["train", r"self\.train"],
    "hard": ["hard", "finetune", r"self\.hard"],
    "feedback": ["feedback", "finetune", r"self\.feedback"],
    "backbones.*": ["entry", "spec", r"backbones\[\w+\]"],
    "generation": ["generation", "gen"],
    "guided": ["guided"],
    "inpaint": ["inpaint"],
    "filter": ["filter"],
    "segment": ["segment", "cfg", r"self\.segment"],
    "segment.archs.*": ["entry", "spec"],
    "lr_decay": ["value"],
    "segment.archs.*.lr_decay": ["value"],
    "report": ["report"],
    "primary_contrast": ["contrast", "primary"],
}


def leaves(node: dict | None = None, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict]]:
    node = _ref(node if node is not None else SCHEMA)
    props = node.get("properties")
    entry = node.get("additionalProperties")
    entry = _ref(entry) if isinstance(entry, dict) else None
    if props:
        return [leaf for key, child in props.items() for leaf in leaves(child, (*path, key))]
    if entry is not None and entry.get("properties"):
        return leaves(entry, (*path, "*"))
    return [(path, node)]


def _code() -> str:
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk")),
             *sorted((REPO / "workflow" / "scripts").glob("*.py")), *sorted((REPO / "src" / "hardgen").rglob("*.py"))]
    return "\n".join(f.read_text() for f in files)


CODE = _code()


def settings_field(path: tuple[str, ...]):
    """The settings field of a schema key (None when the settings have no such key)."""
    cls: type[st.Section] = st.Settings
    f = None
    for part in path:
        if part == "*":
            continue
        fields = cls.keys()
        if part not in fields:
            return None
        f = fields[part]
        cls = f.metadata["section"] or f.metadata["entries"] or cls
    return f


def is_read(path: tuple[str, ...]) -> bool:
    *parents, key = path
    f = settings_field(path)
    if f is not None and f.metadata["read_by"]:
        return True  # a job's param: its rule's params derive from the field
    section = ".".join(parents) if "*" in parents else (parents[-1] if parents else "")
    quoted = rf"\[\s*[\"']{re.escape(key)}[\"']\s*\]"
    patterns = [rf"[\"']{re.escape(parents[-1])}[\"']\s*\]\s*{quoted}"] if parents and parents[-1] != "*" else []
    for alias in ALIASES[section]:
        patterns += [rf"\b{alias}\s*{quoted}", rf"\b{alias}\.get\(\s*[\"']{re.escape(key)}[\"']"]
    if f is not None:
        # a settings attribute: SETTINGS.<section>.<field>, or the section's local name in code (never its schema name,
        # which prose such as "data.root" also spells)
        owners = ["SETTINGS" + "".join(r"\[[^\]]+\]" if part == "*" else rf"\.{part}" for part in parents)]
        owners += [rf"\b{alias}" for alias in ALIASES[section] if alias not in ("config", *parents)]
        patterns += [rf"{owner}\.{re.escape(f.name)}\b" for owner in owners]
    return any(re.search(p, CODE) for p in patterns)


LEAVES = leaves()


def test_the_walk_sees_every_section():
    sections = {path[0] for path, _ in LEAVES}
    assert sections == set(SCHEMA["properties"])
    assert ("model", "vae") in {path for path, _ in LEAVES} and len(LEAVES) > 60


@pytest.mark.parametrize("path", [p for p, _ in LEAVES], ids=[".".join(p) for p, _ in LEAVES])
def test_every_schema_key_is_read_by_a_stage(path):
    assert is_read(path), f"config key {'.'.join(path)} is in the schema but no stage reads it"


def test_a_key_nobody_reads_is_caught():
    assert not is_read(("model", "unused_option"))
    assert not is_read(("hard", "calibration_batches"))  # the key this replaced


def test_optional_keys_have_their_default_in_the_schema():
    """Defaults live in the schema only: every key a section does not require has a default."""
    def check(node: dict, path: tuple[str, ...]) -> list[str]:
        node = _ref(node)
        missing = []
        required = set(node.get("required", []))
        for key, child in node.get("properties", {}).items():
            child_r = _ref(child)
            if key not in required and "default" not in child_r and "default" not in child:
                missing.append(".".join((*path, key)))
            missing += check(child, (*path, key))
        entry = node.get("additionalProperties")
        if isinstance(entry, dict):
            missing += check(entry, (*path, "*"))
        return missing

    assert check(SCHEMA, ()) == []
