"""Client-level DP-FedAvg (McMahan et al. 2018) as a wrapper around a FedAvg-family strategy.

``DPFedAvg(FedAvg(...), clip_norm=1.0, noise_multiplier=1.0)`` clips each site's model
update to an L2 norm C, averages the clipped updates with equal weights, adds Gaussian noise
(centrally, at the coordinator, or distributed, one share per site) and hands the noised
mean update to the inner strategy's server step (plain ``x + Δ`` for FedAvg/FedProx, the
optimiser step for FedAvgM and FedOpt). Adaptive clipping (Andrew et al. 2021) moves C
between rounds; its state is part of the strategy state, so checkpoints resume it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np

from biofed.core import (
    Array,
    ConfigurationError,
    NodeInfo,
    ParameterMismatch,
    ParameterSet,
    Reply,
    RoundFailed,
    Scalar,
)
from biofed.core.sections import DP_CLIP_NORM as DP_CLIP_NORM
from biofed.core.sections import DP_NOISE_STD_SHARE as DP_NOISE_STD_SHARE
from biofed.privacy import AdaptiveClipping, GaussianNoise, clip_l2
from biofed.strategies._base import (
    AggregateResult,
    NodePlan,
    Strategy,
    StrategyState,
    StrategyWrapper,
    TrainAggregator,
    planned_count,
)
from biofed.strategies._server_step import apply_server_step, check_mean_family
from biofed.strategies._weighted import WeightedSum

# DP_CLIP_NORM and DP_NOISE_STD_SHARE (re-exported above; biofed.core.sections owns them)
# are the round directives sent to every training node: the round's clip norm C and, with
# distributed noise, the std of each site's noise share.

#: Strategy-state key of the adaptive clipping state (clip norm and rounds, float64).
DP_CLIP_STATE = "dp_adaptive_clipping"
NoisePlacement = Literal["central", "distributed"]
#: Builds the (seeded, **not secure**) generator for a round's noise; tests and simulations only.
RngFactory = Callable[[int], np.random.Generator]


def _adaptive_to_state(adaptive: AdaptiveClipping) -> ParameterSet:
    return ParameterSet(
        {
            "clip_norm": np.array([adaptive.norm], dtype=np.float64),
            "rounds": np.array([float(adaptive.rounds)], dtype=np.float64),
        }
    )


class DPFedAvg(StrategyWrapper):
    """Client-level differentially private FedAvg, wrapping a FedAvg-family strategy.

    Each round, every reply's update ``Δᵢ = xᵢ − x`` is clipped to L2 norm C, the clipped
    updates are summed with **equal weights**, Gaussian noise of std σ·C is present in the
    sum, and the sum is divided by the number of replies. The noised mean update goes to the
    inner strategy's server step.

    Parameters
    ----------
    inner:
        The strategy to privatise: FedAvg, FedProx, FedAvgM or a FedOpt variant. Node
        selection, configs and evaluation are the inner strategy's; its example weighting is
        overridden (see Privacy notes). SCAFFOLD and other strategies with their own
        aggregation are refused.
    clip_norm:
        C > 0, the bound on each site's update norm (the starting value when ``adaptive``).
    noise_multiplier:
        σ ≥ 0, the noise std in units of C (0 disables noise: clipping only, no DP).
    noise:
        ``"central"``: the coordinator adds N(0, σ²C²) to the sum (trusts the coordinator).
        ``"distributed"``: each of the n planned sites adds N(0, σ²C²/n) to its clipped
        update (sent as ``dp.noise_std_share``), so the sum carries σC when all reply; meant
        for use with secure aggregation. The coordinator adds nothing.
    adaptive:
        Adaptive clipping state (central noise only); its ``norm`` must equal ``clip_norm``.
        With it, the updates are noised with
        :meth:`~biofed.privacy.AdaptiveClipping.update_noise_multiplier` of σ so that updates
        and the count of unclipped updates together spend σ.
    rng_factory:
        ``None`` (default): noise from the CSPRNG. Else ``rng_factory(server_round)`` gives a
        seeded numpy Generator — reproducible and **not secure**, for tests and simulations.

    Raises
    ------
    ConfigurationError
        On an invalid parameter or an inner strategy the wrapper cannot privatise.

    Privacy notes
    -------------
    *Threat.* Model updates leak their training records (membership inference, gradient
    inversion); client-level DP bounds what the released model reveals about whether any one
    site (with all its records) took part (McMahan, Ramage, Talwar, Zhang 2018, "Learning
    Differentially Private Recurrent Language Models", DP-FedAvg).

    *Equal weights.* The sensitivity of the mean to one site is C/n only if every clipped
    update has the same weight; weighting by example counts would let a large site move the
    mean by more than C/n (and the counts themselves are private). The wrapper therefore
    averages clipped updates uniformly whatever the inner strategy's ``weighted`` setting.

    *Denominator.* The sum is divided by the number of replies actually received, and
    ``dp.replies`` / ``dp.noise_std`` record what really happened, so the accountant is told
    the noise actually in the sum: with distributed noise, fewer replies than planned mean
    std σC·√(replies/planned), a weaker guarantee, not the planned one.

    *Distributed mode.* The sites' replies are assumed already clipped and noised; the
    coordinator still clips defensively (a site that did not clip cannot exceed C), but it
    cannot check that a site added its share.

    *Adaptive clipping* (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially Private
    Learning with Adaptive Clipping"): the count of unclipped updates is noised with
    ``adaptive.count_noise_std`` before it moves C. The coordinator measures the norms, so
    it is offered with central noise only.

    Training metrics reported by the sites are **not** released in the aggregate: they are
    not covered by the guarantee. Only the ``dp.*`` metrics are.
    """

    name = "dpfedavg"

    def __init__(
        self,
        inner: Strategy,
        *,
        clip_norm: float,
        noise_multiplier: float,
        noise: NoisePlacement = "central",
        adaptive: AdaptiveClipping | None = None,
        rng_factory: RngFactory | None = None,
    ) -> None:
        inner = check_mean_family(inner, "DPFedAvg", verb="privatised")
        if isinstance(clip_norm, bool) or not (
            isinstance(clip_norm, int | float) and math.isfinite(clip_norm) and clip_norm > 0
        ):
            raise ConfigurationError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")
        if isinstance(noise_multiplier, bool) or not (
            isinstance(noise_multiplier, int | float)
            and math.isfinite(noise_multiplier)
            and noise_multiplier >= 0
        ):
            raise ConfigurationError(
                f"noise_multiplier must be ≥ 0, got {noise_multiplier!r} "
                "(use 0 for clipping without noise)"
            )
        if noise not in ("central", "distributed"):
            raise ConfigurationError(f"noise must be 'central' or 'distributed', got {noise!r}")
        update_multiplier = float(noise_multiplier)
        if adaptive is not None:
            if not isinstance(adaptive, AdaptiveClipping):
                raise ConfigurationError(
                    f"adaptive must be an AdaptiveClipping, got {type(adaptive).__name__}"
                )
            if noise == "distributed":
                raise ConfigurationError(
                    "adaptive clipping needs the update norms at the coordinator: use "
                    "noise='central' with adaptive, or a fixed clip_norm with distributed noise"
                )
            if not math.isclose(adaptive.norm, clip_norm, rel_tol=1e-12):
                raise ConfigurationError(
                    f"clip_norm ({clip_norm}) differs from adaptive.norm ({adaptive.norm}): "
                    "pass the same starting clip norm to both"
                )
            if noise_multiplier > 0:
                update_multiplier = adaptive.update_noise_multiplier(noise_multiplier)
        if rng_factory is not None and not callable(rng_factory):
            raise ConfigurationError("rng_factory must be callable (server_round -> Generator)")
        super().__init__(inner)
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        #: The multiplier applied to the updates (< σ with adaptive clipping, see above).
        self.update_noise_multiplier = update_multiplier
        self.noise: NoisePlacement = noise
        self.adaptive = adaptive
        self.rng_factory = rng_factory

    # -- state ---------------------------------------------------------------------------
    def init_state(self, parameters: ParameterSet) -> StrategyState:
        inner_state = dict(self.inner.init_state(parameters))
        if DP_CLIP_STATE in inner_state:
            raise ConfigurationError(f"inner strategy state already uses {DP_CLIP_STATE!r}")
        if self.adaptive is not None:
            inner_state[DP_CLIP_STATE] = _adaptive_to_state(self.adaptive)
        return inner_state

    def _split_state(self, state: StrategyState) -> tuple[StrategyState, AdaptiveClipping | None]:
        inner_state = {k: v for k, v in state.items() if k != DP_CLIP_STATE}
        if self.adaptive is None:
            return inner_state, None
        if DP_CLIP_STATE not in state:
            raise ConfigurationError(
                f"strategy state lacks {DP_CLIP_STATE!r}: start from DPFedAvg.init_state"
            )
        stored = state[DP_CLIP_STATE]
        current = dataclasses.replace(
            self.adaptive,
            clip_norm=float(stored["clip_norm"][0]),
            rounds=round(float(stored["rounds"][0])),
        )
        return inner_state, current

    def current_clip_norm(self, state: StrategyState) -> float:
        """The clip norm C for a round that starts with ``state``."""
        _, adaptive = self._split_state(state)
        return self.clip_norm if adaptive is None else adaptive.norm

    # -- training ------------------------------------------------------------------------
    def configure_train(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        nodes: Sequence[NodeInfo],
        rng: np.random.Generator,
    ) -> list[NodePlan]:
        """The inner strategy's plans, each config extended with ``dp.*`` settings.

        ``dp.clip_norm`` is the round's C; with distributed noise, ``dp.noise_std_share`` is
        σ·C/√n for the n planned sites, so the n shares sum to std σ·C.
        """
        inner_state, adaptive = self._split_state(state)
        plans = self.inner.configure_train(server_round, parameters, inner_state, nodes, rng)
        clip = self.clip_norm if adaptive is None else adaptive.norm
        extra: dict[str, Scalar] = {DP_CLIP_NORM: clip}
        if self.noise == "distributed" and plans:
            extra[DP_NOISE_STD_SHARE] = self.update_noise_multiplier * clip / math.sqrt(len(plans))
        return [dataclasses.replace(p, config={**p.config, **extra}) for p in plans]

    def begin_train_aggregation(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        num_nodes: int,
    ) -> TrainAggregator:
        inner_state, adaptive = self._split_state(state)
        rng = None if self.rng_factory is None else self.rng_factory(server_round)
        return _DPAggregator(
            self,
            parameters,
            inner_state,
            adaptive,
            planned=planned_count(self.inner, num_nodes),
            rng=rng,
        )

    def server_update(
        self, x: ParameterSet, delta: dict[str, Array], state: StrategyState
    ) -> tuple[ParameterSet, StrategyState]:
        """Apply the noised mean update through the inner strategy's server step."""
        return apply_server_step(self.inner, x, delta, state)

    weighted = False  # every clipped update counts once (see Privacy notes)

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
        """Client-level DP over secure aggregation: the sites clipped their own updates (and,
        with distributed noise, added their shares) before masking; the released mean of
        ``num_replies`` equal-weight updates is noised (central) or accounted (distributed)
        exactly as :meth:`begin_train_aggregation`'s fold would."""
        if self.adaptive is not None:
            raise ConfigurationError(
                "adaptive clipping measures each update's norm at the coordinator, which "
                "secure aggregation hides: use a fixed clip_norm"
            )
        if total_weight != num_replies:
            raise ConfigurationError(
                f"client-level DP needs equal weights: {num_replies} updates carried a total "
                f"weight of {total_weight}"
            )
        aggregator = self.begin_train_aggregation(server_round, parameters, state, num_nodes)
        assert isinstance(aggregator, _DPAggregator)
        mean = {k: np.asarray(v, dtype=np.float64) for k, v in mean_update.items()}
        return aggregator.release(mean, num_replies, {})

    # -- evaluation and description ------------------------------------------------------
    def describe(self) -> dict[str, Scalar]:
        out = self.inner.describe()
        out.update(
            {
                "strategy": f"{self.name}({out.get('strategy', self.inner.name)})",
                "dp.clip_norm": self.clip_norm,
                "dp.noise_multiplier": self.noise_multiplier,
                "dp.noise": self.noise,
                "dp.adaptive": self.adaptive is not None,
                "dp.secure_noise": self.rng_factory is None,
            }
        )
        return out


class _DPAggregator(TrainAggregator):
    """Fold of clipped update deltas with weight 1; noise, mean and server step at finish."""

    def __init__(
        self,
        strategy: DPFedAvg,
        parameters: ParameterSet,
        inner_state: StrategyState,
        adaptive: AdaptiveClipping | None,
        *,
        planned: int,
        rng: np.random.Generator | None,
    ) -> None:
        self._strategy = strategy
        self._x = parameters
        self._inner_state = inner_state
        self._adaptive = adaptive
        self._clip = strategy.clip_norm if adaptive is None else adaptive.norm
        self._planned = planned
        self._rng = rng
        self._sum = WeightedSum(parameters)
        self._clipped = 0
        self._unclipped = 0

    def add(self, reply: Reply) -> None:
        if reply.parameters is None:
            raise ParameterMismatch(f"reply from {reply.node_id} carries no parameters")
        self._x.spec.validate(reply.parameters, what=f"reply from {reply.node_id}")
        delta = ParameterSet({k: np.subtract(reply.parameters[k], a) for k, a in self._x.items()})
        clipped, norm = clip_l2(delta, self._clip)
        self._sum.add(clipped, 1.0)
        if norm > self._clip:
            self._clipped += 1
        else:
            self._unclipped += 1

    @property
    def count(self) -> int:
        return self._sum.count

    def finish(self) -> AggregateResult:
        n = self.count
        if n == 0:
            raise RoundFailed("no training reply to aggregate")
        metrics = {"dp.clipped_fraction": self._clipped / n}
        return self.release(self._sum.mean(), n, metrics)

    def release(
        self, mean: dict[str, Array], n: int, extra_metrics: dict[str, float]
    ) -> AggregateResult:
        """Noise (central) or account for (distributed) the mean of ``n`` clipped updates
        and apply it through the inner strategy's server step."""
        strategy = self._strategy
        sum_std = strategy.update_noise_multiplier * self._clip
        if strategy.noise == "central":
            noise_std = sum_std
            if noise_std > 0:
                # N(0, (σC)²) on the sum, then ÷ n  ≡  N(0, (σC/n)²) on the mean.
                noised = GaussianNoise(noise_std / n, rng=self._rng).add(ParameterSet(mean))
                mean = noised.copy()
        else:
            # Each replying site added its share σC/√planned: the sum holds σC·√(n/planned).
            noise_std = sum_std * math.sqrt(n / self._planned)
        new_params, new_inner = strategy.server_update(self._x, mean, self._inner_state)
        state = dict(new_inner)
        metrics: dict[str, float] = {
            "dp.clip_norm": self._clip,
            "dp.noise_std": noise_std,
            "dp.replies": float(n),
            **extra_metrics,
        }
        if self._adaptive is not None:
            noisy = self._adaptive.noisy_count(self._unclipped, rng=self._rng)
            following = self._adaptive.update(noisy_count=noisy, expected_count=self._planned)
            state[DP_CLIP_STATE] = _adaptive_to_state(following)
            metrics["dp.next_clip_norm"] = following.norm
        return AggregateResult(parameters=new_params, state=state, metrics=metrics, num_replies=n)
