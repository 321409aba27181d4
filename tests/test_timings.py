"""Tests for hardgen.report.timings: Snakemake benchmark files gathered into one table and a plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardgen.core.io import DataError
from hardgen.report.timings import TIMING_COLUMNS, plot_timings, timings_table

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path: Path, *seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(f"{s}\t0:00:01\t100.5\t1\t1\t1\t0\t0\t50\t{s / 2}\n" for s in seconds))


def test_timings_table_reads_every_rule_and_job(tmp_path: Path) -> None:
    _bench(tmp_path / "generate" / "plain" / "shard-0.tsv", 3.0)
    _bench(tmp_path / "generate" / "plain" / "shard-1.tsv", 5.0)
    _bench(tmp_path / "base_model.tsv", 2.0, 1.5)  # repeats: the last row counts
    _bench(tmp_path / "report.tsv", 9.0)
    table = timings_table(tmp_path)
    assert list(table.columns) == TIMING_COLUMNS
    assert table[["rule", "job", "s"]].values.tolist() == [
        ["base_model", "", 1.5], ["generate", "plain/shard-0", 3.0], ["generate", "plain/shard-1", 5.0]]
    assert table["cpu_time_s"].tolist() == [0.75, 1.5, 2.5] and (table["max_rss_mb"] == 100.5).all()
    plot_timings(table, tmp_path / "timings.png")
    assert (tmp_path / "timings.png").read_bytes()[:4] == b"\x89PNG"


def test_timings_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="benchmark folder not found"):
        timings_table(tmp_path / "nope")
    (tmp_path / "x.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(DataError, match=r"x\.tsv: Snakemake benchmark file lacks columns \['s', 'max_rss', 'cpu_time'\]"):
        timings_table(tmp_path)


def test_variant_cost_adds_each_variants_training_and_generation(tmp_path: Path) -> None:
    from hardgen.report.timings import VARIANT_COST_COLUMNS, variant_cost

    _bench(tmp_path / "train_control_lora.tsv", 10.0)
    _bench(tmp_path / "train_hard_lora.tsv", 5.0)
    _bench(tmp_path / "train_feedback_lora.tsv", 7.0)
    _bench(tmp_path / "train_judge" / "cnn" / "seed-0.tsv", 3.0)
    _bench(tmp_path / "train_judge" / "transformer" / "seed-0.tsv", 100.0)  # a pixel-filter judge: not feedback's
    for variant, seconds in (("plain", (2.0, 2.0)), ("hard", (2.0, 3.0)), ("feedback", (1.0, 1.0)),
                             ("mined", (6.0, 6.0))):
        for shard, s in enumerate(seconds):
            _bench(tmp_path / "generate" / variant / f"shard-{shard}.tsv", s)
    table = variant_cost(timings_table(tmp_path), ["plain", "hard", "feedback", "mined"], judge_job="cnn/seed-0")
    assert list(table.columns) == VARIANT_COST_COLUMNS
    rows = table.set_index("variant")
    assert rows["training_s"].to_dict() == {"plain": 10.0, "hard": 15.0, "feedback": 20.0, "mined": 10.0}
    assert rows["generation_s"].to_dict() == {"plain": 4.0, "hard": 5.0, "feedback": 2.0, "mined": 12.0}
    assert rows["total_s"].to_dict() == {"plain": 14.0, "hard": 20.0, "feedback": 22.0, "mined": 22.0}
    # mined spends its extra effort generating, hard fine-tuning: side by side
    assert rows["fine_tuning_s"].to_dict() == {"plain": 0.0, "hard": 5.0, "feedback": 10.0, "mined": 0.0}
    assert rows.at["feedback", "training_rules"] == "train_control_lora + train_feedback_lora + train_judge/cnn/seed-0"
    assert rows.at["mined", "training_rules"] == "train_control_lora"
    assert set(rows["status"]) == {"ok"} and set(rows["reason"].fillna("")) == {""}
    # a job that ran outside this results folder: its figures are undefined, the row says which file is missing
    guided = variant_cost(timings_table(tmp_path), ["guided"], judge_job="cnn/seed-0").iloc[0]
    assert guided["status"] == "undefined" and "generate/guided/shard-*.tsv" in guided["reason"]
    assert guided["training_s"] == 10.0 and np.isnan(guided["generation_s"]) and np.isnan(guided["total_s"])
    with pytest.raises(ValueError, match="judge_job"):
        variant_cost(timings_table(tmp_path), ["feedback"])
    (tmp_path / "train_control_lora.tsv").unlink()
    plain = variant_cost(timings_table(tmp_path), ["plain", "hard"]).set_index("variant")
    assert (plain["status"] == "undefined").all() and plain["training_s"].isna().all()
    assert plain.at["hard", "reason"] == ("no benchmark file train_control_lora.tsv in the run's benchmarks folder")
    assert plain.at["plain", "generation_s"] == 4.0  # what is measured stays
