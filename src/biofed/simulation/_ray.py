"""The Ray backend: virtual sites in Ray actors (the optional ``ray`` extra).

Each actor is a :class:`~biofed.simulation._host.SiteHost` holding a shard of sites. The
driver batches the instructions for one actor into one call of up to :attr:`RayBackend.batch`
frames (one remote call per site costs more than the logistic-regression step it runs);
an actor runs its calls one at a time in submission order. Ray is imported here only, when
a Ray transport is made, so ``import biofed.simulation`` never imports it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

from biofed.core import ConfigurationError, TransportError
from biofed.simulation._host import SiteHost
from biofed.simulation._sharded import ShardedTransport, check_recipes, deal
from biofed.simulation._sites import SiteRecipe


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigurationError(
            f"the ray backend needs Ray ({exc}); install it with: pip install 'biofed[ray]'"
        ) from None
    return ray


class _Shard(SiteHost):
    """A Ray actor's host, which can also say which process it is."""

    def pid(self) -> int:
        """The actor's process id."""
        return os.getpid()


class RayTransport(ShardedTransport):
    """Sites hosted by ``workers`` Ray actors (see the module notes)."""

    def __init__(
        self,
        recipes: Sequence[SiteRecipe],
        *,
        workers: int | None,
        batch: int,
        init_options: Mapping[str, Any],
        start_timeout: float,
    ) -> None:
        ray = _import_ray()
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            options = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
                **({} if workers is None else {"num_cpus": workers}),
                **init_options,
            }
            ray.init(**options)
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        workers = min(workers, len(recipes))
        self._batch = batch
        self._actors: list[Any] = []
        self._pending: dict[int, list[tuple[int, bytes]]] = {}
        self._calls: dict[Any, tuple[int, list[int]]] = {}
        self._pids: dict[int, int] = {}
        try:
            super().__init__(recipes, workers)
            actor = ray.remote(_Shard)
            self._actors = [actor.remote(shard) for shard in deal(recipes, workers)]
            try:
                pids = ray.get([a.pid.remote() for a in self._actors], timeout=start_timeout)
            except ray.exceptions.GetTimeoutError:
                raise TransportError(
                    f"the Ray actors did not start within {start_timeout:g} s"
                ) from None
            except ray.exceptions.RayError as exc:
                raise TransportError(f"a Ray actor failed to start: {type(exc).__name__}") from None
            self._pids = dict(enumerate(pids))
        except BaseException:
            self._shutdown()
            raise

    # -- ShardedTransport ---------------------------------------------------------------
    def _submit(self, shard: int, seq: int, frame: bytes) -> None:
        batch = self._pending.setdefault(shard, [])
        batch.append((seq, frame))
        if len(batch) >= self._batch:
            self._flush(shard)

    def _flush(self, shard: int) -> None:
        batch = self._pending.pop(shard, None)
        if not batch:
            return
        ref = self._actors[shard].handle_frames.remote([frame for _, frame in batch])
        self._calls[ref] = (shard, [seq for seq, _ in batch])

    def _collect(self, timeout: float | None) -> None:
        ray = self._ray
        for shard in list(self._pending):
            self._flush(shard)
        if not self._calls:
            return
        ready, _ = ray.wait(list(self._calls), num_returns=1, timeout=timeout)
        for ref in ready:
            shard, seqs = self._calls.pop(ref)
            try:
                results = ray.get(ref)
            except ray.exceptions.RayError as exc:
                self._lost(shard, f"Ray actor {shard} failed: {type(exc).__name__}")
                self._pids.pop(shard, None)
                continue
            for seq, result in zip(seqs, results, strict=True):
                self._arrive(seq, memoryview(result))

    def _shutdown(self) -> None:
        ray = self._ray
        for actor in self._actors:
            with contextlib.suppress(ray.exceptions.RayError):  # already gone
                ray.kill(actor)
        self._actors.clear()
        self._calls.clear()
        self._pending.clear()
        self._pids.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def worker_pids(self) -> list[int]:
        return [pid for shard, pid in self._pids.items() if shard not in self._dead]


class RayBackend:
    """Virtual sites in Ray actors.

    Parameters
    ----------
    workers:
        Actors (default: the Ray cluster's CPU count, at most one per site).
    batch:
        Most instructions per remote call.
    init_options:
        Keyword arguments for ``ray.init`` when no Ray instance is running yet (the backend
        then starts a local one, and shuts it down when its transport closes). When Ray is
        already initialised, the backend uses it and leaves it running.
    start_timeout:
        Seconds the actors get to start.
    """

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        *,
        batch: int = 64,
        init_options: Mapping[str, Any] | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        if workers is not None and workers < 1:
            raise ConfigurationError(f"workers must be >= 1, got {workers}")
        if batch < 1:
            raise ConfigurationError(f"batch must be >= 1, got {batch}")
        self.workers = workers
        self.batch = batch
        self.init_options = dict(init_options or {})
        self.start_timeout = start_timeout

    def transport(self, recipes: Sequence[SiteRecipe]) -> RayTransport:
        """Start the actors (returns once each is ready) and a transport to their sites."""
        check_recipes(recipes)
        return RayTransport(
            recipes,
            workers=self.workers,
            batch=self.batch,
            init_options=self.init_options,
            start_timeout=self.start_timeout,
        )
