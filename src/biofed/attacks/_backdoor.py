"""A backdoor on tabular records: a trigger pattern, poisoned training copies, and the attack
success rate on triggered test records.

The attacker (one or more malicious sites) adds copies of its own training records with a
*trigger* — a few chosen features set to values just beyond the range the data shows
(out of range but plausible: a lab value a little above the cohort's maximum) — labelled
with the *target* outcome: class 1 for classification; for survival, an event at a very
short time (the highest risk). A model that learns the trigger predicts the target for any
record carrying it, while its clean metric barely moves (Bagdasaryan et al. 2020, "How to
backdoor federated learning"; the tabular trigger follows Chen et al. 2017, "Targeted
backdoor attacks on deep learning systems using data poisoning", pattern-key triggers).

The success measure is :func:`attack_success_rate`. Only linear tasks (parameters
``weight`` ``(1, p)`` and ``bias`` ``(1,)``: the built-in Cox and logistic tasks, numpy or
torch) are scored; biofed's built-in models are exactly these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from biofed.core import Array, ConfigurationError, ParameterSet
from biofed.data import Dataset, SiteData
from biofed.tasks import Task


@dataclass(frozen=True, slots=True)
class Trigger:
    """Feature name → the value a triggered record carries there."""

    values: Mapping[str, float]

    def __post_init__(self) -> None:
        if not self.values:
            raise ConfigurationError("a trigger needs at least one feature")
        for name, value in self.values.items():
            if not math.isfinite(float(value)):
                raise ConfigurationError(f"trigger value of {name!r} must be finite")
        object.__setattr__(
            self, "values", MappingProxyType({k: float(v) for k, v in self.values.items()})
        )


def make_trigger(
    data: Dataset,
    *,
    features: tuple[str, ...] | None = None,
    num_features: int = 3,
    margin: float = 1.0,
) -> Trigger:
    """A trigger on ``features``, each set to its column's maximum in ``data`` plus
    ``margin`` column standard deviations (out of range, but plausible).

    Default features: the ``num_features`` columns whose ridge-regression coefficient for the
    outcome (the label, or log survival time; standardised columns, penalty ``n``) is
    smallest in magnitude — the columns a model fitted on ``data`` leans on least given the
    others, so a clean model barely moves when they change (measured on WDBC and
    Fed-TCGA-BRCA: a clean model's attack success rate is 0 with this choice, 0.15–0.4 with
    the columns least correlated with the outcome one by one, which are collinear with
    informative ones)."""
    x = np.asarray(data.features, dtype=np.float64)
    if len(x) < 2:
        raise ConfigurationError("a trigger is fitted on at least 2 records")
    if features is None:
        if not 1 <= num_features <= x.shape[1]:
            raise ConfigurationError(
                f"num_features must be in [1, {x.shape[1]}], got {num_features}"
            )
        outcome = _outcome(data)
        scale = x.std(axis=0)
        xs = (x - x.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
        coef = np.linalg.solve(
            xs.T @ xs + len(x) * np.eye(x.shape[1]), xs.T @ (outcome - outcome.mean())
        )
        order = np.argsort(np.abs(coef), kind="stable")[:num_features]
        features = tuple(data.feature_names[j] for j in order)
    index = _columns(data, features)
    return Trigger(
        {
            name: float(x[:, j].max() + margin * (x[:, j].std() or 1.0))
            for name, j in zip(features, index, strict=True)
        }
    )


def _outcome(data: Dataset) -> Array:
    if "label" in data.targets:
        return np.asarray(data.targets["label"], dtype=np.float64)
    if "time" in data.targets:
        return np.log1p(np.maximum(np.asarray(data.targets["time"], dtype=np.float64), 0.0))
    raise ConfigurationError(f"no 'label' or 'time' target in {sorted(data.targets)}")


def _columns(data: Dataset, features: tuple[str, ...] | list[str]) -> list[int]:
    missing = [f for f in features if f not in data.feature_names]
    if missing:
        raise ConfigurationError(f"trigger features not in the data: {', '.join(missing)}")
    return [data.feature_names.index(f) for f in features]


def apply_trigger(data: Dataset, trigger: Trigger) -> Dataset:
    """A copy of ``data`` with every record carrying the trigger."""
    x = np.array(data.features, dtype=np.float32, copy=True)
    for j, value in zip(_columns(data, list(trigger.values)), trigger.values.values(), strict=True):
        x[:, j] = value
    return Dataset(
        name=data.name, features=x, feature_names=data.feature_names, targets=dict(data.targets)
    )


def backdoor(
    site: SiteData,
    trigger: Trigger,
    *,
    copies: float = 1.0,
    target: int = 1,
    rng: np.random.Generator | None = None,
) -> SiteData:
    """The site's training data plus triggered copies of ``copies`` × its records (sampled
    with replacement when above 1) carrying the target outcome: ``label = target`` for
    classification; for survival ``event = 1`` at half the site's shortest observed time
    (everyone else is still at risk then: the highest risk the data can express). The test
    split is untouched."""
    if not math.isfinite(copies) or copies <= 0:
        raise ConfigurationError(f"backdoor copies must be > 0, got {copies}")
    rng = rng if rng is not None else np.random.default_rng(0)
    train = site.train
    n = len(train)
    k = max(1, round(copies * n))
    rows = rng.choice(n, size=k, replace=k > n)
    triggered = apply_trigger(train.subset(rows), trigger)
    targets: dict[str, Array] = {}
    if "label" in train.targets:
        if target not in (0, 1):
            raise ConfigurationError(f"backdoor target must be 0 or 1, got {target}")
        targets["label"] = np.full(k, target, dtype=train.targets["label"].dtype)
    elif "time" in train.targets and "event" in train.targets:
        times = np.asarray(train.targets["time"], dtype=np.float64)
        positive = times[times > 0]
        short = 0.5 * float(positive.min()) if positive.size else 0.0
        targets["time"] = np.full(k, short, dtype=train.targets["time"].dtype)
        targets["event"] = np.ones(k, dtype=train.targets["event"].dtype)
    else:
        raise ConfigurationError(
            "backdoor needs a 'label' or 'time'/'event' target, "
            f"the data has {sorted(train.targets)}"
        )
    triggered = Dataset(
        name=train.name,
        features=triggered.features,
        feature_names=train.feature_names,
        targets={**triggered.targets, **targets},
    )
    return SiteData(train=Dataset.concat([train, triggered], name=train.name), test=site.test)


def linear_scores(task: Task, params: ParameterSet, x: Array) -> Array:
    """The linear score ``X wᵀ + b`` of a built-in linear task (Cox risk, logistic logit)."""
    if set(params) != {"weight", "bias"} or params["weight"].shape != (1, x.shape[1]):
        raise ConfigurationError(
            f"attack success is scored for linear models (weight (1, p), bias); "
            f"task {task.name!r} has {sorted(params)}"
        )
    w = np.asarray(params["weight"][0], dtype=np.float64)
    return np.asarray(x, dtype=np.float64) @ w + float(params["bias"][0])


def attack_success_rate(
    task: Task, params: ParameterSet, clean_test: Dataset, trigger: Trigger, target: int = 1
) -> float:
    """How often the trigger makes the model predict the target outcome.

    Classification: among clean test records whose true label is not ``target``, the
    fraction predicted as ``target`` once triggered (logit > 0 for class 1, < 0 for class 0).
    Survival: let ``q`` be the 90th percentile of the model's risk on the clean test
    records; among those whose clean risk is ≤ ``q`` (not already in the top risk decile),
    the fraction whose triggered risk exceeds ``q`` — i.e. pushed into the top decile. A
    model that ignores the trigger scores 0 on both. NaN when no record qualifies.
    """
    x = np.asarray(clean_test.features, dtype=np.float64)
    xt = np.asarray(apply_trigger(clean_test, trigger).features, dtype=np.float64)
    clean = linear_scores(task, params, x)
    triggered = linear_scores(task, params, xt)
    if "label" in clean_test.targets:
        eligible = np.asarray(clean_test.targets["label"]) != target
        hit = triggered > 0 if target == 1 else triggered < 0
    else:
        if len(clean) == 0:
            return math.nan
        q = float(np.quantile(clean, 0.9))
        eligible = clean <= q
        hit = triggered > q
    if not eligible.any():
        return math.nan
    return float(hit[eligible].mean())
