"""``Measured``: a strategy wrapper that measures each round's contributions as it aggregates.

It sits above the strategies and below the coordinator: ``Measured(inner, value)`` forwards
everything to ``inner`` (FedAvg, FedProx, FedOpt, ``Robust`` or ``DPFedAvg`` …) and, while
the inner fold aggregates a round, keeps each reply's update ``Δᵢ = xᵢ − x`` and weight.
When the round finishes it plays the round's :class:`~biofed.contribution.RoundGame` from
the pre-round model and hands the result to the round engine as the run event
``contribution`` (:data:`CONTRIBUTION_EVENT`: the round's
:class:`~biofed.contribution.Contributions` as JSON, with the value of every coalition it
evaluated, so a site can recompute its own figure) and two training metrics,
``contribution.v_all`` and ``contribution.evaluations``. The coordinator's executor (and a
simulation) builds the run's :class:`~biofed.contribution.ContributionLedger` from those
events (:func:`ledger_from_events`).

A measurement that fails (the value function fails, the evaluation budget cannot cover the
method) does not fail the round: the model the inner strategy aggregated is kept and the
event ``contribution_failed`` says why.

Security notes
--------------
*Secure aggregation.* Coalition models are built from single updates, which secure
aggregation exists to hide; and two coalition sums that differ by one site reveal that
site's update by subtraction. ``Measured`` therefore refuses to run under secure
aggregation (:attr:`Measured.supports_secure_aggregation` is False), see
``docs/contribution.md``.

*Rejected updates.* An update the inner strategy rejected (a ``rejected``
:class:`~biofed.strategies.UpdateDecision`, e.g. update validation on trusted data) is not
played: it did not enter the model, so it contributed nothing (value 0, listed as
``excluded``). The coalition models are weighted means of the accepted updates (the
round's game), whatever robust rule the inner strategy uses for the real aggregate.

*Differential privacy.* With a ``DPFedAvg`` inner strategy the measured values are computed
from the sites' unclipped, un-noised updates and are **not** covered by the DP guarantee.

*Memory.* The round's updates are held until the round finishes (n·d·8 bytes, float64); a
round planned above ``max_updates_bytes`` is refused before any site trains, like
``Robust``'s buffering rules.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from biofed.contribution._exact import MAX_EXACT_SITES, leave_one_out, shapley
from biofed.contribution._game import (
    DEFAULT_DUPLICATE_COSINE,
    DEFAULT_FREE_RIDER_NORM,
    DEFAULT_MAX_EVALUATIONS,
    DEFAULT_MAX_UPDATES_BYTES,
    RoundGame,
    ValueFunction,
)
from biofed.contribution._linear import LinearScore
from biofed.contribution._result import METHODS, ContributionLedger, Contributions, strict_json
from biofed.contribution._sampling import gtg_shapley, tmc_shapley
from biofed.core import (
    Array,
    BiofedError,
    ConfigurationError,
    NodeInfo,
    ParameterMismatch,
    ParameterSet,
    Reply,
    RoundFailed,
    Scalar,
)
from biofed.strategies import (
    AggregateResult,
    NodePlan,
    Strategy,
    StrategyState,
    StrategyWrapper,
    TrainAggregator,
    TrustedValidation,
    planned_count,
)

#: The run event with one round's contributions (message: :func:`round_record` JSON).
CONTRIBUTION_EVENT = "contribution"
#: The run event saying why a round's contributions could not be measured.
CONTRIBUTION_FAILED_EVENT = "contribution_failed"
#: The run event with the run's ledger at its end (message: :func:`run_record` JSON).
CONTRIBUTIONS_EVENT = "contributions"
#: ``method`` value choosing exact Shapley for ≤ 10 players, else GTG-Shapley.
AUTO = "auto"
#: Coalition values are exported for rounds of at most this many players (2^n entries).
MAX_EXPORTED_PLAYERS = MAX_EXACT_SITES

_SECURE_REFUSAL = (
    "contribution measurement needs each site's update on its own and cannot run under "
    "secure aggregation: coalition models are built from single updates, and two coalition "
    "sums that differ by one site reveal that site's update by subtraction (drop "
    "[contribution] or [secure_aggregation]; see docs/contribution.md)"
)


class Measured(StrategyWrapper):
    """Measure every round's contributions while ``inner`` aggregates it.

    Parameters
    ----------
    inner:
        The strategy that really aggregates (anything that runs in the clear, wrappers
        included). Node selection, configs, state, evaluation and the model are its own.
    value:
        ``value(parameters) -> float`` (higher is better), or a
        :class:`~biofed.strategies.TrustedValidation` (its ``score``: the coordinator's
        trusted data's primary metric).
    method:
        ``"auto"`` (exact Shapley when a round has at most 10 players and ``2^n`` fits
        ``max_evaluations``, else GTG-Shapley) or one of
        :data:`~biofed.contribution.METHODS`.
    seed:
        Seeds the samplers (``numpy.random.default_rng([seed, round])``), so a run's
        figures can be recomputed.
    max_evaluations:
        The most calls of ``value`` one round's measurement may make.
    max_updates_bytes:
        The most memory the round's updates may take (n·d·8 bytes).
    duplicate_cosine, free_rider_norm:
        Passed to :class:`~biofed.contribution.RoundGame`.

    Raises
    ------
    ConfigurationError
        An unknown method, a bad bound, a value that is neither callable nor trusted data.
    """

    name = "measured"
    #: See the module's Security notes: single updates are what a coalition model needs.
    supports_secure_aggregation = False

    def __init__(
        self,
        inner: Strategy,
        value: ValueFunction | TrustedValidation,
        *,
        method: str = AUTO,
        seed: int = 0,
        max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
        max_updates_bytes: int = DEFAULT_MAX_UPDATES_BYTES,
        duplicate_cosine: float | None = DEFAULT_DUPLICATE_COSINE,
        free_rider_norm: float | None = DEFAULT_FREE_RIDER_NORM,
    ) -> None:
        if not isinstance(inner, Strategy):
            raise ConfigurationError(f"Measured wraps a Strategy, got {type(inner).__name__}")
        if isinstance(inner, Measured):
            raise ConfigurationError("Measured cannot wrap Measured: measure a round once")
        if isinstance(value, TrustedValidation):
            self.metric: str = str(value.metric)
            # Trusted data of a built-in linear task offers the same score, fast (its
            # ``linear_score``, a LinearScore: see biofed.contribution._linear).
            fast = getattr(value, "linear_score", None)
            score: ValueFunction = fast if isinstance(fast, LinearScore) else value.score
        elif callable(value):
            self.metric = getattr(value, "__name__", "value")
            score = value
        else:
            raise ConfigurationError(
                "value must be a callable (parameters) -> float or trusted data with score(), "
                f"got {type(value).__name__}"
            )
        if method != AUTO and method not in METHODS:
            raise ConfigurationError(
                f"contribution: unknown method {method!r}; choose one of {[AUTO, *METHODS]}"
            )
        for what, number, minimum in (
            ("seed", seed, 0),
            ("max_evaluations", max_evaluations, 2),
            ("max_updates_bytes", max_updates_bytes, 1),
        ):
            if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
                raise ConfigurationError(
                    f"contribution: {what} must be an integer ≥ {minimum}, got {number!r}"
                )
        super().__init__(inner)
        self.value = score
        self.method = method
        self.seed = seed
        self.max_evaluations = max_evaluations
        self.max_updates_bytes = max_updates_bytes
        self.duplicate_cosine = duplicate_cosine
        self.free_rider_norm = free_rider_norm
        #: The inner strategy's weighting (secure aggregation is refused anyway).
        self.weighted = inner.weighted

    # -- forwarded ---------------------------------------------------------------------------
    def init_state(self, parameters: ParameterSet) -> StrategyState:
        return self.inner.init_state(parameters)

    def round_train_config(self, server_round: int) -> dict[str, Scalar]:
        return self.inner.round_train_config(server_round)

    def configure_train(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        nodes: Sequence[NodeInfo],
        rng: np.random.Generator,
    ) -> list[NodePlan]:
        return self.inner.configure_train(server_round, parameters, state, nodes, rng)

    def aggregate_secure(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        mean_update: Mapping[str, Array],
        *,
        total_weight: int,
        num_replies: int,
        num_nodes: int,
    ) -> AggregateResult:
        """Refused: see the module's Security notes."""
        raise ConfigurationError(_SECURE_REFUSAL)

    def describe(self) -> dict[str, Scalar]:
        out = self.inner.describe()
        out.update(
            {
                "contribution.method": self.method,
                "contribution.metric": self.metric,
                "contribution.max_evaluations": self.max_evaluations,
            }
        )
        return out

    # -- training ----------------------------------------------------------------------------
    def begin_train_aggregation(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        num_nodes: int,
    ) -> TrainAggregator:
        """The inner fold, wrapped; refuses (RoundFailed), before any site trains, a round
        whose planned updates would exceed ``max_updates_bytes``."""
        planned = planned_count(self.inner, num_nodes)
        need = planned * parameters.size * 8
        if need > self.max_updates_bytes:
            raise RoundFailed(
                f"contribution measurement keeps every update of the round: {planned} updates "
                f"× {parameters.size} parameters × 8 bytes = {need / 2**20:.1f} MiB exceeds "
                f"max_updates_bytes ({self.max_updates_bytes / 2**20:.1f} MiB)"
            )
        inner = self.inner.begin_train_aggregation(server_round, parameters, state, num_nodes)
        return _MeasuredFold(self, server_round, parameters, inner)

    def weight_of(self, reply: Reply) -> float:
        """A reply's weight in the coalition models: its example count capped at
        ``max_weight`` when the inner strategy weighs by examples, else 1."""
        if not self.weighted:
            return 1.0
        count = max(1, int(reply.num_examples))
        return float(count if self.max_weight is None else min(count, self.max_weight))

    def play(
        self,
        server_round: int,
        x: ParameterSet,
        updates: Mapping[str, tuple[ParameterSet, float]],
    ) -> tuple[Contributions, list[dict[str, Any]]]:
        """Measure one round: its contributions and the value of each coalition evaluated
        (for at most :data:`MAX_EXPORTED_PLAYERS` players; ``[]`` above)."""
        game = RoundGame(
            x,
            updates,
            self.value,
            duplicate_cosine=self.duplicate_cosine,
            free_rider_norm=self.free_rider_norm,
            max_evaluations=self.max_evaluations,
            max_updates_bytes=self.max_updates_bytes,
        )
        method = self.method
        if method == AUTO:
            small = game.n <= MAX_EXACT_SITES and 2**game.n <= self.max_evaluations
            method = "shapley" if small else "gtg_shapley"
        rng = np.random.default_rng([self.seed, server_round])
        if method == "shapley":
            result = shapley(game, server_round=server_round)
        elif method == "leave_one_out":
            result = leave_one_out(game, server_round=server_round)
        elif method == "tmc_shapley":
            result = tmc_shapley(game, rng=rng, server_round=server_round)
        else:
            result = gtg_shapley(game, rng=rng, server_round=server_round)
        return result, _coalitions(game)


def _coalitions(game: RoundGame) -> list[dict[str, Any]]:
    if game.n > MAX_EXPORTED_PLAYERS:
        return []
    out = []
    for mask in range(1 << game.n):
        if mask and game.has(mask):
            sites = sorted(s for k, g in enumerate(game.groups) if mask >> k & 1 for s in g)
            out.append({"sites": sites, "value": game.v(mask)})
    return out


class _MeasuredFold(TrainAggregator):
    """The inner fold, plus each reply's update kept for the round's game."""

    def __init__(
        self,
        owner: Measured,
        server_round: int,
        x: ParameterSet,
        inner: TrainAggregator,
    ) -> None:
        self._owner = owner
        self._round = server_round
        self._x = x
        self._inner = inner
        self._updates: dict[str, tuple[ParameterSet, float]] = {}

    def add(self, reply: Reply) -> None:
        self._inner.add(reply)  # the inner fold validates the reply first
        if reply.parameters is None:  # pragma: no cover - the inner fold refuses it
            raise ParameterMismatch(f"reply from {reply.node_id} carries no parameters")
        delta = ParameterSet(
            {k: np.subtract(reply.parameters[k], a, dtype=np.float64) for k, a in self._x.items()}
        )
        self._updates[reply.node_id] = (delta, self._owner.weight_of(reply))

    @property
    def count(self) -> int:
        return self._inner.count

    def finish(self) -> AggregateResult:
        result = self._inner.finish()
        updates, self._updates = self._updates, {}
        excluded = sorted({d.node_id for d in result.decisions if d.action == "rejected"})
        played = {s: u for s, u in updates.items() if s not in excluded}
        if not played:
            message = f"round {self._round}: no accepted update to measure"
            return dataclasses.replace(
                result, events={**result.events, CONTRIBUTION_FAILED_EVENT: message}
            )
        try:
            measured, coalitions = self._owner.play(self._round, self._x, played)
        except (BiofedError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
            # a measurement never fails the round: the inner strategy's model stands
            message = f"round {self._round}: {exc}"
            return dataclasses.replace(
                result, events={**result.events, CONTRIBUTION_FAILED_EVENT: message}
            )
        record = round_record(measured, coalitions, excluded)
        metrics = {
            **result.metrics,
            "contribution.v_all": measured.total,
            "contribution.evaluations": float(measured.evaluations),
        }
        return dataclasses.replace(
            result, metrics=metrics, events={**result.events, CONTRIBUTION_EVENT: record}
        )


def round_record(
    measured: Contributions, coalitions: Iterable[Mapping[str, Any]], excluded: Sequence[str]
) -> str:
    """The ``contribution`` event's JSON: ``contributions`` (the round's
    :meth:`~biofed.contribution.Contributions.to_dict`), ``coalitions`` (each evaluated
    coalition's sites and ``v(S)``, in the value function's units relative to ``baseline``)
    and ``excluded`` (sites whose update the inner strategy rejected)."""
    return json.dumps(
        {
            "contributions": measured.to_dict(),
            "coalitions": [dict(c) for c in coalitions],
            "excluded": list(excluded),
        },
        sort_keys=True,
    )


def ledger_from_events(
    events: Iterable[tuple[int, str, str]],
) -> tuple[ContributionLedger, dict[int, dict[str, Any]], dict[int, str]]:
    """The run's ledger from its ``(round, kind, message)`` events.

    Returns the ledger (the last ``contribution`` event of each round wins: a round re-run
    after a coordinator restart is measured again), each round's full record (coalitions
    and exclusions), and the reason of each round whose measurement failed and was not
    measured later.

    Raises
    ------
    ConfigurationError
        A ``contribution`` event that is not a round record.
    """
    records: dict[int, dict[str, Any]] = {}
    failed: dict[int, str] = {}
    for server_round, kind, message in events:
        if kind == CONTRIBUTION_EVENT:
            try:
                data = strict_json(message)
            except ValueError as exc:
                raise ConfigurationError(
                    f"contribution: round {server_round}'s record is not JSON: {exc}"
                ) from None
            if not isinstance(data, dict) or "contributions" not in data:
                raise ConfigurationError(
                    f"contribution: round {server_round}'s record has no 'contributions'"
                )
            records[server_round] = data
            failed.pop(server_round, None)
        elif kind == CONTRIBUTION_FAILED_EVENT:
            failed[server_round] = message
    ledger = ContributionLedger()
    for server_round in sorted(records):
        result = Contributions.from_dict(records[server_round]["contributions"])
        ledger = ledger.add(result, server_round=server_round)
    return ledger, records, failed


def run_record(
    ledger: ContributionLedger,
    records: Mapping[int, Mapping[str, Any]],
    failed: Mapping[int, str],
    *,
    outcome: Mapping[str, Any] | None = None,
) -> str:
    """The ``contributions`` event's JSON: ``ledger`` (its
    :meth:`~biofed.contribution.ContributionLedger.to_json` object), ``shares``, each
    round's ``excluded`` sites, the ``unmeasured`` rounds with why, and the incentive
    policy's ``outcome`` when one was applied.

    The coalition values stay in each round's ``contribution`` event (``records`` is read
    only for its exclusions): 2^10 coalitions a round over a long run would outgrow one
    event (the control API streams each event as one message of at most 16 MiB)."""
    return json.dumps(
        {
            "ledger": json.loads(ledger.to_json()),
            "shares": ledger.shares(),
            "excluded": {
                str(r): list(rec.get("excluded", [])) for r, rec in sorted(records.items())
            },
            "unmeasured": {str(r): why for r, why in sorted(failed.items())},
            "outcome": None if outcome is None else dict(outcome),
        },
        sort_keys=True,
    )


def ledger_from_run_record(text: str) -> ContributionLedger:
    """The ledger inside a ``contributions`` event (totals recomputed, never trusted).

    Raises
    ------
    ConfigurationError
        The text is not such a record.
    """
    try:
        data = strict_json(text)
    except ValueError as exc:
        raise ConfigurationError(f"contribution: the run's record is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("ledger"), dict):
        raise ConfigurationError("contribution: the run's record has no 'ledger'")
    return ContributionLedger.from_json(json.dumps(data["ledger"]))
