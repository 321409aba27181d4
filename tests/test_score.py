"""Tests for hardgen.scoring.score: distances and z-scores against the real prototype, streamed."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch

import hardgen.core.io
from hardgen.core.io import DataError
from hardgen.scoring import features as features_mod
from hardgen.scoring.features import (
    BackboneSpec,
    compute_prototype,
    load_backbone,
    load_prototype,
    real_training_pairs,
)
from hardgen.scoring.score import (
    SCORE_COLUMNS,
    score_samples_with_features,
    score_variant,
)

CNN = BackboneSpec(name="resnet18", pretrained=False, checkpoint=None, input_size=32)
VIT = BackboneSpec(name="vit_tiny_patch16_224", pretrained=False, checkpoint=None, input_size=32)


def make_pairs(root, n, seed=0, size_range=(40, 64), prefix="s", bright=100):
    """Write n polyp-like image/mask pairs of mixed sizes; returns a manifest-like table."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
        image = rng.integers(0, 120, size=(h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:h, :w]
        cy, cx, r = h / 2 + rng.integers(-5, 6), w / 2 + rng.integers(-5, 6), rng.integers(6, min(h, w) // 3)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        image[mask] = np.clip(image[mask].astype(int) + bright, 0, 255).astype(np.uint8)
        sid = f"{prefix}{i:03d}"
        hardgen.core.io.write_image(root / f"{sid}.png", image)
        hardgen.core.io.write_mask(root / f"{sid}_mask.png", mask)
        rows.append({"id": sid, "split": "train", "image": str(root / f"{sid}.png"),
                     "mask": str(root / f"{sid}_mask.png"), "fg_fraction": float(mask.mean())})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    manifest = make_pairs(root / "data", 12)
    prototypes = {}
    for key, spec in (("cnn", CNN), ("vit", VIT)):
        prototypes[key] = root / f"{key}.safetensors"
        compute_prototype(manifest, spec, prototypes[key], pad=5, batch_size=5)
    return manifest, prototypes


def test_real_scores_are_standardised_by_construction(real):
    manifest, prototypes = real
    for key, spec in (("cnn", CNN), ("vit", VIT)):
        scores, _ = score_samples_with_features(real_training_pairs(manifest), spec, prototypes[key], "real", pad=5,
                                                batch_size=4, backbone_key=key)
        assert list(scores.columns) == SCORE_COLUMNS
        assert len(scores) == 12 and set(scores["variant"]) == {"real"} and set(scores["backbone"]) == {key}
        assert scores["z"].mean() == pytest.approx(0.0, abs=1e-4)
        assert scores["z"].std() == pytest.approx(1.0, abs=1e-4)
        stored = load_prototype(prototypes[key])
        np.testing.assert_allclose(scores["distance"].mean(), stored.real_mean, rtol=1e-5)


def test_generated_scores_use_the_real_spread_and_the_shared_distance(real, tmp_path):
    manifest, prototypes = real
    generated = make_pairs(tmp_path, 6, seed=3, prefix="g", bright=0).rename(columns={"id": "sample_id"})
    scores, _ = score_samples_with_features(generated, CNN, prototypes["cnn"], "hard", pad=5, batch_size=4,
                                            backbone_key="cnn")
    assert list(scores["sample_id"]) == list(generated["sample_id"])
    assert set(scores["variant"]) == {"hard"}
    proto = load_prototype(prototypes["cnn"])
    np.testing.assert_allclose(scores["z"], (scores["distance"] - proto.real_mean) / proto.real_std)
    # The distance is ‖f − p‖ of the very same extractor the training loss uses.
    backbone = load_backbone(CNN)
    _, feats = features_mod.extract_features(backbone, generated.iloc[:2], pad=5, batch_size=2)
    expected = torch.linalg.norm(feats - proto.prototype, dim=1).numpy()
    np.testing.assert_allclose(scores["distance"][:2], expected, rtol=1e-5)


def test_prototype_from_another_backbone_is_refused(real):
    manifest, prototypes = real
    with pytest.raises(ValueError, match="built with 'resnet18'"):
        score_samples_with_features(manifest, VIT, prototypes["cnn"], "plain", backbone_key="vit")


def test_images_are_consumed_lazily_batch_by_batch(real, monkeypatch):
    manifest, _ = real
    reads = []
    original = hardgen.core.io.read_rgb
    monkeypatch.setattr(hardgen.core.io, "read_rgb", lambda path: reads.append(path) or original(path))
    batches = features_mod.iter_features(load_backbone(CNN), manifest, pad=5, batch_size=4)
    assert reads == []  # a generator: nothing read before it is asked for
    ids, feats = next(batches)
    assert len(reads) == 4 and len(ids) == 4 and feats.shape == (4, 512)
    next(batches)
    assert len(reads) == 8


def test_score_peak_memory_does_not_grow_with_number_of_images(real, tmp_path):
    _, prototypes = real
    backbone = load_backbone(CNN)  # warm up caches so both runs below start from the same state
    del backbone
    peaks = {}
    image_bytes = 160 * 160 * 3
    for n in (8, 32):
        pairs = make_pairs(tmp_path / f"n{n}", n, seed=n, size_range=(160, 160), prefix="m")
        tracemalloc.start()
        score_samples_with_features(pairs, CNN, prototypes["cnn"], "plain", pad=5, batch_size=4, backbone_key="cnn")
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # Holding all images would add 24 × 77 kB ≈ 1.8 MB; streaming keeps the peak flat.
    assert peaks[32] - peaks[8] < 8 * image_bytes, peaks


def test_score_variant_writes_one_table_for_all_backbones(real, tmp_path):
    manifest, prototypes = real
    manifest_path = tmp_path / "manifest.csv"
    manifest.iloc[:5].to_csv(manifest_path, index=False)
    out = tmp_path / "scores" / "real.csv"
    written = score_variant(manifest_path, {"cnn": CNN, "vit": VIT}, prototypes, "real", out, pad=5, batch_size=8)
    table = pd.read_csv(out)
    assert list(table.columns) == SCORE_COLUMNS
    assert len(table) == 10 and table["backbone"].value_counts().to_dict() == {"cnn": 5, "vit": 5}
    pd.testing.assert_frame_equal(table, written, check_dtype=False)
    with pytest.raises(ValueError, match=r"\['vit'\]: no prototype"):
        score_variant(manifest_path, {"cnn": CNN, "vit": VIT}, {"cnn": prototypes["cnn"]}, "real", out)
    with pytest.raises(DataError, match=r"missing\.csv: data manifest not found"):
        score_variant(tmp_path / "missing.csv", {"cnn": CNN}, prototypes, "real", out)
    manifest.iloc[:5].drop(columns="mask").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad\.csv: data manifest lacks columns \['mask'\]"):
        score_variant(tmp_path / "bad.csv", {"cnn": CNN}, prototypes, "real", out)
    # an extractor loaded once (rule score shares the held-out backbone with the fidelity guard): the same table
    shared = score_variant(manifest_path, {"cnn": CNN, "vit": VIT}, prototypes, "real", tmp_path / "shared.csv",
                           pad=5, batch_size=8, extractors={"vit": load_backbone(VIT)})
    pd.testing.assert_frame_equal(shared, written)
    with pytest.raises(ValueError, match="backbones.cnn: the loaded extractor is 'vit_tiny"):
        score_variant(manifest_path, {"cnn": CNN}, prototypes, "real", out, extractors={"cnn": load_backbone(VIT)})


def test_score_variant_saves_the_features_behind_every_distance(real, tmp_path):
    from hardgen.report.gallery import read_features

    manifest, prototypes = real
    manifest_path = tmp_path / "manifest.csv"
    manifest.iloc[:5].to_csv(manifest_path, index=False)
    out, feats = tmp_path / "real.csv", tmp_path / "real.features.safetensors"
    table = score_variant(manifest_path, {"cnn": CNN, "vit": VIT}, prototypes, "real", out, pad=5, batch_size=8,
                          features_path=feats)
    variant, ids, arrays = read_features(feats)
    assert variant == "real" and set(arrays) == {"cnn", "vit"}
    for key in ("cnn", "vit"):
        rows = table[table["backbone"] == key]
        assert ids == rows["sample_id"].tolist()  # rows in the CSV's order
        # the saved features are the very ones scored: their distance to the prototype is the CSV's
        distance = np.linalg.norm(arrays[key] - load_prototype(prototypes[key]).prototype.numpy(), axis=1)
        assert np.allclose(distance, rows["distance"], rtol=1e-5)
    score_variant(manifest_path, {"cnn": CNN}, prototypes, "real", tmp_path / "plain.csv")  # features optional
    assert not (tmp_path / "plain.features.safetensors").exists()


def test_real_images_are_scored_at_the_generation_resolution(real, tmp_path):
    """With a resolution, a real image is scored exactly as if it had been brought to the generator's size by
    the training transform first (short side, centre crop), like the generated images it is compared with."""
    manifest, _ = real
    proto_path = tmp_path / "cnn32.safetensors"
    summary = compute_prototype(manifest, CNN, proto_path, pad=5, batch_size=5, resolution=32)
    assert summary["resolution"] == 32 and load_prototype(proto_path).resolution == 32
    scores, _ = score_samples_with_features(real_training_pairs(manifest), CNN, proto_path, "real", pad=5,
                                            batch_size=4, backbone_key="cnn", resolution=32)
    fitted_rows = []
    for row in manifest.itertuples():
        image, mask = hardgen.core.io.read_pair(row.image, row.mask)
        hardgen.core.io.write_image(tmp_path / f"{row.id}.png", hardgen.core.io.fit_square(image, 32))
        hardgen.core.io.write_mask(tmp_path / f"{row.id}_m.png", hardgen.core.io.fit_square(mask, 32, is_mask=True))
        fitted_rows.append({"sample_id": row.id, "image": str(tmp_path / f"{row.id}.png"),
                            "mask": str(tmp_path / f"{row.id}_m.png")})
    as_generated, _ = score_samples_with_features(pd.DataFrame(fitted_rows), CNN, proto_path, "plain", pad=5,
                                                  batch_size=4, backbone_key="cnn", resolution=32)
    np.testing.assert_allclose(scores["distance"], as_generated["distance"], rtol=1e-5)
    # the native-resolution prototype is not comparable: scoring at 32 px against it is refused
    with pytest.raises(ValueError, match="resolution native, used at 32"):
        score_samples_with_features(real_training_pairs(manifest), CNN, real[1]["cnn"], "real", pad=5,
                                    backbone_key="cnn", resolution=32)
