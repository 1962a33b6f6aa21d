"""Update validation on trusted data: measure what each site's update does to the aggregate
before it joins it.

Security notes
--------------
The threat is a malicious minority of sites sending poisoned updates (sign-flipped or
boosted updates, a model replacement — DESIGN.md's threat model, issue 15): FedAvg folds
whatever arrives. The defence is validation on data the coordinator trusts, the "trusted
validation datasets and procedures" the issue asks for, as in Zeno (Xie, Koyejo and Gupta,
ICML 2019: score each update by the loss it causes on server-held data) and FLTrust's root
dataset (Cao et al., NDSS 2021). The score is never a site's claim: it is the task's
primary metric on the coordinator's own data (:class:`~biofed.strategies.TrustedValidation`).

What is scored is each update's *influence* on the aggregate, RONI-style ("Reject On
Negative Influence", Nelson et al. 2008; Barreno et al., Machine Learning 2010): with ``m``
the mean of the candidate models weighted as the aggregate weighs them
(:class:`~biofed.strategies.Robust` passes each update's capped example count) and ``m₋ᵢ``
the mean without candidate ``i``,
the update costs ``d_i = s(m₋ᵢ) − s(m)`` on the trusted data; the worst one is refused when
``d_i > max_drop``, and the influences are measured again without it, until none exceeds
``max_drop`` (greedy, so that one liar cannot hide another, and so that an honest site is
not blamed for the liar's damage). The mean of no update is ``x`` itself, so a lone update
is judged against the current model. Colluders can hide each other from leave-one-out (two
identical boosted updates each steer the mean without the other): when no single influence
exceeds ``max_drop`` yet the mean of the survivors lowers the score of ``x`` by more than
``max_drop``, the survivor whose own model scores worst is refused and the pass starts
again (``UpdateValidation._collusion``).
Cost: ``(r + 1)(n + 1)`` trusted scores for ``n`` updates of which ``r`` are refused, each
a pass of the task's metric over the trusted set — meant for consortia of tens of sites.

Why not score each candidate model on its own (``s(xᵢ)`` against ``max(s(x), median)``)?
Measured on Fed-TCGA-BRCA (6 sites, Cox, Adam 100 steps, a trusted set of half the pooled
test split, 6 seeds × 5 rounds): honest local models fall up to 0.38 C-index below that
reference (small sites with 2-16 events overfit to their own data), while the influence of
an honest update never exceeded 0.021 (weighted mean; 0.039 with equal weights). The
default ``max_drop`` = 0.05 therefore passes every honest site (0 of 180 updates rejected;
0 of 150 in 5 simulated runs), and rejects the largest site's update flipped and boosted ×4
in every round (25 of 25), keeping the run's C-index at 0.794 where it fell to 0.250
(``tests/strategies/test_validation_tcga.py``).

Limits: an update whose influence stays within ``max_drop`` passes, however it was made:
a plain sign flip (×1) by the largest of six sites is caught in only 9 of 25 rounds (the
run ends at C-index 0.708, against 0.619 undefended and 0.814 honest): pair validation with
a robust aggregator; a boosted update in the honest direction (model replacement) can even
raise a ranking metric such as the C-index — bound norms for that (``norm_bound``); a
backdoor that leaves the clean metric alone is invisible here. The collusion check has its
own limit: it blames the update that scores worst *on its own*, so a liar that keeps its
own influence just within ``max_drop`` while pushing the round's mean past it can get the
worst-scoring site (possibly a small honest one, whose local model alone may score far
below the reference) refused for that round instead; without the check that round's model
would have lost more than ``max_drop``. The trusted data must be
small, clean and representative; it is the operator's to curate. In secure mode only the
aggregate exists: :meth:`UpdateValidation.judge_aggregate` keeps or discards it whole.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from biofed.core import BiofedError, ConfigurationError, ParameterSet
from biofed.core.checks import check_choice, check_float
from biofed.strategies._base import UpdateDecision
from biofed.strategies._trusted import TrustedValidation

#: What happens to an update whose influence exceeds ``max_drop``.
VALIDATION_ACTIONS: tuple[Literal["reject", "downweight"], ...] = ("reject", "downweight")
#: The ``node_id`` of the decision about a secure round's aggregate.
SECURE_AGGREGATE = "secure-aggregate"


def _score(trusted: TrustedValidation, parameters: ParameterSet) -> float:
    """The trusted score of ``parameters``; NaN when it cannot be computed."""
    try:
        value = float(trusted.score(parameters))
    except (BiofedError, ValueError, ArithmeticError, TypeError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _mean(
    x: ParameterSet, models: Sequence[ParameterSet], weights: Sequence[float]
) -> ParameterSet:
    """The weighted mean of ``models`` in float64, cast to ``x``'s dtypes (``x`` if none)."""
    total = float(sum(weights))
    if not models or total <= 0:
        return x
    out = {}
    for name, ref in x.items():
        acc = np.zeros(ref.shape, dtype=np.float64)
        for model, w in zip(models, weights, strict=True):
            acc += (w / total) * model[name].astype(np.float64)
        out[name] = acc.astype(ref.dtype)
    return ParameterSet(out)


def _cost(without: float, with_: float) -> float:
    """How much including an update lowers the trusted score (+inf when it makes a finite
    score non-finite)."""
    if math.isnan(with_):
        return 0.0 if math.isnan(without) else math.inf
    if math.isnan(without):
        return -math.inf
    return without - with_


class UpdateValidation:
    """Measures each update's influence on the aggregate's trusted score and refuses, or
    down-weights, those that lower it by more than ``max_drop`` (see the module notes).

    Parameters
    ----------
    trusted:
        The coordinator's trusted data (:class:`~biofed.strategies.TrustedValidation`).
    max_drop:
        The largest drop of the trusted score (in the metric's units, ≥ 0) that including
        one update may cause. Default 0.05, measured on Fed-TCGA-BRCA.
    action:
        ``"reject"``: an update costing more than ``max_drop`` gets weight 0.
        ``"downweight"``: its weight falls linearly from 1 at a cost of ``max_drop`` to 0
        at twice that (0 is a rejection); needs ``max_drop`` > 0.
    """

    def __init__(
        self,
        trusted: TrustedValidation,
        *,
        max_drop: float = 0.05,
        action: Literal["reject", "downweight"] = "reject",
    ) -> None:
        if not isinstance(trusted, TrustedValidation):
            raise ConfigurationError(
                "trusted must provide metric, score(parameters) and train(parameters, round)"
            )
        self.trusted = trusted
        self.max_drop = check_float(max_drop, "max_drop", minimum=0.0)
        self.action: Literal["reject", "downweight"] = check_choice(
            action, "action", VALIDATION_ACTIONS
        )
        if self.action == "downweight" and self.max_drop == 0:
            raise ConfigurationError('max_drop must be > 0 with action "downweight"')

    def __repr__(self) -> str:
        return (
            f"UpdateValidation(metric={self.metric!r}, max_drop={self.max_drop}, "
            f"action={self.action!r})"
        )

    @property
    def metric(self) -> str:
        """The trusted score's name."""
        return str(self.trusted.metric)

    def describe(self) -> dict[str, str | float]:
        """The settings, for a strategy's ``describe()``."""
        return {
            "validation.metric": self.metric,
            "validation.max_drop": self.max_drop,
            "validation.action": self.action,
        }

    # -- deciding --------------------------------------------------------------------------
    def _factor(self, cost: float) -> float:
        if cost <= self.max_drop:
            return 1.0
        if self.action == "reject" or not math.isfinite(cost):
            return 0.0
        return max(0.0, 1.0 - (cost - self.max_drop) / self.max_drop)

    def _decision(
        self, node_id: str, factor: float, cost: float, without: float, with_: float
    ) -> UpdateDecision:
        metric = self.metric
        shown = "not finite" if math.isnan(with_) else f"{with_:.4f}"
        with_what, without_what = "with this update", "without"
        if node_id == SECURE_AGGREGATE:
            with_what, without_what = "for the aggregate", "for the current model"
        figures = (
            f"{metric} on the trusted data {shown} {with_what}, {without:.4f} {without_what} "
            f"(max_drop {self.max_drop:g})"
        )
        action: Literal["accepted", "rejected", "downweighted"]
        if factor >= 1.0:
            action, reason = "accepted", f"{figures}: within the allowed drop"
        elif factor > 0.0:
            action = "downweighted"
            reason = f"{figures}: it costs {cost:.4f}, weight ×{factor:.3f}"
        else:
            action, reason = "rejected", f"{figures}: it costs {cost:.4f}"
        influence = None if not math.isfinite(cost) else -cost
        return UpdateDecision(
            node_id=node_id, action=action, weight=factor, reason=reason, score=influence
        )

    def judge(
        self,
        x: ParameterSet,
        candidates: Sequence[tuple[str, ParameterSet]],
        weights: Sequence[float] | None = None,
    ) -> list[tuple[float, UpdateDecision]]:
        """Each candidate's weight factor in [0, 1] and the decision about it.

        Parameters
        ----------
        x:
            The global model the round started from (the mean of no update).
        candidates:
            ``(node_id, xᵢ)``: each site's model (``x`` plus its update).
        weights:
            Each candidate's weight in the mean (its capped example count); default equal.

        Returns
        -------
        list
            One ``(factor, decision)`` per candidate, in the candidates' order. The
            decision's ``weight`` is the factor (the caller scales the update's own weight
            by it) and its ``score`` the update's influence ``s(m) − s(m₋ᵢ)`` on the
            trusted score when it was last measured (negative: it lowers the score).
        """
        n = len(candidates)
        w = [1.0] * n if weights is None else [float(v) for v in weights]
        if len(w) != n or any(not math.isfinite(v) or v < 0 for v in w):
            raise ConfigurationError("weights must be one finite number >= 0 per candidate")
        models = [params for _, params in candidates]
        factors: list[float | None] = [None] * n
        last: list[tuple[float, float, float]] = [(0.0, math.nan, math.nan)] * n
        colluding: dict[int, str] = {}
        for i, params in enumerate(models):
            if not params.all_finite():
                factors[i] = 0.0
                last[i] = (math.inf, math.nan, math.nan)
        base: float | None = None
        while True:
            active = [i for i in range(n) if factors[i] is None]
            if not active:
                break
            with_all = _score(
                self.trusted, _mean(x, [models[i] for i in active], [w[i] for i in active])
            )
            costs: dict[int, tuple[float, float]] = {}
            for i in active:
                rest = [j for j in active if j != i]
                without = _score(
                    self.trusted, _mean(x, [models[j] for j in rest], [w[j] for j in rest])
                )
                costs[i] = (_cost(without, with_all), without)
                last[i] = (costs[i][0], without, with_all)
            worst = max(active, key=lambda i: costs[i][0])
            if costs[worst][0] > self.max_drop:
                factors[worst] = self._factor(costs[worst][0])
                continue
            if len(active) > 1:
                base = _score(self.trusted, x) if base is None else base
                blamed = self._collusion(models, active, base, with_all)
                if blamed is not None:
                    i, cost, solo = blamed
                    factors[i] = self._factor(cost)
                    last[i] = (cost, base, solo)
                    colluding[i] = (
                        f"no single update lowered it by more than max_drop, but together "
                        f"the {len(active)} updates took it from {base:.4f} to "
                        f"{'not finite' if math.isnan(with_all) else f'{with_all:.4f}'}; "
                        "this one scores worst on its own: "
                    )
                    continue
            for i in active:
                factors[i] = 1.0
            break
        out: list[tuple[float, UpdateDecision]] = []
        for i, (node, params) in enumerate(candidates):
            found = factors[i]
            factor = 1.0 if found is None else found
            cost, without, with_ = last[i]
            if not params.all_finite():
                decision = UpdateDecision(
                    node_id=node, action="rejected", weight=0.0, reason="parameters are not finite"
                )
            else:
                decision = self._decision(node, factor, cost, without, with_)
                if i in colluding:
                    decision = dataclasses.replace(decision, reason=colluding[i] + decision.reason)
            out.append((factor, decision))
        return out

    def _collusion(
        self, models: Sequence[ParameterSet], active: Sequence[int], base: float, with_all: float
    ) -> tuple[int, float, float] | None:
        """Colluders hiding each other: when no update's leave-one-out influence exceeds
        ``max_drop`` but the mean of them all lowers the trusted score of ``x`` by more
        than that, the update whose own model ``x + Δᵢ`` scores worst (by more than
        ``max_drop`` below ``x``) is blamed. Returns it, its cost and its own score, or
        None when the mean is within ``max_drop`` of ``x`` or no model is that bad alone.

        Why: a ranking score (C-index, AUC) sees only the direction of the mean. Two sites
        sending the same boosted, sign-flipped update each steer the mean without the
        other, so each one's leave-one-out influence is ≈ 0 and the greedy pass alone
        accepted both (tests/strategies/test_robust_redteam.py). An honest round whose
        mean is within ``max_drop`` of ``x`` is never touched here (one more score)."""
        if _cost(base, with_all) <= self.max_drop:
            return None
        solo = {i: _score(self.trusted, models[i]) for i in active}
        worst = min(active, key=lambda i: -math.inf if math.isnan(solo[i]) else solo[i])
        cost = _cost(base, solo[worst])
        if cost <= self.max_drop:
            return None
        return worst, cost, solo[worst]

    def judge_aggregate(
        self, x: ParameterSet, aggregate: ParameterSet
    ) -> tuple[bool, UpdateDecision]:
        """Secure mode: whether to keep the round's aggregate model (only the aggregate of
        the sites' updates exists, so it is kept or discarded whole).

        The aggregate is kept when its trusted score is at least ``s(x) − max_drop``,
        whatever the ``action`` (there is nothing to down-weight it against), and discarded
        when it is lower or not finite. The decision's ``node_id`` is
        ``"secure-aggregate"``.
        """
        without = _score(self.trusted, x)
        with_ = _score(self.trusted, aggregate)
        cost = _cost(without, with_)
        keep = not math.isnan(with_) and cost <= self.max_drop
        decision = self._decision(SECURE_AGGREGATE, 1.0 if keep else 0.0, cost, without, with_)
        return keep, decision
