"""Recommended hyper-parameters per (dataset, strategy), used by the CLI and the benchmarks.

Values for bundled datasets were chosen by a grid search over client learning rate, client
optimizer and the strategy's own parameters on Fed-TCGA-BRCA (FLamby's protocol: 6 centres,
batch 8, 100 local steps × 5 rounds, seeds 42–46); ``benchmarks/flamby_tcga_brca.py`` prints
them with the results. Anything not tuned falls back to :data:`GENERIC`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from biofed.core import Scalar


@dataclass(frozen=True, slots=True, kw_only=True)
class RecommendedSettings:
    """Client training config and strategy keyword arguments for one strategy."""

    train_config: Mapping[str, Scalar] = field(default_factory=lambda: MappingProxyType({}))
    strategy_kwargs: Mapping[str, Scalar] = field(default_factory=lambda: MappingProxyType({}))


def _s(train: dict[str, Scalar], **strategy: Scalar) -> RecommendedSettings:
    return RecommendedSettings(
        train_config=MappingProxyType(train), strategy_kwargs=MappingProxyType(strategy)
    )


_ADAM: dict[str, Scalar] = {"batch_size": 8, "learning_rate": 0.01, "optimizer": "adam"}
_SGD: dict[str, Scalar] = {
    "batch_size": 8,
    "learning_rate": 0.3,
    "optimizer": "sgd",
    "max_grad_norm": 1.0,
}

#: Fallback for datasets without tuned values: standardised features, the client config
#: above (Adam, lr 0.01, ≤ 100 steps, so a coordinate's round update |Δ| ≤ 1). FedAdam/FedYogi:
#: τ = √(1 − β₂)·1 = 0.1 keeps the server adaptive only for coordinates near that bound and
#: FedAvg-like (step (η/τ)·m, η/τ = 1) below it; with τ = 10⁻³ every coordinate took a sign
#: step of ~η. FedAdagrad's ``v`` has no (1 − β₂) factor, so the same behaviour needs η and τ
#: 10× larger. FedAvgM: η/(1 − β) = 1, FedAvg's step (Hsu et al. 2019). SCAFFOLD: SGD at 0.1,
#: since it returns the last local iterate, whose noise grows with the step size.
#: ``benchmarks/defaults_real_tables.py`` checks them on six real multi-site tables.
GENERIC: Mapping[str, RecommendedSettings] = MappingProxyType(
    {
        "fedavg": _s(dict(_ADAM)),
        "fedprox": _s(dict(_ADAM), proximal_mu=0.01),
        "fedavgm": _s(dict(_ADAM), server_learning_rate=0.5, server_momentum=0.5),
        "fedadam": _s(dict(_ADAM), server_learning_rate=0.1, tau=0.1),
        "fedyogi": _s(dict(_ADAM), server_learning_rate=0.1, tau=0.1),
        "fedadagrad": _s(dict(_ADAM), server_learning_rate=1.0, tau=1.0),
        "scaffold": _s({**_SGD, "learning_rate": 0.1}, server_learning_rate=1.0),
    }
)

_SLOW_ADAM: dict[str, Scalar] = {**_ADAM, "learning_rate": 0.003}

_TUNED: dict[str, Mapping[str, RecommendedSettings]] = {
    "tcga-brca": MappingProxyType(
        {
            "fedavg": _s(dict(_ADAM)),
            "fedprox": _s(dict(_ADAM), proximal_mu=0.01),
            "fedavgm": _s(dict(_ADAM), server_learning_rate=1.0, server_momentum=0.3),
            # Tuned with β₂ = 0.999, the class default until issue 13.
            "fedadam": _s(dict(_SLOW_ADAM), server_learning_rate=0.3, tau=1e-2, beta_2=0.999),
            "fedyogi": _s(dict(_SLOW_ADAM), server_learning_rate=0.3, tau=1e-2, beta_2=0.999),
            "fedadagrad": _s(dict(_SLOW_ADAM), server_learning_rate=1.0, tau=1e-8),
            "scaffold": _s(dict(_SGD), server_learning_rate=0.5),
        }
    ),
}


def recommended_settings(dataset: str, strategy: str) -> RecommendedSettings:
    """Tuned settings for ``strategy`` on ``dataset`` if known, else generic ones."""
    name = strategy.lower()
    tuned = _TUNED.get(dataset, GENERIC)
    return tuned.get(name) or GENERIC.get(name) or RecommendedSettings()
