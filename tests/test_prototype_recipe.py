"""The prototype's recipe (backbones.<key>.prototype_crop: hardgen | native, the authors' script) and a prototype file
of the user's (backbones.<key>.prototype): the native crop, what readers check, and the DAG without rule prototype."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from test_workflow import copy_workflow, overlay, planned_jobs, snakemake

from hardgen.core import io
from hardgen.core.weights import save_state_dict
from hardgen.scoring.features import (
    BackboneSpec,
    FeatureExtractor,
    check_prototype,
    compute_prototype,
    extract_features,
    load_backbone,
    load_prototype,
)
from hardgen.scoring.score import score_samples_with_features

SIZE = 32
CNN = BackboneSpec(name="resnet18", input_size=SIZE)


class _Pixels(torch.nn.Module):
    """A 'backbone' whose feature is the (normalised) input crop itself, flattened: the crop made visible."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        return x.flatten(1)


def _pixels(resize_via: int | None) -> FeatureExtractor:
    return FeatureExtractor(_Pixels(), "pixels", SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                            feature_dim=3 * SIZE * SIZE, resize_via=resize_via)


@pytest.fixture
def native_pair(tmp_path):
    """A 90 x 120 image; its grey mask: 200 in rows 30-41, cols 98-111 (the polyp), 127 in a top-left block (not
    foreground: mask > 127). The box + 10 px is rows 20-51 and cols 88-119, clipped at the right edge: 32 x 32."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    mask = np.zeros((90, 120), dtype=np.uint8)
    mask[30:42, 98:112] = 200
    mask[0:6, 0:6] = 127
    io.write_image(tmp_path / "img.png", image)
    Image.fromarray(mask, mode="L").save(tmp_path / "mask.png")
    pairs = pd.DataFrame([{"id": "s0", "image": str(tmp_path / "img.png"), "mask": str(tmp_path / "mask.png")}])
    return pairs, image


def test_native_crop_is_the_box_plus_pad_at_native_resolution_straight_to_input_size(native_pair):
    pairs, image = native_pair
    crop = torch.tensor(image[20:52, 88:120]).permute(2, 0, 1).float() / 255  # 32 x 32: the resize is the identity
    # resize_via 16 is not used by the native recipe: the crop goes straight to input_size
    _, native = extract_features(_pixels(resize_via=16), pairs, pad=10, batch_size=1, crop="native")
    torch.testing.assert_close(native[0], crop.flatten())
    # hardgen's recipe on the same pair goes through resize_via (and model.resolution when given): another crop
    _, hardgen = extract_features(_pixels(resize_via=16), pairs, pad=10, batch_size=1)
    assert not torch.allclose(hardgen[0], crop.flatten(), atol=1e-3)
    _, fitted = extract_features(_pixels(resize_via=None), pairs, pad=10, batch_size=1, resolution=64)
    assert not torch.allclose(fitted[0], crop.flatten(), atol=1e-3)
    with pytest.raises(ValueError, match="native size"):
        extract_features(_pixels(None), pairs, pad=10, batch_size=1, resolution=64, crop="native")


def test_native_crop_resizes_a_larger_box_straight_like_the_authors_pil_resize(tmp_path):
    # a 200 x 260 image whose box + 10 px (rows 40-139, cols 50-209) is resized straight to 32: close to
    # torchvision's Resize((224, 224)) on the PIL crop (PIL bilinear, antialiased), the authors' preprocess
    yy, xx = np.mgrid[:200, :260]
    image = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    mask = np.zeros((200, 260), dtype=bool)
    mask[50:130, 60:200] = True
    io.write_image(tmp_path / "img.png", image)
    io.write_mask(tmp_path / "mask.png", mask)
    pairs = pd.DataFrame([{"id": "s0", "image": str(tmp_path / "img.png"), "mask": str(tmp_path / "mask.png")}])
    _, native = extract_features(_pixels(resize_via=512), pairs, pad=10, batch_size=1, crop="native")
    pil = Image.fromarray(image).crop((50, 40, 210, 140)).resize((SIZE, SIZE), Image.BILINEAR)
    expected = torch.tensor(np.asarray(pil)).permute(2, 0, 1).float() / 255
    assert (native[0].view(3, SIZE, SIZE) - expected).abs().mean() < 2 / 255


def test_the_recipe_is_recorded_and_checked_by_every_reader(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(3):
        image = rng.integers(0, 200, size=(48 + 8 * i, 64, 3), dtype=np.uint8)
        mask = np.zeros(image.shape[:2], dtype=bool)
        mask[10:30, 12 + i: 40] = True
        io.write_image(tmp_path / f"i{i}.png", image)
        io.write_mask(tmp_path / f"m{i}.png", mask)
        rows.append({"id": f"s{i}", "image": str(tmp_path / f"i{i}.png"), "mask": str(tmp_path / f"m{i}.png"),
                     "split": "train", "fg_fraction": float(mask.mean())})
    pairs = pd.DataFrame(rows)
    native, hardgen = tmp_path / "native.safetensors", tmp_path / "hardgen.safetensors"
    summary = compute_prototype(pairs, CNN, native, pad=10, resolution=64, crop="native", config_key="cnn")
    assert (summary["crop"], summary["resolution"]) == ("native", "native")  # the resolution is not used
    compute_prototype(pairs, CNN, hardgen, pad=10, resolution=64, config_key="cnn")
    backbone = load_backbone(CNN)
    _, features = extract_features(backbone, pairs, pad=10, batch_size=3, crop="native")
    torch.testing.assert_close(load_prototype(native).prototype, features.mean(0))
    assert (load_prototype(native).crop, load_prototype(hardgen).crop) == ("native", "hardgen")
    # a native prototype fits any model.resolution; hardgen's only the one its real images were fitted to
    for resolution in (32, 64, None):
        check_prototype(load_prototype(native), native, backbone, resolution, "cnn")
    check_prototype(load_prototype(hardgen), hardgen, backbone, 64, "cnn")
    with pytest.raises(ValueError, match=r"backbones\.cnn's prototype .*hardgen.safetensors: computed at resolution 64"):
        check_prototype(load_prototype(hardgen), hardgen, backbone, 32, "cnn")
    with pytest.raises(ValueError, match="input_size 32"):
        check_prototype(load_prototype(native), native, load_backbone(BackboneSpec(name="resnet18", input_size=48)),
                        64, "cnn")
    with pytest.raises(ValueError, match="prototype_crop"):
        compute_prototype(pairs, CNN, native, crop="authors", config_key="cnn")


def _user_prototype(path, dim: int, backbone: str = "resnet18") -> None:
    save_state_dict(path, {"prototype": torch.ones(dim), "real_distances": torch.tensor([1.0, 2.0])},
                    metadata={"real_mean_distance": "1.5", "real_std_distance": "0.7", "backbone": backbone, "n": "2",
                              "input_size": str(SIZE), "pad": "10", "resolution": "native", "crop": "native"})


def test_a_user_prototype_of_another_dimension_is_refused_naming_the_key_and_the_file(native_pair, tmp_path):
    pairs, _ = native_pair
    wrong = tmp_path / "authors_polyp.safetensors"
    _user_prototype(wrong, 768)  # the authors' released files are 768-dimensional; resnet18 gives 512
    with pytest.raises(ValueError, match=r"backbones\.cnn's prototype .*authors_polyp\.safetensors: .*\(768,\).*512"):
        score_samples_with_features(pairs, CNN, wrong, "real", backbone_key="cnn", resolution=64)
    right = tmp_path / "mine.safetensors"
    _user_prototype(right, 512)
    scores, _ = score_samples_with_features(pairs, CNN, right, "real", backbone_key="cnn", resolution=64)
    assert len(scores) == 1 and np.isfinite(scores["z"]).all()
    bare = tmp_path / "authors_polyp.npy"
    np.save(bare, np.ones(512, dtype=np.float32))
    with pytest.raises(Exception, match="authors_polyp.npy"):
        load_prototype(bare)


def _jobs(result) -> list[tuple[str, dict[str, str]]]:
    """(rule, {field: value}) of every job a dry run lists (its indented 'input:', 'output:', ... lines)."""
    text = result.stdout + result.stderr
    return [(rule, dict(re.findall(r"^    (\w+): (.*)$", body, re.M)))
            for rule, body in re.findall(r"^rule (\w+):\n((?:    .*\n)+)", text, re.M)]


def test_a_user_prototype_replaces_rule_prototype_for_its_backbone(tmp_path):
    workdir = copy_workflow(tmp_path)
    cfg = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    keys = list(cfg["backbones"])
    assert "vit" in keys and "vit" in cfg["hard"]["loss_backbones"]
    for key in keys:
        (workdir / f"user_{key}.safetensors").write_bytes(b"stand-in: a dry run reads no prototype")
    vit = {**cfg["backbones"]["vit"], "prototype": "user_vit.safetensors"}
    result = snakemake(workdir, "-n", "--cores", "1", *overlay(workdir, "vit", backbones={"vit": vit}))
    jobs = _jobs(result)
    [prototype] = [fields for rule, fields in jobs if rule == "prototype"]
    assert prototype["output"].split(", ") == [f"results/prototypes/{k}.safetensors" for k in keys if k != "vit"]
    readers = [fields for rule, fields in jobs if rule in ("score", "train_hard_lora")]
    assert {rule for rule, _ in jobs} >= {"score", "train_hard_lora"}
    assert all("user_vit.safetensors" in fields["input"].split(", ") for fields in readers)
    assert not any("results/prototypes/vit.safetensors" in fields["input"] for fields in readers)
    # every backbone given: no job of rule prototype at all
    given = {key: {**entry, "prototype": f"user_{key}.safetensors"} for key, entry in cfg["backbones"].items()}
    planned = snakemake(workdir, "-n", "--cores", "1", *overlay(workdir, "all", backbones=given))
    jobs = planned_jobs(planned.stdout + planned.stderr)
    assert "prototype" not in jobs and jobs["score"] >= 1 and jobs["train_hard_lora"] == 1
    missing = {**cfg["backbones"]["vit"], "prototype": "nowhere.safetensors"}
    failed = snakemake(workdir, "-n", "--cores", "1", *overlay(workdir, "missing", backbones={"vit": missing}),
                       check=False)
    assert failed.returncode != 0 and "backbones.vit.prototype: nowhere.safetensors" in failed.stdout + failed.stderr
