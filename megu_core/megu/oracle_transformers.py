"""The `transformers` MLLM oracle: an image-text-to-text model run in this process.

Meant for any model that `AutoProcessor` and `AutoModelForImageTextToText` load and whose
processor has a chat template with image entries (Idefics3/SmolVLM, Qwen2-VL, LLaVA-style).
NOTE: only Idefics3 is tested (a tiny random one); other families may need their own
processor arguments. True/false prompts are scored from the raw next-token logits, with no sampling; JSON prompts
are generated. The model loads on the first query that the answer cache cannot serve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from megu_core.devices import resolve_device
from megu_core.errors import ConfigError
from megu_core.megu.config import OracleConfig
from megu_core.megu.oracle_common import Answer, AnswerCache, MLLMOracle
from megu_core.megu.oracles import folder_digest, offline_requested

log = logging.getLogger(__name__)

# Spellings of the answers whose token probabilities are summed, because "True", " True"
# and "true" are different tokens in most vocabularies.
TRUE_VARIANTS = ("True", " True", "true", " true", "TRUE", " TRUE")
FALSE_VARIANTS = ("False", " False", "false", " false", "FALSE", " FALSE")
# Below this share of next-token probability on the True and False tokens, the model is
# mostly not answering the question, and a warning says so.
MIN_ANSWER_MASS = 0.05


class TransformersOracle(MLLMOracle):
    """Asks a local image-text-to-text model, batched, with no gradients, bf16 on CUDA."""

    backend = "transformers"

    def __init__(self, config: OracleConfig, cache: AnswerCache | None = None) -> None:
        super().__init__(config, cache)
        self.model_name = config.model_id
        self.device = resolve_device(config.device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self._processor: Any = None
        self._model: torch.nn.Module | None = None
        self._answer_ids: tuple[list[int], list[int]] | None = None
        self._model_identity_cache: dict[str, str] | None = None

    def _model_identity(self) -> dict[str, str]:
        if self._model_identity_cache is None:
            self._model_identity_cache = {
                "model": self.model_name,
                "model_digest": _model_digest(self.model_name),
            }
        return dict(self._model_identity_cache)

    @torch.no_grad()
    def _truefalse_answers(
        self,
        prompts: Sequence[str],
        images: list[Image.Image],
        on_answer: Callable[[int, Answer], None],
    ) -> None:
        true_ids, false_ids = self._true_false_ids()
        masses = []
        for start in range(0, len(prompts), self.config.batch_size):
            batch = list(prompts[start : start + self.config.batch_size])
            logits = self._next_token_logits(batch, images)  # (b, vocab)
            self._count(queries=len(batch))

            answers, batch_masses = truefalse_scores(logits, true_ids, false_ids)
            for offset, answer in enumerate(answers):
                on_answer(start + offset, answer)
            masses.extend(batch_masses)

        weakest = min(masses)
        if weakest < MIN_ANSWER_MASS:
            log.warning(
                "%s puts as little as %.3f of its next-token probability on True or False, so "
                "its scores carry little information; check the model and its chat template",
                self.model_name,
                weakest,
            )

    @torch.no_grad()
    def _generate(self, prompt: str, images: list[Image.Image], temperature: float) -> str:
        processor, model = self._load()
        inputs = self._inputs([prompt], images)
        if temperature > 0:
            decoding = {"do_sample": True, "temperature": temperature}
        else:
            decoding = {"do_sample": False}

        output = model.generate(
            **inputs,
            max_new_tokens=self.config.max_new_tokens,
            pad_token_id=processor.tokenizer.pad_token_id,
            **decoding,
        )
        self._count(queries=1)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]  # (1, generated)
        return processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()

    def _next_token_logits(self, prompts: list[str], images: list[Image.Image]) -> torch.Tensor:
        """Return the raw logits of the token after each prompt, shape (len(prompts), vocab).

        `generate` with one new token runs the model's own input preparation (positions under
        left padding, multimodal rotary positions), and `output_logits` returns the logits
        before any logits processor touches them.
        """
        processor, model = self._load()
        inputs = self._inputs(prompts, images)
        output = model.generate(
            **inputs,
            max_new_tokens=1,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
        return output.logits[0].float()  # (b, vocab)

    def _inputs(self, prompts: list[str], images: list[Image.Image]) -> Any:
        """Build the batched, left-padded chat inputs: the same exemplars before each prompt."""
        processor, _ = self._load()
        content = [{"type": "image"} for _ in images]
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [*content, {"type": "text", "text": prompt}]}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for prompt in prompts
        ]
        inputs = processor(
            text=texts, images=[list(images) for _ in prompts], return_tensors="pt", padding=True
        )
        return inputs.to(self.device, dtype=self.dtype)  # casts only the floating tensors

    def _true_false_ids(self) -> tuple[list[int], list[int]]:
        if self._answer_ids is None:
            processor, _ = self._load()
            self._answer_ids = answer_token_ids(processor.tokenizer, self.model_name)
        return self._answer_ids

    def _load(self) -> tuple[Any, torch.nn.Module]:
        if self._model is None:
            self._processor, self._model = _load_model(self.model_name, self.device, self.dtype)
        return self._processor, self._model


def answer_token_ids(tokenizer: Any, model_name: str = "the model") -> tuple[list[int], list[int]]:
    """Return the token ids that spell "True" and those that spell "False" in `tokenizer`.

    Variants that are a single token count. Where the vocabulary has none for either answer,
    the first token of each variant counts instead. Ids that both answers share (an unknown
    token, a leading space) are dropped, because they say nothing about the answer.
    """
    true_single, true_first = _variant_ids(tokenizer, TRUE_VARIANTS)
    false_single, false_first = _variant_ids(tokenizer, FALSE_VARIANTS)
    true_ids, false_ids = true_single - false_single, false_single - true_single
    if true_ids and false_ids:
        return sorted(true_ids), sorted(false_ids)

    true_ids, false_ids = true_first - false_first, false_first - true_first
    if not true_ids or not false_ids:
        raise ConfigError(
            f"the tokenizer of {model_name} spells True and False with the same first tokens, "
            "so their probabilities cannot be read from one next token; set "
            "oracle.prompt_style=json for this model"
        )
    return sorted(true_ids), sorted(false_ids)


def _variant_ids(tokenizer: Any, variants: Sequence[str]) -> tuple[set[int], set[int]]:
    single, first = set(), set()
    for variant in variants:
        ids = tokenizer.encode(variant, add_special_tokens=False)
        if len(ids) == 1:
            single.add(ids[0])
        if ids:
            first.add(ids[0])
    return single, first


def truefalse_scores(
    logits: torch.Tensor, true_ids: list[int], false_ids: list[int]
) -> tuple[list[Answer], list[float]]:
    """Turn next-token logits (b, vocab) into p(True) / (p(True) + p(False)) per row.

    Also returns p(True) + p(False) per row. The ratio is computed from log-sum-exps, so it
    stays exact when both probabilities underflow.
    """
    log_probs = torch.log_softmax(logits, dim=-1)  # (b, vocab)
    log_true = torch.logsumexp(log_probs[:, true_ids], dim=-1)  # (b,)
    log_false = torch.logsumexp(log_probs[:, false_ids], dim=-1)  # (b,)
    scores = torch.sigmoid(log_true - log_false)  # (b,)

    answers, masses = [], []
    for score, p_true, p_false in zip(scores, log_true.exp(), log_false.exp(), strict=True):
        text = f"p(True)={float(p_true):.6g} p(False)={float(p_false):.6g}"
        answers.append(Answer(float(score), text))
        masses.append(float(p_true + p_false))
    return answers, masses


def _model_digest(model_name: str) -> str:
    """Return a digest of a local model folder, or the cached Hub commit of a Hub id."""
    folder = Path(model_name)
    if folder.is_dir():
        return folder_digest(folder)

    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model_name, "config.json")
    except ValueError:  # not a valid Hub id; loading the model raises the useful error
        return ""
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    # NOTE: a model not yet downloaded has no commit here, so its first answers are keyed
    # without one and asked again once the download has filled the cache.
    return ""


def _load_model(model_name: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load the processor and the model in eval mode, with left padding for batched prompts."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    offline = offline_requested()
    try:
        processor = AutoProcessor.from_pretrained(model_name, local_files_only=offline)
        model = AutoModelForImageTextToText.from_pretrained(
            model_name, dtype=dtype, local_files_only=offline
        )
    except (OSError, ValueError) as exc:
        hint = " HF_HUB_OFFLINE is set, so only local files were searched." if offline else ""
        raise ConfigError(
            f"failed to load the image-text-to-text model {model_name!r}: {exc}.{hint} Set "
            "oracle.model to a local folder or a Hub id of a model that AutoProcessor and "
            "AutoModelForImageTextToText load."
        ) from exc

    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not getattr(processor, "chat_template", None):
        raise ConfigError(
            f"the processor of {model_name!r} has no tokenizer or no chat template with image "
            "entries; pick an instruction-tuned image-text-to-text model"
        )
    tokenizer.padding_side = "left"  # the next token of every prompt is then at position -1
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    model = model.to(device).eval()
    log.info("loaded %s on %s in %s", model_name, device, dtype)
    return processor, model
