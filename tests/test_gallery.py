"""The report's sample views (hardgen.report.gallery): hardest kept vs rejected samples, real vs generated feature PCA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hardgen.core.io import DataError, write_image, write_mask
from hardgen.report import gallery
from hardgen.scoring.score import save_features

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scores(fidelity: bool = True) -> pd.DataFrame:
    """Variants plain and hard, 6 samples each; in-loss backbones a, b and held-out h (which must not count)."""
    frames = []
    for variant, shift in (("plain", 0.0), ("hard", 10.0)):
        ids = [f"s{i}" for i in range(6)]
        for backbone, z in (("a", np.arange(6.0)), ("b", np.arange(6.0) * 3), ("h", -100 * np.arange(6.0))):
            frame = pd.DataFrame({"sample_id": ids, "variant": variant, "backbone": backbone, "distance": 1.0,
                                  "z": z + shift})
            if fidelity:  # per sample, as the fidelity guard joins it onto every backbone row
                frame["fidelity"] = [0.9, 0.2, 0.8, 0.1, 0.7, 0.6]
            frames.append(frame)
    real = pd.DataFrame({"sample_id": ["r0"], "variant": "real", "backbone": "a", "distance": 1.0, "z": 0.0})
    return pd.concat([*frames, real], ignore_index=True)


def test_sample_hardness_is_the_in_loss_mean_with_the_fidelity() -> None:
    table = gallery.sample_hardness(_scores(), ["a", "b"])
    assert list(table.columns) == ["variant", "sample_id", "hardness", "fidelity"]
    assert set(table["variant"]) == {"plain", "hard"}  # real rows left out
    hard = table[table["variant"] == "hard"].set_index("sample_id")
    assert hard.loc["s2", "hardness"] == pytest.approx(10 + (2 + 6) / 2)  # mean of a and b, never h
    assert hard.loc["s3", "fidelity"] == pytest.approx(0.1)
    assert gallery.sample_hardness(_scores(fidelity=False), ["a"])["fidelity"].isna().all()
    with pytest.raises(ValueError, match="hard.loss_backbones"):
        gallery.sample_hardness(_scores(), ["vit"])


def test_hardest_kept_and_rejected_by_the_guard() -> None:
    table = gallery.sample_hardness(_scores(), ["a", "b"])
    chosen = gallery.hardest_and_rejected(table, min_fidelity=0.5, k=2)
    assert list(chosen.columns) == gallery.GALLERY_COLUMNS
    hard = chosen[chosen["variant"] == "hard"]
    # fidelity >= 0.5 passes (s0, s2, s4, s5); the hardest of those are s5 then s4; s1 and s3 are rejected
    assert hard.loc[hard["group"] == "hardest", "sample_id"].tolist() == ["s5", "s4"]
    assert hard.loc[hard["group"] == "rejected", "sample_id"].tolist() == ["s3", "s1"]  # lowest fidelity first
    assert hard.loc[hard["group"] == "hardest", "rank"].tolist() == [1, 2]
    assert chosen["variant"].drop_duplicates().tolist() == ["plain", "hard"]
    # a guard at 0 rejects nothing; without fidelity scores nothing is rejected either
    assert "rejected" not in set(gallery.hardest_and_rejected(table, 0.0, k=2)["group"])
    no_scores = gallery.sample_hardness(_scores(fidelity=False), ["a", "b"])
    assert set(gallery.hardest_and_rejected(no_scores, 0.5, k=3)["group"]) == {"hardest"}
    partial = table.copy()
    partial.loc[0, "fidelity"] = np.nan
    with pytest.raises(DataError, match="finite fidelity"):  # the guard's own rule refuses a missing value
        gallery.hardest_and_rejected(partial, 0.5)


def _manifests(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    paths = {}
    for variant in ("plain", "hard"):
        rows = []
        for i in range(6):
            image, mask = tmp_path / variant / f"{i}.png", tmp_path / variant / f"m{i}.png"
            write_image(image, rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
            write_mask(mask, rng.random((24, 24)) > 0.5)
            rows.append({"sample_id": f"s{i}", "image": str(image), "mask": str(mask), "variant": variant})
        paths[variant] = tmp_path / variant / "manifest.csv"
        pd.DataFrame(rows).to_csv(paths[variant], index=False)
    return paths


def test_plot_hardest_writes_the_gallery(tmp_path: Path, caplog) -> None:
    manifests = _manifests(tmp_path)
    table = gallery.sample_hardness(_scores(), ["a", "b"])
    chosen = gallery.plot_hardest(table, manifests, tmp_path / "hardest.png", min_fidelity=0.5, k=3)
    assert len(chosen) == 2 * (3 + 2)  # per variant 3 hardest kept, 2 rejected
    data = (tmp_path / "hardest.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    gallery.plot_hardest(gallery.sample_hardness(_scores(fidelity=False), ["a"]), manifests, tmp_path / "n.png",
                         min_fidelity=0.5)
    assert (tmp_path / "n.png").read_bytes()[:8] == PNG_MAGIC
    # only samples with an image can be shown: the others are left out, with a warning
    short = pd.read_csv(manifests["hard"]).iloc[:3]
    with caplog.at_level("WARNING", logger="hardgen.report.gallery"):
        chosen = gallery.plot_hardest(table, {"plain": manifests["plain"], "hard": short}, tmp_path / "x.png",
                                      min_fidelity=0.5, k=3)
    hard = chosen[chosen["variant"] == "hard"]
    assert hard.loc[hard["group"] == "hardest", "sample_id"].tolist() == ["s2", "s0"]  # s5, s4 have no image
    assert "3 scored samples have no image" in caplog.text
    with caplog.at_level("WARNING", logger="hardgen.report.gallery"):
        chosen = gallery.plot_hardest(table, {"plain": manifests["plain"]}, tmp_path / "x.png", min_fidelity=0.5)
    assert set(chosen["variant"]) == {"plain"} and "variants ['hard']: left out" in caplog.text
    with pytest.raises(DataError, match="no scored sample has an image"):
        gallery.plot_hardest(table, {"mined": manifests["plain"]}, tmp_path / "x.png", min_fidelity=0.5)
    with pytest.raises(DataError, match=r"lacks columns \['mask'\]"):
        gallery.plot_hardest(table, {"plain": pd.read_csv(manifests["plain"]).drop(columns="mask")},
                             tmp_path / "x.png", min_fidelity=0.5)


def test_features_round_trip_and_pca(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    files = {}
    for name, shift in (("real", 0.0), ("plain", 0.5), ("hard", 4.0)):
        ids = [f"{name}{i}" for i in range(30)]
        features = {"a": torch.tensor(rng.standard_normal((30, 8)) * 0.3 + shift, dtype=torch.float32),
                    "h": torch.tensor(rng.standard_normal((30, 5)), dtype=torch.float32)}
        files[name] = tmp_path / "scores" / f"{name}.features.safetensors"
        save_features(files[name], name, ids, features)
        variant, read_ids, arrays = gallery.read_features(files[name])
        assert (variant, read_ids) == (name, ids)
        assert np.array_equal(arrays["a"], features["a"].numpy()) and arrays["h"].shape == (30, 5)
    explained = gallery.plot_features(files, ["a"], tmp_path / "features.png")
    assert set(explained) == {"a", "h"}
    assert explained["a"][0] > 0.8  # the hard set's shift dominates the first component
    assert explained["h"][0] < 0.5  # pure noise: no dominant direction
    assert (tmp_path / "features.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(DataError, match="no real features"):
        gallery.plot_features({k: v for k, v in files.items() if k != "real"}, ["a"], tmp_path / "f.png")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="unreadable feature file"):
        gallery.read_features(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="shape"):
        save_features(tmp_path / "x.safetensors", "plain", ["a"], {"a": torch.zeros(2, 3)})
