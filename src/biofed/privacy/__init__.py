"""biofed.privacy: clipping, noise, adaptive clipping, accountants and noise calibration.

Layer L1: numpy, scipy, ``dp-accounting`` and ``cryptography`` only; no torch, nothing above
:mod:`biofed.core`.
"""

from biofed.privacy._accountant import (
    ACCOUNTANTS,
    PLD_VALUE_DISCRETIZATION_INTERVAL,
    Accountant,
    PldAccountant,
    RdpAccountant,
    SampledGaussian,
    make_accountant,
)
from biofed.privacy._adaptive import AdaptiveClipping
from biofed.privacy._calibrate import calibrate_noise
from biofed.privacy._checks import check_real
from biofed.privacy._clip import clip_l2, l2_norm
from biofed.privacy._noise import GaussianNoise, LaplaceNoise
from biofed.privacy._settings import (
    DELTA_METRIC,
    EPSILON_METRIC,
    GUARANTEE_METRIC,
    GUARANTEES,
    NOISE_PLACEMENTS,
    PRIVACY_MODES,
    PRIVACY_PREFIX,
    DPSettings,
    guarantee_code,
    guarantee_label,
    noise_in_sum,
)

__all__ = [
    "ACCOUNTANTS",
    "DELTA_METRIC",
    "EPSILON_METRIC",
    "GUARANTEES",
    "GUARANTEE_METRIC",
    "NOISE_PLACEMENTS",
    "PLD_VALUE_DISCRETIZATION_INTERVAL",
    "PRIVACY_MODES",
    "PRIVACY_PREFIX",
    "Accountant",
    "AdaptiveClipping",
    "DPSettings",
    "GaussianNoise",
    "LaplaceNoise",
    "PldAccountant",
    "RdpAccountant",
    "SampledGaussian",
    "calibrate_noise",
    "check_real",
    "clip_l2",
    "guarantee_code",
    "guarantee_label",
    "l2_norm",
    "make_accountant",
    "noise_in_sum",
]
