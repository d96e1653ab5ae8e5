"""Benchmark outputs: the results and summary tables, the Markdown report and the plots.

`results` has one row per scenario, target, method and seed. `summary` has the mean and
standard deviation of every metric per scenario and method, over targets and seeds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from megu_core.artifacts import atomic_write_bytes, schema_for, write_table
from megu_core.benchmark import published
from megu_core.benchmark.plan import BenchmarkCell
from megu_core.benchmark.plots import forget_retain_plot, gap_plot

log = logging.getLogger(__name__)

METRICS = (
    "forget_accuracy",
    "retain_accuracy",
    "test_accuracy",
    "test_forgotten_accuracy",
    "test_retained_accuracy",
    "mia_entropy",
    "mia_confidence",
)
GAP_METRICS = tuple(f"gap_{name}" for name in METRICS)
TIME_METRICS = ("seconds", "retrain_seconds", "time_ratio")
SUMMARY_METRICS = (*METRICS, *GAP_METRICS, "avg_gap", *TIME_METRICS)

# Columns of the Markdown table: (summary metric, header, decimals).
TABLE_COLUMNS = (
    ("forget_accuracy", "forget acc (%)", 2),
    ("retain_accuracy", "retain acc (%)", 2),
    ("test_accuracy", "test acc (%)", 2),
    ("test_forgotten_accuracy", "test acc, forgotten (%)", 2),
    ("test_retained_accuracy", "test acc, retained (%)", 2),
    ("mia_entropy", "MIA entropy", 3),
    ("mia_confidence", "MIA confidence (%)", 2),
    ("avg_gap", "Avg. Gap", 2),
    ("seconds", "seconds", 1),
    ("time_ratio", "time / gold retrain", 3),
)
REFERENCE_ORDER = ("retrain", "retrain_head", "original")  # listed first, in this order
NOT_RANKED = ("retrain", "original")


def result_row(
    cell: BenchmarkCell,
    method: str,
    metrics: Mapping[str, float] | None,
    seconds: float | None,
    retrain_seconds: float | None,
    num_forget: int | None,
    status: str = "ok",
    error: str | None = None,
    changed_fraction: float | None = None,
) -> dict[str, Any]:
    """Build one results row: identity columns, metrics (null when absent), time and its ratio to the retrain.

    `changed_fraction` is the share of the original's parameter entries that the method changed.
    """
    metrics = dict(metrics or {})
    if method == "retrain" and metrics:
        metrics.update({name: 0.0 for name in (*GAP_METRICS, "avg_gap")})  # the reference itself
    ratio = None
    if seconds is not None and retrain_seconds:
        ratio = seconds / retrain_seconds
    row = {
        "scenario": cell.scenario.id,
        "dataset": cell.scenario.dataset,
        "target": cell.target,
        "forget_request": cell.forget,
        "num_forget": num_forget,
        "method": method,
        "seed": cell.seed,
        "status": status,
        "error": error,
        **{name: metrics.get(name) for name in (*METRICS, *GAP_METRICS, "avg_gap")},
        "seconds": seconds,
        "retrain_seconds": retrain_seconds,
        "time_ratio": ratio,
        "changed_fraction": changed_fraction,
        "preset": cell.base["preset"],
        "base_width": cell.base["model"]["base_width"],
    }
    return row


def results_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Build the results table in its declared column order, with NaN for missing numbers."""
    columns = schema_for("benchmark_results").names
    frame = pd.DataFrame(list(rows), columns=columns)
    numeric = [*METRICS, *GAP_METRICS, "avg_gap", *TIME_METRICS, "changed_fraction"]
    frame[numeric] = frame[numeric].astype("float64")
    frame["num_forget"] = frame["num_forget"].astype("Int64")
    frame["seed"] = frame["seed"].astype("int64")
    frame["base_width"] = frame["base_width"].astype("int64")
    return frame


def summary_frame(results: pd.DataFrame) -> pd.DataFrame:
    """Compute the mean, sample standard deviation and run count per scenario, method and metric."""
    ok = results[results["status"] == "ok"]
    records = []
    pairs = results[["scenario", "method"]].drop_duplicates().itertuples(index=False)
    for scenario, method in pairs:
        runs = ok[(ok["scenario"] == scenario) & (ok["method"] == method)]
        for metric in SUMMARY_METRICS:
            values = runs[metric].dropna()
            records.append(
                {
                    "scenario": scenario,
                    "method": method,
                    "metric": metric,
                    "mean": float(values.mean()) if len(values) else math.nan,
                    "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                    "runs": int(len(values)),
                }
            )
    return pd.DataFrame(records, columns=schema_for("benchmark_summary").names)


def summary_table(summary: pd.DataFrame, scenario: str) -> pd.DataFrame:
    """Pivot one scenario's summary to a wide table: rows are methods, columns (metric, mean|std)."""
    part = summary[summary["scenario"] == scenario]
    wide = part.pivot_table(index="method", columns="metric", values=["mean", "std"], dropna=False)
    return wide.swaplevel(axis=1).sort_index(axis=1)


def method_order(summary: pd.DataFrame, scenario: str) -> list[str]:
    """Order the methods: references first (gold retrain, head reset, original), then by mean Avg. Gap."""
    part = summary[(summary["scenario"] == scenario) & (summary["metric"] == "avg_gap")]
    gaps = dict(zip(part["method"], part["mean"], strict=True))
    references = [name for name in REFERENCE_ORDER if name in gaps]
    others = sorted(
        (name for name in gaps if name not in REFERENCE_ORDER),
        key=lambda name: (math.isnan(gaps[name]), gaps[name], name),
    )
    return references + others


def ranking(summary: pd.DataFrame, scenario: str) -> list[tuple[str, float]]:
    """Rank unlearning methods (and the head-reset retrain) by mean Avg. Gap, closest to the gold retrain first."""
    part = summary[(summary["scenario"] == scenario) & (summary["metric"] == "avg_gap")]
    ranked = [
        (method, float(mean))
        for method, mean in zip(part["method"], part["mean"], strict=True)
        if method not in NOT_RANKED and not math.isnan(mean)
    ]
    return sorted(ranked, key=lambda item: (item[1], item[0]))


def _cell_text(mean: float, std: float, decimals: int) -> str:
    if mean is None or math.isnan(mean):
        return "-"
    text = f"{mean:.{decimals}f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std:.{decimals}f}"
    return text


def scenario_markdown(results: pd.DataFrame, summary: pd.DataFrame, scenario: str) -> str:
    """Render the section of one scenario: its table, the ranking and notes on skipped or failed runs."""
    runs = results[results["scenario"] == scenario]
    targets = ", ".join(dict.fromkeys(runs["target"]))
    seeds = ", ".join(str(seed) for seed in sorted(set(runs["seed"])))
    first = runs.iloc[0]
    lines = [
        f"## {scenario}",
        "",
        f"Dataset `{first['dataset']}`, targets: {targets}; seeds: {seeds}; preset "
        f"`{first['preset']}` (ResNet-18 base width {first['base_width']}). Mean ± standard "
        "deviation over targets and seeds; gaps are to the gold retrain of the same seed.",
        "",
        "| method | " + " | ".join(header for _, header, _ in TABLE_COLUMNS) + " |",
        "| --- |" + " ---: |" * len(TABLE_COLUMNS),
    ]
    table = summary_table(summary, scenario)
    for method in method_order(summary, scenario):
        cells = [
            _cell_text(
                table.loc[method, (metric, "mean")], table.loc[method, (metric, "std")], digits
            )
            for metric, _, digits in TABLE_COLUMNS
        ]
        name = "retrain (gold)" if method == "retrain" else method
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    ranked = ranking(summary, scenario)
    if ranked:
        order = ", ".join(f"{i}. {name} ({gap:.2f})" for i, (name, gap) in enumerate(ranked, 1))
        lines += ["", f"Ranking by Avg. Gap (lower is closer to the gold retrain): {order}."]
        position = [name for name, _ in ranked]
        if "megu" in position:
            lines.append(f"MeGU ranks {position.index('megu') + 1} of {len(position)}.")

    unchanged = _unchanged_runs(runs)
    if unchanged:
        lines += ["", f"Changed no weight of the original model: {', '.join(unchanged)}."]

    problems = runs[runs["status"] != "ok"]
    if len(problems):
        lines += ["", "Runs without results:"]
        for _, row in problems.drop_duplicates(["method", "status", "error"]).iterrows():
            lines.append(f"- {row['method']} ({row['status']}): {row['error']}")
    return "\n".join(lines)


def _unchanged_runs(runs: pd.DataFrame) -> list[str]:
    """Name the methods whose every run changed no weight, or the target and seed of each such run."""
    ok = runs[runs["status"] == "ok"]
    entries = []
    for method, part in ok.groupby("method", sort=False):
        same = part[part["changed_fraction"] == 0.0]
        if len(same) == len(part):
            entries.append(f"{method} (every run, so its row repeats the original's)")
        else:
            entries += [f"{method} (target {r.target}, seed {r.seed})" for r in same.itertuples()]
    return entries


def _mean(
    results: pd.DataFrame, scenario: str, method: str, metric: str, target: str | None = None
):
    rows = results[
        (results["scenario"] == scenario)
        & (results["method"] == method)
        & (results["status"] == "ok")
    ]
    if target is not None:
        rows = rows[rows["target"] == target]
    values = rows[metric].dropna()
    return float(values.mean()) if len(values) else None


def _number(value: float | None, decimals: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{decimals}f}"


def salun_comparison(results: pd.DataFrame) -> str | None:
    """Render SalUn's 10% random-forgetting table beside ours (UA = 100 - forget accuracy)."""
    scenario, target = published.SALUN_SCENARIO
    if not ((results["scenario"] == scenario) & (results["target"] == target)).any():
        return None
    lines = [
        f"### Published: SalUn, CIFAR-10 ResNet-18, 10% random forgetting (ours: {scenario}, {target})",
        "",
        "| method | UA published | UA ours | RA published | RA ours | TA published | TA ours "
        "| MIA-Efficacy published | MIA-Efficacy ours | Avg. Gap published | Avg. Gap ours |",
        "| --- |" + " ---: |" * 10,
    ]
    for row in published.SALUN_C10_RANDOM_10:
        ours = {}
        if row.method is not None:
            forget = _mean(results, scenario, row.method, "forget_accuracy", target)
            ours = {
                "ua": None if forget is None else 100.0 - forget,
                "ra": _mean(results, scenario, row.method, "retain_accuracy", target),
                "ta": _mean(results, scenario, row.method, "test_accuracy", target),
                "mia": _mean(results, scenario, row.method, "mia_confidence", target),
                "gap": _mean(results, scenario, row.method, "avg_gap", target),
            }
        cells = [
            _number(row.unlearning_accuracy),
            _number(ours.get("ua")),
            _number(row.retain_accuracy),
            _number(ours.get("ra")),
            _number(row.test_accuracy),
            _number(ours.get("ta")),
            _number(row.mia_efficacy),
            _number(ours.get("mia")),
            _number(row.avg_gap),
            _number(ours.get("gap")),
        ]
        label = row.label if row.method is None else f"{row.label} (`{row.method}`)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def megu_comparison(results: pd.DataFrame) -> str | None:
    """Render MeGU's published class-wise claims beside the same quantities measured here."""
    scenario = published.MEGU_SCENARIO
    if not ((results["scenario"] == scenario) & (results["method"] == "megu")).any():
        return None
    retain_gap = _mean(results, scenario, "megu", "gap_retain_accuracy")
    ratio = _mean(results, scenario, "megu", "time_ratio")
    lines = [
        f"### Published: MeGU, class-wise unlearning (ours: {scenario})",
        "",
        "| claim | published | ours |",
        "| --- | ---: | ---: |",
        f"| retain accuracy gap to the retrained model (points) | within {published.MEGU_RETAIN_GAP} "
        f"| {_number(retain_gap)} |",
    ]
    megu_mia = _mean(results, scenario, "megu", "mia_entropy")
    for baseline, claim in published.MEGU_MIA_REDUCTION.items():
        other = _mean(results, scenario, baseline, "mia_entropy")
        ours = None
        if other and megu_mia is not None:
            ours = 100.0 * (other - megu_mia) / other
        lines.append(
            f"| MIA (entropy) lower than {baseline} (%) | up to {claim} | {_number(ours, 1)} |"
        )
    saving = None if ratio is None else 100.0 * (1.0 - ratio)
    lines.append(
        f"| less time than retraining (%) | over {published.MEGU_TIME_SAVING} | {_number(saving, 1)} |"
    )
    return "\n".join(lines)


def ssd_comparison(results: pd.DataFrame) -> str | None:
    """Render SSD's head-reset and full retrain retain accuracies on CIFAR-20 vehicles 2 beside ours."""
    scenario, target = published.SSD_SCENARIO
    if not ((results["scenario"] == scenario) & (results["target"] == target)).any():
        return None
    low, high = published.SSD_FULL_RETRAIN_RETAIN
    head = _mean(results, scenario, "retrain_head", "retain_accuracy", target)
    gold = _mean(results, scenario, "retrain", "retain_accuracy", target)
    return "\n".join(
        [
            f"### Published: SSD, CIFAR-20 vehicles 2 (ours: {scenario}, {target})",
            "",
            "| model | published retain acc (%) | ours |",
            "| --- | ---: | ---: |",
            f"| head-reset retrain (`retrain_head`) | {published.SSD_HEAD_RESET_RETAIN} | {_number(head)} |",
            f"| full retrain (`retrain`) | {low:g} to {high:g} | {_number(gold)} |",
        ]
    )


def markdown_report(results: pd.DataFrame, summary: pd.DataFrame, title: str) -> str:
    """Render the whole report: one section per scenario, then the published figures beside ours."""
    lines = [f"# {title}", ""]
    for scenario in dict.fromkeys(results["scenario"]):
        lines += [scenario_markdown(results, summary, scenario), ""]
    comparisons = [salun_comparison(results), megu_comparison(results), ssd_comparison(results)]
    comparisons = [section for section in comparisons if section]
    if comparisons:
        lines += [
            "## Published figures beside ours",
            "",
            "The published numbers come from a width-64 ResNet-18 with the authors' schedules; "
            "ours from the preset named in each section above.",
            "",
        ]
        for section in comparisons:
            lines += [section, ""]
    return "\n".join(lines).rstrip() + "\n"


def write_outputs(rows: Sequence[Mapping[str, Any]], out_dir: Path, title: str) -> dict[str, Path]:
    """Write results.parquet, summary.parquet, report.md and the two PNG plots to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = results_frame(rows)
    summary = summary_frame(results)

    paths = {
        "results": out_dir / "results.parquet",
        "summary": out_dir / "summary.parquet",
        "report": out_dir / "report.md",
        "gap_plot": out_dir / "avg_gap.png",
        "forget_retain_plot": out_dir / "forget_vs_retain.png",
    }
    write_table(results, paths["results"], "benchmark_results")
    write_table(summary, paths["summary"], "benchmark_summary")
    atomic_write_bytes(paths["report"], markdown_report(results, summary, title).encode())
    gap_plot(summary, paths["gap_plot"])
    forget_retain_plot(summary, paths["forget_retain_plot"])
    log.info("benchmark outputs written to %s", out_dir)
    return paths


def headline_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """Flatten the mean metrics per scenario and method into MLflow metric names, dropping NaN."""
    wanted = (
        "forget_accuracy",
        "retain_accuracy",
        "test_accuracy",
        "mia_entropy",
        "mia_confidence",
        "avg_gap",
        "time_ratio",
    )
    part = summary[summary["metric"].isin(wanted)]
    metrics = {}
    for row in part.itertuples(index=False):
        if not np.isnan(row.mean):
            metrics[f"{row.scenario}/{row.method}/{row.metric}"] = float(row.mean)
    return metrics
