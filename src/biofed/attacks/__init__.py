"""biofed.attacks: the attacks biofed's defences are measured against (tests and benchmarks only).

Malicious virtual sites (poisoning, backdoors, weight inflation, free-riding) for a
simulation's :class:`~biofed.simulation.TamperingBackend`, and privacy attacks on what a site
sends or what a run releases (gradient inversion, membership inference). No node, coordinator
or command imports this package (the layer contract in ``pyproject.toml`` keeps it on top,
beside the CLI and independent of it).
"""

from biofed.attacks._empirical_eps import (
    MembershipResult,
    clopper_pearson_upper,
    empirical_epsilon,
    epsilon_from_rates,
    score_attack,
    tpr_at_fpr,
)
from biofed.attacks._inversion import (
    INVERSION_SETTINGS,
    VICTIM_MODELS,
    Inversion,
    InversionResult,
    Recovery,
    VictimMLPTask,
    dp_noise_for,
    inversion_experiment,
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

__all__: list[str] = [
    "INVERSION_SETTINGS",
    "MEMBERSHIP_ATTACKS",
    "VICTIM_MODELS",
    "Inversion",
    "InversionResult",
    "MembershipResult",
    "Recovery",
    "TrainingSettings",
    "VictimMLPTask",
    "clopper_pearson_upper",
    "dp_noise_for",
    "empirical_epsilon",
    "epsilon_from_rates",
    "inversion_experiment",
    "invert_update",
    "lira_scores",
    "loss_scores",
    "membership_experiment",
    "membership_inference",
    "recovery",
    "score_attack",
    "tpr_at_fpr",
    "train_federated",
    "victim_task",
    "victim_update",
]
