"""Noise calibration: the smallest noise multiplier whose ε stays within a target."""

from __future__ import annotations

import math
from collections.abc import Callable

from biofed.core import ConfigurationError
from biofed.core.checks import check_float
from biofed.privacy._accountant import Accountant, make_accountant
from biofed.privacy._checks import check_delta, check_sampling_rate, check_steps

#: The search range for the noise multiplier.
MIN_NOISE_MULTIPLIER = 1e-3
MAX_NOISE_MULTIPLIER = 1e4


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    accountant: str = "pld",
    *,
    tolerance: float = 1e-3,
) -> float:
    """The noise multiplier z for which ``steps`` steps at rate q cost at most ε(δ) = target.

    Parameters
    ----------
    target_epsilon:
        The ε not to exceed (> 0).
    delta:
        0 < δ < 1.
    sampling_rate:
        Poisson sampling rate q, 0 < q ≤ 1.
    steps:
        Number of steps T ≥ 1.
    accountant:
        ``"pld"`` (near-tight, slower) or ``"rdp"`` (fast, gives a larger z).
    tolerance:
        Relative precision: the search stops when z is known to within a factor
        ``1 + tolerance`` or its ε is within ``tolerance`` · target below the target.

    Returns
    -------
    float
        z with ``accountant.epsilon(δ) ≤ target_epsilon`` after ``step(z, q, steps)``.

    Raises
    ------
    ConfigurationError
        On invalid arguments, or when even z = 1e4 does not reach the target.

    Privacy notes
    -------------
    The result never overshoots: it is always a z at which the same accountant was
    evaluated and found ε ≤ target (the search keeps that end of the bracket), so it does not
    rely on ε being exactly monotone in z under numerical discretisation. For PLD, the RDP
    answer is used as the starting upper end (RDP bounds PLD from above), which saves
    evaluations. If ε ≤ target already at z = 1e-3, that z is returned.
    """
    target = check_float(target_epsilon, "target_epsilon", above=0)
    d = check_delta(delta)
    q = check_sampling_rate(sampling_rate)
    t = check_steps(steps)
    tol = check_float(tolerance, "tolerance", above=0)
    make_accountant(accountant)  # validate the name before any work

    def epsilon_at(z: float) -> float:
        acc: Accountant = make_accountant(accountant)
        acc.step(z, q, t)
        return acc.epsilon(d)

    if accountant == "pld":
        # RDP's z is admissible for PLD too; PLD's is usually within 25 % below it.
        rdp_z = calibrate_noise(target, d, q, t, "rdp", tolerance=tol)
        return _search(epsilon_at, target, rdp_z, 1.25, tol)
    return _search(epsilon_at, target, 1.0, 2.0, tol)


def _search(
    epsilon_at: Callable[[float], float], target: float, start: float, factor: float, tol: float
) -> float:
    """The smallest z (to ``tol``) with epsilon_at(z) ≤ target.

    Brackets outwards from ``start`` by ``factor``, then narrows the bracket by regula falsi
    (Illinois variant) on log ε against log z, which is nearly linear, falling back to
    bisection. Only ever returns a z whose ε was computed and found ≤ target.
    """
    lo = hi = min(max(start, MIN_NOISE_MULTIPLIER), MAX_NOISE_MULTIPLIER)
    e_lo = e_hi = epsilon_at(hi)
    if e_hi <= target:
        while True:  # walk down until lo is not admissible
            if hi <= MIN_NOISE_MULTIPLIER:
                return hi
            lo = max(hi / factor, MIN_NOISE_MULTIPLIER)
            e_lo = epsilon_at(lo)
            if e_lo > target:
                break
            hi, e_hi = lo, e_lo
    else:
        while True:  # walk up until hi is admissible
            if lo >= MAX_NOISE_MULTIPLIER:
                raise ConfigurationError(
                    f"no noise multiplier up to {MAX_NOISE_MULTIPLIER:g} reaches the target ε; "
                    "raise the target ε or δ, or lower the sampling rate or the steps"
                )
            hi = min(lo * factor, MAX_NOISE_MULTIPLIER)
            e_hi = epsilon_at(hi)
            if e_hi <= target:
                break
            lo, e_lo = hi, e_hi

    def gap(e: float) -> float:  # log(ε / target): > 0 too little noise, ≤ 0 admissible
        if e <= 0:
            return -math.inf
        return math.log(e / target) if math.isfinite(e) else math.inf

    f_lo, f_hi = gap(e_lo), gap(e_hi)
    kept = 0  # +1: hi moved last time, -1: lo moved last time (for the Illinois step)
    while hi / lo > 1 + tol and e_hi < target * (1 - tol):
        a, b = math.log(lo), math.log(hi)
        x = (a + b) / 2
        if math.isfinite(f_lo) and math.isfinite(f_hi) and f_lo != f_hi:
            x = b - f_hi * (b - a) / (f_hi - f_lo)
            x = min(max(x, a + 0.01 * (b - a)), b - 0.01 * (b - a))
        mid = math.exp(x)
        if not lo < mid < hi:
            break
        e_mid = epsilon_at(mid)
        if e_mid <= target:
            hi, e_hi, f_hi = mid, e_mid, gap(e_mid)
            if kept == 1:
                f_lo /= 2
            kept = 1
        else:
            lo, e_lo, f_lo = mid, e_mid, gap(e_mid)
            if kept == -1:
                f_hi /= 2
            kept = -1
    return hi
