"""biofed.attacks: the attacks biofed's defences are measured against (tests and benchmarks only).

Malicious virtual sites (poisoning, backdoors, weight inflation, free-riding) for a
simulation's :class:`~biofed.simulation.TamperingBackend`, and privacy attacks on what a site
sends or what a run releases (gradient inversion, membership inference). No node, coordinator
or command imports this package (the layer contract in ``pyproject.toml`` keeps it on top,
beside the CLI and independent of it).
"""

from biofed.attacks._backdoor import (
    Trigger,
    apply_trigger,
    attack_success_rate,
    backdoor,
    linear_scores,
    make_trigger,
)
from biofed.attacks._empirical_eps import (
    MembershipResult,
    clopper_pearson_upper,
    empirical_epsilon,
    epsilon_from_rates,
    score_attack,
    tpr_at_fpr,
)
from biofed.attacks._harness import (
    ATTACKS,
    DECISION_EVENTS,
    Attack,
    AttackOutcome,
    Poison,
    choose_malicious,
    make_attack,
    run_attack,
    with_seed,
)
from biofed.attacks._inversion import (
    VICTIM_MODELS,
    Inversion,
    Recovery,
    VictimMLPTask,
    dp_noise_for,
    invert_update,
    recovery,
    victim_task,
    victim_update,
)
from biofed.attacks._membership import (
    MEMBERSHIP_ATTACKS,
    TrainingSettings,
    lira_scores,
    loss_scores,
    membership_experiment,
    membership_inference,
    train_federated,
)
from biofed.attacks._poison import (
    INFLATED_EXAMPLES,
    Chain,
    FreeRiding,
    GaussianNoise,
    LyingEvaluation,
    Scaling,
    SignFlip,
    WeightInflation,
    label_flip,
)

__all__ = [
    "ATTACKS",
    "DECISION_EVENTS",
    "INFLATED_EXAMPLES",
    "MEMBERSHIP_ATTACKS",
    "VICTIM_MODELS",
    "Attack",
    "AttackOutcome",
    "Chain",
    "FreeRiding",
    "GaussianNoise",
    "Inversion",
    "LyingEvaluation",
    "MembershipResult",
    "Poison",
    "Recovery",
    "Scaling",
    "SignFlip",
    "TrainingSettings",
    "Trigger",
    "VictimMLPTask",
    "WeightInflation",
    "apply_trigger",
    "attack_success_rate",
    "backdoor",
    "choose_malicious",
    "clopper_pearson_upper",
    "dp_noise_for",
    "empirical_epsilon",
    "epsilon_from_rates",
    "invert_update",
    "label_flip",
    "linear_scores",
    "lira_scores",
    "loss_scores",
    "make_attack",
    "make_trigger",
    "membership_experiment",
    "membership_inference",
    "recovery",
    "run_attack",
    "score_attack",
    "tpr_at_fpr",
    "train_federated",
    "victim_task",
    "victim_update",
    "with_seed",
]
