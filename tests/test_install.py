"""A non-editable install works outside the checkout: the config schema ships in the package (package data), so
`hardgen validate-config` and the workflow's validation read it from the installed package, not from a checkout
beside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_a_wheel_install_validates_and_plans_the_workflow_without_the_checkouts_src(tmp_path):
    # the package from a copy of the checkout (never the checkout itself: a build writes into its tree)
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w",
          str(tmp_path / "wheel")], tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("hardgen-*.whl")
    # a fresh venv whose dependencies are this environment's packages (a path, so its editable hardgen stays out)
    venv = tmp_path / "venv"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([str(python), "-c", purelib], tmp_path).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = _run([str(python), "-c", "import hardgen.config.validation as v; print(v.SCHEMA_PATH)"], outside).strip()
    assert where == str(site / "hardgen" / "config" / "config.schema.yaml")
    out = _run([str(venv / "bin" / "hardgen"), "validate-config", str(REPO / "config" / "config.yaml")], outside)
    assert '"valid": true' in out.splitlines()[-1]
    # the workflow without src/: common.smk imports the installed hardgen and validates with its schema
    workflow = tmp_path / "workflow"
    workflow.mkdir()
    for name in ("Snakefile", "workflow", "config", "resources", "envs"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, workflow / name)
    plan = _run([str(python), "-m", "snakemake", "-n", "--cores", "1"], workflow)
    assert "train_hard_lora" in plan and "This was a dry-run" in plan
