"""Does a run's real-only baseline reproduce the published real-only numbers of the model it stands for?

Published numbers live in an anchors file per dataset (config ``report.anchors``, e.g.
``resources/anchors/polyp.csv``: columns :data:`ANCHOR_COLUMNS`, values as fractions), never in code;
``segment.archs.<key>.published`` names the anchors model an arch stands for (null: no anchor). Rows with testset
:data:`MEAN` are a paper's published mean over its test sets (a headline): they are shown, never compared per test
set. Each model carries ``n_train`` (the real training images it was trained on) and ``selection`` (which of its
checkpoints was published, :data:`SELECTIONS`): a model is one published training, so a different training-set size
is another model name.

:func:`reproduction_table` puts each arch's real-only result (the mean over seeds of its ``real`` runs, per test set
and metric) beside its model's published value: ``arch, testset, metric, ours, published, diff, n_real,
published_n_train, selection``; ``diff = ours − published`` only like for like (``n_real == published_n_train``: the
baseline trained on as many real images as the published model), else empty. :func:`reproduction_sentences` says per
arch, in one plain sentence, whether it reproduces: for mDice and for mIoU the mean of ``|diff|`` over the anchored
test sets is at most the tolerance (config ``report.reproduce_tolerance``, default :data:`DEFAULT_TOLERANCE`); or
that there is no like-for-like comparison; and names a published checkpoint selected on the test sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hardgen.core.io import DataError, read_csv_table, require_columns

#: Columns of an anchors file: ``n_train`` = the real training images the published model was trained on,
#: ``selection`` = which of its checkpoints was published (:data:`SELECTIONS`).
ANCHOR_COLUMNS: list[str] = ["model", "testset", "metric", "value", "n_train", "selection"]
#: ``selection`` values: ``final`` (the last epoch's weights, as hardgen evaluates), ``best_on_test`` (the checkpoint
#: with the best score on the test sets, e.g. Polyp-PVT's Train.py), ``unknown`` (neither the paper nor its code says).
SELECTIONS: tuple[str, ...] = ("final", "best_on_test", "unknown")
#: Columns of ``results/tables/reproduction.csv``: ``n_real`` = the real images the arch's real-only runs trained on
#: (``runs.csv``), ``published_n_train`` and ``selection`` = the anchors' ``n_train`` and ``selection``.
REPRODUCTION_COLUMNS: list[str] = ["arch", "testset", "metric", "ours", "published", "diff", "n_real",
                                   "published_n_train", "selection"]
#: The metrics compared (the polyp papers' headline pair).
REPRODUCTION_METRICS: tuple[str, ...] = ("mDice", "mIoU")
#: The testset name of a published mean over a paper's test sets (a headline), and of the table's mean rows.
MEAN = "mean"
#: "Reproduces" = mean |ours − published| over the anchored test sets at most this, per metric (2 points).
DEFAULT_TOLERANCE = 0.02


def load_anchors(path: str | Path) -> pd.DataFrame:
    """Read and check an anchors file (:func:`check_anchors`): exactly the columns :data:`ANCHOR_COLUMNS`.

    Errors (:class:`DataError`) name the file and the offending column or row; a file without ``n_train`` or
    ``selection`` (the older four columns) is one, naming them: a published number is never compared without knowing
    what it was trained on.
    """
    # no required columns: the file must have exactly ANCHOR_COLUMNS (checked next)
    table = read_csv_table(path, (), "anchors file (config report.anchors)",
                           dtype={"model": str, "testset": str, "metric": str, "selection": str})
    missing = [c for c in ANCHOR_COLUMNS if c not in table.columns]
    if missing:
        why = (f" (n_train: the real training images the published model was trained on; selection: one of "
               f"{list(SELECTIONS)})" if {"n_train", "selection"} & set(missing) else "")
        raise DataError(f"{path}: anchors file lacks columns {missing}{why}; it must have exactly the columns "
                        f"{ANCHOR_COLUMNS}, has {list(table.columns)}")
    if list(table.columns) != ANCHOR_COLUMNS:
        raise DataError(f"{path}: anchors file must have exactly the columns {ANCHOR_COLUMNS}, has {list(table.columns)}")
    return check_anchors(table, str(path))


def check_anchors(table: pd.DataFrame, where: str = "anchors") -> pd.DataFrame:
    """The checks of :func:`load_anchors` on a table already in memory: exactly one finite value in [0, 1] per
    (model, testset, metric); ``n_train`` a positive whole number and ``selection`` one of :data:`SELECTIONS`, each
    one per model. Returns the table with float values and int ``n_train``; errors name ``where`` and the column."""
    require_columns(table, ANCHOR_COLUMNS, f"{where}: anchors table")
    table = table[ANCHOR_COLUMNS].copy()
    if table[["model", "testset", "metric"]].isna().any(axis=None):
        raise DataError(f"{where}: empty model, testset or metric in rows "
                        f"{table.index[table[['model', 'testset', 'metric']].isna().any(axis=1)].tolist()[:3]}")
    n_train = pd.to_numeric(table["n_train"], errors="coerce")
    bad = ~((n_train >= 1) & (n_train == n_train.round()))
    if bad.any():
        raise DataError(f"{where}: column n_train must be the number of real training images (a whole number >= 1), "
                        f"found {table[bad].iloc[0].to_dict()}")
    table["n_train"] = n_train.astype(int)
    bad = ~table["selection"].isin(SELECTIONS)
    if bad.any():
        raise DataError(f"{where}: column selection must be one of {list(SELECTIONS)}, found "
                        f"{table[bad].iloc[0].to_dict()}")
    for column in ("n_train", "selection"):
        several = table.groupby("model", sort=False)[column].nunique()
        if (several > 1).any():
            model = several[several > 1].index[0]
            raise DataError(f"{where}: column {column}: model {model!r} has several values "
                            f"{sorted(table.loc[table['model'] == model, column].unique().tolist())}; a model is one "
                            "published training (give another training-set size or checkpoint its own model name)")
    values = pd.to_numeric(table["value"], errors="coerce")
    bad = ~(values.between(0.0, 1.0))
    if bad.any():
        row = table[bad].iloc[0].to_dict()
        raise DataError(f"{where}: values must be fractions in [0, 1] (e.g. 0.899), found {row}")
    duplicated = table.duplicated(["model", "testset", "metric"])
    if duplicated.any():
        raise DataError(f"{where}: more than one value for {table[duplicated].iloc[0][['model', 'testset', 'metric']].tolist()}")
    return table.assign(value=values.astype(float))


def real_only_means(long_df: pd.DataFrame, testsets: Sequence[str],
                    metrics: Sequence[str] = REPRODUCTION_METRICS) -> pd.DataFrame:
    """Per arch, test set and metric: the mean over seeds of the ``real`` policy's score (``arch, testset, metric,
    ours``), test sets in the given order (``data.testsets``), only those the benchmark has. A missing score (NaN:
    undefined for that seed) is left out of the mean; ``ours`` is NaN (kept as a row) when no seed has one."""
    real = long_df[(long_df["policy"] == "real") & long_df["metric"].isin(metrics) & long_df["testset"].isin(testsets)]
    means = real.groupby(["arch", "testset", "metric"], sort=False)["value"].mean().rename("ours").reset_index()
    order = {t: i for i, t in enumerate(testsets)}
    metric_order = {m: i for i, m in enumerate(metrics)}
    return means.sort_values(["arch", "testset", "metric"], key=lambda c: c.map(order) if c.name == "testset" else (
        c.map(metric_order) if c.name == "metric" else c), kind="stable").reset_index(drop=True)


def real_only_sizes(runs: pd.DataFrame) -> dict[str, int]:
    """``{arch: real images}`` its ``real`` runs trained on, from the runs table (``runs.csv``,
    :func:`hardgen.report.run_records.runs_table`: what each run recorded, not what the config asked for). A
    :class:`DataError` when one arch's real-only runs trained on different numbers of real images."""
    require_columns(runs, ["arch", "policy", "real_images"], "runs table (runs.csv)")
    sizes = {}
    for arch, group in runs[runs["policy"] == "real"].groupby("arch", sort=False):
        counts = sorted(int(n) for n in group["real_images"].unique())
        if len(counts) != 1:
            raise DataError(f"runs.csv: arch {arch!r}'s real-only runs trained on different numbers of real images "
                            f"{counts}; the reproduction check needs one")
        sizes[str(arch)] = counts[0]
    return sizes


def reproduction_table(
    long_df: pd.DataFrame,
    anchors: pd.DataFrame,
    published: Mapping[str, str | None],
    testsets: Sequence[str],
    n_real: Mapping[str, int],
    metrics: Sequence[str] = REPRODUCTION_METRICS,
) -> pd.DataFrame:
    """:data:`REPRODUCTION_COLUMNS` for every arch with a published model.

    ``long_df``: the benchmark's long table (:func:`hardgen.report.summary.benchmark_long`); ``anchors``:
    :func:`load_anchors`; ``published``: ``{arch: model or None}`` (``segment.archs.<arch>.published``);
    ``testsets``: ``data.testsets`` (row order); ``n_real``: ``{arch: real images its real-only runs trained on}``
    (:func:`real_only_sizes`). Rows: every test set the arch's real-only runs were scored on, in that order, per
    metric; ``published`` is NaN where the anchors lack that test set, ``ours`` where the arch's real-only score is
    undefined (:func:`real_only_means`); ``diff = ours − published`` like for like only: NaN when ``n_real`` differs
    from the model's ``published_n_train`` (never compared), or either side is NaN. ``selection``: the model's
    (:data:`SELECTIONS`). When every test set has an anchor, a last :data:`MEAN` row per metric compares the means
    over the test sets (the paper's headline form; ``ours`` NaN when one of them is). Raises :class:`DataError` when a
    named model is not in the anchors, or an arch with a published model has no real-only result or no ``n_real``.
    """
    if MEAN in testsets:
        raise DataError(f"data.testsets: a test set may not be called {MEAN!r} (the name of the mean rows)")
    ours = real_only_means(long_df, testsets, metrics)
    known = set(anchors["model"])
    rows = []
    for arch, model in published.items():
        if model is None:
            continue
        if model not in known:
            raise DataError(f"segment.archs.{arch}.published: {model!r} is not a model of the anchors file "
                            f"({', '.join(sorted(known))})")
        mine = ours[ours["arch"] == arch]
        if mine.empty:
            raise DataError(f"segment.archs.{arch}.published: arch {arch!r} has no real-only result to compare")
        if arch not in n_real:
            raise DataError(f"segment.archs.{arch}.published: arch {arch!r} has no run record of its real-only runs "
                            "(runs.csv: real_images) to say how many real images its baseline trained on")
        rows_of_model = anchors[anchors["model"] == model]
        values = rows_of_model.set_index(["testset", "metric"])["value"]
        size, selection = int(n_real[arch]), str(rows_of_model["selection"].iloc[0])
        n_train = int(rows_of_model["n_train"].iloc[0])
        like_for_like = size == n_train
        part = mine.assign(published=[values.get((t, m), np.nan) for t, m in zip(mine["testset"], mine["metric"])])
        part["diff"] = part["ours"] - part["published"] if like_for_like else np.nan
        for metric in metrics:
            per_metric = part[part["metric"] == metric]
            if len(per_metric) and per_metric["published"].notna().all():
                # NaN when the arch's own score is undefined on a test set: never a mean over fewer test sets than
                # the published one
                ours_mean = per_metric["ours"].mean(skipna=False)
                published_mean = per_metric["published"].mean()
                part = pd.concat([part, pd.DataFrame([{
                    "arch": arch, "testset": MEAN, "metric": metric, "ours": ours_mean, "published": published_mean,
                    "diff": ours_mean - published_mean if like_for_like else np.nan}])], ignore_index=True)
        rows.append(part.assign(n_real=size, published_n_train=n_train, selection=selection))
    if not rows:
        types = {"ours": float, "published": float, "diff": float, "n_real": int, "published_n_train": int}
        return pd.DataFrame({c: pd.Series(dtype=types.get(c, object)) for c in REPRODUCTION_COLUMNS})
    return pd.concat(rows, ignore_index=True)[REPRODUCTION_COLUMNS]


def like_for_like(table: pd.DataFrame) -> pd.Series:
    """Per row of :func:`reproduction_table`: whether its baseline trained on as many real images as the published
    model (``n_real == published_n_train``), the only rows ever compared."""
    return table["n_real"] == table["published_n_train"]


def reproduction_verdicts(table: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE,
                          metrics: Sequence[str] = REPRODUCTION_METRICS) -> pd.DataFrame:
    """Per arch: ``arch, n_testsets, mean_diff_<metric>, mean_abs_diff_<metric>, reproduces``.

    Over the like-for-like test sets (:func:`like_for_like`) with an anchor and a defined difference (the :data:`MEAN`
    rows excluded): the mean signed and absolute difference per metric (NaN when a metric has none);
    ``undefined_<metric>``: the anchored test sets left out because the arch's own score is undefined (NaN ``ours``);
    ``reproduces`` when every metric's mean |diff| is defined and at most ``tolerance`` (never without a like-for-like
    anchor: ``n_testsets`` 0).
    """
    if not tolerance > 0:
        raise ValueError(f"report.reproduce_tolerance: must be > 0, got {tolerance!r}")
    rows = []
    anchored = table[(table["testset"] != MEAN) & table["published"].notna() & table["metric"].isin(metrics)
                     & like_for_like(table)]
    per_testset = anchored[anchored["diff"].notna()]
    for arch in dict.fromkeys(table["arch"]):
        mine = per_testset[per_testset["arch"] == arch]
        row: dict[str, object] = {"arch": arch, "n_testsets": int(mine["testset"].nunique())}
        for metric in metrics:
            diffs = mine.loc[mine["metric"] == metric, "diff"]
            row[f"undefined_{metric}"] = int(((anchored["arch"] == arch) & (anchored["metric"] == metric)).sum()
                                             - len(diffs))
            row[f"mean_diff_{metric}"] = float(diffs.mean()) if len(diffs) else float("nan")
            row[f"mean_abs_diff_{metric}"] = float(diffs.abs().mean()) if len(diffs) else float("nan")
        row["reproduces"] = bool(row["n_testsets"]) and all(
            row[f"mean_abs_diff_{m}"] <= tolerance for m in metrics)  # NaN <= tolerance is False
        rows.append(row)
    return pd.DataFrame(rows)


def reproduction_sentences(
    table: pd.DataFrame,
    published: Mapping[str, str | None],
    tolerance: float = DEFAULT_TOLERANCE,
    metrics: Sequence[str] = REPRODUCTION_METRICS,
) -> list[str]:
    """One plain sentence per arch of ``published`` (in its order), e.g.

    ``cnn's real-only baseline misses PraNet's published mDice / mIoU by −0.512 / −0.478 on average over 5 test
    sets (mean |diff| 0.512 / 0.478; "reproduces" means at most 0.020 for each).``
    Arches without a published model, or whose test sets have no anchor, get a sentence saying so; so does an arch
    whose own real-only score is undefined (NaN) on every anchored test set of a metric, and a sentence notes the
    anchored test sets left out for an undefined score. An arch whose baseline trained on another number of real
    images than its published model (``n_real`` ≠ ``published_n_train``) is never judged: its sentence says there is
    no like-for-like comparison. A published checkpoint selected on the test sets (``selection`` ``best_on_test``), or
    one whose selection is unknown, is named as such in its arch's sentence.
    """
    verdicts = reproduction_verdicts(table, tolerance, metrics).set_index("arch") if len(table) else pd.DataFrame()
    names = " / ".join(metrics)
    sentences = []
    for arch, model in published.items():
        if model is None:
            sentences.append(f"{arch}'s real-only baseline has no published anchor "
                             f"(segment.archs.{arch}.published is null), so it is not checked against one.")
            continue
        mine = table[table["arch"] == arch]
        note = _selection_note(model, str(mine["selection"].iloc[0])) if len(mine) else ""
        if len(mine) and not like_for_like(mine).iloc[0]:
            sentences.append(
                f"{arch}'s real-only baseline trained on {int(mine['n_real'].iloc[0]):,} real images and {model}'s "
                f"published numbers on {int(mine['published_n_train'].iloc[0]):,}: no like-for-like comparison, so "
                f"it is not checked against them{note}.")
            continue
        undefined = (0 if arch not in verdicts.index
                     else int(sum(verdicts.at[arch, f"undefined_{m}"] for m in metrics)))
        if arch not in verdicts.index or (verdicts.at[arch, "n_testsets"] == 0 and undefined == 0):
            sentences.append(f"{arch}'s real-only baseline cannot be checked against {model}: the anchors file has "
                             f"none of its test sets{note}.")
            continue
        row = verdicts.loc[arch]
        n = int(row["n_testsets"])
        left_out = (f" ({undefined} anchored test-set score{'s' if undefined != 1 else ''} left out: undefined for "
                    "this arch)" if undefined else "")
        missing = [m for m in metrics if pd.isna(row[f"mean_diff_{m}"]) and row[f"undefined_{m}"]]
        if missing:
            sentences.append(f"{arch}'s real-only baseline cannot be checked against {model} on {' / '.join(missing)}: "
                             f"its own score is undefined (NaN) on every anchored test set{left_out}{note}.")
            continue
        signed = " / ".join(f"{row[f'mean_diff_{m}']:+.3f}" for m in metrics)
        absolute = " / ".join(f"{row[f'mean_abs_diff_{m}']:.3f}" for m in metrics)
        verb = "reproduces" if row["reproduces"] else "misses"
        sentences.append(
            f"{arch}'s real-only baseline {verb} {model}'s published {names} by {signed} on average over {n} test "
            f"set{'s' if n != 1 else ''} (mean |diff| {absolute}; \"reproduces\" means at most {tolerance:.3f} "
            f"for each){left_out}{note}.")
    return sentences


def _selection_note(model: str, selection: str) -> str:
    """What a sentence adds for a published checkpoint that is not the final one (``selection``, :data:`SELECTIONS`):
    nothing for ``final``."""
    if selection == "best_on_test":
        return (f" ({model}'s published numbers come from the checkpoint with the best test score: selected on the "
                "test sets; hardgen evaluates the final weights and never selects on test)")
    if selection == "unknown":
        return f" (which checkpoint {model}'s published numbers come from is not known)"
    return ""


def published_means(anchors: pd.DataFrame, testsets: Sequence[str],
                    metrics: Sequence[str] = REPRODUCTION_METRICS) -> pd.DataFrame:
    """Per model with a value on every test set of ``testsets`` for a metric: its mean over them (``model, metric,
    mean``). For the anchors table of the report."""
    rows = []
    per_testset = anchors[anchors["testset"].isin(testsets)]
    for (model, metric), group in per_testset.groupby(["model", "metric"], sort=False):
        if metric in metrics and set(group["testset"]) == set(testsets):
            rows.append({"model": model, "metric": metric, "mean": float(group["value"].mean())})
    return pd.DataFrame(rows, columns=["model", "metric", "mean"])
