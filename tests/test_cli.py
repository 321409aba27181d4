"""The ``hardgen`` console script: lora-summary (parity, --load) and build-tiny-sd."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hardgen.cli import main
from hardgen.weights import save_state_dict

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
SD15_UNET = RESOURCES / "sd15-unet" / "config.json"
TINY_UNET = RESOURCES / "tiny-sd" / "unet" / "config.json"


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize(("preset", "modules", "params"), [("half_skip_attn", 66, 5_447_168), ("full", 282, 16_950_848)])
def test_lora_summary_sd15_parity(capsys, preset, modules, params):
    argv = ["lora-summary", "--unet-config", str(SD15_UNET), "--preset", preset, "--rank", "16", "--conv-in-rank", "64"]
    assert main(argv) == 0
    assert last_json(capsys.readouterr().out) == {"modules": modules, "trainable_params": params}


def _tiny_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """A control-lora-v3 style file for the tiny UNet: conv_in (8 input channels) and one Linear layer."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "unet.conv_in.lora_A.weight": torch.randn(8, 8, 3, 3, generator=g),
        "unet.conv_in.lora_B.weight": torch.randn(32, 8, 1, 1, generator=g),
        "unet.time_embedding.linear_1.lora_A.weight": torch.randn(4, 32, generator=g),
        "unet.time_embedding.linear_1.lora_B.weight": torch.randn(128, 4, generator=g),
    }
    save_state_dict(path, tensors)
    return tensors


def test_lora_summary_load_reports_file_contents(capsys, tmp_path):
    path = tmp_path / "pytorch_lora_weights.safetensors"
    _tiny_lora_file(path)
    stored = load_file(str(path))
    assert main(["lora-summary", "--load", str(path), "--unet-config", str(TINY_UNET)]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["modules"] == 2
    assert summary["trainable_params"] == sum(t.numel() for t in stored.values())
    assert summary["abs_sum"] == pytest.approx(sum(float(t.abs().sum()) for t in stored.values()), rel=1e-6)


def test_lora_summary_load_rejects_a_file_for_another_unet(capsys, tmp_path):
    path = tmp_path / "lora.safetensors"
    _tiny_lora_file(path)
    assert main(["lora-summary", "--load", str(path), "--unet-config", str(SD15_UNET)]) == 1
    assert "do not fit" in capsys.readouterr().err


def test_lora_summary_errors(capsys, tmp_path):
    assert main(["lora-summary"]) == 1
    assert "--unet-config" in capsys.readouterr().err
    assert main(["lora-summary", "--load", str(tmp_path / "none.safetensors")]) == 1
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["lora-summary", "--unet-config", str(TINY_UNET), "--preset", "quarter"])


def test_build_tiny_sd_command(capsys, tmp_path):
    out = tmp_path / "tiny"
    assert main(["build-tiny-sd", "--config-dir", str(RESOURCES / "tiny-sd"), "--out", str(out)]) == 0
    assert last_json(capsys.readouterr().out) == {"out": str(out)}
    assert (out / "model_index.json").is_file() and (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_module_entry_point_prints_json_last():
    result = subprocess.run(
        [sys.executable, "-m", "hardgen.cli", "lora-summary", "--unet-config", str(TINY_UNET)],
        capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PATH": "", "OMP_NUM_THREADS": "1",
             "HF_HUB_OFFLINE": "1"},
    )
    assert last_json(result.stdout) == {"modules": 35, "trainable_params": 190_464}
