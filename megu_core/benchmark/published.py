"""Published figures that the benchmark report puts beside megu's own numbers.

Figures as reported by the MeGU abstract (arXiv 2602.17088), by the SalUn paper (CIFAR-10,
ResNet-18, 10% random forgetting) and by the SSD paper (CIFAR-20 superclass "vehicles 2").
They come from the standard width-64 ResNet-18; the report states the preset and width that
produced megu's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedRow:
    """One method's published SalUn-table figures; None where the table gives only the Avg. Gap."""

    label: str  # the name in the published table
    method: str | None  # the registry name of the same method, None if megu lacks it
    unlearning_accuracy: float | None = None  # UA = 100 - forget accuracy
    retain_accuracy: float | None = None  # RA
    test_accuracy: float | None = None  # TA
    mia_efficacy: float | None = None  # MIA-Efficacy, megu's MIA (confidence)
    avg_gap: float | None = None


# SalUn, CIFAR-10, ResNet-18, 10% random forgetting.
SALUN_C10_RANDOM_10 = (
    PublishedRow("Retrain", "retrain", 5.24, 100.00, 94.26, 12.88, 0.0),
    PublishedRow("SalUn", "salun", 2.85, 99.62, 93.93, 14.39, 1.15),
    PublishedRow("FT", "finetune", avg_gap=3.78),
    PublishedRow("GA", "gradient_ascent", avg_gap=4.12),
    PublishedRow("l1-sparse", "l1_sparse", avg_gap=2.26),
    PublishedRow("RL", "random_label", avg_gap=7.15),
    PublishedRow("BS", None, avg_gap=2.67),
    PublishedRow("BE", None, avg_gap=2.76),
    PublishedRow("IU", None, avg_gap=4.06),
)
SALUN_SCENARIO = ("c10-random", "10%")  # scenario id and target of the SalUn table

# MeGU's abstract, class-wise unlearning.
MEGU_RETAIN_GAP = 0.35  # retain accuracy within this many points of the retrained model
MEGU_MIA_REDUCTION = {"ssd": 49.0, "unsir": 9.8}  # membership-inference risk lower by up to (%)
MEGU_TIME_SAVING = 59.0  # over this many percent less time than retraining
MEGU_SCENARIO = "c10-class"

# SSD, CIFAR-20 superclass "vehicles 2", ResNet-18.
SSD_HEAD_RESET_RETAIN = 82.11  # retain accuracy of the head-reset "retrain" in the SSD paper
SSD_FULL_RETRAIN_RETAIN = (72.0, 74.0)  # a full retrain, as a user of the SSD code reported it
SSD_SCENARIO = ("c20-class", "vehicles_2")
