"""biofed.simulation: a federation of virtual sites in one process, a pool of worker
processes, or Ray actors."""

from biofed.simulation._analyze import SIM_DATASET, analyze
from biofed.simulation._backends import (
    BACKENDS,
    Backend,
    BackendName,
    InProcessBackend,
    make_backend,
)
from biofed.simulation._job_sites import load_node_config
from biofed.simulation._pool import ProcessPoolBackend
from biofed.simulation._presets import GENERIC, RecommendedSettings, recommended_settings
from biofed.simulation._ray import RayBackend
from biofed.simulation._simulate import (
    MethodResult,
    SimulationReport,
    evaluate_everywhere,
    run_federation,
    simulate,
    train_centralised,
)
from biofed.simulation._sites import SiteRecipe, build_node
from biofed.simulation._synthetic import SYNTHETIC_DATASET, logistic_recipes, logistic_site_data
from biofed.simulation._tamper import Tamper, TamperingBackend

__all__ = [
    "BACKENDS",
    "GENERIC",
    "SIM_DATASET",
    "SYNTHETIC_DATASET",
    "Backend",
    "BackendName",
    "InProcessBackend",
    "MethodResult",
    "ProcessPoolBackend",
    "RayBackend",
    "RecommendedSettings",
    "SimulationReport",
    "SiteRecipe",
    "Tamper",
    "TamperingBackend",
    "analyze",
    "build_node",
    "evaluate_everywhere",
    "load_node_config",
    "logistic_recipes",
    "logistic_site_data",
    "make_backend",
    "recommended_settings",
    "run_federation",
    "simulate",
    "train_centralised",
]
