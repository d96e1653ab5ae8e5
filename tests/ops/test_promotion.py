"""Promotion, rollback and version listing against a real SQLite MLflow registry, and their CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flows.cli import main
from megu_core import promotion, tracking
from megu_core.promotion import PromotionError

MODEL = "megu-tiny-resnet18-w4"


def make_checkpoint(folder: Path, seed: int) -> Path:
    """Write a tiny safetensors checkpoint with its configuration JSON."""
    folder.mkdir(parents=True)
    weights = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed))
    save_file({"head.weight": weights}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18"}))
    return folder


@pytest.fixture(scope="module")
def template_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MEGU_HOME whose registry has version 1 (original), 2 (passed) and 3 (failed)."""
    home = tmp_path_factory.mktemp("registry-template") / "megu-home"
    patcher = pytest.MonkeyPatch()
    patcher.setenv("MEGU_HOME", str(home))
    patcher.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    patcher.delenv("MLFLOW_REGISTRY_URI", raising=False)

    tags = [
        {"megu.role": "original"},
        {"megu.role": "unlearned", "megu.verdict": "passed", "megu.queue_request_id": "r-2"},
        {
            "megu.role": "unlearned",
            "megu.verdict": "failed",
            "megu.verdict_summary": "forget check failed, forget_accuracy 40.000 > 5",
        },
    ]
    with tracking.start_run("tiny") as run_id:
        for seed, version_tags in enumerate(tags):
            folder = make_checkpoint(home.parent / f"checkpoint-{seed}", seed)
            tracking.register_checkpoint(
                run_id, folder, MODEL, version_tags, artifact_path=f"checkpoints/{seed}"
            )
    tracking.set_alias(MODEL, "original", 1)
    patcher.undo()
    return home


@pytest.fixture
def registry(template_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point MEGU_HOME and MLflow at a private copy of the template registry."""
    home = tmp_path / "megu-home"
    shutil.copytree(template_home, home)
    monkeypatch.setenv("MEGU_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return home


def production_version() -> int:
    return tracking.get_version(MODEL, "production").version


def test_promote_passed_version_moves_alias(registry: Path):
    move = promotion.promote(2)

    assert production_version() == 2
    assert move.previous_version is None
    assert not move.forced
    promoted = json.loads(tracking.get_version(MODEL, 2).tags["megu.promoted.production"])
    assert promoted["previous_version"] is None


def test_promote_failed_version_raises(registry: Path):
    with pytest.raises(PromotionError, match="forget_accuracy 40.000 > 5"):
        promotion.promote(3)

    assert promotion.read_promotion_log() == []


def test_promote_version_without_verdict_raises(registry: Path):
    with pytest.raises(PromotionError, match="verdict none"):
        promotion.promote(1)


def test_forced_promotion_is_recorded(registry: Path):
    move = promotion.promote(3, force=True, reason="incident 12")

    assert production_version() == 3
    assert move.forced
    log = promotion.read_promotion_log()
    assert [(m.version, m.forced, m.reason, m.verdict) for m in log] == [
        (3, True, "incident 12", "failed")
    ]
    promoted = json.loads(tracking.get_version(MODEL, 3).tags["megu.promoted.production"])
    assert promoted["forced"] is True
    assert promoted["reason"] == "incident 12"


def test_rollback_restores_previous_holder(registry: Path):
    promotion.promote(2)
    promotion.promote(3, force=True, reason="test")

    move = promotion.rollback()

    assert production_version() == 2
    assert (move.version, move.previous_version) == (2, 3)
    assert "megu.rolled_back.production" in tracking.get_version(MODEL, 3).tags
    assert [m.action for m in promotion.read_promotion_log()] == ["promote", "promote", "rollback"]


def test_rollback_without_earlier_holder_raises(registry: Path):
    promotion.promote(2)

    with pytest.raises(PromotionError, match="no version held alias"):
        promotion.rollback()


def test_rollback_unset_alias_raises(registry: Path):
    with pytest.raises(PromotionError, match="not set"):
        promotion.rollback(alias="staging")


def test_rollback_counts_alias_moved_outside_megu(registry: Path):
    tracking.set_alias(MODEL, "production", 1)  # e.g. in the MLflow UI
    promotion.promote(2)

    assert promotion.rollback().version == 1


def test_promote_to_pipeline_alias_raises(registry: Path):
    with pytest.raises(PromotionError, match="moved by every pipeline run"):
        promotion.promote(2, alias="unlearned")


def test_promote_unknown_version_raises(registry: Path):
    with pytest.raises(PromotionError, match="no version 9"):
        promotion.promote(9)


def test_promote_current_holder_raises(registry: Path):
    promotion.promote(2)

    with pytest.raises(PromotionError, match="already points at version 2"):
        promotion.promote(2)


def test_list_versions_shows_aliases_and_verdicts(registry: Path):
    promotion.promote(2)

    versions = {v.version: v for v in promotion.list_versions()}

    assert set(versions) == {1, 2, 3}
    assert versions[1].aliases == ("original",)
    assert versions[2].aliases == ("production",)
    assert versions[2].verdict == "passed"
    assert versions[2].queue_request_id == "r-2"
    assert versions[3].verdict == "failed"


def test_model_name_must_be_given_when_several(registry: Path):
    with tracking.start_run("other") as run_id:
        folder = make_checkpoint(registry.parent / "other-checkpoint", 9)
        tracking.register_checkpoint(run_id, folder, "megu-other-resnet18-w4")

    with pytest.raises(PromotionError, match="--model"):
        promotion.promote(2)
    assert promotion.promote(2, model=MODEL).version == 2


def test_cli_promote_failed_verdict_exits_2(registry: Path):
    assert main(["promote", "3", "--alias", "production"]) == 2


def test_cli_models_lists_versions(registry: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["promote", "2"]) == 0
    assert main(["rollback"]) == 2  # no earlier holder
    capsys.readouterr()

    assert main(["models"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["model", "version", "aliases", "role"]
    row = next(line.split() for line in lines if line.split()[1] == "2")
    assert row[2] == "production"
    assert "passed" in row
