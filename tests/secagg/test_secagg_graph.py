"""The SecAgg+ neighbour graph."""

from __future__ import annotations

import pytest

from biofed.secagg import neighbour_graph
from biofed.secagg._graph import neighbours_of

_SITES = tuple(f"site-{i:03d}" for i in range(50))


@pytest.mark.parametrize("k", [2, 4, 6, 10])
def test_graph_is_k_regular_symmetric_and_deterministic(k: int) -> None:
    graph = neighbour_graph(_SITES, b"s" * 32, k)
    assert set(graph) == set(_SITES)
    for site, neighbours in graph.items():
        assert len(neighbours) == k
        assert site not in neighbours
        assert all(site in graph[v] for v in neighbours)
        assert neighbours_of(site, _SITES, b"s" * 32, k) == neighbours
    assert neighbour_graph(_SITES, b"s" * 32, k) == graph
    assert neighbour_graph(_SITES, b"t" * 32, k) != graph


def test_full_graph_when_k_is_none_or_large() -> None:
    for k in (None, 49, 60):
        graph = neighbour_graph(_SITES, b"s" * 32, k)
        assert all(len(v) == 49 for v in graph.values())
