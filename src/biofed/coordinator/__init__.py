"""biofed.coordinator: the round engine, run state, and the coordinator runtime."""

from biofed.coordinator._access import RunAccess
from biofed.coordinator._agreements import AgreementKeeper
from biofed.coordinator._engine import EngineConfig, EngineListener, RoundEngine
from biofed.coordinator._job import JobSpec
from biofed.coordinator._job_limits import JobLimits
from biofed.coordinator._records import RoundRecord, RunEvent, RunResult
from biofed.coordinator._serialize import (
    canonical_json,
    round_record_from_json,
    round_record_to_json,
    run_event_from_json,
    run_event_to_json,
)
from biofed.coordinator._serve import (
    KitAuthenticator,
    RunningCoordinator,
    serve_coordinator,
    tls_of,
)
from biofed.coordinator._service import Coordinator
from biofed.coordinator._store import (
    Checkpoint,
    EventRow,
    NodeRow,
    NodeStatus,
    RoundRow,
    RunRow,
    RunStatus,
    StateStore,
    open_store,
)
from biofed.coordinator._store_memory import InMemoryStateStore
from biofed.coordinator._store_sql import SqlStateStore

__all__ = [
    "AgreementKeeper",
    "Checkpoint",
    "Coordinator",
    "EngineConfig",
    "EngineListener",
    "EventRow",
    "InMemoryStateStore",
    "JobLimits",
    "JobSpec",
    "KitAuthenticator",
    "NodeRow",
    "NodeStatus",
    "RoundEngine",
    "RoundRecord",
    "RoundRow",
    "RunAccess",
    "RunEvent",
    "RunResult",
    "RunRow",
    "RunStatus",
    "RunningCoordinator",
    "SqlStateStore",
    "StateStore",
    "canonical_json",
    "open_store",
    "round_record_from_json",
    "round_record_to_json",
    "run_event_from_json",
    "run_event_to_json",
    "serve_coordinator",
    "tls_of",
]
