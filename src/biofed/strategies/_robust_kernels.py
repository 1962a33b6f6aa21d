"""Robust aggregation kernels: pure numpy over the sites' updates as an ``(n, d)`` matrix.

Each kernel takes the updates ``Δᵢ = xᵢ − x`` as the rows of a float64 matrix (and,
where the rule uses them, positive weights ``w``) and returns the aggregate update with the
figures :class:`~biofed.strategies.Robust` reports per update. The strategy, its streaming
folds, decisions and refusals live in ``_robust.py``; this module is only the maths.

Why our own code: the rules are a few lines each from their papers, and the libraries that
ship them (Flower's strategies, FedML's defences) tie them to their own message types and
copy the update matrix per step. Here every order statistic and distance works through the
columns in blocks of :data:`BLOCK_COLUMNS`, so the temporaries stay ``n × BLOCK_COLUMNS``
however large the model, on top of the ``n × d`` matrix the caller already bounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from biofed.core import Array

#: Columns per block for sorts and distances (a temporary of n × 16 Ki float64).
BLOCK_COLUMNS = 1 << 14


def _blocks(d: int) -> range:
    return range(0, d, BLOCK_COLUMNS)


def weighted_mean(rows: Array, w: Array) -> Array:
    """``Σ wᵢ uᵢ / Σ wᵢ``."""
    out: Array = (w @ rows) / float(w.sum())
    return out


def clip_vector(u: Array, bound: float) -> tuple[Array, float]:
    """``u`` scaled to L2 norm at most ``bound`` (in place) and its norm before."""
    norm = math.sqrt(float(u @ u))
    if norm > bound:
        u *= bound / norm
    return u, norm


def trim_count(trim: float, n: int) -> int:
    """How many of ``n`` values the trimmed mean drops per side for fraction ``trim``:
    ``⌈trim·n⌉`` (so at least 1 whenever ``trim > 0``), 0 for ``trim = 0``.

    Rounding up, not down: with ``⌊trim·n⌋`` the default ``trim = 0.1`` drops nothing from
    fewer than 10 updates (a 6-site federation got the plain mean, breakdown point 0). The
    product is taken less 1e-9 so that a fraction like 0.1·30 = 3.0000000000000004 counts 3.
    """
    if trim <= 0.0:
        return 0
    return max(1, math.ceil(trim * n - 1e-9))


def coordinate_median(rows: Array) -> Array:
    """The coordinate-wise median of the rows (mean of the two middle values for even n)."""
    d = rows.shape[1]
    out = np.empty(d, dtype=np.float64)
    for start in _blocks(d):
        stop = min(start + BLOCK_COLUMNS, d)
        out[start:stop] = np.median(rows[:, start:stop], axis=0)
    return out


def trimmed_mean(rows: Array, k: int) -> tuple[Array, Array]:
    """The coordinate-wise mean of the rows after dropping the ``k`` largest and ``k``
    smallest values of each coordinate (needs ``n > 2k``).

    Returns the aggregate and, per row, the fraction of its coordinates that were dropped.
    """
    n, d = rows.shape
    if not n > 2 * k:
        raise ValueError(f"trimming {k} per side needs more than {2 * k} rows, got {n}")
    out = np.empty(d, dtype=np.float64)
    dropped = np.zeros(n, dtype=np.int64)
    for start in _blocks(d):
        stop = min(start + BLOCK_COLUMNS, d)
        block = rows[:, start:stop]
        order = np.argsort(block, axis=0, kind="stable")
        kept = np.take_along_axis(block, order[k : n - k], axis=0)
        out[start:stop] = kept.mean(axis=0)
        if k:
            dropped += np.bincount(order[:k].ravel(), minlength=n)
            dropped += np.bincount(order[n - k :].ravel(), minlength=n)
    return out, dropped / max(d, 1)


def pairwise_squared_distances(rows: Array) -> Array:
    """``sq[i, j] = ‖uᵢ − uⱼ‖²``, computed from the differences (exact symmetry, no
    cancellation of large norms as a Gram-matrix formula would suffer)."""
    n, d = rows.shape
    sq = np.zeros((n, n), dtype=np.float64)
    for start in _blocks(d):
        stop = min(start + BLOCK_COLUMNS, d)
        block = rows[:, start:stop]
        for i in range(n):
            diff = block - block[i]
            sq[i] += np.einsum("ij,ij->i", diff, diff)
    return sq


def krum_scores(rows: Array, f: int) -> Array:
    """Krum's score of each row: the sum of its squared distances to its ``n − f − 2``
    nearest other rows (Blanchard et al. 2017). Needs ``n > 2f + 2``."""
    n = rows.shape[0]
    if not n > 2 * f + 2:
        raise ValueError(f"Krum with f = {f} needs more than {2 * f + 2} rows, got {n}")
    sq = pairwise_squared_distances(rows)
    nearest = n - f - 2
    scores = np.empty(n, dtype=np.float64)
    for i in range(n):
        others = np.sort(np.delete(sq[i], i))
        scores[i] = float(others[:nearest].sum())
    return scores


def row_distances(rows: Array, v: Array) -> Array:
    """``‖uᵢ − v‖`` for every row."""
    n, d = rows.shape
    sq = np.zeros(n, dtype=np.float64)
    for start in _blocks(d):
        stop = min(start + BLOCK_COLUMNS, d)
        diff = rows[:, start:stop] - v[start:stop]
        sq += np.einsum("ij,ij->i", diff, diff)
    out: Array = np.sqrt(sq)
    return out


def geometric_median(
    rows: Array, w: Array, *, iterations: int, nu: float, xtol: float = 1e-12
) -> tuple[Array, Array, int]:
    """The weighted geometric median ``argmin_v Σ αᵢ ‖v − uᵢ‖`` by smoothed Weiszfeld
    iterations (Pillutla, Kakade, Harchaoui 2022, Algorithm 2).

    ``α = w / Σ w``; start at the weighted mean; each step reweighs ``βᵢ = αᵢ / max(ν,
    ‖v − uᵢ‖)`` and sets ``v = Σ βᵢ uᵢ / Σ βᵢ``; stops after ``iterations`` steps or once a
    step moves ``v`` by at most ``xtol·(1 + ‖v‖)`` (a test on the objective, as in the
    paper, stops too early when a far outlier dominates it). Returns the median, the final
    effective weights ``β / Σ β`` and the number of steps taken.

    Security: a site sending finite values near the float64 limit (1e300) drags the
    weighted mean so far that every distance overflows to inf, every ``β`` becomes 0 and
    the next step 0/0 = NaN, so one liar would fail every round. When any distance from
    the mean is not finite the iterations start at the coordinate-wise median instead
    (within the honest range while most sites are honest), from which only the liar's
    distance overflows and its ``β`` is 0.
    """
    alpha = w / float(w.sum())
    v = alpha @ rows
    dist = row_distances(rows, v)
    if not np.isfinite(dist).all():
        v = coordinate_median(rows)
        dist = row_distances(rows, v)
    beta = alpha
    steps = 0
    while steps < iterations:
        steps += 1
        beta = alpha / np.maximum(dist, nu)
        if not float(beta.sum()) > 0.0:  # every distance overflowed: keep v
            break
        new_v = (beta @ rows) / float(beta.sum())
        moved = math.sqrt(float((new_v - v) @ (new_v - v)))
        v = new_v
        dist = row_distances(rows, v)
        if moved <= xtol * (1.0 + math.sqrt(float(v @ v))):
            break
    total = float(beta.sum())
    return v, (beta / total if total > 0.0 else alpha), steps


def clip_scale(dist: Array, tau: float) -> Array:
    """``min(1, τ / dᵢ)`` for every distance (1 for ``dᵢ ≤ τ``, including 0)."""
    out: Array = np.divide(tau, dist, out=np.ones_like(dist), where=dist > tau)
    return out


def centered_clipping(
    rows: Array, w: Array, reference: Array, *, tau: float, iterations: int
) -> tuple[Array, Array]:
    """Centred clipping (Karimireddy, He, Jaggi 2021): starting from ``v = reference``,
    ``iterations`` times ``v ← v + Σ αᵢ (uᵢ − v)·min(1, τ / ‖uᵢ − v‖)`` with ``α = w / Σ w``.

    Returns the aggregate and each row's distance to the centre of the last iteration.
    """
    alpha = w / float(w.sum())
    v = np.array(reference, dtype=np.float64, copy=True)
    dist = np.zeros(rows.shape[0], dtype=np.float64)
    for _ in range(iterations):
        dist = row_distances(rows, v)
        scale = clip_scale(dist, tau)
        c = alpha * scale
        v = v + c @ rows - float(c.sum()) * v
    return v, dist


def fltrust_coefficient(u: Array, g0: Array, g0_norm: float) -> tuple[float, float]:
    """FLTrust's trust score of one update and the factor it enters the sum with.

    Trust ``ReLU(cos(u, g₀))``; the update is rescaled to ``‖g₀‖``, so it enters as
    ``trust · ‖g₀‖/‖u‖ · u``. A zero update (or a zero ``g₀``) has trust 0.
    """
    norm = math.sqrt(float(u @ u))
    if norm == 0.0 or g0_norm == 0.0:
        return 0.0, 0.0
    trust = max(0.0, float(u @ g0) / (norm * g0_norm))
    return trust, trust * g0_norm / norm


def fltrust(rows: Array, g0: Array, factors: Array | None = None) -> tuple[Array | None, Array]:
    """FLTrust (Cao, Fang, Liu, Gong, NDSS 2021): ``Σ TSᵢ ĝᵢ / Σ TSᵢ`` with ``TSᵢ =
    ReLU(cos(gᵢ, g₀))`` and ``ĝᵢ = gᵢ · ‖g₀‖/‖gᵢ‖``; each trust optionally multiplied by
    ``factors``. Returns ``None`` as the aggregate when every trust is 0, and the trusts.
    """
    g0_norm = math.sqrt(float(g0 @ g0))
    n = rows.shape[0]
    trust = np.zeros(n, dtype=np.float64)
    coeff = np.zeros(n, dtype=np.float64)
    for i in range(n):
        trust[i], coeff[i] = fltrust_coefficient(rows[i], g0, g0_norm)
    if factors is not None:
        trust *= factors
        coeff *= factors
    total = float(trust.sum())
    if total <= 0.0:
        return None, trust
    out: Array = (coeff @ rows) / total
    return out, trust


#: Metrics that are fractions in [0, 1] (the tasks' primary metrics): a site's value outside
#: that range is an impossible claim and is not counted. Without this a site claiming
#: C-index 1e99 (the exchange bounds metrics only at ±1e100) owned a mean-combined metric.
FRACTION_METRICS = frozenset({"c_index", "roc_auc", "accuracy"})


def combine_metrics(
    entries: Sequence[tuple[float, Mapping[str, float]]],
    how: Literal["median", "trimmed", "mean"],
    *,
    f: int | None = None,
    trim: float = 0.0,
) -> dict[str, float]:
    """Each finite metric combined over the ``(weight, metrics)`` entries that report it.

    Values of :data:`FRACTION_METRICS` outside [0, 1] are left out like non-finite ones.
    ``median``: the median of the values; ``trimmed``: their mean after dropping ``k = f``
    (else :func:`trim_count` ``(trim, m)``) of the m values per side, the median when
    ``m ≤ 2k``; ``mean``: the weighted mean.
    """
    by_name: dict[str, list[tuple[float, float]]] = {}
    for weight, metrics in entries:
        for name, value in metrics.items():
            if name in FRACTION_METRICS and not 0.0 <= value <= 1.0:
                continue  # an impossible claim (C-index 1e99) is not counted
            if isinstance(value, int | float) and math.isfinite(value):
                by_name.setdefault(name, []).append((float(weight), float(value)))
    out: dict[str, float] = {}
    for name, pairs in sorted(by_name.items()):
        values = sorted(v for _, v in pairs)
        m = len(values)
        k = f if f is not None else trim_count(trim, m)
        if how == "trimmed" and m > 2 * k:
            out[name] = float(np.mean(values[k : m - k]))
        elif how in ("median", "trimmed"):
            out[name] = float(np.median(values))
        else:
            total = sum(w for w, _ in pairs)
            if total > 0:
                out[name] = float(sum(w * v for w, v in pairs) / total)
    return out
