"""Snakemake Workflow Catalog conventions: license, config README, catalog file, described schema, snakefmt, report
captions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "src" / "hardgen" / "config" / "config.schema.yaml").read_text())
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]


def test_license_is_the_mit_license_pyproject_declares():
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert re.search(r'^license = "MIT"', (REPO / "pyproject.toml").read_text(), re.M)


def test_config_readme_covers_every_config_file_and_key_group():
    readme = (REPO / "config" / "README.md").read_text()
    for path in sorted((REPO / "config").glob("*.yaml")):
        if not path.name.startswith("local"):  # site overlays are the user's own (git-ignored)
            assert f"config/{path.name}" in readme, path.name
    for key in SCHEMA["properties"]:
        assert f"| `{key}` |" in readme, f"config/README.md: key group {key} not described"
    assert "--configfile" in readme and "--config" in readme  # own data and weights without editing tracked files


def test_catalog_file_declares_deployment_and_report():
    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    usage = catalog["usage"]
    assert usage["mandatory-flags"]["desc"] and "flags" in usage["mandatory-flags"]
    deployment = usage["software-stack-deployment"]
    assert deployment["conda"] is True and deployment["apptainer"] is True and deployment["report"] is True


def _properties(node: dict, path: str) -> list[tuple[str, dict]]:
    found = []
    for key, child in (node.get("properties") or {}).items():
        found.append((f"{path}{key}", child))
        found += _properties(child, f"{path}{key}.")
    if isinstance(node.get("additionalProperties"), dict):
        found += _properties(node["additionalProperties"], f"{path}*.")
    return found


PROPERTIES = _properties(SCHEMA, "") + [
    item for name, definition in SCHEMA["$defs"].items() for item in _properties(definition, f"$defs.{name}.")
]


def test_every_schema_property_is_described():
    assert len(PROPERTIES) > 90
    missing = [path for path, node in PROPERTIES if not str(node.get("description", "")).strip()]
    assert missing == []


def test_snakefmt_is_clean():
    snakefmt = Path(sys.executable).parent / "snakefmt"
    if not snakefmt.exists():
        pytest.fail("snakefmt is missing: install requirements-dev.lock (make does)")
    result = subprocess.run([str(snakefmt), "--check", "Snakefile", "workflow/"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"run `snakefmt Snakefile workflow/`:\n{result.stdout}{result.stderr}"


def _report_calls(text: str) -> list[str]:
    """The argument text of every ``report(...)`` call (balanced parentheses)."""
    calls = []
    for match in re.finditer(r"\breport\(", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                calls.append(text[start:i])
                break
    return calls


def test_every_report_item_has_a_caption_file():
    """Each ``report(...)`` output names a category and an existing .rst caption."""
    count = 0
    for path in RULE_FILES:
        for args in _report_calls(path.read_text()):
            caption = re.search(r'caption="([^"]+)"', args)
            assert caption and "category=" in args, f"{path.name}: report() without caption or category: {args}"
            assert (path.parent / caption.group(1)).is_file(), caption.group(1)
            count += 1
    assert count >= 10  # 6 tables, the plots folder, 3 validation grids


def test_report_rule_marks_every_table_it_writes():
    report_rule = (REPO / "workflow" / "rules" / "report.smk").read_text()
    # table paths come from hardgen.core.layout: L("table", table="<name>")
    tables = set(re.findall(r'L\("table", table="([\w.]+)"\)', report_rule))
    marked = set(re.findall(r'report\(\s*L\("table", table="([\w.]+)"\)', report_rule))
    assert {"benchmark.csv", "benchmark.md", "runs.csv", "hardness.csv", "hardness_transfer.csv"} <= tables
    assert tables == marked
