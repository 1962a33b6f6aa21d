"""biofed.coordinator: the round engine, run state, and the coordinator runtime."""

from biofed.coordinator._access import RunAccess
from biofed.coordinator._agreements import AgreementKeeper
from biofed.coordinator._analysis import (
    ANALYSIS_EVENT,
    PASS_EVENT,
    QueryListener,
    analyze_over,
    run_analysis,
)
from biofed.coordinator._analysis_job import (
    AnalysisJob,
    RunSpec,
    job_from_file,
    run_spec_from_json,
)
from biofed.coordinator._bundles import BundleStore
from biofed.coordinator._engine import (
    AfterRound,
    BeforeRound,
    EngineConfig,
    EngineListener,
    RoundEngine,
)
from biofed.coordinator._exchange import (
    Exchange,
    Exchanged,
    NodeExchange,
    PlainRound,
    TrainingRound,
    build_instruction,
)
from biofed.coordinator._job import JobSpec
from biofed.coordinator._job_limits import JobLimits
from biofed.coordinator._preprocess import (
    PREPROCESSING_EVENT,
    RESULT_PREPROCESSING,
    SUMMARIES_EVENT,
    PreprocessingFailed,
    check_summary,
    summaries_json,
)
from biofed.coordinator._privacy_report import (
    PRIVACY_EVENT,
    privacy_report,
    site_spend,
    spend_event,
)
from biofed.coordinator._records import RoundRecord, RunCancelled, RunEvent, RunResult
from biofed.coordinator._secure import SecureRound
from biofed.coordinator._secure_sum import AnalysisFailed, SecureSum
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
from biofed.coordinator._service import Coordinator, HubFactory
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
from biofed.coordinator._summaries import StoreListener, run_summary
from biofed.coordinator._tracking import (
    TRACKING_FAILED_EVENT,
    RunTracker,
    TrackedEnd,
    TrackedRound,
    TrackedStart,
    TrackingConfig,
)
from biofed.coordinator._tracking_worker import Tracking
from biofed.coordinator._trusted import TrustedData, trusted_data_from_kit

__all__ = [
    "ANALYSIS_EVENT",
    "PASS_EVENT",
    "PREPROCESSING_EVENT",
    "PRIVACY_EVENT",
    "RESULT_PREPROCESSING",
    "SUMMARIES_EVENT",
    "TRACKING_FAILED_EVENT",
    "AfterRound",
    "AgreementKeeper",
    "AnalysisFailed",
    "AnalysisJob",
    "BeforeRound",
    "BundleStore",
    "Checkpoint",
    "Coordinator",
    "EngineConfig",
    "EngineListener",
    "EventRow",
    "Exchange",
    "Exchanged",
    "HubFactory",
    "InMemoryStateStore",
    "JobLimits",
    "JobSpec",
    "KitAuthenticator",
    "NodeExchange",
    "NodeRow",
    "NodeStatus",
    "PlainRound",
    "PreprocessingFailed",
    "QueryListener",
    "RoundEngine",
    "RoundRecord",
    "RoundRow",
    "RunAccess",
    "RunCancelled",
    "RunEvent",
    "RunResult",
    "RunRow",
    "RunSpec",
    "RunStatus",
    "RunTracker",
    "RunningCoordinator",
    "SecureRound",
    "SecureSum",
    "SqlStateStore",
    "StateStore",
    "StoreListener",
    "TrackedEnd",
    "TrackedRound",
    "TrackedStart",
    "Tracking",
    "TrackingConfig",
    "TrainingRound",
    "TrustedData",
    "analyze_over",
    "build_instruction",
    "canonical_json",
    "check_summary",
    "job_from_file",
    "open_store",
    "privacy_report",
    "round_record_from_json",
    "round_record_to_json",
    "run_analysis",
    "run_event_from_json",
    "run_event_to_json",
    "run_spec_from_json",
    "run_summary",
    "serve_coordinator",
    "site_spend",
    "spend_event",
    "summaries_json",
    "tls_of",
    "trusted_data_from_kit",
]
