"""The per-round fold of :class:`~biofed.strategies.Robust`: updates in, decisions out.

Streaming rules (``mean``, ``norm_bound``, ``fltrust``, ``centered_clipping`` with one
iteration) fold each update into one float64 accumulator as it arrives: O(d) memory.
Buffered rules (and any rule with update validation, which scores every update) keep the
updates as the rows of an ``n × d`` float64 matrix, whose size the strategy bounds before
the round starts (``max_updates_bytes``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from scipy.linalg.blas import daxpy

from biofed.core import (
    Array,
    ParameterMismatch,
    ParameterSet,
    ProtocolError,
    Reply,
    RoundFailed,
)
from biofed.strategies import _robust_kernels as rk
from biofed.strategies._base import (
    AggregateResult,
    DecisionAction,
    StrategyState,
    TrainAggregator,
    UpdateDecision,
)
from biofed.strategies._server_step import apply_server_step
from biofed.strategies._validation import SECURE_AGGREGATE
from biofed.strategies._weighted import capped_examples

if TYPE_CHECKING:
    from biofed.strategies._robust import Robust

#: Strategy-state key of centred clipping's reference (the previous robust aggregate).
CC_REFERENCE_STATE = "robust_cc_reference"
KEPT_MODEL = "no update survived: the round keeps the current model"
_SEVERITY: dict[DecisionAction, int] = {
    "accepted": 0,
    "clipped": 1,
    "downweighted": 2,
    "rejected": 3,
}


class Layout:
    """Flattens a model's arrays into one float64 vector and back, in the model's order."""

    def __init__(self, x: ParameterSet) -> None:
        self.entries: list[tuple[str, tuple[int, ...], np.dtype[Any], int, int]] = []
        start = 0
        for name, array in x.items():
            self.entries.append((name, tuple(array.shape), array.dtype, start, start + array.size))
            start += array.size
        self.size = start

    def flatten(self, params: Mapping[str, Array]) -> Array:
        """A new float64 vector of ``params``' values."""
        out = np.empty(self.size, dtype=np.float64)
        for name, _, _, start, stop in self.entries:
            out[start:stop] = np.asarray(params[name], dtype=np.float64).reshape(-1)
        return out

    def unflatten(self, vector: Array, *, model_dtypes: bool) -> dict[str, Array]:
        """``vector`` as arrays in the model's shapes: floating arrays in the model's dtype;
        the others in float64 (an update) or rounded to the model's dtype (a model)."""
        out: dict[str, Array] = {}
        for name, shape, dtype, start, stop in self.entries:
            part = vector[start:stop].reshape(shape)
            if np.issubdtype(dtype, np.floating):
                out[name] = part.astype(dtype)
            elif model_dtypes:
                out[name] = np.rint(part).astype(dtype)
            else:
                out[name] = part.copy()
        return out


@dataclass(slots=True)
class _Entry:
    """What the fold remembers of one update besides its values (a few scalars)."""

    node_id: str
    weight: float
    norm: float
    clipped: bool
    metrics: dict[str, float]
    # streaming rules' per-update figures
    coefficient: float = 0.0
    trust: float = 0.0
    distance: float = 0.0


@dataclass(slots=True)
class _Outcome:
    """One update's fate before it becomes an :class:`UpdateDecision`."""

    action: DecisionAction = "accepted"
    share: float = 0.0
    reasons: list[str] = field(default_factory=list)
    score: float | None = None

    def worsen(self, action: DecisionAction, reason: str) -> None:
        if _SEVERITY[action] > _SEVERITY[self.action]:
            self.action = action
        self.reasons.append(reason)


class _Candidates(Sequence[tuple[str, ParameterSet]]):
    """The candidate models ``x + Δᵢ`` for update validation, built one at a time."""

    def __init__(self, fold: RobustFold) -> None:
        self._fold = fold

    def __len__(self) -> int:
        return len(self._fold.entries)

    @overload
    def __getitem__(self, i: int) -> tuple[str, ParameterSet]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[str, ParameterSet]]: ...
    def __getitem__(
        self, i: int | slice
    ) -> tuple[str, ParameterSet] | list[tuple[str, ParameterSet]]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        fold = self._fold
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        model = fold.layout.unflatten(fold.xflat + fold.rows[i], model_dtypes=True)
        return fold.entries[i].node_id, ParameterSet(model)

    def __iter__(self) -> Iterator[tuple[str, ParameterSet]]:
        return (self[i] for i in range(len(self)))


class RobustFold(TrainAggregator):
    """One round of :class:`~biofed.strategies.Robust` (see the module docstring)."""

    def __init__(
        self,
        strategy: Robust,
        x: ParameterSet,
        inner_state: StrategyState,
        *,
        capacity: int,
        reference: Array | None,
        server_update: Array | None,
    ) -> None:
        self.strategy = strategy
        self.x = x
        self.inner_state = inner_state
        self.layout = Layout(x)
        self.xflat = self.layout.flatten(x)
        self.entries: list[_Entry] = []
        self.reference = reference
        self.g0 = server_update
        self.g0_norm = (
            0.0 if server_update is None else math.sqrt(float(server_update @ server_update))
        )
        d = self.layout.size
        self.buffered = strategy.buffers
        self.rows = np.empty((max(1, capacity) if self.buffered else 0, d), dtype=np.float64)
        self.acc = np.zeros(0 if self.buffered else d, dtype=np.float64)
        self.total = 0.0

    @property
    def count(self) -> int:
        return len(self.entries)

    # -- folding ---------------------------------------------------------------------------
    def add(self, reply: Reply) -> None:
        strategy = self.strategy
        if reply.parameters is None:
            raise ParameterMismatch(f"reply from {reply.node_id} carries no parameters")
        if reply.node_id == SECURE_AGGREGATE:  # its decisions would read as the aggregate's
            raise ProtocolError(
                f"node id {SECURE_AGGREGATE!r} is reserved for the decision about a secure "
                "round's aggregate: a site of that name cannot take part in a robust round"
            )
        self.x.spec.validate(reply.parameters, what=f"reply from {reply.node_id}")
        examples = capped_examples(reply.num_examples, strategy.max_weight)
        if strategy.inner.weighted and examples <= 0:
            raise ParameterMismatch(f"reply from {reply.node_id} reports no training examples")
        u = self.layout.flatten(reply.parameters)
        u -= self.xflat
        if strategy.norm_bound is not None:
            u, norm = rk.clip_vector(u, strategy.norm_bound)
        else:
            norm = math.sqrt(float(u @ u))
        entry = _Entry(
            node_id=reply.node_id,
            weight=float(examples) if strategy.example_weights else 1.0,
            norm=norm,
            clipped=strategy.norm_bound is not None and norm > strategy.norm_bound,
            metrics=dict(reply.metrics),
        )
        if self.buffered:
            self._store(u)
        else:
            self._fold(entry, u)
        self.entries.append(entry)

    def _store(self, u: Array) -> None:
        n = len(self.entries)
        if n == self.rows.shape[0]:
            grown = 2 * n
            self.strategy.check_buffer(grown, self.layout.size)
            rows = np.empty((grown, self.layout.size), dtype=np.float64)
            rows[:n] = self.rows
            self.rows = rows
        self.rows[n] = u

    def _fold(self, entry: _Entry, u: Array) -> None:
        rule = self.strategy.aggregator
        if rule == "fltrust":
            assert self.g0 is not None
            entry.trust, entry.coefficient = rk.fltrust_coefficient(u, self.g0, self.g0_norm)
            self.total += entry.trust
        elif rule == "centered_clipping":
            assert self.reference is not None
            u -= self.reference
            entry.distance = math.sqrt(float(u @ u))
            tau = self.strategy.cc_tau
            scale = 1.0 if entry.distance <= tau else tau / entry.distance
            entry.coefficient = entry.weight * scale
            self.total += entry.weight
        else:  # mean, norm_bound
            entry.coefficient = entry.weight
            self.total += entry.weight
        if entry.coefficient:
            daxpy(u, self.acc, a=entry.coefficient)

    # -- finishing -------------------------------------------------------------------------
    def finish(self) -> AggregateResult:
        n = self.count
        if n == 0:
            raise RoundFailed("no training reply to aggregate")
        outcomes = [_Outcome() for _ in range(n)]
        for entry, out in zip(self.entries, outcomes, strict=True):
            if entry.clipped:
                out.worsen(
                    "clipped",
                    f"update norm {entry.norm:.4g} > bound {self.strategy.norm_bound:.4g}: "
                    "scaled to the bound",
                )
        aggregate = self._buffered(outcomes) if self.buffered else self._streamed(outcomes)
        decisions = tuple(
            UpdateDecision(
                node_id=e.node_id,
                action=o.action,
                weight=o.share if o.action != "rejected" else 0.0,
                reason="; ".join(o.reasons),
                # A liar's Krum score can overflow to inf: the audit log (and strict JSON)
                # refuses non-finite numbers, so the figure stays only in the reason.
                score=o.score if o.score is None or math.isfinite(o.score) else None,
            )
            for e, o in zip(self.entries, outcomes, strict=True)
        )
        return self._result(aggregate, decisions, outcomes)

    def _streamed(self, outcomes: list[_Outcome]) -> Array | None:
        rule = self.strategy.aggregator
        entries = self.entries
        if rule == "fltrust":
            return self._fltrust_outcomes(
                outcomes,
                np.array([e.trust for e in entries]),
                self.acc / self.total if self.total > 0 else None,
            )
        shares = np.array([e.coefficient for e in entries]) / self.total
        if rule == "centered_clipping":
            assert self.reference is not None
            self._cc_outcomes(outcomes, np.array([e.distance for e in entries]), shares)
            return self.reference + self.acc / self.total
        for out, share in zip(outcomes, shares, strict=True):
            out.share = float(share)
            out.reasons.append(f"{rule} of {len(entries)} updates")
        result: Array = self.acc / self.total
        return result

    def _buffered(self, outcomes: list[_Outcome]) -> Array | None:
        strategy = self.strategy
        n = self.count
        rows_n = self.rows[:n]
        factors = np.ones(n, dtype=np.float64)
        if strategy.validation is not None:
            factors = self._validate(outcomes)
        alive = np.flatnonzero(factors > 0)
        if alive.size == 0:
            return None
        live_rows = rows_n if alive.size == n else rows_n[alive]
        weights = np.array([self.entries[i].weight for i in alive]) * factors[alive]
        ids = [self.entries[i].node_id for i in alive]
        live = [outcomes[i] for i in alive]
        rule = strategy.aggregator
        if rule in ("mean", "norm_bound"):
            shares = weights / weights.sum()
            for out, share in zip(live, shares, strict=True):
                out.share = float(share)
                out.reasons.append(f"{rule} of {alive.size} updates")
            return rk.weighted_mean(live_rows, weights)
        if rule == "median":
            for out in live:
                out.share = 1.0 / alive.size
                out.reasons.append(f"coordinate-wise median of {alive.size} updates")
            return rk.coordinate_median(live_rows)
        if rule == "trimmed_mean":
            return self._trimmed(live_rows, live)
        if rule in ("krum", "multi_krum"):
            return self._krum(live_rows, ids, live)
        if rule == "geometric_median":
            return self._geometric_median(live_rows, weights, live)
        if rule == "centered_clipping":
            assert self.reference is not None
            v, dist = rk.centered_clipping(
                live_rows,
                weights,
                self.reference,
                tau=strategy.cc_tau,
                iterations=strategy.cc_iters,
            )
            alpha = weights / weights.sum()
            shares = alpha * rk.clip_scale(dist, strategy.cc_tau)
            self._cc_outcomes(live, dist, shares)
            return v
        assert rule == "fltrust"
        assert self.g0 is not None
        aggregate, trust = rk.fltrust(live_rows, self.g0, factors[alive])
        return self._fltrust_outcomes(live, trust, aggregate)

    def _validate(self, outcomes: list[_Outcome]) -> Array:
        validation = self.strategy.validation
        assert validation is not None
        weights = [e.weight for e in self.entries]
        judged = list(validation.judge(self.x, _Candidates(self), weights=weights))
        if len(judged) != self.count:
            raise RoundFailed(
                f"update validation judged {len(judged)} updates, {self.count} were offered"
            )
        factors = np.empty(self.count, dtype=np.float64)
        for i, (factor, decision) in enumerate(judged):
            factor = float(factor)
            if not (math.isfinite(factor) and 0.0 <= factor <= 1.0):
                raise RoundFailed(f"update validation gave weight factor {factor!r}, not in [0, 1]")
            factors[i] = factor
            out = outcomes[i]
            out.score = decision.score
            if factor == 0.0:
                out.worsen("rejected", f"validation: {decision.reason}")
            elif decision.action != "accepted" or factor < 1.0:
                out.worsen("downweighted", f"validation: {decision.reason}")
            else:
                out.reasons.append(f"validation: {decision.reason}")
        return factors

    def _trimmed(self, live_rows: Array, live: list[_Outcome]) -> Array:
        strategy = self.strategy
        n = live_rows.shape[0]
        k = strategy.f if strategy.f is not None else rk.trim_count(strategy.trim, n)
        if not n > 2 * k:
            raise RoundFailed(
                f"trimmed mean drops {k} updates per side and needs more than {2 * k} "
                f"updates, {n} arrived: the model is unchanged"
            )
        aggregate, dropped = rk.trimmed_mean(live_rows, k)
        for out, frac in zip(live, dropped, strict=True):
            out.share = 1.0 / n
            out.reasons.append(
                f"trimmed mean of {n} updates, {k} per side dropped per coordinate "
                f"({frac:.0%} of this update's coordinates among them)"
            )
        return aggregate

    def _krum(self, live_rows: Array, ids: list[str], live: list[_Outcome]) -> Array:
        strategy = self.strategy
        n = live_rows.shape[0]
        f = strategy.f if strategy.f is not None else max(0, (n - 3) // 2)
        if not n > 2 * f + 2:
            raise RoundFailed(
                f"{strategy.aggregator} with f = {f} malicious sites needs more than "
                f"{2 * f + 2} updates (n > 2f + 2), {n} arrived: the model is unchanged"
            )
        if strategy.aggregator == "krum":
            m = 1
        else:
            m = strategy.multi_krum_m if strategy.multi_krum_m is not None else n - f
            if m > n - f:
                raise RoundFailed(
                    f"multi_krum_m = {m} exceeds n − f = {n - f} for {n} updates and f = {f}"
                )
            if m >= n and strategy.f is None:  # f = 0 by default: it would be the plain mean
                raise RoundFailed(
                    f"multi_krum with f = 0 would average all {n} updates (the plain mean, no "
                    "defence): the model is unchanged; it needs n > 4 updates for f >= 1, an "
                    "explicit f, or multi_krum_m < n"
                )
        scores = rk.krum_scores(live_rows, f)
        rank = {node: r for r, node in enumerate(sorted(ids))}  # ties go to the lower id
        order = np.lexsort((np.array([rank[i] for i in ids]), scores))
        chosen = set(order[:m].tolist())
        for i, out in enumerate(live):
            out.score = float(scores[i])
            what = f"Krum score {scores[i]:.4g} (f = {f}, {n} updates, {m} selected)"
            if i in chosen:
                out.share = 1.0 / m
                out.reasons.append(f"selected: {what}")
            else:
                out.worsen("rejected", f"not selected: {what}")
        selection = np.zeros(n, dtype=np.float64)
        selection[sorted(chosen)] = 1.0
        return rk.weighted_mean(live_rows, selection)  # no copy of the chosen rows

    def _geometric_median(self, live_rows: Array, weights: Array, live: list[_Outcome]) -> Array:
        strategy = self.strategy
        v, effective, steps = rk.geometric_median(
            live_rows, weights, iterations=strategy.gm_iters, nu=strategy.gm_eps
        )
        nominal = weights / weights.sum()
        dist = rk.row_distances(live_rows, v)
        for out, share, nom, dst in zip(live, effective, nominal, dist, strict=True):
            out.share = float(share)
            what = f"distance {dst:.4g} to the geometric median ({steps} Weiszfeld steps)"
            if share < 0.5 * nom:
                out.worsen("downweighted", f"{what}: weight {share:.3g} of nominal {nom:.3g}")
            else:
                out.reasons.append(what)
        return v

    def _cc_outcomes(self, outcomes: list[_Outcome], dist: Array, shares: Array) -> None:
        tau = self.strategy.cc_tau
        for out, dst, share in zip(outcomes, dist, shares, strict=True):
            out.share = float(share)
            if dst > tau:
                out.worsen("clipped", f"distance {dst:.4g} to the reference > τ = {tau:.4g}")
            else:
                out.reasons.append(f"distance {dst:.4g} to the reference within τ = {tau:.4g}")

    def _fltrust_outcomes(
        self, outcomes: list[_Outcome], trust: Array, aggregate: Array | None
    ) -> Array | None:
        total = float(trust.sum())
        for out, ts in zip(outcomes, trust, strict=True):
            out.score = float(ts)
            out.share = float(ts / total) if total > 0 else 0.0
            if ts <= 0.0:
                out.worsen(
                    "rejected",
                    "FLTrust trust score 0 (update points away from the "
                    "server update on the trusted data)",
                )
            elif ts < 1.0:
                out.worsen("downweighted", f"FLTrust trust score {ts:.3g}, rescaled to ‖g₀‖")
            else:
                out.reasons.append("FLTrust trust score 1, rescaled to ‖g₀‖")
        return aggregate

    def _result(
        self,
        aggregate: Array | None,
        decisions: tuple[UpdateDecision, ...],
        outcomes: list[_Outcome],
    ) -> AggregateResult:
        strategy = self.strategy
        counts = {a: 0.0 for a in ("accepted", "rejected", "downweighted", "clipped")}
        for out in outcomes:
            counts[out.action] += 1.0
        kept = [
            (e.weight, e.metrics)
            for e, o in zip(self.entries, outcomes, strict=True)
            if o.action != "rejected"
        ]
        metrics = strategy.combine_metrics(kept)
        # The strategy's own counts are set after the sites' metrics: a site reporting a
        # metric named "robust.rejected" must not overwrite the round's decision counts.
        metrics.update({f"robust.{a}": c for a, c in counts.items()})
        if aggregate is None:
            metrics["robust.kept_model"] = 1.0
            state = dict(self.inner_state)
            if self.reference is not None:
                state[CC_REFERENCE_STATE] = ParameterSet({"reference": self.reference})
            return AggregateResult(
                parameters=self.x,
                state=state,
                metrics=metrics,
                num_replies=self.count,
                decisions=tuple(
                    dataclasses.replace(d, reason=f"{d.reason}; {KEPT_MODEL}") for d in decisions
                ),
            )
        metrics["robust.update_norm"] = math.sqrt(float(aggregate @ aggregate))
        delta = self.layout.unflatten(aggregate, model_dtypes=False)
        new_x, new_inner = apply_server_step(strategy.inner, self.x, delta, self.inner_state)
        state = dict(new_inner)
        if self.reference is not None:
            state[CC_REFERENCE_STATE] = ParameterSet({"reference": aggregate})
        return AggregateResult(
            parameters=new_x,
            state=state,
            metrics=metrics,
            num_replies=self.count,
            decisions=decisions,
        )
