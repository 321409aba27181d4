"""Tests for hardgen.scoring.features: frozen backbones, mask crops, feature streaming, prototypes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hardgen.core import io
from hardgen.core.io import DataError
from hardgen.core.weights import UnsafeWeightsError, save_state_dict
from hardgen.scoring.features import (
    BackboneSpec,
    compute_prototype,
    crop_to_mask,
    extract_features,
    load_backbone,
    load_prototype,
    prototype_distance,
)

CNN = BackboneSpec(name="resnet18", pretrained=False, checkpoint=None, input_size=32)
VIT = BackboneSpec(name="vit_tiny_patch16_224", pretrained=False, checkpoint=None, input_size=32)


def _seeded(spec: BackboneSpec, seed: int = 0, **kwargs):
    """load_backbone under a given global seed (which must not matter: init is seeded internally)."""
    torch.manual_seed(seed)
    return load_backbone(spec, **kwargs)


def make_pairs(root, sizes, seed=0, empty=()):
    """Write polyp-like image/mask pairs of the given (h, w) sizes; indices in ``empty`` get empty masks."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, (h, w) in enumerate(sizes):
        image = rng.integers(0, 120, size=(h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), dtype=bool)
        if i not in empty:
            cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
            ry, rx = rng.integers(4, h // 4), rng.integers(4, w // 4)
            yy, xx = np.mgrid[:h, :w]
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            image[mask] = np.clip(image[mask].astype(int) + 100, 0, 255).astype(np.uint8)
        io.write_image(root / f"img_{i}.png", image)
        io.write_mask(root / f"mask_{i}.png", mask)
        rows.append({"id": f"s{i}", "image": str(root / f"img_{i}.png"), "mask": str(root / f"mask_{i}.png"),
                     "width": w, "height": h, "fg_fraction": float(mask.mean())})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("spec, dim", [(CNN, 512), (VIT, 192)])
def test_backbone_is_frozen_and_gives_b_by_d_features_for_any_input_size(spec, dim):
    backbone = _seeded(spec)
    assert backbone.feature_dim == dim
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()  # a parent module switching to train mode must not unfreeze BatchNorm statistics
    assert not backbone.training and not backbone.model.training
    for h, w in [(32, 32), (45, 70)]:
        features = backbone(torch.rand(3, 3, h, w))
        assert features.shape == (3, dim)
        assert torch.isfinite(features).all()


@pytest.mark.parametrize("spec", [CNN, VIT])
def test_random_init_is_the_same_in_every_call_and_leaves_global_rng_alone(spec):
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(5)
    first = load_backbone(spec)(x)
    after = torch.rand(1)
    torch.manual_seed(5)
    torch.testing.assert_close(torch.rand(1), after)
    torch.testing.assert_close(_seeded(spec, seed=99)(x), first)


def test_vit_feature_is_cls_token_and_cnn_feature_is_global_average():
    x = torch.rand(2, 3, 40, 40)
    vit = _seeded(VIT)
    tokens = vit.model.forward_features(vit.preprocess(x))
    torch.testing.assert_close(vit(x), tokens[:, 0])
    cnn = _seeded(CNN)
    fmap = cnn.model.forward_features(cnn.preprocess(x))
    torch.testing.assert_close(cnn(x), fmap.mean(dim=(2, 3)))


def test_preprocess_resizes_and_normalises_with_timm_data_config():
    backbone = _seeded(CNN)
    out = backbone.preprocess(torch.full((1, 3, 50, 20), 0.5))
    assert out.shape == (1, 3, 32, 32)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[0, :, 7, 9], expected)


@pytest.mark.parametrize("spec", [CNN, VIT])
def test_gradient_flows_to_input_images_through_crop_and_backbone(spec):
    backbone = _seeded(spec)
    images = torch.rand(2, 3, 48, 56, requires_grad=True)
    masks = torch.zeros(2, 1, 48, 56)
    masks[0, 0, 10:20, 10:30] = 1.0
    masks[1, 0, 30:40, 5:15] = 1.0
    feats = backbone(crop_to_mask(images, masks, pad=2, out_size=32))
    distance = prototype_distance(feats, torch.zeros(backbone.feature_dim))
    distance.sum().backward()
    grad = images.grad
    assert grad is not None and grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0
    # Pixels outside the padded box cannot influence the feature.
    assert grad[0, :, 25:, :].abs().sum() == 0 and grad[0, :, :, 35:].abs().sum() == 0


def _coordinate_image(h, w):
    """Channel 0 holds the x coordinate, channel 1 the y coordinate, so a crop reveals its box."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)])[None]


def test_crop_box_matches_padded_foreground_box():
    image = _coordinate_image(64, 80)
    mask = torch.zeros(1, 64, 80, dtype=torch.bool)
    mask[0, 10:30, 20:40] = True  # 20 x 20 foreground
    crop = crop_to_mask(image, mask, pad=3, out_size=26)  # box 26 x 26: same size, so no resampling
    assert crop.shape == (1, 3, 26, 26)
    assert crop[0, 0].min() == 17 and crop[0, 0].max() == 42
    assert crop[0, 1].min() == 7 and crop[0, 1].max() == 32


def test_crop_clips_at_border_and_accepts_float_4d_masks():
    image = _coordinate_image(40, 40)
    mask = torch.zeros(1, 1, 40, 40)
    mask[0, 0, 0:6, 34:40] = 0.9
    mask[0, 0, 20, 20] = 0.4  # below 0.5: background
    crop = crop_to_mask(image, mask, pad=4, out_size=10)  # box x 30..40, y 0..10
    assert crop[0, 0].min() == 30 and crop[0, 0].max() == 39
    assert crop[0, 1].min() == 0 and crop[0, 1].max() == 9


def test_empty_mask_crops_the_whole_image_and_bad_masks_raise():
    image = torch.rand(2, 3, 24, 24)
    crop = crop_to_mask(image, torch.zeros(2, 24, 24), pad=10, out_size=24)
    torch.testing.assert_close(crop, image)
    with pytest.raises(ValueError, match="do not match"):
        crop_to_mask(image, torch.zeros(2, 20, 24), pad=0, out_size=8)
    with pytest.raises(ValueError, match="masks"):
        crop_to_mask(image, torch.zeros(2, 2, 24, 24), pad=0, out_size=8)


def test_prototype_distance_is_euclidean_norm():
    features = torch.tensor([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0]])
    prototype = torch.tensor([0.0, 0.0, 1.0])
    torch.testing.assert_close(prototype_distance(features, prototype), torch.tensor([26.0**0.5, 2.0**0.5]))
    with pytest.raises(ValueError, match="expected"):
        prototype_distance(features, torch.zeros(4))


def test_unknown_backbone_names_the_config_key():
    with pytest.raises(ValueError, match=r"backbones\.cnn\.name"):
        load_backbone(BackboneSpec("no_such_net_42", False, None, 32), config_key="cnn")
    with pytest.raises(ValueError, match=r"backbones\.vit\.input_size"):
        BackboneSpec.from_config("vit", {"name": "vit_tiny_patch16_224", "input_size": "big"})
    entry = {"name": "resnet18", "pretrained": False, "checkpoint": None, "input_size": 64}
    spec = BackboneSpec.from_config("cnn", entry)
    assert spec == BackboneSpec("resnet18", False, None, 64)


def test_checkpoint_loads_into_backbone_and_mismatch_names_file(tmp_path):
    source = _seeded(CNN)
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in source.model.state_dict().items()}
    source.model.load_state_dict(state)  # differ from the default random init
    state["fc.weight"] = torch.zeros(1000, 512)  # an ImageNet head is expected in real checkpoints and ignored
    path = tmp_path / "resnet18.safetensors"
    save_state_dict(path, state)
    loaded = _seeded(BackboneSpec("resnet18", False, str(path), 32), seed=2)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source(x))

    del state["layer4.1.bn2.weight"]
    bad = tmp_path / "bad.safetensors"
    save_state_dict(bad, state)
    with pytest.raises(ValueError, match=r"bad\.safetensors.*missing"):
        load_backbone(BackboneSpec("resnet18", False, str(bad), 32))


def test_vit_checkpoint_at_other_resolution_is_resampled(tmp_path):
    source = _seeded(BackboneSpec("vit_tiny_patch16_224", False, None, 64))
    path = tmp_path / "vit.safetensors"
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in source.model.state_dict().items()}
    source.model.load_state_dict(state)
    save_state_dict(path, state)
    loaded = load_backbone(BackboneSpec("vit_tiny_patch16_224", False, str(path), 32))
    torch.testing.assert_close(loaded.model.blocks[0].attn.qkv.weight, source.model.blocks[0].attn.qkv.weight)
    assert loaded(torch.rand(1, 3, 32, 32)).shape == (1, 192)


def test_extract_features_handles_mixed_sizes_in_order(tmp_path):
    pairs = make_pairs(tmp_path, [(40, 52), (64, 48), (36, 36), (50, 70), (44, 60)])
    backbone = _seeded(CNN)
    ids, features = extract_features(backbone, pairs, pad=5, batch_size=2)
    assert ids == ["s0", "s1", "s2", "s3", "s4"]
    assert features.shape == (5, 512) and not features.requires_grad
    image = torch.tensor(io.read_rgb(pairs["image"][3])).permute(2, 0, 1)[None].float() / 255
    mask = torch.tensor(io.read_mask(pairs["mask"][3]))[None]
    with torch.no_grad():
        single = backbone(crop_to_mask(image, mask, 5, 32))
    torch.testing.assert_close(features[3], single[0])


def test_compute_prototype_is_mean_of_real_training_features(tmp_path):
    pairs = make_pairs(tmp_path, [(40, 40), (48, 56), (40, 64), (56, 40), (44, 44), (40, 48)], empty=(2,))
    pairs["split"] = ["train", "train", "train", "train", "train", "Kvasir"]
    out = tmp_path / "protos" / "cnn.safetensors"
    summary = compute_prototype(pairs, CNN, out, pad=4, batch_size=3)
    assert summary["n"] == 4  # empty mask and test row skipped

    backbone = _seeded(CNN)
    usable = pairs[(pairs["split"] == "train") & (pairs["fg_fraction"] > 0)]
    _, features = extract_features(backbone, usable, pad=4, batch_size=4)
    proto = load_prototype(out)
    torch.testing.assert_close(proto.prototype, features.mean(0))
    distances = torch.linalg.norm(features - features.mean(0), dim=1)
    assert proto.real_mean == pytest.approx(float(distances.mean()), rel=1e-5)
    assert proto.real_std == pytest.approx(float(distances.std()), rel=1e-4)
    assert (proto.backbone, proto.n) == ("resnet18", 4)
    assert list(tmp_path.joinpath("protos").iterdir()) == [out]  # atomic: no temp files left behind


def test_compute_prototype_errors_name_the_problem(tmp_path):
    pairs = make_pairs(tmp_path, [(40, 40), (40, 40)], empty=(1,))
    pairs["split"] = "train"
    with pytest.raises(DataError, match=">= 2 training samples"):
        compute_prototype(pairs, CNN, tmp_path / "p.safetensors")
    with pytest.raises(DataError, match="split"):
        compute_prototype(pairs.drop(columns="split"), CNN, tmp_path / "p.safetensors")


class _Payload:
    """Anything that is not a tensor makes torch.save write a real pickle."""


def test_load_prototype_refuses_pickles_and_foreign_files(tmp_path):
    pickled = tmp_path / "proto.pt"
    torch.save({"prototype": torch.zeros(3), "extra": _Payload()}, pickled)
    with pytest.raises(UnsafeWeightsError, match="proto.pt"):
        load_prototype(pickled)
    plain = tmp_path / "plain.pt"
    torch.save({"prototype": torch.zeros(3)}, plain)
    with pytest.raises(DataError, match="plain.pt"):
        load_prototype(plain)
    foreign = tmp_path / "foreign.safetensors"
    save_state_dict(foreign, {"prototype": torch.zeros(3)})
    with pytest.raises(DataError, match="not a hardgen prototype"):
        load_prototype(foreign)


# ------------------------------------------------------------------ transformers ViTModel (the authors' extractor)
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "image_size": 32, "patch_size": 8}
HF_VIT = BackboneSpec(name="google/vit-large-patch16-224", source="transformers", input_size=32, resize_via=64,
                      config=TINY_VIT)


def test_transformers_backbone_is_the_cls_token_of_last_hidden_state_with_the_processors_normalisation():
    from transformers import ViTModel

    backbone = load_backbone(HF_VIT)  # pretrained false + config: built locally, nothing downloaded
    assert isinstance(backbone.model, ViTModel) and backbone.feature_dim == 32
    assert torch.equal(backbone.mean.flatten(), torch.full((3,), 0.5))  # ViTImageProcessor: mean = std = 0.5
    assert torch.equal(backbone.std.flatten(), torch.full((3,), 0.5))
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        manual = backbone.model(pixel_values=(images - 0.5) / 0.5).last_hidden_state[:, 0]
        assert torch.allclose(backbone(images), manual, atol=1e-6)
        # and not the mean token, nor the unnormalised input
        assert not torch.allclose(backbone(images), backbone.model(pixel_values=images).last_hidden_state[:, 0])
    # seeded random init: every process sees the same network
    assert torch.equal(load_backbone(HF_VIT)(images).detach(), backbone(images).detach())


def test_transformers_backbone_passes_gradients_to_the_images_not_to_its_weights():
    backbone = load_backbone(HF_VIT)
    images = torch.rand(2, 3, 50, 40, requires_grad=True)
    masks = torch.zeros(2, 50, 40, dtype=torch.bool)
    masks[:, 10:30, 5:25] = True
    crops = crop_to_mask(images, masks, pad=10, out_size=32, via=backbone.resize_via)
    assert crops.shape == (2, 3, 32, 32)
    backbone(crops).pow(2).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_resize_via_is_a_two_step_resize_of_the_crop():
    image = torch.rand(1, 3, 40, 40)
    mask = torch.zeros(1, 40, 40, dtype=torch.bool)
    mask[:, 12:20, 12:20] = True
    direct = crop_to_mask(image, mask, pad=2, out_size=16)
    via = crop_to_mask(image, mask, pad=2, out_size=16, via=64)
    crop = image[:, :, 10:22, 10:22]
    step = torch.nn.functional.interpolate(crop, size=(64, 64), mode="bilinear", align_corners=False)
    expected = torch.nn.functional.interpolate(step, size=(16, 16), mode="bilinear", antialias=True,
                                               align_corners=False)
    assert torch.allclose(via, expected, atol=1e-6)
    assert not torch.allclose(via, direct, atol=1e-4)  # the 512 step of the authors changes the pixels


def test_transformers_spec_needs_an_architecture_without_download(tmp_path):
    spec = BackboneSpec(name=str(tmp_path / "nowhere"), source="transformers", input_size=32)
    with pytest.raises(ValueError, match="backbones.vit.*config"):
        load_backbone(spec, config_key="vit")
    with pytest.raises(ValueError, match="backbones.vit.source"):
        BackboneSpec.from_config("vit", {"name": "x", "source": "keras", "input_size": 32})
    with pytest.raises(ValueError, match="backbones.vit.config"):
        BackboneSpec.from_config("vit", {"name": "x", "input_size": 32, "config": {"hidden_size": 8}})


def test_transformers_backbone_from_a_local_folder_and_checkpoint(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path / "vit"
    torch.manual_seed(5)
    ViTModel(ViTConfig(**TINY_VIT)).save_pretrained(folder)  # safetensors, pooler included
    ViTImageProcessor(image_mean=[0.4, 0.4, 0.4], image_std=[0.2, 0.2, 0.2]).save_pretrained(folder)
    loaded = load_backbone(BackboneSpec(name=str(folder), source="transformers", pretrained=True, input_size=32))
    assert torch.allclose(loaded.mean.flatten(), torch.full((3,), 0.4))
    reference = ViTModel.from_pretrained(folder)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixel_values=(images - 0.4) / 0.2).last_hidden_state[:, 0]
        assert torch.allclose(loaded(images), expected, atol=1e-5)
    with pytest.raises(ValueError, match="backbones.vit.checkpoint: not used with source transformers"):
        load_backbone(BackboneSpec(name=str(folder), source="transformers", input_size=32,
                                   checkpoint=str(tmp_path / "vit.safetensors")), config_key="vit")
