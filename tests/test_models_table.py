"""results/tables/models.csv (hardgen.report.models_table): parameter counts of the models a run builds, on the meta
device, equal to the real modules' counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from diffusers import UNet2DConditionModel

from hardgen.report.models_table import (
    COLUMNS,
    backbone_row,
    base_rows,
    models_table,
    segmenter_row,
)

REPO = Path(__file__).resolve().parents[1]


def _sd15_folder(tmp_path: Path) -> Path:
    """A diffusers folder of SD1.5's part configs (resources/sd15-random), no weights: what base_rows reads."""
    folder = tmp_path / "sd15"
    for part in ("unet", "vae", "text_encoder"):
        shutil.copytree(REPO / "resources" / "sd15-random" / part, folder / part)
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "safety_checker": [None, None]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_sd15_base_counts(tmp_path: Path) -> None:
    rows = {row["component"]: row for row in base_rows(str(_sd15_folder(tmp_path)), "random init")}
    assert list(rows) == ["base.unet", "base.vae", "base.text_encoder"]
    assert rows["base.unet"]["params"] == 859_520_964  # SD1.5's UNet
    assert rows["base.unet"]["class"] == "UNet2DConditionModel"
    assert rows["base.text_encoder"]["params"] == 123_060_480  # CLIP ViT-L/14's text tower
    assert rows["base.vae"]["params"] == 83_653_863


def test_local_base_counts_and_stored_dtype() -> None:
    base = REPO / "resources" / "tiny-sd-polyp"
    rows = {row["component"]: row for row in base_rows(str(base), "shipped")}
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    assert rows["base.unet"]["params"] == sum(p.numel() for p in unet.parameters())
    assert rows["base.unet"]["dtype"] == "float32" and rows["base.unet"]["source"] == "shipped"


def test_backbone_and_segmenter_rows() -> None:
    vit = backbone_row("vit", {"name": "google/vit-large-patch16-224", "source": "transformers", "pretrained": False,
                               "input_size": 224, "config": {"hidden_size": 1024, "num_hidden_layers": 24,
                                                             "num_attention_heads": 16, "intermediate_size": 4096,
                                                             "image_size": 224, "patch_size": 16}})
    assert vit["params"] == 303_301_632 and vit["class"] == "ViTModel"  # ViT-L/16 without the pooler
    assert "random init" in vit["source"]
    resnet = backbone_row("cnn", {"name": "resnet18", "pretrained": False, "input_size": 64})
    assert resnet["params"] == 11_176_512  # timm resnet18 without its classifier
    pranet = segmenter_row("pranet", {"arch": "PraNet", "encoder": "res2net50d", "encoder_weights": "imagenet"})
    assert pranet["params"] == 30_498_319 and pranet["class"] == "PraNet"  # the released count less the classifier
    assert "encoder imagenet" in pranet["source"]


def test_models_table_columns(tmp_path: Path) -> None:
    table = models_table(str(REPO / "resources" / "tiny-sd-polyp"), "shipped",
                         {"cnn": {"name": "resnet18", "pretrained": False, "input_size": 64}},
                         {"cnn": {"arch": "Unet", "encoder": "resnet18", "encoder_weights": None}})
    assert list(table.columns) == COLUMNS
    assert list(table["component"]) == ["base.unet", "base.vae", "base.text_encoder", "backbones.cnn",
                                        "segment.archs.cnn"]
    assert (table["params"] > 0).all()
