"""Unlearning methods, one file each, registered by name."""

from megu_core.methods.base import (
    RetainForgetBatches,
    UnlearnBudget,
    UnlearnContext,
    UnlearningMethod,
    UnlearnResult,
)
from megu_core.methods.registry import get_method, list_methods, register_method

# Importing a method module registers it.
from megu_core.methods import (  # noqa: E402, F401  isort: skip
    bad_teacher,
    finetune,
    gradient_ascent,
    l1_sparse,
    megu,
    neggrad_plus,
    random_label,
    retrain,
    salun,
    scrub,
    ssd,
    unsir,
)

__all__ = [
    "RetainForgetBatches",
    "UnlearnBudget",
    "UnlearnContext",
    "UnlearnResult",
    "UnlearningMethod",
    "get_method",
    "list_methods",
    "register_method",
]
