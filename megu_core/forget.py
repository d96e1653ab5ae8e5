"""Forget requests: parse `class:`, `subclass:`, `random:` and `ids:` requests and resolve them.

A request is data, never code. Resolving it against a dataset yields the forget set's sample
ids, their rows in the training split and a hash of the sorted id list for the audit trail.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from megu_core.data.dataset import Dataset
from megu_core.errors import ForgetRequestError

KINDS = ("class", "subclass", "random", "ids")
SYNTAX = "class:NAME[,NAME...], subclass:FINE_NAME, random:FRACTION|COUNT[,seed=N] or ids:FILE"


@dataclass(frozen=True)
class ForgetRequest:
    """A parsed, not yet resolved, forget request."""

    kind: str
    names: tuple[str, ...] = ()  # class or fine class names
    fraction: float | None = None
    count: int | None = None
    seed: int = 0
    ids_file: Path | None = None

    @property
    def spec(self) -> str:
        """The canonical text form of the request."""
        if self.kind in ("class", "subclass"):
            return f"{self.kind}:{','.join(self.names)}"
        if self.kind == "random":
            amount = self.fraction if self.fraction is not None else self.count
            return f"random:{amount},seed={self.seed}"
        return f"ids:{self.ids_file}"


@dataclass(frozen=True)
class ResolvedForgetRequest:
    """A forget request resolved against a dataset's training split."""

    request: ForgetRequest
    sample_ids: tuple[str, ...]  # sorted
    indices: np.ndarray  # rows of the training split, ascending
    target_classes: tuple[int, ...]  # output classes forgotten whole (class requests)
    target_fine_class: int | None  # the fine class forgotten (sub-class requests)
    ids_hash: str  # sha256 of the newline-joined sorted ids

    @property
    def kind(self) -> str:
        return self.request.kind

    @property
    def request_id(self) -> str:
        """A short id derived from the request and the exact forget set it resolved to."""
        return hashlib.sha256(f"{self.request.spec}\n{self.ids_hash}".encode()).hexdigest()[:12]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def forget_mask(self, num_train: int) -> torch.Tensor:
        """Boolean mask over the training split, True for forget samples."""
        mask = torch.zeros(num_train, dtype=torch.bool)
        mask[torch.from_numpy(self.indices)] = True
        return mask

    def forgotten_test_mask(self, dataset: Dataset) -> torch.Tensor | None:
        """Test samples of the forgotten concept (class or sub-class requests), else None."""
        test = dataset.test
        if self.target_classes:
            return torch.isin(test.labels, torch.tensor(self.target_classes))
        if self.target_fine_class is not None and test.fine_labels is not None:
            return test.fine_labels == self.target_fine_class
        return None


def parse_forget_request(text: str, seed: int = 0) -> ForgetRequest:
    """Parse the text form of a forget request; `seed` applies to random requests without one."""
    kind, sep, argument = text.strip().partition(":")
    kind = kind.strip().lower()
    argument = argument.strip()
    if not sep or kind not in KINDS or not argument:
        raise ForgetRequestError(f"invalid forget request {text!r}; expected {SYNTAX}")

    if kind in ("class", "subclass"):
        names = tuple(name.strip() for name in argument.split(",") if name.strip())
        if kind == "subclass" and len(names) != 1:
            raise ForgetRequestError(f"subclass requests name exactly one fine class, got {names}")
        return ForgetRequest(kind, names=names)
    if kind == "random":
        return _parse_random(argument, seed, text)
    return ForgetRequest("ids", ids_file=Path(argument).expanduser())


def _parse_random(argument: str, seed: int, text: str) -> ForgetRequest:
    amount, *options = (part.strip() for part in argument.split(","))
    for option in options:
        key, _, value = option.partition("=")
        if key != "seed" or not value.lstrip("-").isdigit():
            raise ForgetRequestError(
                f"invalid option {option!r} in {text!r}; the only option is seed=N"
            )
        seed = int(value)
    try:
        number = float(amount)
    except ValueError as exc:
        raise ForgetRequestError(
            f"random request {text!r}: {amount!r} is not a fraction or count"
        ) from exc
    if 0 < number < 1:
        return ForgetRequest("random", fraction=number, seed=seed)
    if number >= 1 and number == int(number):
        return ForgetRequest("random", count=int(number), seed=seed)
    raise ForgetRequestError(
        f"random request {text!r}: give a fraction in (0, 1) or a whole count of at least 1"
    )


def resolve_forget_request(request: ForgetRequest | str, dataset: Dataset) -> ResolvedForgetRequest:
    """Resolve a request to its forget set in the training split of `dataset`."""
    if isinstance(request, str):
        request = parse_forget_request(request)
    train = dataset.train
    target_classes: tuple[int, ...] = ()
    target_fine: int | None = None

    if request.kind == "class":
        target_classes = tuple(
            _lookup(name, dataset.class_names, "class") for name in request.names
        )
        indices = np.flatnonzero(torch.isin(train.labels, torch.tensor(target_classes)).numpy())
    elif request.kind == "subclass":
        if dataset.fine_class_names is None or train.fine_labels is None:
            raise ForgetRequestError(
                f"sub-class request {request.spec!r} needs fine labels, but dataset {dataset.name!r} has "
                "none; load it with a fine label column (for example cifar20)"
            )
        target_fine = _lookup(request.names[0], dataset.fine_class_names, "fine class")
        indices = np.flatnonzero((train.fine_labels == target_fine).numpy())
    elif request.kind == "random":
        indices = _random_indices(request, len(train))
    else:
        indices = _indices_from_file(request.ids_file, train.sample_ids)

    _check_size(request, indices, len(train), dataset)
    sample_ids = tuple(sorted(train.sample_ids[i] for i in indices))
    ids_hash = hashlib.sha256("\n".join(sample_ids).encode()).hexdigest()
    return ResolvedForgetRequest(
        request, sample_ids, np.sort(indices), target_classes, target_fine, ids_hash
    )


def _normalise(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _lookup(name: str, names: tuple[str, ...], what: str) -> int:
    by_key = {_normalise(n): i for i, n in enumerate(names)}
    key = _normalise(name)
    if key not in by_key:
        raise ForgetRequestError(f"unknown {what} {name!r}; valid names: {', '.join(names)}")
    return by_key[key]


def _random_indices(request: ForgetRequest, num_train: int) -> np.ndarray:
    count = request.count if request.count is not None else round(request.fraction * num_train)
    if count > num_train:
        raise ForgetRequestError(
            f"random request {request.spec!r} asks for {count} samples but the training split has {num_train}"
        )
    generator = np.random.default_rng(request.seed)
    return np.sort(generator.choice(num_train, size=count, replace=False))


def _indices_from_file(path: Path, sample_ids: tuple[str, ...]) -> np.ndarray:
    if not path.is_file():
        raise ForgetRequestError(f"ids file {path} does not exist")
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        if "sample_id" not in table.column_names:
            raise ForgetRequestError(
                f"{path}: expected a 'sample_id' column; columns found: {', '.join(table.column_names)}"
            )
        wanted = [str(v) for v in table.column("sample_id").to_pylist()]
    else:
        lines = (line.strip() for line in path.read_text().splitlines())
        wanted = [line for line in lines if line and not line.startswith("#")]

    row_of = {sample_id: row for row, sample_id in enumerate(sample_ids)}
    unknown = [sample_id for sample_id in wanted if sample_id not in row_of]
    if unknown:
        raise ForgetRequestError(
            f"{path}: {len(unknown)} id(s) are not in the training split, e.g. {', '.join(unknown[:5])}; "
            f"ids look like {sample_ids[0]!r}"
        )
    return np.asarray(sorted({row_of[sample_id] for sample_id in wanted}), dtype=np.int64)


def _check_size(
    request: ForgetRequest, indices: np.ndarray, num_train: int, dataset: Dataset
) -> None:
    names = dataset.fine_class_names if request.kind == "subclass" else dataset.class_names
    hint = (
        f"; valid names: {', '.join(names)}"
        if request.kind in ("class", "subclass") and names
        else ""
    )
    if len(indices) == 0:
        raise ForgetRequestError(
            f"forget request {request.spec!r} resolves to an empty forget set{hint}"
        )
    if len(indices) >= num_train:
        raise ForgetRequestError(
            f"forget request {request.spec!r} would forget the whole training set ({num_train} samples), "
            f"leaving no retain set{hint}"
        )
