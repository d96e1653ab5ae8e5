"""The transformers oracle end to end with a tiny random Idefics3 model built and saved offline."""

from __future__ import annotations

import logging
import math

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoProcessor, PreTrainedTokenizerFast

from flows.cli import main
from megu_core.artifacts import read_frame
from megu_core.checkpoint import ModelSpec, save_checkpoint
from megu_core.errors import ConfigError
from megu_core.megu import OracleConfig, create_oracle
from megu_core.megu.oracle_common import AnswerCache, OracleAnswerError
from megu_core.megu.oracle_transformers import (
    TransformersOracle,
    answer_token_ids,
    truefalse_scores,
)
from megu_core.megu.oracles import folder_digest
from megu_core.pipeline.common import load_prepared
from megu_core.pipeline.concepts import query_concepts
from megu_core.pipeline.config import pipeline_config
from megu_core.pipeline.features import extract_features
from tests.factories import COARSE_NAMES, write_parquet_dataset
from tests.megu.tiny_vlm import save_tiny_idefics3

CANDIDATES = ["dog", "truck", "frog"]


@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory):
    return save_tiny_idefics3(tmp_path_factory.mktemp("tiny-idefics3"))


@pytest.fixture
def exemplars() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=generator)


@pytest.fixture
def make_oracle(vlm_folder, tmp_path):
    def make(cache_name: str = "cache", **settings) -> TransformersOracle:
        values = {"kind": "transformers", "model": str(vlm_folder), "image_size": 32}
        values.update(settings)
        return TransformersOracle(OracleConfig(**values), AnswerCache(tmp_path / cache_name))

    return make


@pytest.fixture
def tiny_run(tmp_path, megu_home, vlm_folder):
    """A tiny dataset, an untrained checkpoint on it, and the tiny VLM."""
    data = write_parquet_dataset(tmp_path / "data", {"train": 6, "test": 2})
    torch.manual_seed(0)
    spec = ModelSpec("resnet18", len(COARSE_NAMES), 4)
    data_config = {
        "source": str(data),
        "label_column": None,
        "fine_label_column": None,
        "image_size": 32,
    }
    save_checkpoint(tmp_path / "model", spec.build(), spec, {"config": {"data": data_config}})
    return data, tmp_path / "model"


def test_answer_ids_of_tiny_tokenizer(vlm_folder):
    tokenizer = AutoProcessor.from_pretrained(vlm_folder).tokenizer

    true_ids, false_ids = answer_token_ids(tokenizer)

    assert tokenizer.convert_tokens_to_ids("True") in true_ids
    assert tokenizer.convert_tokens_to_ids("ĠFalse") in false_ids
    assert not set(true_ids) & set(false_ids)


def test_answer_ids_fall_back_to_first_tokens():
    tokenizer = Tokenizer(models.BPE(vocab={chr(c): c - 65 for c in range(65, 123)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "removed")
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer)

    true_ids, false_ids = answer_token_ids(wrapped)

    assert sorted(wrapped.convert_ids_to_tokens(true_ids)) == ["T", "t"]
    assert sorted(wrapped.convert_ids_to_tokens(false_ids)) == ["F", "f"]


def test_answer_ids_unknown_words_rejected():
    tokenizer = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")

    with pytest.raises(ConfigError, match=r"prompt_style=json"):
        answer_token_ids(wrapped)


def test_truefalse_scores_normalise_answer_mass():
    logits = torch.full((1, 6), -50.0)
    logits[0, [1, 2]] = math.log(0.2)  # two spellings of True
    logits[0, 4] = math.log(0.1)  # False
    logits[0, 0] = math.log(0.5)  # some other token

    answers, masses = truefalse_scores(logits, [1, 2], [4])

    assert answers[0].score == pytest.approx(0.8)
    assert masses[0] == pytest.approx(0.5, rel=1e-4)


def test_truefalse_scores_survive_underflow():
    logits = torch.zeros(1, 4)
    logits[0, 1] = -1000.0  # True
    logits[0, 2] = -1001.0  # False

    answers, _ = truefalse_scores(logits, [1], [2])

    assert answers[0].score == pytest.approx(1 / (1 + math.exp(-1)))


def test_tiny_model_scores_in_unit_interval(make_oracle, exemplars):
    oracle = make_oracle()

    scores = oracle.score("cat", CANDIDATES, exemplars)

    assert scores.shape == (3,)
    assert ((scores > 0) & (scores < 1)).all()
    assert oracle.stats.queries == 3


def test_batched_scores_match_single(make_oracle, exemplars):
    single = make_oracle("single", batch_size=1).score("cat", CANDIDATES, exemplars)

    batched = make_oracle("batched", batch_size=3).score("cat", CANDIDATES, exemplars)

    assert batched == pytest.approx(single, abs=1e-5)


def test_second_oracle_reads_cache_without_loading(make_oracle, exemplars, caplog):
    caplog.set_level(logging.INFO)
    first = make_oracle().score("cat", CANDIDATES, exemplars)
    assert "loaded" in caplog.text
    caplog.clear()

    oracle = make_oracle()
    second = oracle.score("cat", CANDIDATES, exemplars)

    assert second.tolist() == first.tolist()
    assert oracle.stats.queries == 0
    assert oracle.stats.cache_hits == 3
    assert "loaded" not in caplog.text


def test_other_images_miss_cache(make_oracle, exemplars):
    make_oracle().score("cat", CANDIDATES, exemplars)

    other_images = make_oracle()
    other_images.score("cat", CANDIDATES, exemplars.flip(0))

    assert other_images.stats.queries == 3


def test_json_style_random_model_raises_with_answer(make_oracle, exemplars):
    oracle = make_oracle(prompt_style="json", max_new_tokens=8, retries=1)

    with pytest.raises(OracleAnswerError, match=r"after 2 attempts .* last raw answer: '"):
        oracle.score("cat", CANDIDATES, exemplars)

    assert oracle.stats.queries == 2
    assert oracle.stats.retries == 1


def test_missing_exemplars_rejected(make_oracle):
    with pytest.raises(ValueError, match=r"transformers oracle needs exemplar images"):
        make_oracle().score("cat", CANDIDATES)


def test_identity_has_folder_digest(make_oracle, vlm_folder):
    identity = make_oracle().identity()

    assert identity["backend"] == "transformers"
    assert identity["model_digest"] == folder_digest(vlm_folder)


def test_create_oracle_builds_transformers(vlm_folder):
    oracle = create_oracle(OracleConfig(kind="transformers", model=str(vlm_folder)))

    assert isinstance(oracle, TransformersOracle)
    assert oracle.uses_exemplars


def test_missing_model_folder_raises(tmp_path, exemplars):
    config = OracleConfig(kind="transformers", model=str(tmp_path / "no-model"))
    oracle = TransformersOracle(config, AnswerCache(tmp_path / "cache"))

    with pytest.raises(ConfigError, match=r"failed to load the image-text-to-text model"):
        oracle.score("cat", CANDIDATES, exemplars)


def test_concepts_stage_shows_nearest_forget_samples(tiny_run, vlm_folder, tmp_path):
    data, checkpoint = tiny_run
    overrides = {
        "forget": "class:red_things",
        "device": "cpu",
        "oracle.kind": "transformers",
        "oracle.model": str(vlm_folder),
        "oracle.image_size": 32,
        "oracle.exemplars": 3,
    }
    cfg = pipeline_config(dataset=str(data), preset_name="tiny", overrides=overrides)
    _, request = load_prepared(cfg)
    features = extract_features(cfg, checkpoint, request.ids_hash, tmp_path / "features")

    output = query_concepts(
        cfg, features.files["features"], checkpoint, request.ids_hash, 0.5, tmp_path / "concepts"
    )

    chosen = output.summary["exemplars"]["red_things"]
    labels = read_frame(output.files["perturbing_labels"], "perturbing_labels")
    assert len(chosen) == 3
    assert set(chosen) <= set(request.sample_ids)
    assert output.summary["oracle_stats"]["queries"] == 3
    assert len(labels) == len(request)


def test_concepts_command_second_call_asks_nothing(tiny_run, vlm_folder, tmp_path, capsys):
    _, checkpoint = tiny_run
    out = tmp_path / "concepts-out"
    command = [
        "concepts",
        "--forget",
        "class:red_things",
        "--model",
        str(checkpoint),
        "--oracle",
        "transformers",
        "--set",
        f"oracle.model={vlm_folder}",
        "--set",
        "oracle.image_size=32",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]

    assert main(command) == 0
    first = capsys.readouterr().out
    assert main(command) == 0
    second = capsys.readouterr().out

    scores = pd.read_parquet(out / "concept_scores.parquet")
    assert "3 queries, 0 cache hits" in first
    assert "0 queries, 3 cache hits" in second
    assert "top perturbing classes for red_things" in second
    assert sorted(scores["candidate"]) == sorted(COARSE_NAMES[1:])
    assert (out / "transition_matrix.png").is_file()
    assert (out / "transition_matrix.parquet").is_file()


def test_concepts_command_uniform_needs_no_model(tiny_run, capsys, tmp_path):
    data, _ = tiny_run

    status = main(
        ["concepts", "--forget", "class:blue_things", "--dataset", str(data), "--oracle", "uniform"]
    )

    report = capsys.readouterr().out
    assert status == 0
    assert "uniform oracle" in report
    assert "0 queries" in report


def test_concepts_command_mllm_without_model_fails(tiny_run, vlm_folder, caplog):
    data, _ = tiny_run

    status = main(
        [
            "concepts",
            "--forget",
            "class:blue_things",
            "--dataset",
            str(data),
            "--oracle",
            "transformers",
            "--set",
            f"oracle.model={vlm_folder}",
        ]
    )

    assert status == 2
    assert "needs the original model" in caplog.text
