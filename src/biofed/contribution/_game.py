"""One round as a cooperative game: coalition models rebuilt from the round's updates.

The coalition model of ``S`` is ``x + Σ_{i∈S} wᵢΔᵢ / Σ_{i∈S} wᵢ`` (FedAvg's step restricted
to ``S``; the empty coalition is ``x``) and its value ``v(S) = value(model_S) − value(x)``.
No site trains again: this is the reconstruction of Song, Tong and Wei (2019, "Profit
allocation for federated learning") that GTG-Shapley builds on. Values are memoised by
coalition (a bit mask), so every method's evaluation count is the number of distinct calls
of the value function it needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

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
    max_evaluations:
        The most calls of ``value`` this game makes (``value(x)`` included). A method that
        would need more stops (Monte-Carlo methods) or is refused before it starts (exact
        Shapley).
    clock:
        The timer for the methods' wall time (injected for tests).

    Raises
    ------
    ConfigurationError
        No update, a bad site name or weight, a ``max_evaluations`` below 2.
    ParameterMismatch
        An update whose names or shapes are not those of ``x``.
    PayloadError
        An update with NaN or ±Inf.
    """

    __slots__ = (
        "_baseline",
        "_clock",
        "_deltas",
        "_memo",
        "_value",
        "_weights",
        "_x",
        "evaluations",
        "max_evaluations",
        "sites",
    )

    def __init__(
        self,
        x: ParameterSet,
        updates: Updates,
        value: ValueFunction,
        *,
        max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
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
        self._value = value
        self._clock = clock
        self._memo: dict[int, float] = {0: 0.0}
        self._baseline: float | None = None
        self.evaluations = 0
        self.max_evaluations = max_evaluations

    @property
    def n(self) -> int:
        """The number of sites."""
        return len(self.sites)

    @property
    def full(self) -> int:
        """The grand coalition's mask."""
        return (1 << self.n) - 1

    def now(self) -> float:
        """The injected clock's reading."""
        return self._clock()

    def mask(self, coalition: Iterable[str]) -> int:
        """The bit mask of a coalition given by site names."""
        index = {s: i for i, s in enumerate(self.sites)}
        m = 0
        for site in coalition:
            if site not in index:
                raise ConfigurationError(f"contribution: {site!r} sent no update this round")
            m |= 1 << index[site]
        return m

    def model(self, mask: int) -> ParameterSet:
        """The coalition model ``x + Σ wᵢΔᵢ / Σ wᵢ`` over the sites in ``mask`` (``x`` if empty)."""
        members = [i for i in range(self.n) if mask >> i & 1]
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

    def _call(self, params: ParameterSet, what: str) -> float:
        if self.evaluations >= self.max_evaluations:
            raise _Exhausted
        self.evaluations += 1
        try:
            raw = self._value(params)
        except (ArithmeticError, ValueError) as exc:
            raise RoundFailed(f"contribution: the value function failed on {what}: {exc}") from exc
        if isinstance(raw, bool) or not isinstance(raw, (int, float, np.integer, np.floating)):
            raise RoundFailed(
                f"contribution: the value function returned {type(raw).__name__} on {what}, "
                "not a number"
            )
        result = float(raw)
        if not math.isfinite(result):
            raise RoundFailed(
                f"contribution: the value function returned {result} on {what}; "
                "values must be finite"
            )
        return result

    @property
    def baseline(self) -> float:
        """``value(x)``, the empty coalition's score (one evaluation, the first time)."""
        if self._baseline is None:
            self._baseline = self._call(self._x, "the global model")
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
        names = [s for i, s in enumerate(self.sites) if mask >> i & 1]
        result = self._call(self.model(mask), f"the coalition {names}") - base
        self._memo[mask] = result
        return result

    def cost(self, masks: Iterable[int]) -> int:
        """The evaluations computing ``v`` of these coalitions would still take."""
        unknown = {m for m in masks if m not in self._memo}
        return len(unknown) + int(bool(unknown) and self._baseline is None)

    def remaining(self) -> int:
        """Evaluations still allowed."""
        return self.max_evaluations - self.evaluations


class _Exhausted(Exception):
    """Internal: the evaluation budget is spent (Monte-Carlo methods stop on it)."""
