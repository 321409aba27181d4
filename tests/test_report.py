"""Report tables and plots on synthetic evaluation / score tables with known numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from hardgen import report
from hardgen.io import DataError, write_image, write_mask

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_eval(path: Path, per_testset: dict[str, dict[str, list[float]]]) -> Path:
    """Write a per-image evaluation CSV: per_testset[testset][metric] = per-image values."""
    rows = [
        {"testset": t, "image": f"img{i}.png", "metric": m, "value": v}
        for t, metrics in per_testset.items()
        for m, values in metrics.items()
        for i, v in enumerate(values)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture()
def eval_tree(tmp_path: Path) -> list[Path]:
    """Two archs x two policies; cnn/real has seeds 0 and 1 with known per-image values."""
    root = tmp_path / "results" / "eval"
    paths = []
    for arch in ("cnn", "transformer"):
        for policy in ("real", "hard"):
            for seed in (0, 1) if (arch, policy) == ("cnn", "real") else (0,):
                offset = 0.1 * seed
                per_testset = {
                    t: {"mDice": [0.5 + offset + 0.1 * k, 0.7 + offset + 0.1 * k], "mIoU": [0.4 + offset, 0.6 + offset],
                        "MAE": [0.05, 0.07]}
                    for k, t in enumerate(report.TESTSETS)
                }
                paths.append(_write_eval(root / arch / policy / f"seed-{seed}.csv", per_testset))
    return paths


def test_benchmark_long_means_and_columns(eval_tree: list[Path]) -> None:
    long = report.benchmark_long(eval_tree)
    assert list(long.columns) == ["arch", "policy", "seed", "testset", "metric", "value"]
    # 5 runs x 5 test sets x 3 metrics
    assert len(long) == 5 * 5 * 3
    row = long[(long.arch == "cnn") & (long.policy == "real") & (long.seed == 1) & (long.testset == "CVC-ColonDB")
               & (long.metric == "mDice")]
    # CVC-ColonDB is the third test set (k=2): mean of 0.5+0.1+0.2 and 0.7+0.1+0.2
    assert row["value"].item() == pytest.approx(0.9)
    mae = long[long.metric == "MAE"]["value"]
    assert np.allclose(mae, 0.06)


def test_benchmark_long_accepts_mapping_and_rejects_bad_paths(eval_tree: list[Path], tmp_path: Path) -> None:
    mapping = {report.parse_eval_path(p): p for p in eval_tree}
    pd.testing.assert_frame_equal(report.benchmark_long(mapping), report.benchmark_long(eval_tree))
    with pytest.raises(DataError, match="seed-"):
        report.benchmark_long([tmp_path / "somewhere" / "x.csv"])
    bad = tmp_path / "eval" / "cnn" / "real" / "seed-3.csv"
    bad.parent.mkdir(parents=True)
    pd.DataFrame({"testset": ["Kvasir"], "metric": ["mDice"], "value": [0.5]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"seed-3\.csv.*image"):
        report.benchmark_long([bad])


def test_benchmark_markdown_mean_sd_and_anchors(eval_tree: list[Path]) -> None:
    long = report.benchmark_long(eval_tree)
    md = report.benchmark_markdown(long)
    assert "| arch | policy | seeds | CVC-300 | CVC-ClinicDB | CVC-ColonDB | ETIS-LaribPolypDB | Kvasir | mean |" in md
    cnn_real_dice = next(line for line in md.splitlines() if line.startswith("| cnn | real |"))
    cells = [c.strip() for c in cnn_real_dice.strip("|").split("|")]
    # seeds 0 and 1: CVC-300 means 0.6 and 0.7 -> 0.650 ± sd(ddof=1) 0.071
    assert cells[2] == "2"
    assert cells[3] == f"0.650 ± {np.std([0.6, 0.7], ddof=1):.3f}"
    # mean over test sets per seed: 0.6 + 0.1*mean(k) = 0.8 and 0.9
    assert cells[-1] == f"0.850 ± {np.std([0.8, 0.9], ddof=1):.3f}"
    one_seed = next(line for line in md.splitlines() if line.startswith("| transformer | hard |"))
    assert "±" not in one_seed and "0.800" in one_seed
    # order: real policy before hard within an arch
    assert md.index("| cnn | real |") < md.index("| cnn | hard |")
    assert "## mIoU" in md
    for model in ("PraNet", "SANet", "Polyp-PVT"):
        assert f"| {model} |" in md
    assert "0.937 / 0.889" in md and "0.628 / 0.567" in md
    assert "86.84 %" in md


def test_published_constant_is_complete() -> None:
    assert set(report.PUBLISHED) == {"PraNet", "SANet", "Polyp-PVT"}
    for scores in report.PUBLISHED.values():
        assert set(scores) == set(report.TESTSETS)
        assert all(0 < iou < dice < 1 for dice, iou in scores.values())


def _write_scores(tmp_path: Path) -> tuple[list[Path], pd.DataFrame]:
    rng = np.random.default_rng(0)
    frames = []
    for variant, shift in (("real", 0.0), ("plain", 1.0), ("hard", 3.0)):
        ids = [f"{variant}-{i}" if variant == "real" else f"s{i}" for i in range(10)]
        for backbone in ("cnn", "vit"):
            distance = shift + np.arange(10, dtype=float) + (0.5 if backbone == "vit" else 0.0)
            frames.append(pd.DataFrame({"sample_id": ids, "variant": variant, "backbone": backbone,
                                        "distance": distance, "z": rng.normal(size=10)}))
    paths = []
    for frame in frames:
        path = tmp_path / "scores" / f"{frame.variant.iloc[0]}-{frame.backbone.iloc[0]}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths, pd.concat(frames, ignore_index=True)


def test_hardness_table(tmp_path: Path) -> None:
    paths, _ = _write_scores(tmp_path)
    table = report.hardness_table(paths)
    assert list(table.columns) == ["variant", "backbone", "mean_discrepancy", "n"]
    assert list(table["variant"]) == ["real", "real", "plain", "plain", "hard", "hard"]
    hard_vit = table[(table.variant == "hard") & (table.backbone == "vit")]
    assert hard_vit["mean_discrepancy"].item() == pytest.approx(3.0 + 4.5 + 0.5)
    assert (table["n"] == 10).all()


def test_hardness_transfer_spearman(tmp_path: Path) -> None:
    paths, scores = _write_scores(tmp_path)
    # segmenter A: loss a monotone (nonlinear) function of distance -> rho = 1 everywhere, pooled too
    # segmenter B: loss decreasing in distance -> rho = -1
    # segmenter C: increasing within each variant, but hard samples get lower loss -> 1 per variant, < 1 pooled
    rows: dict[str, list[dict[str, object]]] = {"segA": [], "segB": [], "segC": []}
    for variant in ("real", "plain", "hard"):
        sub = scores[(scores.variant == variant) & (scores.backbone == "cnn")]
        for s, d in zip(sub.sample_id, sub.distance):
            rows["segA"].append({"sample_id": s, "variant": variant, "loss": np.exp(d)})
            rows["segB"].append({"sample_id": s, "variant": variant, "loss": -d})
            rows["segC"].append({"sample_id": s, "variant": variant, "loss": d - (100.0 if variant == "hard" else 0.0)})
    loss_paths = {}
    for name, data in rows.items():
        loss_paths[name] = tmp_path / f"loss_{name}.csv"
        pd.DataFrame(data).to_csv(loss_paths[name], index=False)
    table = report.hardness_transfer(paths, loss_paths)
    assert list(table.columns)[:4] == ["backbone", "segmenter", "variant", "spearman"]
    assert set(table["variant"]) == {"real", "plain", "hard", "all"}
    assert len(table) == 2 * 3 * 4  # backbones x segmenters x (3 variants + all)
    a = table[table.segmenter == "segA"]
    assert np.allclose(a["spearman"], 1.0)
    b = table[table.segmenter == "segB"]
    assert np.allclose(b["spearman"], -1.0)
    c = table[table.segmenter == "segC"]
    assert np.allclose(c[c.variant != "all"]["spearman"], 1.0)
    pooled = c[c.variant == "all"]
    # 'all' pools plain + hard (20 samples; shared sample ids kept apart by the variant join), not real
    assert (pooled["n"] == 20).all()
    plain_d, hard_d = np.arange(10) + 1.0, np.arange(10) + 3.0
    expected = spearmanr(np.r_[plain_d, hard_d], np.r_[plain_d, hard_d - 100.0]).statistic
    assert np.allclose(pooled["spearman"], expected) and (pooled["spearman"] < 0.5).all()


def test_hardness_transfer_rejects_duplicates(tmp_path: Path) -> None:
    paths, _ = _write_scores(tmp_path)
    dup = tmp_path / "dup.csv"
    pd.DataFrame({"sample_id": ["s1", "s1"], "loss": [0.1, 0.2]}).to_csv(dup, index=False)
    with pytest.raises(DataError, match="dup.csv.*duplicate"):
        report.hardness_transfer(paths, {"seg": dup})


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_plots_and_write_report(tmp_path: Path, eval_tree: list[Path]) -> None:
    score_paths, scores = _write_scores(tmp_path)
    rng = np.random.default_rng(1)
    data_rows, cond_rows = [], []
    gen: dict[str, list[dict[str, str]]] = {"plain": [], "hard": []}
    for i in range(4):
        img, mask, cond = tmp_path / f"real/{i}.png", tmp_path / f"real/m{i}.png", tmp_path / f"cond/{i}.png"
        write_image(img, rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
        write_mask(mask, rng.random((20, 24)) > 0.5)
        write_image(cond, rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
        data_rows.append({"id": f"r{i}", "image": str(img), "mask": str(mask)})
        cond_rows.append({"sample_id": f"s{i}", "source_id": f"r{i}", "kind": "real", "condition": str(cond),
                          "mask": str(mask)})
        for variant in gen:
            if variant == "hard" and i == 3:
                continue  # one variant misses a sample: the grid must prefer fully covered rows
            out = tmp_path / f"generated/{variant}/{i}.png"
            write_image(out, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
            gen[variant].append({"sample_id": f"s{i}", "image": str(out)})
    pd.DataFrame(data_rows).to_csv(tmp_path / "manifest.csv", index=False)
    pd.DataFrame(cond_rows).to_csv(tmp_path / "conditions.csv", index=False)
    manifests = {}
    for variant, rows in gen.items():
        manifests[variant] = tmp_path / f"generated/{variant}/manifest.csv"
        pd.DataFrame(rows).to_csv(manifests[variant], index=False)

    shown = report.plot_grid(report.real_pairs_from(tmp_path / "conditions.csv", tmp_path / "manifest.csv"),
                             manifests, tmp_path / "g.png", n=3)
    assert shown == ["s0", "s1", "s2"]
    assert _is_png(tmp_path / "g.png")

    loss = tmp_path / "loss.csv"
    pd.DataFrame({"sample_id": [f"s{i}" for i in range(10)], "variant": "plain", "loss": np.arange(10.0)}).to_csv(
        loss, index=False)
    written = report.write_report(eval_tree, score_paths, manifests, tmp_path / "manifest.csv", tmp_path / "tables",
                                  tmp_path / "plots", sample_loss_csvs={"cnn": loss},
                                  conditions_csv=tmp_path / "conditions.csv")
    for name in ("benchmark.csv", "benchmark.md", "hardness.csv", "hardness_transfer.csv"):
        assert (tmp_path / "tables" / name).stat().st_size > 0
    for name in ("grid.png", "histograms.png", "benchmark.png"):
        assert _is_png(tmp_path / "plots" / name)
    assert set(written) == {"benchmark_csv", "benchmark_md", "hardness_csv", "hardness_transfer_csv", "grid_png",
                            "histograms_png", "benchmark_png"}
    bench = pd.read_csv(written["benchmark_csv"])
    assert list(bench.columns) == report.BENCHMARK_COLUMNS
    transfer = pd.read_csv(written["hardness_transfer_csv"])
    assert transfer.loc[(transfer.variant == "plain"), "spearman"].tolist() == pytest.approx([1.0, 1.0])
    # no temporary files left behind by the atomic writes
    assert not [p for p in (tmp_path / "plots").iterdir() if p.name.startswith(".")]

    # the workflow's form: lists of paths laid out as in results/, and no conditions table
    loss_in_tree = tmp_path / "results" / "eval" / "cnn" / "sample_loss.csv"
    loss_in_tree.write_bytes(loss.read_bytes())
    for variant, rows in gen.items():
        frame = pd.DataFrame(rows).assign(mask=[r["mask"] for r in cond_rows[: len(rows)]],
                                          condition=[r["condition"] for r in cond_rows[: len(rows)]])
        frame.to_csv(manifests[variant], index=False)
    again = report.write_report(eval_tree, score_paths, list(manifests.values()), tmp_path / "manifest.csv",
                                tmp_path / "tables2", tmp_path / "plots2", sample_loss_csvs=[loss_in_tree])
    assert _is_png(again["grid_png"])
    pd.testing.assert_frame_equal(pd.read_csv(again["hardness_transfer_csv"]), transfer)


def test_plot_histograms_requires_columns(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="distance"):
        report.plot_histograms(pd.DataFrame({"variant": ["a"], "backbone": ["b"]}), tmp_path / "h.png")
