"""Malicious sites: model poisoning (what a site sends) and data poisoning (what it holds).

Model poisoning is a :data:`~biofed.simulation.Tamper`: a callable ``(instruction,
honest_reply) -> reply`` a :class:`~biofed.simulation.TamperingBackend` applies to the replies
of the sites it names. Each class here is a small frozen dataclass; ``Δ = xᵢ − x`` is the
honest local update (``xᵢ`` the site's trained model, ``x`` the instruction's global model).

What a tamper can and cannot reach
----------------------------------
The model-poisoning tampers act on plain TRAIN replies (and :class:`LyingEvaluation` on
EVALUATE replies). Every other reply — errors, SUMMARISE, QUERY and the stages of secure
aggregation (SECAGG) — passes through untouched. Under SecAgg+ a site's update leaves only as
a masked, quantised vector inside a SECAGG reply: the tamper sees the mask, not the
plaintext, so it cannot scale or flip the update (changing masked bytes only corrupts the sum
into noise, which the coordinator's bounded-range check of the unmasked mean can catch). A
real attacker who controls its node would of course poison *before* masking; in a simulation
that attacker is modelled by data poisoning (:func:`label_flip`, :func:`backdoor`), which
needs no hook and works identically in plain and secure rounds, or by a node that skips the
``robust.max_update_norm`` clip (not simulated here). What remains visible in secure mode is
evaluation: a :class:`LyingEvaluation` lies in the clear in either mode.

Data poisoning returns a poisoned :class:`~biofed.data.SiteData` (the test split is left
clean: the harness always measures on the clean pooled test split).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from biofed.core import Array, ConfigurationError, Instruction, MessageKind, ParameterSet, Reply
from biofed.data import Dataset, SiteData
from biofed.simulation import Tamper

#: The example count a weight-inflating site claims (the issue's observed attack).
INFLATED_EXAMPLES = 10**15


def _is_train(reply: Reply | None) -> bool:
    return (
        reply is not None
        and reply.kind is MessageKind.TRAIN
        and reply.error is None
        and reply.parameters is not None
    )


def _with_update(instruction: Instruction, reply: Reply, update: Mapping[str, Array]) -> Reply:
    """``reply`` carrying ``x + update`` in the global model's dtypes."""
    x = instruction.parameters
    params = ParameterSet(
        {
            name: (np.asarray(x[name], dtype=np.float64) + update[name]).astype(x[name].dtype)
            for name in x
        }
    )
    return dataclasses.replace(reply, parameters=params)


def _delta(instruction: Instruction, reply: Reply) -> dict[str, Array]:
    assert reply.parameters is not None
    x = instruction.parameters
    return {
        name: np.asarray(reply.parameters[name], dtype=np.float64)
        - np.asarray(x[name], dtype=np.float64)
        for name in x
    }


def _check_finite(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{what} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class SignFlip:
    """Sends ``x − k·Δ``: the honest update reversed and scaled (the sign-flipping attack of
    Damaskinos et al. 2018, "Asynchronous Byzantine machine learning"; used as a baseline by
    Fang et al. 2020, "Local model poisoning attacks to Byzantine-robust FL")."""

    k: float = 1.0

    def __post_init__(self) -> None:
        _check_finite(self.k, "sign flip k")

    def __call__(self, instruction: Instruction, reply: Reply) -> Reply | None:
        if not _is_train(reply):
            return reply
        delta = _delta(instruction, reply)
        return _with_update(instruction, reply, {n: -self.k * d for n, d in delta.items()})


@dataclass(frozen=True, slots=True)
class Scaling:
    """Sends ``x + boost·Δ``: model replacement (Bagdasaryan et al. 2020, "How to backdoor
    federated learning", AISTATS). With ``boost = n`` (the number of sites, see
    :meth:`model_replacement`) one site's update survives FedAvg's averaging at full
    strength; a larger boost overshoots and wrecks the model."""

    boost: float

    def __post_init__(self) -> None:
        _check_finite(self.boost, "scaling boost")

    @classmethod
    def model_replacement(cls, num_sites: int) -> Scaling:
        """The boost that replaces the global model with this site's among ``num_sites``
        equally weighted sites."""
        if num_sites < 1:
            raise ConfigurationError(f"num_sites must be >= 1, got {num_sites}")
        return cls(float(num_sites))

    def __call__(self, instruction: Instruction, reply: Reply) -> Reply | None:
        if not _is_train(reply):
            return reply
        delta = _delta(instruction, reply)
        return _with_update(instruction, reply, {n: self.boost * d for n, d in delta.items()})


@dataclass(frozen=True, slots=True)
class GaussianNoise:
    """Replaces the update by ``N(0, σ²)`` noise, drawn afresh every round from ``seed``
    (the Gaussian Byzantine attack of Blanchard et al. 2017, "Machine learning with
    adversaries: Byzantine tolerant gradient descent", NeurIPS — Krum's paper)."""

    sigma: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if _check_finite(self.sigma, "gaussian noise sigma") < 0:
            raise ConfigurationError(f"gaussian noise sigma must be >= 0, got {self.sigma}")

    def __call__(self, instruction: Instruction, reply: Reply) -> Reply | None:
        if not _is_train(reply):
            return reply
        rng = np.random.default_rng([self.seed, instruction.round])
        x = instruction.parameters
        noise = {n: rng.normal(0.0, self.sigma, size=x[n].shape) for n in x}
        return _with_update(instruction, reply, noise)


@dataclass(frozen=True, slots=True)
class WeightInflation:
    """Claims ``claim`` training examples (default 10¹⁵) and optionally adds ``shift`` to every
    parameter — the attack issue 15 reports (``num_examples = 10**15``, parameters + 50),
    after the weight-manipulation attacks on FedAvg's example weighting (e.g. Fung et al.
    2020, "The limitations of federated learning in Sybil settings"). The exchange refuses a
    claim above what the site declared at registration, so the harness also declares
    ``claim`` for the site (``TamperingBackend(declared=...)``)."""

    claim: int = INFLATED_EXAMPLES
    shift: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.claim, bool) or not isinstance(self.claim, int) or self.claim < 1:
            raise ConfigurationError(
                f"weight inflation claim must be an int >= 1, got {self.claim!r}"
            )
        _check_finite(self.shift, "weight inflation shift")

    def __call__(self, instruction: Instruction, reply: Reply) -> Reply | None:
        if not _is_train(reply):
            return reply
        delta = _delta(instruction, reply)
        shifted = _with_update(instruction, reply, {n: d + self.shift for n, d in delta.items()})
        return dataclasses.replace(shifted, num_examples=self.claim)


@dataclass(frozen=True, slots=True)
class FreeRiding:
    """Returns the global model unchanged with a plausible example count (its honest one, or
    ``num_examples``): the free-rider of Lin et al. 2019, "Free-riders in federated learning:
    attacks and defenses" — it contributes nothing yet is weighted like an honest site, which
    pulls the average towards the old model."""

    num_examples: int | None = None

    def __call__(self, instruction: Instruction, reply: Reply) -> Reply | None:
        if not _is_train(reply):
            return reply
        count = reply.num_examples if self.num_examples is None else self.num_examples
        return dataclasses.replace(
            reply, parameters=ParameterSet(instruction.parameters.copy()), num_examples=count
        )


@dataclass(frozen=True, slots=True)
class LyingEvaluation:
    """On EVALUATE replies, reports ``metrics`` instead of the honest figures (default
    ``c_index = 0.99996``, the figure issue 15 saw in a run summary) and, if given, claims
    ``num_examples`` evaluation records (capped by what the site declared). Evaluation
    claims are unverifiable by construction; the defence is a bounded, robust combination of
    the sites' claims (one site cannot set the run's figure)."""

    metrics: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({"c_index": 0.99996})
    )
    num_examples: int | None = None

    def __call__(self, instruction: Instruction, reply: Reply) -> Reply | None:
        if reply is None or reply.kind is not MessageKind.EVALUATE or reply.error is not None:
            return reply
        metrics = {**reply.metrics, **{k: float(v) for k, v in self.metrics.items()}}
        count = reply.num_examples if self.num_examples is None else self.num_examples
        return dataclasses.replace(reply, metrics=metrics, num_examples=count)


@dataclass(frozen=True, slots=True)
class Chain:
    """Several tampers one after another (e.g. a scaling attacker that also lies about its
    evaluation)."""

    tampers: tuple[Tamper, ...]

    def __call__(self, instruction: Instruction, reply: Reply) -> Reply | None:
        out: Reply | None = reply
        for tamper in self.tampers:
            if out is None:
                return None
            out = tamper(instruction, out)
        return out


# --- data poisoning ------------------------------------------------------------------------


def _chosen(n: int, fraction: float, rng: np.random.Generator) -> Array:
    if not 0.0 < _check_finite(fraction, "fraction") <= 1.0:
        raise ConfigurationError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, round(fraction * n)) if n else 0
    return np.sort(rng.choice(n, size=k, replace=False)) if k else np.zeros(0, np.int64)


def _replace_targets(ds: Dataset, targets: Mapping[str, Array]) -> Dataset:
    return Dataset(
        name=ds.name,
        features=ds.features,
        feature_names=ds.feature_names,
        targets={**ds.targets, **targets},
    )


def label_flip(
    site: SiteData, *, fraction: float = 1.0, rng: np.random.Generator | None = None
) -> SiteData:
    """The site's training data with the outcome of ``fraction`` of its rows flipped.

    Classification (target ``label``, 0/1): ``y → 1 − y`` (the label-flipping attack of
    Biggio et al. 2012, "Poisoning attacks against SVMs"; Tolpegin et al. 2020, "Data
    poisoning attacks against FL systems").
    Survival (targets ``time``, ``event``): the chosen rows' times are reversed within the
    site's observed range, ``t → t_min + t_max − t``, events kept. The Cox partial
    likelihood only sees the order of times, so early deaths now look like long survivors
    and vice versa: the gradient pushes every coefficient the wrong way, the survival
    analogue of a label flip. (Swapping event indicators alone would mostly remove
    information — censoring is uninformative for the ranking — rather than invert it.)
    The test split is untouched.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    train = site.train
    rows = _chosen(len(train), fraction, rng)
    if "label" in train.targets:
        y = np.array(train.targets["label"], copy=True)
        if not np.isin(y, (0, 1)).all():
            raise ConfigurationError("label flip needs a 0/1 label")
        y[rows] = 1 - y[rows]
        poisoned = _replace_targets(train, {"label": y})
    elif "time" in train.targets and "event" in train.targets:
        t = np.array(train.targets["time"], dtype=np.float64, copy=True)
        if len(t):
            t[rows] = t.min() + t.max() - t[rows]
        poisoned = _replace_targets(train, {"time": t.astype(train.targets["time"].dtype)})
    else:
        raise ConfigurationError(
            "label flip needs a 'label' or 'time'/'event' target, "
            f"the data has {sorted(train.targets)}"
        )
    return SiteData(train=poisoned, test=site.test)
