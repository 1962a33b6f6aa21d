"""Where a simulation's virtual sites run: one interface, three backends.

Every backend gives the real :class:`~biofed.coordinator.RoundEngine` a
:class:`~biofed.transport.Transport` to the real site handler
(:class:`~biofed.node.NodeApp`, built by :func:`~biofed.simulation.build_node` on each
site's first instruction); only where the sites run differs:

``"inprocess"`` (default)
    In this process, messages passed by reference (an
    :class:`~biofed.transport.InMemoryTransport`, deterministic order). Starts at once.
``"processes"``
    A pool of worker processes, each hosting a shard of sites; messages cross as bytes in
    the gRPC wire form (:mod:`biofed.simulation._pool`).
``"ray"``
    Ray actors, each hosting a shard (:mod:`biofed.simulation._ray`; the ``ray`` extra).

For the same seed all three give the same model, bit for bit (replies reach the engine in
the order their instructions were sent on every backend). ``transport.close()`` stops every
worker the backend started.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from biofed.core import ConfigurationError
from biofed.simulation._host import SiteHost
from biofed.simulation._pool import ProcessPoolBackend
from biofed.simulation._ray import RayBackend
from biofed.simulation._sharded import check_recipes
from biofed.simulation._sites import SiteRecipe
from biofed.transport import InMemoryTransport, Transport

BackendName = Literal["inprocess", "processes", "ray"]
#: The backends :func:`make_backend` knows, the default first.
BACKENDS: tuple[BackendName, ...] = ("inprocess", "processes", "ray")


@runtime_checkable
class Backend(Protocol):
    """Runs virtual sites somewhere and gives the engine a transport to them."""

    name: str

    def transport(self, recipes: Sequence[SiteRecipe]) -> Transport:
        """A transport to one site per recipe (workers started and ready); its ``close()``
        stops every worker this call started."""
        ...


class InProcessBackend:
    """Virtual sites in this process (the default)."""

    name = "inprocess"

    def transport(self, recipes: Sequence[SiteRecipe]) -> InMemoryTransport:
        """An in-memory transport to lazily built sites."""
        check_recipes(recipes)
        host = SiteHost(recipes)
        return InMemoryTransport({r.node_id: host.handle for r in recipes})


def make_backend(name: BackendName = "inprocess", *, workers: int | None = None) -> Backend:
    """The backend called ``name``.

    Parameters
    ----------
    name:
        ``"inprocess"``, ``"processes"`` or ``"ray"``.
    workers:
        Worker processes or Ray actors (default: one per CPU, at most one per site); the
        in-process backend has none.

    Raises
    ------
    ConfigurationError
        For an unknown name, or ``workers`` given to the in-process backend.
    """
    if name == "inprocess":
        if workers is not None:
            raise ConfigurationError("the inprocess backend runs no workers: leave workers unset")
        return InProcessBackend()
    if name == "processes":
        return ProcessPoolBackend(workers)
    if name == "ray":
        return RayBackend(workers)
    raise ConfigurationError(
        f"unknown simulation backend {name!r}: backend must be one of {', '.join(BACKENDS)}"
    )
