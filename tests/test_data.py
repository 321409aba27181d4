"""Tests for hardgen.data (manifest, demo, masks): demo dataset, mask rule, manifest validation, odd inputs."""

from __future__ import annotations

import io
import logging
import re
import time
import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hardgen.core.io import DataError, read_gray, read_rgb
from hardgen.data import manifest as data
from hardgen.data.demo import DEMO_MARKER, make_demo_dataset
from hardgen.data.masks import MAX_MID_GREY_FRACTION, binary_mask_problem

TESTSETS = ["CVC-300", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "Kvasir"]
DEMO_ARGS = dict(testsets=TESTSETS, n_train=24, n_test=6, min_size=72, max_size=112, seed=0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("demo") / "tree"
    start = time.perf_counter()
    make_demo_dataset(root, **DEMO_ARGS)
    return root, time.perf_counter() - start


@pytest.fixture(scope="module")
def demo_manifest(demo: tuple[Path, float]) -> pd.DataFrame:
    return data.build_manifest(demo[0], TESTSETS)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------- demo


def test_demo_tree_layout_and_counts(demo: tuple[Path, float]) -> None:
    root, _ = demo
    assert len(list((root / "TrainDataset/image").iterdir())) == 24
    assert len(list((root / "TrainDataset/mask").iterdir())) == 24
    for name in TESTSETS:
        images = sorted((root / "TestDataset" / name / "images").iterdir())
        masks = sorted((root / "TestDataset" / name / "masks").iterdir())
        assert len(images) == len(masks) == 6
        assert {p.suffix for p in images} == {".png"}
        assert [p.stem for p in images] == [p.stem for p in masks]
    assert (root / DEMO_MARKER).is_file()
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")], "staging dir left behind"


def test_demo_is_deterministic_and_seed_dependent(demo: tuple[Path, float], tmp_path: Path) -> None:
    make_demo_dataset(tmp_path / "again", **DEMO_ARGS)
    assert _files(tmp_path / "again") == _files(demo[0])
    make_demo_dataset(tmp_path / "other", **{**DEMO_ARGS, "seed": 1})
    base, other = _files(demo[0]), _files(tmp_path / "other")
    assert len(other) == len(base)
    assert not {k for k in base.keys() & other.keys() if k.endswith(".png") and base[k] == other[k]}


def test_demo_rerun_replaces_own_tree_but_never_foreign_data(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    make_demo_dataset(root, TESTSETS[:1], 3, 2, 40, 48, 0)
    (root / "TrainDataset/image/stale.png").write_bytes(b"old")
    make_demo_dataset(root, TESTSETS[:1], 3, 2, 40, 48, 0)
    assert not (root / "TrainDataset/image/stale.png").exists()
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="real"):
        make_demo_dataset(foreign, TESTSETS[:1], 3, 2, 40, 48, 0)
    assert (foreign / "keep.txt").read_text() == "precious"


def test_demo_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.demo.min_size"):
        make_demo_dataset(tmp_path / "x", TESTSETS, 2, 2, 100, 50, 0)
    with pytest.raises(ValueError, match="data.demo.n_train"):
        make_demo_dataset(tmp_path / "x", TESTSETS, 0, 2, 40, 50, 0)


def test_demo_variety(demo_manifest: pd.DataFrame) -> None:
    df = demo_manifest
    assert df["width"].between(72, 112).all() and df["height"].between(72, 112).all()
    assert df["width"].nunique() > 5 and (df["width"] != df["height"]).mean() > 0.5
    jpeg = df["mask"].str.endswith(".jpg")
    assert jpeg.sum() == 24 // 3 + 5 * (6 // 3)
    assert not df["image"].str.endswith(".jpg").any()
    assert (df["fg_fraction"] > 0).all()
    assert df["fg_fraction"].min() < 0.03 and df["fg_fraction"].max() > 0.25
    by_set = df.groupby("split")["fg_fraction"].mean()
    assert by_set["ETIS-LaribPolypDB"] < by_set["CVC-300"] < by_set["Kvasir"]
    brightness = {s: np.mean([read_rgb(p).mean() for p in g["image"]]) for s, g in df.groupby("split")}
    assert brightness["CVC-ColonDB"] < min(v for k, v in brightness.items() if k != "CVC-ColonDB")
    assert df.groupby("split")["width"].mean()["Kvasir"] > df.groupby("split")["width"].mean()["CVC-ClinicDB"]


def test_demo_images_look_endoscopic(demo_manifest: pd.DataFrame) -> None:
    for path in demo_manifest["image"].head(10):
        img = read_rgb(path).astype(float)
        assert img[0, 0].max() < 12 and img[-1, -1].max() < 12  # black octagon corners
        h, w = img.shape[:2]
        centre = img[h // 4: 3 * h // 4, w // 4: 3 * w // 4]
        assert centre[..., 0].mean() > centre[..., 2].mean() + 20  # pink-orange: red dominates blue
        assert (img.min(axis=2) > 235).any()  # specular highlights


# --------------------------------------------------------------------------------------------- mask rule


def _blob(h: int = 96, w: int = 120) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (60, 45), (30, 20), 25, 0, 360, 255, -1)
    cv2.circle(mask, (95, 70), 8, 255, -1)
    return mask


def _jpeg_roundtrip(gray: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


@pytest.mark.parametrize("quality", [30, 50, 75, 95])
def test_jpeg_saved_binary_mask_passes(quality: int) -> None:
    noisy = _jpeg_roundtrip(_blob(), quality)
    assert not np.isin(noisy, [0, 255]).all()  # the JPEG really added noise
    assert binary_mask_problem(noisy) is None


def test_clean_and_bilinear_resized_masks_pass() -> None:
    assert binary_mask_problem(_blob()) is None
    assert binary_mask_problem(np.zeros((20, 20), np.uint8)) is None
    assert binary_mask_problem(cv2.resize(_blob(), None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)) is None


@pytest.mark.parametrize("sigma", [1.5, 2.0, 4.0])
def test_soft_mask_fails(sigma: float) -> None:
    small = cv2.GaussianBlur(_blob(), (0, 0), sigma)
    assert "soft" in (binary_mask_problem(small) or "")
    # In a large frame the grey share stays under rule (1); the band-width rule (2) must catch it.
    large = np.zeros((400, 400), np.uint8)
    large[150:246, 140:260] = small
    assert (large >= 32).mean() < MAX_MID_GREY_FRACTION
    assert "per boundary pixel" in (binary_mask_problem(large) or "")


def test_photo_as_mask_fails(demo_manifest: pd.DataFrame) -> None:
    photo = read_gray(demo_manifest["image"].iloc[0])
    assert "photograph" in (binary_mask_problem(photo) or "")


def test_grey_specks_far_from_boundary_fail() -> None:
    mask = _blob()
    mask[5:8, 5:60:4] = 100  # isolated grey specks (background side) away from any edge
    assert "within 8 px" in (binary_mask_problem(mask) or "")


# --------------------------------------------------------------------------------------------- manifest


def test_manifest_of_demo(demo: tuple[Path, float], demo_manifest: pd.DataFrame) -> None:
    df = demo_manifest
    assert list(df.columns) == ["id", "split", "image", "mask", "width", "height", "fg_fraction"]
    assert df["split"].value_counts().to_dict() == {"train": 24, **{t: 6 for t in TESTSETS}}
    assert df["id"].is_unique and df["id"].str.fullmatch(r"[A-Za-z0-9_-]+").all()
    assert df.loc[df["split"] == "train", "id"].str.startswith("train-").all()
    assert "ETIS-LaribPolypDB-1" in set(df["id"])
    for _, row in df.sample(6, random_state=0).iterrows():
        assert Path(row["image"]).is_absolute() and Path(row["mask"]).is_file()
        assert read_rgb(row["image"]).shape[:2] == (row["height"], row["width"])
        assert row["fg_fraction"] == pytest.approx((read_gray(row["mask"]) > 127).mean())


def test_manifest_roundtrip_and_bad_manifest_files(demo_manifest: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    data.write_manifest(demo_manifest, path)
    pd.testing.assert_frame_equal(data.load_manifest(path), demo_manifest)
    demo_manifest.drop(columns=["fg_fraction"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad\.csv.*fg_fraction"):
        data.load_manifest(tmp_path / "bad.csv")
    with pytest.raises(DataError, match=r"missing\.csv: manifest not found"):
        data.load_manifest(tmp_path / "missing.csv")
    named = demo_manifest.assign(id=["NA", "007", *demo_manifest["id"][2:]])  # ids are names, read as written
    data.write_manifest(named, path)
    assert data.load_manifest(path)["id"].tolist()[:2] == ["NA", "007"]


def test_expected_sizes(demo: tuple[Path, float]) -> None:
    sizes = {"train": 24, **{t: 6 for t in TESTSETS}}
    assert len(data.build_manifest(demo[0], TESTSETS, expected_sizes=sizes)) == 54
    with pytest.raises(DataError) as err:
        data.build_manifest(demo[0], TESTSETS, expected_sizes={**sizes, "train": 1450, "Kvasir": 100})
    message = str(err.value)
    assert "'train'" in message and "1450" in message and "found 24" in message
    assert "'Kvasir'" in message and "100" in message and "found 6" in message


# --------------------------------------------------------------------------------------------- bad trees


def _rgb(h: int = 40, w: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h: int = 40, w: int = 50) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), min(h, w) // 4, 255, -1)
    return mask


def _tree(root: Path, testsets: tuple[str, ...] = ("SetA",), stems: tuple[str, ...] = ("a", "b")) -> Path:
    """A small valid PraNet tree with PNG pairs."""
    folders = [(root / "TrainDataset/image", root / "TrainDataset/mask")]
    folders += [(root / "TestDataset" / t / "images", root / "TestDataset" / t / "masks") for t in testsets]
    for image_dir, mask_dir in folders:
        image_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        for i, stem in enumerate(stems):
            Image.fromarray(_rgb(seed=i)).save(image_dir / f"{stem}.png")
            Image.fromarray(_mask()).save(mask_dir / f"{stem}.png")
    return root


def test_small_valid_tree(tmp_path: Path) -> None:
    df = data.build_manifest(_tree(tmp_path), ["SetA"])
    assert df["id"].tolist() == ["train-a", "train-b", "SetA-a", "SetA-b"]
    assert (df[["width", "height"]] == [50, 40]).all().all()


def test_unpaired_and_duplicate_files(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "TrainDataset/mask/b.png").unlink()
    Image.fromarray(_mask()).save(root / "TestDataset/SetA/masks/orphan.png")
    Image.fromarray(_rgb()).save(root / "TrainDataset/image/a.jpg")
    with pytest.raises(DataError) as err:
        data.build_manifest(root, ["SetA"])
    message = str(err.value)
    assert "3 problem(s)" in message  # all problems in one error
    assert re.search(r"image/b\.png: image without mask", message)
    assert re.search(r"masks/orphan\.png: mask without image", message)
    assert "duplicate stem 'a': a.jpg, a.png" in message


def test_unreadable_truncated_and_size_mismatch(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    full = (root / "TrainDataset/image/a.png").read_bytes()
    (root / "TrainDataset/image/a.png").write_bytes(full[: len(full) // 2])
    (root / "TrainDataset/mask/b.png").write_bytes(b"not an image at all")
    Image.fromarray(_mask(41, 50)).save(root / "TestDataset/SetA/masks/a.png")
    with pytest.raises(DataError) as err:
        data.build_manifest(root, ["SetA"])
    message = str(err.value)
    assert re.search(r"TrainDataset/image/a\.png: unreadable or truncated", message)
    assert re.search(r"TrainDataset/mask/b\.png: unreadable or truncated", message)
    assert re.search(r"SetA/masks/a\.png: mask size 50x41 differs from its image", message)


def test_soft_and_photo_masks_rejected_jpeg_mask_accepted(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    Image.fromarray(cv2.GaussianBlur(_mask(), (0, 0), 3)).save(root / "TrainDataset/mask/a.png")
    Image.fromarray(_rgb(seed=5)).save(root / "TestDataset/SetA/masks/b.png")
    (root / "TestDataset/SetA/masks/a.png").unlink()
    Image.fromarray(_mask()).save(root / "TestDataset/SetA/masks/a.jpg", quality=60)
    with pytest.raises(DataError) as err:
        data.build_manifest(root, ["SetA"])
    message = str(err.value)
    assert "2 problem(s)" in message
    assert re.search(r"TrainDataset/mask/a\.png: not a binary mask", message)
    assert re.search(r"SetA/masks/b\.png: not a binary mask", message)
    assert "a.jpg" not in message


def test_missing_test_set_empty_folders(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    for p in (root / "TrainDataset/image").iterdir():
        p.unlink()
    for p in (root / "TrainDataset/mask").iterdir():
        p.unlink()
    (root / "TrainDataset/mask/.DS_Store").write_bytes(b"\0")
    for p in (root / "TestDataset/SetA/masks").iterdir():
        p.unlink()
    with pytest.raises(DataError) as err:
        data.build_manifest(root, ["SetA", "Missing Set"])
    message = str(err.value)
    assert re.search(r"TrainDataset/image: no images found", message)
    assert re.search(r"TrainDataset/mask: no images found", message)
    assert re.search(r"SetA/masks: no images found", message)
    assert re.search(r"TestDataset/Missing Set: test set folder 'Missing Set' missing", message)
    with pytest.raises(DataError, match="nowhere"):
        data.build_manifest(tmp_path / "nowhere", ["SetA"])


# --------------------------------------------------------------------------------------------- odd inputs


def test_odd_but_valid_inputs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _tree(tmp_path, stems=("plain",))
    image_dir, mask_dir = root / "TrainDataset/image", root / "TrainDataset/mask"
    rgb = _rgb()
    Image.fromarray(rgb[..., 0]).save(image_dir / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])).save(image_dir / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(image_dir / "palette.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(image_dir / "deep16.png")
    Image.fromarray(rgb).save(image_dir / "with space.png")
    nfc = unicodedata.normalize("NFC", "pólipo_é")
    Image.fromarray(rgb).save(image_dir / f"{nfc}.jpg", quality=90)
    for stem in ("grey", "rgba", "palette", "with space"):
        Image.fromarray(_mask()).save(mask_dir / f"{stem}.png")
    Image.fromarray(_mask()).save(mask_dir / "deep16.tif")
    Image.fromarray(_mask()).save(mask_dir / f"{unicodedata.normalize('NFD', nfc)}.bmp")  # macOS-style name
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(root / "TestDataset/SetA/masks/plain.png")  # no foreground
    for stray in (".DS_Store", "Thumbs.db", "notes.txt", "._plain.png"):
        (image_dir / stray).write_bytes(b"junk")
    (mask_dir / "subfolder").mkdir()

    with caplog.at_level(logging.INFO, logger="hardgen.data.manifest"):
        df = data.build_manifest(root, ["SetA"])
    train = df[df["split"] == "train"].set_index("image")
    assert len(train) == 7
    assert train["id"].is_unique and train["id"].str.fullmatch(r"[A-Za-z0-9_-]+").all()
    assert train.loc[str(image_dir / "with space.png"), "id"].startswith("train-with-space-")
    assert (train[["width", "height"]] == [50, 40]).all().all()
    assert train["fg_fraction"].gt(0.1).all()
    assert df.loc[df["id"] == "SetA-plain", "fg_fraction"].item() == 0.0
    log = caplog.text
    for stray in (".DS_Store", "Thumbs.db", "notes.txt", "._plain.png", "subfolder"):
        assert stray in log
    assert "no foreground" in log and "SetA/masks/plain.png" in log


def test_slug_is_safe_and_unique() -> None:
    stems = ["a b", "a-b", "a.b", "a_b", "ä b", "a  b", "", "..."]
    slugs = [data.slug(s) for s in stems]
    assert len(set(slugs)) == len(stems)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", s) for s in slugs)
    assert data.slug("a-b") == "a-b" and data.slug("case_12") == "case_12"
    assert data.slug("a b") == data.slug("a b")  # stable


# ------------------------------------------------------------------ data.train_subset
def test_nested_subsets_are_nested_seeded_and_independent_of_input_order() -> None:
    ids = [f"train-{i:03d}" for i in range(50)]
    subsets = data.nested_subsets(ids, [5, 20, None], seed=3)
    assert sorted(subsets) == [5, 20, 50]
    assert set(subsets[5]) < set(subsets[20]) < set(subsets[50]) and subsets[50] == sorted(ids)
    assert all(subsets[n] == sorted(subsets[n]) and len(subsets[n]) == n for n in subsets)
    assert data.nested_subsets(list(reversed(ids)), [5, 20], seed=3) == {5: subsets[5], 20: subsets[20]}
    assert data.nested_subsets(ids, [20], seed=4)[20] != subsets[20]  # the seed decides
    with pytest.raises(ValueError, match="data.train_subset: 51 training images asked for, only 50"):
        data.nested_subsets(ids, [51], seed=3)
    with pytest.raises(ValueError, match="data.train_subset"):
        data.nested_subsets(ids, [0], seed=3)


def test_train_subset_keeps_n_training_rows_all_test_rows_and_records_the_choice(
        demo_manifest: pd.DataFrame, tmp_path: Path) -> None:
    from hardgen.data.conditioning import make_conditions

    n_train = int((demo_manifest["split"] == "train").sum())
    reduced, record = data.train_subset(demo_manifest, 5, seed=1)
    assert (reduced["split"] == "train").sum() == 5
    assert (reduced["split"] != "train").sum() == (demo_manifest["split"] != "train").sum()
    assert len(record) == n_train and record["selected"].sum() == 5
    assert set(record.loc[record["selected"], "id"]) == set(reduced.loc[reduced["split"] == "train", "id"])
    assert set(record.loc[record["rank"] < 5, "id"]) == set(record.loc[record["selected"], "id"])  # rank < n
    assert (record["seed"] == 1).all() and (record["size"] == 5).all()
    bigger, _ = data.train_subset(demo_manifest, 8, seed=1)
    assert set(reduced["id"]) <= set(bigger["id"])  # nested
    everything, full_record = data.train_subset(demo_manifest, None, seed=1)
    assert len(everything) == len(demo_manifest) and full_record["selected"].all()
    with pytest.raises(ValueError, match="data.train_subset"):
        data.train_subset(demo_manifest, n_train + 1, seed=1)
    # downstream: the conditions are made from the subset's masks only
    table = make_conditions(reduced, tmp_path / "conditions", kind="mask", layouts_per_mask=0, size=32, seed=0)
    assert sorted(table["source_id"]) == sorted(reduced.loc[reduced["split"] == "train", "id"])
