"""Unsafe content never runs: no pickles, no remote code, no shell or eval fed by config values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from hardgen.core.weights import UnsafeWeightsError, load_state_dict

REPO = Path(__file__).resolve().parents[1]
CODE = [*REPO.glob("src/hardgen/*.py"), *REPO.glob("workflow/scripts/*.py"), *REPO.glob("benchmarks/*.py")]
RULES = [REPO / "Snakefile", *REPO.glob("workflow/rules/*.smk")]


class Payload:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_bearing_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "extra": Payload()}, path)
    with pytest.raises(UnsafeWeightsError, match="evil.pt"):
        load_state_dict(path)
    assert "pwned" not in capsys.readouterr().out


def test_plain_tensor_pt_and_safetensors_load(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "ok.pt")
    assert torch.equal(load_state_dict(tmp_path / "ok.pt")["w"], torch.ones(3))


@pytest.mark.parametrize(
    "pattern",
    [
        r"trust_remote_code\s*=\s*True",
        r"(?<![\w.])eval\(",
        r"(?<![\w.])exec\(",
        r"pickle\.loads?\(",
        r"shell\s*=\s*True",
        r"os\.system\(",
    ],
)
def test_no_unsafe_calls_in_code(pattern):
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in CODE for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(pattern, line)]
    assert offenders == []


def test_every_torch_load_is_weights_only():
    for path in CODE:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path.relative_to(REPO)}:{i}"


def test_rules_run_scripts_not_shell_commands():
    # Config values reach the library through snakemake.params in Python, never through a shell command line.
    for path in RULES:
        text = path.read_text()
        assert "shell:" not in text and "run:" not in text, path.name
