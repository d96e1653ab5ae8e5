"""SCRUB's max steps push the student away from the teacher on the forget set."""

from __future__ import annotations

import pytest
import torch

from megu_core.errors import ConfigError
from megu_core.inference import predict
from megu_core.methods import get_method
from megu_core.methods.scrub import MAX, MIN, ScrubParams, ScrubSchedule, TaggedBatch, scrub_step
from megu_core.methods.shared import distillation_kl
from megu_core.training import TensorBatches, TrainConfig, train_loop

CPU = torch.device("cpu")
FAST = TrainConfig(epochs=1, batch_size=8, lr=0.01, warmup_epochs=0, schedule="constant")


def _forget_kl(student, teacher, images) -> float:
    student_logits, _ = predict(student, images, CPU)
    teacher_logits, _ = predict(teacher, images, CPU)
    return float(distillation_kl(student_logits, teacher_logits, 4.0))


def _max_pass(student, teacher, images, labels) -> None:
    batches = [TaggedBatch(MAX, b) for b in TensorBatches(images, labels, 8, CPU, False, True, 0)]
    train_loop(
        student,
        batches,
        len(batches),
        scrub_step(teacher, ScrubParams()),
        FAST,
        CPU,
        progress=False,
    )


def test_max_steps_raise_forget_kl(make_context):
    ctx = make_context()
    teacher = ctx.frozen_original()
    student = ctx.student()
    images, labels = ctx.forget_data()

    start = _forget_kl(student, teacher, images)
    _max_pass(student, teacher, images, labels)
    once = _forget_kl(student, teacher, images)
    _max_pass(student, teacher, images, labels)
    twice = _forget_kl(student, teacher, images)

    assert start < 1e-6  # the student starts as a copy of the teacher
    assert once > start
    assert twice > once


def test_schedule_puts_max_passes_first_in_early_epochs(make_context):
    ctx = make_context()
    forget = TensorBatches(*ctx.forget_data(), 8, CPU, False, True, 0)
    retain = TensorBatches(*ctx.retain_data(), 32, CPU, False, True, 0)

    kinds = [tagged.kind for tagged in ScrubSchedule(forget, retain, epochs=3, max_epochs=2)]

    epoch = [MAX] * len(forget) + [MIN] * len(retain)
    assert kinds == epoch + epoch + [MIN] * len(retain)
    assert len(ScrubSchedule(forget, retain, 3, 2)) == len(kinds)


def test_max_steps_use_scrub_forget_batches(make_context):
    ctx = make_context()  # 48 forget images; 144 retain images in 4 batches of 32

    default = get_method("scrub")().unlearn(ctx)
    small = get_method("scrub").from_config({"forget_batch_size": 8}).unlearn(make_context())

    # 3 min passes of 4 steps, plus 2 max passes: 1 step of all 48 images (512 is capped),
    # or 6 steps of 8.
    assert default.train.steps == 3 * 4 + 2 * 1
    assert small.train.steps == 3 * 4 + 2 * 6


def test_scrub_rejects_an_empty_forget_batch():
    with pytest.raises(ConfigError, match="method.scrub.forget_batch_size"):
        get_method("scrub").from_config({"forget_batch_size": 0})
