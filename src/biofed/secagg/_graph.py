"""The SecAgg+ neighbour graph: who masks with, and holds shares for, whom.

Bell et al. (CCS 2020) replace the complete graph of Bonawitz et al. by a random k-regular
graph with k = O(log n). Here the graph is a Harary graph on a random ring: the sorted
participants are put in the order of a keyed pseudorandom permutation (ChaCha20 keystream
words under a key derived from the public ``seed``, sorted), and each site is joined to
the k/2 sites on either side of it. k ≥ n − 1 gives the complete graph. Every site can
compute the whole graph from the seed and the participant list, so the coordinator cannot
give two sites different views of who their neighbours are.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

SEED_BYTES = 32


def _ring_positions(count: int, seed: bytes) -> np.ndarray:
    """The ring order of ``count`` sorted participants: indices into the sorted list."""
    key = hashlib.sha256(b"biofed-secagg/v1/neighbour-graph" + seed).digest()
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(encryptor.update(bytes(8 * count)), dtype="<u8")
    return np.argsort(words, kind="stable")


def _ring_order(participants: Sequence[str], seed: bytes) -> list[str]:
    return [participants[i] for i in _ring_positions(len(participants), seed)]


def graph_degree(num_participants: int, num_neighbours: int | None) -> int:
    """The degree k of the graph on ``num_participants`` sites (n − 1 for the full graph)."""
    full = num_participants - 1
    return full if num_neighbours is None else min(num_neighbours, full)


def neighbour_graph(
    participants: Sequence[str], seed: bytes, num_neighbours: int | None
) -> dict[str, frozenset[str]]:
    """Every participant's neighbours (never itself).

    ``participants`` must be sorted and distinct; ``num_neighbours`` is even or ``None``.
    """
    k = graph_degree(len(participants), num_neighbours)
    if k == len(participants) - 1:
        everyone = frozenset(participants)
        return {p: everyone - {p} for p in participants}
    ring = _ring_order(participants, seed)
    n = len(ring)
    half = k // 2
    return {
        site: frozenset(ring[(i + j) % n] for j in range(-half, half + 1) if j)
        for i, site in enumerate(ring)
    }


def neighbours_of(
    site: str, participants: Sequence[str], seed: bytes, num_neighbours: int | None
) -> frozenset[str]:
    """The neighbours of one ``site`` (as :func:`neighbour_graph`, without building it all)."""
    k = graph_degree(len(participants), num_neighbours)
    if k == len(participants) - 1:
        return frozenset(participants) - {site}
    order = _ring_positions(len(participants), seed)
    mine = bisect.bisect_left(participants, site)
    if mine == len(participants) or participants[mine] != site:
        raise ValueError(f"{site!r} is not a participant")
    position = int(np.flatnonzero(order == mine)[0])
    n = len(participants)
    half = k // 2
    return frozenset(
        participants[int(order[(position + j) % n])] for j in range(-half, half + 1) if j
    )
