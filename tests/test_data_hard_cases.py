"""The demo's hard cases of real data: lesions with the colour of their background (data.demo.lesion_colour:
matched) and lesion-free test frames (data.demo.empty_test_fraction), the polyp demo's table, and the test-set cap
(data.test_subset) that `hardgen rehearse` uses."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from hardgen.config.validation import ConfigError, load_config, validate_config
from hardgen.core.io import fit_square, gray_to_rgb, read_mask, to_uint8
from hardgen.data import manifest as data
from hardgen.data.demo import (
    DEMO_MARKER,
    DEMO_STYLES,
    DEMO_TABLE,
    LESION_COLOURS,
    _render_demo_sample,
    _render_ultrasound_sample,
    lesion_free,
    make_demo_dataset,
    make_ultrasound_demo,
)
from hardgen.scoring.mask_following import red_chromaticity_margin, shuffled_margin

REPO = Path(__file__).resolve().parents[1]
SIZE = 64  # the demo's model.resolution: mask following measures the real crops at it (hardgen.core.io.fit_square)


def _polyp_set(lesion_colour: str, n: int = 24, seed: int = 0):
    """n training-like frames (the demo's Kvasir / ClinicDB styles), full size and at SIZE."""
    full, crops = [], []
    for i in range(n):
        style = DEMO_STYLES["Kvasir" if i % 2 else "CVC-ClinicDB"]
        image, mask = _render_demo_sample(np.random.default_rng([seed, 1, i]), style, 72, 112, lesion_colour)
        full.append((image, mask))
        crops.append((fit_square(image, SIZE), fit_square(mask, SIZE, is_mask=True)))
    return full, crops


def _ultrasound_set(lesion_colour: str, n: int = 24, seed: int = 0):
    crops = []
    for i in range(n):
        image, mask = _render_ultrasound_sample(np.random.default_rng([seed, 5, 7, i]), 72, 112, lesion_colour)
        crops.append((fit_square(gray_to_rgb(to_uint8(image, None)), SIZE), fit_square(mask, SIZE, is_mask=True)))
    return crops


def _gap(pairs, cue: str = "red") -> tuple[float, float]:
    """(inside-minus-outside margin against the own masks, own minus a shuffled pairing): mask_following's real row."""
    images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    own = red_chromaticity_margin(images, masks, cue)
    return own, own - shuffled_margin(images, masks, seed=0, cue=cue)


@pytest.mark.parametrize("seed", [0, 1])
def test_matched_polyps_have_the_mucosas_red_chromaticity(seed: int) -> None:
    """matched: the real images' red-chromaticity gap is ~0 (the distinct demo's is ~0.04 at 64 px) and the
    own-vs-shuffled reference that mask following divides by is not positive: real colonoscopy's failure case."""
    _, distinct = _polyp_set("distinct", seed=seed)
    _, matched = _polyp_set("matched", seed=seed)
    own_distinct, ref_distinct = _gap(distinct)
    own_matched, ref_matched = _gap(matched)
    assert own_distinct > 0.03 and ref_distinct > 0.015
    assert abs(own_matched) < 0.15 * own_distinct
    assert ref_matched <= 0.0  # the red cue does not mark these masks at all


def test_matched_polyps_keep_the_masks_and_the_frame_and_show_by_texture() -> None:
    distinct, _ = _polyp_set("distinct", n=12)
    matched, _ = _polyp_set("matched", n=12)
    detail = {"distinct": [], "matched": [], "around": []}  # median |Laplacian| of the luma per image
    for (image_d, mask_d), (image_m, mask_m) in zip(distinct, matched, strict=True):
        assert np.array_equal(mask_d, mask_m)  # the same shapes: only the lesion's look changes
        far = ~cv2.dilate(mask_d.astype(np.uint8), np.ones((11, 11), np.uint8)).astype(bool)
        assert np.array_equal(image_d[far], image_m[far])  # the mucosa, vessels, corners, noise: the same frame
        inner = cv2.erode(mask_d.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        for name, image in (("distinct", image_d), ("matched", image_m)):
            luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
            laplacian = np.abs(cv2.Laplacian(luma, cv2.CV_32F))
            detail[name].append(np.median(laplacian[inner]))
            if name == "matched":  # the mucosa around the lesion, inside the field of view
                ring = cv2.dilate(mask_d.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool) & far
                detail["around"].append(np.median(laplacian[ring & (luma > 40)]))
    mean = {k: float(np.mean(v)) for k, v in detail.items()}
    # visible without colour: the matched lesion's granular surface is finer-textured than the mucosa around it
    # (measured: 11.3 against 6.3) and than the distinct lesion (7.9)
    assert mean["matched"] > 1.5 * mean["around"] and mean["matched"] > 1.25 * mean["distinct"]


def test_matched_ultrasound_lesions_are_isoechoic() -> None:
    """matched ultrasound: the grey-level reference of mask following (own minus shuffled) is ~0, the distinct
    demo's hypoechoic lesion's is about -0.2; the masks are the same."""
    _, ref_distinct = _gap(_ultrasound_set("distinct"), "luma")
    _, ref_matched = _gap(_ultrasound_set("matched"), "luma")
    assert ref_distinct < -0.15
    assert abs(ref_matched) < 0.1 * abs(ref_distinct)
    for i in range(4):
        masks = [_render_ultrasound_sample(np.random.default_rng([0, 5, 7, i]), 72, 112, c)[1]
                 for c in LESION_COLOURS]
        assert np.array_equal(*masks)


def test_default_renders_are_the_distinct_ones() -> None:
    style = DEMO_STYLES["Kvasir"]
    a = _render_demo_sample(np.random.default_rng([0, 1, 3]), style, 72, 112)
    b = _render_demo_sample(np.random.default_rng([0, 1, 3]), style, 72, 112, "distinct", True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="lesion_colour"):
        _render_demo_sample(np.random.default_rng(0), style, 72, 112, "red")


def test_lesion_free_frames_are_exact_spread_and_stable() -> None:
    assert [lesion_free(i, 0.5) for i in range(6)] == [False, True] * 3
    assert sum(lesion_free(i, 1 / 3) for i in range(9)) == 3
    assert sum(lesion_free(i, 0.34) for i in range(3)) == 1
    assert not any(lesion_free(i, 0.0) for i in range(10))
    for fraction in (0.2, 0.34, 0.75):  # growing the set keeps every frame's status
        assert [lesion_free(i, fraction) for i in range(5)] == [lesion_free(i, fraction) for i in range(9)][:5]
    with pytest.raises(ValueError, match="empty_test_fraction"):
        lesion_free(0, 1.0)


def test_polyp_demo_with_hard_cases_validates_in_the_pranet_and_table_layouts(tmp_path: Path) -> None:
    """Empty test masks are valid data (real test sets publish lesion-free frames); training frames keep a lesion;
    the demo's table lists the same pairs as its folders."""
    testsets = ["site-A", "site-B"]
    root = tmp_path / "demo"
    make_demo_dataset(root, testsets, 4, 4, 48, 64, 0, lesion_colour="matched", empty_test_fraction=0.5)
    by_folders = data.build_manifest(root, testsets)
    by_table = data.build_manifest(root / DEMO_TABLE, testsets, layout="table")
    columns = ["id", "split", "width", "height", "fg_fraction"]
    pd.testing.assert_frame_equal(by_table[columns], by_folders[columns])
    assert list(by_table["mask"]) == list(by_folders["mask"])
    train = by_folders[by_folders["split"] == "train"]
    assert len(train) == 4 and (train["fg_fraction"] > 0).all()
    for name in testsets:
        rows = by_folders[by_folders["split"] == name].sort_values("id")
        empty = [not read_mask(p).any() for p in rows["mask"]]
        assert empty == [lesion_free(int(Path(p).stem) - 1, 0.5) for p in rows["image"]]
        assert sum(empty) == 2 and ((rows["fg_fraction"] == 0) == empty).all()
    marker = json.loads((root / DEMO_MARKER).read_text())
    assert marker["lesion_colour"] == "matched" and marker["empty_test_fraction"] == 0.5
    # the default demo's marker has no such keys (its tree is the earlier one's, plus the table)
    make_demo_dataset(tmp_path / "default", testsets, 2, 2, 48, 64, 0)
    assert "lesion_colour" not in json.loads((tmp_path / "default" / DEMO_MARKER).read_text())


def test_ultrasound_demo_with_hard_cases(tmp_path: Path) -> None:
    root = tmp_path / "us"
    make_ultrasound_demo(root, {"scans": 3, "clinic-B": 4}, 48, 64, 0, lesion_colour="matched",
                              empty_fraction={"clinic-B": 0.5})
    frame = data.build_manifest(root, ["clinic-B"], layout="folders", train_splits=["scans"],
                                converted=tmp_path / "converted")
    assert (frame.loc[frame["split"] == "train", "fg_fraction"] > 0).all()
    assert list(frame.loc[frame["split"] == "clinic-B", "fg_fraction"] == 0) == [False, True, False, True]


def test_cap_test_sets_keeps_at_most_n_per_set_with_an_empty_and_a_lesion_frame() -> None:
    rows = [{"id": f"train-{i}", "split": "train", "fg_fraction": 0.1} for i in range(5)]
    rows += [{"id": f"A-{i}", "split": "A", "fg_fraction": 0.0 if i == 7 else 0.2} for i in range(10)]
    rows += [{"id": f"B-{i}", "split": "B", "fg_fraction": 0.3} for i in range(2)]
    frame = pd.DataFrame(rows)
    assert data.cap_test_sets(frame, None, 0) is frame
    for seed in range(5):
        capped = data.cap_test_sets(frame, 3, seed)
        counts = capped["split"].value_counts().to_dict()
        assert counts == {"train": 5, "A": 3, "B": 2}
        assert "A-7" in set(capped["id"])  # the one lesion-free frame stays in
        assert list(capped["id"]) == [i for i in frame["id"] if i in set(capped["id"])]  # the manifest's order
    assert set(data.cap_test_sets(frame, 3, 0)["id"]) == set(data.cap_test_sets(frame.iloc[::-1], 3, 0)["id"])
    assert len(data.cap_test_sets(frame, 1, 0).query("split == 'A'")) == 1
    with pytest.raises(ValueError, match="test_subset"):
        data.cap_test_sets(frame, 0, 0)


def test_config_keys_for_the_hard_cases() -> None:
    config = load_config([REPO / "config" / "config.yaml"])
    demo = config["data"]["demo"]
    assert demo["lesion_colour"] == "distinct" and demo["empty_test_fraction"] == 0  # the default demo is unchanged
    assert config["data"]["test_subset"] is None
    table = load_config([REPO / "config" / "config.yaml"])
    table["data"].update(layout="table")
    validate_config(table)  # the polyp demo also writes its table
    bad = load_config([REPO / "config" / "config.yaml"])
    bad["data"]["demo"].update(lesion_colour="red", empty_test_fraction=1.0)
    bad["data"]["test_subset"] = 0
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    for key in ("data.demo.lesion_colour", "data.demo.empty_test_fraction", "data.test_subset"):
        assert key in str(err.value)
