"""Membership inference: the empirical ε bound against hand-computed values, the metrics on
tiny tables, and the loss attack on a real federated model (Fed-TCGA-BRCA, FedAvg, 6 sites):
above chance for its own training records, at chance for a control split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from biofed.attacks import (
    clopper_pearson_upper,
    empirical_epsilon,
    epsilon_from_rates,
    lira_scores,
    membership_inference,
    score_attack,
    tpr_at_fpr,
    train_federated,
)
from biofed.core import ConfigurationError
from biofed.datasets import load_tcga_brca

torch.set_num_threads(1)


def test_clopper_pearson_upper_bounds_by_hand() -> None:
    # no error in n trials: 1 − (α/2)^(1/n); every trial erred: 1
    assert clopper_pearson_upper(0, 100) == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-9)
    assert clopper_pearson_upper(0, 1) == pytest.approx(0.975, rel=1e-9)
    assert clopper_pearson_upper(7, 7) == 1.0
    # n − 1 errors of n: the upper end solves P(X ≥ n−1) = α/2... its lower end is the
    # mirror of k = 1; the upper end of k = 1 of 2 solves 1 − (1 − p)² = 1 − α/2... i.e.
    # P(X ≤ 1) = 1 − p² = α/2 → p = √(1 − α/2)
    assert clopper_pearson_upper(1, 2) == pytest.approx(math.sqrt(1 - 0.025), rel=1e-9)
    with pytest.raises(ConfigurationError):
        clopper_pearson_upper(3, 2)


def test_epsilon_from_rates_by_hand() -> None:
    u = 1 - 0.025 ** (1 / 100)  # both error counts 0 of 100
    assert epsilon_from_rates(0, 100, 0, 100, 1e-5) == pytest.approx(
        math.log((1 - 1e-5 - u) / u), rel=1e-9
    )
    # all members missed: FNR_hi = 1, the first term is log((1−δ−FPR_hi)/1) < 0 and the
    # second log((1−δ−1)/FPR_hi) is undefined: nothing is proven
    assert epsilon_from_rates(0, 100, 100, 100, 1e-5) == 0.0
    # asymmetric table: FP 0 of 50, FN 0 of 200
    fpr, fnr = 1 - 0.025 ** (1 / 50), 1 - 0.025 ** (1 / 200)
    want = max(math.log((1 - 0.01 - fpr) / fnr), math.log((1 - 0.01 - fnr) / fpr))
    assert epsilon_from_rates(0, 50, 0, 200, 0.01) == pytest.approx(want, rel=1e-9)


def test_empirical_epsilon_takes_the_best_threshold() -> None:
    members = np.linspace(1.0, 2.0, 100)
    nonmembers = np.linspace(-2.0, -1.0, 100)  # perfectly separated: FP = FN = 0 at t = 0
    u = 1 - 0.025 ** (1 / 100)
    assert empirical_epsilon(members, nonmembers, 1e-5) == pytest.approx(
        math.log((1 - 1e-5 - u) / u), rel=1e-9
    )
    # identical scores prove nothing
    assert empirical_epsilon(np.zeros(50), np.zeros(50), 1e-5) == 0.0


def test_tpr_at_fpr_and_auc_on_a_tiny_table() -> None:
    members = np.array([0.9, 0.8, 0.3, 0.1])
    nonmembers = np.array([0.85, 0.2, 0.15, 0.05])
    # FPR 0: only scores above 0.85 count -> 0.9: TPR 1/4; FPR ≤ 1/4 lets t fall to 0.3
    # (non-members ≥ 0.3: only 0.85): TPR 3/4
    assert tpr_at_fpr(members, nonmembers, 0.0) == 0.25
    assert tpr_at_fpr(members, nonmembers, 0.25) == 0.75
    result = score_attack("loss", members, nonmembers, delta=1e-5, accountant_epsilon=8.0)
    # pairs (m > n): 0.9: 4, 0.8: 3, 0.3: 3, 0.1: 1 -> 11/16
    assert result.auc == pytest.approx(11 / 16)
    assert result.accountant_epsilon == 8.0


def test_lira_scores_prefer_the_in_distribution() -> None:
    # two records; shadows trained on record 0 give it φ ≈ 4, others φ ≈ 0
    shadow_in = np.array([[True, False], [False, True], [True, True], [False, False]])
    phi = np.where(shadow_in, 4.0, 0.0) + np.array(
        [[0.1, -0.1], [-0.1, 0.1], [0.0, 0.2], [0.2, 0.0]]
    )
    scores = lira_scores(np.array([4.0, 0.0]), phi, shadow_in)
    assert scores[0] > 0 > scores[1]
    with pytest.raises(ConfigurationError):
        lira_scores(np.zeros(2), phi, np.ones_like(shadow_in))


@pytest.fixture(scope="module")
def overfit_model() -> tuple[object, np.ndarray, np.ndarray, np.ndarray]:
    """The victim MLP overfit by FedAvg on 6 sites × 16 Fed-TCGA-BRCA records (label: the
    event indicator, a hard task it memorises: training accuracy 1, held-out ≈ 0.86).

    WDBC is nearly separable, so even an overfit model gives its held-out records losses as
    small as its members' and the loss attack stays near chance there; see the report.
    """
    fed = load_tcga_brca()
    parts = [fed.sites[s].train for s in fed.sites] + [fed.sites[s].test for s in fed.sites]
    x = np.concatenate([d.features for d in parts]).astype(np.float64)
    y = np.concatenate([d.targets["event"] for d in parts]).astype(np.float64)
    sd = x.std(0)
    x = (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)
    rows = np.random.default_rng(0).permutation(len(x))
    x, y = x[rows], y[rows]
    member = np.zeros(len(x), dtype=bool)
    member[:96] = True  # 6 sites × 16 records train; the other 992 are held out
    params, spent = train_federated(x[member], y[member], epsilon=math.inf)
    assert spent == math.inf
    return params, x, y, member


@pytest.mark.slow
def test_loss_attack_beats_chance_on_an_overfit_federated_model(
    overfit_model: tuple[object, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    params, x, y, member = overfit_model
    result = membership_inference(params, x, y, member)["loss"]  # type: ignore[arg-type]
    assert result.auc > 0.53


@pytest.mark.slow
def test_loss_attack_is_at_chance_when_members_and_non_members_match(
    overfit_model: tuple[object, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Control: both 'members' and 'non-members' are held-out records (drawn alike)."""
    params, x, y, member = overfit_model
    held = ~member
    fake = np.zeros(held.sum(), dtype=bool)
    fake[np.random.default_rng(1).permutation(held.sum())[: held.sum() // 2]] = True
    result = membership_inference(params, x[held], y[held], fake)["loss"]  # type: ignore[arg-type]
    assert abs(result.auc - 0.5) < 0.06  # 496 vs 496: the AUC's sd under the null is 0.018
