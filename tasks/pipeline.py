"""One Prefect task per pipeline stage: thin wrappers that turn stage inputs into core calls.

Each task takes the resolved configuration as a plain dict, the references of its upstream
stages and `refresh`. It returns a JSON-able reference to its Parquet and checkpoint files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from megu_core.artifacts import file_digest
from megu_core.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from megu_core.config import from_dict
from megu_core.pipeline import concepts, evaluate, features, noise, prepare, unlearn
from megu_core.pipeline.common import StageOutput, checkpoint_dir
from megu_core.pipeline.config import PipelineConfig
from tasks.stage import StageRef, file_path, prefect_cache_key, run_cached

TASK_OPTIONS = {"persist_result": True, "result_serializer": "json"}


def _config(cfg: dict[str, Any]) -> PipelineConfig:
    return from_dict(PipelineConfig, cfg)


def _run_stage(
    stage: str,
    cfg: dict,
    inputs: dict,
    options: dict | None,
    refresh: bool,
    compute: Callable[[Path], StageOutput],
) -> StageRef:
    """Return the stage's stored outputs or compute them, and log which of the two happened."""
    ref = run_cached(stage, cfg, inputs, options or {}, refresh, compute)
    verb = "computed" if ref["computed"] else "reused the stored outputs of"
    get_run_logger().info("%s: %s key %s", stage, verb, ref["key"][:12])
    return ref


def _checkpoint(inputs: dict, name: str) -> Path:
    """Return the checkpoint folder of the upstream model stage called `name`."""
    return checkpoint_dir(Path(file_path(inputs[name], "weights")))


def _ids_hash(inputs: dict) -> str:
    return inputs["samples"]["summary"]["ids_hash"]


@task(name="prepare-data", cache_key_fn=prefect_cache_key("prepare"), **TASK_OPTIONS)
def prepare_data(
    cfg: dict, inputs: dict, options: dict | None = None, refresh: bool = False
) -> StageRef:
    """Decode the dataset into the tensor cache, resolve the forget request and write samples.parquet."""
    config = _config(cfg)
    return _run_stage(
        "prepare", cfg, inputs, options, refresh, lambda out: prepare.prepare(config, out)
    )


@task(name="train-model", cache_key_fn=prefect_cache_key("train"), **TASK_OPTIONS)
def train_model(
    cfg: dict, inputs: dict, options: dict | None = None, refresh: bool = False
) -> StageRef:
    """Train the original model, or with options.retrain the gold retrain without the forget set.

    The original model's inputs are only the dataset (see `dataset_input`), so every forget
    request on a dataset shares one original model. With a `checkpoint` input (see
    `checkpoint_input`), an existing model is adopted as the original instead.
    """
    config = _config(cfg)
    options = options or {}
    if "checkpoint" in inputs:
        source = Path(inputs["checkpoint"]["path"])

        def compute(out: Path) -> StageOutput:
            return prepare.import_model(config, source, out)

    else:
        retrain = bool(options.get("retrain"))
        ids_hash = _ids_hash(inputs) if retrain else ""

        def compute(out: Path) -> StageOutput:
            return prepare.train(config, out, retrain, ids_hash, progress=False)

    return _run_stage("train", cfg, inputs, options, refresh, compute)


def checkpoint_input(folder: Path) -> StageRef:
    """Build an input reference to an existing checkpoint folder, keyed by the digests of its files."""
    folder = Path(folder).resolve()
    files = {}
    for name, file in (("weights", WEIGHTS_FILE), ("checkpoint_config", CONFIG_FILE)):
        if not (folder / file).is_file():
            raise FileNotFoundError(f"{folder} is not a megu checkpoint: {file} is missing")
        files[name] = {"sha256": file_digest(folder / file)}
    return {"files": files, "summary": {}, "path": str(folder)}


def dataset_input(samples: StageRef) -> StageRef:
    """Build an input reference that carries only the dataset's content digest, not the forget request."""
    return {"files": {"source": {"sha256": samples["summary"]["dataset"]["digest"]}}, "summary": {}}


@task(name="extract-features", cache_key_fn=prefect_cache_key("features"), **TASK_OPTIONS)
def extract_features(
    cfg: dict, inputs: dict, options: dict | None = None, refresh: bool = False
) -> StageRef:
    """Write features.parquet from the original model for the forget set and the retain reference set."""
    config = _config(cfg)
    checkpoint = _checkpoint(inputs, "original")
    ids_hash = _ids_hash(inputs)
    return _run_stage(
        "features",
        cfg,
        inputs,
        options,
        refresh,
        lambda out: features.extract_features(config, checkpoint, ids_hash, out),
    )


@task(name="query-concepts", cache_key_fn=prefect_cache_key("concepts"), **TASK_OPTIONS)
def query_concepts(
    cfg: dict, inputs: dict, options: dict | None = None, refresh: bool = False
) -> StageRef:
    """Ask the concept oracle once per target concept; write scores, the transition matrix and perturbing labels."""
    config = _config(cfg)
    checkpoint = _checkpoint(inputs, "original")
    ids_hash = _ids_hash(inputs)
    test_confidence = inputs["features"]["summary"]["test_confidence"]
    features_path = Path(file_path(inputs["features"], "features"))
    return _run_stage(
        "concepts",
        cfg,
        inputs,
        options,
        refresh,
        lambda out: concepts.query_concepts(
            config, features_path, checkpoint, ids_hash, test_confidence, out
        ),
    )


@task(name="build-noise-pairs", cache_key_fn=prefect_cache_key("noise"), **TASK_OPTIONS)
def build_noise_pairs(
    cfg: dict, inputs: dict, options: dict | None = None, refresh: bool = False
) -> StageRef:
    """Build the positive/negative feature-noise pair per target concept and each forget sample's z*."""
    config = _config(cfg)
    checkpoint = _checkpoint(inputs, "original")
    kind = inputs["samples"]["summary"]["request_kind"]
    features_path = Path(file_path(inputs["features"], "features"))
    perturbing = Path(file_path(inputs["concepts"], "perturbing_labels"))
    transition = Path(file_path(inputs["concepts"], "transition_matrix"))
    return _run_stage(
        "noise",
        cfg,
        inputs,
        options,
        refresh,
        lambda out: noise.build_noise(
            config, features_path, perturbing, transition, checkpoint, kind, out
        ),
    )


@task(name="unlearn", cache_key_fn=prefect_cache_key("unlearn"), **TASK_OPTIONS)
def finetune(
    cfg: dict, inputs: dict, options: dict | None = None, refresh: bool = False
) -> StageRef:
    """Run the configured unlearning method (MeGU finetuning by default) and save the unlearned model."""
    config = _config(cfg)
    checkpoint = _checkpoint(inputs, "original")
    ids_hash = _ids_hash(inputs)
    perturbing = None
    if inputs.get("concepts"):
        perturbing = Path(file_path(inputs["concepts"], "perturbing_labels"))
    noise_path = None
    if inputs.get("noise"):
        noise_path = Path(file_path(inputs["noise"], "noise_per_sample"))
    return _run_stage(
        "unlearn",
        cfg,
        inputs,
        options,
        refresh,
        lambda out: unlearn.unlearn(
            config, checkpoint, ids_hash, out, perturbing, noise_path, progress=False
        ),
    )


@task(name="evaluate", cache_key_fn=prefect_cache_key("evaluate"), **TASK_OPTIONS)
def evaluate_model(
    cfg: dict, inputs: dict, options: dict | None = None, refresh: bool = False
) -> StageRef:
    """Evaluate one model (options.role) on forget, retain and test data, with gaps to the reference if given."""
    config = _config(cfg)
    role = (options or {})["role"]
    checkpoint = _checkpoint(inputs, "model")
    ids_hash = _ids_hash(inputs)
    reference = None
    if inputs.get("reference"):
        reference = Path(file_path(inputs["reference"], "metrics"))
    return _run_stage(
        "evaluate",
        cfg,
        inputs,
        options,
        refresh,
        lambda out: evaluate.evaluate_model(config, checkpoint, role, ids_hash, out, reference),
    )
