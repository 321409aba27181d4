"""Tests for hardgen.data.conditioning: condition images, new layouts and the conditions table."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from hardgen.core.io import (
    DataError,
    fit_square,
    read_gray,
    read_mask,
    read_rgb,
    write_mask,
)
from hardgen.data import conditioning as cond
from hardgen.data.manifest import write_manifest

SIZE = 48


def _ellipse_mask(h: int, w: int, centre: tuple[int, int], axes: tuple[int, int], angle: float = 0) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1)
    return mask.astype(bool)


@pytest.fixture()
def manifest(tmp_path: Path) -> pd.DataFrame:
    """Four training masks of different sizes/shapes (one empty) plus a test row that must be ignored."""
    masks = {
        "train-big": _ellipse_mask(90, 120, (60, 45), (40, 25), 20),
        "train-small": _ellipse_mask(80, 80, (20, 60), (6, 4)),
        "train-two": _ellipse_mask(70, 100, (25, 30), (12, 9)) | _ellipse_mask(70, 100, (75, 45), (10, 14)),
        "train-empty": np.zeros((64, 64), bool),
        "Kvasir-1": _ellipse_mask(64, 64, (32, 32), (10, 10)),
    }
    rows = []
    for sample_id, mask in masks.items():
        path = tmp_path / "src" / f"{sample_id}.png"
        write_mask(path, mask)
        rows.append({"id": sample_id, "split": "Kvasir" if sample_id.startswith("Kvasir") else "train",
                     "image": str(path), "mask": str(path), "width": mask.shape[1], "height": mask.shape[0],
                     "fg_fraction": float(mask.mean())})
    return pd.DataFrame(rows)


def _boundary(mask: np.ndarray) -> np.ndarray:
    u8 = mask.astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    return cv2.dilate(u8, kernel) != cv2.erode(u8, kernel)


# --------------------------------------------------------------------------------------------- mask_to_condition


def test_canny_condition_is_binary_three_channel_on_boundary() -> None:
    mask = _ellipse_mask(60, 80, (40, 30), (20, 12), 30)
    out = cond.mask_to_condition(mask, "canny")
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 255}
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    edges = out[..., 0] > 0
    assert not (edges & ~_boundary(mask)).any()  # every edge pixel sits on the mask boundary
    contour = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0][0]
    assert edges.sum() >= 0.8 * len(contour)  # and the boundary is traced nearly all the way round
    assert not cond.mask_to_condition(np.zeros((10, 10), bool), "canny").any()


def test_mask_condition_and_unknown_kind() -> None:
    mask = _ellipse_mask(30, 40, (20, 15), (8, 5))
    out = cond.mask_to_condition(mask, "mask")
    assert out.shape == (30, 40, 3)
    assert (out == (mask.astype(np.uint8) * 255)[..., None]).all()
    with pytest.raises(ValueError, match="condition.type"):
        cond.mask_to_condition(mask, "depth")


# --------------------------------------------------------------------------------------------- layouts


def test_make_layout_differs_keeps_foreground_and_is_deterministic() -> None:
    source = _ellipse_mask(SIZE, SIZE, (18, 26), (10, 6), 15)
    layouts = [cond.make_layout(source, f"layout-x-{k}", seed=0) for k in range(6)]
    for layout in layouts:
        assert layout.shape == source.shape and layout.dtype == bool
        assert not np.array_equal(layout, source)
        assert cond.MIN_LAYOUT_AREA_RATIO * source.sum() <= layout.sum() <= cond.MAX_LAYOUT_FRACTION * layout.size
    assert len({layout.tobytes() for layout in layouts}) == len(layouts)  # variety across k
    assert np.array_equal(layouts[0], cond.make_layout(source, "layout-x-0", seed=0))
    assert not np.array_equal(layouts[0], cond.make_layout(source, "layout-x-0", seed=1))
    with pytest.raises(ValueError, match="empty"):
        cond.make_layout(np.zeros((8, 8), bool), "layout-empty-0", seed=0)


# --------------------------------------------------------------------------------------------- make_conditions


def test_make_conditions_tree_table_and_content(manifest: pd.DataFrame, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "conditions"
    with caplog.at_level(logging.INFO, logger="hardgen.data.conditioning"):
        table = cond.make_conditions(manifest, out, "canny", layouts_per_mask=2, size=SIZE, seed=0)
    assert list(table.columns) == ["sample_id", "source_id", "kind", "condition", "mask"]
    # 4 real rows + 2 layouts for each of the 3 non-empty masks; the test row is ignored.
    assert table["kind"].value_counts().to_dict() == {"real": 4, "layout": 6}
    assert set(table["source_id"]) == {"train-big", "train-small", "train-two", "train-empty"}
    assert "layout-train-big-1" in set(table["sample_id"]) and "real-train-empty" in set(table["sample_id"])
    assert (table["source_id"] == "train-empty").sum() == 1  # empty mask: only its real row
    assert "train-empty" in caplog.text and "no foreground" in caplog.text
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{s}.png" for s in table["sample_id"])
    assert len(list((out / "masks").iterdir())) == len(table)

    source_masks = dict(zip(manifest["id"], manifest["mask"]))
    for _, row in table.iterrows():
        assert Path(row["condition"]).is_absolute() and Path(row["mask"]).is_file()
        mask_grey = read_gray(row["mask"])
        assert mask_grey.shape == (SIZE, SIZE) and set(np.unique(mask_grey)) <= {0, 255}
        condition = read_rgb(row["condition"])
        expected = cond.mask_to_condition(mask_grey > 127, "canny")
        assert np.array_equal(condition, expected)
        # the training image's transform: short side to SIZE, centre crop (aspect ratio kept), nearest
        resized_source = fit_square(read_mask(source_masks[row["source_id"]]), SIZE, is_mask=True)
        if row["kind"] == "real":
            assert np.array_equal(mask_grey > 127, resized_source)
        else:
            layout = mask_grey > 127
            assert not np.array_equal(layout, resized_source)
            assert layout.sum() >= cond.MIN_LAYOUT_AREA_RATIO * resized_source.sum()
            assert layout.mean() <= cond.MAX_LAYOUT_FRACTION


def test_make_conditions_is_deterministic_and_accepts_a_manifest_path(manifest: pd.DataFrame,
                                                                      tmp_path: Path) -> None:
    first = cond.make_conditions(manifest, tmp_path / "a", "mask", 2, SIZE, seed=3)
    write_manifest(manifest, tmp_path / "manifest.csv")
    second = cond.make_conditions(tmp_path / "manifest.csv", tmp_path / "b", "mask", 2, SIZE, seed=3)
    assert first["sample_id"].tolist() == second["sample_id"].tolist()
    for a, b in zip(first["mask"], second["mask"]):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    for a, b in zip(first["condition"], second["condition"]):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    # kind=mask: the condition is the mask itself, 3 channels
    assert np.array_equal(read_rgb(first["condition"].iloc[1])[..., 0], read_gray(first["mask"].iloc[1]))
    other_seed = cond.make_conditions(manifest, tmp_path / "c", "mask", 2, SIZE, seed=4)
    layouts = first["kind"] == "layout"
    assert any(Path(a).read_bytes() != Path(b).read_bytes()
               for a, b in zip(first.loc[layouts, "mask"], other_seed.loc[layouts, "mask"]))


def test_conditions_table_roundtrip_and_bad_arguments(manifest: pd.DataFrame, tmp_path: Path) -> None:
    table = cond.make_conditions(manifest, tmp_path / "out", "canny", 0, SIZE, seed=0)
    assert (table["kind"] == "real").all() and len(table) == 4
    cond.write_conditions_table(table, tmp_path / "conditions.csv")
    pd.testing.assert_frame_equal(cond.load_conditions_table(tmp_path / "conditions.csv"), table)
    with pytest.raises(DataError, match=r"nope\.csv: conditions table not found"):
        cond.load_conditions_table(tmp_path / "nope.csv")
    table.drop(columns="kind").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad\.csv: conditions table lacks columns \['kind'\]"):
        cond.load_conditions_table(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="condition.type"):
        cond.make_conditions(manifest, tmp_path / "x", "edges", 1, SIZE, seed=0)
    with pytest.raises(ValueError, match="condition.layouts_per_mask"):
        cond.make_conditions(manifest, tmp_path / "x", "canny", -1, SIZE, seed=0)
    with pytest.raises(DataError, match="no 'train' rows"):
        cond.make_conditions(manifest[manifest["split"] != "train"], tmp_path / "x", "canny", 1, SIZE, seed=0)


# ------------------------------------------------------------------------------ generation.condition_fit squash
def test_squash_resizes_the_whole_mask_where_crop_cuts_it() -> None:
    from hardgen.core.io import squash_square

    mask = np.zeros((40, 80), dtype=bool)
    mask[10:30, 2:12] = True  # near the left edge: outside the centre crop of a wide image
    squashed, cropped = squash_square(mask, 20, is_mask=True), fit_square(mask, 20, is_mask=True)
    assert squashed.shape == cropped.shape == (20, 20) and squashed.dtype == bool
    assert squashed.any() and not cropped.any()  # the crop lost the polyp, the squash keeps it (narrowed)
    # x 2..12 of 80 -> 0.5..3 of 20, y 10..30 of 40 -> 5..15 of 20
    assert squashed[6:14, 0:3].all() and not squashed[:, 4:].any() and not squashed[:4].any()
    image = np.arange(40 * 80 * 3, dtype=np.uint8).reshape(40, 80, 3)
    assert squash_square(image, 16).shape == (16, 16, 3)


def test_generation_conditions_squash_the_real_masks_and_keep_ids(manifest: pd.DataFrame, tmp_path: Path) -> None:
    from hardgen.core.io import squash_square

    table = cond.make_conditions(manifest, tmp_path / "train", kind="mask", layouts_per_mask=1, size=32, seed=0)
    squash = cond.generation_conditions(table, manifest, tmp_path / "squash", fit="squash", kind="mask", size=32)
    assert list(squash["sample_id"]) == list(table["sample_id"])
    real = squash[squash["kind"] == "real"]
    by_id = dict(zip(manifest["id"], manifest["mask"]))
    changed = 0
    for row in real.itertuples():
        expected = squash_square(read_mask(by_id[row.source_id]), 32, is_mask=True)
        np.testing.assert_array_equal(read_mask(row.mask), expected)
        np.testing.assert_array_equal(read_gray(row.condition) > 127, expected)  # condition type mask
        assert str(tmp_path / "squash") in row.mask
        train_mask = read_mask(table.set_index("sample_id").loc[row.sample_id, "mask"])
        changed += int(not np.array_equal(train_mask, expected))
    assert changed > 0  # non-square masks: squash differs from the training crop
    layouts = squash[squash["kind"] == "layout"]
    pd.testing.assert_frame_equal(layouts.reset_index(drop=True),
                                  table[table["kind"] == "layout"].reset_index(drop=True))
    crop = cond.generation_conditions(table, manifest, tmp_path / "crop", fit="crop", kind="mask", size=32)
    for row in crop[crop["kind"] == "real"].itertuples():  # crop reproduces the training conditions
        np.testing.assert_array_equal(read_mask(row.mask),
                                      read_mask(table.set_index("sample_id").loc[row.sample_id, "mask"]))
    with pytest.raises(ValueError, match="generation.condition_fit"):
        cond.generation_conditions(table, manifest, tmp_path / "x", fit="stretch", kind="mask", size=32)
