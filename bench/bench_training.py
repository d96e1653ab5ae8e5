"""Training-loop throughput against bare forward + backward steps, and dataset load times.

Usage: python bench/bench_training.py [--dataset cifar10] [--widths 16 32] [--steps 40]

Prints one table. Ratios compare figures measured in the same run, because these machines are
noisy: "loop / bare" is the share of the model's raw speed that the full loop (batch sampling,
on-device augmentation, optimiser, scheduler, progress bar) keeps.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from megu_core.checkpoint import ModelSpec
from megu_core.data import DatasetSpec, load_dataset
from megu_core.data.cache import decode_dataset, source_digest
from megu_core.data.sources import resolve_source
from megu_core.inference import predict
from megu_core.training import (
    TensorBatches,
    TrainConfig,
    cross_entropy_step,
    measure_step_throughput,
    train_loop,
)


def loop_throughput(width: int, images, labels, steps: int, device) -> float:
    """Images per second of the real training loop for `steps` steps."""
    cfg = TrainConfig(epochs=1, batch_size=128, warmup_epochs=0)
    model = ModelSpec("resnet18", int(labels.max()) + 1, width).build()
    batches = TensorBatches(images, labels, cfg.batch_size, device)
    cfg = TrainConfig(epochs=steps / len(batches), batch_size=128, warmup_epochs=0)
    result = train_loop(
        model, batches, len(batches), cross_entropy_step(), cfg, device, progress=False
    )
    return result.images_per_second


def inference_throughput(width: int, images, device) -> float:
    model = ModelSpec("resnet18", 10, width).build()
    sample = images[:4096]
    started = time.perf_counter()
    predict(model, sample, device)
    return len(sample) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--widths", type=int, nargs="+", default=[16])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    source = resolve_source(DatasetSpec(args.dataset))
    started = time.perf_counter()
    dataset = decode_dataset(source, source_digest(source))
    decode_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as cache:
        load_dataset(DatasetSpec(args.dataset), cache_dir=Path(cache))
        started = time.perf_counter()
        cached = load_dataset(DatasetSpec(args.dataset), cache_dir=Path(cache))
        _ = cached.train.images.sum()  # touch every byte, so lazily mapped pages are counted
        cached_seconds = time.perf_counter() - started

    print("| dataset load | seconds | ratio to decoding |\n| --- | ---: | ---: |")
    print(f"| decode from source | {decode_seconds:.2f} | 1.00 |")
    print(f"| tensor cache hit | {cached_seconds:.2f} | {cached_seconds / decode_seconds:.3f} |\n")

    print("| width | bare fwd+bwd img/s | loop img/s | loop / bare | inference img/s |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    images, labels = dataset.train.images, dataset.train.labels
    for width in args.widths:
        cfg = TrainConfig(batch_size=128)
        bare = measure_step_throughput(
            ModelSpec("resnet18", 10, width).build(), cfg, device, steps=args.steps
        )
        loop = loop_throughput(width, images, labels, args.steps, device)
        infer = inference_throughput(width, images, device)
        print(f"| {width} | {bare:.0f} | {loop:.0f} | {loop / bare:.2f} | {infer:.0f} |")


if __name__ == "__main__":
    main()
