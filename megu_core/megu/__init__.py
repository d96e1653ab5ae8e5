"""MeGU's algorithm pieces: oracles, transition matrix, noise pair, loss, entanglement analysis.

Pure functions over tensors and features. The method registry, the training loop and the
pipeline stages build on these.
"""

from megu_core.megu.config import (
    NOISE_MODES,
    NOISE_USES,
    ORACLE_KINDS,
    MeguLossConfig,
    NoiseConfig,
    OracleConfig,
    TransitionConfig,
)
from megu_core.megu.entanglement import (
    EntanglementReport,
    compare_entanglement,
    concept_entanglement,
    entanglement_report,
    prototype_similarities,
)
from megu_core.megu.loss import megu_loss
from megu_core.megu.noise import (
    NoisePair,
    build_noise_pairs,
    class_prototypes,
    mixed_feature_targets,
    optimized_noise_pair,
    shared_subspace,
    specific_subspace,
    subspace_noise_pair,
)
from megu_core.megu.oracles import (
    ConceptOracle,
    TextOracle,
    UniformOracle,
    class_name_to_words,
    create_oracle,
    list_oracle_kinds,
)
from megu_core.megu.transition import (
    PerturbingTargets,
    auto_beta,
    candidate_classes,
    mean_confidence,
    perturbing_labels,
    random_soft_targets,
    related_classes,
    subclass_candidates,
    transition_matrix,
    transition_row,
)

__all__ = [
    "NOISE_MODES",
    "NOISE_USES",
    "ORACLE_KINDS",
    "ConceptOracle",
    "EntanglementReport",
    "MeguLossConfig",
    "NoiseConfig",
    "NoisePair",
    "OracleConfig",
    "PerturbingTargets",
    "TextOracle",
    "TransitionConfig",
    "UniformOracle",
    "auto_beta",
    "build_noise_pairs",
    "candidate_classes",
    "class_name_to_words",
    "class_prototypes",
    "compare_entanglement",
    "concept_entanglement",
    "create_oracle",
    "entanglement_report",
    "list_oracle_kinds",
    "mean_confidence",
    "megu_loss",
    "mixed_feature_targets",
    "optimized_noise_pair",
    "perturbing_labels",
    "prototype_similarities",
    "random_soft_targets",
    "related_classes",
    "shared_subspace",
    "specific_subspace",
    "subclass_candidates",
    "subspace_noise_pair",
    "transition_matrix",
    "transition_row",
]
