"""The `megu` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flows.benchmark_cli import add_benchmark_command
from flows.concepts_cli import add_concepts_command
from flows.service_cli import add_service_commands
from megu_core.config import merge, parse_override, preset
from megu_core.data import megu_home
from megu_core.errors import MeguError
from megu_core.metrics import format_metrics_table

log = logging.getLogger("megu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megu", description="Machine-guided unlearning for image classifiers."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train and save an original model")
    _add_data_arguments(train)
    train.add_argument(
        "--preset",
        default="cpu",
        help="cpu (width 16, 15 epochs), reference (width 64, benchmark schedule) or tiny",
    )
    train.add_argument(
        "--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation"
    )
    train.add_argument(
        "--out",
        type=Path,
        help="checkpoint folder (default: $MEGU_HOME/models/<dataset>-<preset>-seed<seed>)",
    )
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a configuration value, e.g. train.epochs=10 (repeatable)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a saved model against a forget request"
    )
    evaluate.add_argument(
        "--model", type=Path, required=True, help="checkpoint folder written by 'megu train'"
    )
    evaluate.add_argument(
        "--forget",
        required=True,
        help="class:NAME[,NAME...], subclass:FINE_NAME, random:FRACTION|COUNT[,seed=N] or ids:FILE",
    )
    evaluate.add_argument(
        "--reference",
        type=Path,
        help="checkpoint of a reference model (the gold retrain) for the gap columns",
    )
    evaluate.add_argument(
        "--dataset", help="dataset to evaluate on (default: the one the model was trained on)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of random forget requests")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    evaluate.set_defaults(handler=run_evaluate)

    run = commands.add_parser("run", help="run the unlearning pipeline end to end (cached stages)")
    _add_pipeline_arguments(run)
    run.set_defaults(handler=run_pipeline, refresh=[])

    rerun = commands.add_parser(
        "rerun", help="recompute one stage and everything after it; earlier stages come from cache"
    )
    rerun.add_argument(
        "stage",
        choices=["prepare", "train", "features", "concepts", "noise", "unlearn", "evaluate"],
    )
    _add_pipeline_arguments(rerun)
    rerun.set_defaults(handler=run_pipeline)

    add_service_commands(commands)
    add_concepts_command(commands)
    add_benchmark_command(commands)
    return parser


def _add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        default="cifar10",
        help="cifar10, cifar100, cifar20, a local folder (Hugging Face Parquet or ImageFolder) or a Hub id",
    )
    parser.add_argument(
        "--forget",
        default="class:cat",
        help="class:NAME[,NAME...], subclass:FINE_NAME, random:FRACTION|COUNT[,seed=N] or ids:FILE",
    )
    parser.add_argument(
        "--preset", default="cpu", help="cpu (width 16, 15 epochs), reference (width 64) or tiny"
    )
    parser.add_argument("--method", default="megu", help="unlearning method from the registry")
    parser.add_argument(
        "--oracle", help="concept oracle: text (default), uniform, transformers or openai"
    )
    parser.add_argument(
        "--reference",
        choices=["none", "retrain"],
        default="none",
        help="retrain: also train the gold retrain (cached) and report the gaps to it",
    )
    parser.add_argument(
        "--original",
        type=Path,
        help="checkpoint folder of an existing original model (e.g. from 'megu train') instead of training one",
    )
    parser.add_argument("--config", type=Path, help="YAML file with configuration values")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a configuration value, e.g. budget.epochs=3 or noise.mode=subspace (repeatable)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        default="cifar10",
        help="cifar10, cifar100, cifar20, a local folder (Hugging Face Parquet or ImageFolder) or a Hub id",
    )
    parser.add_argument(
        "--label-column", help="label column to train on (default: the dataset's usual one)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")


def run_train(args: argparse.Namespace) -> int:
    from megu_core.experiment import train_original

    cfg = preset(args.preset, args.dataset)
    overrides = dict(parse_override(text) for text in args.overrides)
    overrides.update({"train.seed": args.seed, "device": args.device})
    if args.label_column:
        overrides["data.label_column"] = args.label_column
    cfg = merge(cfg, overrides)

    out = (
        args.out
        or megu_home() / "models" / f"{Path(args.dataset).name}-{cfg.preset}-seed{args.seed}"
    )
    report = train_original(cfg, out, progress=not args.no_progress)

    result = report.train
    print(f"checkpoint            {report.checkpoint}")
    print(f"test accuracy         {report.test_accuracy:.2f}%")
    print(f"epochs                {report.epochs:g}")
    print(f"training wall time    {result.seconds:.1f} s")
    print(f"training images/s     {result.images_per_second:.0f}")
    print(
        f"bare fwd+bwd images/s {report.bare_images_per_second:.0f} (loop at {result.images_per_second / report.bare_images_per_second:.0%} of it)"
    )
    print(f"data loading          {report.data_seconds:.1f} s")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from megu_core.config import DataConfig
    from megu_core.experiment import evaluate_checkpoint

    data = DataConfig(source=args.dataset) if args.dataset else None
    reference = None
    rows = {}
    if args.reference:
        reference, _ = evaluate_checkpoint(
            args.reference, args.forget, data, args.device, args.seed
        )
        rows["reference"] = reference.metrics
    evaluation, _ = evaluate_checkpoint(
        args.model, args.forget, data, args.device, args.seed, reference
    )
    rows[args.model.name] = evaluation.metrics
    print(format_metrics_table(rows))
    return 0


def run_pipeline(args: argparse.Namespace) -> int:
    from flows.unlearning import unlearning_flow

    overrides = dict(parse_override(text) for text in args.overrides)
    overrides["device"] = args.device
    if args.oracle:
        overrides["oracle.kind"] = args.oracle
    if args.config:
        overrides.update(_flatten(_load_yaml(args.config)))
    refresh = [args.stage] if getattr(args, "stage", None) else []
    _check_pipeline_arguments(args, overrides)

    result = unlearning_flow(
        dataset=args.dataset,
        forget=args.forget,
        preset=args.preset,
        method=args.method,
        reference=args.reference,
        overrides=overrides,
        refresh=refresh,
        original=str(args.original) if args.original else None,
    )
    print(format_run_report(result))
    return 0


def _check_pipeline_arguments(args: argparse.Namespace, overrides: dict) -> None:
    """Validate the configuration, device and original checkpoint before Prefect starts (seconds)."""
    from flows.unlearning import imported_model_settings
    from megu_core.devices import resolve_device
    from megu_core.pipeline.config import pipeline_config

    settings = {"forget": args.forget, "method": args.method, "reference": args.reference}
    if args.original:
        settings.update(imported_model_settings(args.original))
    settings.update(overrides)
    config = pipeline_config(args.dataset, args.preset, settings)
    resolve_device(config.device)


def _load_yaml(path: Path) -> dict:
    import yaml

    from megu_core.errors import ConfigError

    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"configuration file {path} must contain a mapping of keys to values")
    return values


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "method_params":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def format_run_report(result: dict) -> str:
    """Format what `megu run` prints: metrics per model, time, concepts, stages and registry versions."""
    lines = [
        f"forget request {result['request']} ({result['num_forget']} samples, id {result['request_id']})",
        "",
    ]
    lines.append(format_metrics_table(result["metrics"]))
    lines.append("")
    timing = f"unlearning time {result['unlearn_seconds']:.1f} s"
    if result["retrain_seconds"]:
        ratio = result["unlearn_seconds"] / result["retrain_seconds"]
        timing += f"; gold retrain {result['retrain_seconds']:.1f} s; ratio {ratio:.3f}"
    lines.append(timing)
    if result.get("concepts"):
        for concept, top in result["concepts"].items():
            ranked = ", ".join(f"{c['class']} ({c['probability']:.2f})" for c in top)
            lines.append(f"perturbing concepts for {concept}: {ranked}")
    lines.append(
        "stages: "
        + ", ".join(f"{s['stage']} {s['status']} ({s['seconds']} s)" for s in result["stages"])
    )
    registry = result["registry"]
    lines.append(
        f"registered {registry['registered_model']}: original v{registry['original_version']}, "
        f"unlearned v{registry['unlearned_version']}; MLflow run {result['mlflow_run_id']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request to the Prefect API at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except MeguError as exc:
        log.error("%s", exc)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; stages that finished are cached, the next run resumes from them")
        return 130


if __name__ == "__main__":
    sys.exit(main())
