"""The in-memory state store: for tests and simulations; everything is lost on exit."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping

from biofed.coordinator._records import RunEvent
from biofed.coordinator._store import (
    CHECKPOINTS_KEPT,
    Checkpoint,
    EventRow,
    NodeRow,
    RoundRow,
    RunRow,
    RunStatus,
    StateStore,
)
from biofed.core import ConfigurationError


class InMemoryStateStore(StateStore):
    """A :class:`~biofed.coordinator.StateStore` held in dicts; checkpoints stay as
    ParameterSets (the newest two per run).

    Parameters
    ----------
    clock:
        Wall clock in epoch seconds.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock=clock)
        self._runs: dict[str, RunRow] = {}
        self._round_rows: dict[str, list[RoundRow]] = {}
        self._kept: dict[str, list[Checkpoint]] = {}
        self._event_rows: dict[str, list[EventRow]] = {}
        self._nodes: dict[str, NodeRow] = {}

    def _insert_run(self, row: RunRow) -> None:
        if row.run_id in self._runs:
            raise ConfigurationError(f"run {row.run_id!r} already exists")
        self._runs[row.run_id] = row
        self._round_rows[row.run_id] = []
        self._kept[row.run_id] = []
        self._event_rows[row.run_id] = []

    def _get_run(self, run_id: str) -> RunRow | None:
        return self._runs.get(run_id)

    def _list_runs(self, statuses: frozenset[RunStatus] | None) -> list[RunRow]:
        rows = [r for r in self._runs.values() if statuses is None or r.status in statuses]
        return sorted(rows, key=lambda r: (r.created_at, r.run_id))

    def _update_run_status(
        self, run_id: str, status: RunStatus, error: str | None, now: float
    ) -> None:
        self._runs[run_id] = dataclasses.replace(
            self._runs[run_id], status=status, error=error, updated_at=now
        )

    def _start_attempt(self, run_id: str, now: float) -> int:
        run = self._runs[run_id]
        self._runs[run_id] = dataclasses.replace(run, attempts=run.attempts + 1, updated_at=now)
        return run.attempts + 1

    def _complete_round(
        self, row: RoundRow, checkpoint: Checkpoint, event: RunEvent | None
    ) -> None:
        # The event first: what follows cannot fail, so the round is all there or not at all.
        if event is not None:
            self._append_event(
                row.run_id,
                event.round,
                event.kind,
                event.message,
                event.node_id,
                row.completed_at,
                event.data,
            )
        kept = self._kept[row.run_id]
        kept.append(checkpoint)
        del kept[:-CHECKPOINTS_KEPT]
        self._round_rows[row.run_id].append(row)
        self._runs[row.run_id] = dataclasses.replace(
            self._runs[row.run_id],
            completed_rounds=row.round,
            updated_at=row.completed_at,
            attempts=0,
        )

    def _rounds(self, run_id: str) -> list[RoundRow]:
        return list(self._round_rows[run_id])

    def _latest_checkpoint(self, run_id: str) -> Checkpoint | None:
        kept = self._kept[run_id]
        return kept[-1] if kept else None

    def _append_event(
        self,
        run_id: str,
        round: int,
        kind: str,
        message: str,
        node_id: str | None,
        time: float,
        data: Mapping[str, float],
    ) -> EventRow:
        log = self._event_rows[run_id]
        row = EventRow(
            run_id=run_id,
            seq=len(log) + 1,
            time=time,
            round=round,
            kind=kind,
            message=message,
            node_id=node_id,
            data=data,
        )
        log.append(row)
        return row

    def _events(self, run_id: str, after_seq: int, limit: int | None) -> list[EventRow]:
        # seq == index + 1, so the rows after ``after_seq`` start at index ``after_seq``.
        log = self._event_rows[run_id]
        end = None if limit is None else after_seq + limit
        return log[after_seq:end]

    def _upsert_node(self, node: NodeRow) -> None:
        self._nodes[node.node_id] = node

    def _list_nodes(self) -> list[NodeRow]:
        return [self._nodes[k] for k in sorted(self._nodes)]

    def _close(self) -> None:
        pass
