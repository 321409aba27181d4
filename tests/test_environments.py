"""Installing hardgen: universal locks, conda envs that build from their own yaml, a container from the same pins.

These machines reach PyPI but no conda channel, so creating the conda env is checked statically: every rule's env
yaml must be self-contained (Snakemake copies it under .snakemake/conda/, so relative ``-r``/``-e`` paths point
nowhere, and only the yaml's content enters the env hash) and pin exactly what requirements.lock pins.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK, DEV_LOCK = REPO / "requirements.lock", REPO / "requirements-dev.lock"
PYPROJECT = (REPO / "pyproject.toml").read_text()
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
DEV_TOOLS = {"pytest", "snakefmt", "ruff", "uv"}

sys.path.insert(0, str(REPO / "envs"))
import sync_env  # noqa: E402


def lock_requirements(path: Path) -> list[Requirement]:
    return [Requirement(line) for line in sync_env.lock_lines(path)]


def pins(requirements: list[Requirement]) -> dict[str, str]:
    return {canonicalize_name(r.name): str(r.specifier) for r in requirements}


def installed_here(requirements: list[Requirement], environment: dict[str, str] | None = None) -> dict[str, str]:
    """``{name: version}`` of the pins whose markers hold on ``environment`` (default: this interpreter)."""
    return {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in requirements
            if r.marker is None or r.marker.evaluate(environment)}


def requires_python() -> SpecifierSet:
    return SpecifierSet(re.search(r'^requires-python = "([^"]+)"', PYPROJECT, re.M).group(1))


def supported_pythons() -> list[str]:
    return re.findall(r'"Programming Language :: Python :: (3\.\d+)"', PYPROJECT)


def rule_envs() -> dict[str, Path]:
    """``{rule: env yaml}`` from every rule's ``conda:`` directive (a path or a variable of common.smk)."""
    variables = dict(re.findall(r'^(\w+) = "([^"]+\.ya?ml)"', (REPO / "workflow/rules/common.smk").read_text(), re.M))
    envs = {}
    for path in RULE_FILES:
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", path.read_text(), re.M):
            match = re.search(r"^\s+conda:\s*\n\s+(\S+)", body, re.M)
            if name == "all":
                continue
            assert match, f"rule {name} ({path.name}) has no conda: directive"
            value = match.group(1).strip("\"'")
            envs[name] = (path.parent / variables.get(value, value)).resolve()
    return envs


ENVS = rule_envs()


# ------------------------------------------------------------------------------------------- conda envs
def test_every_rule_has_an_env_yaml_that_exists():
    assert len(ENVS) >= 15 and {"train_hard_lora", "generate", "report"} <= set(ENVS)
    assert all(path.is_file() for path in ENVS.values()), ENVS


@pytest.mark.parametrize("env", sorted(set(ENVS.values())), ids=lambda p: p.name)
def test_env_yaml_is_self_contained(env):
    spec = yaml.safe_load(env.read_text())
    assert spec["channels"] and "defaults" not in spec["channels"]
    conda = [d for d in spec["dependencies"] if isinstance(d, str)]
    pip = [entry for d in spec["dependencies"] if isinstance(d, dict) for entry in d["pip"]]
    assert pip, "no pip section"
    for dep in conda:  # conda-forge packages, each with a version
        assert re.fullmatch(r"[\w.-]+=\d[\w.*]*", dep), f"{env.name}: conda dependency {dep!r} is not pinned"
    for entry in pip:
        # no pip options (-r, -e, -c, --find-links ...), no paths or URLs: nothing outside this file
        assert not entry.lstrip().startswith("-"), f"{env.name}: pip option {entry!r}"
        requirement = Requirement(entry)
        assert requirement.url is None and "/" not in entry.split(";")[0], f"{env.name}: {entry!r} is a path or URL"
        assert re.fullmatch(r"==[\w.+!-]+", str(requirement.specifier)), f"{env.name}: {entry!r} is not an exact pin"


@pytest.mark.parametrize("env", sorted(set(ENVS.values())), ids=lambda p: p.name)
def test_env_yaml_pins_what_the_lock_pins(env):
    spec = yaml.safe_load(env.read_text())
    pip = [Requirement(e) for d in spec["dependencies"] if isinstance(d, dict) for e in d["pip"]]
    lock = lock_requirements(LOCK)
    as_set = lambda reqs: {(canonicalize_name(r.name), str(r.specifier), str(r.marker)) for r in reqs}  # noqa: E731
    assert as_set(pip) == as_set(lock)  # same packages, versions and platform markers
    python = next(d for d in spec["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python.removeprefix("python=") == min(supported_pythons(), key=lambda v: tuple(map(int, v.split("."))))
    assert env.read_text() == sync_env.render(LOCK), "run `make lock` (envs/sync_env.py) after changing the lock"


# ------------------------------------------------------------------------------------------------ locks
@pytest.mark.parametrize("lock", [LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_locks_pin_every_package_exactly(lock):
    requirements = lock_requirements(lock)
    assert requirements
    assert all(re.fullmatch(r"==[\w.+!-]+", str(r.specifier)) for r in requirements), lock.name


def test_runtime_and_dev_groups_are_separate_and_agree():
    runtime, dev = pins(lock_requirements(LOCK)), pins(lock_requirements(DEV_LOCK))
    assert not DEV_TOOLS & set(runtime), "test/format/lock tools belong in requirements-dev.lock"
    assert DEV_TOOLS <= set(dev)
    assert {"torch", "snakemake", "numpy"} <= set(runtime)
    shared = set(runtime) & set(dev)
    assert {name: dev[name] for name in shared} == {name: runtime[name] for name in shared}


def _platform(system: str, machine: str, python: str) -> dict[str, str]:
    env = default_environment()
    env.update(sys_platform=system, platform_system={"linux": "Linux", "darwin": "Darwin"}[system],
               platform_machine=machine, python_version=python, python_full_version=f"{python}.0",
               os_name="posix", implementation_name="cpython", platform_python_implementation="CPython")
    return env


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_markers_keep_cuda_wheels_off_macos(python):
    requirements = lock_requirements(LOCK) + lock_requirements(DEV_LOCK)
    mac = installed_here(requirements, _platform("darwin", "arm64", python))
    linux = installed_here(requirements, _platform("linux", "x86_64", python))
    cuda = lambda names: sorted(n for n in names if n.startswith(("nvidia-", "cuda-")) or n == "triton")  # noqa: E731
    assert cuda(mac) == []
    assert "nvidia-cudnn-cu13" in cuda(linux) and "triton" in cuda(linux)  # PyPI's Linux torch is the CUDA build
    assert mac["torch"] == linux["torch"] and len(mac) > 100


def test_this_environment_is_the_lock():
    """What `make` installed here is exactly what the locks pin for this platform (a stale .venv fails here)."""
    wanted = installed_here(lock_requirements(LOCK) + lock_requirements(DEV_LOCK))
    have = {name: importlib.metadata.version(name) for name in wanted}
    mismatched = {n: (wanted[n], have[n]) for n in wanted if have[n].split("+")[0] != wanted[n]}
    assert mismatched == {}, "reinstall: make (or pip install -r requirements.lock -r requirements-dev.lock)"


def test_requires_python_matches_the_pins():
    supported = supported_pythons()
    assert supported == ["3.11", "3.12", "3.13"]
    spec = requires_python()
    assert all(f"{v}.0" in spec for v in supported) and "3.10.0" not in spec and "3.14.0" not in spec
    # every pinned distribution installed here declares support for every supported Python
    for name in installed_here(lock_requirements(LOCK) + lock_requirements(DEV_LOCK)):
        declared = importlib.metadata.metadata(name).get("Requires-Python")
        if declared:
            assert all(f"{v}.0" in SpecifierSet(declared) for v in supported), (name, declared)


# -------------------------------------------------------------------------------------------- container
def test_container_image_builds_from_the_same_pins():
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"^FROM python:(\d+\.\d+)\.\d+-slim", dockerfile, re.M)
    assert base and f"{base.group(1)}.0" in requires_python()
    assert re.search(r"pip install .*-r requirements\.lock", dockerfile)
    assert "requirements-dev.lock" not in dockerfile  # the image carries the runtime group only
    assert "--no-deps" in dockerfile  # hardgen itself adds no unpinned dependency
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "results", ".snakemake"} <= {line.strip("/") for line in ignored}
    assert re.search(r"^container: config\.get\(\"container\"\)", (REPO / "Snakefile").read_text(), re.M)
