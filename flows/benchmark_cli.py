"""The `megu benchmark` command: run the benchmark flow and print its report."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from megu_core.benchmark.plan import plan_benchmark
from megu_core.benchmark.scenarios import KINDS, SCENARIOS
from megu_core.config import parse_override
from megu_core.devices import resolve_device
from megu_core.errors import ConfigError

RUNNER_CHOICES = ("sequential", "dask")


def add_benchmark_command(commands: argparse._SubParsersAction) -> None:
    """Add `megu benchmark` to the command line's subcommands."""
    parser = commands.add_parser(
        "benchmark",
        help="compare unlearning methods with the gold retrain over scenarios, targets and seeds",
    )
    parser.add_argument(
        "--scenario",
        nargs="+",
        help=f"scenario ids: {', '.join(SCENARIOS)} (default: c10-class, or all of them with CUDA)",
    )

    parser.add_argument(
        "--dataset",
        type=Path,
        help="benchmark a local dataset folder instead of the scenario table; needs --kind and --targets",
    )
    parser.add_argument(
        "--kind", choices=KINDS, help="what --dataset forgets: class, subclass or random"
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        help="targets of every scenario: class or fine class names, or counts (83) and "
        "percentages (10%%) for random scenarios (default: each scenario's own)",
    )

    parser.add_argument(
        "--methods", nargs="+", default=["all"], help="registered methods, or all (default)"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="seeds (default: 0, or 0 1 2 with CUDA)"
    )

    parser.add_argument(
        "--preset", default="cpu", help="cpu (width 16, 15 epochs), reference (width 64) or tiny"
    )
    parser.add_argument(
        "--runner",
        choices=RUNNER_CHOICES,
        default="sequential",
        help="task runner of the grid: sequential, or dask (a local cluster of 2 processes)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pipeline setting (budget.epochs=1) or a method hyperparameter (scrub.lr=0.001); repeatable",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.set_defaults(handler=run_benchmark)


def grid_defaults(gpu: bool) -> tuple[list[str], list[int]]:
    """Return the scenarios and seeds used when none are given: the full grid on a GPU."""
    if gpu:
        return list(SCENARIOS), [0, 1, 2]
    return ["c10-class"], [0]


def benchmark_scenarios(args: argparse.Namespace, default: list[str] | None = None) -> list:
    """Return the scenario ids of --scenario (else `default`), or a custom scenario from --dataset.

    A custom scenario needs --kind and --targets as well.
    """
    if args.dataset is None:
        return list(args.scenario or default or ["c10-class"])
    if args.kind is None or not args.targets:
        raise ConfigError("--dataset needs --kind (class, subclass or random) and --targets")
    name = re.sub(r"[^a-z0-9]+", "-", args.dataset.name.lower()).strip("-") or "custom"
    return [
        {
            "id": f"{name}-{args.kind}",
            "dataset": str(args.dataset),
            "kind": args.kind,
            "targets": list(args.targets),
        }
    ]


def run_benchmark(args: argparse.Namespace) -> int:
    """Run the benchmark flow and print the report and the paths of its outputs."""
    from flows.benchmark import benchmark_flow

    overrides = dict(parse_override(text) for text in args.overrides)
    overrides["device"] = args.device
    default_scenarios, default_seeds = grid_defaults(resolve_device(args.device).type == "cuda")
    grid = dict(
        scenarios=benchmark_scenarios(args, default_scenarios),
        targets=args.targets,
        methods=args.methods,
        seeds=args.seeds or default_seeds,
        preset=args.preset,
        overrides=overrides,
    )

    # Resolve every configuration of the grid first, so a bad setting is reported in one line
    # before Prefect starts a flow run for it.
    plan_benchmark(**grid)
    result = benchmark_flow(**grid, runner=args.runner)
    print(result["report"])
    print(f"outputs in {result['out_dir']}; MLflow run {result['mlflow_run_id']}")
    return 0
