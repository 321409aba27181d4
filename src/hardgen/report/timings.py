"""Per-rule wall-clock times of a run, from the Snakemake ``benchmark:`` files (``results/benchmarks/``).

Every rule writes ``results/benchmarks/<rule>[/<wildcards...>].tsv`` (Snakemake's columns ``s``, ``max_rss``,
``cpu_time``, ...). :func:`timings_table` gathers them into one table; :func:`plot_timings` shows where the
time goes, per rule. These are measurements of the machine the run used, not results: on a shared or
loaded machine they say little.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from hardgen.core.io import DataError, read_csv_table
from hardgen.report.tables import save_figure

TIMING_COLUMNS = ["rule", "job", "s", "cpu_time_s", "max_rss_mb"]


def timings_table(job_times_dir: str | Path, exclude: tuple[str, ...] = ("report",)) -> pd.DataFrame:
    """One row per job-time file (Snakemake's ``benchmark:`` file of one job, under ``job_times_dir``, the run's
    ``benchmarks/`` folder): ``rule`` (first path part), ``job`` (the rest: wildcards), ``s`` (wall-clock seconds),
    ``cpu_time_s``, ``max_rss_mb``; sorted by rule then job. ``exclude``: rules left out (the report cannot time
    itself while it runs)."""
    root = Path(job_times_dir)
    if not root.is_dir():
        raise DataError(f"{root}: benchmark folder not found")
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[0] in exclude:
            continue
        frame = read_csv_table(path, ("s", "max_rss", "cpu_time"), "Snakemake benchmark file", sep="\t")
        if frame.empty:
            raise DataError(f"{path}: Snakemake benchmark file has no rows")
        last = frame.iloc[-1]  # a rerun with --benchmark-repeats appends rows; the latest counts
        rows.append({"rule": parts[0], "job": "/".join(parts[1:]), "s": float(last["s"]),
                     "cpu_time_s": pd.to_numeric(last["cpu_time"], errors="coerce"),
                     "max_rss_mb": pd.to_numeric(last["max_rss"], errors="coerce")})
    return pd.DataFrame(rows, columns=TIMING_COLUMNS).sort_values(["rule", "job"]).reset_index(drop=True)


def plot_timings(table: pd.DataFrame, out_png: str | Path) -> None:
    """Horizontal bars: total wall-clock seconds per rule (sum over its jobs), job count in the label."""
    if table.empty:
        raise DataError(f"{out_png}: no timings to plot")
    per_rule = table.groupby("rule")["s"].agg(["sum", "count"]).sort_values("sum")
    figure = Figure(figsize=(6.0, 0.3 * len(per_rule) + 1.2))
    ax = figure.subplots()
    ax.barh([f"{rule} ({int(n)})" for rule, n in zip(per_rule.index, per_rule["count"])], per_rule["sum"])
    ax.set_xlabel("wall-clock seconds, summed over the rule's jobs (jobs)")
    ax.set_title(f"{table['s'].sum():.0f} s of job time in {len(table)} jobs", fontsize=9)
    save_figure(figure, out_png)


#: Columns of :func:`variant_cost` (the issue's four, then what the training figure sums, then whether the row is
#: defined: ``status`` ``ok`` or ``undefined``, ``reason`` naming the missing benchmark file).
VARIANT_COST_COLUMNS = ["variant", "training_s", "generation_s", "total_s", "fine_tuning_s", "training_rules",
                        "status", "reason"]
#: The LoRA every variant starts from (or, for variants that train nothing of their own, generates with).
PLAIN_LORA_RULE = "train_control_lora"


def variant_cost(table: pd.DataFrame, variants: list[str], judge_job: str | None = None) -> pd.DataFrame:
    """What each generated variant cost to make, from :func:`timings_table`: one row per variant.

    ``training_s``: the plain Control-LoRA (``train_control_lora``) plus the variant's own fine-tuning rule
    ``train_<variant>_lora`` when it has one (hard, feedback), and for ``feedback`` its real-only judge
    (``train_judge`` job ``judge_job``, e.g. ``cnn/seed-0``), which exists only to steer it. A variant without a
    training rule of its own costs that of the LoRA it samples (mined, guided, inpaint: the plain LoRA alone;
    hard_inpaint: the hard one's).
    ``generation_s``: its ``generate/<variant>/shard-*`` jobs summed. ``fine_tuning_s`` = training beyond the plain
    LoRA, so a variant that spends its extra effort at generation (mined) compares with one that spends it in
    fine-tuning (hard) on the same row layout. ``training_rules`` lists the jobs summed. Seconds are wall-clock on
    the machine of this run.

    A job whose benchmark file is absent (it ran outside this results folder, e.g. outputs restored from another
    run) leaves the figures it enters undefined: NaN, ``status`` ``undefined`` and a ``reason`` naming the missing
    file; the other figures of the row are kept. A variant with a judge but no ``judge_job`` is a ``ValueError``.
    """
    seconds = {(rule, job): s for rule, job, s in zip(table["rule"], table["job"], table["s"])}
    from hardgen.core.registry import variant as registered

    rows = []
    for variant in variants:
        jobs = [(PLAIN_LORA_RULE, "")]
        # the registry names the training rule of the LoRA each variant samples (its own, or plain's, or hard's)
        lora = registered(registered(variant).lora)
        own = lora.rule
        if own not in (None, PLAIN_LORA_RULE):
            jobs.append((own, ""))
        if lora.judge:
            if judge_job is None:
                raise ValueError(f"variant_cost: the {variant} variant is steered by a judge; pass its judge_job")
            jobs.append(("train_judge", judge_job))
        missing = [f"{'/'.join(p for p in j if p)}.tsv" for j in jobs if j not in seconds]
        generation = table[(table["rule"] == "generate") & table["job"].str.startswith(f"{variant}/")]
        if generation.empty:
            missing.append(f"generate/{variant}/shard-*.tsv")
        training = float(sum(seconds[j] for j in jobs)) if all(j in seconds for j in jobs) else float("nan")
        generated = float(generation["s"].sum()) if not generation.empty else float("nan")
        plain = seconds.get((PLAIN_LORA_RULE, ""), float("nan"))
        rows.append({"variant": variant, "training_s": training, "generation_s": generated,
                     "total_s": training + generated, "fine_tuning_s": training - plain,
                     "training_rules": " + ".join("/".join(p for p in j if p) for j in jobs),
                     "status": "undefined" if missing else "ok",
                     "reason": f"no benchmark file {', '.join(missing)} in the run's benchmarks folder"
                     if missing else ""})
    return pd.DataFrame(rows, columns=VARIANT_COST_COLUMNS)
