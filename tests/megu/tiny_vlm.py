"""A tiny, randomly initialised Idefics3 model that tests build offline and save to a folder.

Its answers are noise, but it exercises the real transformers code path of the MLLM oracle:
AutoProcessor and AutoModelForImageTextToText loading, the chat template with images, image
tiling, batching and generation. Building and saving take a few seconds on one CPU core.

Run `python tests/megu/tiny_vlm.py FOLDER` to save one for a manual `megu concepts` run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Idefics3Config, Idefics3Processor, PreTrainedTokenizerFast

try:  # the PIL backend needs no torchvision, which megu does not install
    from transformers import Idefics3ImageProcessorPil as Idefics3ImageProcessor
except ImportError:
    from transformers import Idefics3ImageProcessor

IMAGE_SIZE = 32  # the vision encoder's input: one CIFAR image is one tile
PATCH_SIZE = 8
SCALE_FACTOR = 2  # pixel shuffle: 4 patches become one image token
# The processor emits this many <image> tokens per tile, and the model expects the same.
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
]

# A chat template in the style of SmolVLM's: images, then the text, then "Assistant:".
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %} {{ part['text'] }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

# Enough text for the byte-level BPE to learn "True", " True", "False" and " False" as tokens.
TRAINING_TEXT = [
    "User: Does the object in these images share visual features with a dog?",
    "Answer with one word: True or False.",
    "Assistant: True",
    "Assistant: False",
    "True False true false TRUE FALSE",
    'Reply with only a JSON object such as {"dog": 7, "truck": 1}.',
] * 20


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on TRAINING_TEXT and wrap it as a fast tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
    )


def build_processor(tokenizer: PreTrainedTokenizerFast) -> Idefics3Processor:
    """Build an Idefics3 processor whose tiles are IMAGE_SIZE pixels wide.

    The default `size` would upscale a 32x32 image into thousands of tiles, so it is set to
    two tiles per edge.
    """
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 2 * IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer: PreTrainedTokenizerFast) -> Idefics3Config:
    """Return a one-layer Idefics3 configuration that matches the tokenizer and the processor."""
    vision = {
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    text = {
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return Idefics3Config(
        vision_config=vision,
        text_config=text,
        scale_factor=SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )


def save_tiny_idefics3(folder: Path, seed: int = 0) -> Path:
    """Build the tiny model with seeded random weights and save it with its processor."""
    from transformers import AutoModelForImageTextToText

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(build_config(tokenizer))

    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    save_tiny_idefics3(Path(sys.argv[1]))
