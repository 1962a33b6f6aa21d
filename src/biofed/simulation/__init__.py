"""biofed.simulation: a federation of virtual sites in one process."""

from biofed.simulation._presets import GENERIC, RecommendedSettings, recommended_settings
from biofed.simulation._simulate import (
    MethodResult,
    SimulationReport,
    evaluate_everywhere,
    run_federation,
    simulate,
    train_centralised,
)

__all__ = [
    "GENERIC",
    "MethodResult",
    "RecommendedSettings",
    "SimulationReport",
    "evaluate_everywhere",
    "recommended_settings",
    "run_federation",
    "simulate",
    "train_centralised",
]
