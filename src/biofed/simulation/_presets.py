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

#: Fallback for datasets without tuned values.
GENERIC: Mapping[str, RecommendedSettings] = MappingProxyType(
    {
        "fedavg": _s(dict(_ADAM)),
        "fedprox": _s(dict(_ADAM), proximal_mu=0.01),
        "fedavgm": _s(dict(_ADAM), server_learning_rate=1.0, server_momentum=0.5),
        "fedadam": _s(dict(_ADAM), server_learning_rate=0.1, tau=1e-3),
        "fedyogi": _s(dict(_ADAM), server_learning_rate=0.1, tau=1e-3),
        "fedadagrad": _s(dict(_ADAM), server_learning_rate=0.1, tau=1e-3),
        "scaffold": _s(dict(_SGD), server_learning_rate=1.0),
    }
)

_SLOW_ADAM: dict[str, Scalar] = {**_ADAM, "learning_rate": 0.003}

_TUNED: dict[str, Mapping[str, RecommendedSettings]] = {
    "tcga-brca": MappingProxyType(
        {
            "fedavg": _s(dict(_ADAM)),
            "fedprox": _s(dict(_ADAM), proximal_mu=0.01),
            "fedavgm": _s(dict(_ADAM), server_learning_rate=1.0, server_momentum=0.3),
            "fedadam": _s(dict(_SLOW_ADAM), server_learning_rate=0.3, tau=1e-2),
            "fedyogi": _s(dict(_SLOW_ADAM), server_learning_rate=0.3, tau=1e-2),
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
