"""`make paper-smoke`: config/paper.yaml at its real architectures (random weights, counts and sizes shrunk by
config/paper-smoke.yaml) through every rule to the report, in its own folder. Slow (about 11 minutes on 2 CPU cores,
README "Paper smoke"): not in `make test`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from hardgen.config.validation import load_config

REPO = Path(__file__).resolve().parents[1]

#: models.csv's components for paper.yaml: SD1.5's parts, the three backbones, the three segmenters (the judge too)
COMPONENTS = {"base.unet", "base.vae", "base.text_encoder", "backbones.vit", "backbones.cnn", "backbones.heldout",
              "segment.archs.pranet", "segment.archs.polyp_pvt", "segment.archs.segformer"}


@pytest.mark.slow
def test_paper_smoke(tmp_path: Path) -> None:
    folder = tmp_path / "paper-smoke"
    result = subprocess.run(["make", "-C", str(REPO), "paper-smoke", f"PAPER_SMOKE={folder}", "CORES=2"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    tables = folder / "results" / "tables"
    assert "mIoU" in (tables / "benchmark.md").read_text()
    benchmark = pd.read_csv(tables / "benchmark.csv")
    assert set(benchmark["arch"]) == {"pranet", "polyp_pvt", "segformer"}
    assert set(benchmark["policy"]) == {"real", "plain", "hard", "feedback"}
    models = pd.read_csv(tables / "models.csv").set_index("component")
    assert list(models.columns) == ["class", "source", "params", "dtype"]
    assert set(models.index) == COMPONENTS
    assert models.loc["base.unet", "params"] == 859_520_964  # SD1.5's UNet, at its real size
    assert models.loc["backbones.vit", "params"] == 303_301_632  # ViT-L/16
    assert models.loc["segment.archs.pranet", "params"] == 30_498_319
    assert models.loc["segment.archs.polyp_pvt", "params"] == 25_107_604
    assert models.loc["base.unet", "source"] == "random init from resources/sd15-random"
    # paper.yaml's float16 sampling is what ran on the CPU: the smoke leaves generation.dtype alone
    config = load_config([REPO / "config" / name for name in ("config.yaml", "paper.yaml", "paper-smoke.yaml")])
    assert config["generation"]["dtype"] == "float16"
