import enum
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from megu_core.artifacts import file_digest
from megu_core.errors import ArtifactError, ConfigError
from megu_core.stage_cache import MANIFEST_NAME, StageStore, megu_home, stage_key

DIGEST_A = "a" * 64
DIGEST_B = "b" * 64


class Mode(enum.Enum):
    OPTIMIZED = "optimized"
    SUBSPACE = "subspace"


@dataclass
class NoiseConfig:
    mode: Mode
    steps: int
    clip: float


def base_key(**changes: object) -> str:
    arguments = {
        "stage": "noise",
        "code_version": "1",
        "config": {"lr": 0.1, "steps": 100, "use": ["negative", "positive"]},
        "input_digests": {"features": DIGEST_A},
    }
    arguments.update(changes)
    return stage_key(**arguments)


def write_outputs(store: StageStore, key: str) -> dict[str, Path]:
    folder = store.stage_dir("noise", key)
    (folder / "pairs.parquet").write_bytes(b"pairs")
    (folder / "plots").mkdir(exist_ok=True)
    (folder / "plots" / "norms.png").write_bytes(b"png")
    return {"pairs": folder / "pairs.parquet", "norms": Path("plots/norms.png")}


# ---------------------------------------------------------------------------------------------
# Keys


def test_key_is_sha256_hex() -> None:
    key = base_key()

    assert len(key) == 64
    assert int(key, 16) >= 0


def test_key_ignores_mapping_order() -> None:
    reordered = {"use": ["negative", "positive"], "steps": 100, "lr": 0.1}

    assert base_key(config=reordered) == base_key()


@pytest.mark.parametrize(
    "changes",
    [
        {"stage": "concepts"},
        {"code_version": "2"},
        {"config": {"lr": 0.1, "steps": 101, "use": ["negative", "positive"]}},
        {"config": {"lr": 0.1, "steps": 100, "use": ["positive", "negative"]}},
        {"config": {"lr": 0.1, "steps": 100, "use": ["negative", "positive"], "seed": None}},
        {"input_digests": {"features": DIGEST_B}},
        {"input_digests": {"features": DIGEST_A, "labels": DIGEST_B}},
    ],
)
def test_key_changes_with_each_input(changes: dict[str, object]) -> None:
    assert base_key(**changes) != base_key()


def test_key_distinguishes_close_floats() -> None:
    first = base_key(config={"lr": 0.1})
    second = base_key(config={"lr": 0.1 + 1e-12})

    assert first != second


def test_key_distinguishes_bool_and_int() -> None:
    assert base_key(config={"flag": True}) != base_key(config={"flag": 1})


def test_key_accepts_dataclass_enum_numpy() -> None:
    typed = {"noise": NoiseConfig(Mode.SUBSPACE, np.int64(8), np.float32(0.25)), "out": Path("a/b")}
    plain = {"noise": {"mode": "subspace", "steps": 8, "clip": 0.25}, "out": "a/b"}

    assert base_key(config=typed) == base_key(config=plain)


@pytest.mark.parametrize(
    ("config", "where"),
    [
        ({"optimizer": {"params": object()}}, "config.optimizer.params"),
        ({"classes": {"cat", "dog"}}, "config.classes"),
        ({"weights": [1.0, np.zeros(3)]}, r"config.weights\[1\]"),
        ({"clip": float("nan")}, "config.clip"),
        ({"clip": float("inf")}, "config.clip"),
        ({"per_class": {1: 0.5}}, "config.per_class"),
    ],
)
def test_key_rejects_uncanonical_values(config: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        base_key(config=config)


def test_key_rejects_path_as_digest() -> None:
    with pytest.raises(ValueError, match=r"input_digests\['features'\].*not a sha256"):
        base_key(input_digests={"features": "/data/features.parquet"})


@pytest.mark.parametrize("stage", ["", "Noise", "../noise", "noise/x", ".hidden"])
def test_key_rejects_invalid_stage_names(stage: str) -> None:
    with pytest.raises(ValueError, match="invalid stage name"):
        base_key(stage=stage)


# ---------------------------------------------------------------------------------------------
# MEGU_HOME


def test_megu_home_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEGU_HOME", str(tmp_path / "home"))

    home = megu_home()

    assert home == (tmp_path / "home").resolve()
    assert home.is_dir()


def test_megu_home_default_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEGU_HOME", raising=False)
    monkeypatch.chdir(tmp_path)

    assert megu_home() == (tmp_path / ".megu").resolve()


def test_store_defaults_under_megu_home(megu_home: Path) -> None:
    assert StageStore().root == megu_home.resolve() / "stages"


# ---------------------------------------------------------------------------------------------
# Store


def test_commit_then_lookup_hits(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    key = base_key()
    files = write_outputs(store, key)

    committed = store.commit("noise", key, files, extra={"rows": 2})
    found = store.lookup("noise", key)

    assert found == committed
    assert found.path("norms").read_bytes() == b"png"
    assert found.files["norms"].path == "plots/norms.png"
    assert found.files["pairs"].sha256 == file_digest(files["pairs"])
    assert found.extra == {"rows": 2}


def test_lookup_misses_without_manifest(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    key = base_key()
    write_outputs(store, key)  # a run that crashed before commit

    assert store.lookup("noise", key) is None


def test_lookup_misses_deleted_artifact(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    key = base_key()
    files = write_outputs(store, key)
    store.commit("noise", key, files)

    files["pairs"].unlink()

    assert store.lookup("noise", key) is None


def test_lookup_misses_modified_artifact(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StageStore(tmp_path)
    key = base_key()
    files = write_outputs(store, key)
    store.commit("noise", key, files)

    files["pairs"].write_bytes(b"pairs, recomputed differently")

    assert store.lookup("noise", key) is None
    assert "'pairs'" in caplog.text
    assert "has sha256" in caplog.text


def test_commit_with_missing_file_writes_no_manifest(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    key = base_key()
    files = write_outputs(store, key)
    files["absent"] = store.stage_dir("noise", key) / "absent.parquet"

    with pytest.raises(ArtifactError, match="'absent'.*not found"):
        store.commit("noise", key, files)

    assert not (store.stage_dir("noise", key) / MANIFEST_NAME).exists()
    assert store.lookup("noise", key) is None


def test_commit_writes_manifest_after_files(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    key = base_key()
    files = write_outputs(store, key)

    store.commit("noise", key, files)

    folder = store.stage_dir("noise", key)
    manifest_time = (folder / MANIFEST_NAME).stat().st_mtime_ns
    assert all(folder.joinpath(p).stat().st_mtime_ns <= manifest_time for p in files.values())
    assert [name for name in os.listdir(folder) if name.endswith(".tmp")] == []


def test_commit_rejects_file_outside_folder(tmp_path: Path) -> None:
    store = StageStore(tmp_path / "store")
    key = base_key()
    outside = tmp_path / "elsewhere.parquet"
    outside.write_bytes(b"x")

    with pytest.raises(ValueError, match="outside the stage folder"):
        store.commit("noise", key, {"pairs": outside})


def test_commit_rejects_unserialisable_extra(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    key = base_key()
    files = write_outputs(store, key)

    with pytest.raises(ValueError, match="as JSON"):
        store.commit("noise", key, files, extra={"model": object()})

    assert store.lookup("noise", key) is None


def test_invalidate_removes_entry(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    key = base_key()
    store.commit("noise", key, write_outputs(store, key))

    assert store.invalidate("noise", key) is True
    assert store.lookup("noise", key) is None
    assert store.invalidate("noise", key) is False


def test_lookup_ignores_corrupt_manifest(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    key = base_key()
    store.commit("noise", key, write_outputs(store, key))

    (store.stage_dir("noise", key) / MANIFEST_NAME).write_text("{ not json")

    assert store.lookup("noise", key) is None


def test_lookup_rejects_escaping_manifest_path(tmp_path: Path) -> None:
    store = StageStore(tmp_path / "store")
    key = base_key()
    store.commit("noise", key, write_outputs(store, key))
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")

    manifest_path = store.stage_dir("noise", key) / MANIFEST_NAME
    document = json.loads(manifest_path.read_text())
    document["files"]["pairs"] = {"path": "../../../secret.txt", "sha256": file_digest(secret)}
    manifest_path.write_text(json.dumps(document))

    assert store.lookup("noise", key) is None


def test_lookup_rejects_other_key_manifest(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    key = base_key()
    other = base_key(code_version="2")
    store.commit("noise", key, write_outputs(store, key))

    copied = (store.stage_dir("noise", key) / MANIFEST_NAME).read_text()
    (store.stage_dir("noise", other) / MANIFEST_NAME).write_text(copied)

    assert store.lookup("noise", other) is None


def test_store_rejects_invalid_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid cache key"):
        StageStore(tmp_path).stage_dir("noise", "../../etc")
