"""Concept oracles: similarity scores in [0, 1] between a target concept and candidate classes.

Callers query an oracle once per target concept, not per sample, and store the scores in
the transition matrix. `identity()` describes everything that changes the scores, so callers
can key cached scores on it. The MLLM oracles (`transformers`, `openai`) live in their own
modules and are imported only when `create_oracle` builds one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from megu_core.errors import ConfigError
from megu_core.megu.answer_cache import Answer, AnswerCache
from megu_core.megu.config import DEFAULT_ORACLE_MODELS, OracleConfig

log = logging.getLogger(__name__)

# Bump when the conversion of class names into prompts or the scoring formula changes,
# because cached scores keyed on the old identity would then be stale.
TEXT_PROMPT_VERSION = "1"

_TRUE_STRINGS = ("1", "true", "yes", "on")


@dataclass
class OracleStats:
    """Counts of one oracle's work, so that callers can report queries against cache hits."""

    queries: int = 0  # prompts or embedding batches sent to a model or an endpoint
    cache_hits: int = 0  # candidate scores read from the answer cache instead
    retries: int = 0  # repeated requests after a malformed answer or a failed request


class ConceptOracle(ABC):
    """Interface of a scorer of similarity between a target concept and candidate classes."""

    # True for oracles that look at images of the target; callers then pass `exemplars`.
    uses_exemplars: bool = False

    @abstractmethod
    def score(
        self,
        target: str,
        candidates: Sequence[str],
        exemplars: torch.Tensor | None = None,  # (k, 3, h, w) uint8 images of the target
    ) -> np.ndarray:
        """Return one similarity in [0, 1] per candidate, shape (len(candidates),).

        Oracles with `uses_exemplars` False ignore `exemplars`.
        """

    @abstractmethod
    def identity(self) -> dict[str, str]:
        """Return the backend, model and prompt version, for cache keys."""

    @property
    def stats(self) -> OracleStats:
        """Return the queries and cache hits counted since this oracle was built."""
        if not hasattr(self, "_stats"):
            self._stats = OracleStats()
        return self._stats


def class_name_to_words(name: str) -> str:
    """Turn a dataset class name such as "aquatic_mammals" into words ("aquatic mammals")."""
    words = re.sub(r"[_\s]+", " ", name).strip()
    if not words:
        raise ValueError(f"class name {name!r} contains no words; class names must be non-empty")
    return words


def validate_query(target: str, candidates: Sequence[str]) -> None:
    """Raise unless `target` and every candidate are non-empty class names."""
    if isinstance(candidates, str):
        raise TypeError(
            f"candidates must be a sequence of class names, got the string {candidates!r}; "
            "wrap a single name in a list"
        )
    if len(candidates) == 0:
        raise ValueError(f"no candidate classes given for target {target!r}; pass at least one")
    class_name_to_words(target)
    for candidate in candidates:
        class_name_to_words(candidate)


class UniformOracle(ConceptOracle):
    """Gives every candidate the same score: the "no machine guidance" ablation."""

    SCORE = 0.5

    def score(
        self,
        target: str,
        candidates: Sequence[str],
        exemplars: torch.Tensor | None = None,
    ) -> np.ndarray:
        validate_query(target, candidates)
        return np.full(len(candidates), self.SCORE, dtype=np.float64)

    def identity(self) -> dict[str, str]:
        return {"backend": "uniform", "model": "", "prompt_version": ""}


def offline_requested() -> bool:
    """Read HF_HUB_OFFLINE at call time, because huggingface_hub reads it only at import."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in _TRUE_STRINGS:
            return True
    return False


def folder_digest(folder: Path) -> str:
    """Hash the names and contents of every file under `folder`, so a changed model changes the key."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class TextOracle(ConceptOracle):
    """Cosine similarity of sentence embeddings of class-name prompts, mapped to [0, 1].

    Embeddings are the attention-masked mean of the encoder's last hidden states,
    L2-normalised; the score is (cos + 1) / 2. The model loads on the first query that
    `cache` (None: no cache) cannot serve.
    """

    def __init__(
        self,
        model: str = DEFAULT_ORACLE_MODELS["text"],
        prompt_template: str = OracleConfig.prompt_template,
        device: str | torch.device = "cpu",
        cache: AnswerCache | None = None,
    ) -> None:
        OracleConfig(kind="text", model=model, prompt_template=prompt_template)  # validates both
        self.model_name = model
        self.prompt_template = prompt_template
        self.device = torch.device(device)
        self.cache = cache
        self._tokenizer = None
        self._encoder = None
        self._embeddings: dict[str, torch.Tensor] = {}  # words -> (d,) unit vector
        self._identity: dict[str, str] | None = None

    def prompt(self, name: str) -> str:
        """Return the prompt that embeds the class `name`."""
        return self.prompt_template.format(name=class_name_to_words(name))

    def score(
        self,
        target: str,
        candidates: Sequence[str],
        exemplars: torch.Tensor | None = None,
    ) -> np.ndarray:
        validate_query(target, candidates)
        cached = self._cached_scores(target, candidates)
        if cached is not None:
            return cached

        embeddings = self._embed([target, *candidates])  # (1 + len(candidates), d)
        cosine = embeddings[1:] @ embeddings[0]  # (len(candidates),)

        scores = ((cosine + 1.0) / 2.0).clamp(0.0, 1.0).double().numpy()
        if self.cache is not None:
            for candidate, value in zip(candidates, scores, strict=True):
                self.cache.put(self._question(target, candidate), Answer(float(value), ""))
        return scores

    def _cached_scores(self, target: str, candidates: Sequence[str]) -> np.ndarray | None:
        """Return every candidate's score from the cache, or None unless all are there."""
        if self.cache is None:
            return None
        values = [self.cache.get(self._question(target, c)) for c in candidates]
        if any(value is None for value in values):
            return None
        self.stats.cache_hits += len(values)
        return np.array(values, dtype=np.float64)

    def _question(self, target: str, candidate: str) -> dict[str, str]:
        words = {"target": class_name_to_words(target), "candidate": class_name_to_words(candidate)}
        return {**self.identity(), **words}

    def identity(self) -> dict[str, str]:
        if self._identity is None:
            folder = Path(self.model_name)
            self._identity = {
                "backend": "text",
                "model": self.model_name,
                # NOTE: a Hub id has no digest here, so a new upstream revision keeps the same key.
                "model_digest": folder_digest(folder) if folder.is_dir() else "",
                "prompt_template": self.prompt_template,
                "prompt_version": TEXT_PROMPT_VERSION,
            }
        return dict(self._identity)

    def _embed(self, names: Sequence[str]) -> torch.Tensor:
        """Return unit embeddings of the prompts of `names`, encoding the uncached ones in one batch."""
        words = [class_name_to_words(name) for name in names]
        missing = sorted({w for w in words if w not in self._embeddings})
        if missing:
            self.stats.queries += 1
            encoded = self._encode([self.prompt(w) for w in missing])
            self._embeddings.update(zip(missing, encoded, strict=True))
        return torch.stack([self._embeddings[w] for w in words])  # (len(names), d)

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        """Embed prompts as L2-normalised means of the last hidden states over real tokens.

        Padding tokens are masked out of the mean. The result is on the CPU, shape (n, d).
        """
        tokenizer, encoder = self._load()
        batch = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(
            self.device
        )

        hidden = encoder(**batch).last_hidden_state  # (n, tokens, d)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (n, tokens, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # (n, d)

        return F.normalize(pooled.float(), dim=-1).cpu()

    def _load(self) -> tuple[Any, torch.nn.Module]:
        if self._encoder is None:
            from transformers import AutoModel, AutoTokenizer

            offline = offline_requested()
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.model_name, local_files_only=offline)
                encoder = AutoModel.from_pretrained(self.model_name, local_files_only=offline)
            except OSError as exc:
                hint = (
                    " HF_HUB_OFFLINE is set, so only local files were searched." if offline else ""
                )
                raise ConfigError(
                    f"failed to load the text oracle model {self.model_name!r}.{hint} Set "
                    "oracle.model to a local folder with the model files, or to a Hub id that "
                    "is in the local cache or can be downloaded."
                ) from exc

            self._tokenizer = tokenizer
            self._encoder = encoder.to(self.device).eval()
            log.info("loaded text oracle model %s on %s", self.model_name, self.device)
        return self._tokenizer, self._encoder


def _create_text_oracle(config: OracleConfig) -> ConceptOracle:
    return TextOracle(config.model_id, config.prompt_template, cache=AnswerCache())


def _create_uniform_oracle(config: OracleConfig) -> ConceptOracle:
    return UniformOracle()


def _create_transformers_oracle(config: OracleConfig) -> ConceptOracle:
    from megu_core.megu.oracle_transformers import TransformersOracle

    return TransformersOracle(config)


def _create_openai_oracle(config: OracleConfig) -> ConceptOracle:
    from megu_core.megu.oracle_openai import OpenAIOracle

    return OpenAIOracle(config)


_ORACLE_FACTORIES: dict[str, Callable[[OracleConfig], ConceptOracle]] = {
    "text": _create_text_oracle,
    "uniform": _create_uniform_oracle,
    "transformers": _create_transformers_oracle,
    "openai": _create_openai_oracle,
}


def create_oracle(config: OracleConfig) -> ConceptOracle:
    """Build the oracle that `config.kind` names."""
    factory = _ORACLE_FACTORIES.get(config.kind)
    if factory is None:
        raise ConfigError(
            f"unknown oracle kind {config.kind!r}; available kinds: {', '.join(sorted(_ORACLE_FACTORIES))}"
        )
    return factory(config)


def list_oracle_kinds() -> list[str]:
    """Return the oracle kinds that `create_oracle` can build, sorted."""
    return sorted(_ORACLE_FACTORIES)
