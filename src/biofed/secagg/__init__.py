"""biofed.secagg: secure aggregation (SecAgg+) as sans-I/O client and server state machines.

Sites mask their weighted, quantised vectors so that the coordinator learns only the
weighted sum over the sites that finish the round (Bonawitz et al., CCS 2017), with the
sparse neighbour graph of Bell et al. (CCS 2020) so each site does O(log n) work. See
``docs/design-notes.md`` ("Secure aggregation") for the protocol, the byte formats and the
limits.

Layer L1: the stdlib, numpy, ``cryptography`` and :mod:`biofed.core` only.
"""

from biofed.secagg._client import SecAggClient
from biofed.secagg._config import SecAggConfig, SecAggPlan
from biofed.secagg._crypto import seeded_random_bytes
from biofed.secagg._graph import neighbour_graph
from biofed.secagg._messages import (
    AdvertiseKeys,
    ClientMessage,
    EncryptedShare,
    ForwardedShares,
    MaskedInput,
    Roster,
    SecAggMessage,
    ServerMessage,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
    decode_message,
)
from biofed.secagg._server import SecAggResult, SecAggServer
from biofed.secagg._settings import (
    CERTIFICATE_ARRAY,
    CERTIFICATE_PREFIX,
    STAGE_KEY,
    WEIGHTING_KEY,
    SecureAggregationSettings,
    pack_message,
    unpack_message,
)
from biofed.secagg._simulate import SimulatedRound, run_in_process, simulated_signers
from biofed.secagg._stage import RandomBytes, SecAggStage, Sign, Verify

__all__ = [
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
