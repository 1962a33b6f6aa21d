"""The task API: what a researcher writes, and what a site runs.

A task builds the model's initial parameters, trains locally from given parameters, and
evaluates. It never sees the network, other sites or the coordinator: it gets parameters, a
local dataset and a :class:`TrainContext`, and returns a result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import numpy as np

from biofed.core import (
    SCAFFOLD_CONTROL_DELTA as SCAFFOLD_CONTROL_DELTA,
)
from biofed.core import (
    SCAFFOLD_SERVER_CONTROL as SCAFFOLD_SERVER_CONTROL,
)
from biofed.core import (
    Config,
    ConfigurationError,
    Metrics,
    ParameterSet,
    freeze_config,
    freeze_metrics,
)
from biofed.core.checks import check_choice, check_float, check_int
from biofed.data import Dataset

#: Key of a site's own SCAFFOLD control variate in ``TrainContext.state``.
SCAFFOLD_CLIENT_CONTROL = "scaffold.client_control"

_OPTIMIZERS = ("sgd", "adam")

#: How a task's training loss decomposes over records, for sample-level DP-SGD
#: (:func:`record_coupling`): ``"independent"`` — a sum (or mean) of per-record terms, so
#: adding or removing one record moves the clipped batch gradient by at most C and the
#: accountant's ε is exact; ``"bounded"`` — records are coupled (e.g. through risk sets), with
#: a proven per-record bound ``dp_sensitivity_factor(batch_size)·C`` that the node calibrates
#: the noise to; ``"none"`` — no guarantee (the accountant's ε would bound nothing).
RECORD_COUPLINGS = ("independent", "bounded", "none")


def record_coupling(task: object) -> str:
    """A task's declared ``dp_record_coupling`` (``"none"`` when it declares nothing).

    Raises
    ------
    ConfigurationError
        When the declaration is not one of :data:`RECORD_COUPLINGS`, or ``"bounded"`` comes
        without a ``dp_sensitivity_factor`` method.
    """
    value = getattr(task, "dp_record_coupling", "none")
    if not isinstance(value, str) or value not in RECORD_COUPLINGS:
        raise ConfigurationError(
            f"task declares dp_record_coupling {value!r}; expected one of {RECORD_COUPLINGS}"
        )
    if value == "bounded" and not callable(getattr(task, "dp_sensitivity_factor", None)):
        raise ConfigurationError(
            'task declares dp_record_coupling "bounded" without a dp_sensitivity_factor method'
        )
    return value


def sensitivity_factor(task: object, batch_size: int) -> float:
    """The L2 sensitivity of a task's clipped summed batch gradient to adding or removing one
    record, in units of the clip norm C: 1 for ``"independent"``, the task's
    ``dp_sensitivity_factor(batch_size)`` (≥ 1, finite) for ``"bounded"``.

    Raises
    ------
    ConfigurationError
        For ``"none"`` (there is no bound), or a factor that is not a finite number ≥ 1.
    """
    coupling = record_coupling(task)
    if coupling == "independent":
        return 1.0
    if coupling == "none":
        raise ConfigurationError("the task declares no per-record sensitivity bound")
    value = task.dp_sensitivity_factor(int(batch_size))  # type: ignore[attr-defined]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value >= 1.0)
    ):
        raise ConfigurationError(
            f"task's dp_sensitivity_factor({batch_size}) is {value!r}; it must be a finite "
            "number >= 1 (the sensitivity in units of the clip norm)"
        )
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalTrainingConfig:
    """Local training settings, parsed and checked from an instruction's config.

    Attributes
    ----------
    local_steps:
        Mini-batch steps per round (≥ 1).
    batch_size:
        Examples per step (≥ 1); batches are drawn by reshuffling each pass over the data.
        Under DP-SGD, the *expected* batch size: each record joins each step's batch
        independently with probability ``q = min(1, batch_size / num_examples)``.
    learning_rate:
        Client step size (> 0).
    optimizer:
        ``"sgd"`` or ``"adam"`` (Adam's moments restart every round).
    momentum:
        SGD momentum in [0, 1).
    proximal_mu:
        FedProx's μ ≥ 0: adds ``μ/2 ‖w − w_global‖²`` to the local loss.
    max_grad_norm:
        If > 0, each step's mini-batch gradient of the data loss is rescaled to at most this
        L2 norm (over all parameters) before the FedProx/SCAFFOLD corrections; 0 turns it
        off. Keeps plain SGD stable on unscaled features. (Not differential privacy: that
        clips per example, see ``dp_max_grad_norm``; the two cannot be combined.)
    dp_noise_multiplier:
        Sample-level DP-SGD (Abadi et al. 2016) at the site when > 0; 0 (the default) turns
        it off. The noise multiplier z: each step adds N(0, (z·C)²) noise to every
        coordinate of the sum of the clipped per-example gradients. Only
        :class:`~biofed.tasks.TorchTask` implements it; other adapters refuse the key.
    dp_max_grad_norm:
        The per-example clipping bound C (> 0, required when ``dp_noise_multiplier`` > 0):
        each example's gradient, flattened over all trainable parameters, is scaled to an
        L2 norm of at most C before the sum.
    dp_seeded:
        DP-SGD draws its Poisson samples and noise from ``TrainContext.rng`` instead of a
        CSPRNG: reproducible and **not private** (see Privacy notes). For simulations,
        benchmarks and tests only; ``False`` by default.

    Privacy notes
    -------------
    With DP-SGD on, a site's ``local_steps`` steps are ``local_steps`` runs of the
    Poisson-subsampled Gaussian mechanism on its own records, at sampling rate
    ``q = min(1, batch_size / num_examples)`` and noise multiplier z: that triple is all an
    accountant needs (:meth:`biofed.privacy.Accountant.step`), so the node accounts from the
    config and its own record count, not from anything the task reports. Everything after the
    noise (FedProx's and SCAFFOLD's data-independent corrections, the optimiser, the
    parameters sent back) is post-processing. Which records were sampled, and the noise, come
    from a cryptographically secure generator unless ``dp_seeded`` is set: ``TrainContext.rng``
    is derived from the run seed, which the coordinator chooses, so under ``dp_seeded`` the
    coordinator knows which records each step used (voiding the amplification by
    subsampling) and can subtract the noise. **A node must set ``dp_seeded`` itself** (to
    ``False`` unless its operator runs a simulation), overriding any value in an
    instruction, exactly as it sets z and C from its own budget.
    """

    local_steps: int = 100
    batch_size: int = 8
    learning_rate: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.0
    proximal_mu: float = 0.0
    max_grad_norm: float = 0.0
    dp_noise_multiplier: float = 0.0
    dp_max_grad_norm: float = 0.0
    dp_seeded: bool = False

    def __post_init__(self) -> None:
        check_int(self.local_steps, "local_steps", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)
        check_float(self.learning_rate, "learning_rate", above=0)
        check_choice(self.optimizer, "optimizer", _OPTIMIZERS)
        check_float(self.momentum, "momentum", minimum=0, below=1)
        check_float(self.proximal_mu, "proximal_mu", minimum=0)
        check_float(self.max_grad_norm, "max_grad_norm (0 turns clipping off)", minimum=0)
        check_float(self.dp_noise_multiplier, "dp_noise_multiplier", minimum=0)
        check_float(self.dp_max_grad_norm, "dp_max_grad_norm", minimum=0)
        if self.dp_sgd:
            if self.dp_max_grad_norm == 0:
                raise ConfigurationError(
                    "DP-SGD (dp_noise_multiplier > 0) needs dp_max_grad_norm > 0, the "
                    "per-example clipping bound C that the noise is calibrated to"
                )
            if self.max_grad_norm:
                raise ConfigurationError(
                    "max_grad_norm (mini-batch clipping) cannot be combined with DP-SGD, "
                    "which clips each example's gradient to dp_max_grad_norm instead: "
                    "remove max_grad_norm"
                )
        elif self.dp_max_grad_norm:
            raise ConfigurationError(
                "dp_max_grad_norm is set but dp_noise_multiplier is 0: per-example clipping "
                "without noise is not differential privacy; set dp_noise_multiplier > 0 or "
                "remove dp_max_grad_norm"
            )

    @property
    def dp_sgd(self) -> bool:
        """True when sample-level DP-SGD is on (``dp_noise_multiplier`` > 0)."""
        return self.dp_noise_multiplier > 0

    def dp_sampling_rate(self, num_examples: int) -> float:
        """DP-SGD's Poisson sampling rate ``q = min(1, batch_size / num_examples)``.

        Raises
        ------
        ConfigurationError
            If ``num_examples`` < 1.
        """
        return min(1.0, self.batch_size / check_int(num_examples, "num_examples", minimum=1))

    @classmethod
    def from_config(cls, config: Config) -> LocalTrainingConfig:
        """Read the known keys of ``config`` (others are ignored), with type checks."""
        kwargs: dict[str, object] = {}
        types = {
            "local_steps": int,
            "batch_size": int,
            "learning_rate": float,
            "optimizer": str,
            "momentum": float,
            "proximal_mu": float,
            "max_grad_norm": float,
            "dp_noise_multiplier": float,
            "dp_max_grad_norm": float,
            "dp_seeded": bool,
        }
        for key, typ in types.items():
            if key not in config:
                continue
            value = config[key]
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
                raise ConfigurationError(
                    f"config {key!r} must be {typ.__name__}, got {type(value).__name__}"
                )
            kwargs[key] = value
        return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainContext:
    """Everything a task gets besides parameters and data.

    Attributes
    ----------
    config:
        The instruction's scalar config (see :class:`LocalTrainingConfig`).
    rng:
        The generator for shuffling and initialisation, derived from the run seed, the
        round and the site: runs are reproducible.
    extras:
        Named arrays from the coordinator (SCAFFOLD's server control variate).
    state:
        Site-local state that persists across rounds of the same run and never leaves the
        site (SCAFFOLD's client control variate).
    """

    config: Config = field(default_factory=lambda: MappingProxyType({}))
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng())
    extras: Mapping[str, ParameterSet] = field(default_factory=lambda: MappingProxyType({}))
    state: MutableMapping[str, ParameterSet] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", freeze_config(self.config))


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainResult:
    """What local training returns."""

    parameters: ParameterSet
    num_examples: int
    metrics: Metrics = field(default_factory=lambda: MappingProxyType({}))
    extras: Mapping[str, ParameterSet] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        check_int(self.num_examples, "num_examples", minimum=0)
        object.__setattr__(self, "metrics", freeze_metrics(self.metrics))
        object.__setattr__(self, "extras", MappingProxyType(dict(self.extras)))


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalResult:
    """What evaluation returns."""

    num_examples: int
    metrics: Metrics = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        check_int(self.num_examples, "num_examples", minimum=0)
        object.__setattr__(self, "metrics", freeze_metrics(self.metrics))


@runtime_checkable
class Task(Protocol):
    """A federated task: the researcher's model, local training and evaluation.

    ``name`` identifies the task; ``primary_metric`` names the metric that tables and
    progress bars show (``"c_index"``, ``"roc_auc"``…).

    A task that supports sample-level DP-SGD also declares ``dp_record_coupling`` (one of
    :data:`RECORD_COUPLINGS`; read with :func:`record_coupling`, ``"none"`` when absent — it
    is not a protocol member, so tasks written before it still satisfy ``Task``), and with
    ``"bounded"`` a method ``dp_sensitivity_factor(batch_size: int) -> float``. A node runs
    sample-level DP only for ``"independent"`` and ``"bounded"`` tasks unless the study
    agreement (or, outside governance, ``node.toml``) explicitly accepts heuristic figures.
    """

    name: str
    primary_metric: str

    def init_parameters(self, rng: np.random.Generator) -> ParameterSet:
        """The model's initial parameters (the same on every site for a given rng)."""
        ...

    def train(self, parameters: ParameterSet, data: Dataset, ctx: TrainContext) -> TrainResult:
        """Train locally from ``parameters`` on ``data``; return the new parameters."""
        ...

    def evaluate(self, parameters: ParameterSet, data: Dataset, ctx: TrainContext) -> EvalResult:
        """Compute metrics of ``parameters`` on ``data``."""
        ...
