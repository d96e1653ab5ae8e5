"""MLflow tracking and model registry for megu, and the only module of megu_core importing mlflow.

Store. The tracking URI is `$MLFLOW_TRACKING_URI`, or `sqlite:///$MEGU_HOME/mlflow.db` when
it is unset. With a local SQLite store, experiments put their artifacts under
`$MEGU_HOME/mlartifacts/<experiment>`; with a server, the server chooses. Every call passes
the URI to an `MlflowClient` explicitly, so MLflow's process-wide default (a stray `./mlruns`
folder or `./mlflow.db`) never decides where records go.

Concurrency. Several processes may write to one SQLite store (parallel benchmark runs, two
workers). Every MLflow call here goes through `retry_on_locked`, which retries "database is
locked" errors with exponential backoff. MLflow 3.17.2 also fails on a new SQLite database
when several processes create its tables at once: of 4 processes started together on a
new database, 3 or 4 failed with alembic errors such as "table ... already exists". So the
first connection of each process takes a file lock beside the database while MLflow
creates or upgrades its tables.

Registry. A checkpoint is a folder of safetensors weights and JSON/YAML configuration.
`register_checkpoint` and `download_checkpoint` reject any other file, since it could contain
a pickle. Registering logs the folder as run artifacts and creates a model version whose
source is the artifact URI of that folder, with the run id, so no "logged model"
(`mlflow.<flavor>.log_model`) is needed. MLflow 3.17.2 accepts such a source with a SQLite
store, where the version is READY at once. Downloads resolve the source through this
module's client and never through a `models:/` URI, because MLflow resolves those with the
process-wide registry URI instead of the one passed to `download_artifacts`.

NOTE: against an MLflow server this route is untested. The server's source check
(`_validate_source_run` in mlflow/server/handlers.py, 3.17.2) accepts a source inside the
run's artifact location when the run id is given, which is what `register_checkpoint` sends.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import filelock
import mlflow.artifacts
import numpy as np
import sqlalchemy.engine
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from megu_core.artifacts import PathLike, file_digest
from megu_core.errors import ArtifactError, CheckpointError, MeguError
from megu_core.stage_cache import megu_home

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"

# Model version tags that link an unlearned version to its origin and checked files.
TAG_SOURCE_VERSION = "megu.source_version"
TAG_FORGET_REQUEST = "megu.forget_request"
TAG_FILE_DIGESTS = "megu.file_digests"  # JSON: relative file path -> sha256

# Files a registered checkpoint may contain. Other files (.pt, .pth, .bin, .pkl, .npy) can
# contain a pickle, so they are rejected on register and on download.
CHECKPOINT_SUFFIXES = frozenset({".safetensors", ".json", ".yaml", ".yml", ".txt", ".md"})

_TRUNCATION_MARKER = "...[truncated, full value in config.json]"
_LOCKED_MESSAGE = re.compile(r"database (table |schema )?is locked", re.IGNORECASE)
_ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"  # MlflowException.error_code of a duplicate name

_clients: dict[tuple[str, str], MlflowClient] = {}  # (tracking URI, registry URI) -> client


# ---------------------------------------------------------------------------------------------
# Retry on "database is locked"


def is_database_locked(exc: BaseException) -> bool:
    """Return whether `exc` or an exception in its cause chain is SQLite's lock error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if _LOCKED_MESSAGE.search(str(current)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def retry_on_locked(
    fn: Callable[P, R],
    *,
    attempts: int = 8,  # 7 waits from 0.1 s doubling up to 5 s: about 11 s before jitter
    initial_delay_s: float = 0.1,
    max_delay_s: float = 5.0,
) -> Callable[P, R]:
    """Wrap `fn` so that "database is locked" errors are retried with exponential backoff.

    Each delay doubles up to `max_delay_s`. A random jitter of +-50% keeps processes that
    collided once from colliding again. Other errors propagate at once.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    name = getattr(fn, "__qualname__", repr(fn))

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        delay_s = initial_delay_s
        for attempt in range(1, attempts):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not is_database_locked(exc):
                    raise
                sleep_s = delay_s * random.uniform(0.5, 1.5)
                logger.warning(
                    "%s: database is locked (attempt %d of %d), retrying in %.2f s",
                    name,
                    attempt,
                    attempts,
                    sleep_s,
                )
                time.sleep(sleep_s)
                delay_s = min(2 * delay_s, max_delay_s)
        return fn(*args, **kwargs)

    return wrapper


def _call(method: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    return retry_on_locked(method)(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Store and client


def tracking_uri() -> str:
    """Return `$MLFLOW_TRACKING_URI`, or the SQLite database under MEGU_HOME."""
    configured = os.environ.get(TRACKING_URI_ENV)
    if configured:
        return configured
    return f"sqlite:///{megu_home() / 'mlflow.db'}"


def registry_uri() -> str:
    """Return `$MLFLOW_REGISTRY_URI`, or the tracking URI."""
    return os.environ.get(REGISTRY_URI_ENV) or tracking_uri()


def get_client() -> MlflowClient:
    """Return a client for the configured store, creating the store's tables on first use."""
    uris = (tracking_uri(), registry_uri())
    if uris in _clients:
        return _clients[uris]

    with _store_lock(uris[0]):
        # Creating the client opens the tracking store, which creates or upgrades its tables;
        # the first registry call does the same for the registry store.
        client = _call(MlflowClient, tracking_uri=uris[0], registry_uri=uris[1])
        _call(client.search_registered_models, max_results=1)
    _clients[uris] = client
    return client


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    database = _sqlite_path(uri)
    if database is None:
        yield  # servers and other databases handle concurrent clients themselves
        return

    database.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(f"{database}.lock", timeout=120):
        yield


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    database = sqlalchemy.engine.make_url(uri).database
    if not database or database == ":memory:":
        return None
    return Path(database).resolve()


def _local_artifact_location(experiment: str) -> str | None:
    """Return the artifact folder URI for a new experiment, or None to let a server choose."""
    if _sqlite_path(tracking_uri()) is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
    return (megu_home() / "mlartifacts" / folder).as_uri()


# ---------------------------------------------------------------------------------------------
# Experiments and runs


def experiment_name(dataset: str) -> str:
    """Return the name of the experiment that contains every run on `dataset`."""
    return f"megu-{dataset}"


def registered_model_name(dataset: str, architecture: str) -> str:
    """Return the registered model name for one dataset and architecture."""
    return f"megu-{dataset}-{architecture}"


def get_or_create_experiment(dataset: str) -> str:
    """Return the id of the dataset's experiment, creating it on first use."""
    client = get_client()
    name = experiment_name(dataset)

    experiment = _call(client.get_experiment_by_name, name)
    if experiment is None:
        try:
            return _call(client.create_experiment, name, _local_artifact_location(name))
        except MlflowException as exc:
            if exc.error_code != _ALREADY_EXISTS:
                raise
            experiment = _call(client.get_experiment_by_name, name)  # created by another process

    if experiment.lifecycle_stage != "active":
        raise MeguError(
            f"experiment {name!r} (id {experiment.experiment_id}) is deleted in {tracking_uri()}; "
            f"restore it with `mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}`, or delete it permanently with `mlflow gc`"
        )
    return experiment.experiment_id


def create_run(
    dataset: str, run_name: str | None = None, tags: Mapping[str, str] | None = None
) -> str:
    """Create a running MLflow run in the dataset's experiment and return its run id."""
    experiment_id = get_or_create_experiment(dataset)
    run = _call(get_client().create_run, experiment_id, run_name=run_name, tags=_string_tags(tags))
    logger.info("started MLflow run %s in experiment %s", run.info.run_id, experiment_id)
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """Mark a run as ended with `status` (FINISHED, FAILED or KILLED)."""
    allowed = ("FINISHED", "FAILED", "KILLED")
    if status not in allowed:
        raise ValueError(f"invalid run status {status!r}; use one of {allowed}")
    _call(get_client().set_terminated, run_id, status)


@contextmanager
def start_run(
    dataset: str, run_name: str | None = None, tags: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Yield the id of a new run, ending it as FINISHED, or as FAILED or KILLED on an error."""
    run_id = create_run(dataset, run_name, tags)
    try:
        yield run_id
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        _end_run_after_error(run_id, status)
        raise
    end_run(run_id, "FINISHED")


def _end_run_after_error(run_id: str, status: str) -> None:
    # The block's own exception matters more than a failure to record it.
    try:
        end_run(run_id, status)
    except Exception as exc:
        logger.error("could not mark MLflow run %s as %s: %s", run_id, status, exc)


def get_run_status(run_id: str) -> str:
    """Return a run's status name, such as RUNNING or FINISHED."""
    return _call(get_client().get_run, run_id).info.status


def set_run_tags(run_id: str, tags: Mapping[str, str]) -> None:
    """Set tags on a run, such as the forget request id, method and scenario."""
    client = get_client()
    for key, value in _string_tags(tags).items():
        _call(client.set_tag, run_id, key, value)


# ---------------------------------------------------------------------------------------------
# Parameters, metrics and artifacts


def flatten_config(config: Mapping[str, Any]) -> dict[str, str]:
    """Flatten a nested configuration into MLflow parameters with dotted names.

    Strings are kept as they are, and other values are written as JSON (`true`, `null`,
    `[1, 2]`). Dataclasses, enums and paths inside the configuration are converted first.
    Values longer than MLflow's limit (`MAX_PARAM_VAL_LENGTH`, 6000 characters in MLflow
    3.17.2) are truncated with a marker.
    """
    params: dict[str, str] = {}
    _flatten_into(params, _to_plain(config), prefix="")
    return {name: _truncated(name, value) for name, value in params.items()}


def log_config(run_id: str, config: Mapping[str, Any]) -> dict[str, str]:
    """Log a configuration as flattened run parameters and as the artifact `config.json`.

    Returns the parameters as logged. MLflow keeps parameters immutable: logging another
    value for an existing name in the same run raises MlflowException.
    """
    client = get_client()
    params = flatten_config(config)

    items = [Param(name, value) for name, value in params.items()]
    for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        _call(client.log_batch, run_id, params=items[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    _call(client.log_dict, run_id, _to_plain(config), "config.json")
    return params


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log numeric metrics to a run at `step`, in as few requests as MLflow allows."""
    timestamp_ms = int(time.time() * 1000)
    items = [
        Metric(key, _metric_value(key, value), timestamp_ms, step) for key, value in metrics.items()
    ]

    client = get_client()
    for start in range(0, len(items), MAX_METRICS_PER_BATCH):
        _call(client.log_batch, run_id, metrics=items[start : start + MAX_METRICS_PER_BATCH])


def log_artifact_file(run_id: str, path: PathLike, artifact_path: str | None = None) -> str:
    """Copy a local file into the run's artifacts and return its path inside them."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"cannot log {source} to MLflow run {run_id}: file not found")

    _call(get_client().log_artifact, run_id, str(source), artifact_path)
    return f"{artifact_path}/{source.name}" if artifact_path else source.name


def log_figure_png(run_id: str, figure: Figure, artifact_file: str, dpi: int = 150) -> None:
    """Save a matplotlib figure as PNG into the run's artifacts at `artifact_file`."""
    if not artifact_file.endswith(".png"):
        raise ValueError(f"artifact_file must end with '.png', got {artifact_file!r}")

    with tempfile.TemporaryDirectory(prefix="megu-figure-") as folder:
        local = Path(folder) / Path(artifact_file).name
        figure.savefig(local, format="png", dpi=dpi, bbox_inches="tight")
        parent = str(PurePath(artifact_file).parent)
        log_artifact_file(run_id, local, None if parent == "." else parent)


def _flatten_into(params: dict[str, str], value: Any, prefix: str) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten_into(params, item, f"{prefix}{key}.")
        return
    params[prefix.removesuffix(".")] = value if isinstance(value, str) else json.dumps(value)


def _truncated(name: str, value: str) -> str:
    if len(value) <= MAX_PARAM_VAL_LENGTH:
        return value
    logger.info(
        "parameter %s has %d characters, more than MLflow's limit of %d, so it is truncated",
        name,
        len(value),
        MAX_PARAM_VAL_LENGTH,
    )
    return value[: MAX_PARAM_VAL_LENGTH - len(_TRUNCATION_MARKER)] + _TRUNCATION_MARKER


def _to_plain(value: Any) -> Any:
    """Convert a configuration to JSON data: mappings, lists, strings, numbers, None."""
    if isinstance(value, Mapping):
        return {str(key): _to_plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _to_plain(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, list | tuple):
        return [_to_plain(item) for item in value]
    if isinstance(value, enum.Enum):
        return _to_plain(value.value)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # paths and other objects, written as their text form


def _metric_value(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metric {key!r} must be a number, got {value!r}") from exc


def _string_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(key): str(value) for key, value in (tags or {}).items()}


# ---------------------------------------------------------------------------------------------
# Model registry


@dataclass(frozen=True)
class CheckpointVersion:
    """One version of a registered model whose files are a checkpoint folder."""

    name: str
    version: int
    run_id: str | None
    source: str  # artifact URI of the checkpoint folder
    tags: dict[str, str]
    aliases: tuple[str, ...]


def register_checkpoint(
    run_id: str,
    checkpoint_dir: PathLike,
    registered_name: str,
    tags: Mapping[str, str] | None = None,
    artifact_path: str | None = None,
) -> int:
    """Log a checkpoint folder as run artifacts and register it as a new model version.

    `artifact_path` defaults to `checkpoints/<registered_name>` and must be unused in the
    run, so an earlier version's files are never overwritten. Returns the version number.
    """
    folder = Path(checkpoint_dir)
    digests = _checkpoint_digests(folder)
    artifact_path = artifact_path or f"checkpoints/{registered_name}"
    client = get_client()

    if _call(client.list_artifacts, run_id, artifact_path):
        raise ArtifactError(
            f"run {run_id} already has artifacts at {artifact_path!r}; pass another artifact_path"
        )
    _call(client.log_artifacts, run_id, str(folder), artifact_path)
    source = f"{_call(client.get_run, run_id).info.artifact_uri}/{artifact_path}"

    _create_registered_model(client, registered_name)
    version_tags = {**_string_tags(tags), TAG_FILE_DIGESTS: json.dumps(digests, sort_keys=True)}
    created = _call(
        client.create_model_version, registered_name, source, run_id=run_id, tags=version_tags
    )

    logger.info("registered %s version %s from run %s", registered_name, created.version, run_id)
    return int(created.version)


def set_alias(name: str, alias: str, version: int) -> None:
    """Point `alias` (such as `original` or `production`) at a version, moving it if needed."""
    _call(get_client().set_registered_model_alias, name, alias, str(version))


def set_version_tags(name: str, version: int, tags: Mapping[str, str]) -> None:
    """Set tags on a model version, keeping its other tags."""
    client = get_client()
    for key, value in _string_tags(tags).items():
        _call(client.set_model_version_tag, name, str(version), key, value)


def get_version(name: str, version_or_alias: int | str) -> CheckpointVersion:
    """Return a model version by number (`3` or `"3"`) or by alias (`"original"`)."""
    client = get_client()
    if isinstance(version_or_alias, int) or str(version_or_alias).isdigit():
        found = _call(client.get_model_version, name, str(version_or_alias))
    else:
        found = _call(client.get_model_version_by_alias, name, version_or_alias)
    return _checkpoint_version(found)


def get_version_by_alias(name: str, alias: str) -> CheckpointVersion:
    """Return the model version that `alias` points at."""
    return _checkpoint_version(_call(get_client().get_model_version_by_alias, name, alias))


def find_versions_by_tag(name: str, key: str, value: str) -> list[CheckpointVersion]:
    """Return the versions of a registered model whose tag `key` equals `value`, newest first."""
    client = get_client()
    if not _call(client.search_registered_models, f"name = '{_quoted(name)}'"):
        return []
    query = f"name = '{_quoted(name)}' and tag.`{key}` = '{_quoted(value)}'"
    versions = [_checkpoint_version(v) for v in _call(client.search_model_versions, query)]
    return sorted(versions, key=lambda v: v.version, reverse=True)


def _quoted(value: str) -> str:
    """Escape a value for a single-quoted MLflow search string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def download_checkpoint(name: str, version_or_alias: int | str, dst: PathLike) -> Path:
    """Download a registered checkpoint folder into `dst` and check its files.

    Returns the downloaded folder. Load its weights with safetensors. Raises CheckpointError
    when a file is not an allowed checkpoint file or its sha256 differs from the one recorded
    at registration.
    """
    version = get_version(name, version_or_alias)
    client = get_client()
    location = _call(client.get_model_version_download_uri, name, str(version.version))

    target = Path(dst) / location.rstrip("/").rsplit("/", 1)[-1]
    if target.exists() and any(target.iterdir()):
        raise ArtifactError(f"{target} is not empty; download checkpoints into an empty folder")
    Path(dst).mkdir(parents=True, exist_ok=True)

    local = Path(_call(_download, client, location, Path(dst)))
    _check_downloaded(local, version)
    return local


def _create_registered_model(client: MlflowClient, name: str) -> None:
    try:
        _call(client.create_registered_model, name)
    except MlflowException as exc:
        if exc.error_code != _ALREADY_EXISTS:
            raise


def _checkpoint_digests(folder: Path) -> dict[str, str]:
    """Return relative path -> sha256 of a checkpoint folder, rejecting files that may pickle."""
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} not found")

    files = sorted(path for path in folder.rglob("*") if path.is_file())
    disallowed = [
        str(path.relative_to(folder)) for path in files if path.suffix not in CHECKPOINT_SUFFIXES
    ]
    if disallowed:
        raise CheckpointError(
            f"checkpoint folder {folder} contains {disallowed}, which may hold pickled objects; "
            f"allowed file types: {sorted(CHECKPOINT_SUFFIXES)}. Save weights with safetensors"
        )
    if not any(path.suffix == ".safetensors" for path in files):
        raise CheckpointError(f"checkpoint folder {folder} contains no .safetensors file")
    return {path.relative_to(folder).as_posix(): file_digest(path) for path in files}


def _download(client: MlflowClient, location: str, dst: Path) -> str:
    if location.startswith("runs:/"):
        run_id, _, path = location.removeprefix("runs:/").partition("/")
        return client.download_artifacts(run_id, path, str(dst))
    return mlflow.artifacts.download_artifacts(
        artifact_uri=location, dst_path=str(dst), tracking_uri=tracking_uri()
    )


def _check_downloaded(folder: Path, version: CheckpointVersion) -> None:
    found = _checkpoint_digests(folder)
    recorded = version.tags.get(TAG_FILE_DIGESTS)
    if recorded is None:
        logger.warning(
            "%s version %d has no %s tag; its files were not checked against digests",
            version.name,
            version.version,
            TAG_FILE_DIGESTS,
        )
        return

    expected = json.loads(recorded)
    if found != expected:
        changed = sorted(set(found.items()) ^ set(expected.items()))
        raise CheckpointError(
            f"downloaded files of {version.name} version {version.version} differ from the "
            f"ones registered (path, sha256): {changed}; the artifact store was modified"
        )


def _checkpoint_version(found: Any) -> CheckpointVersion:
    return CheckpointVersion(
        name=found.name,
        version=int(found.version),
        run_id=found.run_id,
        source=found.source,
        tags=dict(found.tags),
        aliases=tuple(found.aliases),
    )
