"""Typed settings of MeGU's algorithm pieces: oracle, transition matrix, noise pair and loss.

Each dataclass validates itself on construction and raises ConfigError naming the field,
the invalid value and the allowed values, so a bad YAML key fails before any work starts.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from megu_core.errors import ConfigError

ORACLE_KINDS = ("text", "uniform", "transformers", "openai")
PROMPT_STYLES = ("truefalse", "json")
# The model each oracle kind loads when oracle.model is empty. The openai kind has none,
# because every server names its own models.
DEFAULT_ORACLE_MODELS = {
    "text": "sentence-transformers/all-MiniLM-L6-v2",  # 90 MB and fast on CPU
    "transformers": "HuggingFaceTB/SmolVLM-256M-Instruct",  # the smallest SmolVLM, 0.5 GB
}
OPENAI_BASE_URL_ENV = "OPENAI_BASE_URL"  # read when oracle.base_url is empty
OPENAI_MODEL_ENV = "OPENAI_MODEL"  # read when oracle.model is empty and oracle.kind is openai
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NOISE_MODES = ("optimized", "subspace")
NOISE_USES = ("both", "negative", "positive")


def _require_choice(field: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        allowed = ", ".join(repr(choice) for choice in choices)
        raise ConfigError(f"{field} must be one of {allowed}, got {value!r}")


def _require_number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{field} must be a finite number, got {value!r}")
    return float(value)


def _require_positive(field: str, value: object) -> None:
    if _require_number(field, value) <= 0:
        raise ConfigError(f"{field} must be greater than 0, got {value!r}")


def _require_non_negative(field: str, value: object) -> None:
    if _require_number(field, value) < 0:
        raise ConfigError(f"{field} must be 0 or greater, got {value!r}")


def _require_fraction(field: str, value: object) -> None:
    number = _require_number(field, value)
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"{field} must be between 0 and 1, got {value!r}")


def _require_positive_int(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{field} must be an integer of at least 1, got {value!r}")


def _require_non_negative_int(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{field} must be an integer of 0 or more, got {value!r}")


@dataclass(frozen=True)
class OracleConfig:
    """Settings of the concept oracle that scores a target concept against candidate classes.

    The API key of the openai kind is never a field: the oracle reads it from the environment
    variable that `api_key_env` names, so it stays out of logged configurations and cache keys.
    """

    kind: str = "text"  # offline and cheap, while an MLLM oracle needs a large model or an endpoint
    # A Hugging Face Hub id or a local folder (text, transformers) or the server's model name
    # (openai). Empty selects DEFAULT_ORACLE_MODELS[kind], or $OPENAI_MODEL for openai.
    model: str = ""
    prompt_template: str = "a photo of a {name}"  # text oracle: the prompt around each class name

    # MLLM oracles (transformers, openai)
    prompt_style: str = "truefalse"  # the published form; "json" asks once for all candidates
    exemplars: int = 4  # k: forget images nearest the target prototype shown with each question
    # Longest edge in pixels that exemplars are resized to. A 32 px CIFAR image would cover
    # only a few patches of a vision encoder built for inputs of 224 px or more.
    image_size: int = 224
    temperature: float = 0.0  # greedy first answers, so that a rerun gets the same answer
    # Sampled true/false answers (openai without log-probabilities) and retries after a
    # malformed answer use this temperature, because greedy decoding would repeat the answer.
    sample_temperature: float = 1.0
    n_samples: int = 5  # openai without log-probabilities: answers sampled per candidate
    # Answer length of JSON prompts. 100 candidates need an estimated 1,000 tokens: raise it then.
    max_new_tokens: int = 256
    retries: int = 2  # further attempts after a malformed answer or a failed request

    # transformers backend
    batch_size: int = 8  # true/false prompts per forward pass
    device: str = "auto"  # CUDA (in bf16) when present, else CPU in float32

    # openai backend
    base_url: str = ""  # e.g. http://127.0.0.1:8000/v1; empty reads $OPENAI_BASE_URL
    api_key_env: str = "OPENAI_API_KEY"  # name of the variable holding the key; unset sends no key
    timeout: float = 60.0  # seconds per HTTP request; generous, because busy servers queue requests
    backoff: float = 1.0  # seconds before the first retry of a failed request, doubled after each
    concurrency: int = 4  # simultaneous requests, so a shared server is not flooded

    def __post_init__(self) -> None:
        _require_choice("oracle.kind", self.kind, ORACLE_KINDS)
        self._fill_openai_from_environment()
        self._check_model()
        self._check_prompt_template()

        _require_choice("oracle.prompt_style", self.prompt_style, PROMPT_STYLES)
        for field in ("exemplars", "n_samples", "max_new_tokens", "batch_size", "concurrency"):
            _require_positive_int(f"oracle.{field}", getattr(self, field))
        _require_positive_int("oracle.image_size", self.image_size)
        _require_non_negative("oracle.temperature", self.temperature)
        _require_positive("oracle.sample_temperature", self.sample_temperature)
        _require_non_negative_int("oracle.retries", self.retries)
        _require_positive("oracle.timeout", self.timeout)
        _require_non_negative("oracle.backoff", self.backoff)
        self._check_device()
        self._check_openai_fields()

    @property
    def model_id(self) -> str:
        """The model this configuration selects: `model`, or the kind's default when empty."""
        return self.model or DEFAULT_ORACLE_MODELS.get(self.kind, "")

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict for logging and cache keys."""
        return asdict(self)

    def _fill_openai_from_environment(self) -> None:
        # Filled here, not in the oracle, so that logged configurations and stage cache keys
        # contain the endpoint and model that the scores come from.
        if self.kind != "openai":
            return
        if not self.base_url:
            object.__setattr__(self, "base_url", os.environ.get(OPENAI_BASE_URL_ENV, "").strip())
        if not self.model:
            object.__setattr__(self, "model", os.environ.get(OPENAI_MODEL_ENV, "").strip())

    def _check_model(self) -> None:
        if not isinstance(self.model, str) or (self.model and not self.model.strip()):
            raise ConfigError(
                "oracle.model must be a Hugging Face Hub id, a local folder, a server's model "
                f"name or empty for the default, got {self.model!r}"
            )

    def _check_prompt_template(self) -> None:
        if not isinstance(self.prompt_template, str) or "{name}" not in self.prompt_template:
            raise ConfigError(
                "oracle.prompt_template must contain the placeholder {name}, "
                f"got {self.prompt_template!r}"
            )
        try:
            self.prompt_template.format(name="cat")
        except (IndexError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"oracle.prompt_template {self.prompt_template!r} has a placeholder other than "
                "{name}; write literal braces as {{ and }}"
            ) from exc

    def _check_device(self) -> None:
        valid = isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device)
        if not valid:
            raise ConfigError(
                f"oracle.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )

    def _check_openai_fields(self) -> None:
        if not isinstance(self.api_key_env, str) or not _ENV_NAME.fullmatch(self.api_key_env):
            raise ConfigError(
                "oracle.api_key_env must be the name of an environment variable such as "
                f"OPENAI_API_KEY (not the key itself), got a value of {len(str(self.api_key_env))} "
                "characters"
            )
        if not isinstance(self.base_url, str):
            raise ConfigError(f"oracle.base_url must be a string, got {self.base_url!r}")
        if not self.base_url:
            return
        url = urlsplit(self.base_url)
        if "@" in url.netloc:
            # Rejected because the URL is logged and stored in cache keys.
            raise ConfigError(
                "oracle.base_url must not contain user:password@; put the API key into the "
                "environment variable that oracle.api_key_env names"
            )
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(
                "oracle.base_url must be an http:// or https:// URL with a host, e.g. "
                f"http://127.0.0.1:8000/v1, got {self.base_url!r}"
            )


@dataclass(frozen=True)
class TransitionConfig:
    """Temperatures and weights that turn oracle scores into perturbing labels and soft targets."""

    tau: float = 0.1  # with scores in [0, 1], a score gap of 0.1 becomes a probability ratio of e
    omega: float = 1.0  # weight of the original model's own evidence log p0(c | x)
    tau_q: float = 2.0  # softens q so that the 2nd and 3rd choices keep mass, as after a retrain
    random_beta: float | str = "auto"  # "auto" matches f0's test confidence; a float fixes beta

    def __post_init__(self) -> None:
        _require_positive("transition.tau", self.tau)
        _require_non_negative("transition.omega", self.omega)
        _require_positive("transition.tau_q", self.tau_q)

        if isinstance(self.random_beta, str):
            if self.random_beta != "auto":
                raise ConfigError(
                    "transition.random_beta must be 'auto' or a number between 0 and 1, "
                    f"got {self.random_beta!r}"
                )
        else:
            _require_fraction("transition.random_beta", self.random_beta)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict for logging and cache keys."""
        return asdict(self)


@dataclass(frozen=True)
class NoiseConfig:
    """Settings of the feature-space noise pair (negative and positive noise)."""

    mode: str = "optimized"  # "subspace" is the closed-form alternative kept for the benchmark
    use: str = "both"  # "negative" or "positive" keeps one noise and zeroes the other (ablation)
    steps: int = 100  # Adam steps per noise; each step is one head pass over the forget features
    lr: float = 0.1  # Adam learning rate on the noise vector
    rho: float = 0.1  # weight of the squared-norm penalty on each noise
    # Maximum noise norm as a multiple of the mean forget-feature norm. Unclipped, the negative
    # noise grows toward whichever class is farthest from the target.
    clip: float = 0.25
    random_scale: float = 0.5  # random forgetting keeps the class, so its noises are scaled down
    n_rel: int = 3  # related classes (by the transition row) that span the shared subspace
    rank: int = 8  # dimension of the target-specific subspace in subspace mode
    alpha: float = 1.0  # subspace mode: share of the target-specific component removed
    eta: float = 0.5  # subspace mode: step of the shared component toward the perturbing prototype

    def __post_init__(self) -> None:
        _require_choice("noise.mode", self.mode, NOISE_MODES)
        _require_choice("noise.use", self.use, NOISE_USES)
        _require_positive_int("noise.steps", self.steps)
        _require_positive("noise.lr", self.lr)
        _require_non_negative("noise.rho", self.rho)
        _require_positive("noise.clip", self.clip)
        _require_fraction("noise.random_scale", self.random_scale)
        _require_positive_int("noise.n_rel", self.n_rel)
        _require_positive_int("noise.rank", self.rank)
        _require_non_negative("noise.alpha", self.alpha)
        _require_non_negative("noise.eta", self.eta)

    @property
    def uses_negative(self) -> bool:
        return self.use in ("both", "negative")

    @property
    def uses_positive(self) -> bool:
        return self.use in ("both", "positive")

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict for logging and cache keys."""
        return asdict(self)


@dataclass(frozen=True)
class MeguLossConfig:
    """Weights of the finetuning loss terms beside the retain cross-entropy."""

    lambda_f: float = 1.0  # soft-target cross-entropy that re-aligns forget samples
    lambda_feat: float = 1.0  # squared distance of forget features to their mixed target z*
    lambda_kd: float = 0.0  # retain distillation from f0; off because it costs a second forward

    def __post_init__(self) -> None:
        _require_non_negative("loss.lambda_f", self.lambda_f)
        _require_non_negative("loss.lambda_feat", self.lambda_feat)
        _require_non_negative("loss.lambda_kd", self.lambda_kd)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict for logging and cache keys."""
        return asdict(self)
