"""Monte-Carlo Shapley values: TMC-Shapley and GTG-Shapley.

Both average the marginal gains ``v(π[:j]) − v(π[:j−1])`` of each site over random
permutations ``π`` of the round's sites, and both truncate a permutation once the coalition
so far is within ``truncation · |v(N)|`` of the grand coalition's value (the remaining sites
are credited 0 for it). They differ in how they spend the budget:

- **TMC-Shapley** (Ghorbani and Zou, "Data Shapley", ICML 2019, Algorithm 1): uniformly
  random permutations.
- **GTG-Shapley** (Liu et al., "GTG-Shapley: efficient and accurate participant
  contribution evaluation in federated learning", ACM TIST 2022): skips a round whose
  total gain ``|v(N)|`` is below ``round_tolerance`` (every site 0, two evaluations), and
  guides the sampling: permutation ``k`` puts site ``k mod n`` (in an order drawn once) in
  front, so every site's first-position marginal — its value alone, the largest term for
  most — is measured early and equally often, and the rest is shuffled.

Convergence (both): after at least ``min_permutations``, stop when every site's estimate
has a standard error (sample deviation of its marginal gains / √k) of at most
``tolerance · max(|v(N)|, Σᵢ|φᵢ|)`` — a statistical form of the papers' "the estimates
stopped moving" tests. The scale is the values' own magnitude: in a later round the sites'
gains and losses nearly cancel, ``v(N)`` is a tenth of ``Σ|φᵢ|`` on the Fed-TCGA-BRCA Cox
job, and a tolerance on ``v(N)`` alone asked for a hundred times more permutations.

The work is bounded by ``max_permutations`` and by the game's ``max_evaluations``; a
sampler stopped by a bound says ``converged=False``. Coalition values are memoised, so a
permutation whose prefixes were seen before costs no evaluation.
"""

from __future__ import annotations

import math

import numpy as np

from biofed.contribution._game import RoundGame, _Exhausted
from biofed.contribution._result import Contributions
from biofed.core import ConfigurationError

#: TMC-Shapley's defaults: truncation at 1 % of v(N), standard error ≤ 2 % of the scale.
TMC_TRUNCATION, TMC_TOLERANCE = 0.01, 0.02
#: GTG-Shapley's defaults: truncation at 3 %, standard error ≤ 5 %, the error estimated
#: per stratum of the guided sampling. On the Cox job's round 1 (benchmarks/contribution.py,
#: seeds 0-2) it stayed within Spearman ≥ 0.96 and 1.3 % mean error of exact Shapley with
#: 10 sites at 101-159 evaluations (exact: 256 after grouping), and within Spearman ≥ 0.88
#: and 1.2 % of a long TMC reference with 20 sites at 324-365 evaluations; plain TMC at
#: 5 % fell to Spearman 0.68 with 10 sites, hence its tighter 2 %.
GTG_TRUNCATION, GTG_TOLERANCE = 0.03, 0.05
DEFAULT_MAX_PERMUTATIONS = 500
#: GTG's default round tolerance, in the value function's units (C-index points, AUC …).
DEFAULT_ROUND_TOLERANCE = 1e-4


def _check_fraction(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"contribution: {what} must be a number, got {value!r}")
    f = float(value)
    if not 0.0 <= f < 1.0:
        raise ConfigurationError(f"contribution: {what} must be in [0, 1), got {value!r}")
    return f


def _check_count(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(
            f"contribution: {what} must be an integer ≥ {minimum}, got {value!r}"
        )
    return value


class _Plain:
    """Welford's running mean and variance of each site's marginal gains."""

    def __init__(self, n: int) -> None:
        self.k = 0
        self.mean = np.zeros(n)
        self.m2 = np.zeros(n)

    def add(self, lead: int, gains: np.ndarray) -> None:
        self.k += 1
        step = gains - self.mean
        self.mean += step / self.k
        self.m2 += step * (gains - self.mean)

    def estimate(self) -> np.ndarray:
        return self.mean.copy()

    def squared_error(self) -> float:
        """The largest ``s² / k`` over the sites."""
        return float(self.m2.max() / (self.k - 1) / self.k) if self.k > 1 else math.inf


class _Stratified:
    """The same per leading site: guided sampling is sampling stratified on the leader,
    each stratum weighing 1/n as in the Shapley average. A site's marginal when it leads is
    its value alone, a constant, so that stratum adds no error, and the between-strata
    spread that the plain variance counts is not error either."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = np.zeros(n)
        self.mean = np.zeros((n, n))
        self.m2 = np.zeros((n, n))

    def add(self, lead: int, gains: np.ndarray) -> None:
        self.count[lead] += 1
        step = gains - self.mean[lead]
        self.mean[lead] += step / self.count[lead]
        self.m2[lead] += step * (gains - self.mean[lead])

    def estimate(self) -> np.ndarray:
        seen = self.count > 0
        return np.asarray(self.mean[seen].mean(axis=0))

    def squared_error(self) -> float:
        """The largest ``Σ_ℓ s²_ℓ / k_ℓ / n²`` over the sites (every stratum needs two)."""
        if self.count.min() < 2:
            return math.inf
        c = self.count[:, None]
        return float(((self.m2 / (c - 1) / c).sum(axis=0) / self.n**2).max())


def _sample(
    game: RoundGame,
    *,
    method: str,
    rng: np.random.Generator,
    guided: bool,
    truncation: float,
    tolerance: float,
    min_permutations: int | None,
    max_permutations: int,
    server_round: int,
    round_tolerance: float | None = None,
) -> Contributions:
    if not isinstance(rng, np.random.Generator):
        raise ConfigurationError("contribution: rng must be a numpy Generator")
    truncation = _check_fraction(truncation, "truncation")
    tolerance = _check_fraction(tolerance, "tolerance")
    max_permutations = _check_count(max_permutations, "max_permutations", 1)
    n = game.n
    min_permutations = _check_count(
        max(2 * n, 30) if min_permutations is None else min_permutations, "min_permutations", 2
    )
    start, spent = game.now(), game.evaluations
    try:
        total = game.v(game.full)
    except _Exhausted:
        raise ConfigurationError(
            f"contribution: {method} needs value(x) and v(N), "
            f"max_evaluations leaves {game.remaining()}"
        ) from None
    phi = np.zeros(n)
    done, converged, skipped = 0, False, False
    if n == 0:
        pass  # only free-riders: nothing to sample
    elif round_tolerance is not None and abs(total) < round_tolerance:
        converged = skipped = True
    else:
        order = rng.permutation(n)
        stats = _Stratified(n) if guided else _Plain(n)
        cut = truncation * abs(total)
        try:
            while done < max_permutations:
                if guided:
                    lead = int(order[done % n])
                    rest = rng.permutation([i for i in range(n) if i != lead])
                    perm = [lead, *(int(i) for i in rest)]
                else:
                    perm = [int(i) for i in rng.permutation(n)]
                gains = np.zeros(n)
                mask, previous = 0, 0.0
                for i in perm:
                    mask |= 1 << i
                    # truncated once the prefix is within the cut: the rest adds nothing
                    current = previous if abs(total - previous) <= cut else game.v(mask)
                    gains[i] = current - previous
                    previous = current
                done += 1
                stats.add(perm[0], gains)
                phi = stats.estimate()
                # each estimate's squared standard error against the values' own scale
                scale = max(abs(total), float(np.abs(phi).sum()))
                if (
                    done >= min_permutations
                    and (not guided or done % n == 0)
                    and stats.squared_error() <= (tolerance * scale) ** 2
                ):
                    converged = True
                    break
        except _Exhausted:
            pass  # the evaluation bound: keep the complete permutations' estimate
    return Contributions(
        method=method,
        values=game.site_values(phi),
        duplicates=game.duplicates,
        free_riders=game.free_riders,
        total=total,
        baseline=game.baseline,
        evaluations=game.evaluations - spent,
        seconds=game.now() - start,
        permutations=done,
        converged=converged,
        skipped=skipped,
        server_round=server_round,
    )


def tmc_shapley(
    game: RoundGame,
    *,
    rng: np.random.Generator,
    truncation: float = TMC_TRUNCATION,
    tolerance: float = TMC_TOLERANCE,
    min_permutations: int | None = None,
    max_permutations: int = DEFAULT_MAX_PERMUTATIONS,
    server_round: int = 0,
) -> Contributions:
    """Truncated Monte-Carlo Shapley values (Ghorbani and Zou 2019).

    Parameters
    ----------
    game:
        The round (its ``max_evaluations`` bounds the work).
    rng:
        The permutations' generator (seed it for a reproducible estimate).
    truncation:
        A permutation stops evaluating once ``|v(N) − v(prefix)| ≤ truncation · |v(N)|``.
    tolerance:
        Convergence: every site's estimate has a standard error (the sample deviation of
        its marginal gains over √k) of at most ``tolerance · max(|v(N)|, Σ|φᵢ|)``.
    min_permutations:
        Permutations sampled before the test applies (default ``max(2n, 30)``; the floor of
        30 is the GTG authors' own).
    max_permutations:
        The most permutations sampled.
    server_round:
        The round, recorded in the result.
    """
    return _sample(
        game,
        method="tmc_shapley",
        rng=rng,
        guided=False,
        truncation=truncation,
        tolerance=tolerance,
        min_permutations=min_permutations,
        max_permutations=max_permutations,
        server_round=server_round,
    )


def gtg_shapley(
    game: RoundGame,
    *,
    rng: np.random.Generator,
    round_tolerance: float = DEFAULT_ROUND_TOLERANCE,
    truncation: float = GTG_TRUNCATION,
    tolerance: float = GTG_TOLERANCE,
    min_permutations: int | None = None,
    max_permutations: int = DEFAULT_MAX_PERMUTATIONS,
    server_round: int = 0,
) -> Contributions:
    """GTG-Shapley values (Liu et al. 2022): guided truncation within the round.

    As :func:`tmc_shapley`, plus ``round_tolerance`` (in the value function's units): a
    round whose ``|v(N)|`` is below it is skipped (``skipped=True``, every value 0), and
    the permutations rotate which site leads. Its defaults stop sooner than TMC's
    (truncation 3 %, standard error 5 %; see :data:`GTG_TOLERANCE`).

    A round skipped for a small ``|v(N)|`` credits nobody, also when one site's gain and
    another's loss cancel: where that matters, keep ``round_tolerance`` at 0 or use
    :func:`tmc_shapley` or :func:`~biofed.contribution.shapley`.
    """
    if isinstance(round_tolerance, bool) or not isinstance(round_tolerance, (int, float)):
        raise ConfigurationError(
            f"contribution: round_tolerance must be a number, got {round_tolerance!r}"
        )
    if not 0.0 <= float(round_tolerance) < float("inf"):
        raise ConfigurationError(
            f"contribution: round_tolerance must be finite and ≥ 0, got {round_tolerance!r}"
        )
    return _sample(
        game,
        method="gtg_shapley",
        rng=rng,
        guided=True,
        truncation=truncation,
        tolerance=tolerance,
        min_permutations=min_permutations,
        max_permutations=max_permutations,
        server_round=server_round,
        round_tolerance=float(round_tolerance),
    )
