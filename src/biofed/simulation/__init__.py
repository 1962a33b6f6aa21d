"""biofed.simulation: a federation of virtual sites in one process."""

from biofed.simulation._job_sites import load_node_config
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
    "load_node_config",
    "recommended_settings",
    "run_federation",
    "simulate",
    "train_centralised",
]
