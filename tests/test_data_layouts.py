"""Dataset layouts beyond PraNet's (folders, table), masks in any two values or label maps, 16-bit grayscale images,
NIfTI volumes sliced with an intensity window, and the ultrasound-like demo."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hardgen.core import io
from hardgen.core.io import DataError
from hardgen.data import manifest as data
from hardgen.data.demo import DEMO_TABLE, make_ultrasound_demo
from hardgen.data.masks import decode_mask
from hardgen.data.volumes import VolumeSlicing


def _lesion_mask(h: int = 40, w: int = 50, box=(10, 30, 12, 34)) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[box[0]:box[1], box[2]:box[3]] = True
    return mask


def _write_pair(root: Path, split: str, stem: str, image: np.ndarray, mask_values: np.ndarray) -> None:
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / split / "images" / f"{stem}.png")
    Image.fromarray(mask_values).save(root / split / "masks" / f"{stem}.png")


def _gray16(seed: int, h: int = 40, w: int = 50) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (h, w), dtype=np.uint16)


def _folders_tree(root: Path) -> Path:
    """Custom splits (two training splits, one test set), 16-bit grayscale images, masks stored as 0/1."""
    for split, n in (("site-a", 2), ("site-b", 1), ("held out", 2)):
        for i in range(n):
            _write_pair(root, split, f"case{i}", _gray16(len(split) * 10 + i), _lesion_mask().astype(np.uint8))
    return root


# ------------------------------------------------------------------------------------------------ io
def test_to_uint8_window_and_16bit_scaling() -> None:
    hu = np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]])
    assert io.to_uint8(hu, window=(-160, 240)).tolist() == [[0, 0, 128, 255, 255]]  # 200/400 x 255 = 127.5 -> 128
    assert io.to_uint8(np.array([[0, 257, 65535]], np.uint16)).tolist() == [[0, 1, 255]]
    with pytest.raises(ValueError, match="low < high"):
        io.to_uint8(hu, window=(240, -160))
    rgb = io.gray_to_rgb(np.array([[1, 2]], np.uint8))
    assert rgb.shape == (1, 2, 3) and (rgb[..., 0] == rgb[..., 2]).all()


def test_read_rgb_of_a_16bit_grayscale_png_is_three_equal_channels(tmp_path: Path) -> None:
    gray = _gray16(0)
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgb = io.read_rgb(tmp_path / "g.png")
    assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], io.to_uint8(gray)) and np.array_equal(rgb[..., 1], rgb[..., 2])


# ----------------------------------------------------------------------------------------- mask decoding
def test_decode_mask_two_values_label_maps_and_errors() -> None:
    lesion = _lesion_mask()
    assert np.array_equal(decode_mask(lesion.astype(np.uint8), None, "m"), lesion)  # 0/1
    assert np.array_equal(decode_mask(np.where(lesion, 7, 3).astype(np.uint16), None, "m"), lesion)  # 3/7
    assert not decode_mask(np.zeros((4, 4), np.uint8), None, "m").any()
    assert decode_mask(np.full((4, 4), 255, np.uint8), None, "m").all()
    labels = np.zeros((40, 50), np.uint8)
    labels[lesion] = 1
    labels[:5, :5] = 2
    with pytest.raises(DataError, match=r"seg_07\.png.*3 distinct values.*data\.foreground"):
        decode_mask(labels, None, "seg_07.png")
    assert np.array_equal(decode_mask(labels, [1], "m"), lesion)
    assert decode_mask(labels, [1, 2], "m").sum() == lesion.sum() + 25
    # a 0/255 mask with JPEG-like noise along its edge is still binary (thresholded at 127)
    noisy = (lesion * 255).astype(np.uint8)
    noisy[10, 12:34] = 200
    assert np.array_equal(decode_mask(noisy, None, "m"), lesion)


# --------------------------------------------------------------------------------------------- layouts
def test_folders_layout_custom_splits_16bit_images_and_01_masks(tmp_path: Path) -> None:
    root = _folders_tree(tmp_path / "ds")
    frame = data.build_manifest(root, ["held out"], layout="folders", train_splits=["site-a", "site-b"],
                                converted=tmp_path / "conv", expected_sizes={"train": 3, "held out": 2})
    assert frame["split"].value_counts().to_dict() == {"train": 3, "held out": 2}
    held_out = data.slug("held out")
    assert sorted(frame["id"]) == sorted(["site-a-case0", "site-a-case1", "site-b-case0", f"{held_out}-case0",
                                          f"{held_out}-case1"])  # ids keep the source split
    assert frame["fg_fraction"].tolist() == pytest.approx([_lesion_mask().mean()] * 5)
    row = frame.iloc[0]
    stored = np.asarray(Image.open(row["image"]))
    source = np.asarray(Image.open(root / "site-a" / "images" / "case0.png"))
    assert Path(row["image"]).parent == tmp_path / "conv" / "images" and stored.dtype == np.uint8
    assert np.array_equal(stored, io.to_uint8(source))  # 16-bit -> 8-bit in one place
    assert np.array_equal(io.read_mask(row["mask"]), _lesion_mask())  # 0/1 stored -> 0/255 copy
    with pytest.raises(DataError, match=r"expected 4 pairs, found 3"):
        data.build_manifest(root, ["held out"], layout="folders", train_splits=["site-a", "site-b"],
                            converted=tmp_path / "c2", expected_sizes={"train": 4})
    with pytest.raises(DataError, match=r"site-c.*missing"):
        data.build_manifest(root, ["held out"], layout="folders", train_splits=["site-a", "site-c"],
                            converted=tmp_path / "c3")


def test_folders_layout_window_on_16bit_images(tmp_path: Path) -> None:
    root = _folders_tree(tmp_path / "ds")
    frame = data.build_manifest(root, ["held out"], layout="folders", train_splits=["site-a", "site-b"],
                                converted=tmp_path / "conv", window=[0, 4095])
    source = np.asarray(Image.open(root / "site-a" / "images" / "case0.png"))
    assert np.array_equal(np.asarray(Image.open(frame.iloc[0]["image"])), io.to_uint8(source, (0, 4095)))


def test_label_map_masks_need_foreground(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    labels = np.zeros((40, 50), np.uint8)
    labels[_lesion_mask()] = 2
    labels[:4, :4] = 1
    rgb = np.full((40, 50, 3), 90, np.uint8)
    _write_pair(root, "train", "a", rgb, labels)
    _write_pair(root, "test", "b", rgb, labels)
    with pytest.raises(DataError, match=r"train/masks/a\.png: not a binary mask.*data\.foreground"):
        data.build_manifest(root, ["test"], layout="folders", converted=tmp_path / "conv")
    frame = data.build_manifest(root, ["test"], layout="folders", foreground=[2], converted=tmp_path / "conv")
    assert np.array_equal(io.read_mask(frame.iloc[0]["mask"]), _lesion_mask())
    assert frame.iloc[0]["image"] == str((root / "train" / "images" / "a.png").resolve())  # 8-bit RGB: not copied
    with pytest.raises(DataError, match="no folder for converted pairs"):
        data.build_manifest(root, ["test"], layout="folders", foreground=[2])


def test_table_layout_matches_folders_and_rejects_leaks(tmp_path: Path) -> None:
    root = _folders_tree(tmp_path / "ds")
    rows = [{"image": f"{split}/images/{p.name}", "mask": f"{split}/masks/{p.name}", "split": split}
            for split in ("site-a", "site-b", "held out") for p in sorted((root / split / "images").iterdir())]
    rows.append({"image": "site-a/images/case0.png", "mask": "site-a/masks/case0.png", "split": "unused"})
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)
    kwargs = dict(layout="table", train_splits=["site-a", "site-b"])
    by_table = data.build_manifest(root / "pairs.csv", ["held out"], converted=tmp_path / "c1", **kwargs)
    by_folders = data.build_manifest(root, ["held out"], converted=tmp_path / "c2", layout="folders",
                                     train_splits=["site-a", "site-b"])
    columns = ["id", "split", "width", "height", "fg_fraction"]
    pd.testing.assert_frame_equal(by_table[columns], by_folders[columns])  # the "unused" row is ignored

    leaked = rows[:-1] + [{"image": "site-a/images/case0.png", "mask": "site-a/masks/case0.png", "split": "held out"}]
    pd.DataFrame(leaked).to_csv(root / "leak.csv", index=False)
    with pytest.raises(DataError, match=r"case0\.png: listed in splits 'site-a' and 'held out'"):
        data.build_manifest(root / "leak.csv", ["held out"], converted=tmp_path / "c3", **kwargs)
    pd.DataFrame(rows).drop(columns="split").to_csv(root / "bad.csv", index=False)
    lacks = r"bad\.csv: dataset table \(data\.root, layout table\) lacks columns \['split'\]"
    with pytest.raises(DataError, match=lacks):
        data.build_manifest(root / "bad.csv", ["held out"], converted=tmp_path / "c4", **kwargs)
    pd.DataFrame([{"image": "nowhere.png", "mask": "site-a/masks/case0.png", "split": "site-a"}]).to_csv(
        root / "missing.csv", index=False)
    with pytest.raises(DataError, match=r"line 2: image .*nowhere\.png not found"):
        data.build_manifest(root / "missing.csv", ["held out"], converted=tmp_path / "c5", **kwargs)


def test_expected_sizes_null_means_no_expectation(tmp_path: Path) -> None:
    root = _folders_tree(tmp_path / "ds")
    frame = data.build_manifest(root, ["held out"], layout="folders", train_splits=["site-a", "site-b"],
                                converted=tmp_path / "c", expected_sizes={"train": 3, "Kvasir": None})
    assert len(frame) == 5


# ------------------------------------------------------------------------------------------------ NIfTI
def _volume(shape=(24, 20, 10), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume in Hounsfield units (air -1000, soft tissue ~40, a bright lesion 200) and its label map (lesion
    label 1, another organ label 2) on slices 3..6 of axis 2."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0, np.float32)
    hu[4:20, 3:17, :] = 40.0 + rng.normal(0, 5, (16, 14, shape[2]))
    labels = np.zeros(shape, np.uint8)
    labels[8:14, 6:12, 3:7] = 1
    labels[16:19, 14:16, :] = 2  # the other organ: every slice, not foreground
    hu[labels == 1] = 200.0
    return hu, labels


def _save_nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine=np.eye(4)), str(path))


def test_nifti_volumes_are_sliced_windowed_and_stay_in_their_split(tmp_path: Path) -> None:
    root = tmp_path / "ct"
    volumes = {("train", "vol1"): 1, ("train", "vol2"): 2, ("test", "vol3"): 3}
    for (split, stem), seed in volumes.items():
        hu, labels = _volume(seed=seed)
        _save_nifti(root / split / "images" / f"{stem}.nii.gz", hu)
        _save_nifti(root / split / "masks" / f"{stem}.nii.gz", labels)
    kwargs = dict(layout="folders", foreground=[1], window=[-160, 240], converted=tmp_path / "conv")
    frame = data.build_manifest(root, ["test"], volume=VolumeSlicing(axis=2, keep_empty=0.5), seed=0, **kwargs)
    # 4 slices with the lesion + half of the 6 without, per volume
    assert len(frame) == 3 * (4 + 3)
    volume_of = frame["id"].str.rsplit("-s", n=1).str[0]
    assert frame.groupby(volume_of)["split"].nunique().eq(1).all()  # no volume crosses splits
    assert set(frame.loc[volume_of == "test-vol3", "split"]) == {"test"}
    assert set(frame.loc[volume_of != "test-vol3", "split"]) == {"train"}
    assert (frame["fg_fraction"] > 0).sum() == 3 * 4

    hu, labels = _volume(seed=1)
    row = frame.set_index("id").loc["train-vol1-s0004"]
    image, mask = np.asarray(Image.open(row["image"])), io.read_mask(row["mask"])
    assert image.shape == (20, 24) and (row["width"], row["height"]) == (24, 20)  # slice k of axis 2, transposed
    assert np.array_equal(mask, (labels[:, :, 4] == 1).T)  # label 2 is background
    assert np.array_equal(image, io.to_uint8(hu[:, :, 4].T, (-160, 240)))
    assert image[mask].tolist() == [230] * int(mask.sum())  # 200 HU: (200 + 160) / 400 x 255 = 229.5 -> 230
    assert image[0, 0] == 0  # air below the window

    # the same seed keeps the same empty slices; no window is an error naming the volume
    again = data.build_manifest(root, ["test"], volume=VolumeSlicing(axis=2, keep_empty=0.5), seed=0,
                                **{**kwargs, "converted": tmp_path / "conv2"})
    assert again["id"].tolist() == frame["id"].tolist()
    assert len(data.build_manifest(root, ["test"], volume=VolumeSlicing(axis=0), seed=0,
                                   **{**kwargs, "converted": tmp_path / "conv3"})) == 3 * 6  # axis 0: rows 8..13
    with pytest.raises(DataError, match=r"vol1\.nii\.gz: a NIfTI volume needs data\.window"):
        data.build_manifest(root, ["test"], **{**kwargs, "window": None})


def test_a_volume_listed_in_two_splits_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "ct"
    hu, labels = _volume()
    _save_nifti(root / "vols" / "a.nii.gz", hu)
    _save_nifti(root / "vols" / "a_seg.nii.gz", labels)
    pd.DataFrame([{"image": "vols/a.nii.gz", "mask": "vols/a_seg.nii.gz", "split": s} for s in ("train", "test")]
                 ).to_csv(root / "pairs.csv", index=False)
    with pytest.raises(DataError, match=r"a\.nii\.gz: listed in splits 'train' and 'test'"):
        data.build_manifest(root / "pairs.csv", ["test"], layout="table", foreground=[1], window=[-160, 240],
                            converted=tmp_path / "conv")


# ------------------------------------------------------------------------------------------- the demo
def test_ultrasound_demo_is_deterministic_16bit_and_in_both_layouts(tmp_path: Path) -> None:
    splits = {"scans": 3, "clinic-B": 2}
    make_ultrasound_demo(tmp_path / "a", splits, 48, 64, seed=0)
    make_ultrasound_demo(tmp_path / "b", splits, 48, 64, seed=0)
    first = tmp_path / "a" / "scans" / "images" / "scans_000.png"
    assert first.read_bytes() == (tmp_path / "b" / "scans" / "images" / "scans_000.png").read_bytes()
    image = Image.open(first)
    assert image.mode == "I;16"
    pixels = np.asarray(image)
    mask = np.asarray(Image.open(tmp_path / "a" / "scans" / "masks" / "scans_000.png"))
    assert set(np.unique(mask).tolist()) == {0, 1}
    lesion, tissue = pixels[mask == 1], pixels[(mask == 0) & (pixels > 0)]
    assert lesion.mean() < 0.7 * tissue.mean()  # a hypoechoic (dark) lesion inside the bright speckled fan
    assert (pixels == 0).mean() > 0.1  # outside the fan-shaped field of view
    table = pd.read_csv(tmp_path / "a" / DEMO_TABLE)
    assert table["split"].value_counts().to_dict() == splits
    assert (tmp_path / "a" / table["image"].iloc[0]).is_file()
    with pytest.raises(FileExistsError):
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "x.png").write_bytes(b"x")
        make_ultrasound_demo(tmp_path / "real", splits, 48, 64, seed=0)


# ---------------------------------------------------------------------------------------------- config
def test_dataset_overlays_validate_and_layout_keys_are_cross_checked() -> None:
    import copy

    from hardgen.config.validation import ConfigError, load_config, validate_config

    repo = Path(__file__).resolve().parents[1]
    base = repo / "config" / "config.yaml"
    ultrasound = load_config([base, repo / "config" / "demo-ultrasound.yaml"])
    validate_config(ultrasound)
    assert ultrasound["evaluate"]["protocol"] == "binary" and ultrasound["data"]["layout"] == "folders"
    isic = load_config([base, repo / "config" / "sd15-polyp.yaml", repo / "config" / "isic2016.yaml"])
    validate_config(isic)
    assert {k: v for k, v in isic["data"]["expected_sizes"].items() if v is not None} == {
        "train": 900, "ISBI2016_ISIC_Part1_Test": 379}
    assert isic["evaluate"]["protocol"] == "binary" and "dermoscopy" in isic["model"]["prompt"]
    demo = load_config([base])
    validate_config(demo)
    assert demo["evaluate"]["protocol"] == "polyp_toolbox" and demo["data"]["layout"] == "pranet"

    cases = [
        ({"layout": "folders"}, "data.layout"),  # the polyp demo is written in the pranet layout
        ({"train_splits": ["a"]}, "data.train_splits"),  # pranet has one training split
        ({"expected_sizes": {"Kvasirr": 100}}, "data.expected_sizes"),
        ({"window": [5, 1]}, "data.window"),
    ]
    for change, key in cases:
        config = copy.deepcopy(demo)
        config["data"].update(change)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate_config(config)
    clash = copy.deepcopy(ultrasound)
    clash["data"]["testsets"] = ["scans"]
    with pytest.raises(ConfigError, match=r"data\.testsets"):
        validate_config(clash)
