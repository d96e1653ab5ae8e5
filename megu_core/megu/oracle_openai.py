"""The `openai` MLLM oracle: an OpenAI-compatible chat-completions endpoint.

Works with vLLM, Ollama, llama.cpp's server, LM Studio and hosted APIs. Exemplars travel as
base64 PNG data URLs. A true/false score is p(True) / (p(True) + p(False)) read from the
token log-probabilities where the server returns them, else the fraction of "True" among
`n_samples` sampled answers. The API key comes from the environment variable that
`oracle.api_key_env` names and is sent only in the Authorization header.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import math
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from megu_core.errors import ConfigError
from megu_core.megu.config import OPENAI_BASE_URL_ENV, OPENAI_MODEL_ENV, OracleConfig
from megu_core.megu.oracle_common import (
    Answer,
    AnswerCache,
    MalformedAnswerError,
    MLLMOracle,
    OracleAnswerError,
    OracleRequestError,
    parse_truefalse,
    quote_answer,
    truefalse_word,
)

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})  # worth asking again
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # a chat completion is a few kB; larger bodies are rejected
MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After header is cut to this
TRUEFALSE_MAX_TOKENS = 5  # room for "True." but not for an explanation
TOP_LOGPROBS = 20  # the maximum of OpenAI's chat API; servers that reject it get sampled


class _RejectRedirects(urllib.request.HTTPRedirectHandler):
    """Turns redirects into errors, so the Authorization header never reaches another URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, "redirect rejected", headers, fp)


class OpenAIOracle(MLLMOracle):
    """Asks an OpenAI-compatible server, with timeouts, retries with backoff and a concurrency limit."""

    backend = "openai"

    def __init__(self, config: OracleConfig, cache: AnswerCache | None = None) -> None:
        super().__init__(config, cache)
        if not config.base_url:
            raise ConfigError(
                "the openai oracle needs the server's URL: set oracle.base_url or "
                f"${OPENAI_BASE_URL_ENV}, e.g. http://127.0.0.1:8000/v1"
            )
        if not config.model:
            raise ConfigError(
                "the openai oracle needs the server's model name: set oracle.model or "
                f"${OPENAI_MODEL_ENV}, e.g. Qwen/Qwen2-VL-2B-Instruct"
            )
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._opener = urllib.request.build_opener(_RejectRedirects())
        self._logprobs_supported: bool | None = None  # learnt from the first answer

    def _model_identity(self) -> dict[str, str]:
        # NOTE: a server does not reveal its weights, so the cache trusts the model name
        # served at this URL; clear $MEGU_HOME/oracle_cache after changing the weights.
        return {"model": self.config.model, "model_digest": "", "base_url": self.config.base_url}

    def _truefalse_answers(
        self,
        prompts: Sequence[str],
        images: list[Image.Image],
        on_answer: Callable[[int, Answer], None],
    ) -> None:
        urls = [image_data_url(image) for image in images]

        def answer(index: int) -> None:
            on_answer(index, self._truefalse_answer(prompts[index], urls))

        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            # list() re-raises the first failure after the pool has finished the others.
            list(pool.map(answer, range(len(prompts))))

    def _generate(self, prompt: str, images: list[Image.Image], temperature: float) -> str:
        urls = [image_data_url(image) for image in images]
        body = self._body(prompt, urls, self.config.max_new_tokens, temperature)
        return _first_text(self.post(body))

    def _truefalse_answer(self, prompt: str, urls: list[str]) -> Answer:
        """Score one true/false prompt from log-probabilities, else from sampled answers."""
        if self._logprobs_supported is not False:
            answer = self._logprob_answer(prompt, urls)
            if answer is not None:
                return answer
        return self._sampled_answer(prompt, urls)

    def _logprob_answer(self, prompt: str, urls: list[str]) -> Answer | None:
        """Return the score from the first answer token's log-probabilities, or None when absent."""
        body = self._body(prompt, urls, TRUEFALSE_MAX_TOKENS, self.config.temperature)
        body.update({"logprobs": True, "top_logprobs": TOP_LOGPROBS})
        last: dict[str, Any] = {}

        def ask(temperature: float) -> str:
            last["response"] = self.post({**body, "temperature": temperature})
            return _first_text(last["response"])

        try:
            score, text = self.with_retries(
                ask, lambda text: logprob_score(last["response"]), f"the question {prompt!r}"
            )
        except _NoLogprobsError:
            self._switch_to_sampling("returned no log-probabilities")
            return None
        except OracleRequestError as exc:
            if exc.status != 400:
                raise
            self._switch_to_sampling(f"rejected the logprobs request ({exc})")
            return None
        self._logprobs_supported = True
        return Answer(score, text)

    def _sampled_answer(self, prompt: str, urls: list[str]) -> Answer:
        """Return the fraction of "True" among n_samples answers sampled at sample_temperature.

        Servers that ignore `n` return one answer per request, so requests repeat until n
        answers are in. Malformed answers are replaced by at most `retries` further requests.
        """
        needed = self.config.n_samples
        votes: list[bool] = []
        problems: list[str] = []  # the malformed answers, quoted in the error
        requests = 0
        while len(votes) < needed and requests < needed + self.config.retries:
            body = self._body(prompt, urls, TRUEFALSE_MAX_TOKENS, self.config.sample_temperature)
            body["n"] = needed - len(votes)
            response = self.post(body)
            requests += 1

            for text in _texts_or_problem(response, problems)[: needed - len(votes)]:
                try:
                    votes.append(parse_truefalse(text))
                except MalformedAnswerError:
                    problems.append(text)
        self._count(retries=len(problems))

        if len(votes) < needed:
            raise OracleAnswerError(
                f"the openai oracle got {len(votes)} of {needed} valid True/False answers to "
                f"{prompt!r} in {requests} requests; last malformed answer: "
                f"{quote_answer(problems[-1] if problems else '')}. Raise oracle.retries or "
                "use a model that follows the answer format."
            )
        text = json.dumps({"sampled": votes, "malformed": problems[:10]})
        return Answer(sum(votes) / needed, text)

    def _switch_to_sampling(self, reason: str) -> None:
        if self._logprobs_supported is not False:
            log.warning(
                "%s %s; scoring true/false prompts from %d sampled answers instead",
                self.url,
                reason,
                self.config.n_samples,
            )
        self._logprobs_supported = False

    def _body(
        self, prompt: str, urls: list[str], max_tokens: int, temperature: float
    ) -> dict[str, Any]:
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": url}} for url in urls
        ]
        content.append({"type": "text", "text": prompt})
        return {
            "model": self.config.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to the chat-completions URL and return the JSON response.

        Connection errors, timeouts, non-JSON bodies and the statuses in RETRY_STATUSES are
        retried after `backoff` seconds, doubled each time (or the server's Retry-After), at
        most `retries` times. Other HTTP errors raise OracleRequestError at once.
        """
        attempts = self.config.retries + 1
        reason = ""
        for attempt in range(attempts):
            if attempt:
                self._count(retries=1)
            self._count(queries=1)
            try:
                return self._post_once(body)
            except _RetryableError as exc:
                reason = str(exc)
                if attempt + 1 < attempts:
                    delay = (
                        exc.retry_after
                        if exc.retry_after is not None
                        else self.config.backoff * 2**attempt
                    )
                    log.warning("%s failed (%s); retrying in %.2f s", self.url, reason, delay)
                    time.sleep(delay * (1.0 + 0.1 * random.random()))  # jitter spreads workers

        raise OracleRequestError(
            f"request to {self.url} failed after {attempts} attempts: {reason}. Check that the "
            "server runs and serves oracle.model, or raise oracle.timeout or oracle.retries."
        )

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=self._headers(), method="POST"
        )
        try:
            with self._opener.open(request, timeout=self.config.timeout) as response:
                payload = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, self.url) from exc
        except (
            urllib.error.URLError,
            TimeoutError,
            ConnectionError,
            http.client.HTTPException,
        ) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise _RetryableError(f"{type(exc).__name__}: {reason}") from exc

        if len(payload) > MAX_RESPONSE_BYTES:
            raise OracleRequestError(
                f"{self.url} returned more than {MAX_RESPONSE_BYTES} bytes; a chat completion "
                "is a few kB, so check oracle.base_url"
            )
        try:
            response = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            quoted = quote_answer(payload[:200].decode(errors="replace"))
            raise _RetryableError(f"the response is not JSON: {quoted}") from exc
        if not isinstance(response, dict):
            raise _RetryableError("the response is not a JSON object")
        return response

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.config.api_key_env, "").strip()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers


class _RetryableError(Exception):
    """A failure that another attempt may not repeat: timeouts, connection errors, HTTP 5xx."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _NoLogprobsError(Exception):
    """The server answered without token log-probabilities; the oracle samples answers instead."""


def _http_error(exc: urllib.error.HTTPError, url: str) -> Exception:
    """Turn an HTTP error into a _RetryableError or an OracleRequestError with the server's message."""
    try:
        detail = exc.read(2000).decode(errors="replace")
    except OSError:
        detail = ""
    message = f"HTTP {exc.code} {exc.reason}: {quote_answer(detail)}"
    if exc.code in RETRY_STATUSES:
        return _RetryableError(message, _retry_after(exc.headers))
    return OracleRequestError(f"{url} rejected the request with {message}", status=exc.code)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None  # absent, or an HTTP date, which servers of this kind rarely send
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else None


def _choice_texts(response: dict[str, Any]) -> list[str]:
    """Return the message text of every choice, or raise MalformedAnswerError."""
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedAnswerError("the response has no choices")
    texts = []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise MalformedAnswerError("a choice has no message content")
        texts.append(content)
    return texts


def _first_text(response: dict[str, Any]) -> str:
    """Return the first choice's text, or "" when the response has none (parsing rejects it)."""
    try:
        return _choice_texts(response)[0]
    except MalformedAnswerError:
        return ""


def _texts_or_problem(response: dict[str, Any], problems: list[str]) -> list[str]:
    try:
        return _choice_texts(response)
    except MalformedAnswerError as exc:
        problems.append(f"<{exc}>")
        return []


def logprob_score(response: dict[str, Any]) -> float:
    """Return p(True) / (p(True) + p(False)) from the first answer token's top log-probabilities.

    Raises _NoLogprobsError when the response has no log-probabilities, and
    MalformedAnswerError when the first answer token has neither True nor False among its
    alternatives.
    """
    text = _choice_texts(response)[0]
    logprobs = response["choices"][0].get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content:
        raise _NoLogprobsError("the response has no token log-probabilities")

    tokens = [t for t in content if isinstance(t, dict) and str(t.get("token", "")).strip()]
    alternatives = tokens[0].get("top_logprobs") if tokens else None
    if not isinstance(alternatives, list):
        raise MalformedAnswerError("the first answer token has no top_logprobs")

    mass = {True: 0.0, False: 0.0}
    for alternative in alternatives:
        if not isinstance(alternative, dict):
            continue
        value = truefalse_word(str(alternative.get("token", "")))
        logprob = alternative.get("logprob")
        if value is not None and isinstance(logprob, int | float) and -math.inf < logprob <= 0:
            mass[value] += math.exp(logprob)
    if mass[True] + mass[False] == 0.0:
        raise MalformedAnswerError(
            f"neither True nor False is among the likely first tokens of the answer {text!r}"
        )
    return mass[True] / (mass[True] + mass[False])


def image_data_url(image: Image.Image) -> str:
    """Encode an image as a base64 PNG data URL, the form chat-completions servers accept."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
