"""biofed.strategies: how sites are chosen and their updates aggregated (pure, no I/O).

Robust aggregation
------------------
``Robust(inner, aggregator=…)`` wraps FedAvg, FedProx, FedAvgM or FedOpt against a
malicious minority of sites; the robust aggregate of the updates ``xᵢ − x`` goes through
the inner strategy's server step, and every update's fate is an ``UpdateDecision``.

- ``median``, ``trimmed_mean``: coordinate-wise order statistics (Yin et al. 2018); they
  buffer the round's updates (bounded by ``max_updates_bytes``).
- ``krum``, ``multi_krum``: distance scores (Blanchard et al. 2017); need ``n > 2f + 2``.
- ``geometric_median``: RFA's smoothed Weiszfeld (Pillutla et al. 2022).
- ``centered_clipping``: clipping around the previous aggregate, kept in the strategy
  state (Karimireddy et al. 2021); streams with one iteration.
- ``fltrust``: trust from the cosine to an update trained on the coordinator's trusted data
  (Cao et al. 2021); streams.
- ``norm_bound``: every update clipped to M, and M sent to the sites (Sun et al. 2019);
  streams, and with ``mean`` the only rules that run under secure aggregation.
- ``validation=``: update validation on trusted data judges every candidate (or, in secure
  mode, the aggregate) before the rule folds the survivors.
"""

from biofed.strategies._base import (
    DECISION_ACTIONS,
    EMPTY_STATE,
    AggregateResult,
    DecisionAction,
    NodePlan,
    Strategy,
    StrategyState,
    StrategyWrapper,
    TrainAggregator,
    UpdateDecision,
    planned_count,
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
    "StrategyWrapper",
    "TrainAggregator",
    "TrustedValidation",
    "UpdateDecision",
    "UpdateJudge",
    "UpdateValidation",
    "WeightedSum",
    "capped_examples",
    "make_strategy",
    "planned_count",
    "select_nodes",
]
