"""biofed.secagg's public names (changing this list is an API change)."""

import biofed.secagg


def test_public_api() -> None:
    assert biofed.secagg.__all__ == [
        "CERTIFICATE_ARRAY",
        "CERTIFICATE_PREFIX",
        "STAGE_KEY",
        "WEIGHTING_KEY",
        "AdvertiseKeys",
        "ClientMessage",
        "EncryptedShare",
        "ForwardedShares",
        "MaskedInput",
        "RandomBytes",
        "Roster",
        "SecAggClient",
        "SecAggConfig",
        "SecAggMessage",
        "SecAggPlan",
        "SecAggResult",
        "SecAggServer",
        "SecAggStage",
        "SecureAggregationSettings",
        "ServerMessage",
        "ShareKeys",
        "Sign",
        "SimulatedRound",
        "UnmaskRequest",
        "UnmaskShares",
        "Verify",
        "decode_message",
        "neighbour_graph",
        "pack_message",
        "run_in_process",
        "seeded_random_bytes",
        "simulated_signers",
        "unpack_message",
    ]
    assert len(set(biofed.secagg.__all__)) == len(biofed.secagg.__all__)  # order: ruff's RUF022
    for name in biofed.secagg.__all__:
        assert hasattr(biofed.secagg, name), name
