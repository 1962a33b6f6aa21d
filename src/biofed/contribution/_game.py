"""One round as a cooperative game: coalition models rebuilt from the round's updates.

The coalition model of ``S`` is ``x + Σ_{i∈S} wᵢΔᵢ / Σ_{i∈S} wᵢ`` (FedAvg's step restricted
to ``S``; the empty coalition is ``x``) and its value ``v(S) = value(model_S) − value(x)``.
No site trains again: this is the reconstruction of Song, Tong and Wei (2019, "Profit
allocation for federated learning") that GTG-Shapley builds on. Values are memoised by
coalition (a bit mask), so every method's evaluation count is the number of distinct calls
of the value function it needed.

Security notes
--------------
Shapley values are not robust to replication (Ohrimenko, Tople and Tschiatschek 2019,
"Collaborative machine learning markets with data-replication-robust payments"; Han et al.
2022, "Replication robust payoff allocation in submodular cooperative games"): a site that
enrols a copy of its data as a second site is credited about 1.5-1.8 times what it gets
alone on Fed-TCGA-BRCA (the earlier of two copies in a permutation takes the larger,
early-position marginal). The game therefore plays near-duplicate updates as **one player**:
sites whose updates have cosine similarity ≥ ``duplicate_cosine`` (default 0.9; two
sites training on one dataset reach 0.93-0.97 there, six different hospitals at most 0.44)
join one group, the group's value is split between its members by weight, and the result
names the group. Defeating it takes noise that turns the update by about 25° or more, which
costs the copy most of the value it was after. Set ``duplicate_cosine=None`` to play every
site alone.

A free-rider (Lin et al. 2019, "Free-riders in federated learning: attacks and defenses")
sends the global model back, ``Δ = 0``, with a plausible weight. In a coalition mean its
weight only shrinks the others' step, and in a round whose aggregate overshoots (every
later round of the Fed-TCGA-BRCA Cox job) the shrinking raises the score: played as a
player, it ranked 3rd of 7 in rounds 2-5 there. The game therefore plays a site whose
update norm is at most ``free_rider_norm`` times the round's median as a **null player**:
left out of every coalition model, value exactly 0, named in the result. A free-rider that
disguises itself with noise of honest size is not caught by this (its noise also dilutes);
that is the policy's work (issue 17, item 3), not this measure's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from biofed.contribution._linear import LinearScore
from biofed.core import (
    Array,
    ConfigurationError,
    ParameterMismatch,
    ParameterSet,
    PayloadError,
    RoundFailed,
)

#: ``value(parameters) -> float``: higher is better (e.g. a trusted validation's score).
ValueFunction = Callable[[ParameterSet], float]

#: A round's updates: ``{site: (Δᵢ = xᵢ − x, weight)}``.
Updates = Mapping[str, tuple[ParameterSet, float]]

#: Updates at least this similar (cosine) are played as one player (see the module notes).
DEFAULT_DUPLICATE_COSINE = 0.9

#: Updates with a norm at most this fraction of the round's median are null players.
DEFAULT_FREE_RIDER_NORM = 0.01

#: The most memory the round's updates may take as float64 (n · d · 8 bytes), like
#: ``strategies.Robust``'s buffered aggregators.
DEFAULT_MAX_UPDATES_BYTES = 256 * 2**20

#: Evaluations any one method may spend unless told otherwise (each is one call of the
#: value function, e.g. one C-index on the trusted data).
DEFAULT_MAX_EVALUATIONS = 5000


def _check_site(site: object) -> str:
    if not isinstance(site, str) or not site:
        raise ConfigurationError(
            f"contribution: site names must be non-empty strings, got {site!r}"
        )
    return site


def _check_weight(site: str, weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
        raise ConfigurationError(
            f"contribution: the weight of {site!r} must be a number, got {type(weight).__name__}"
        )
    w = float(weight)
    if not math.isfinite(w) or w <= 0:
        raise ConfigurationError(
            f"contribution: the weight of {site!r} must be finite and > 0, got {weight!r}"
        )
    return w


def _flatten(site: str, update: object, x: ParameterSet) -> Array:
    if not isinstance(update, ParameterSet):
        raise ConfigurationError(
            f"contribution: the update of {site!r} must be a ParameterSet, "
            f"got {type(update).__name__}"
        )
    names, expected = list(update), list(x)
    if names != expected:
        raise ParameterMismatch(
            f"contribution: the update of {site!r} has parameters {names}, the model has {expected}"
        )
    parts = []
    for name in expected:
        a, ref = update[name], x[name]
        if a.shape != ref.shape:
            raise ParameterMismatch(
                f"contribution: {name!r} of the update of {site!r} has shape {a.shape}, "
                f"the model has {ref.shape}"
            )
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise ParameterMismatch(
                f"contribution: {name!r} of the update of {site!r} has dtype {a.dtype}, "
                "not a number"
            )
        flat = np.asarray(a, dtype=np.float64).ravel()
        if not np.isfinite(flat).all():
            raise PayloadError(
                f"contribution: {name!r} of the update of {site!r} contains NaN or infinite values"
            )
        parts.append(flat)
    return np.concatenate(parts) if parts else np.zeros(0)


class RoundGame:
    """The coalition game of one round, memoised and bounded.

    Parameters
    ----------
    x:
        The global model the round started from.
    updates:
        ``{site: (Δᵢ, weight)}``: each site's update ``xᵢ − x`` (the layout of ``x``; finite)
        and its weight in the mean (finite, > 0; e.g. its capped example count).
    value:
        ``value(parameters) -> float``, higher is better. It must return a finite number.
    duplicate_cosine:
        Sites whose updates have at least this cosine similarity (in (0, 1]) form one
        player, whose value their members share by weight; ``None`` plays every site alone.
        Linked transitively (a chain of similar updates is one group); zero updates are
        never grouped.
    free_rider_norm:
        Sites whose update's L2 norm is at most this fraction (in [0, 1)) of the round's
        median norm are null players: out of every coalition model, value 0 (``None``:
        none). Zero updates are caught at any setting but ``None``.
    max_evaluations:
        The most calls of ``value`` this game makes (``value(x)`` included). A method that
        would need more stops (Monte-Carlo methods) or is refused before it starts (exact
        Shapley).
    max_updates_bytes:
        The most memory the updates may take as float64 (the game keeps them all).
    clock:
        The timer for the methods' wall time (injected for tests).

    Raises
    ------
    ConfigurationError
        No update, a bad site name or weight, a ``max_evaluations`` below 2.
    RoundFailed
        The updates would take more than ``max_updates_bytes``.
    ParameterMismatch
        An update whose names or shapes are not those of ``x``.
    PayloadError
        An update with NaN or ±Inf.
    """

    __slots__ = (
        "_baseline",
        "_clock",
        "_deltas",
        "_linear",
        "_memo",
        "_players",
        "_value",
        "_weights",
        "_x",
        "_x_flat",
        "evaluations",
        "free_riders",
        "groups",
        "max_evaluations",
        "sites",
    )

    def __init__(
        self,
        x: ParameterSet,
        updates: Updates,
        value: ValueFunction,
        *,
        duplicate_cosine: float | None = DEFAULT_DUPLICATE_COSINE,
        free_rider_norm: float | None = DEFAULT_FREE_RIDER_NORM,
        max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
        max_updates_bytes: int = DEFAULT_MAX_UPDATES_BYTES,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not isinstance(x, ParameterSet):
            raise ConfigurationError(
                f"contribution: the global model must be a ParameterSet, got {type(x).__name__}"
            )
        if not isinstance(updates, Mapping) or not updates:
            raise ConfigurationError("contribution: a round needs at least one site's update")
        if not callable(value):
            raise ConfigurationError("contribution: value must be a callable (parameters) -> float")
        if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int):
            raise ConfigurationError(
                f"contribution: max_evaluations must be an integer, got {max_evaluations!r}"
            )
        if max_evaluations < 2:
            raise ConfigurationError(
                f"contribution: max_evaluations must be ≥ 2 (value(x) and v(N)), "
                f"got {max_evaluations}"
            )
        if duplicate_cosine is not None and (
            isinstance(duplicate_cosine, bool)
            or not isinstance(duplicate_cosine, (int, float))
            or not 0.0 < float(duplicate_cosine) <= 1.0
        ):
            raise ConfigurationError(
                "contribution: duplicate_cosine must be in (0, 1] or None, "
                f"got {duplicate_cosine!r}"
            )
        if free_rider_norm is not None and (
            isinstance(free_rider_norm, bool)
            or not isinstance(free_rider_norm, (int, float))
            or not 0.0 <= float(free_rider_norm) < 1.0
        ):
            raise ConfigurationError(
                f"contribution: free_rider_norm must be in [0, 1) or None, got {free_rider_norm!r}"
            )
        needed = len(updates) * x.size * 8
        if needed > max_updates_bytes:
            raise RoundFailed(
                f"contribution: {len(updates)} updates of {x.size} values take {needed} bytes, "
                f"more than max_updates_bytes = {max_updates_bytes}"
            )
        sites, deltas, weights = [], [], []
        for site, entry in updates.items():
            _check_site(site)
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise ConfigurationError(
                    f"contribution: the entry of {site!r} must be (update, weight)"
                )
            sites.append(site)
            deltas.append(_flatten(site, entry[0], x))
            weights.append(_check_weight(site, entry[1]))
        self.sites: tuple[str, ...] = tuple(sites)
        self._x = x
        self._deltas = np.stack(deltas)
        self._weights = np.asarray(weights)
        norms = np.linalg.norm(self._deltas, axis=1)
        null = (
            norms <= float(free_rider_norm) * float(np.median(norms))
            if free_rider_norm is not None
            else np.zeros(len(sites), dtype=bool)
        )
        #: Sites played as null players (no update to speak of): value 0.
        self.free_riders: tuple[str, ...] = tuple(s for s, z in zip(sites, null, strict=True) if z)
        live = np.flatnonzero(~null)
        self._players = tuple(
            tuple(int(live[i]) for i in group)
            for group in _group(self._deltas[live], duplicate_cosine)
        )
        #: The players: each a tuple of site names (one site, or a group of near-duplicates).
        self.groups: tuple[tuple[str, ...], ...] = tuple(
            tuple(self.sites[i] for i in members) for members in self._players
        )
        self._value = value
        #: A LinearScore that fits x: coalitions are scored from their (weight, bias) alone.
        self._linear = value if isinstance(value, LinearScore) and value.fits(x) else None
        self._x_flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in x.values()])
        self._clock = clock
        self._memo: dict[int, float] = {0: 0.0}
        self._baseline: float | None = None
        self.evaluations = 0
        self.max_evaluations = max_evaluations

    @property
    def n(self) -> int:
        """The number of players (sites, with near-duplicates grouped)."""
        return len(self._players)

    @property
    def full(self) -> int:
        """The grand coalition's mask (bit ``k`` is player ``k``)."""
        return (1 << self.n) - 1

    @property
    def duplicates(self) -> tuple[tuple[str, ...], ...]:
        """The groups of more than one site."""
        return tuple(g for g in self.groups if len(g) > 1)

    def now(self) -> float:
        """The injected clock's reading."""
        return self._clock()

    def site_values(self, player_values: Iterable[float]) -> dict[str, float]:
        """Each site's value: its player's value, split between a group's members by weight
        (0 for a free-rider)."""
        out = dict.fromkeys(self.free_riders, 0.0)
        for members, value in zip(self._players, player_values, strict=True):
            w = self._weights[list(members)]
            for i, share in zip(members, w / w.sum(), strict=True):
                out[self.sites[i]] = float(value) * float(share)
        return {s: out[s] for s in self.sites}

    def model(self, mask: int) -> ParameterSet:
        """The coalition model ``x + Σ wᵢΔᵢ / Σ wᵢ`` over the sites of the players in ``mask``
        (``x`` if empty)."""
        members = [i for k, p in enumerate(self._players) if mask >> k & 1 for i in p]
        if not members:
            return self._x
        w = self._weights[members]
        step = (w @ self._deltas[members]) / w.sum()
        arrays: dict[str, Any] = {}
        offset = 0
        for name, ref in self._x.items():
            size = int(ref.size)
            part = step[offset : offset + size].reshape(ref.shape)
            dtype = ref.dtype if np.issubdtype(ref.dtype, np.floating) else np.dtype(np.float64)
            arrays[name] = (np.asarray(ref, dtype=np.float64) + part).astype(dtype)
            offset += size
        return ParameterSet(arrays)

    def _linear_value(self, mask: int) -> float:
        """``value(model(mask))`` for a :class:`LinearScore`: the same parameters (float64
        step, cast to ``x``'s dtype), without building a ParameterSet or a loss."""
        assert self._linear is not None
        members = [i for k, p in enumerate(self._players) if mask >> k & 1 for i in p]
        w = self._weights[members]
        step = (w @ self._deltas[members]) / w.sum()
        flat = self._x_flat
        # model()'s arithmetic, parameter by parameter: (x + step) in float64, cast to x's
        # dtype, read back as float64 by the task's evaluate.
        weight_dtype, bias_dtype = self._x["weight"].dtype, self._x["bias"].dtype
        p = flat.size - 1
        weight = (flat[:p] + step[:p]).astype(weight_dtype).astype(np.float64)
        bias = (flat[p:] + step[p:]).astype(bias_dtype).astype(np.float64)[0]
        return self._linear.of_prediction(self._linear.predict(weight, bias))

    def _what(self, mask: int | None) -> str:
        if mask is None:
            return "the global model"
        names = [s for k, g in enumerate(self.groups) if mask >> k & 1 for s in g]
        return f"the coalition {names}"

    def _call(self, params: ParameterSet | int, mask: int | None) -> float:
        """``value`` of ``params`` (or, for a LinearScore, of the coalition ``params``);
        ``mask`` names the coalition in messages (None: the global model)."""
        if self.evaluations >= self.max_evaluations:
            raise _Exhausted
        self.evaluations += 1
        try:
            raw = self._linear_value(params) if isinstance(params, int) else self._value(params)
        except (ArithmeticError, ValueError) as exc:
            raise RoundFailed(
                f"contribution: the value function failed on {self._what(mask)}: {exc}"
            ) from exc
        if isinstance(raw, bool) or not isinstance(raw, (int, float, np.integer, np.floating)):
            raise RoundFailed(
                f"contribution: the value function returned {type(raw).__name__} on "
                f"{self._what(mask)}, "
                "not a number"
            )
        result = float(raw)
        if not math.isfinite(result):
            raise RoundFailed(
                f"contribution: the value function returned {result} on {self._what(mask)}; "
                "values must be finite"
            )
        return result

    @property
    def baseline(self) -> float:
        """``value(x)``, the empty coalition's score (one evaluation, the first time)."""
        if self._baseline is None:
            self._baseline = self._call(self._x, None)
        return self._baseline

    def has(self, mask: int) -> bool:
        """Whether ``v(mask)`` is already known (costs nothing)."""
        return mask in self._memo

    def v(self, mask: int) -> float:
        """``v(S) = value(model_S) − value(x)``, memoised; ``v(∅) = 0``.

        Raises
        ------
        RoundFailed
            If the value function fails or returns something other than a finite number.
        """
        known = self._memo.get(mask)
        if known is not None:
            return known
        base = self.baseline
        coalition: ParameterSet | int = (
            mask if self._linear is not None and mask else self.model(mask)
        )
        result = self._call(coalition, mask) - base
        self._memo[mask] = result
        return result

    def cost(self, masks: Iterable[int]) -> int:
        """The evaluations computing ``v`` of these coalitions would still take."""
        unknown = {m for m in masks if m not in self._memo}
        return len(unknown) + int(bool(unknown) and self._baseline is None)

    def remaining(self) -> int:
        """Evaluations still allowed."""
        return self.max_evaluations - self.evaluations


def _group(deltas: Array, cosine: float | None) -> tuple[tuple[int, ...], ...]:
    """Sites linked by cosine similarity ≥ ``cosine`` (transitively), in first-seen order."""
    n = len(deltas)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if cosine is not None and n > 1:
        norms = np.linalg.norm(deltas, axis=1)
        live = np.flatnonzero(norms > 0)
        unit = deltas[live] / norms[live, None]
        similar = unit @ unit.T >= float(cosine) - 1e-12
        for a, b in zip(*np.nonzero(np.triu(similar, k=1)), strict=True):
            parent[root(int(live[b]))] = root(int(live[a]))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return tuple(tuple(g) for g in groups.values())


class _Exhausted(Exception):
    """Internal: the evaluation budget is spent (Monte-Carlo methods stop on it)."""
