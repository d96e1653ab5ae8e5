"""`megu concepts`: oracle scores and the transition matrix of a forget request, nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from megu_core.artifacts import read_frame
from megu_core.checkpoint import read_checkpoint_config
from megu_core.config import DataConfig, parse_override
from megu_core.forget import SYNTAX
from megu_core.megu.config import ORACLE_KINDS
from megu_core.pipeline.common import StageOutput
from megu_core.stage_cache import megu_home


def add_concepts_command(commands: argparse._SubParsersAction) -> None:
    """Add `concepts` to the `megu` subcommands."""
    concepts = commands.add_parser(
        "concepts",
        help="score a forget request's target concepts with the oracle and write the transition "
        "matrix, without running the pipeline",
    )
    concepts.add_argument("--forget", required=True, help=SYNTAX)
    concepts.add_argument(
        "--model",
        type=Path,
        help="checkpoint folder of the original model; MLLM oracles need it to pick the "
        "exemplars, and its dataset is the default",
    )
    concepts.add_argument(
        "--dataset", help="dataset of the forget request (default: the model's, else cifar10)"
    )
    concepts.add_argument(
        "--oracle", choices=ORACLE_KINDS, help="concept oracle (default: oracle.kind, text)"
    )
    concepts.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a configuration value, e.g. oracle.prompt_style=json (repeatable)",
    )
    concepts.add_argument(
        "--out",
        type=Path,
        help="output folder (default: $MEGU_HOME/concepts/<forget request>-<oracle>)",
    )
    concepts.add_argument("--seed", type=int, default=0, help="seed of random forget requests")
    concepts.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    concepts.set_defaults(handler=run_concepts)


def run_concepts(args: argparse.Namespace) -> int:
    """Build the configuration, score the concepts, write the files and print a report."""
    from megu_core.pipeline.concepts import score_checkpoint_concepts
    from megu_core.pipeline.config import pipeline_config

    overrides = dict(parse_override(text) for text in args.overrides)
    overrides.update({"forget": args.forget, "forget_seed": args.seed, "device": args.device})
    if args.oracle:
        overrides["oracle.kind"] = args.oracle

    cfg = pipeline_config(dataset=args.dataset or "cifar10", overrides=overrides)
    if args.model is not None and args.dataset is None:
        data = read_checkpoint_config(args.model)["config"]["data"]
        cfg = dataclasses.replace(cfg, data=DataConfig(**data))

    out = args.out or megu_home() / "concepts" / f"{_slug(args.forget)}-{cfg.oracle.kind}"
    output = score_checkpoint_concepts(cfg, args.model, out)
    print(format_concepts_report(output))
    return 0


def format_concepts_report(output: StageOutput) -> str:
    """Format what `megu concepts` prints: scores, top perturbing classes, time and queries."""
    summary = output.summary
    oracle = summary["oracle"]
    stats = summary["oracle_stats"]
    lines = [
        f"forget request {summary['request']}: {oracle['backend']} oracle, model "
        f"{oracle.get('model') or '-'}, prompt {oracle.get('prompt_style', '-')} "
        f"v{oracle.get('prompt_version') or '-'}",
    ]

    scores = read_frame(output.files["concept_scores"], "concept_scores")
    for target, rows in scores.groupby("target", sort=False):
        ranked = rows.sort_values("score", ascending=False)
        listed = ", ".join(f"{r.candidate} {r.score:.4f}" for r in ranked.itertuples())
        top = ", ".join(
            f"{c['class']} ({c['probability']:.2f})" for c in summary["concepts"][target]
        )
        lines.append(f"scores for {target}: {listed}")
        lines.append(f"top perturbing classes for {target} (T row): {top}")
        if target in summary["exemplars"]:
            lines.append(f"exemplars of {target}: {', '.join(summary['exemplars'][target])}")

    queries = f"{stats['queries']} {'query' if stats['queries'] == 1 else 'queries'}"
    lines.append(
        f"oracle time {summary['oracle_seconds']:.2f} s; {queries}, "
        f"{stats['cache_hits']} cache hits, {stats['retries']} retries"
    )
    folder = Path(output.files["concept_scores"]).parent
    names = ", ".join(Path(path).name for path in output.files.values())
    lines.append(f"wrote {names} to {folder}")
    return "\n".join(lines)


def _slug(text: str) -> str:
    """Turn a forget request into a folder name: runs of other characters become one dash."""
    return re.sub(r"[^A-Za-z0-9_.,=-]+", "-", text).strip("-.") or "request"
