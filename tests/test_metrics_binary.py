"""The binary evaluation protocol (evaluate.protocol: binary) on hand-made masks: per-image Dice, IoU, accuracy,
sensitivity, specificity and HD95, the empty-mask conventions, test-set means, the CLI and the maps it expects."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from hardgen.app.cli import main
from hardgen.core.io import read_gray, write_image, write_mask
from hardgen.evaluation import metrics


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
    assert table["metric"].tolist() == list(metrics.BINARY_METRICS + metrics.BINARY_COUNTS) * 3
    assert metrics.PROTOCOL_METRICS["binary"] == metrics.BINARY_METRICS + ("HD95_undefined", "n_images")
    value = table.set_index(["testset", "metric"])["value"]
    shifted = metrics.score_binary_image(_square(10, 13), _square(10, 10))
    assert value[("site-A", "mDice")] == pytest.approx((shifted["mDice"] + 1.0) / 2)  # empty/empty counts 1
    assert value[("site-A", "HD95")] == pytest.approx(3.0)  # the mean over the images where it is defined
    assert value[("B", "mDice")] == 1.0 and value[("B", "HD95")] == 0.0
    assert value[("overall", "mDice")] == pytest.approx((shifted["mDice"] + 2.0) / 3)
    assert value[("overall", "HD95")] == pytest.approx(1.5)
    # beside each HD95 mean: over how many images it is (site-A's empty GT has none)
    assert [value[(t, "HD95_undefined")] for t in ("B", "site-A", "overall")] == [0, 1, 1]
    assert [value[(t, "n_images")] for t in ("B", "site-A", "overall")] == [1, 2, 3]
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
    scores = table[table.metric.isin(metrics.BINARY_METRICS[:-1])]
    assert len(scores) == 10 and (scores["value"] == 1.0).all()
    counts = table[table.metric.isin(metrics.BINARY_COUNTS)].set_index(["testset", "metric"])["value"]
    assert counts.to_dict() == {("only", "HD95_undefined"): 1, ("only", "n_images"): 1,
                                ("overall", "HD95_undefined"): 1, ("overall", "n_images"): 1}


def test_evaluate_maps_command_binary_protocol(capsys, tmp_path) -> None:
    pred, gt = _binary_tree(tmp_path)
    out = tmp_path / "scores.csv"
    assert main(["evaluate-maps", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--protocol", "binary"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"out": str(out), "protocol": "binary", "testsets": ["B", "site-A"], "images": 3}
    table = pd.read_csv(out)
    assert table.groupby("testset")["metric"].apply(list).to_dict() == {
        t: list(metrics.PROTOCOL_METRICS["binary"]) for t in ("B", "site-A", "overall")}
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
    from hardgen.segmentation.predict import save_prediction_maps

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


# ------------------------------------------------------------------ a segmenter that predicts empty maps
#: Per run (policy, ratio) and test set: each image's predicted square, shifted right by that many px from its ground
#: truth (a 10 px square at (10, 10)), or None for an EMPTY prediction (HD95 undefined; Dice 0, still defined).
#: Test set "part": the segmenter misses some images; "missed": real misses every image (its HD95 undefined throughout).
EMPTY_RUNS = {
    ("real", 0.0): {"part": {"a": 1, "b": 3, "c": None, "d": None}, "missed": {"x": None, "y": None, "z": None}},
    ("hard", 1.0): {"part": {"a": 2, "b": None, "c": 1, "d": None}, "missed": {"x": 1, "y": None, "z": None}},
    ("plain", 1.0): {"part": dict.fromkeys("abcd"), "missed": dict.fromkeys("xyz")},  # every map empty
}


def _empty_prediction_runs(root):
    """Score each run of :data:`EMPTY_RUNS` from its saved maps under the binary protocol and write its evaluation and
    per-image tables as the evaluate rule does; returns ``({run key: eval csv}, {run key: images csv}, pairs)``."""
    from hardgen.core.io import write_csv

    gt = _square(10, 10)
    evals, images, pairs = {}, {}, {}
    for (policy, ratio), testsets in EMPTY_RUNS.items():
        for testset, shifts in testsets.items():
            for stem, shift in shifts.items():
                write_mask(root / "gt" / testset / "masks" / f"{stem}.png", gt)
                prob = np.full((40, 40), 20) if shift is None else np.where(_square(10, 10 + shift), 200, 20)
                write_image(root / policy / testset / f"{stem}.png", prob.astype(np.uint8))
        pairs[policy] = metrics.find_map_pairs(root / policy, root / "gt")
        table, per_image = metrics.score_testsets_with_images(pairs[policy], protocol="binary")
        key = ("cnn", policy, ratio, 0)
        evals[key], images[key] = root / "eval" / policy / "seed-0.csv", root / "eval" / policy / "seed-0.images.csv"
        write_csv(evals[key], table)
        write_csv(images[key], per_image)
    return evals, images, pairs


def test_empty_predictions_leave_hd95_undefined_and_the_report_reads_it(tmp_path) -> None:
    from hardgen.evaluation import contrasts
    from hardgen.report import markdown, summary
    evals, images, _ = _empty_prediction_runs(tmp_path)
    gt = _square(10, 10)
    own = {shift: metrics.score_binary_image(_square(10, 10 + shift), gt)["HD95"] for shift in (1, 2, 3)}
    assert own[3] == pytest.approx(3.0)
    real = pd.read_csv(evals[("cnn", "real", 0.0, 0)]).set_index(["testset", "metric"])["value"]
    # part: HD95 over its two found images only (an empty map would otherwise pull the mean to 0 or make it NaN)
    assert real[("part", "HD95")] == pytest.approx((own[1] + own[3]) / 2)
    assert (real[("part", "HD95_undefined")], real[("part", "n_images")]) == (2, 4)
    assert real[("part", "mDice")] < 0.5 and real[("part", "Sensitivity")] < 1  # the empty maps' Dice 0 counts
    assert np.isnan(real[("missed", "HD95")]) and (real[("missed", "HD95_undefined")], real[("missed", "n_images")]) == (3, 3)
    assert real[("missed", "mDice")] == 0.0 and real[("missed", "Specificity")] == 1.0  # defined: empty map, full GT
    assert real[("overall", "HD95")] == pytest.approx((own[1] + own[3]) / 2)
    assert (real[("overall", "HD95_undefined")], real[("overall", "n_images")]) == (5, 7)
    per_image = pd.read_csv(images[("cnn", "real", 0.0, 0)])
    undefined = per_image[(per_image.metric == "HD95") & per_image.value.isna()]
    assert sorted(undefined["image"]) == ["c", "d", "x", "y", "z"]

    # the report reads the NaN: the benchmark keeps it, the mean over test sets is NaN (not 0, not part's alone)
    long = summary.benchmark_long(evals)
    wide = summary.benchmark_summary(long, metrics=["HD95"], testsets=["part", "missed"]).set_index("policy")
    assert np.isnan(wide.loc["real", "missed"]) and np.isnan(wide.loc["real", "mean"])
    assert wide.loc["hard", "mean"] == pytest.approx(((own[2] + own[1]) / 2 + own[1]) / 2)
    # the paired bootstrap: only images defined in both runs; hard − real pairs part/a alone (missed: real has none)
    diffs = summary.paired_differences(long, metrics=["mDice", "HD95"], testsets=["part", "missed"])
    table = contrasts.contrast_table(diffs, ["part", "missed"], images).set_index(["policy", "versus", "metric"])
    assert table.loc[("hard", "real", "HD95"), "n"] == 1
    assert table.loc[("hard", "real", "HD95"), "mean_diff"] == pytest.approx(own[2] - own[1])
    assert table.loc[("hard", "real", "HD95@overall"), "n"] == 1
    assert table.loc[("hard", "real", "mDice"), "n"] == 7  # Dice is defined for every image
    # plain predicts nothing: no pair with a defined HD95 at all, kept as an undefined row
    for metric in ("HD95", "HD95@overall"):
        row = table.loc[("hard", "plain", metric)]
        assert row["n"] == 0 and row[["mean_diff", "ci_low", "ci_high"]].isna().all()
    md = markdown.markdown_report(markdown.BenchmarkTables(long), markdown.MarkdownOptions(testsets=["part", "missed"]))
    assert "| cnn/real | 0 | 5 | 7 | missed |" in md
    assert "| cnn/hard ×1 | 0 | 4 | 7 | – |" in md
    assert "| cnn/plain ×1 | 0 | 7 | 7 | missed, part |" in md and "3 runs have undefined HD95s" in md
    assert "HD95: undefined for some test images in 3 run(s)" in md[md.index("## Measures not defined"):]
