import json
import multiprocessing
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from safetensors.torch import load_file, save_file
from tracking_worker import log_and_register

from megu_core import tracking
from megu_core.errors import ArtifactError, CheckpointError


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Create MLflow's tables once, because migrating a new database takes seconds."""
    database = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    uri = f"sqlite:///{database}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models(max_results=1)
    return database


@pytest.fixture
def tracking_home(megu_home: Path, migrated_database: Path) -> Path:
    """Return a MEGU_HOME whose tracking store is a copy of the migrated database."""
    shutil.copyfile(migrated_database, megu_home / "mlflow.db")
    return megu_home


def make_checkpoint(folder: Path, seed: int) -> Path:
    """Write a tiny safetensors checkpoint with its configuration JSON."""
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    save_file({"head.weight": torch.randn(3, 4, generator=generator)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 3}))
    return folder


def run_artifact_names(run_id: str, path: str | None = None) -> list[str]:
    return [item.path for item in tracking.get_client().list_artifacts(run_id, path)]


# ---------------------------------------------------------------------------------------------
# Store selection


def test_default_uri_under_megu_home(megu_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

    assert tracking.tracking_uri() == f"sqlite:///{megu_home.resolve() / 'mlflow.db'}"
    assert tracking.registry_uri() == tracking.tracking_uri()


def test_experiment_artifacts_under_megu_home(
    tracking_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    working_dir = tmp_path / "cwd"
    working_dir.mkdir()
    monkeypatch.chdir(working_dir)

    experiment_id = tracking.get_or_create_experiment("cifar10")
    experiment = tracking.get_client().get_experiment(experiment_id)

    assert experiment.name == "megu-cifar10"
    assert experiment.artifact_location == (tracking_home / "mlartifacts" / "megu-cifar10").as_uri()
    assert tracking.get_or_create_experiment("cifar10") == experiment_id
    assert list(working_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Retry on "database is locked"


def test_retry_survives_real_sqlite_lock(tmp_path: Path) -> None:
    database = tmp_path / "locked.db"
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.5, holder.execute, args=("COMMIT",)).start()
    attempts = []

    def insert() -> int:
        attempts.append(1)
        writer = sqlite3.connect(database, timeout=0)  # fail at once instead of waiting
        try:
            with writer:
                writer.execute("INSERT INTO t VALUES (1)")
            return writer.execute("SELECT count(*) FROM t").fetchone()[0]
        finally:
            writer.close()

    count = tracking.retry_on_locked(insert, attempts=10, initial_delay_s=0.05)()

    assert count == 1
    assert len(attempts) > 1
    holder.close()


def test_retry_gives_up_after_attempts() -> None:
    calls = []

    def always_locked() -> None:
        calls.append(1)
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    with pytest.raises(MlflowException, match="database is locked"):
        tracking.retry_on_locked(always_locked, attempts=3, initial_delay_s=0.001)()

    assert len(calls) == 3


def test_retry_passes_other_errors_through() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise MlflowException("Registered Model with name=x not found")

    with pytest.raises(MlflowException, match="not found"):
        tracking.retry_on_locked(broken, initial_delay_s=0.001)()

    assert len(calls) == 1


def test_locked_error_found_in_cause_chain() -> None:
    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as inner:
            raise MlflowException("SQLAlchemy database error") from inner
    except MlflowException as outer:
        assert tracking.is_database_locked(outer)


# ---------------------------------------------------------------------------------------------
# Runs, parameters, metrics and artifacts


def test_run_finishes_or_fails(tracking_home: Path) -> None:
    with tracking.start_run("tiny", run_name="ok", tags={"method": "megu"}) as finished_id:
        pass
    with pytest.raises(RuntimeError), tracking.start_run("tiny") as failed_id:
        raise RuntimeError("stage failed")

    assert tracking.get_run_status(finished_id) == "FINISHED"
    assert tracking.get_run_status(failed_id) == "FAILED"
    assert tracking.get_client().get_run(finished_id).data.tags["method"] == "megu"


def test_config_flattened_into_params(tracking_home: Path) -> None:
    config = {
        "model": {"name": "resnet18", "base_width": 16},
        "method": {"lambda_f": 1.0, "noise": {"use": ["negative", "positive"], "clip": None}},
        "seed": 0,
        "fast": True,
        "out": Path("runs/a"),
    }
    with tracking.start_run("tiny") as run_id:
        logged = tracking.log_config(run_id, config)

    params = tracking.get_client().get_run(run_id).data.params
    assert params == logged
    assert params["model.base_width"] == "16"
    assert params["method.noise.use"] == '["negative", "positive"]'
    assert params["method.noise.clip"] == "null"
    assert params["fast"] == "true"
    assert params["out"] == "runs/a"
    assert "config.json" in run_artifact_names(run_id)


def test_long_param_is_truncated() -> None:
    long_value = "x" * (tracking.MAX_PARAM_VAL_LENGTH + 10)

    params = tracking.flatten_config({"exemplars": long_value, "short": "y"})

    assert len(params["exemplars"]) == tracking.MAX_PARAM_VAL_LENGTH
    assert params["exemplars"].endswith("full value in config.json]")
    assert params["short"] == "y"


def test_many_params_are_batched(tracking_home: Path) -> None:
    config = {f"key_{i:03d}": i for i in range(250)}
    with tracking.start_run("tiny") as run_id:
        tracking.log_config(run_id, config)

    assert len(tracking.get_client().get_run(run_id).data.params) == 250


def test_metrics_logged_per_step(tracking_home: Path) -> None:
    with tracking.start_run("tiny") as run_id:
        tracking.log_metrics(run_id, {"loss": 2.0, "accuracy": torch.tensor(0.5)}, step=0)
        tracking.log_metrics(run_id, {"loss": 1.0}, step=1)

    history = tracking.get_client().get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.0)]
    assert tracking.get_client().get_run(run_id).data.metrics["accuracy"] == 0.5


def test_non_numeric_metric_is_named(tracking_home: Path) -> None:
    with pytest.raises(TypeError, match="metric 'verdict'"), tracking.start_run("tiny") as run_id:
        tracking.log_metrics(run_id, {"verdict": "passed"})


def test_artifact_file_and_figure(tracking_home: Path, tmp_path: Path) -> None:
    table = tmp_path / "metrics.parquet"
    table.write_bytes(b"parquet bytes")
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])

    with tracking.start_run("tiny") as run_id:
        stored = tracking.log_artifact_file(run_id, table, "tables")
        tracking.log_figure_png(run_id, figure, "plots/gap.png")

    downloaded = Path(
        tracking.get_client().download_artifacts(run_id, "plots/gap.png", str(tmp_path))
    )
    assert stored == "tables/metrics.parquet"
    assert run_artifact_names(run_id, "tables") == ["tables/metrics.parquet"]
    assert downloaded.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_figure_needs_png_name() -> None:
    with pytest.raises(ValueError, match=r"must end with '.png'"):
        tracking.log_figure_png("unused", Figure(), "plots/gap.svg")


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_round_trip_by_alias(
    tracking_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    working_dir = tmp_path / "cwd"
    working_dir.mkdir()
    monkeypatch.chdir(working_dir)
    name = tracking.registered_model_name("tiny", "resnet18")
    original_dir = make_checkpoint(tmp_path / "original", seed=0)
    unlearned_dir = make_checkpoint(tmp_path / "unlearned", seed=1)

    with tracking.start_run("tiny") as train_run:
        original = tracking.register_checkpoint(train_run, original_dir, name)
    tracking.set_alias(name, "original", original)
    with tracking.start_run("tiny") as unlearn_run:
        unlearned = tracking.register_checkpoint(
            unlearn_run,
            unlearned_dir,
            name,
            tags={tracking.TAG_SOURCE_VERSION: original, tracking.TAG_FORGET_REQUEST: "class:cat"},
        )
    tracking.set_alias(name, "unlearned", unlearned)
    tracking.set_version_tags(name, unlearned, {"verdict": "passed"})

    downloaded = tracking.download_checkpoint(name, "unlearned", tmp_path / "download")

    assert (original, unlearned) == (1, 2)
    assert tracking.get_version_by_alias(name, "original").version == 1
    version = tracking.get_version(name, "unlearned")
    assert version.run_id == unlearn_run
    assert version.tags[tracking.TAG_SOURCE_VERSION] == "1"
    assert version.tags[tracking.TAG_FORGET_REQUEST] == "class:cat"
    assert version.tags["verdict"] == "passed"
    assert version.aliases == ("unlearned",)
    for file_name in ("model.safetensors", "config.json"):
        assert (downloaded / file_name).read_bytes() == (unlearned_dir / file_name).read_bytes()
    weights = load_file(downloaded / "model.safetensors")
    assert torch.equal(
        weights["head.weight"], load_file(unlearned_dir / "model.safetensors")["head.weight"]
    )
    assert list(working_dir.iterdir()) == []


def test_download_by_version_number(tracking_home: Path, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "checkpoint", seed=0)
    with tracking.start_run("tiny") as run_id:
        version = tracking.register_checkpoint(run_id, checkpoint, "megu-tiny-resnet18")

    downloaded = tracking.download_checkpoint("megu-tiny-resnet18", str(version), tmp_path / "dl")

    assert (downloaded / "model.safetensors").read_bytes() == (
        checkpoint / "model.safetensors"
    ).read_bytes()


def test_download_detects_modified_artifact(tracking_home: Path, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "checkpoint", seed=0)
    with tracking.start_run("tiny") as run_id:
        tracking.register_checkpoint(run_id, checkpoint, "megu-tiny-resnet18")

    stored = next((tracking_home / "mlartifacts").rglob("model.safetensors"))
    stored.write_bytes(stored.read_bytes()[:-1] + b"\x00")

    with pytest.raises(CheckpointError, match="differ from the ones registered"):
        tracking.download_checkpoint("megu-tiny-resnet18", 1, tmp_path / "dl")


def test_register_rejects_pickle_files(tracking_home: Path, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "checkpoint", seed=0)
    torch.save({"w": torch.zeros(1)}, checkpoint / "optimizer.pt")

    with (
        pytest.raises(CheckpointError, match=r"optimizer.pt"),
        tracking.start_run("tiny") as run_id,
    ):
        tracking.register_checkpoint(run_id, checkpoint, "megu-tiny-resnet18")


def test_register_requires_safetensors(tracking_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text("{}")

    with (
        pytest.raises(CheckpointError, match="no .safetensors"),
        tracking.start_run("tiny") as run_id,
    ):
        tracking.register_checkpoint(run_id, folder, "megu-tiny-resnet18")


def test_register_refuses_reused_artifact_path(tracking_home: Path, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "checkpoint", seed=0)

    with (
        pytest.raises(ArtifactError, match="already has artifacts"),
        tracking.start_run("tiny") as run_id,
    ):
        tracking.register_checkpoint(run_id, checkpoint, "megu-tiny-resnet18")
        tracking.register_checkpoint(run_id, checkpoint, "megu-tiny-resnet18")


# ---------------------------------------------------------------------------------------------
# Concurrent writers


def test_concurrent_writers_share_sqlite(megu_home: Path, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "checkpoint", seed=0)
    assert not (megu_home / "mlflow.db").exists()  # the workers race to create the tables

    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        results = pool.starmap(log_and_register, [(worker, str(checkpoint)) for worker in range(4)])

    client = tracking.get_client()
    assert sorted(version for _, version in results) == [1, 2, 3, 4]
    for run_id, _ in results:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run_id, "loss")) == 20
        assert run.data.params["method.name"] == "megu"
