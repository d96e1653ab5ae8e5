"""Results rows, the summary, the Markdown report with published figures, and the output files."""

from __future__ import annotations

import math

import pytest

from megu_core.artifacts import read_frame
from megu_core.benchmark import plan_benchmark
from megu_core.benchmark.plots import label_groups
from megu_core.benchmark.report import (
    markdown_report,
    ranking,
    result_row,
    results_frame,
    summary_frame,
    write_outputs,
)


def _metrics(forget, retain, test, mia_entropy, mia_confidence, avg_gap=None):
    values = {
        "forget_accuracy": forget,
        "retain_accuracy": retain,
        "test_accuracy": test,
        "mia_entropy": mia_entropy,
        "mia_confidence": mia_confidence,
    }
    if avg_gap is not None:
        values["avg_gap"] = avg_gap
    return values


@pytest.fixture(scope="module")
def cells():
    random_cells = plan_benchmark(["c10-random"], ["10%"], ["salun", "finetune"], [0, 1], "cpu")
    class_cells = plan_benchmark(["c10-class"], ["cat"], ["megu", "ssd", "unsir"], [0], "cpu")
    return random_cells + class_cells


@pytest.fixture(scope="module")
def rows(cells):
    random0, random1, cat = cells
    rows = []
    # SalUn changed weights with seed 0 and none with seed 1.
    for cell, salun_gap, salun_changed in ((random0, 1.0, 0.5), (random1, 2.0, 0.0)):
        rows += [
            result_row(cell, "retrain", _metrics(95, 100, 94, 0.5, 12), 100.0, 100.0, 5000),
            result_row(cell, "original", _metrics(100, 100, 95, 0.9, 1, 10.0), None, 100.0, 5000),
            result_row(
                cell,
                "salun",
                _metrics(97, 99, 93, 0.6, 14, salun_gap),
                10.0,
                100.0,
                5000,
                changed_fraction=salun_changed,
            ),
            result_row(
                cell, "finetune", None, None, 100.0, 5000, "failed", "FloatingPointError: nan"
            ),
        ]
    rows += [
        result_row(cat, "retrain", _metrics(0, 93, 80, 0.2, 100), 800.0, 800.0, 5000),
        result_row(cat, "original", _metrics(80, 91, 86, 0.3, 60, 20.0), None, 800.0, 5000),
        result_row(
            cat,
            "megu",
            _metrics(0, 92.8, 79, 0.06, 100, 0.5),
            32.0,
            800.0,
            5000,
            changed_fraction=0.6,
        ),
        result_row(
            cat,
            "ssd",
            _metrics(0, 90, 77, 0.12, 100, 1.5),
            40.0,
            800.0,
            5000,
            changed_fraction=0.0,
        ),
        result_row(cat, "unsir", _metrics(5, 88, 75, 0.1, 99, 2.5), 20.0, 800.0, 5000),
    ]
    return rows


def test_result_row_ratio_and_reference_gaps(rows):
    retrain, salun = rows[0], rows[2]

    assert retrain["avg_gap"] == 0.0
    assert retrain["gap_forget_accuracy"] == 0.0
    assert retrain["time_ratio"] == 1.0
    assert salun["time_ratio"] == pytest.approx(0.1)
    assert rows[1]["time_ratio"] is None  # the original's training is not an unlearning step


def test_summary_mean_and_std_over_seeds(rows):
    summary = summary_frame(results_frame(rows)).set_index(["scenario", "method", "metric"])

    salun = summary.loc[("c10-random", "salun", "avg_gap")]
    assert salun["mean"] == pytest.approx(1.5)
    assert salun["std"] == pytest.approx(math.sqrt(0.5))
    assert salun["runs"] == 2
    failed = summary.loc[("c10-random", "finetune", "avg_gap")]
    assert failed["runs"] == 0
    assert math.isnan(failed["mean"])


def test_ranking_excludes_references(rows):
    summary = summary_frame(results_frame(rows))

    assert ranking(summary, "c10-class") == [("megu", 0.5), ("ssd", 1.5), ("unsir", 2.5)]


def test_report_has_tables_ranking_and_published_figures(rows):
    results = results_frame(rows)
    report = markdown_report(results, summary_frame(results), "test")

    assert "## c10-random" in report
    assert "| retrain (gold) |" in report
    assert "MeGU ranks 1 of 3." in report
    assert "finetune (failed): FloatingPointError: nan" in report
    # SalUn: published UA 2.85 beside ours, 100 - 97 = 3.00.
    assert "| SalUn (`salun`) | 2.85 | 3.00 |" in report
    # MeGU: MIA (entropy) 0.06 against SSD's 0.12 is 50% lower.
    assert "| MIA (entropy) lower than ssd (%) | up to 49.0 | 50.0 |" in report
    assert "| less time than retraining (%) | over 59.0 | 96.0 |" in report


def test_report_names_methods_that_changed_nothing(rows):
    results = results_frame(rows)
    report = markdown_report(results, summary_frame(results), "test")

    assert "Changed no weight of the original model: ssd (every run" in report
    assert "Changed no weight of the original model: salun (target 10%, seed 1)." in report
    assert report.count("Changed no weight") == 2


def test_outputs_are_written_with_schemas(rows, tmp_path):
    paths = write_outputs(rows, tmp_path / "out", "test")

    results = read_frame(paths["results"], "benchmark_results")
    summary = read_frame(paths["summary"], "benchmark_summary")
    assert len(results) == len(rows)
    assert results.loc[results["method"] == "ssd", "changed_fraction"].tolist() == [0.0]
    assert results.loc[results["method"] == "salun", "changed_fraction"].tolist() == [0.5, 0.0]
    assert set(summary["scenario"]) == {"c10-random", "c10-class"}
    for name in ("gap_plot", "forget_retain_plot"):
        assert paths[name].read_bytes()[:4] == b"\x89PNG", name
    assert paths["report"].read_text().startswith("# test")


def test_label_groups_join_methods_at_one_point():
    points = {
        "original": (77.4, 91.4),
        "ssd": (77.4, 91.4),
        "megu": (0.0, 92.2),
        "scrub": (32.0, 92.6),
    }

    groups = label_groups(points)

    assert groups == [["original", "ssd"], ["megu"], ["scrub"]]
