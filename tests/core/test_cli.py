"""`megu train` and `megu evaluate` end to end on a tiny dataset."""

from __future__ import annotations

from pathlib import Path

from flows.cli import main
from tests.factories import write_parquet_dataset


def test_train_then_evaluate_prints_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEGU_HOME", str(tmp_path / "home"))
    data = write_parquet_dataset(tmp_path / "tiny", {"train": 8, "test": 4})
    checkpoint = tmp_path / "model"

    assert (
        main(
            [
                "train",
                "--dataset",
                str(data),
                "--preset",
                "tiny",
                "--out",
                str(checkpoint),
                "--no-progress",
            ]
        )
        == 0
    )
    trained = capsys.readouterr().out
    assert "test accuracy" in trained
    assert "bare fwd+bwd images/s" in trained
    assert (checkpoint / "model.safetensors").is_file()

    assert main(["evaluate", "--model", str(checkpoint), "--forget", "class:red_things"]) == 0
    table = capsys.readouterr().out
    assert "| model | forget acc (%) | retain acc (%)" in table
    assert "| model |" in table.splitlines()[0]


def test_evaluate_bad_request_exits_with_message(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MEGU_HOME", str(tmp_path / "home"))
    data = write_parquet_dataset(tmp_path / "tiny", {"train": 4, "test": 2})
    checkpoint = tmp_path / "model"
    main(
        [
            "train",
            "--dataset",
            str(data),
            "--preset",
            "tiny",
            "--out",
            str(checkpoint),
            "--no-progress",
        ]
    )

    status = main(["evaluate", "--model", str(checkpoint), "--forget", "class:cat"])

    assert status == 2
    assert "unknown class 'cat'" in caplog.text


def test_unknown_override_key_is_rejected(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MEGU_HOME", str(tmp_path / "home"))

    status = main(
        ["train", "--dataset", str(Path(tmp_path)), "--preset", "tiny", "--set", "train.speed=3"]
    )

    assert status == 2
    assert "unknown configuration key 'train.speed'" in caplog.text


def test_wrong_type_override_names_key(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MEGU_HOME", str(tmp_path / "home"))

    status = main(
        ["train", "--dataset", str(tmp_path), "--preset", "tiny", "--set", "train.epochs=abc"]
    )

    assert status == 2
    assert "train.epochs must be a number, got 'abc'" in caplog.text


def test_invalid_device_is_explained(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("MEGU_HOME", str(tmp_path / "home"))

    status = main(["run", "--dataset", str(tmp_path), "--preset", "tiny", "--device", "tpu"])

    # Once Prefect is imported its handler may print the record instead of propagating it.
    assert status == 2
    assert "invalid device 'tpu'" in caplog.text + capsys.readouterr().err
