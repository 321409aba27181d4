"""The ``hardgen`` console script: lora-summary (parity, --load), build-tiny-sd and evaluate-maps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from hardgen.app.cli import main
from hardgen.core.io import write_image, write_mask
from hardgen.core.weights import save_state_dict

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
        [sys.executable, "-m", "hardgen.app.cli", "lora-summary", "--unet-config", str(TINY_UNET)],
        capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PATH": "", "OMP_NUM_THREADS": "1",
             "HF_HUB_OFFLINE": "1"},
    )
    assert last_json(result.stdout) == {"modules": 35, "trainable_params": 190_464}


def _map_tree(root: Path) -> tuple[Path, Path]:
    """Two PraNet-layout test sets (one with JPEG masks) and their 8-bit prediction maps."""
    yy, xx = np.mgrid[:30, :40]
    for testset, suffix, n in (("CVC-300", ".png", 2), ("Kvasir", ".jpg", 3)):
        for i in range(n):
            mask = (yy - 15) ** 2 + (xx - 12 - 4 * i) ** 2 < (6 + i) ** 2
            write_mask(root / "gt" / testset / "masks" / f"{i}{suffix}", mask)
            write_image(root / "pred" / testset / f"{i}.png", np.where(mask, 220, 40).astype(np.uint8)[:, ::-1])
    return root / "pred", root / "gt"


def test_evaluate_maps_command(capsys, tmp_path):
    from hardgen.evaluation.metrics import ALL_METRICS, OVERALL, evaluate_maps

    pred, gt = _map_tree(tmp_path)
    out = tmp_path / "eval" / "scores.csv"
    assert main(["evaluate-maps", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 0
    assert last_json(capsys.readouterr().out) == {"out": str(out), "protocol": "polyp_toolbox",
                                                  "testsets": ["CVC-300", "Kvasir"], "images": 5}
    table = pd.read_csv(out)
    assert list(table.columns) == ["testset", "metric", "value"]
    assert table["testset"].unique().tolist() == ["CVC-300", "Kvasir", OVERALL]
    assert table["metric"].tolist() == list(ALL_METRICS) * 3
    pd.testing.assert_frame_equal(table, evaluate_maps(pred, gt), check_exact=False, rtol=0, atol=1e-15)
    assert 0.05 < table["value"][table["metric"] == "mDice"].min() < 0.95  # mirrored maps: partial overlap


def test_evaluate_maps_command_missing_gt(capsys, tmp_path):
    pred, gt = _map_tree(tmp_path)
    missing = gt / "Kvasir" / "masks" / "1.jpg"
    missing.unlink()
    out = tmp_path / "scores.csv"
    assert main(["evaluate-maps", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "evaluate-maps: error" in err
    assert str(pred / "Kvasir" / "1.png") in err and str(gt / "Kvasir" / "masks" / "1") in err
    assert not out.exists() and list(tmp_path.glob("*.csv*")) == []


def test_evaluate_maps_command_size_mismatch_and_empty_root(capsys, tmp_path):
    pred, gt = _map_tree(tmp_path)
    write_image(pred / "CVC-300" / "0.png", np.zeros((30, 41), dtype=np.uint8))
    out = tmp_path / "scores.csv"
    assert main(["evaluate-maps", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(pred / "CVC-300" / "0.png") in err and str(gt / "CVC-300" / "masks" / "0.png") in err
    (tmp_path / "nothing").mkdir()
    assert main(["evaluate-maps", "--pred", str(tmp_path / "nothing"), "--gt", str(gt), "--out", str(out)]) == 1
    assert "no test-set folders" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["evaluate-maps", "--pred", str(pred)])  # --gt and --out are required
