"""Typed settings of MeGU's algorithm pieces: oracle, transition matrix, noise pair and loss.

Each dataclass validates itself on construction and raises ConfigError naming the field,
the invalid value and the allowed values, so a bad YAML key fails before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from megu_core.errors import ConfigError

# The MLLM backends ("transformers", "openai") join this list when their oracles exist.
ORACLE_KINDS = ("text", "uniform")
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


@dataclass(frozen=True)
class OracleConfig:
    """Settings of the concept oracle that scores a target concept against candidate classes."""

    kind: str = "text"  # offline and cheap, while an MLLM oracle needs a large model or an endpoint
    # A Hugging Face Hub id or a local folder; this model is 90 MB and fast on CPU.
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    prompt_template: str = "a photo of a {name}"  # the prompt each class name is embedded in

    def __post_init__(self) -> None:
        _require_choice("oracle.kind", self.kind, ORACLE_KINDS)

        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(
                f"oracle.model must be a Hugging Face Hub id or a local folder, got {self.model!r}"
            )

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

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict for logging and cache keys."""
        return asdict(self)


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
