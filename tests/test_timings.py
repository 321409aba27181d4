"""Tests for hardgen.timings: Snakemake benchmark files gathered into one table and a plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardgen.io import DataError
from hardgen.timings import TIMING_COLUMNS, plot_timings, timings_table

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
    with pytest.raises(DataError, match=r"x\.tsv: not a Snakemake benchmark file"):
        timings_table(tmp_path)
