"""biofed.coordinator: the round engine and what a run records."""

from biofed.coordinator._engine import EngineConfig, EngineListener, RoundEngine
from biofed.coordinator._records import RoundRecord, RunEvent, RunResult

__all__ = [
    "EngineConfig",
    "EngineListener",
    "RoundEngine",
    "RoundRecord",
    "RunEvent",
    "RunResult",
]
