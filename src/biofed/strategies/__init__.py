"""biofed.strategies: how sites are chosen and their updates aggregated (pure, no I/O)."""

from biofed.strategies._base import (
    DECISION_ACTIONS,
    EMPTY_STATE,
    AggregateResult,
    DecisionAction,
    NodePlan,
    Strategy,
    StrategyState,
    TrainAggregator,
    UpdateDecision,
    select_nodes,
)
from biofed.strategies._dp import DP_CLIP_NORM, DP_NOISE_STD_SHARE, DPFedAvg
from biofed.strategies._fedavg import FedAvg, FedProx
from biofed.strategies._fedopt import FedAdagrad, FedAdam, FedAvgM, FedOpt, FedYogi
from biofed.strategies._registry import STRATEGIES, make_strategy
from biofed.strategies._robust import ROBUST_AGGREGATORS, Robust, UpdateJudge
from biofed.strategies._scaffold import Scaffold
from biofed.strategies._trusted import TrustedValidation
from biofed.strategies._validation import UpdateValidation
from biofed.strategies._weighted import WeightedSum, capped_examples

__all__ = [
    "DECISION_ACTIONS",
    "DP_CLIP_NORM",
    "DP_NOISE_STD_SHARE",
    "EMPTY_STATE",
    "ROBUST_AGGREGATORS",
    "STRATEGIES",
    "AggregateResult",
    "DPFedAvg",
    "DecisionAction",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "NodePlan",
    "Robust",
    "Scaffold",
    "Strategy",
    "StrategyState",
    "TrainAggregator",
    "TrustedValidation",
    "UpdateDecision",
    "UpdateJudge",
    "UpdateValidation",
    "WeightedSum",
    "capped_examples",
    "make_strategy",
    "select_nodes",
]
