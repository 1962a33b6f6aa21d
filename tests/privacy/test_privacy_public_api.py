"""biofed.privacy's public names (changing this list is an API change)."""

import biofed.privacy


def test_public_api() -> None:
    assert biofed.privacy.__all__ == [
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
    for name in biofed.privacy.__all__:
        assert hasattr(biofed.privacy, name), name


def test_accountant_names() -> None:
    assert biofed.privacy.ACCOUNTANTS == ("pld", "rdp")
