"""The transfer matrix (hardgen.report.transfer) on constructed score and loss tables with known rank relations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hardgen.core.io import DataError
from hardgen.report import tables, transfer

N = 12  # samples per variant; the variants share sample ids (one per condition)
VARIANTS = ("plain", "hard")


def _t(variant: str) -> np.ndarray:
    """The hidden hardness of every sample: distinct across variants (hard above plain), shuffled ids."""
    base = np.random.default_rng(3).permutation(N).astype(float)
    return base + (N if variant == "hard" else 0)


def _scores() -> pd.DataFrame:
    """Backbones a, b (in the loss) and h (held out): a and b rank like t, h exactly against it; real rows too."""
    frames = []
    for variant in VARIANTS:
        t = _t(variant)
        for backbone, z in (("a", t / 10), ("b", t**2 / 100), ("h", -np.exp(t / 10))):
            frames.append(pd.DataFrame({"sample_id": [f"s{i}" for i in range(N)], "variant": variant,
                                        "backbone": backbone, "distance": z + 100, "z": z}))
    for backbone in ("a", "b", "h"):  # real training images: left out of the matrix
        frames.append(pd.DataFrame({"sample_id": [f"r{i}" for i in range(5)], "variant": "real",
                                    "backbone": backbone, "distance": 1.0, "z": np.arange(5.0)}))
    return pd.concat(frames, ignore_index=True)


def _fg(variant: str) -> np.ndarray:
    return np.random.default_rng(7 + len(variant)).uniform(0.05, 0.4, N)


def _losses(loss_of_t, noise: float = 0.0, seed: int = 0, drop: str | None = None) -> pd.DataFrame:
    frames = []
    for variant in VARIANTS:
        t = _t(variant)
        jitter = noise * np.random.default_rng(seed).standard_normal(N)
        frames.append(pd.DataFrame({"sample_id": [f"s{i}" for i in range(N)], "variant": variant,
                                    "loss": loss_of_t(t) + jitter, "fg_fraction": _fg(variant)}))
    table = pd.concat(frames, ignore_index=True)
    if drop is not None:
        table = table[~((table["variant"] == "hard") & (table["sample_id"] == drop))]
    return table


def _cell(table: pd.DataFrame, source: str, evaluator: str, column: str = "spearman") -> float:
    row = table[(table["source"] == source) & (table["evaluator"] == evaluator)]
    assert len(row) == 1, (source, evaluator)
    return float(row[column].iloc[0])


def test_transfer_matrix_known_relations() -> None:
    # two seeds whose noise cancels in the mean: each alone ranks the samples imperfectly, their mean exactly like t
    noise = 40.0
    seed0 = _losses(lambda t: t, noise=noise, seed=1)
    seed1 = _losses(lambda t: t, noise=-noise, seed=1)
    judge = _losses(lambda t: -(t**3))
    table = transfer.transfer_matrix(_scores(), ["a", "b"], {"cnn/seed-0": seed0, "cnn/seed-1": seed1}, judge)

    assert list(table.columns) == ["source", "evaluator", "evaluator_kind", "spearman", "partial_spearman", "n",
                                   "source_kind"]
    assert list(dict.fromkeys(table["source"])) == ["a", "b", "h", "fused", "feedback_judge"]
    assert list(dict.fromkeys(table["evaluator"])) == ["a", "b", "h", "seg:cnn"]
    assert len(table) == 5 * 4
    kinds = dict(zip(table["evaluator"], table["evaluator_kind"]))
    assert kinds == {"a": "backbone_in_loss", "b": "backbone_in_loss", "h": "backbone_heldout", "seg:cnn": "segmenter"}
    assert dict(zip(table["source"], table["source_kind"])) == {
        "a": "prototype_in_loss", "b": "prototype_in_loss", "h": "prototype_heldout", "fused": "prototype_fused",
        "feedback_judge": "feedback"}
    assert (table["n"] == 2 * N).all()  # every generated sample of both variants, pooled; real rows left out

    assert _cell(table, "a", "a") == pytest.approx(1.0)  # the diagonal: kept, 1 by construction
    assert _cell(table, "a", "b") == pytest.approx(1.0)  # monotone: t/10 and t²/100 (t >= 0)
    assert _cell(table, "fused", "seg:cnn") == pytest.approx(1.0)  # the seed mean ranks exactly like t
    assert _cell(table, "h", "seg:cnn") == pytest.approx(-1.0)
    assert _cell(table, "feedback_judge", "seg:cnn") == pytest.approx(-1.0)
    assert _cell(table, "feedback_judge", "h") == pytest.approx(1.0)
    # a perfect rank relation stays perfect once the foreground fraction is partialled out
    assert _cell(table, "fused", "seg:cnn", "partial_spearman") == pytest.approx(1.0)
    assert _cell(table, "h", "seg:cnn", "partial_spearman") == pytest.approx(-1.0)

    # one seed alone is noisier than the seed mean: averaging over seeds happened
    alone = transfer.transfer_matrix(_scores(), ["a", "b"], {"cnn/seed-0": seed0})
    assert _cell(alone, "fused", "seg:cnn") < 0.99
    assert "feedback_judge" not in set(alone["source"])


def test_partial_spearman_controls_for_the_foreground_fraction() -> None:
    # loss and hardness both follow the foreground fraction, plus independent noise: rho > 0, partial ~ 0
    scores = _scores()
    rng = np.random.default_rng(11)
    fg = {v: _fg(v) for v in VARIANTS}
    frames = []
    for variant in VARIANTS:
        frames.append(pd.DataFrame({"sample_id": [f"s{i}" for i in range(N)], "variant": variant,
                                    "loss": -fg[variant] + 0.02 * rng.standard_normal(N),
                                    "fg_fraction": fg[variant]}))
        hardness = -fg[variant] + 0.02 * rng.standard_normal(N)
        scores.loc[(scores["variant"] == variant) & (scores["backbone"] == "h"), "z"] = hardness
    losses = pd.concat(frames, ignore_index=True)
    table = transfer.transfer_matrix(scores, ["a"], {"cnn/seed-0": losses})
    rho, partial = _cell(table, "h", "seg:cnn"), _cell(table, "h", "seg:cnn", "partial_spearman")
    assert rho > 0.5 and abs(partial) < rho - 0.3
    # the very value of the report's partial Spearman on the joined samples
    held_out = scores[(scores["backbone"] == "h") & (scores["variant"] != "real")]
    joined = held_out.merge(losses, on=["sample_id", "variant"])
    assert partial == pytest.approx(tables.partial_spearman(joined["z"], joined["loss"], joined["fg_fraction"]))


def test_variants_sharing_ids_join_on_both_and_missing_samples_shrink_n(tmp_path: Path) -> None:
    # the variants share sample ids: joined on sample_id alone, plain scores would meet hard losses
    losses = _losses(lambda t: t, drop="s3")
    path = tmp_path / "eval" / "cnn" / "seed-0" / "sample_loss.csv"
    path.parent.mkdir(parents=True)
    losses.to_csv(path, index=False)
    table = transfer.transfer_matrix(_scores(), ["a"], {"cnn/seed-0": path})
    assert _cell(table, "a", "seg:cnn") == pytest.approx(1.0)
    assert _cell(table, "a", "seg:cnn", "n") == 2 * N - 1
    assert _cell(table, "a", "h", "n") == 2 * N - 1  # every cell uses samples with a foreground fraction
    assert sorted(set(table["evaluator"])) == ["a", "b", "h", "seg:cnn"]
    assert list(dict.fromkeys(table["source"])) == ["a", "b", "h", "fused"]  # b, h held out; no judge given


def test_transfer_matrix_errors(tmp_path: Path) -> None:
    losses = _losses(lambda t: t)
    with pytest.raises(ValueError, match="hard.loss_backbones"):
        transfer.transfer_matrix(_scores(), ["vit"], {"cnn/seed-0": losses})
    path = tmp_path / "loss.csv"
    losses.drop(columns="variant").to_csv(path, index=False)
    with pytest.raises(DataError, match="duplicate sample loss rows"):  # shared ids need the variant to tell apart
        transfer.transfer_matrix(_scores(), ["a"], {"cnn/seed-0": path})
    losses[losses["variant"] == "hard"].drop(columns="variant").to_csv(path, index=False)
    with pytest.raises(DataError, match="lacks column 'variant'"):
        transfer.transfer_matrix(_scores(), ["a"], {"cnn/seed-0": path})
    other = losses.assign(fg_fraction=losses["fg_fraction"] + 0.1)
    with pytest.raises(DataError, match="foreground fraction"):
        transfer.transfer_matrix(_scores(), ["a"], {"cnn/seed-0": losses, "cnn/seed-1": other})
    with pytest.raises(DataError, match="<arch>/seed-<s>"):
        transfer.transfer_matrix(_scores(), ["a"], {"cnn": losses})
    renamed = _scores().replace({"backbone": {"h": "fused"}})
    with pytest.raises(ValueError, match="reserved"):
        transfer.transfer_matrix(renamed, ["a"], {})


def test_without_loss_tables_partials_are_undefined_and_the_heatmap_draws(tmp_path: Path) -> None:
    table = transfer.transfer_matrix(_scores(), ["a", "b"], {})
    assert set(table["evaluator_kind"]) == {"backbone_in_loss", "backbone_heldout"}
    assert table["partial_spearman"].isna().all() and (table["n"] == 2 * N).all()
    full = transfer.transfer_matrix(_scores(), ["a", "b"], {"cnn/seed-0": _losses(lambda t: t),
                                                            "transformer/seed-0": _losses(lambda t: -t)},
                                    _losses(lambda t: t))
    transfer.plot_transfer_matrix(full, tmp_path / "m.png")
    data = (tmp_path / "m.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(DataError, match="empty"):
        transfer.plot_transfer_matrix(full.iloc[:0], tmp_path / "e.png")
