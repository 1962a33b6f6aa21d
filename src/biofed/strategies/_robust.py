"""Byzantine-robust aggregation as a wrapper around a FedAvg-family strategy.

``Robust(FedAvg(...), aggregator="median")`` replaces the mean of the sites' updates
``Δᵢ = xᵢ − x`` by a robust aggregate and hands it to the inner strategy's server step
(``x + Δ`` for FedAvg/FedProx, the optimiser step for FedAvgM and FedOpt), exactly as
DPFedAvg does with its noised mean (the step is shared: ``_server_step.py``). The maths is
in ``_robust_kernels.py``, the per-round fold and its decisions in ``_robust_fold.py``.

Threat: a malicious minority of sites sending crafted updates (scaling / model
replacement, sign flips, noise, backdoors) or inflated example counts to steer the global
model. Each rule's docstring entry below names its paper, the number of malicious sites it
tolerates, and whether it streams (O(d) memory) or buffers the n updates (n·d·8 bytes,
refused above ``max_updates_bytes``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from biofed.core import (
    Array,
    BiofedError,
    ConfigurationError,
    NodeInfo,
    ParameterSet,
    Reply,
    RoundFailed,
    Scalar,
)
from biofed.core.checks import check_choice, check_float, check_int
from biofed.core.sections import MAX_UPDATE_NORM
from biofed.strategies import _robust_kernels as rk
from biofed.strategies._base import (
    AggregateResult,
    NodePlan,
    Strategy,
    StrategyState,
    StrategyWrapper,
    TrainAggregator,
    UpdateDecision,
    planned_count,
)
from biofed.strategies._robust_fold import CC_REFERENCE_STATE, Layout, RobustFold
from biofed.strategies._server_step import apply_server_step, check_mean_family
from biofed.strategies._trusted import TrustedValidation

RobustAggregator = Literal[
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "geometric_median",
    "centered_clipping",
    "fltrust",
    "norm_bound",
]
#: The aggregation rules :class:`Robust` offers.
ROBUST_AGGREGATORS: tuple[RobustAggregator, ...] = (
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "geometric_median",
    "centered_clipping",
    "fltrust",
    "norm_bound",
)
#: Rules that fold each update as it arrives (O(d) memory); the others buffer n × d.
STREAMING_AGGREGATORS: frozenset[str] = frozenset(
    {"mean", "norm_bound", "fltrust", "centered_clipping"}
)
#: Rules that work on secure aggregation's released mean (the others need single updates).
SECURE_AGGREGATORS: frozenset[str] = frozenset({"mean", "norm_bound"})
#: Rules whose evaluation metrics are combined by a median of the sites' values.
_MEDIAN_METRICS = frozenset(
    {"median", "krum", "multi_krum", "geometric_median", "centered_clipping", "fltrust"}
)
#: Rules that can weigh the updates by (capped) example counts.
_WEIGHTED_RULES = frozenset({"mean", "norm_bound", "geometric_median", "centered_clipping"})
SECURE_NODE = "secure-aggregate"


@runtime_checkable
class UpdateJudge(Protocol):
    """What :class:`Robust` asks of update validation (``UpdateValidation`` fits)."""

    def judge(
        self,
        x: ParameterSet,
        candidates: Sequence[tuple[str, ParameterSet]],
        weights: Sequence[float] | None = None,
    ) -> Sequence[tuple[float, UpdateDecision]]:
        """A weight factor in [0, 1] and a decision for each candidate model ``x + Δᵢ``
        (``weights``: each candidate's weight in the rule, see Robust's Security notes)."""
        ...

    def judge_aggregate(
        self, x: ParameterSet, aggregate: ParameterSet
    ) -> tuple[bool, UpdateDecision]:
        """Whether to keep ``aggregate`` (the next model) instead of ``x``, and why."""
        ...


class Robust(StrategyWrapper):
    """Byzantine-robust aggregation of the sites' updates, wrapping a FedAvg-family strategy.

    Every rule works on the updates ``Δᵢ = xᵢ − x`` (as float64), optionally clipped to L2
    norm ``norm_bound`` first; its aggregate goes through the inner strategy's server step.
    Each update's fate is an :class:`~biofed.strategies.UpdateDecision` in the result
    (accepted, rejected, downweighted or clipped, with the rule's figures), which the
    round engine turns into a run event and the coordinator into an audit entry.

    Aggregators (``n`` updates in the round, ``f`` of them malicious):

    ``"mean"``
        The mean of the updates: example-weighted with each weight capped at
        ``max_weight`` when the inner strategy is weighted and sets ``max_weight``, else
        every site counts once (see Security notes, *Weights*). Not robust by itself
        (breakdown point 0); meant with ``norm_bound`` or ``validation``. Streams; works
        under secure aggregation.
    ``"norm_bound"``
        Norm bounding (Sun, Kairouz, Suresh, McMahan 2019, "Can You Really Backdoor
        Federated Learning?"): every update clipped to L2 norm M = ``norm_bound`` at the
        coordinator, and M sent as ``robust.max_update_norm`` so honest sites clip before
        the reply leaves; then the mean (weighted as ``"mean"``). Any one site moves the
        mean by at most ``M·wᵢ/Σw`` (``M/n`` with equal weights); it does not reject anyone
        (breakdown point 0, bounded influence). Streams; works under secure aggregation
        with the check that the released mean has norm ≤ M.
    ``"median"``
        Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-Robust
        Distributed Learning"). Each coordinate stays within the honest values' range while
        ``f < n/2``. Unweighted (a weight would be a lever for the liar). Buffers.
    ``"trimmed_mean"``
        Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, the ``k`` largest
        and ``k`` smallest values are dropped and the rest averaged: ``k = f`` if given,
        else ``k = ⌈trim·n⌉`` — rounded up, so any ``trim > 0`` drops at least one per side
        (``⌊0.1·6⌋`` would be 0: no protection at all in a 6-site federation). Within the
        honest range while ``f ≤ k``; needs ``n > 2k``, and a round planned with fewer
        sites is refused before any site trains (RoundFailed). Unweighted. Buffers.
    ``"krum"``, ``"multi_krum"``
        Krum (Blanchard, El Mhamdi, Guerraoui, Stainer 2017, "Machine Learning with
        Adversaries"): each update's score is the sum of squared distances to its
        ``n − f − 2`` nearest others; Krum keeps the lowest-scoring update, Multi-Krum the
        ``multi_krum_m`` lowest (default ``n − f``) and averages them. Tolerates ``f``
        malicious with ``n > 2f + 2`` (the round is refused otherwise; ``f=None`` takes the
        largest ``f`` the round's n allows). Multi-Krum with that default ``f = 0`` (n ≤ 4)
        and ``m = n`` would average every update, the plain mean: such a round is refused
        (RoundFailed); an explicit ``f=0`` is the caller's choice (the job file refuses it
        without ``multi_krum_m``). Buffers; O(n²·d) time.
    ``"geometric_median"``
        Robust federated aggregation, RFA (Pillutla, Kakade, Harchaoui 2022, "Robust
        Aggregation for Federated Learning"): the geometric median by smoothed Weiszfeld
        steps (``gm_iters`` at most, smoothing ν = ``gm_eps``), weighted by capped example
        counts only when ``max_weight`` is set, else unweighted (see Security notes on
        weights). Breakdown point 1/2 of the weight. Buffers.
    ``"centered_clipping"``
        Centred clipping (Karimireddy, He, Jaggi 2021, "Learning from History for
        Byzantine Robust Optimization"): ``v ← v + Σ αᵢ clip_τ(Δᵢ − v)``, ``cc_iters``
        times, starting from the previous round's robust aggregate (kept in the strategy
        state, so checkpoints resume it). One site moves the aggregate by at most
        ``τ·αᵢ`` per iteration; the paper's guarantee covers a malicious fraction
        δ < 0.1 (its analysis constant), and it degrades gracefully beyond. Streams with
        ``cc_iters=1``; buffers otherwise.
    ``"fltrust"``
        FLTrust (Cao, Fang, Liu, Gong, NDSS 2021): the coordinator trains on its trusted
        root data (``trusted.train(x, round) − x`` = g₀, at the start of the round); each
        update's trust is ``ReLU(cos(Δᵢ, g₀))``, it is rescaled to ``‖g₀‖`` and the
        aggregate is the trust-weighted mean. No update can exceed ``‖g₀‖`` or point away
        from g₀, so the paper reports robustness even with a majority of malicious sites,
        provided the root data are clean and representative. All-zero trust: the round
        keeps ``x`` and says so. Streams.

    Parameters
    ----------
    inner:
        FedAvg, FedProx, FedAvgM or a FedOpt variant: its node selection, configs, weighting
        (``weighted``), ``max_weight`` and server step are used. SCAFFOLD, DPFedAvg and
        Robust itself are refused.
    aggregator:
        One of :data:`ROBUST_AGGREGATORS` (above).
    f:
        The number of malicious sites to tolerate (Krum, Multi-Krum; the per-side trim of
        the trimmed mean). ``None``: see each rule.
    trim:
        The trimmed mean's fraction dropped per side, in [0, 0.5) (used when ``f`` is None):
        ``⌈trim·n⌉`` updates per side, at least one whenever ``trim > 0``.
    multi_krum_m:
        How many updates Multi-Krum averages (default ``n − f``).
    gm_iters, gm_eps:
        Weiszfeld steps at most, and the smoothing ν > 0 (distances below ν count as ν).
        ν sets an absolute scale: a site can move the aggregate by about ν/(n − 1) however
        far it is, so ν must stay far below an honest update's norm (the default 1e-8).
    cc_tau, cc_iters:
        Centred clipping's radius τ > 0 (in update-norm units; required for that rule) and
        its number of iterations.
    norm_bound:
        M > 0: clip every update to L2 norm M before the rule (any rule) and ask honest
        sites to do the same. Required by ``"norm_bound"``.
    trusted:
        The coordinator's trusted data (:class:`~biofed.strategies.TrustedValidation`);
        required by ``"fltrust"``.
    validation:
        Update validation on trusted data (``UpdateValidation``, or any object with its
        ``judge`` / ``judge_aggregate`` methods, :class:`UpdateJudge`): at the end of the
        round every candidate ``x + Δᵢ`` is judged; rejected updates leave, the others
        enter the rule with their weight multiplied by the returned factor. Validation
        scores every update, so it makes every rule buffer.
    max_updates_bytes:
        The most memory a buffering rule may hold (n·d·8 bytes); a round that would need
        more is refused before any site trains.
    secure_tolerance:
        Relative slack on the secure-mode check ``‖mean‖ ≤ M`` (float rounding; it does
        not cover the quantisation of a high-dimensional model: see ``secure_value_error``).
    secure_value_error:
        The largest error per value of secure aggregation's released mean
        (``SecAggPlan.error_bound``: half the quantisation step plus float32 rounding;
        ``JobSpec.build_strategy`` passes it for a job with ``[secure_aggregation]``). The
        check allows ``√d·secure_value_error`` on top of ``M·(1 + secure_tolerance)``:
        the released mean differs from the true mean by at most that much in L2 norm. 0
        (the default) leaves only the relative slack, which a model of many parameters
        with a coarse step can exceed (an honest round would then be rejected).

    Raises
    ------
    ConfigurationError
        On an invalid setting or an inner strategy Robust cannot wrap.

    Security notes
    --------------
    *Weights.* A site's example count is its own claim, so weight inflation (claiming 10¹⁵
    examples) is the cheapest attack. The rule for the whole wrapper: Robust weighs by
    example counts only when ``max_weight`` bounds them (and the inner strategy is
    weighted); otherwise every site counts once — in training (``mean``, ``norm_bound``,
    ``geometric_median``, ``centered_clipping``), in the training metrics, in
    :meth:`aggregate_evaluate`, and under secure aggregation (:attr:`weighted` is then
    False, so SecAgg+ sites send equal weights). The median, trimmed mean, Krum and
    FLTrust ignore example counts altogether. Under SecAgg+ the cap the sites apply to
    their own weight is the ``[secure_aggregation] max_weight`` of the protocol's plan.
    *Secure aggregation.* Only ``mean`` and ``norm_bound`` can run on the released mean;
    the others need single updates and refuse it. With ``norm_bound`` every honest site
    clips before masking and the coordinator checks that the unmasked mean has norm ≤ M
    (plus the quantisation error, ``secure_value_error``): a larger mean proves some site
    did not clip, and the round keeps its model, with a ``rejected`` decision on
    ``"secure-aggregate"`` naming the norms (a run event and an audit entry, like a
    rejection by validation). A malicious site can still send any vector of norm ≤ M, and
    a mean of bounded vectors is all secure aggregation lets anyone check. ``validation``
    then judges the aggregate (``judge_aggregate``).
    *Evaluation.* :meth:`aggregate_evaluate` combines each metric over the sites robustly,
    so one site cannot report a C-index of 0.99996 for the whole run.
    """

    name = "robust"

    def __init__(
        self,
        inner: Strategy,
        aggregator: str = "median",
        *,
        f: int | None = None,
        trim: float = 0.1,
        multi_krum_m: int | None = None,
        gm_iters: int = 100,
        gm_eps: float = 1e-8,
        cc_tau: float | None = None,
        cc_iters: int = 1,
        norm_bound: float | None = None,
        trusted: TrustedValidation | None = None,
        validation: UpdateJudge | None = None,
        max_updates_bytes: int = 256 * 2**20,
        secure_tolerance: float = 1e-3,
        secure_value_error: float = 0.0,
    ) -> None:
        inner = check_mean_family(inner, "Robust", verb="made robust")
        rule: RobustAggregator = check_choice(aggregator, "aggregator", ROBUST_AGGREGATORS)  # type: ignore[arg-type]
        self.aggregator: RobustAggregator = rule
        self.f = None if f is None else check_int(f, "f", minimum=0)
        self.trim = check_float(trim, "trim", minimum=0, below=0.5)
        self.multi_krum_m = (
            None if multi_krum_m is None else check_int(multi_krum_m, "multi_krum_m", minimum=1)
        )
        self.gm_iters = check_int(gm_iters, "gm_iters", minimum=1)
        self.gm_eps = check_float(gm_eps, "gm_eps", above=0)
        self.cc_iters = check_int(cc_iters, "cc_iters", minimum=1)
        self.cc_tau = math.inf if cc_tau is None else check_float(cc_tau, "cc_tau", above=0)
        if rule == "centered_clipping" and cc_tau is None:
            raise ConfigurationError(
                "centered_clipping needs cc_tau, its clipping radius in update-norm units "
                "(e.g. about the norm of an honest site's update)"
            )
        self.norm_bound = (
            None if norm_bound is None else check_float(norm_bound, "norm_bound", above=0)
        )
        if rule == "norm_bound" and self.norm_bound is None:
            raise ConfigurationError("aggregator 'norm_bound' needs norm_bound = M > 0")
        if trusted is not None and not isinstance(trusted, TrustedValidation):
            raise ConfigurationError(
                f"trusted must provide metric, score() and train(), got {type(trusted).__name__}"
            )
        if rule == "fltrust" and trusted is None:
            raise ConfigurationError(
                "aggregator 'fltrust' needs trusted data (trusted=…): its server update is "
                "trained on the coordinator's trusted root dataset"
            )
        if validation is not None and not isinstance(validation, UpdateJudge):
            raise ConfigurationError(
                f"validation must provide judge() and judge_aggregate(), "
                f"got {type(validation).__name__}"
            )
        self.trusted = trusted
        self.validation = validation
        self.max_updates_bytes = check_int(max_updates_bytes, "max_updates_bytes", minimum=1)
        self.secure_tolerance = check_float(secure_tolerance, "secure_tolerance", minimum=0)
        self.secure_value_error = check_float(secure_value_error, "secure_value_error", minimum=0)
        super().__init__(inner)
        self.name = f"robust-{rule.replace('_', '-')}"
        #: Whether sites weigh by their (capped) example counts — only when ``max_weight``
        #: bounds them (an uncapped claim is the liar's lever): secure aggregation reads it
        #: to choose "examples" or "equal" weighting, evaluation and metrics follow it.
        self.weighted = inner.weighted and self.max_weight is not None
        #: Whether the rule can run on secure aggregation's mean (see Security notes).
        self.supports_secure_aggregation = rule in SECURE_AGGREGATORS
        #: Whether this rule's updates weigh by example counts (``weighted`` and a rule that
        #: uses weights; the order-statistic rules, Krum and FLTrust never do).
        self.example_weights = self.weighted and rule in _WEIGHTED_RULES
        #: Whether the round keeps every update (n × d float64) rather than a running sum.
        self.buffers = (
            rule not in STREAMING_AGGREGATORS
            or validation is not None
            or (rule == "centered_clipping" and self.cc_iters > 1)
        )

    # -- state ---------------------------------------------------------------------------
    def init_state(self, parameters: ParameterSet) -> StrategyState:
        state = dict(self.inner.init_state(parameters))
        if CC_REFERENCE_STATE in state:
            raise ConfigurationError(f"inner strategy state already uses {CC_REFERENCE_STATE!r}")
        if self.aggregator == "centered_clipping":
            zero = np.zeros(Layout(parameters).size, dtype=np.float64)
            state[CC_REFERENCE_STATE] = ParameterSet({"reference": zero})
        return state

    def _split_state(self, state: StrategyState) -> tuple[StrategyState, Array | None]:
        inner_state = {k: v for k, v in state.items() if k != CC_REFERENCE_STATE}
        if self.aggregator != "centered_clipping":
            return inner_state, None
        if CC_REFERENCE_STATE not in state:
            raise ConfigurationError(
                f"strategy state lacks {CC_REFERENCE_STATE!r}: start from Robust.init_state"
            )
        return inner_state, np.asarray(state[CC_REFERENCE_STATE]["reference"], dtype=np.float64)

    # -- training ------------------------------------------------------------------------
    def configure_train(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        nodes: Sequence[NodeInfo],
        rng: np.random.Generator,
    ) -> list[NodePlan]:
        """The inner strategy's plans; with ``norm_bound``, each config also carries
        ``robust.max_update_norm`` so honest sites clip their own updates."""
        inner_state, _ = self._split_state(state)
        plans = self.inner.configure_train(server_round, parameters, inner_state, nodes, rng)
        if self.norm_bound is None:
            return plans
        extra = {MAX_UPDATE_NORM: self.norm_bound}
        return [dataclasses.replace(p, config={**p.config, **extra}) for p in plans]

    def check_buffer(self, rows: int, dimension: int) -> None:
        """Refuse (RoundFailed) a buffer of ``rows`` updates of ``dimension`` values above
        ``max_updates_bytes``."""
        need = rows * dimension * 8
        if need > self.max_updates_bytes:
            raise RoundFailed(
                f"robust aggregator {self.aggregator!r} keeps every update in memory: "
                f"{rows} updates × {dimension} parameters × 8 bytes = {need / 2**20:.1f} MiB "
                f"exceeds max_updates_bytes ({self.max_updates_bytes / 2**20:.1f} MiB); raise "
                "it, select fewer sites, or use a streaming rule (mean, norm_bound, fltrust, "
                "centered_clipping with cc_iters=1) without validation"
            )

    def _check_enough(self, planned: int) -> None:
        """Refuse, before any site trains, a round whose plan is too small for ``f``."""
        f = self.f
        if self.aggregator == "trimmed_mean" and f is None:
            k = rk.trim_count(self.trim, planned)
            if not planned > 2 * k:
                raise RoundFailed(
                    f"trimmed mean with trim = {self.trim:g} drops ⌈trim·n⌉ = {k} updates per "
                    f"side and needs more than {2 * k}; the round plans {planned}: select more "
                    "sites or lower trim (0 drops none)"
                )
            return
        if self.aggregator == "multi_krum" and f is None:
            m = self.multi_krum_m if self.multi_krum_m is not None else planned
            if (planned - 3) // 2 <= 0 and m >= planned:
                raise RoundFailed(
                    f"multi_krum with f = 0 would average all {planned} planned updates (the "
                    "plain mean, no defence): select more than 4 sites, set f, or "
                    "multi_krum_m < n"
                )
        if f is None:
            return
        if self.aggregator in ("krum", "multi_krum") and not planned > 2 * f + 2:
            raise RoundFailed(
                f"{self.aggregator} with f = {f} malicious sites needs more than "
                f"{2 * f + 2} updates (n > 2f + 2); the round plans {planned}"
            )
        if self.aggregator == "trimmed_mean" and not planned > 2 * f:
            raise RoundFailed(
                f"trimmed mean drops {f} updates per side and needs more than {2 * f} "
                f"updates; the round plans {planned}"
            )

    def begin_train_aggregation(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        num_nodes: int,
    ) -> TrainAggregator:
        inner_state, reference = self._split_state(state)
        planned = planned_count(self.inner, num_nodes)
        self._check_enough(planned)
        capacity = planned if self.buffers else 0
        if self.buffers:
            self.check_buffer(capacity, Layout(parameters).size)
        g0 = None
        if self.aggregator == "fltrust":
            g0 = self._server_update(parameters, server_round)
        return RobustFold(
            self,
            parameters,
            inner_state,
            capacity=capacity,
            reference=reference,
            server_update=g0,
        )

    def _server_update(self, x: ParameterSet, server_round: int) -> Array:
        """FLTrust's g₀: the trusted data's training from ``x``, minus ``x``."""
        assert self.trusted is not None
        try:
            trained = self.trusted.train(x, server_round)
            x.spec.validate(trained, what="the trusted data's model")
        except (BiofedError, ValueError, ArithmeticError, TypeError) as exc:
            raise RoundFailed(
                f"FLTrust's server update on the trusted data failed: {exc}"
            ) from None
        layout = Layout(x)
        return layout.flatten(trained) - layout.flatten(x)

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
        """The round's result from secure aggregation's released mean update.

        Refused (ConfigurationError) for rules that need single updates. With
        ``norm_bound``, the bounded-range check: every honest site clipped to M, and a mean
        of vectors of norm ≤ M has norm ≤ M, so a released mean of norm above
        ``M·(1 + secure_tolerance) + √d·secure_value_error`` proves some site did not clip.
        Such a round keeps the model (and the strategy state) and records a ``rejected``
        decision on ``"secure-aggregate"`` with the norms; validation is then not asked.
        With ``validation``, the next model is judged and kept only if it passes.
        """
        if not self.supports_secure_aggregation:
            raise ConfigurationError(
                f"robust aggregator {self.aggregator!r} needs each site's update on its own "
                "and cannot run under secure aggregation, which releases only their sum; "
                "use 'norm_bound' (or 'mean' with validation)"
            )
        inner_state, _ = self._split_state(state)
        layout = Layout(parameters)
        mean = layout.flatten(mean_update)
        norm = math.sqrt(float(mean @ mean))
        decisions: list[UpdateDecision] = []
        metrics: dict[str, float] = {"robust.update_norm": norm}
        if self.norm_bound is not None:
            slack = math.sqrt(layout.size) * self.secure_value_error
            limit = self.norm_bound * (1.0 + self.secure_tolerance) + slack
            if not norm <= limit:
                metrics["robust.kept_model"] = 1.0
                reason = (
                    f"mean update norm {norm:.4g} > the bound {self.norm_bound:.4g} "
                    f"(allowed {limit:.4g} with the tolerance and quantisation error): some "
                    "site did not clip its update; the round keeps the current model"
                )
                decision = UpdateDecision(
                    node_id=SECURE_NODE, action="rejected", weight=0.0, reason=reason
                )
                return AggregateResult(
                    parameters=parameters,
                    state=state,
                    metrics=metrics,
                    num_replies=num_replies,
                    decisions=(decision,),
                )
            decisions.append(
                UpdateDecision(
                    node_id=SECURE_NODE,
                    action="accepted",
                    weight=1.0,
                    reason=f"mean update norm {norm:.4g} within the bound {self.norm_bound:.4g}",
                )
            )
        delta = layout.unflatten(mean, model_dtypes=False)
        new_x, new_inner = apply_server_step(self.inner, parameters, delta, inner_state)
        if self.validation is not None:
            keep, decision = self.validation.judge_aggregate(parameters, new_x)
            decisions.append(decision)
            if not keep:
                metrics["robust.kept_model"] = 1.0
                return AggregateResult(
                    parameters=parameters,
                    state=state,
                    metrics=metrics,
                    num_replies=num_replies,
                    decisions=tuple(decisions),
                )
        return AggregateResult(
            parameters=new_x,
            state=dict(new_inner),
            metrics=metrics,
            num_replies=num_replies,
            decisions=tuple(decisions),
        )

    # -- metrics -------------------------------------------------------------------------
    def combine_metrics(
        self, entries: Sequence[tuple[float, Mapping[str, float]]]
    ) -> dict[str, float]:
        """Each metric combined over the sites that report it: a median (order-statistic
        and distance rules), a trimmed mean (``trimmed_mean``; the median when too few
        sites report for its trim), or the mean (``mean``, ``norm_bound``) with the entries'
        weights: capped example counts when :attr:`weighted`, else 1 each."""
        if self.aggregator in _MEDIAN_METRICS:
            return rk.combine_metrics(entries, "median")
        if self.aggregator == "trimmed_mean":
            return rk.combine_metrics(entries, "trimmed", f=self.f, trim=self.trim)
        return rk.combine_metrics(entries, "mean")

    # -- evaluation and description ------------------------------------------------------
    def aggregate_evaluate(self, server_round: int, replies: Sequence[Reply]) -> dict[str, float]:
        """Each evaluation metric combined robustly over the sites (see
        :meth:`combine_metrics`): the median of the sites' values for the order-statistic
        and distance rules, a trimmed mean for ``trimmed_mean``, and for ``mean`` and
        ``norm_bound`` the mean weighted by example counts capped at ``max_weight`` when
        :attr:`weighted`, else the plain mean (every site once: without a cap a claim of
        10¹⁵ examples would own the reported metric). One site's claim then moves a
        median-combined metric only within the honest sites' range, and a mean-combined one
        by at most its capped weight's share (1/n with equal weights)."""
        cap = self.max_weight
        entries = [
            (
                float(min(r.num_examples, cap)) if self.weighted and cap is not None else 1.0,
                r.metrics,
            )
            for r in replies
            if r.ok
        ]
        return self.combine_metrics(entries)

    def describe(self) -> dict[str, Scalar]:
        out = self.inner.describe()
        settings: dict[str, Scalar] = {
            "strategy": f"{self.name}({out.get('strategy', self.inner.name)})",
            "robust.aggregator": self.aggregator,
            "robust.buffers": self.buffers,
            "robust.validation": self.validation is not None,
            "robust.weights": "examples" if self.example_weights else "equal",
        }
        if self.norm_bound is not None:
            settings["robust.norm_bound"] = self.norm_bound
        if self.aggregator in ("krum", "multi_krum", "trimmed_mean"):
            settings["robust.f"] = "auto" if self.f is None else self.f
        if self.aggregator == "trimmed_mean" and self.f is None:
            settings["robust.trim"] = self.trim
        if self.aggregator == "multi_krum":
            settings["robust.multi_krum_m"] = (
                "n-f" if self.multi_krum_m is None else self.multi_krum_m
            )
        if self.aggregator == "geometric_median":
            settings.update({"robust.gm_iters": self.gm_iters, "robust.gm_eps": self.gm_eps})
        if self.aggregator == "centered_clipping":
            settings.update({"robust.cc_tau": self.cc_tau, "robust.cc_iters": self.cc_iters})
        if self.aggregator == "fltrust" and self.trusted is not None:
            settings["robust.trusted_metric"] = self.trusted.metric
        out.update(settings)
        return out
