"""biofed.contribution: how much each site's update contributed to a round (pure; numpy only).

The input is one round as the coordinator sees it in plain mode: the global model ``x``,
the round's updates ``{site: (Δᵢ = xᵢ − x, weight)}`` and a value function
``value(parameters) -> float`` (higher is better, finite; e.g. a
:class:`~biofed.strategies.TrustedValidation`'s ``score``, the C-index on the trusted data).
For the built-in linear tasks a
:class:`LinearScore` is that value function, fast and exact (the coordinator's trusted data
offers one as ``TrustedData.linear_score``; ``Measured`` uses it). A :class:`RoundGame`
rebuilds the model of any coalition ``S`` of sites without training anyone again,
``model_S = x + Σ_{i∈S} wᵢΔᵢ / Σ_{i∈S} wᵢ`` (the empty coalition is ``x``),
and its value ``v(S) = value(model_S) − value(x)``, memoised and bounded by
``max_evaluations`` calls of ``value``. Sites whose updates are near-duplicates (cosine ≥
``duplicate_cosine``, default 0.9) are played as one player and share its value by weight,
so enrolling a copy of one's data does not buy more credit (Shapley values alone are not
robust to replication), and a site whose update is (nearly) zero, a free-rider, is a null
player with value 0 rather than a damper of the others' step (see :class:`RoundGame`).

Measures (each returns :class:`Contributions`: per-site values, ``v(N)``, the evaluations
spent and the wall time):

=================  ===========================================  ===========================
method             what                                         evaluations
=================  ===========================================  ===========================
``leave_one_out``  ``v(N) − v(N∖{i})``                          n + 2
``shapley``        exact Shapley values, n ≤ 10                 2^n
``tmc_shapley``    truncated Monte-Carlo (Ghorbani & Zou 2019)  bounded; stops on convergence
``gtg_shapley``    guided truncation (Liu et al. 2022)          bounded; 2 for a skipped round
=================  ===========================================  ===========================

With at most 10 sites exact Shapley is the one to use (64 evaluations for 6 sites, 30 ms
on Fed-TCGA-BRCA); the samplers are for larger rounds (``benchmarks/contribution.py``
prints what each costs per round beside the round's own training, with its accuracy). The
samplers take an injected ``numpy.random.Generator`` (the same seed gives the same
values). :class:`ContributionLedger` accumulates the rounds of a run (per round and run
totals, :meth:`~ContributionLedger.to_json` / :meth:`~ContributionLedger.from_json`).

The study agreement's incentive policy (:class:`~biofed.governance.IncentivePolicy`, its
signed ``[incentives]`` table) turns the ledger into each site's reward share, access to the
final model and free-rider flag: :func:`incentive_outcome` (an :class:`IncentiveOutcome`,
JSON round trip); each site recomputes its own figures from the published ledger and outcome
with :func:`verify_outcome`, and, where the run published a round's coalition values
(:func:`coalition_table`), the exact Shapley values themselves with
:func:`shapley_from_table`.

Errors: an update whose names or shapes differ from ``x``'s raises
:class:`~biofed.core.ParameterMismatch` (NaN or ±Inf in it:
:class:`~biofed.core.PayloadError`); a bad weight or option, or a bound that cannot be met,
:class:`~biofed.core.ConfigurationError`; a value function that fails or returns anything
but a finite number, or updates beyond ``max_updates_bytes``,
:class:`~biofed.core.RoundFailed`.

Own code, not a library's: ``shap`` values the features of one model and Data Shapley's
reference code the training points of one learner by retraining; neither plays coalitions
of federated updates rebuilt without training, memoised and bounded in value calls.

Security notes
--------------
A coalition model built from one site's update *is* that update: whoever runs these measures
sees every single update, which the coordinator already does in plain mode. Under secure
aggregation two coalition sums that differ by one site reveal that site's update by
subtraction, so these functions are for plain rounds (or for coalitions the study agreement
explicitly allows). A value function computed on a site's own test data would make that
site the judge of its own contribution: use data the coordinator trusts.
"""

from biofed.contribution._coalitions import (
    COALITIONS_FORMAT,
    coalition_table,
    shapley_from_table,
)
from biofed.contribution._exact import MAX_EXACT_SITES, leave_one_out, shapley
from biofed.contribution._game import (
    DEFAULT_DUPLICATE_COSINE,
    DEFAULT_FREE_RIDER_NORM,
    DEFAULT_MAX_EVALUATIONS,
    RoundGame,
    Updates,
    ValueFunction,
)
from biofed.contribution._incentives import (
    OUTCOME_FORMAT,
    IncentiveOutcome,
    SiteOutcome,
    incentive_outcome,
    ledger_digest,
    verify_outcome,
)
from biofed.contribution._linear import LINEAR_METRICS, LinearScore
from biofed.contribution._measure import measure
from biofed.contribution._measured import (
    AUTO,
    CONTRIBUTION_EVENT,
    CONTRIBUTION_FAILED_EVENT,
    CONTRIBUTIONS_EVENT,
    Measured,
    ledger_from_events,
    ledger_from_run_record,
    run_record,
)
from biofed.contribution._result import METHODS, ContributionLedger, Contributions
from biofed.contribution._sampling import gtg_shapley, tmc_shapley

__all__ = [
    "AUTO",
    "COALITIONS_FORMAT",
    "CONTRIBUTIONS_EVENT",
    "CONTRIBUTION_EVENT",
    "CONTRIBUTION_FAILED_EVENT",
    "DEFAULT_DUPLICATE_COSINE",
    "DEFAULT_FREE_RIDER_NORM",
    "DEFAULT_MAX_EVALUATIONS",
    "LINEAR_METRICS",
    "MAX_EXACT_SITES",
    "METHODS",
    "OUTCOME_FORMAT",
    "ContributionLedger",
    "Contributions",
    "IncentiveOutcome",
    "LinearScore",
    "Measured",
    "RoundGame",
    "SiteOutcome",
    "Updates",
    "ValueFunction",
    "coalition_table",
    "gtg_shapley",
    "incentive_outcome",
    "leave_one_out",
    "ledger_digest",
    "ledger_from_events",
    "ledger_from_run_record",
    "measure",
    "run_record",
    "shapley",
    "shapley_from_table",
    "tmc_shapley",
    "verify_outcome",
]
