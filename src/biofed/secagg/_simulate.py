"""Run a whole secure-aggregation round in one process: for tests, benchmarks, simulation."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from biofed.core import Array, ConfigurationError, ProtocolError
from biofed.secagg._client import SecAggClient
from biofed.secagg._config import SecAggPlan
from biofed.secagg._crypto import seeded_random_bytes
from biofed.secagg._messages import (
    ClientMessage,
    ForwardedShares,
    Roster,
    ServerMessage,
    UnmaskRequest,
    decode_message,
)
from biofed.secagg._server import SecAggResult, SecAggServer
from biofed.secagg._stage import SecAggStage, Sign, Verify

_STAGES = (
    SecAggStage.ADVERTISE_KEYS,
    SecAggStage.SHARE_KEYS,
    SecAggStage.MASKED_INPUT,
    SecAggStage.UNMASK,
)


def simulated_signers(node_ids: Sequence[str]) -> tuple[dict[str, Sign], Verify]:
    """Fresh ECDSA P-256 identity keys for ``node_ids``: a signer per site and one verifier.

    For tests and simulations, standing in for the sites' kit keys.
    """
    keys = {node: ec.generate_private_key(ec.SECP256R1()) for node in node_ids}
    publics = {node: key.public_key() for node, key in keys.items()}

    def signer(key: ec.EllipticCurvePrivateKey) -> Sign:
        return lambda message: key.sign(message, ec.ECDSA(hashes.SHA256()))

    def verify(node_id: str, message: bytes, signature: bytes) -> bool:
        public = publics.get(node_id)
        if public is None:
            return False
        try:
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    return {node: signer(key) for node, key in keys.items()}, verify


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SimulatedRound:
    """:func:`run_in_process`'s outcome: the result and, with a clock, compute times.

    Attributes
    ----------
    result:
        The coordinator's :class:`SecAggResult`.
    client_seconds:
        Per site, the time spent in its four stage calls (zero without a clock).
    server_seconds:
        The time the coordinator spent in ``receive`` and ``close_stage``.
    """

    result: SecAggResult
    client_seconds: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    server_seconds: float = 0.0


def run_in_process(
    plan: SecAggPlan,
    inputs: Mapping[str, tuple[Array, int]],
    *,
    signers: Mapping[str, Sign],
    verify: Verify,
    dropouts: Mapping[SecAggStage, Collection[str]] | None = None,
    run_id: str = "simulation",
    round: int = 1,
    seed: int | None = None,
    wire: bool = True,
    clock: Callable[[], float] | None = None,
) -> SimulatedRound:
    """Run one round: every site in ``inputs`` with its (vector, weight), one coordinator.

    Parameters
    ----------
    dropouts:
        Sites that go silent at a stage: they send nothing in it or after it.
    seed:
        ``None`` for fresh OS randomness. An integer makes every key, seed and share
        reproducible (``seeded_random_bytes``): **for tests only**.
    wire:
        Pass every message through ``to_bytes`` and ``decode_message``, as a transport would.
    clock:
        E.g. ``time.perf_counter``, to measure each party's compute time.

    Raises
    ------
    SecureAggregationError
        If the round aborts (too many dropouts); no aggregate is released.
    """
    drops = {stage: set(nodes) for stage, nodes in (dropouts or {}).items()}
    for stage, nodes in drops.items():
        unknown = nodes - set(inputs)
        if stage not in _STAGES or unknown:
            raise ConfigurationError(f"dropouts: bad stage {stage!r} or unknown sites {unknown}")

    def rng(label: str) -> Callable[[int], bytes] | None:
        if seed is None:
            return None
        return seeded_random_bytes(hashlib.sha256(f"{seed}/{label}".encode()).digest())

    tick = clock or (lambda: 0.0)
    spent = dict.fromkeys(inputs, 0.0)
    server_spent = 0.0
    t0 = tick()
    server = SecAggServer(
        plan, list(inputs), run_id=run_id, round=round, random_bytes=rng("server")
    )
    clients = {}
    for node in inputs:
        t1 = tick()
        clients[node] = SecAggClient(
            node,
            plan,
            run_id=run_id,
            round=round,
            sign=signers[node],
            verify=verify,
            random_bytes=rng(node),
        )
        spent[node] += tick() - t1
    server_spent += tick() - t0 - sum(spent.values())

    inbox: dict[str, ServerMessage | bytes | None] = dict.fromkeys(inputs)
    silent: set[str] = set()
    for stage in _STAGES:
        silent |= drops.get(stage, set())
        for node in sorted(inbox):
            if node in silent:
                continue
            t1 = tick()
            reply = _step(clients[node], stage, inbox[node], inputs[node])
            sent: ClientMessage | bytes = reply.to_bytes() if wire else reply
            t2 = tick()
            spent[node] += t2 - t1
            server.receive(node, sent)
            server_spent += tick() - t2
        t1 = tick()
        outgoing = server.close_stage()
        inbox = {node: m.to_bytes() if wire else m for node, m in outgoing.items()}
        server_spent += tick() - t1
    return SimulatedRound(
        result=server.result(),
        client_seconds=MappingProxyType(spent),
        server_seconds=server_spent,
    )


def _step(
    client: SecAggClient,
    stage: SecAggStage,
    incoming: ServerMessage | bytes | None,
    given: tuple[Array, int],
) -> ClientMessage:
    """One site's call for ``stage``, decoding the coordinator's message if it is bytes."""
    message = decode_message(incoming) if isinstance(incoming, bytes) else incoming
    if stage is SecAggStage.ADVERTISE_KEYS:
        return client.advertise()
    if stage is SecAggStage.SHARE_KEYS and isinstance(message, Roster):
        return client.share_keys(message)
    if stage is SecAggStage.MASKED_INPUT and isinstance(message, ForwardedShares):
        vector, weight = given
        return client.masked_input(message, vector, weight)
    if stage is SecAggStage.UNMASK and isinstance(message, UnmaskRequest):
        return client.unmask(message)
    raise ProtocolError(f"no {stage.value} message for site {client.node_id!r}")
