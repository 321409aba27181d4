"""The binary evaluation protocol (evaluate.protocol: binary) on hand-made masks: per-image Dice, IoU, accuracy,
sensitivity, specificity and HD95, the empty-mask conventions, test-set means, the CLI and the maps it expects."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from hardgen import metrics
from hardgen.cli import main
from hardgen.io import read_gray, write_image, write_mask


def _square(top: int, left: int, size: int = 10, shape=(40, 40)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + size, left:left + size] = True
    return mask


def test_known_shift_gives_known_overlaps_and_hd95() -> None:
    gt, pred = _square(10, 10), _square(10, 13)  # the prediction shifted 3 px right
    values = metrics.score_binary_image(pred, gt)
    tp, fp, fn = 70, 30, 30
    tn = 40 * 40 - tp - fp - fn
    assert values["mDice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert values["mIoU"] == pytest.approx(tp / (tp + fp + fn))
    assert values["Accuracy"] == pytest.approx((tp + tn) / 1600)
    assert values["Sensitivity"] == pytest.approx(tp / (tp + fn))
    assert values["Specificity"] == pytest.approx(tn / (tn + fp))
    assert values["HD95"] == pytest.approx(3.0)  # every boundary point of one square is <= 3 px from the other's
    far = metrics.score_binary_image(_square(10, 25), gt)  # 15 px right: no overlap
    assert far["mDice"] == 0.0 and far["HD95"] == pytest.approx(15.0)
    assert list(values) == list(metrics.BINARY_METRICS)


def test_empty_masks_follow_the_protocol() -> None:
    empty = np.zeros((20, 20), bool)
    both = metrics.score_binary_image(empty, empty)
    assert {k: both[k] for k in metrics.BINARY_METRICS[:-1]} == dict.fromkeys(metrics.BINARY_METRICS[:-1], 1.0)
    assert math.isnan(both["HD95"])  # missing, not 0
    missed = metrics.score_binary_image(empty, _square(5, 5, 5, (20, 20)))
    assert missed["mDice"] == 0.0 and missed["mIoU"] == 0.0 and missed["Sensitivity"] == 0.0
    assert missed["Specificity"] == 1.0 and math.isnan(missed["HD95"])
    false_alarm = metrics.score_binary_image(_square(5, 5, 5, (20, 20)), empty)
    assert false_alarm["Sensitivity"] == 1.0  # TP + FN = 0: the denominator rule
    assert false_alarm["Specificity"] == pytest.approx(375 / 400) and math.isnan(false_alarm["HD95"])
    full = np.ones((20, 20), bool)
    assert metrics.score_binary_image(full, full)["Specificity"] == 1.0  # TN + FP = 0
    with pytest.raises(ValueError, match="must be equal"):
        metrics.score_binary_image(empty, np.zeros((20, 21), bool))


def _binary_tree(root):
    """Two test sets of probability maps (x 255, not min-max normalised) with known binarisations."""
    gt_a, gt_b = _square(10, 10), _square(5, 5)
    cases = {
        "site-A": [("0", gt_a, np.where(_square(10, 13), 200, 20)),  # shifted 3 px: HD95 3
                   ("1", np.zeros((40, 40), bool), np.full((40, 40), 127))],  # empty GT, map all just below 128
        "B": [("x", gt_b, np.where(gt_b, 128, 127))],  # exactly at the threshold: a perfect prediction
    }
    for testset, items in cases.items():
        for stem, gt, prob in items:
            write_mask(root / "gt" / testset / "masks" / f"{stem}.png", gt)
            write_image(root / "pred" / testset / f"{stem}.png", prob.astype(np.uint8))
    return root / "pred", root / "gt"


def test_testset_means_overall_and_missing_hd95(tmp_path) -> None:
    pred, gt = _binary_tree(tmp_path)
    table = metrics.evaluate_maps(pred, gt, protocol="binary")
    assert table["testset"].unique().tolist() == ["B", "site-A", metrics.OVERALL]
    assert table["metric"].tolist() == list(metrics.BINARY_METRICS) * 3
    value = table.set_index(["testset", "metric"])["value"]
    shifted = metrics.score_binary_image(_square(10, 13), _square(10, 10))
    assert value[("site-A", "mDice")] == pytest.approx((shifted["mDice"] + 1.0) / 2)  # empty/empty counts 1
    assert value[("site-A", "HD95")] == pytest.approx(3.0)  # the mean over the images where it is defined
    assert value[("B", "mDice")] == 1.0 and value[("B", "HD95")] == 0.0
    assert value[("overall", "mDice")] == pytest.approx((shifted["mDice"] + 2.0) / 3)
    assert value[("overall", "HD95")] == pytest.approx(1.5)
    # the toolbox protocol on the same maps gives its own rows
    assert metrics.evaluate_maps(pred, gt)["metric"].tolist()[:7] == list(metrics.METRICS)
    with pytest.raises(ValueError, match="evaluate.protocol"):
        metrics.evaluate_maps(pred, gt, protocol="dice")


def test_ground_truth_in_any_two_values_and_label_maps(tmp_path) -> None:
    """A raw dataset's 0/1 masks score as their 0/255 copies would; a label map is an error naming the file."""
    from PIL import Image

    gt = _square(10, 10)
    write_image(tmp_path / "pred" / "T" / "a.png", np.where(_square(10, 13), 200, 20).astype(np.uint8))
    (tmp_path / "gt01" / "T" / "masks").mkdir(parents=True)
    Image.fromarray(gt.astype(np.uint8)).save(tmp_path / "gt01" / "T" / "masks" / "a.png")
    write_mask(tmp_path / "gt255" / "T" / "masks" / "a.png", gt)
    pd.testing.assert_frame_equal(metrics.evaluate_maps(tmp_path / "pred", tmp_path / "gt01", protocol="binary"),
                                  metrics.evaluate_maps(tmp_path / "pred", tmp_path / "gt255", protocol="binary"))
    labels = gt.astype(np.uint8)
    labels[:3, :3] = 2
    (tmp_path / "gtlab" / "T" / "masks").mkdir(parents=True)
    Image.fromarray(labels).save(tmp_path / "gtlab" / "T" / "masks" / "a.png")
    with pytest.raises(ValueError, match=r"gtlab/T/masks/a\.png.*data\.foreground"):
        metrics.evaluate_maps(tmp_path / "pred", tmp_path / "gtlab", protocol="binary")


def test_a_testset_without_any_hd95_reports_it_missing(tmp_path) -> None:
    write_mask(tmp_path / "gt" / "only" / "masks" / "a.png", np.zeros((8, 8), bool))
    write_image(tmp_path / "pred" / "only" / "a.png", np.zeros((8, 8), np.uint8))
    table = metrics.evaluate_maps(tmp_path / "pred", tmp_path / "gt", protocol="binary")
    hd95 = table.loc[table.metric == "HD95", "value"]
    assert hd95.isna().all() and len(hd95) == 2
    assert (table.loc[table.metric != "HD95", "value"] == 1.0).all()


def test_evaluate_maps_command_binary_protocol(capsys, tmp_path) -> None:
    pred, gt = _binary_tree(tmp_path)
    out = tmp_path / "scores.csv"
    assert main(["evaluate-maps", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--protocol", "binary"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"out": str(out), "protocol": "binary", "testsets": ["B", "site-A"], "images": 3}
    table = pd.read_csv(out)
    assert table.groupby("testset")["metric"].apply(list).to_dict() == {
        t: list(metrics.BINARY_METRICS) for t in ("B", "site-A", "overall")}
    pd.testing.assert_frame_equal(table, metrics.evaluate_maps(pred, gt, protocol="binary"), check_exact=False,
                                  rtol=0, atol=1e-12)
    with pytest.raises(SystemExit):
        main(["evaluate-maps", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--protocol", "dice"])


class _ConstantLogit(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), self.value)
        out[:, :, : x.shape[2] // 2] = -self.value
        return out


def test_binary_maps_are_probabilities_without_min_max(tmp_path) -> None:
    from hardgen.predict import save_prediction_maps

    image, mask = np.full((32, 32, 3), 100, np.uint8), _square(4, 4, 8, (32, 32))
    write_image(tmp_path / "img.png", image)
    write_mask(tmp_path / "m.png", mask)
    rows = pd.DataFrame({"split": ["T"], "image": [str(tmp_path / "img.png")], "mask": [str(tmp_path / "m.png")]})
    model = _ConstantLogit(1.0)  # probabilities sigmoid(-1) = 0.27 (top half) and sigmoid(1) = 0.73 (bottom half)
    save_prediction_maps(model, rows, 32, tmp_path / "binary", min_max=False)
    save_prediction_maps(model, rows, 32, tmp_path / "toolbox", min_max=True)
    binary, toolbox = read_gray(tmp_path / "binary" / "T" / "m.png"), read_gray(tmp_path / "toolbox" / "T" / "m.png")
    assert binary[0, 0] == round(255 / (1 + math.e)) and binary[-1, 0] == round(255 / (1 + math.exp(-1)))
    assert toolbox[0, 0] == 0 and toolbox[-1, 0] == 255  # min-max stretches the same map to 0..255
