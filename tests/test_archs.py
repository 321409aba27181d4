"""The field's segmenters (hardgen.models.archs): released parameter counts, maps, prediction rules, the loss over maps,
per-arch recipes, segment.augment, checkpoints and ``hardgen segmenter-summary``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml
from conftest import ellipse_pairs

from hardgen.app.cli import main
from hardgen.benchmark.records import write_run_record
from hardgen.config.validation import ConfigError, load_config, validate_config
from hardgen.core.weights import load_state_dict, save_state_dict
from hardgen.models.archs import (
    MultiMapSegmenter,
    map_count,
    output_maps,
    predict_logits,
)
from hardgen.report import run_records
from hardgen.segmentation.build import SegmenterSpec, build_segmenter, load_segmenter
from hardgen.segmentation.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationPairs,
    train_transform,
)
from hardgen.segmentation.losses import (
    maps_structure_loss,
    structure_loss,
    structure_loss_per_sample,
)
from hardgen.segmentation.measures import sample_losses
from hardgen.segmentation.recipes import SegmentRecipe, resolve_recipe
from hardgen.segmentation.training import train_segmenter

REPO = Path(__file__).resolve().parents[1]
SMALL_PVT = SegmenterSpec(arch="PolypPVT", encoder="pvt_v2_b0")
SMALL_PRANET = SegmenterSpec(arch="PraNet", encoder="resnet18")  # the PraNet head on a small timm CNN


@pytest.fixture()
def pairs_df(tmp_path: Path) -> pd.DataFrame:
    return ellipse_pairs(tmp_path / "data", ["real"] * 6)


# ------------------------------------------------------------------------------ released counts (CLI)
def test_segmenter_summary_gives_the_released_parameter_counts(capsys) -> None:
    """config/paper.yaml's archs, built with random weights (its encoder_weights: imagenet is not downloaded).

    PraNet: the released model (lib/PraNet_Res2Net.py, counted module by module) has 32,547,319 parameters, of which
    2,049,000 are the ImageNet classifier its Res2Net backbone keeps but never calls; hardgen's PraNet builds the
    backbone with ``features_only`` and so has 30,498,319, which does NOT include the classifier. Polyp-PVT
    (lib/pvt.py; its PVTv2 has no classifier): 25,107,604 both ways.
    """
    assert main(["segmenter-summary", "--config", str(REPO / "config" / "paper.yaml")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    by_arch = {row["arch"]: row for row in lines}
    assert list(by_arch) == ["pranet", "polyp_pvt", "segformer"]  # the overlay's nulls dropped nothing here
    assert by_arch["pranet"] == {"arch": "pranet", "params": 30_498_319, "maps": 4}
    classifier = timm.create_model("res2net50d", pretrained=False).get_classifier()
    released_classifier = sum(p.numel() for p in classifier.parameters())
    assert released_classifier == 2_049_000
    assert by_arch["pranet"]["params"] + released_classifier == 32_547_319  # the released PraNet, classifier included
    assert by_arch["polyp_pvt"] == {"arch": "polyp_pvt", "params": 25_107_604, "maps": 2}
    assert by_arch["segformer"]["maps"] == 1


def test_segmenter_summary_merges_with_defaults_and_refuses_bad_entries(capsys, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"segment": {"archs": {"pvt": {"arch": "PolypPVT", "encoder": "pvt_v2_b0"},
                                                            "cnn": {"arch": "Unet", "encoder": "resnet18",
                                                                    "encoder_weights": "imagenet"}}}}, sort_keys=False))
    assert main(["segmenter-summary", "--config", str(config)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert rows == [{"arch": "pvt", "params": 3_650_740, "maps": 2}, {"arch": "cnn", "params": 14_328_209, "maps": 1}]
    config.write_text(yaml.safe_dump({"segment": {"archs": {"pvt": {"arch": "PolypPVT", "encoder": "pvt_v2_b0",
                                                                    "optimizer": "sgd"}}}}))
    assert main(["segmenter-summary", "--config", str(config)]) == 1
    assert "segment.archs.pvt.optimizer" in capsys.readouterr().err


# -------------------------------------------------------------------------------- maps and prediction
@pytest.mark.parametrize(("spec", "n_maps"), [(SMALL_PRANET, 4), (SMALL_PVT, 2),
                                              (SegmenterSpec("HFSegformer", "mit-b0"), 1)])
def test_maps_are_input_sized_and_counted(spec: SegmenterSpec, n_maps: int) -> None:
    torch.manual_seed(0)
    model = build_segmenter(spec).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps = output_maps(model, x)
        prediction = predict_logits(model, x)
    assert map_count(model) == n_maps == len(maps)
    assert all(m.shape == (2, 1, 64, 96) and torch.isfinite(m).all() for m in maps)
    assert prediction.shape == (2, 1, 64, 96)


def test_prediction_is_pranets_last_map_and_polyp_pvts_sum() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    pranet, pvt = build_segmenter(SMALL_PRANET).eval(), build_segmenter(SMALL_PVT).eval()
    with torch.no_grad():
        maps = output_maps(pranet, x)
        assert torch.equal(predict_logits(pranet, x), maps[-1])
        assert not torch.equal(maps[-1], maps[0])  # the maps differ, so "the last" is a real choice
        p1, p2 = output_maps(pvt, x)
        assert torch.allclose(predict_logits(pvt, x), p1 + p2)
        assert not torch.allclose(p1 + p2, p2)


def test_pranet_head_is_the_released_one_on_res2net50d() -> None:
    """The stride-8/16/32 levels of res2net50d feed the head with the released channels (512, 1024, 2048)."""
    model = build_segmenter(SegmenterSpec("PraNet", "res2net50d"))
    channels = [model.encoder.feature_info.channels()[i] for i in model.levels]
    assert channels == [512, 1024, 2048]
    assert sum(p.numel() for p in model.encoder.parameters()) == 23_669_352  # timm res2net50d without classifier


# ------------------------------------------------------------------------------------ loss over maps
class _FixedMaps(MultiMapSegmenter):
    """Returns the given maps (plus a zero-valued parameter so the optimiser has something to hold)."""

    n_maps = 2

    def __init__(self, maps: list[torch.Tensor]) -> None:
        super().__init__()
        self.maps = maps
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(m + self.dummy for m in self.maps)

    def prediction(self, maps):
        return maps[-1]


def test_loss_sums_over_maps_and_a_wrong_extra_map_costs() -> None:
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1.0
    good = (mask * 2 - 1) * 8.0  # confident and right
    wrong = -good  # confident and wrong
    x = torch.zeros(1, 3, 32, 32)
    both_good = maps_structure_loss(output_maps(_FixedMaps([good, good]), x), mask)
    extra_wrong = maps_structure_loss(output_maps(_FixedMaps([wrong, good]), x), mask)
    # the prediction (the last map) is the same, the loss is not: every map is supervised
    assert predict_logits(_FixedMaps([wrong, good]), x).equal(predict_logits(_FixedMaps([good, good]), x))
    assert extra_wrong > both_good + 1.0
    expected = structure_loss(wrong, mask) + structure_loss(good, mask)
    assert extra_wrong.item() == pytest.approx(expected.item(), rel=1e-6)
    # a map at a lower resolution is upsampled to the mask's size before its loss
    low = torch.nn.functional.interpolate(good, size=(8, 8), mode="bilinear", align_corners=False)
    assert maps_structure_loss([low], mask).item() == pytest.approx(
        structure_loss(torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear"), mask).item())
    # one map: exactly the structure loss (smp models train as before)
    assert maps_structure_loss([good], mask).equal(structure_loss(good, mask))


# --------------------------------------------------------------------------------------- recipes
SEGMENT = {"size": 64, "learning_rate": 1e-4, "batch_size": 16, "iterations": 1820, "grad_clip": 0.5,
           "multi_scale": [0.75, 1.0, 1.25], "optimizer": "adam", "weight_decay": 0, "lr_decay": None,
           "augment": "pranet", "loss": "structure", "resize": "hardgen"}


def test_arch_recipe_overrides_segment_defaults_per_arch() -> None:
    pranet = resolve_recipe(SEGMENT, {"arch": "PraNet", "optimizer": None, "iterations": None}, "pranet")
    pvt = resolve_recipe(SEGMENT, {"arch": "PolypPVT", "optimizer": "adamw", "weight_decay": 1e-4,
                                           "iterations": 9100, "lr_decay": {"at": 0.5, "factor": 0.1}}, "polyp_pvt")
    assert (pranet.optimizer, pranet.iterations, pranet.weight_decay, pranet.lr_decay) == ("adam", 1820, 0.0, None)
    assert (pvt.optimizer, pvt.iterations, pvt.weight_decay, pvt.lr_decay) == ("adamw", 9100, 1e-4, (0.5, 0.1))
    assert pvt.multi_scale == pranet.multi_scale == (0.75, 1.0, 1.25) and pvt.augment == "pranet"
    assert pvt.record()["lr_decay_at"] == 0.5 and pranet.record()["lr_decay_factor"] is None
    with pytest.raises(ValueError, match=r"segment\.archs\.x\.optimizer.*sgd"):
        resolve_recipe(SEGMENT, {"optimizer": "sgd"}, "x")
    with pytest.raises(ValueError, match=r"segment\.archs\.x\.lr_decay"):
        resolve_recipe(SEGMENT, {"lr_decay": {"at": 1.5, "factor": 0.1}}, "x")
    with pytest.raises(ValueError, match=r"segment\.augment"):
        resolve_recipe({k: v for k, v in SEGMENT.items() if k != "augment"}, {}, "x")


def test_lr_decay_scales_the_late_steps(pairs_df: pd.DataFrame, tmp_path: Path) -> None:
    """Two iterations with the lr × 1e-6 after the first end where one iteration ends; without decay they do not."""
    spec = SegmenterSpec("Segformer", "mit_b0")
    common = {"size": 64, "batch_size": 3, "learning_rate": 1e-2, "grad_clip": None, "multi_scale": (1.0,),
              "optimizer": "adamw", "weight_decay": 1e-4}
    one = train_segmenter(pairs_df, spec, tmp_path / "one", SegmentRecipe(iterations=1, **common), seed=0)
    decayed = train_segmenter(pairs_df, spec, tmp_path / "decayed",
                              SegmentRecipe(iterations=2, lr_decay={"at": 0.5, "factor": 1e-6}, **common), seed=0,
                              report_to="tensorboard", run_name="segment/mit/real/0/seed-0")
    constant = train_segmenter(pairs_df, spec, tmp_path / "constant", SegmentRecipe(iterations=2, **common), seed=0)
    assert (decayed["lr_decay_at"], decayed["lr_decay_factor"], constant["lr_decay_at"]) == (0.5, 1e-6, None)
    assert decayed["optimizer"] == "adamw" and decayed["weight_decay"] == 1e-4
    states = {name: load_state_dict(tmp_path / name / "model.safetensors")
              for name in ("one", "decayed", "constant")}
    key = next(k for k in states["one"] if k.endswith("weight") and states["one"][k].dim() == 4)

    def moved(a: str, b: str) -> float:
        return float((states[a][key] - states[b][key]).abs().max())

    assert moved("decayed", "one") < 1e-5 < moved("constant", "one")
    # the training curve in the tracker (segment.report_to): each step's loss and learning rate, nothing else
    from test_train import tensorboard_scalars

    curves = tensorboard_scalars(tmp_path / "decayed" / "tensorboard")
    assert set(curves) == {"train/loss", "train/lr"}
    assert [(s, pytest.approx(v)) for s, v in curves["train/lr"]] == [(1, 1e-2), (2, 1e-8)]
    logged = pd.read_csv(tmp_path / "decayed" / "train_log.csv")["loss"]
    assert [v for _, v in curves["train/loss"]] == pytest.approx(list(logged), rel=1e-6)
    assert one["maps"] == 1


def test_field_arch_trains_records_its_recipe_and_predicts(pairs_df: pd.DataFrame, tmp_path: Path) -> None:
    recipe = SegmentRecipe(size=64, iterations=2, batch_size=3, learning_rate=1e-3, grad_clip=0.5,
                           multi_scale=(0.75, 1.0), optimizer="adamw", weight_decay=1e-4, augment="pranet")
    summary = train_segmenter(pairs_df, SMALL_PVT, tmp_path / "run", recipe, seed=0)
    assert summary["maps"] == 2 and summary["steps"] == 4
    assert summary["multi_scale"] == [0.75, 1.0] and summary["augment"] == "pranet"
    record = write_run_record(tmp_path / "run.json", "transformer", "real", 0, summary)
    assert {k: record[k] for k in ("optimizer", "weight_decay", "grad_clip")} == {
        "optimizer": "adamw", "weight_decay": 1e-4, "grad_clip": 0.5}
    runs = run_records.runs_table([tmp_path / "run.json"])
    assert runs.loc[0, "optimizer"] == "adamw" and runs.loc[0, "multi_scale"] == "0.75/1"
    model = load_segmenter(SMALL_PVT, tmp_path / "run" / "model.safetensors")
    losses = sample_losses(model, pairs_df, size=64)
    assert len(losses) == 6 and np.isfinite(losses["loss"]).all()


def test_pranet_augmentation_is_resize_only(pairs_df: pd.DataFrame) -> None:
    plain = SegmentationPairs(pairs_df, 64, augment=False)
    pranet = SegmentationPairs(pairs_df, 64, augment=True, augmentation="pranet")
    hardgen = SegmentationPairs(pairs_df, 64, augment=True, augmentation="hardgen")
    differs = 0
    for seed in range(6):
        reference = plain[0][0]
        assert torch.equal(pranet[(0, seed)][0], reference)
        differs += not torch.equal(hardgen[(0, seed)][0], reference)
    assert differs > 0
    with pytest.raises(ValueError, match="segment.augment"):
        train_transform(64, "flips")


# ------------------------------------------------------------------------------------- checkpoints
def test_field_arch_loads_a_whole_model_or_a_timm_backbone_export(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_segmenter(SMALL_PVT)
    save_state_dict(tmp_path / "whole.safetensors", source.state_dict())
    torch.manual_seed(2)
    backbone = timm.create_model("pvt_v2_b0", pretrained=False)  # a timm export, classifier head included
    save_state_dict(tmp_path / "backbone.safetensors", backbone.state_dict())

    torch.manual_seed(3)
    whole = build_segmenter(SegmenterSpec("PolypPVT", "pvt_v2_b0", checkpoint=str(tmp_path / "whole.safetensors")))
    assert all(torch.equal(whole.state_dict()[k], v) for k, v in source.state_dict().items())
    enc = build_segmenter(SegmenterSpec("PolypPVT", "pvt_v2_b0",
                                                checkpoint=str(tmp_path / "backbone.safetensors")))
    timm_state = backbone.state_dict()
    for key, value in enc.encoder.state_dict().items():
        assert torch.equal(value, timm_state[key.replace("stages_", "stages.")]), key
    assert not torch.equal(enc.head_sam.weight, source.head_sam.weight)  # the head stays random


def test_hf_segformer_builds_offline_and_loads_a_local_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_segmenter(SegmenterSpec("HFSegformer", "mit_b0"))
    assert model.model.config.hidden_sizes == [32, 64, 160, 256] and model.model.config.num_labels == 1
    model.model.save_pretrained(tmp_path / "judge")
    torch.manual_seed(1)
    loaded = build_segmenter(SegmenterSpec("HFSegformer", "mit-b0", checkpoint=str(tmp_path / "judge")))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"segment\.archs\.judge\.encoder.*mit-b9"):
        build_segmenter(SegmenterSpec("HFSegformer", "mit-b9"), config_key="judge")


# ------------------------------------------------------------------------------------------ config
def test_overlay_drops_archs_with_null_and_field_encoders_are_checked(tmp_path: Path) -> None:
    from hardgen.config.validation import check_registries

    config = load_config([REPO / "config" / "config.yaml", REPO / "config" / "paper.yaml"])
    assert list(config["segment"]["archs"]) == ["pranet", "polyp_pvt", "segformer"]  # cnn, transformer dropped
    config["feedback"]["segmenter"] = "segformer"
    validate_config(config)
    check_registries(config)
    config["segment"]["archs"]["pranet"]["encoder"] = "res2net_does_not_exist"
    with pytest.raises(ConfigError, match=r"segment\.archs\.pranet\.encoder"):
        check_registries(config)
    demo = load_config([REPO / "config" / "config.yaml"])
    validate_config(demo)
    assert demo["segment"]["archs"]["transformer"]["arch"] == "PolypPVT"
    assert demo["segment"]["archs"]["transformer"]["published"] == "Polyp-PVT"
    assert demo["segment"]["archs"]["cnn"]["optimizer"] is None  # null = segment.optimizer


# ------------------------------------------------------------------------- every judge uses the prediction
def test_judges_and_maps_use_the_prediction_map(pairs_df: pd.DataFrame, tmp_path: Path) -> None:
    """Sample losses, the pixel filter, the saved test maps and the feedback judge all see P1 + P2 of a Polyp-PVT."""
    from types import SimpleNamespace

    from hardgen.generator.objectives import FeedbackJudge
    from hardgen.scoring.pixel_filter import filter_judge_pixel_losses, pixel_bce
    from hardgen.segmentation.predict import save_prediction_maps

    torch.manual_seed(0)
    model = build_segmenter(SMALL_PVT).eval()
    save_state_dict(tmp_path / "pvt.safetensors", model.state_dict())
    images = torch.stack([SegmentationPairs(pairs_df, 64, augment=False)[i][0] for i in range(2)])
    masks = torch.stack([SegmentationPairs(pairs_df, 64, augment=False)[i][1] for i in range(2)])
    with torch.no_grad():
        p1, p2 = output_maps(model, images)
    expected = structure_loss_per_sample(p1 + p2, masks)
    assert not torch.allclose(expected, structure_loss_per_sample(p2, masks))  # the sum is a real choice

    losses = sample_losses(model, pairs_df.iloc[:2], size=64)
    assert losses["loss"].to_numpy() == pytest.approx(expected.numpy(), rel=1e-5)
    pixel = [loss for _, loss, _ in filter_judge_pixel_losses(model, pairs_df.iloc[:2], size=64)]
    assert np.stack(pixel) == pytest.approx(pixel_bce(p1 + p2, masks).numpy(), rel=1e-5, abs=1e-6)

    entry = {"arch": "PolypPVT", "encoder": "pvt_v2_b0", "optimizer": "adamw", "published": "Polyp-PVT"}
    judge = FeedbackJudge(SimpleNamespace(segmenter=entry, segmenter_weights=str(tmp_path / "pvt.safetensors"),
                                          segment_size=64, seg_loss="structure", judge_input="segment_size"),
                         torch.device("cpu"))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images01 = (images * std + mean).requires_grad_(True)
    feedback = judge.losses(images01, masks)
    assert feedback.detach().numpy() == pytest.approx(expected.numpy(), rel=1e-4)
    feedback.sum().backward()
    assert images01.grad is not None and images01.grad.abs().sum() > 0  # differentiable wrt the images

    test = pairs_df.iloc[:2].assign(split="Kvasir")
    table = save_prediction_maps(model, test, 64, tmp_path / "maps")
    assert len(table) == 2 and all(Path(p).is_file() for p in table["pred"])
