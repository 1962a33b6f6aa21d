"""Shared fixtures for the secure-aggregation tests: identity keys and a manual round driver."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from biofed.secagg import (
    ForwardedShares,
    Roster,
    SecAggClient,
    SecAggConfig,
    SecAggPlan,
    SecAggServer,
    Sign,
    UnmaskRequest,
    Verify,
    seeded_random_bytes,
    simulated_signers,
)

#: Enough site ids for every test (real ECDSA P-256 keys are made once per session).
SITE_IDS = tuple(f"site-{i:02d}" for i in range(40))


@pytest.fixture(scope="session")
def identities() -> tuple[dict[str, Sign], Verify]:
    return simulated_signers(SITE_IDS)


@dataclass
class ManualRound:
    """A coordinator and its sites, driven one stage at a time by a test."""

    plan: SecAggPlan
    server: SecAggServer
    clients: dict[str, SecAggClient]
    inputs: dict[str, tuple[np.ndarray, int]]
    inbox: dict[str, Any] = field(default_factory=dict)

    def advertise(self, skip: Collection[str] = ()) -> None:
        for node, client in self.clients.items():
            if node not in skip:
                self.server.receive(node, client.advertise().to_bytes())
        self.inbox = dict(self.server.close_stage())

    def share_keys(self, skip: Collection[str] = ()) -> None:
        for node, roster in self.inbox.items():
            if node not in skip:
                assert isinstance(roster, Roster)
                self.server.receive(node, self.clients[node].share_keys(roster).to_bytes())
        self.inbox = dict(self.server.close_stage())

    def masked_input(self, skip: Collection[str] = ()) -> None:
        for node, shares in self.inbox.items():
            if node not in skip:
                assert isinstance(shares, ForwardedShares)
                vector, weight = self.inputs[node]
                message = self.clients[node].masked_input(shares, vector, weight)
                self.server.receive(node, message.to_bytes())
        self.inbox = dict(self.server.close_stage())

    def unmask(self, skip: Collection[str] = ()) -> None:
        for node, request in self.inbox.items():
            if node not in skip:
                assert isinstance(request, UnmaskRequest)
                self.server.receive(node, self.clients[node].unmask(request).to_bytes())
        self.inbox = dict(self.server.close_stage())


def random_inputs(
    plan: SecAggPlan, nodes: tuple[str, ...], seed: int
) -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    r = plan.config.clip_range
    return {
        node: (
            rng.uniform(-r, r, plan.dimension).astype(np.float32),
            int(rng.integers(1, plan.config.max_weight + 1)),
        )
        for node in nodes
    }


@pytest.fixture(scope="session")
def manual_round(
    identities: tuple[dict[str, Sign], Verify],
) -> Callable[..., ManualRound]:
    signers, verify = identities

    def make(
        n: int = 5,
        *,
        config: SecAggConfig | None = None,
        seed: int = 0,
        run_id: str = "run-1",
        round: int = 3,
    ) -> ManualRound:
        config = config or SecAggConfig(
            dimension=16, clip_range=1.0, quantisation_step=1e-4, max_weight=50
        )
        plan = config.plan(n)
        nodes = SITE_IDS[:n]
        server = SecAggServer(
            plan,
            nodes,
            run_id=run_id,
            round=round,
            random_bytes=seeded_random_bytes(f"server-{seed}".encode()),
        )
        clients = {
            node: SecAggClient(
                node,
                plan,
                run_id=run_id,
                round=round,
                sign=signers[node],
                verify=verify,
                random_bytes=seeded_random_bytes(f"{node}-{seed}".encode()),
            )
            for node in nodes
        }
        return ManualRound(plan, server, clients, random_inputs(plan, nodes, seed))

    return make
