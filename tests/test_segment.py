"""Tests for hardgen.segmentation (build, losses, datasets, recipes, training, measures): structure loss, segmenter
building, PraNet-style training, sample losses."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from hardgen.benchmark.records import write_run_record
from hardgen.core.io import DataError, read_mask, write_image, write_mask
from hardgen.core.weights import load_state_dict, save_state_dict
from hardgen.report import run_records
from hardgen.segmentation.build import SegmenterSpec, build_segmenter, load_segmenter
from hardgen.segmentation.datasets import SeededEpochStream, SegmentationPairs
from hardgen.segmentation.losses import (
    maps_structure_loss,
    structure_loss,
    structure_loss_per_sample,
)
from hardgen.segmentation.measures import foreground_fractions, sample_losses
from hardgen.segmentation.recipes import SegmentRecipe, resolve_recipe, scaled_size
from hardgen.segmentation.training import train_segmenter

# Segformer/mit_b0 is the fastest family to train on CPU; Unet/resnet18 is checked for build + forward.
FAST_SPEC = SegmenterSpec(arch="Segformer", encoder="mit_b0")


#: a segment section as resolve_recipe reads it (the recipe tests override one key at a time)
SEGMENT = {"size": 64, "learning_rate": 1e-3, "batch_size": 3, "iterations": 1, "grad_clip": 0.5, "multi_scale": [1.0],
           "optimizer": "adam", "weight_decay": 0, "lr_decay": None, "augment": "hardgen", "loss": "structure",
           "resize": "hardgen"}


def _square_mask(size: int = 64, lo: int = 22, hi: int = 42) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., lo:hi, lo:hi] = 1.0
    return mask


@pytest.fixture()
def pairs_df(tmp_path: Path) -> pd.DataFrame:
    """Six tiny polyp-like (image, mask) pairs of a non-square size, on disk."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        h, w = 72, 80
        yy, xx = np.mgrid[:h, :w]
        mask = ((yy - 30 - i) / (9 + i)) ** 2 + ((xx - 40) / 14) ** 2 < 1
        image = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
        image[mask] = (200, 90 + 10 * i, 80)
        write_image(tmp_path / "data" / f"img{i}.png", image)
        write_mask(tmp_path / "data" / f"mask{i}.png", mask)
        rows.append(
            {"image": str(tmp_path / "data" / f"img{i}.png"), "mask": str(tmp_path / "data" / f"mask{i}.png"),
             "sample_id": f"gen-{i}", "variant": "hard"}
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ loss
def test_structure_loss_hand_computed_uniform_case() -> None:
    # Empty mask, zero logits: weight is 1 everywhere, BCE = ln 2, soft IoU term = 1 - 1 / (0.5 * H * W + 1).
    size = 16
    logits = torch.zeros(1, 1, size, size)
    mask = torch.zeros(1, 1, size, size)
    expected = math.log(2.0) + 1.0 - 1.0 / (0.5 * size * size + 1.0)
    assert structure_loss(logits, mask).item() == pytest.approx(expected, rel=1e-6)


def test_structure_loss_perfect_below_wrong_and_per_sample_mean() -> None:
    mask = _square_mask()
    perfect = 12.0 * (2 * mask - 1)
    wrong = -perfect
    half = torch.zeros_like(mask)
    per_sample = structure_loss_per_sample(
        torch.cat([perfect, half, wrong]), torch.cat([mask, mask, mask])
    )
    assert per_sample.shape == (3,)
    assert per_sample[0].item() < 1e-3
    assert per_sample[0] < per_sample[1] < per_sample[2]
    assert per_sample[2].item() > 5.0
    scalar = structure_loss(torch.cat([perfect, half, wrong]), torch.cat([mask, mask, mask]))
    assert scalar.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)


def test_structure_loss_weights_errors_near_the_boundary_more() -> None:
    mask = _square_mask()
    perfect = 12.0 * (2 * mask - 1)
    far_error = perfect.clone()
    far_error[..., 0, 0] = 12.0  # false positive in a corner, far from the object: weight 1
    edge_error = perfect.clone()
    edge_error[..., 21, 30] = 12.0  # false positive just outside the object's edge: weight ~ 1 + 5 * 0.3
    loss_far = structure_loss(far_error, mask).item()
    loss_edge = structure_loss(edge_error, mask).item()
    assert loss_edge > 1.5 * loss_far > 0


def test_structure_loss_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="equal"):
        structure_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))


def _released_structure_loss(pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PraNet's MyTrain.py / Polyp-PVT's Train.py ``structure_loss``, verbatim (the legacy ``reduce='none'``: a true
    value, so the BCE is the batch mean and the weighting line leaves that scalar as it is)."""
    weit = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: size_average and reduce args will be deprecated
        wbce = F.binary_cross_entropy_with_logits(pred, mask, reduce="none")
    assert wbce.dim() == 0  # the legacy argument: reduction mean
    wbce = (weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    pred = torch.sigmoid(pred)
    inter = ((pred * mask) * weit).sum(dim=(2, 3))
    union = ((pred + mask) * weit).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


def _soft_masks(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Random blobs with soft (bilinear) edges, as the released loaders' resized masks."""
    coarse = (torch.rand(batch, 1, 6, 7, generator=generator) > 0.5).float()
    return F.interpolate(coarse, size=(48, 56), mode="bilinear", align_corners=False)


def test_released_structure_loss_is_the_released_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    mask = _soft_masks(4, generator)
    logits = 3 * torch.randn(4, 1, 48, 56, generator=generator)
    released = _released_structure_loss(logits, mask)
    # written out: the plain mean BCE of the whole batch + the boundary-weighted IoU
    weit = 1 + 5 * (F.avg_pool2d(mask, 31, 1, 15) - mask).abs()
    prob = torch.sigmoid(logits)
    inter, union = (prob * mask * weit).sum(dim=(2, 3)), ((prob + mask) * weit).sum(dim=(2, 3))
    written = F.binary_cross_entropy_with_logits(logits, mask) + (1 - (inter + 1) / (union - inter + 1)).mean()
    assert released.item() == pytest.approx(written.item(), abs=1e-6)
    ours = structure_loss(logits, mask, kind="structure_released")
    assert ours.item() == pytest.approx(released.item(), abs=1e-6)
    # per sample: each sample's mean BCE, averaged over the batch = the batch mean (equal sizes), so exact
    per_sample = structure_loss_per_sample(logits, mask, kind="structure_released")
    assert per_sample.shape == (4,) and per_sample.mean().item() == pytest.approx(released.item(), abs=1e-6)
    # hardgen's boundary-weighted BCE is another number
    assert abs(structure_loss(logits, mask).item() - released.item()) > 1e-3
    with pytest.raises(ValueError, match=r"segment\.loss: 'bce'"):
        structure_loss(logits, mask, kind="bce")


def test_deep_supervision_sums_the_chosen_loss_over_maps() -> None:
    generator = torch.Generator().manual_seed(1)
    mask = _soft_masks(2, generator)
    full = 2 * torch.randn(2, 1, 48, 56, generator=generator)
    low = 2 * torch.randn(2, 1, 12, 14, generator=generator)
    upsampled = F.interpolate(low, size=(48, 56), mode="bilinear", align_corners=False)
    released = maps_structure_loss([full, low], mask, kind="structure_released")
    expected = _released_structure_loss(full, mask) + _released_structure_loss(upsampled, mask)
    assert released.item() == pytest.approx(expected.item(), abs=1e-6)
    weighted = maps_structure_loss([full, low], mask)
    assert weighted.item() == pytest.approx((structure_loss(full, mask) + structure_loss(upsampled, mask)).item())
    assert abs(weighted.item() - released.item()) > 1e-3


def test_released_structure_loss_with_valid_pixels() -> None:
    """segment.pixel_filter with the released loss: the BCE is the mean over each sample's kept pixels."""
    generator = torch.Generator().manual_seed(2)
    mask = _soft_masks(3, generator)
    logits = 2 * torch.randn(3, 1, 48, 56, generator=generator)
    plain = structure_loss_per_sample(logits, mask, kind="structure_released")
    kept = structure_loss_per_sample(logits, mask, torch.ones_like(mask), kind="structure_released")
    assert torch.allclose(kept, plain, atol=1e-6)
    valid = torch.ones_like(mask)
    valid[..., :, 30:] = 0
    masked = structure_loss_per_sample(logits, mask, valid, kind="structure_released")
    poked = logits.clone()
    poked[..., :, 30:] = 50.0  # ignored pixels change nothing
    assert torch.allclose(structure_loss_per_sample(poked, mask, valid, kind="structure_released"), masked, atol=1e-6)
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    expected_bce = bce[..., :, :30].mean(dim=(1, 2, 3))
    weight = (1 + 5 * (F.avg_pool2d(mask, 31, 1, 15) - mask).abs()) * valid
    prob = torch.sigmoid(logits)
    inter, union = (prob * mask * weight).sum(dim=(1, 2, 3)), ((prob + mask) * weight).sum(dim=(1, 2, 3))
    assert torch.allclose(masked, expected_bce + 1 - (inter + 1) / (union - inter + 1), atol=1e-6)
    nothing = structure_loss_per_sample(logits[:1], mask[:1], torch.zeros_like(mask[:1]), kind="structure_released")
    assert nothing.item() == 0.0  # a fully ignored sample contributes 0


def test_the_recipe_chooses_the_loss_per_arch_and_training_uses_it(pairs_df: pd.DataFrame, tmp_path: Path,
                                                                  monkeypatch) -> None:
    from hardgen.segmentation import losses as segmentation_losses

    segment = {**SEGMENT, "augment": "hardgen"}
    assert resolve_recipe(segment, {"loss": None}, "cnn").loss == "structure"
    released = resolve_recipe(segment, {"loss": "structure_released"}, "pranet")
    assert released.loss == "structure_released" and released.record()["loss"] == "structure_released"
    with pytest.raises(ValueError, match=r"segment\.archs\.pranet\.loss: 'dice'"):
        resolve_recipe(segment, {"loss": "dice"}, "pranet")
    with pytest.raises(ValueError, match=r"segment\.loss"):
        resolve_recipe({**segment, "loss": "dice"}, {}, "cnn")
    with pytest.raises(ValueError, match=r"segment\.loss"):
        SegmentRecipe(size=64, iterations=1, batch_size=2, learning_rate=1e-3, grad_clip=0.5, loss="dice")

    kinds: list[str] = []
    original = segmentation_losses.structure_loss

    def recording(logits, mask, valid=None, kind="structure"):
        kinds.append(kind)
        return original(logits, mask, valid, kind)

    monkeypatch.setattr(segmentation_losses, "structure_loss", recording)
    summary = train_segmenter(pairs_df, FAST_SPEC, tmp_path / "run", released, seed=0)
    assert kinds == ["structure_released"] and summary["loss"] == "structure_released"
    record = write_run_record(tmp_path / "run.json", "pranet", "real", 0, summary)
    assert record["loss"] == "structure_released"


# ---------------------------------------------------------------------------------------- models
@pytest.mark.parametrize(("arch", "encoder"), [("Unet", "resnet18"), ("Segformer", "mit_b0")])
def test_both_families_build_and_forward_at_64(arch: str, encoder: str) -> None:
    torch.manual_seed(0)
    model = build_segmenter(SegmenterSpec(arch=arch, encoder=encoder)).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1, 64, 64)
    assert torch.isfinite(logits).all()


def test_unknown_arch_and_encoder_name_the_config_key() -> None:
    with pytest.raises(ValueError, match=r"segment\.archs\.cnn\.arch.*NoSuchNet"):
        build_segmenter(SegmenterSpec(arch="NoSuchNet", encoder="resnet18"), config_key="cnn")
    with pytest.raises(ValueError, match=r"segment\.archs\.transformer\.encoder.*mit_b99"):
        build_segmenter(SegmenterSpec(arch="Segformer", encoder="mit_b99"), config_key="transformer")
    with pytest.raises(ValueError, match=r"segment\.archs\.x\.encoder.*tu-not_a_timm_model"):
        build_segmenter(SegmenterSpec(arch="FPN", encoder="tu-not_a_timm_model"), config_key="x")


def test_spec_from_config_reads_entry_and_names_missing_keys() -> None:
    spec = SegmenterSpec.from_config({"arch": "Unet", "encoder": "resnet18", "encoder_weights": None}, "cnn")
    assert spec == SegmenterSpec(arch="Unet", encoder="resnet18", encoder_weights=None, checkpoint=None)
    with pytest.raises(ValueError, match=r"segment\.archs\.cnn\.encoder"):
        SegmenterSpec.from_config({"arch": "Unet"}, "cnn")
    with pytest.raises(ValueError, match=r"segment\.archs\.cnn: unknown keys \['encodr'\]"):
        SegmenterSpec.from_config({"arch": "Unet", "encoder": "resnet18", "encodr": "x"}, "cnn")


def test_checkpoint_loads_whole_model_or_encoder_and_rejects_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_segmenter(FAST_SPEC)
    save_state_dict(tmp_path / "whole.safetensors", source.state_dict())
    # A backbone export: encoder keys plus a classifier head the encoder does not have.
    encoder_only = dict(source.encoder.state_dict())
    encoder_only["head.weight"] = torch.zeros(3, 3)
    save_state_dict(tmp_path / "encoder.safetensors", encoder_only)
    save_state_dict(tmp_path / "bad.safetensors", {"something.else": torch.zeros(2)})

    torch.manual_seed(2)  # different random init, so equality below proves the load happened
    whole_spec = SegmenterSpec("Segformer", "mit_b0", checkpoint=str(tmp_path / "whole.safetensors"))
    whole = build_segmenter(whole_spec)
    for key, value in source.state_dict().items():
        assert torch.equal(whole.state_dict()[key], value), key

    torch.manual_seed(3)
    encoder_spec = SegmenterSpec("Segformer", "mit_b0", checkpoint=str(tmp_path / "encoder.safetensors"))
    enc = build_segmenter(encoder_spec)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(enc.encoder.state_dict()[key], value), key
    head_key = next(k for k in source.state_dict() if k.startswith("segmentation_head") and k.endswith("weight"))
    assert not torch.equal(enc.state_dict()[head_key], source.state_dict()[head_key])  # decoder stays random

    with pytest.raises(ValueError, match=r"segment\.archs\.t\.checkpoint.*bad\.safetensors"):
        build_segmenter(
            SegmenterSpec("Segformer", "mit_b0", checkpoint=str(tmp_path / "bad.safetensors")), config_key="t"
        )


# -------------------------------------------------------------------------------------- training
def _train(pairs_df: pd.DataFrame, out_dir: Path, seed: int, spec: SegmenterSpec = FAST_SPEC) -> dict:
    recipe = SegmentRecipe(size=64, iterations=2, batch_size=3, learning_rate=1e-3, grad_clip=0.5,
                           multi_scale=(0.5, 1.0))
    return train_segmenter(pairs_df, spec, out_dir, recipe, seed=seed)


def test_train_writes_files_and_is_deterministic(pairs_df: pd.DataFrame, tmp_path: Path) -> None:
    summary = _train(pairs_df, tmp_path / "a", seed=0)
    _train(pairs_df, tmp_path / "b", seed=0)
    _train(pairs_df, tmp_path / "c", seed=1)

    assert summary["n_train"] == 6
    assert summary["steps"] == 4  # 2 iterations (batches) x 2 scales, one optimiser step each
    assert (summary["iterations"], summary["batch_size"], summary["images_seen"]) == (2, 3, 6)
    # the fixture's pairs are all labelled with a generated variant
    assert (summary["real_images"], summary["synthetic_images"]) == (0, 6)
    assert math.isfinite(summary["final_loss"]) and summary["final_loss"] > 0
    assert summary["seconds"] > 0
    log = pd.read_csv(tmp_path / "a" / "train_log.csv")
    assert list(log.columns) == ["iteration", "step", "scale", "loss"]
    assert log["iteration"].tolist() == [1, 1, 2, 2]
    assert log["step"].tolist() == [1, 2, 3, 4]
    assert log["scale"].tolist() == [0.5, 1.0, 0.5, 1.0]
    # the last ceil(6 / 3) = 2 iterations are the whole run here
    assert summary["final_loss"] == pytest.approx(log["loss"].mean())
    with safe_open(tmp_path / "a" / "model.safetensors", "pt") as handle:
        metadata = handle.metadata()
    assert {k: metadata[k] for k in ("iterations", "images_seen", "real_images", "synthetic_images", "batch_size")} \
        == {"iterations": "2", "images_seen": "6", "real_images": "0", "synthetic_images": "6", "batch_size": "3"}

    weights_a = load_state_dict(tmp_path / "a" / "model.safetensors")
    weights_b = load_state_dict(tmp_path / "b" / "model.safetensors")
    weights_c = load_state_dict(tmp_path / "c" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert not all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)
    pd.testing.assert_frame_equal(log, pd.read_csv(tmp_path / "b" / "train_log.csv"))

    # Training changed the weights, and load_segmenter restores exactly what was saved.
    model = load_segmenter(FAST_SPEC, tmp_path / "a" / "model.safetensors")
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights_a[key]), key
    assert not list((tmp_path / "a").glob("*.tmp*"))  # atomic writes leave no temporaries


def test_training_reduces_the_loss(pairs_df: pd.DataFrame, tmp_path: Path) -> None:
    torch.manual_seed(0)
    before = sample_losses(build_segmenter(FAST_SPEC), pairs_df, size=64)["loss"].mean()
    recipe = SegmentRecipe(size=64, iterations=16, batch_size=3, learning_rate=2e-3, grad_clip=0.5)
    summary = train_segmenter(pairs_df, FAST_SPEC, tmp_path, recipe, seed=0)
    log = pd.read_csv(tmp_path / "train_log.csv")
    pass_means = log.groupby((log["iteration"] - 1) // 2)["loss"].mean()  # 2 batches of 3 = one pass over 6 pairs
    assert summary["steps"] == 16 and len(pass_means) == 8
    assert pass_means.iloc[-1] < 0.8 * pass_means.iloc[0]
    trained = load_segmenter(FAST_SPEC, tmp_path / "model.safetensors")
    after = sample_losses(trained, pairs_df, size=64)["loss"].mean()
    assert after < before


def test_train_non_finite_loss_raises_with_step_and_saves_nothing(pairs_df: pd.DataFrame, tmp_path: Path) -> None:
    torch.manual_seed(0)
    broken = build_segmenter(FAST_SPEC).state_dict()
    head_key = next(k for k in broken if k.startswith("segmentation_head") and k.endswith("weight"))
    broken[head_key] = torch.full_like(broken[head_key], float("nan"))
    save_state_dict(tmp_path / "broken.safetensors", broken)
    spec = SegmenterSpec("Segformer", "mit_b0", checkpoint=str(tmp_path / "broken.safetensors"))
    out_dir = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"non-finite.*step 1\b"):
        _train(pairs_df, out_dir, seed=0, spec=spec)
    assert not (out_dir / "model.safetensors").exists()
    assert not (out_dir / "train_log.csv").exists()


def test_train_rejects_bad_settings_and_tables(pairs_df: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"segment\.size"):
        SegmentRecipe(size=60, iterations=1, batch_size=2, learning_rate=1e-3, grad_clip=0.5)
    with pytest.raises(ValueError, match=r"segment\.learning_rate"):
        SegmentRecipe(size=64, iterations=1, batch_size=2, learning_rate=0.0, grad_clip=0.5)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=r"segment\.iterations"):
            SegmentRecipe(size=64, iterations=bad, batch_size=2, learning_rate=1e-3, grad_clip=0.5)
    with pytest.raises(ValueError, match=r"segment\.batch_size"):
        SegmentRecipe(size=64, iterations=1, batch_size=0, learning_rate=1e-3, grad_clip=0.5)
    with pytest.raises(ValueError, match=r"segment\.multi_scale"):
        SegmentRecipe(size=64, iterations=1, batch_size=2, learning_rate=1e-3, grad_clip=0.5, multi_scale=(1.0, 0))
    with pytest.raises(ValueError, match=r"segment\.augment"):
        SegmentRecipe(size=64, iterations=1, batch_size=2, learning_rate=1e-3, grad_clip=0.5, augment="heavy")
    # grad_clip <= 0 disables clipping and is stored (and recorded) as None
    assert SegmentRecipe(size=64, iterations=1, batch_size=2, learning_rate=1e-3, grad_clip=0).record()[
        "grad_clip"] is None
    recipe = SegmentRecipe(size=64, iterations=1, batch_size=2, learning_rate=1e-3, grad_clip=0.5)
    with pytest.raises(ValueError, match=r"missing column.*'mask'"):
        train_segmenter(pairs_df.drop(columns="mask"), FAST_SPEC, tmp_path, recipe)
    with pytest.raises(ValueError, match="no \\(image, mask\\) pairs"):
        train_segmenter(pairs_df.iloc[:0], FAST_SPEC, tmp_path, recipe)
    unlabelled = pairs_df.assign(variant=[None, "hard", "hard", "hard", "hard", "hard"])
    with pytest.raises(ValueError, match="variant"):
        train_segmenter(unlabelled, FAST_SPEC, tmp_path, recipe)
    assert not list(tmp_path.glob("*.safetensors"))


def test_training_augmentation_keeps_image_and_mask_aligned(pairs_df: pd.DataFrame) -> None:
    dataset = SegmentationPairs(pairs_df, size=64, augment=True)
    image_a, mask_a, sid = dataset[(0, 123)]
    image_b, mask_b, _ = dataset[(0, 123)]
    assert sid == "gen-0"
    assert image_a.shape == (3, 64, 64) and mask_a.shape == (1, 64, 64)
    assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b)  # same seed -> same augmentation
    assert set(mask_a.unique().tolist()) <= {0.0, 1.0}
    # Red channel is bright exactly on the polyp, so it must still line up with the (augmented) mask.
    red = image_a[0]
    assert red[mask_a[0] > 0].mean() > red[mask_a[0] == 0].mean() + 1.0


def test_released_resize_is_the_released_loaders_pil_bilinear_with_soft_masks(pairs_df: pd.DataFrame) -> None:
    from PIL import Image
    from torchvision import transforms

    from hardgen.segmentation.datasets import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        FilteredSegmentationPairs,
    )

    size = 64  # the pairs are 72 x 80: a shrink, where PIL's bilinear antialiases
    # PraNet / Polyp-PVT utils/dataloader.py PolypDataset, augmentations off: transforms.Resize on the PIL images
    img_transform = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    gt_transform = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    released = SegmentationPairs(pairs_df, size, augment=True, augmentation="pranet", resize="released")
    hardgen = SegmentationPairs(pairs_df, size, augment=True, augmentation="pranet")
    for index in range(len(pairs_df)):
        image, mask, _ = released[(index, 7)]
        expected_mask = gt_transform(Image.open(pairs_df["mask"][index]).convert("L"))
        expected_image = img_transform(Image.open(pairs_df["image"][index]).convert("RGB"))
        assert torch.equal(mask, expected_mask)
        assert torch.allclose(image, expected_image, atol=1e-5)
        soft = mask[(mask > 0) & (mask < 1)]
        assert soft.numel() > 0  # the boundary is soft, never binarised
        assert mask.min() >= 0 and mask.max() <= 1
        binary = hardgen[(index, 7)][1]
        assert set(binary.unique().tolist()) <= {0.0, 1.0}  # the default stays binary
        assert ((mask - binary).abs() > 0.5).float().mean() < 0.02  # the same polyp, only its edge differs
    # hardgen's augmentation on top keeps the soft mask aligned with the image
    augmented = SegmentationPairs(pairs_df, size, augment=True, augmentation="hardgen", resize="released")
    image, mask, _ = augmented[(0, 123)]
    assert ((mask > 0) & (mask < 1)).any() and image[0][mask[0] > 0.5].mean() > image[0][mask[0] < 0.5].mean() + 1.0
    # a pixel-filter map leaves the released pair as it is
    filtered = FilteredSegmentationPairs(pairs_df, size, [np.zeros((size, size), bool)] * 6, augmentation="pranet",
                                         resize="released")
    image_f, mask_f, ignore, _ = filtered[(2, 5)]
    image_r, mask_r, _ = released[(2, 5)]
    assert torch.equal(image_f, image_r) and torch.equal(mask_f, mask_r) and not ignore.any()
    with pytest.raises(ValueError, match=r"segment\.resize: 'nearest'"):
        SegmentationPairs(pairs_df, size, augment=True, resize="nearest")


def test_the_recipe_chooses_the_resize_per_arch_and_training_uses_it(pairs_df: pd.DataFrame, tmp_path: Path) -> None:
    segment = {**SEGMENT, "augment": "pranet"}
    assert resolve_recipe(segment, {"resize": None}, "cnn").resize == "hardgen"
    recipe = resolve_recipe(segment, {"resize": "released"}, "pranet")
    assert recipe.resize == "released" and recipe.record()["resize"] == "released"
    assert resolve_recipe({**segment, "resize": "released"}, {}, "cnn").resize == "released"
    with pytest.raises(ValueError, match=r"segment\.archs\.pranet\.resize: 'nearest'"):
        resolve_recipe(segment, {"resize": "nearest"}, "pranet")
    with pytest.raises(ValueError, match=r"segment\.resize"):
        SegmentRecipe(size=64, iterations=1, batch_size=2, learning_rate=1e-3, grad_clip=0.5, resize="nearest")
    summary = train_segmenter(pairs_df, FAST_SPEC, tmp_path / "run", recipe, seed=0)
    assert summary["resize"] == "released" and math.isfinite(summary["final_loss"])
    record = write_run_record(tmp_path / "run.json", "pranet", "real", 0, summary)
    assert record["resize"] == "released"


def test_epoch_stream_is_seeded_passes_cut_at_the_budget() -> None:
    stream = SeededEpochStream(5, 12, torch.Generator().manual_seed(3))
    items = list(stream)
    assert len(stream) == len(items) == 12
    indices = [i for i, _ in items]
    # two full shuffled passes over the 5 items, then the start of a third
    assert sorted(indices[:5]) == list(range(5)) and sorted(indices[5:10]) == list(range(5))
    assert len(set(indices[10:])) == 2
    assert indices[:5] != indices[5:10]  # each pass is reshuffled
    again = list(SeededEpochStream(5, 12, torch.Generator().manual_seed(3)))
    other = list(SeededEpochStream(5, 12, torch.Generator().manual_seed(4)))
    assert again == items and other != items
    # a longer budget continues the same stream: truncation, not a different draw
    longer = list(SeededEpochStream(5, 20, torch.Generator().manual_seed(3)))
    assert longer[:12] == items


def test_equal_budget_across_policies_of_different_sizes(pairs_df: pd.DataFrame, tmp_path: Path, monkeypatch) -> None:
    """Runs of one arch and seed take the same batches and see the same images, whatever the subset size."""
    loaded: list[int] = []
    original = SegmentationPairs.__getitem__

    def counting(self, key):
        loaded.append(key[0] if isinstance(key, tuple) else key)
        return original(self, key)

    monkeypatch.setattr(SegmentationPairs, "__getitem__", counting)
    real = pairs_df.iloc[:2].assign(variant="real")
    policies = {"real": real, "hard_band": pd.concat([real, pairs_df.iloc[2:3]]), "hard": pd.concat([real, pairs_df.iloc[2:]])}
    records, images_loaded = [], {}
    for seed in (0, 1):
        for policy, pairs in policies.items():
            loaded.clear()
            out = tmp_path / "segment" / "unet" / policy / f"seed-{seed}"
            recipe = SegmentRecipe(size=64, iterations=3, batch_size=2, learning_rate=1e-3, grad_clip=0.5,
                                   multi_scale=(1.0,))
            summary = train_segmenter(pairs, SegmenterSpec("Unet", "resnet18"), out, recipe, seed=seed)
            images_loaded[(policy, seed)] = len(loaded)
            assert len(pd.read_csv(out / "train_log.csv")) == 3  # one optimiser step per batch at one scale
            records.append(out / "run.json")
            write_run_record(records[-1], "unet", policy, seed, summary, ratio=None if policy == "real" else 1)
    assert set(images_loaded.values()) == {6}  # 3 iterations x batch 2 loaded, for 2, 3 and 6 pairs alike

    runs = run_records.runs_table(records)
    assert list(runs.columns) == ["arch", "policy", "ratio", "seed", "real_images", "synthetic_images", "iterations",
                                  "images_seen", *run_records.RUNS_RECIPE_COLUMNS]  # + the recipe each run used
    assert set(runs["optimizer"]) == {"adam"} and set(runs["multi_scale"]) == {"1"}
    assert len(runs) == 6 and runs.set_index("policy")["ratio"].to_dict() == {"real": 0.0, "hard_band": 1.0, "hard": 1.0}
    per_policy = runs[runs.seed == 0].set_index("policy")
    assert per_policy["real_images"].tolist() == [2, 2, 2]
    assert per_policy.loc[["real", "hard", "hard_band"], "synthetic_images"].tolist() == [0, 4, 1]
    for _, group in runs.groupby(["arch", "seed"]):
        assert group["iterations"].tolist() == [3, 3, 3]
        assert group["images_seen"].tolist() == [6, 6, 6]

    # a run with another budget is refused, naming the arch and seed
    bad = dict(json.loads(records[0].read_text()), policy="plain", iterations=4, images_seen=8)
    with pytest.raises(DataError, match=r"unequal training budgets.*'unet', seed 0"):
        run_records.runs_table([*records, bad])


def test_foreground_fractions_read_the_stored_masks(pairs_df: pd.DataFrame) -> None:
    fractions = foreground_fractions(pairs_df)
    assert fractions["sample_id"].tolist() == [f"gen-{i}" for i in range(6)]
    expected = [read_mask(p).mean() for p in pairs_df["mask"]]
    assert np.allclose(fractions["fg_fraction"], expected)
    # ellipses with semi-axes (9 + i, 14) in a 72 x 80 image: about pi * a * b / (72 * 80)
    assert fractions["fg_fraction"].iloc[0] == pytest.approx(np.pi * 9 * 14 / (72 * 80), rel=0.1)
    assert fractions["fg_fraction"].is_monotonic_increasing


def test_scaled_size_follows_pranet_rounding() -> None:
    assert scaled_size(352, 0.75) == 256
    assert scaled_size(352, 1.25) == 448
    assert scaled_size(64, 0.1) == 32


# -------------------------------------------------------------------------------------- inference
def test_sample_losses_match_the_structure_loss_per_sample(pairs_df: pd.DataFrame) -> None:
    torch.manual_seed(0)
    model = build_segmenter(FAST_SPEC)
    losses = sample_losses(model, pairs_df, size=64, batch_size=4)
    assert list(losses.columns) == ["sample_id", "loss", "dice"]
    assert losses["sample_id"].tolist() == [f"gen-{i}" for i in range(6)]
    assert np.isfinite(losses["loss"]).all() and (losses["loss"] > 0).all()

    dataset = SegmentationPairs(pairs_df, size=64, augment=False)
    image, mask, _ = dataset[3]
    with torch.no_grad():
        logits = model.eval()(image[None])
        expected = structure_loss(logits, mask[None]).item()
    assert losses["loss"].iloc[3] == pytest.approx(expected, rel=1e-4)
    # Dice of the prediction (sigmoid >= 0.5) against the mask, both at size
    predicted, target = (logits[0, 0] >= 0).numpy(), mask[0].numpy() > 0.5
    total = predicted.sum() + target.sum()
    assert losses["dice"].iloc[3] == pytest.approx(2 * (predicted & target).sum() / total if total else 1.0)
    assert losses["dice"].between(0, 1).all()

    no_ids = sample_losses(model, pairs_df.drop(columns="sample_id"), size=64)
    assert no_ids["sample_id"].tolist() == [f"img{i}" for i in range(6)]
    pd.testing.assert_series_equal(no_ids["loss"], losses["loss"], rtol=1e-5)


def test_mask_image_size_mismatch_names_the_file(pairs_df: pd.DataFrame, tmp_path: Path) -> None:
    write_mask(tmp_path / "small.png", np.zeros((10, 10), dtype=bool))
    bad = pairs_df.copy()
    bad.loc[0, "mask"] = str(tmp_path / "small.png")
    with pytest.raises(ValueError, match="small.png"):
        sample_losses(build_segmenter(FAST_SPEC), bad, size=64)

