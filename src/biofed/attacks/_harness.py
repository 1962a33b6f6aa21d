"""The attack harness: run a job over a federation with a malicious minority and measure.

:func:`run_attack` builds the federation only through :mod:`biofed.simulation` — the job's
real site nodes (``simulate`` with a job) behind a
:class:`~biofed.simulation.TamperingBackend` whose malicious sites tamper with their
replies, over a federated dataset in which they hold poisoned data — and reports what a
benchmark table needs: the final model's primary metric on the pooled *clean* test split
(what the attack did to the model), the backdoor's success rate, the per-round history, each
site's ``update_*`` decisions (what the defence did), and the evaluation figure the
federation itself reported (whether a lying evaluation moved it).

Weight inflation needs the site to declare its inflated count at registration (the exchange
refuses a reply claiming more than its site declared); an :class:`Attack` with ``declared``
does. Tampering applies to plain rounds; see :mod:`biofed.attacks._poison` for what a
tamper can reach under secure aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from biofed.attacks._backdoor import Trigger, attack_success_rate, backdoor, make_trigger
from biofed.attacks._poison import (
    INFLATED_EXAMPLES,
    FreeRiding,
    GaussianNoise,
    LyingEvaluation,
    Scaling,
    SignFlip,
    WeightInflation,
    label_flip,
)
from biofed.coordinator import JobSpec, RoundRecord, RunEvent
from biofed.core import ConfigurationError, ParameterSet, Reply
from biofed.data import FederatedDataset, SiteData
from biofed.simulation import Tamper, TamperingBackend, evaluate_everywhere, simulate
from biofed.strategies import DECISION_ACTIONS, TrustedValidation
from biofed.tasks import make_task

#: The run-event kind of a robust aggregator's or validator's decision is ``update_<action>``
#: (the round engine's ``DECISION_EVENT_PREFIX``).
DECISION_EVENTS: tuple[str, ...] = tuple(f"update_{a}" for a in DECISION_ACTIONS)

#: Poison: (the site's data, a generator) → the data the malicious site holds instead.
Poison = Callable[[SiteData, np.random.Generator], SiteData]


@dataclass(frozen=True, slots=True, kw_only=True)
class Attack:
    """What one malicious site does.

    Attributes
    ----------
    name:
        A label for tables.
    tamper:
        What it does to its replies (model poisoning, lying evaluation), or None.
    poison:
        What it does to its training data (label flip, backdoor), or None.
    declared:
        The example count it declares at registration (weight inflation), or None.
    trigger, target:
        A backdoor's trigger and target outcome (the harness then measures the attack
        success rate on the clean test split).
    """

    name: str
    tamper: Tamper | None = None
    poison: Poison | None = None
    declared: int | None = None
    trigger: Trigger | None = None
    target: int = 1


#: The attacks :func:`make_attack` builds.
ATTACKS: tuple[str, ...] = (
    "backdoor",
    "free_riding",
    "gaussian_noise",
    "label_flip",
    "lying_evaluation",
    "scaling",
    "sign_flip",
    "weight_inflation",
)


def make_attack(
    name: str,
    fed: FederatedDataset,
    *,
    seed: int = 0,
    boost: float | None = None,
    sign_k: float = 1.0,
    sigma: float = 1.0,
    fraction: float = 1.0,
    copies: float = 1.0,
    metric: str | None = None,
) -> Attack:
    """One of :data:`ATTACKS` with its parameters (defaults in brackets).

    ``scaling``: ``x + boost·Δ`` [boost = number of sites: model replacement]; a negative
    boost is the boosted sign flip (on Fed-TCGA-BRCA a positive boost leaves FedAvg's
    C-index near the attacker's own model's, ~0.7: a ranking metric survives any positive
    scale of a sensible model; boost −100 drives it to 0.27–0.52, whichever site attacks);
    ``sign_flip``: ``x − k·Δ`` [k = 1]; ``gaussian_noise``: update ~ N(0, σ²) [σ = 1];
    ``weight_inflation``: claims and declares 10¹⁵ examples, parameters + 50 (the issue's
    attack); ``free_riding``: the global model back; ``label_flip``: ``fraction`` of its
    rows [all]; ``backdoor``: ``copies`` × its records triggered [1×], the trigger fitted on
    the pooled training data (:func:`make_trigger`: an attacker who knows the cohort's
    ranges, which favours the attacker; fitted on one site's rows the trigger's columns are
    less neutral — a clean WDBC model then already scores 0.15–0.17 success);
    ``lying_evaluation``: reports ``metric`` = 0.99996 [the pooled data's primary metric:
    ``c_index`` for survival, ``roc_auc`` for a label] on 10¹⁵ evaluation records
    (declared).
    """
    if name == "scaling":
        return Attack(name=name, tamper=Scaling(float(boost or len(fed.sites))))
    if name == "sign_flip":
        return Attack(name=name, tamper=SignFlip(sign_k))
    if name == "gaussian_noise":
        return Attack(name=name, tamper=GaussianNoise(sigma, seed=seed))
    if name == "weight_inflation":
        return Attack(
            name=name,
            tamper=WeightInflation(INFLATED_EXAMPLES, shift=50.0),
            declared=INFLATED_EXAMPLES,
        )
    if name == "free_riding":
        return Attack(name=name, tamper=FreeRiding())
    if name == "label_flip":
        return Attack(
            name=name, poison=lambda site, rng: label_flip(site, fraction=fraction, rng=rng)
        )
    if name == "backdoor":
        trigger = make_trigger(fed.pooled("train"))
        return Attack(
            name=name,
            poison=lambda site, rng: backdoor(site, trigger, copies=copies, rng=rng),
            trigger=trigger,
        )
    if name == "lying_evaluation":
        if metric is None:
            metric = "roc_auc" if "label" in fed.pooled("train").targets else "c_index"
        return Attack(
            name=name,
            tamper=LyingEvaluation({metric: 0.99996}, num_examples=INFLATED_EXAMPLES),
            declared=INFLATED_EXAMPLES,
        )
    raise ConfigurationError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")


def choose_malicious(sites: Sequence[str], count: int, *, seed: int) -> tuple[str, ...]:
    """``count`` of ``sites`` chosen at random from ``seed`` (deterministic), in site order."""
    names = list(sites)
    if not 0 <= count <= len(names):
        raise ConfigurationError(f"cannot choose {count} malicious sites of {len(names)}")
    picked = set(np.random.default_rng([seed, 0xBAD]).choice(len(names), count, replace=False))
    return tuple(s for i, s in enumerate(names) if i in picked)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackOutcome:
    """What one attacked run did.

    Attributes
    ----------
    metric:
        The task's primary metric.
    clean_metric:
        The final model's ``metric`` on the pooled clean test split.
    mean_site_metric:
        The mean of the final model's per-site clean test ``metric``.
    attack_success_rate:
        With a backdoor: :func:`~biofed.attacks.attack_success_rate` on the clean pooled
        test split; else None.
    reported_metric:
        The federation's own last evaluation figure for ``metric`` (the example-weighted
        mean of the sites' claims, as a run summary shows it; NaN if none).
    decisions:
        Site → ``update_*`` event kind → how many times (over the run).
    malicious:
        The attacked sites and their attack's name.
    history:
        The run's rounds.
    events:
        The run's events.
    parameters:
        The final model.
    """

    metric: str
    clean_metric: float
    mean_site_metric: float
    attack_success_rate: float | None
    reported_metric: float
    decisions: Mapping[str, Mapping[str, int]]
    malicious: Mapping[str, str]
    history: tuple[RoundRecord, ...] = ()
    events: tuple[RunEvent, ...] = ()
    parameters: ParameterSet | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no model, no events)."""

        def num(v: float | None) -> float | None:
            return None if v is None or math.isnan(v) else float(v)

        return {
            "metric": self.metric,
            "clean_metric": num(self.clean_metric),
            "mean_site_metric": num(self.mean_site_metric),
            "attack_success_rate": num(self.attack_success_rate),
            "reported_metric": num(self.reported_metric),
            "decisions": {s: dict(d) for s, d in self.decisions.items()},
            "malicious": dict(self.malicious),
            "rounds": [
                {
                    "round": r.round,
                    "failed": r.failed,
                    "eval": {k: num(v) for k, v in r.eval_metrics.items()},
                }
                for r in self.history
            ],
        }


class _Events:
    """Engine listener keeping the run's events (the decisions among them)."""

    def __init__(self) -> None:
        self.events: list[RunEvent] = []

    def on_round_start(self, server_round: int, num_selected: int) -> None:
        pass

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        pass

    def on_round_end(self, record: RoundRecord) -> None:
        pass

    def on_event(self, event: RunEvent) -> None:
        self.events.append(event)


def with_seed(job: JobSpec, seed: int) -> JobSpec:
    """``job`` with ``[run] seed = seed`` (re-validated)."""
    tables = job.to_mapping()
    tables["run"] = {**tables["run"], "seed": seed}
    return JobSpec.from_mapping(tables)


def run_attack(
    fed: FederatedDataset,
    job: JobSpec,
    *,
    attacks: Mapping[str, Attack],
    trusted: TrustedValidation | None = None,
    seed: int | None = None,
) -> AttackOutcome:
    """Run ``job`` over ``fed`` with the sites in ``attacks`` malicious, and measure.

    ``seed`` (default: the job's) becomes the job's seed and seeds the data poisoning, so one
    seed fixes the whole run. ``attacks`` empty is the no-attack baseline. ``trusted`` is the
    coordinator's trusted data for a job whose ``[robust]`` section uses it.
    """
    unknown = sorted(set(attacks) - set(fed.sites))
    if unknown:
        raise ConfigurationError(f"no such site to attack from: {', '.join(unknown)}")
    if seed is not None:
        job = with_seed(job, seed)
    rng_seed = job.seed
    sites = dict(fed.sites)
    for k, (site, attack) in enumerate(sorted(attacks.items())):
        if attack.poison is not None:
            sites[site] = attack.poison(sites[site], np.random.default_rng([rng_seed, k, 0x9015]))
    poisoned = FederatedDataset(name=fed.name, sites=sites)
    backend = TamperingBackend(
        {s: a.tamper for s, a in attacks.items() if a.tamper is not None},
        declared={s: a.declared for s, a in attacks.items() if a.declared is not None},
    )
    events = _Events()
    report = simulate(
        poisoned, job=job, backend=backend, trusted=trusted, baselines=False, listener=events
    )
    assert report.parameters is not None
    task = make_task(job.task, **job.task_options)
    clean = evaluate_everywhere(task, report.parameters, fed, method="attacked")
    asr: float | None = None
    backdoors = [a for a in attacks.values() if a.trigger is not None]
    if backdoors:
        first = backdoors[0]
        assert first.trigger is not None
        asr = attack_success_rate(
            task, report.parameters, fed.pooled("test"), first.trigger, first.target
        )
    decisions: dict[str, dict[str, int]] = {}
    for event in events.events:
        if event.kind in DECISION_EVENTS:
            per = decisions.setdefault(event.node_id or "-", {})
            per[event.kind] = per.get(event.kind, 0) + 1
    reported = math.nan
    for record in reversed(report.history):
        if task.primary_metric in record.eval_metrics:
            reported = float(record.eval_metrics[task.primary_metric])
            break
    return AttackOutcome(
        metric=task.primary_metric,
        clean_metric=clean.pooled_metric,
        mean_site_metric=clean.mean_site_metric,
        attack_success_rate=asr,
        reported_metric=reported,
        decisions=MappingProxyType({s: MappingProxyType(d) for s, d in decisions.items()}),
        malicious=MappingProxyType({s: a.name for s, a in attacks.items()}),
        history=report.history,
        events=tuple(events.events),
        parameters=report.parameters,
    )
