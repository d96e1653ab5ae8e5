"""What the MLLM oracles share: prompts, answer parsing, exemplar images and cached scoring.

Class names, images and answers are data. Class names enter prompts as JSON string literals.
An answer is accepted only if it matches its schema:
- true/false prompt: the single word True or False (any case), optionally wrapped in
  whitespace, quotes, asterisks or a final period; anything else is malformed.
- JSON prompt: one JSON object, optionally inside one Markdown code fence, whose keys are
  exactly the candidate names (matched without regard to case, underscores or repeated
  spaces) and whose values are numbers. Extra keys, unknown or missing candidates, duplicate
  keys, strings, booleans, NaN and text around the object make the answer malformed. A
  number outside 0 to 10 is clipped into that range and logged.
A malformed answer is asked again up to `OracleConfig.retries` times; after that the query
raises OracleAnswerError quoting the raw answer. Nothing from an answer is executed or used
as a path: cache files are named by a hash of the question alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from megu_core.errors import MeguError
from megu_core.megu.answer_cache import Answer, AnswerCache
from megu_core.megu.config import OracleConfig
from megu_core.megu.oracles import ConceptOracle, class_name_to_words, validate_query

log = logging.getLogger(__name__)

# Bump when a prompt or the parsing of answers changes, because the answer cache keys its
# entries on it. The pipeline's stage cache does not see it: bump the concepts stage's code
# version in tasks/stage.py too.
PROMPT_VERSION = "1"
MAX_NAME_CHARS = 100  # longer class names are rejected before they reach a prompt
MAX_ANSWER_CHARS = 20_000  # longer answers are malformed: no valid answer comes near this
QUOTED_ANSWER_CHARS = 500  # how much of a raw answer an error message quotes
JSON_SCORE_MAX = 10  # the JSON prompt asks for scores from 0 to JSON_SCORE_MAX

TRUEFALSE_PROMPT = (
    "These images show examples of the concept {target}. Does the object in these images "
    "share visual features with a {candidate}? Answer with one word: True or False."
)
JSON_PROMPT = (
    "These images show examples of the concept {target}. For each candidate class in the "
    "JSON list {candidates}, rate from 0 to {top} how much the object in these images shares "
    "visual features with that class (0: nothing in common, {top}: the same kind of object). "
    "Reply with only a JSON object whose keys are exactly the candidate classes and whose "
    'values are integers from 0 to {top}, for example {{"dog": 7, "truck": 1}} for the '
    "candidates dog and truck."
)

_FENCED = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL | re.IGNORECASE)
_TRUEFALSE_WRAPPING = " \t\r\n\"'`*."

T = TypeVar("T")


class OracleError(MeguError):
    """An MLLM oracle could not score a concept."""


class OracleAnswerError(OracleError, ValueError):
    """A model's answer stayed malformed after every retry; the message quotes the raw answer."""


class OracleRequestError(OracleError, RuntimeError):
    """An endpoint request failed after every retry, or failed in a way a retry cannot fix."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # HTTP status code, None where no response arrived


class MalformedAnswerError(ValueError):
    """One answer does not match its schema; the caller retries or raises OracleAnswerError."""


# ---------------------------------------------------------------------------------------------
# Prompts and answers


def quoted_name(name: str) -> str:
    """Return a class name as words inside a JSON string literal, the form prompts contain."""
    words = class_name_to_words(name)
    if len(words) > MAX_NAME_CHARS:
        raise ValueError(
            f"class name {words[:40]!r}... has {len(words)} characters; MLLM prompts accept "
            f"at most {MAX_NAME_CHARS}. Shorten the dataset's class names."
        )
    return json.dumps(words, ensure_ascii=False)


def truefalse_prompt(target: str, candidate: str) -> str:
    """Return the true/false question about one candidate class."""
    return TRUEFALSE_PROMPT.format(target=quoted_name(target), candidate=quoted_name(candidate))


def json_prompt(target: str, candidates: Sequence[str]) -> str:
    """Return the JSON scoring question about all candidate classes at once."""
    names = "[" + ", ".join(quoted_name(c) for c in candidates) + "]"
    return JSON_PROMPT.format(target=quoted_name(target), candidates=names, top=JSON_SCORE_MAX)


def quote_answer(answer: str) -> str:
    """Return `answer` as a Python literal, cut to QUOTED_ANSWER_CHARS, for error messages."""
    if len(answer) <= QUOTED_ANSWER_CHARS:
        return repr(answer)
    return f"{answer[:QUOTED_ANSWER_CHARS]!r}... ({len(answer)} characters)"


def parse_truefalse(answer: str) -> bool:
    """Return the truth value of a true/false answer, or raise MalformedAnswerError."""
    value = truefalse_word(answer)
    if value is None:
        raise MalformedAnswerError("expected the single word True or False")
    return value


def truefalse_word(token: str) -> bool | None:
    """Return the truth value a token spells ("True", " true", "FALSE"), or None for other tokens."""
    word = token.strip(_TRUEFALSE_WRAPPING).casefold()
    return {"true": True, "false": False}.get(word)


def parse_json_scores(answer: str, candidates: Sequence[str]) -> dict[str, float]:
    """Return each candidate's score of a JSON answer, divided by JSON_SCORE_MAX into [0, 1].

    Raises MalformedAnswerError unless the answer matches the schema in the module docstring.
    """
    document = _json_object(answer)
    by_words = {_name_key(c): c for c in candidates}

    unknown = [key for key in document if _name_key(key) not in by_words]
    if unknown:
        listed = ", ".join(repr(key[:40]) for key in unknown[:5])
        raise MalformedAnswerError(f"unknown candidate names or extra keys: {listed}")
    answered = {by_words[_name_key(key)]: value for key, value in document.items()}
    missing = [c for c in candidates if c not in answered]
    if missing:
        raise MalformedAnswerError(f"missing candidates: {', '.join(missing[:5])}")

    return {c: _json_score(c, answered[c]) / JSON_SCORE_MAX for c in candidates}


def _json_object(answer: str) -> dict[str, Any]:
    if len(answer) > MAX_ANSWER_CHARS:
        raise MalformedAnswerError(f"the answer is longer than {MAX_ANSWER_CHARS} characters")
    text = answer.strip()
    fenced = _FENCED.fullmatch(text)
    if fenced:
        text = fenced.group(1)

    try:
        document = json.loads(
            text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as exc:
        raise MalformedAnswerError(
            f"not one JSON object: {exc.msg} at character {exc.pos}"
        ) from exc
    if not isinstance(document, dict):
        raise MalformedAnswerError(f"expected a JSON object, got a JSON {type(document).__name__}")
    return document


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise MalformedAnswerError(f"duplicate keys: {', '.join(repr(k) for k in duplicates[:5])}")
    return dict(pairs)


def _reject_constant(name: str) -> float:
    raise MalformedAnswerError(f"{name} is not a score")


def _name_key(name: str) -> str:
    return re.sub(r"[_\s]+", " ", name).strip().casefold()


def _json_score(candidate: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedAnswerError(f"the score of {candidate!r} is {value!r}, not a number")
    clipped = min(max(float(value), 0.0), float(JSON_SCORE_MAX))
    if clipped != value:
        log.warning(
            "clipped the score %r of candidate %r into [0, %d]", value, candidate, JSON_SCORE_MAX
        )
    return clipped


# ---------------------------------------------------------------------------------------------
# Exemplar images


def nearest_to_prototype(features: torch.Tensor, k: int) -> torch.Tensor:
    """Return the indices of the k rows of `features` (n, d) nearest to their mean, nearest first.

    These are the exemplars of a concept: its most typical samples in the model's feature space.
    """
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(
            f"features must have shape (n, d) with n >= 1, got {tuple(features.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")

    prototype = features.float().mean(dim=0)  # (d,)
    distances = (features.float() - prototype).norm(dim=1)  # (n,)
    return torch.argsort(distances, stable=True)[:k]  # (min(k, n),)


def check_exemplars(exemplars: torch.Tensor | None, backend: str) -> torch.Tensor:
    """Return `exemplars` on the CPU after checking it is a (k, 3, h, w) uint8 tensor."""
    if exemplars is None:
        raise ValueError(
            f"the {backend} oracle needs exemplar images of the target concept; pass "
            "exemplars=(k, 3, h, w) uint8 images, as the concepts stage does"
        )
    if (
        not isinstance(exemplars, torch.Tensor)
        or exemplars.dtype != torch.uint8
        or exemplars.dim() != 4
        or exemplars.shape[0] == 0
        or exemplars.shape[1] != 3
    ):
        found = (
            f"a {exemplars.dtype} tensor of shape {tuple(exemplars.shape)}"
            if isinstance(exemplars, torch.Tensor)
            else type(exemplars).__name__
        )
        raise ValueError(f"exemplars must be a (k, 3, h, w) uint8 tensor with k >= 1, got {found}")
    return exemplars.detach().cpu()


def exemplar_images(exemplars: torch.Tensor, image_size: int) -> list[Image.Image]:
    """Convert (k, 3, h, w) uint8 images to RGB PIL images whose longest edge is `image_size`."""
    images = []
    for image in exemplars:
        picture = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), mode="RGB")
        scale = image_size / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        images.append(picture.resize(size, Image.Resampling.BICUBIC))
    return images


def exemplar_hashes(exemplars: torch.Tensor) -> list[str]:
    """Return the sha256 of each image's shape and pixels, for cache keys."""
    hashes = []
    for image in exemplars:
        digest = hashlib.sha256(str(tuple(image.shape)).encode())
        digest.update(image.contiguous().numpy().tobytes())
        hashes.append(digest.hexdigest())
    return hashes


# ---------------------------------------------------------------------------------------------
# The shared oracle


class MLLMOracle(ConceptOracle):
    """Scores candidates by asking a multimodal LLM about exemplar images of the target.

    Subclasses implement the model calls: `_truefalse_answers` and `_generate`. This class
    builds prompts, reads and fills the answer cache, retries malformed answers and counts
    queries and cache hits in `stats`.
    """

    uses_exemplars = True
    backend = ""  # the oracle kind, set by each subclass

    def __init__(self, config: OracleConfig, cache: AnswerCache | None = None) -> None:
        if config.kind != self.backend:
            raise ValueError(
                f"{type(self).__name__} needs an OracleConfig of kind {self.backend!r}, "
                f"got {config.kind!r}"
            )
        self.config = config
        self.cache = cache if cache is not None else AnswerCache()
        self._stats_lock = threading.Lock()

    def score(
        self,
        target: str,
        candidates: Sequence[str],
        exemplars: torch.Tensor | None = None,
    ) -> np.ndarray:
        validate_query(target, candidates)
        _reject_duplicate_candidates(candidates)
        exemplars = check_exemplars(exemplars, self.backend)

        fields = self._question_fields(target, candidates, exemplar_hashes(exemplars))
        scores = {c: self.cache.get(fields[c]) for c in candidates}
        missing = [c for c in candidates if scores[c] is None]
        self._count(cache_hits=len(candidates) - len(missing))

        if missing:

            def store(candidate: str, answer: Answer) -> None:
                # Called as each answer arrives, so a later failure keeps the earlier ones.
                self.cache.put(fields[candidate], answer)
                scores[candidate] = answer.score

            images = exemplar_images(exemplars, self.config.image_size)
            self._ask(target, candidates, missing, images, store)

        log.info(
            "%s oracle scored %d candidates of %r: %d from the cache, %d asked",
            self.backend,
            len(candidates),
            target,
            len(candidates) - len(missing),
            len(missing),
        )
        return np.array([scores[c] for c in candidates], dtype=np.float64)

    def identity(self) -> dict[str, str]:
        identity = {
            "backend": self.backend,
            "prompt_style": self.config.prompt_style,
            "prompt_version": PROMPT_VERSION,
        }
        identity.update(self._model_identity())
        return identity

    @abstractmethod
    def _model_identity(self) -> dict[str, str]:
        """Return "model", "model_digest" and any other keys that select the model's weights."""

    @abstractmethod
    def _truefalse_answers(
        self,
        prompts: Sequence[str],
        images: list[Image.Image],
        on_answer: Callable[[int, Answer], None],
    ) -> None:
        """Score each true/false prompt about the images by its probability of "True".

        Calls `on_answer(i, answer)` for prompt i as soon as its answer is known.
        """

    @abstractmethod
    def _generate(self, prompt: str, images: list[Image.Image], temperature: float) -> str:
        """Return the model's text answer to one prompt about the images."""

    def _ask(
        self,
        target: str,
        candidates: Sequence[str],
        missing: Sequence[str],
        images: list[Image.Image],
        store: Callable[[str, Answer], None],
    ) -> None:
        """Query the model for the missing candidates; a JSON prompt always shows all of them."""
        if self.config.prompt_style == "truefalse":
            prompts = [truefalse_prompt(target, c) for c in missing]
            self._truefalse_answers(prompts, images, lambda i, answer: store(missing[i], answer))
            return

        prompt = json_prompt(target, candidates)
        scores, text = self.with_retries(
            lambda temperature: self._generate(prompt, images, temperature),
            lambda answer: parse_json_scores(answer, candidates),
            f"the JSON scores of {target!r}",
        )
        for candidate in candidates:
            store(candidate, Answer(scores[candidate], text))

    def with_retries(
        self, ask: Callable[[float], str], parse: Callable[[str], T], what: str
    ) -> tuple[T, str]:
        """Ask and parse until an answer is valid, at most 1 + `retries` times.

        The first attempt uses `temperature`, the others `sample_temperature`. Returns the
        parsed value and the raw answer, or raises OracleAnswerError quoting the last answer.
        `ask` counts its own queries, since one call may send several requests.
        """
        answer, reason = "", ""
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            if attempt:
                self._count(retries=1)
                log.warning("%s: malformed answer (%s), asking again", what, reason)
            temperature = self.config.sample_temperature if attempt else self.config.temperature
            answer = ask(temperature)
            try:
                return parse(answer), answer
            except MalformedAnswerError as exc:
                reason = str(exc)

        raise OracleAnswerError(
            f"the {self.backend} oracle's answer for {what} stayed malformed after {attempts} "
            f"attempts ({reason}); last raw answer: {quote_answer(answer)}. Raise oracle.retries, "
            "use a larger model, or switch oracle.prompt_style."
        )

    def _question_fields(
        self, target: str, candidates: Sequence[str], hashes: list[str]
    ) -> dict[str, dict[str, Any]]:
        """Return the cache-key fields of each candidate's question."""
        config = self.config
        shared = {
            **self.identity(),
            "image_size": config.image_size,
            "temperature": config.temperature,
            "sample_temperature": config.sample_temperature,
            "n_samples": config.n_samples,
            "max_new_tokens": config.max_new_tokens,
            "target": class_name_to_words(target),
            # A JSON answer scores each candidate against all the others it was shown with.
            "candidate_set": sorted(map(class_name_to_words, candidates))
            if config.prompt_style == "json"
            else [],
            "exemplars": hashes,
        }
        return {c: {**shared, "candidate": class_name_to_words(c)} for c in candidates}

    def _count(self, queries: int = 0, cache_hits: int = 0, retries: int = 0) -> None:
        # Backends may answer from several threads.
        with self._stats_lock:
            self.stats.queries += queries
            self.stats.cache_hits += cache_hits
            self.stats.retries += retries


def _reject_duplicate_candidates(candidates: Sequence[str]) -> None:
    keys = [_name_key(c) for c in candidates]
    duplicates = sorted({c for c, key in zip(candidates, keys, strict=True) if keys.count(key) > 1})
    if duplicates:
        raise ValueError(
            f"candidates {duplicates} name the same class once underscores and case are "
            "ignored; an MLLM could not tell them apart. Rename the classes."
        )
