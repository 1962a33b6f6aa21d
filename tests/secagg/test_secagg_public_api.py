"""biofed.secagg's public names (changing this list is an API change)."""

import biofed.secagg


def test_public_api() -> None:
    assert biofed.secagg.__all__ == [
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
        "ServerMessage",
        "ShareKeys",
        "Sign",
        "SimulatedRound",
        "UnmaskRequest",
        "UnmaskShares",
        "Verify",
        "decode_message",
        "neighbour_graph",
        "run_in_process",
        "seeded_random_bytes",
        "simulated_signers",
    ]
    assert sorted(biofed.secagg.__all__) == biofed.secagg.__all__
    for name in biofed.secagg.__all__:
        assert hasattr(biofed.secagg, name), name
