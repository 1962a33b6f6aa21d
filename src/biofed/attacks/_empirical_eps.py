"""Membership-inference metrics: AUC, TPR at a low FPR, and the empirical ε lower bound.

The empirical ε follows Jagielski, Ullman and Oprea 2020 ("Auditing Differentially Private
Machine Learning: How Private is Private SGD?") and Nasr et al. 2021 ("Adversary
Instantiation: Lower Bounds for Differentially Private Machine Learning"): an (ε, δ)-DP
mechanism forces every membership test to satisfy ``FPR + e^ε·FNR ≥ 1 − δ`` and
``FNR + e^ε·FPR ≥ 1 − δ``. Measured error rates are estimates, so each is replaced by its
Clopper–Pearson upper bound (two-sided 95 % interval by default), which makes

    ε_lb = max( log((1 − δ − FPR_hi) / FNR_hi), log((1 − δ − FNR_hi) / FPR_hi) )

a lower bound on the true ε that holds with that confidence; the best threshold over the
attack's scores gives the reported value (0 when no threshold proves anything).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from biofed.core import Array, ConfigurationError
from biofed.tasks import roc_auc


def clopper_pearson_upper(errors: int, trials: int, confidence: float = 0.95) -> float:
    """The upper end of the two-sided Clopper–Pearson interval for ``errors / trials``.

    ``1`` when every trial erred; ``1 − (α/2)^(1/n)`` when none did (α = 1 − confidence).
    """
    if trials < 1 or not 0 <= errors <= trials:
        raise ConfigurationError(f"need 0 ≤ errors ≤ trials and trials ≥ 1, got {errors}/{trials}")
    if not 0 < confidence < 1:
        raise ConfigurationError(f"confidence must be in (0, 1), got {confidence}")
    if errors == trials:
        return 1.0
    alpha = 1.0 - confidence
    return float(beta.ppf(1.0 - alpha / 2.0, errors + 1, trials - errors))


def epsilon_from_rates(
    false_positives: int,
    negatives: int,
    false_negatives: int,
    positives: int,
    delta: float,
    *,
    confidence: float = 0.95,
) -> float:
    """ε_lb of one threshold, from its error counts (see the module docstring); ≥ 0."""
    if not 0 <= delta < 1:
        raise ConfigurationError(f"delta must be in [0, 1), got {delta}")
    fpr = clopper_pearson_upper(false_positives, negatives, confidence)
    fnr = clopper_pearson_upper(false_negatives, positives, confidence)
    best = 0.0
    for num, den in ((1.0 - delta - fpr, fnr), (1.0 - delta - fnr, fpr)):
        if num > 0 and den > 0:
            best = max(best, math.log(num / den))
    return best


def empirical_epsilon(
    member_scores: Array,
    nonmember_scores: Array,
    delta: float,
    *,
    confidence: float = 0.95,
) -> float:
    """The largest ε_lb over every threshold of the scores (higher score = "member").

    Each threshold t predicts "member" for scores ≥ t; both directions of the test are
    covered by the two terms of the bound.
    """
    ins = np.sort(np.asarray(member_scores, dtype=np.float64))
    outs = np.sort(np.asarray(nonmember_scores, dtype=np.float64))
    if ins.size == 0 or outs.size == 0:
        raise ConfigurationError("empirical_epsilon needs member and non-member scores")
    best = 0.0
    for t in np.unique(np.concatenate([ins, outs, [np.inf]])):
        fn = int(np.searchsorted(ins, t, side="left"))  # members scored below t
        fp = int(outs.size - np.searchsorted(outs, t, side="left"))  # non-members ≥ t
        best = max(
            best, epsilon_from_rates(fp, outs.size, fn, ins.size, delta, confidence=confidence)
        )
    return best


def tpr_at_fpr(member_scores: Array, nonmember_scores: Array, fpr: float = 0.01) -> float:
    """The best true-positive rate among thresholds whose false-positive rate is ≤ ``fpr``."""
    ins = np.asarray(member_scores, dtype=np.float64)
    outs = np.sort(np.asarray(nonmember_scores, dtype=np.float64))
    best = 0.0
    for t in np.unique(np.concatenate([ins, [np.inf]])):
        fp = outs.size - np.searchsorted(outs, t, side="left")
        if fp <= fpr * outs.size:
            best = max(best, float((ins >= t).mean()))
    return best


@dataclass(frozen=True, slots=True)
class MembershipResult:
    """One attack's figures against one model.

    Attributes
    ----------
    attack:
        ``"loss"`` or ``"lira"``.
    auc:
        ROC AUC of the membership scores (0.5: no better than chance).
    tpr_at_1pct_fpr:
        TPR at FPR ≤ 1 %.
    empirical_epsilon:
        The ε lower bound (95 % Clopper–Pearson) at the best threshold.
    accountant_epsilon:
        The ε the accountant guarantees for the training (``inf`` without DP).
    """

    attack: str
    auc: float
    tpr_at_1pct_fpr: float
    empirical_epsilon: float
    accountant_epsilon: float

    def to_dict(self) -> dict[str, float | str]:
        """Plain values, for JSON."""
        return {
            "attack": self.attack,
            "auc": self.auc,
            "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr,
            "empirical_epsilon": self.empirical_epsilon,
            "accountant_epsilon": self.accountant_epsilon,
        }


def score_attack(
    attack: str,
    member_scores: Array,
    nonmember_scores: Array,
    *,
    delta: float,
    accountant_epsilon: float = math.inf,
) -> MembershipResult:
    """AUC, TPR at 1 % FPR and empirical ε of membership scores (higher = "member")."""
    ins = np.asarray(member_scores, dtype=np.float64)
    outs = np.asarray(nonmember_scores, dtype=np.float64)
    labels = np.concatenate([np.ones(ins.size), np.zeros(outs.size)])
    auc = float(roc_auc(labels, np.concatenate([ins, outs])))
    return MembershipResult(
        attack=attack,
        auc=auc,
        tpr_at_1pct_fpr=tpr_at_fpr(ins, outs, 0.01),
        empirical_epsilon=empirical_epsilon(ins, outs, delta),
        accountant_epsilon=float(accountant_epsilon),
    )
