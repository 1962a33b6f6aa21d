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
    "Attack",
    "AttackOutcome",
    "Chain",
    "FreeRiding",
    "GaussianNoise",
    "LyingEvaluation",
    "Poison",
    "Scaling",
    "SignFlip",
    "Trigger",
    "WeightInflation",
    "apply_trigger",
    "attack_success_rate",
    "backdoor",
    "choose_malicious",
    "label_flip",
    "linear_scores",
    "make_attack",
    "make_trigger",
    "run_attack",
    "with_seed",
]
