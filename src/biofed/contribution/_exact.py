"""Leave-one-out and exact Shapley values of a round."""

from __future__ import annotations

import math

import numpy as np

from biofed.contribution._game import RoundGame
from biofed.contribution._result import Contributions
from biofed.core import ConfigurationError

#: The largest consortium exact Shapley accepts (2^10 = 1024 coalition evaluations).
MAX_EXACT_SITES = 10


def leave_one_out(game: RoundGame, *, server_round: int = 0) -> Contributions:
    """Each site's value ``v(N) − v(N \\ {i})``: what the round loses without it.

    Costs ``n + 2`` evaluations (``value(x)``, ``v(N)`` and one per site). Cheap, but it
    credits nothing to a site whose data another site duplicates (each copy is redundant
    given the other), and its values need not sum to ``v(N)``.
    """
    start, spent = game.now(), game.evaluations
    needed = game.cost([game.full, *(game.full & ~(1 << i) for i in range(game.n))])
    if needed > game.remaining():
        raise ConfigurationError(
            f"contribution: leave-one-out over {game.n} players needs {needed} evaluations, "
            f"max_evaluations leaves {game.remaining()}"
        )
    total = game.v(game.full)
    values = game.site_values(total - game.v(game.full & ~(1 << k)) for k in range(game.n))
    return Contributions(
        method="leave_one_out",
        values=values,
        duplicates=game.duplicates,
        free_riders=game.free_riders,
        total=total,
        baseline=game.baseline,
        evaluations=game.evaluations - spent,
        seconds=game.now() - start,
        server_round=server_round,
    )


def _popcount(masks: np.ndarray) -> np.ndarray:
    counts = np.zeros(masks.shape, dtype=np.int64)
    m = masks.copy()
    while m.any():
        counts += m & 1
        m >>= 1
    return counts


def shapley_of_table(v: np.ndarray, n: int) -> list[float]:
    """Each player's exact Shapley value from ``v[mask]`` for every coalition mask (bit ``k``
    is player ``k``; ``len(v) == 2^n``)."""
    masks = np.arange(1 << n, dtype=np.int64)
    k = _popcount(masks)
    # weight of a coalition S of size k not containing i: k! (n − k − 1)! / n!
    weight = np.array([math.factorial(j) * math.factorial(n - j - 1) for j in range(n)]) / (
        math.factorial(n)
    )
    players = []
    for i in range(n):
        bit = 1 << i
        without = masks[(masks & bit) == 0]
        players.append(float(np.sum(weight[k[without]] * (v[without | bit] - v[without]))))
    return players


def shapley(game: RoundGame, *, server_round: int = 0) -> Contributions:
    """Exact Shapley values (Shapley 1953) over every coalition of the round's sites.

    ``φᵢ = Σ_{S ⊆ N∖{i}} |S|! (n − |S| − 1)! / n! · (v(S ∪ {i}) − v(S))``, from all ``2^n``
    coalition values (``2^n`` evaluations with ``value(x)``). Refused for more than
    :data:`MAX_EXACT_SITES` sites, or when ``2^n`` exceeds the game's ``max_evaluations``:
    use :func:`gtg_shapley` or :func:`tmc_shapley`.
    """
    n = game.n
    if n > MAX_EXACT_SITES:
        raise ConfigurationError(
            f"contribution: exact Shapley is for at most {MAX_EXACT_SITES} sites "
            f"(2^n coalition evaluations), this round has {n} players; "
            "use gtg_shapley or tmc_shapley"
        )
    needed = game.cost(range(1 << n))
    if needed > game.remaining():
        raise ConfigurationError(
            f"contribution: exact Shapley over {n} sites needs {needed} more evaluations, "
            f"max_evaluations leaves {game.remaining()}"
        )
    start, spent = game.now(), game.evaluations
    size = 1 << n
    v = np.array([game.v(m) for m in range(size)])
    players = shapley_of_table(v, n)
    return Contributions(
        method="shapley",
        values=game.site_values(players),
        duplicates=game.duplicates,
        free_riders=game.free_riders,
        total=float(v[size - 1]),
        baseline=game.baseline,
        evaluations=game.evaluations - spent,
        seconds=game.now() - start,
        server_round=server_round,
    )
