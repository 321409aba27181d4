"""Tests for hardgen.report.run_text: benchmark.md describes the run it reports (dataset, test sets, protocol, generation,
variants) and says which measures this data leaves undefined."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hardgen.report import markdown
from hardgen.report.run_text import (
    RunDescription,
    protocol_paragraph,
    run_paragraph,
    undefined_notes,
)


def _run(**changes) -> RunDescription:
    settings = {"dataset": None, "layout": "pranet", "testsets": ["CVC-300", "Kvasir"], "protocol": "polyp_toolbox",
                "per_mask": 2, "allocation": "hardness", "variants": ["plain", "hard"], "policies": ["real", "hard"],
                "archs": ["cnn"], "seeds": [0, 1], "base": "resources/tiny-sd-polyp", "resolution": 64,
                "modality": "polyp", "train_subset": None}
    return RunDescription(**{**settings, **changes})


def test_run_paragraph_follows_the_settings() -> None:
    demo = run_paragraph(_run())
    assert "procedural polyp demo set" in demo and "2 test sets (`CVC-300`, `Kvasir`)" in demo
    assert "2 samples per training mask on average" in demo and "judges' loss" in demo
    assert "`plain`, `hard`" in demo and "seeds: 0, 1" in demo and "`polyp_toolbox`" in demo
    isic = run_paragraph(_run(dataset="/data/isic.csv", layout="table", testsets=["test"], protocol="binary",
                              per_mask=1, allocation="uniform", train_subset=100, modality=None))
    assert "`/data/isic.csv` (table layout)" in isic and "100 real training images" in isic
    assert "1 test set (`test`)" in isic and "1 sample per training mask" in isic and "same number" in isic
    assert "procedural" not in isic and "CVC" not in isic and "`binary`" in isic
    with pytest.raises(ValueError, match="protocol"):
        _run(protocol="toolbox")
    with pytest.raises(ValueError, match="generation.allocation"):
        _run(allocation="random")


def test_protocol_paragraph_describes_the_protocol_that_scored_the_run() -> None:
    toolbox = protocol_paragraph("polyp_toolbox")
    assert toolbox.startswith("**Protocol.**")
    for phrase in ("GT > 128", "min-max", "256 thresholds", "meanDic", "not hardgen runs", "2000 seeded resamples",
                   "as many real images as the published model"):
        assert phrase in toolbox, phrase
    binary = protocol_paragraph("binary", anchors=False)
    for phrase in ("HD95", "binarised at 128", "undefined where the prediction or the ground truth is empty",
                   "MONAI", "`n` counts the pairs"):
        assert phrase in binary, phrase
    # nothing of the toolbox under the binary protocol, and no anchors sentence without anchors
    for phrase in ("toolbox", "256 thresholds", "min-max normalised to", "published anchors"):
        assert phrase not in binary, phrase


def test_benchmark_markdown_opens_with_the_run_and_closes_with_its_protocol() -> None:
    long = pd.DataFrame({"arch": "cnn", "policy": "real", "ratio": 0.0, "seed": 0, "testset": ["test", "overall"],
                         "metric": "mDice", "value": [0.5, 0.5]})
    md = markdown.markdown_report(markdown.BenchmarkTables(long), markdown.MarkdownOptions(
        run=_run(testsets=["test"], protocol="binary", dataset="/d", layout="folders")))
    assert md.index("**Run.**") < md.index("## mDice") < md.index("**Protocol.** `evaluate.protocol: binary`")
    assert "PraNet / Polyp-PVT" not in md and "## Measures not defined" not in md
    noted = markdown.markdown_report(markdown.BenchmarkTables(long),
                                     markdown.MarkdownOptions(notes=["`x.csv`: 2 rows undefined."]))
    assert "## Measures not defined on this data\n\n- `x.csv`: 2 rows undefined." in noted
    assert "`evaluate.protocol: polyp_toolbox`" in noted  # without a run description: the default protocol


def test_undefined_notes_count_the_marked_rows_and_say_why() -> None:
    contrasts = pd.DataFrame({"arch": ["cnn", "cnn"], "policy": ["hard", "hard"], "versus": ["real", "real"],
                              "metric": ["HD95", "mDice"], "n": [0, 12], "mean_diff": [np.nan, 0.01]})
    transfer = pd.DataFrame({"spearman": [np.nan, np.nan, 0.3], "n": [2, 10, 10]})
    costs = pd.DataFrame({"variant": ["plain", "hard"], "status": ["ok", "undefined"],
                          "reason": ["", "no benchmark file results/benchmarks/train_hard_lora.tsv"]})
    notes = undefined_notes(contrasts=contrasts, transfer=transfer, variant_cost=costs)
    assert len(notes) == 3
    assert "1 contrast undefined" in notes[0] and "cnn hard − real (HD95)" in notes[0] and "mDice" not in notes[0]
    assert "2 rank correlations of 3 undefined" in notes[1] and "1 with fewer than 3 samples, 1 where" in notes[1]
    assert "`hard`" in notes[2] and "train_hard_lora.tsv" in notes[2]
    defined = undefined_notes(contrasts=contrasts.iloc[1:], transfer=transfer.iloc[2:], variant_cost=costs.iloc[:1])
    assert defined == []


def test_benchmark_markdown_says_whether_the_samples_follow_their_masks(tmp_path) -> None:
    from hardgen.scoring.mask_following import COLUMNS, mask_following_sentences

    table = pd.DataFrame([
        ["real", "red_chromaticity", 0.001, 0.0012, np.nan, 0.5, "undefined",
         "the real images' red chromaticity does not mark their masks (real gap -0.0002)"],
        ["plain", "red_chromaticity", 0.002, 0.001, np.nan, 0.4, "undefined", "no validated reference"],
        ["real", "judge_dice:cnn", 0.8, 0.2, 1.0, np.nan, "ok", ""],
        ["plain", "judge_dice:cnn", 0.5, 0.2, 0.5, np.nan, "ok", ""],
    ], columns=list(COLUMNS))
    sentences = mask_following_sentences(table)
    long = pd.DataFrame({"arch": "cnn", "policy": "real", "ratio": 0.0, "seed": 0, "testset": ["t", "overall"],
                         "metric": "mDice", "value": [0.5, 0.5]})
    md = markdown.markdown_report(markdown.BenchmarkTables(long), markdown.MarkdownOptions(
        mask_following=sentences, notes=[f"`mask_following.csv`: {sentences[0]}"]))
    section = md[md.index("## Do the samples follow their masks?"):md.index("## Measures not defined")]
    assert "red chromaticity is undefined for every variant" in section and "at 0.50 of the real" in section
    assert "does not mark their masks" in md[md.index("## Measures not defined"):]
