"""The feature-space noise pair of each target concept and the mixed feature targets z*.

The negative noise removes what makes forget features look like the target class. The
positive noise moves them toward their perturbing classes. Both act on penultimate
features against the frozen head h0, and z*(x) = z + n_neg + n_pos is the feature target
that finetuning pulls each forget sample toward.

Two constructions:
- "optimized": one vector per concept for each noise, found with Adam against h0 and
  projected onto a ball of radius clip * mean forget-feature norm after every step.
- "subspace": closed form per sample from a shared subspace U_t (spanned by the prototypes
  of the related classes and the mean prototype) and a specific subspace S_t (the top
  singular directions of the forget features outside U_t).
Neither draws random numbers: the optimized noises start at zero and the subspaces come
from SVD, so no seed is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from megu_core.megu.config import NoiseConfig
from megu_core.megu.transition import related_classes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NoisePair:
    """The noise pair of one target concept with what is saved per concept and per sample.

    In "optimized" mode `negative` and `positive` are single vectors (d,) that every forget
    sample of the concept shares. In "subspace" mode they are per sample (n, d), in the
    order of the features they were built from.
    """

    mode: str
    target_class: int  # output class whose loss the negative noise raises
    negative: torch.Tensor  # (d,) or (n, d)
    positive: torch.Tensor  # (d,) or (n, d)
    negative_norms: torch.Tensor  # (n,) norm of each sample's negative noise
    positive_norms: torch.Tensor  # (n,)
    predictions: torch.Tensor  # (n,) int64, h0's argmax on z* = z + n_neg + n_pos
    diagnostics: dict[str, float]  # mean cross-entropies of h0 before and after each noise
    clip_radius: float | None = None  # optimized mode: the norm bound of each noise
    related: tuple[int, ...] = ()  # subspace mode: classes whose prototypes span U_t
    shared_basis: torch.Tensor | None = None  # subspace mode: U_t (d, k), orthonormal columns
    specific_basis: torch.Tensor | None = None  # subspace mode: S_t (d, r), orthogonal to U_t

    @property
    def num_samples(self) -> int:
        return int(self.predictions.shape[0])

    def mixed_targets(self, features: torch.Tensor) -> torch.Tensor:
        """Return z* = z + n_neg + n_pos for forget features of this concept, shape (n, d).

        Per-sample noises (subspace mode) need the features the pair was built from, in
        their order. A concept-wide noise (optimized mode) applies to any sample of the concept.
        """
        per_sample = self.negative.dim() == 2
        if features.dim() != 2 or (per_sample and features.shape[0] != self.num_samples):
            expected = f"({self.num_samples}, d)" if per_sample else "(n, d)"
            raise ValueError(
                f"features must have shape {expected} like the forget features of concept "
                f"{self.target_class}, got {tuple(features.shape)}"
            )
        noise = (self.negative + self.positive).to(features.device, features.dtype)
        return features + noise  # (n, d); a (d,) noise broadcasts over the samples


def class_prototypes(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Return the mean feature of each class, shape (C, d).

    Every class needs at least one sample. The retain reference set has none of a forgotten
    class, so pass its forget features too: its prototype is then the target prototype mu_t.
    """
    _check_features(features)
    labels = labels.long()
    _check_labels("labels", labels, features.shape[0], num_classes)
    counts = torch.bincount(labels, minlength=num_classes)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"classes {missing} have no features, so their prototypes are undefined; include "
            "the forget features of forgotten classes beside the retain reference features"
        )

    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=features.device)
    sums.index_add_(0, labels.to(features.device), features.double())
    return (sums / counts.to(features.device).unsqueeze(1)).float()  # (C, d)


def _check_features(features: torch.Tensor) -> None:
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(
            f"features must have shape (n, d) with n >= 1, got {tuple(features.shape)}"
        )
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values; check the feature extraction")


def _check_labels(name: str, labels: torch.Tensor, num_samples: int, num_classes: int) -> None:
    if labels.shape != (num_samples,):
        raise ValueError(f"{name} must have shape ({num_samples},), got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must be class indices in [0, {num_classes - 1}], got values from "
            f"{int(labels.min())} to {int(labels.max())}"
        )


def _check_head_inputs(
    features: torch.Tensor, target_class: int, perturbing: torch.Tensor, head: nn.Linear
) -> None:
    _check_features(features)
    if features.shape[1] != head.in_features:
        raise ValueError(
            f"features have dimension {features.shape[1]} but the head expects "
            f"{head.in_features}; pass features and head of the same model"
        )
    if not 0 <= target_class < head.out_features:
        raise ValueError(
            f"target_class must be in [0, {head.out_features - 1}], got {target_class}"
        )
    _check_labels("perturbing", perturbing, features.shape[0], head.out_features)


def _frozen_head(head: nn.Linear, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return detached copies of the head's parameters, so no noise step can change h0."""
    weight = head.weight.detach().float().to(device)
    bias = head.bias.detach().float().to(device) if head.bias is not None else None
    return weight, bias


def _mean_ce(
    features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return F.cross_entropy(F.linear(features, weight, bias), labels)


def _optimize_noise(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cfg: NoiseConfig,
    radius: float,
    maximize: bool,
) -> torch.Tensor:
    """Adam on one noise vector (d,): ascend or descend the head's CE, with a norm penalty and clip."""
    noise = torch.zeros(features.shape[1], device=features.device, requires_grad=True)
    optimizer = torch.optim.Adam([noise], lr=cfg.lr)

    with torch.enable_grad():
        for _ in range(cfg.steps):
            ce = _mean_ce(features + noise, labels, weight, bias)
            objective = (-ce if maximize else ce) + cfg.rho * noise.pow(2).sum()

            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()

            # Projection onto the ball: without it the ascent runs off toward the farthest class.
            with torch.no_grad():
                norm = noise.norm()
                if norm > radius:
                    noise.mul_(radius / norm)

    return noise.detach()


def _diagnostics(
    features: torch.Tensor,
    negative: torch.Tensor,
    positive: torch.Tensor,
    target_class: int,
    perturbing: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> tuple[dict[str, float], torch.Tensor]:
    """Return h0's mean cross-entropies around the noises and its predictions on z*."""
    targets = torch.full_like(perturbing, target_class)
    mixed = features + negative + positive  # (n, d)

    def ce(z: torch.Tensor, labels: torch.Tensor) -> float:
        return float(_mean_ce(z, labels, weight, bias))

    predictions = F.linear(mixed, weight, bias).argmax(dim=1)  # (n,)
    diagnostics = {
        "target_ce_original": ce(features, targets),
        "target_ce_negative": ce(features + negative, targets),
        "target_ce_mixed": ce(mixed, targets),
        "perturbing_ce_original": ce(features, perturbing),
        "perturbing_ce_positive": ce(features + positive, perturbing),
        "perturbing_ce_mixed": ce(mixed, perturbing),
        "perturbing_agreement": float((predictions == perturbing).double().mean()),
    }
    return diagnostics, predictions


def _row_norms(noise: torch.Tensor, num_samples: int) -> torch.Tensor:
    norms = noise.norm(dim=-1)
    return norms.expand(num_samples).clone() if noise.dim() == 1 else norms  # (n,)


@torch.no_grad()
def optimized_noise_pair(
    features: torch.Tensor,
    target_class: int,
    perturbing: torch.Tensor,
    head: nn.Linear,
    cfg: NoiseConfig,
    random_forgetting: bool = False,
) -> NoisePair:
    """Optimise the negative and positive noise of one concept against the frozen head.

    `features` (n, d) are f0's features of the concept's forget samples and `perturbing` (n,)
    their perturbing labels. The negative noise maximises mean CE(h0(z + n), target_class)
    - rho ||n||^2; the positive one minimises mean CE(h0(z + n), y_pert) + rho ||n||^2.
    Random forgetting keeps the class, so both noises are then scaled by `cfg.random_scale`.

    NOTE: when h0 is confident on the forget features (target CE near 0), the CE gradient
    nearly vanishes and the rho penalty can hold the negative noise near zero. Read
    `negative_norms` against `clip_radius` before relying on the negative noise.
    """
    _check_head_inputs(features, target_class, perturbing, head)
    z = features.detach().float()  # (n, d)
    perturbing = perturbing.long().to(z.device)
    weight, bias = _frozen_head(head, z.device)
    radius = cfg.clip * float(z.norm(dim=1).mean())

    zeros = torch.zeros(z.shape[1], device=z.device)
    negative, positive = zeros, zeros.clone()
    if cfg.uses_negative:
        targets = torch.full_like(perturbing, target_class)
        negative = _optimize_noise(z, targets, weight, bias, cfg, radius, maximize=True)
    if cfg.uses_positive:
        positive = _optimize_noise(z, perturbing, weight, bias, cfg, radius, maximize=False)

    scale = cfg.random_scale if random_forgetting else 1.0
    negative, positive = negative * scale, positive * scale

    diagnostics, predictions = _diagnostics(
        z, negative, positive, target_class, perturbing, weight, bias
    )
    log.debug("noise pair of class %d: %s", target_class, diagnostics)
    return NoisePair(
        mode="optimized",
        target_class=target_class,
        negative=negative,
        positive=positive,
        negative_norms=_row_norms(negative, z.shape[0]),
        positive_norms=_row_norms(positive, z.shape[0]),
        predictions=predictions,
        diagnostics=diagnostics,
        clip_radius=radius * scale,
    )


def _orthonormal_basis(columns: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (d, k) of the span of `columns` (d, m), dropping dependent directions.

    SVD rather than plain QR: QR without pivoting returns an arbitrary column for a
    prototype that is a combination of the others and can then lose part of the span.
    """
    left, singular, _ = torch.linalg.svd(columns.double(), full_matrices=False)
    if singular.numel() == 0 or singular[0] == 0:
        return left[:, :0]
    tolerance = singular[0] * max(columns.shape) * torch.finfo(torch.float64).eps
    return left[:, singular > tolerance]


def shared_subspace(prototypes: torch.Tensor, related: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Return U_t (d, k): an orthonormal basis of the related prototypes and the mean prototype."""
    if prototypes.dim() != 2:
        raise ValueError(f"prototypes must have shape (C, d), got {tuple(prototypes.shape)}")
    if not related:
        raise ValueError("related is empty; U_t needs at least one related class")
    for c in related:
        if not 0 <= c < prototypes.shape[0]:
            raise ValueError(
                f"related class {c} is invalid: prototypes has classes 0 to {prototypes.shape[0] - 1}"
            )

    vectors = [prototypes[c] for c in related] + [prototypes.mean(dim=0)]
    return _orthonormal_basis(torch.stack(vectors, dim=1))  # (d, k), k <= n_rel + 1


def specific_subspace(
    features: torch.Tensor, shared_basis: torch.Tensor, rank: int
) -> torch.Tensor:
    """Return S_t (d, r): the top `rank` right singular vectors of the features with U_t projected out."""
    z = features.double()  # (n, d)
    basis = shared_basis.double()  # (d, k)
    residual = z - (z @ basis) @ basis.T  # (n, d), orthogonal to U_t

    _, singular, right = torch.linalg.svd(residual, full_matrices=False)  # right: (min(n, d), d)
    if singular.numel() == 0 or singular[0] == 0:
        return right[:0].T
    tolerance = singular[0] * max(residual.shape) * torch.finfo(torch.float64).eps
    keep = int((singular[:rank] > tolerance).sum())
    return right[:keep].T  # (d, r)


@torch.no_grad()
def subspace_noise_pair(
    features: torch.Tensor,
    target_class: int,
    perturbing: torch.Tensor,
    prototypes: torch.Tensor,
    transition_row: torch.Tensor,
    head: nn.Linear,
    cfg: NoiseConfig,
    random_forgetting: bool = False,
) -> NoisePair:
    """Build the per-sample noise pair of one concept in closed form.

    The `cfg.n_rel` classes with the largest mass in `transition_row` (T[t], shape (C,))
    span U_t together with the mean prototype. S_t is spanned by the top `cfg.rank`
    directions of the forget features outside U_t. Then n_neg(x) = -alpha P_S(z) removes the
    target-specific component, and n_pos(x) = eta P_U(mu_pert(x) - z) moves the shared
    component toward the prototype of the perturbing class.
    """
    _check_head_inputs(features, target_class, perturbing, head)
    if prototypes.shape != (head.out_features, features.shape[1]):
        raise ValueError(
            f"prototypes must have shape ({head.out_features}, {features.shape[1]}), "
            f"got {tuple(prototypes.shape)}"
        )
    related = tuple(related_classes(transition_row, cfg.n_rel))
    z = features.detach().double()  # (n, d)
    perturbing = perturbing.long().to(z.device)
    prototypes = prototypes.detach().double().to(z.device)

    shared = shared_subspace(prototypes, related)  # (d, k)
    specific = specific_subspace(z, shared, cfg.rank)  # (d, r)

    negative = torch.zeros_like(z)
    positive = torch.zeros_like(z)
    if cfg.uses_negative:
        negative = -cfg.alpha * (z @ specific) @ specific.T  # (n, d)
    if cfg.uses_positive:
        toward = prototypes[perturbing] - z  # (n, d)
        positive = cfg.eta * (toward @ shared) @ shared.T  # (n, d)

    scale = cfg.random_scale if random_forgetting else 1.0
    negative, positive = (negative * scale).float(), (positive * scale).float()

    weight, bias = _frozen_head(head, z.device)
    diagnostics, predictions = _diagnostics(
        z.float(), negative, positive, target_class, perturbing, weight, bias
    )
    return NoisePair(
        mode="subspace",
        target_class=target_class,
        negative=negative,
        positive=positive,
        negative_norms=negative.norm(dim=1),
        positive_norms=positive.norm(dim=1),
        predictions=predictions,
        diagnostics=diagnostics,
        related=related,
        shared_basis=shared.float(),
        specific_basis=specific.float(),
    )


def build_noise_pairs(
    features: torch.Tensor,
    concepts: torch.Tensor,
    perturbing: torch.Tensor,
    head: nn.Linear,
    transition: torch.Tensor,
    prototypes: torch.Tensor | None,
    cfg: NoiseConfig,
    random_forgetting: bool = False,
) -> dict[int, NoisePair]:
    """Build one noise pair per target concept in the mode `cfg.mode` names.

    `concepts` (n,) contains each forget sample's row of T: the forgotten class, the superclass
    of a sub-class concept, or the sample's own class for random forgetting. That row is
    also the class whose loss the negative noise raises. Each pair covers the samples
    `features[concepts == t]` in their original order. `prototypes` (C, d) is needed only in
    subspace mode.
    """
    _check_features(features)
    _check_labels("concepts", concepts, features.shape[0], transition.shape[0])
    _check_labels("perturbing", perturbing, features.shape[0], transition.shape[0])
    if cfg.mode == "subspace" and prototypes is None:
        raise ValueError(
            "noise.mode 'subspace' needs class prototypes; compute them with class_prototypes()"
        )

    pairs = {}
    for concept in sorted(set(concepts.tolist())):
        members = (concepts == concept).nonzero().flatten()
        if cfg.mode == "optimized":
            pairs[concept] = optimized_noise_pair(
                features[members], concept, perturbing[members], head, cfg, random_forgetting
            )
        else:
            pairs[concept] = subspace_noise_pair(
                features[members],
                concept,
                perturbing[members],
                prototypes,
                transition[concept],
                head,
                cfg,
                random_forgetting,
            )
    return pairs


def mixed_feature_targets(
    features: torch.Tensor, concepts: torch.Tensor, pairs: Mapping[int, NoisePair]
) -> torch.Tensor:
    """Return z* (n, d) for every forget sample from the noise pair of its concept."""
    _check_features(features)
    if concepts.shape != (features.shape[0],):
        raise ValueError(
            f"concepts must have shape ({features.shape[0]},), got {tuple(concepts.shape)}"
        )

    mixed = torch.empty_like(features)
    for concept in sorted(set(concepts.tolist())):
        if concept not in pairs:
            raise ValueError(
                f"no noise pair for concept {concept}; pairs exist for {sorted(pairs)}. "
                "Build the pairs from the same concepts with build_noise_pairs()"
            )
        members = (concepts == concept).nonzero().flatten()
        mixed[members] = pairs[concept].mixed_targets(features[members])
    return mixed  # (n, d)
