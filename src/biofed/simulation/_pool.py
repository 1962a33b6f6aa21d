"""The process-pool backend: virtual sites in a pool of worker processes.

Each worker is a fresh interpreter (``spawn``: nothing of the driver's state, threads or open
files is inherited) hosting a shard of sites (:func:`~biofed.simulation._host.worker_main`).
Per worker, two one-way pipes carry instruction frames in and reply frames out; a writer
thread per worker feeds the first, so the engine's ``send`` never blocks on a busy worker
and the two pipes can never deadlock each other. A worker's death is noticed through its
process sentinel, in the same wait as its replies.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from biofed.core import ConfigurationError, TransportError
from biofed.simulation._host import SEQ, TAG_INSTRUCTION, TAG_QUIT, TAG_READY, TAG_REPLY
from biofed.simulation._host import worker_main as _worker_main
from biofed.simulation._sharded import ShardedTransport, check_recipes, deal
from biofed.simulation._sites import SiteRecipe

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext, SpawnContext

#: Seconds a worker gets to finish and exit after being told to quit, before it is killed.
QUIT_GRACE_S = 5.0


@dataclass(slots=True, eq=False)
class _Worker:
    index: int
    process: BaseProcess
    inbox: Connection  # driver's end of the pipe into the worker
    outbox: Connection  # driver's end of the pipe out of the worker
    queue: queue.SimpleQueue[bytes | None] = field(default_factory=queue.SimpleQueue)
    writer: threading.Thread | None = None


def _write(conn: Connection, items: queue.SimpleQueue[bytes | None]) -> None:
    """A worker's writer thread: frames from the queue into the pipe, until ``None``."""
    while True:
        item = items.get()
        if item is None:
            return
        try:
            conn.send_bytes(item)
        except OSError:  # the worker died; its sentinel tells the driver
            return


class ProcessPoolTransport(ShardedTransport):
    """Sites hosted by ``workers`` worker processes (see the module notes)."""

    def __init__(
        self,
        recipes: Sequence[SiteRecipe],
        *,
        workers: int,
        start_method: str = "spawn",
        start_timeout: float = 120.0,
    ) -> None:
        super().__init__(recipes, workers)
        context: SpawnContext | ForkServerContext = (
            mp.get_context("forkserver")
            if start_method == "forkserver"
            else mp.get_context("spawn")
        )
        self._workers: list[_Worker] = []
        try:
            for index, shard in enumerate(deal(recipes, workers)):
                into_recv, into_send = context.Pipe(duplex=False)
                out_recv, out_send = context.Pipe(duplex=False)
                process = context.Process(
                    target=_worker_main,
                    args=(into_recv, out_send, shard),
                    name=f"biofed-site-worker-{index}",
                    daemon=True,
                )
                process.start()
                into_recv.close()
                out_send.close()
                worker = _Worker(index, process, inbox=into_send, outbox=out_recv)
                worker.writer = threading.Thread(
                    target=_write,
                    args=(into_send, worker.queue),
                    name=f"biofed-site-writer-{index}",
                    daemon=True,
                )
                worker.writer.start()
                self._workers.append(worker)
            self._await_ready(start_timeout)
        except BaseException:
            self._shutdown()
            raise

    def _await_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = {w.outbox: w for w in self._workers}
        while waiting:
            remaining = deadline - time.monotonic()
            sentinels = {w.process.sentinel: w for w in waiting.values()}
            ready = wait([*waiting, *sentinels], timeout=max(remaining, 0))
            if not ready:
                raise TransportError(
                    f"{len(waiting)} site worker(s) did not start within {timeout:g} s"
                )
            for obj in ready:
                if isinstance(obj, int):
                    worker = sentinels[obj]
                    if worker.outbox in waiting:
                        raise TransportError(
                            f"site worker {worker.index} exited with code "
                            f"{worker.process.exitcode} while starting"
                        )
                    continue
                assert isinstance(obj, Connection)
                try:
                    message = obj.recv_bytes()
                except (EOFError, OSError):
                    continue  # its sentinel says why
                if message == TAG_READY:
                    del waiting[obj]

    # -- ShardedTransport ---------------------------------------------------------------
    def _submit(self, shard: int, seq: int, frame: bytes) -> None:
        self._workers[shard].queue.put(TAG_INSTRUCTION + SEQ.pack(seq) + frame)

    def _collect(self, timeout: float | None) -> None:
        alive = [w for w in self._workers if w.index not in self._dead]
        if not alive:
            return
        outboxes = {w.outbox: w for w in alive}
        sentinels = {w.process.sentinel: w for w in alive}
        for obj in wait([*outboxes, *sentinels], timeout=timeout):
            if isinstance(obj, int):
                self._drain(sentinels[obj])
                self._lost_worker(sentinels[obj])
            else:
                assert isinstance(obj, Connection)
                self._drain(outboxes[obj])

    def _drain(self, worker: _Worker) -> None:
        """Read every result the worker has written so far."""
        conn = worker.outbox
        try:
            while conn.poll():
                message = conn.recv_bytes()
                if message[:1] == TAG_REPLY:
                    (seq,) = SEQ.unpack_from(message, 1)
                    self._arrive(seq, memoryview(message)[1 + SEQ.size :])
        except (EOFError, OSError):  # the worker is gone: the pipe is at its end
            self._lost_worker(worker)

    def _lost_worker(self, worker: _Worker) -> None:
        worker.process.join(timeout=1.0)
        code = worker.process.exitcode
        how = "stopped" if code is None else f"exited with code {code}"
        self._lost(worker.index, f"site worker {worker.index} (pid {worker.process.pid}) {how}")

    def _refresh(self) -> None:
        for worker in self._workers:
            if worker.index not in self._dead and worker.process.exitcode is not None:
                self._drain(worker)
                self._lost_worker(worker)

    def _shutdown(self) -> None:
        for worker in self._workers:
            worker.queue.put(TAG_QUIT)
            worker.queue.put(None)
        for worker in self._workers:
            worker.process.join(timeout=QUIT_GRACE_S)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=QUIT_GRACE_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        for worker in self._workers:
            if worker.writer is not None:
                worker.writer.join(timeout=QUIT_GRACE_S)
            worker.inbox.close()
            worker.outbox.close()
            worker.process.close()
        self._workers.clear()

    def worker_pids(self) -> list[int]:
        return [
            w.process.pid
            for w in self._workers
            if w.index not in self._dead and w.process.pid is not None and w.process.is_alive()
        ]


class ProcessPoolBackend:
    """Virtual sites in a pool of worker processes.

    Parameters
    ----------
    workers:
        Worker processes (default: the machine's CPU count, at most one per site).
    start_method:
        ``"spawn"`` (default: a fresh interpreter) or ``"forkserver"``.
    start_timeout:
        Seconds the workers get to start before :meth:`transport` gives up.
    """

    name = "processes"

    def __init__(
        self,
        workers: int | None = None,
        *,
        start_method: str = "spawn",
        start_timeout: float = 120.0,
    ) -> None:
        if workers is not None and workers < 1:
            raise ConfigurationError(f"workers must be >= 1, got {workers}")
        if start_method not in ("spawn", "forkserver"):
            raise ConfigurationError(
                f"start_method must be 'spawn' or 'forkserver', got {start_method!r}"
            )
        self.workers = workers
        self.start_method = start_method
        self.start_timeout = start_timeout

    def transport(self, recipes: Sequence[SiteRecipe]) -> ProcessPoolTransport:
        """Start the workers (returns once each is ready) and a transport to their sites."""
        check_recipes(recipes)
        for recipe in recipes:
            try:
                pickle.dumps(recipe)
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                raise ConfigurationError(
                    f"site {recipe.node_id!r}: its recipe does not pickle, so it cannot go to a "
                    f"worker process (load_data must be a module-level function or a "
                    f"functools.partial of one): {exc}"
                ) from None
        workers = min(self.workers or os.cpu_count() or 1, len(recipes))
        return ProcessPoolTransport(
            recipes,
            workers=workers,
            start_method=self.start_method,
            start_timeout=self.start_timeout,
        )
