"""Fed-TCGA-BRCA under sample-level DP-SGD: test C-index against each site's ε.

Protocol: FLamby's 6 centres and split, seeds 42–46; the figure is the unweighted mean of
the 6 per-centre test C-indices (as in ``flamby_tcga_brca.py``). Models:

* the discrete-time survival models whose likelihood is a sum of per-record terms, so that
  the ε is a **guarantee**: the piecewise-exponential (Poisson) model ``pem_torch`` and the
  logistic-hazard model ``logistic_hazard_torch``, on 10 equal intervals of [0, 3650] days
  fixed in the job (no cut point is computed from a site's data), with FedAdam;
* for reference, the linear Cox model ``cox_ph_torch`` (FedAdam), whose ε is
  **heuristic**: the partial likelihood couples a batch's records, so one record can move
  the clipped batch gradient by far more than C (``CoxPHTorchTask`` declares
  ``dp_record_coupling = "none"`` and a node refuses it sample-level DP; the benchmark
  bypasses the node to show what it would have reached).

 Every site trains with DP-SGD (Poisson sampling
at q = batch / N_site, per-example clipping to C, Gaussian noise) and calibrates its own
noise multiplier z for its own N with ``biofed.privacy.calibrate_noise`` (RDP accountant),
so that all rounds × local steps of the run cost at most ε(δ = 1e-5) over its own records,
as a node does in sample mode; ε = ∞ is the same training without DP (uniform batches, no
clipping, no noise).

Choices made for DP, printed with the results:

* Age is divided by 100 at every site (a fixed unit change, not a statistic of the data, so
  it costs no privacy): unscaled, it dominates every per-example gradient norm and clipping
  then biases the model (the clipped Cox shares no longer balance).
* Client SGD with a large step and a larger expected batch than FLamby's 8, fewer local
  steps (5 rounds × 50): noisy steps favour plain SGD over Adam, and fewer steps need less
  noise for the same ε.
* DP-SGD runs in **seeded** mode (``dp_seeded``): Poisson samples and noise come from the
  run's seeded generator, so the table is reproducible. Seeded DP has no privacy against
  anyone who knows the seed; deployments use the default secure mode, whose noise has the
  same distribution.

The training settings are those the Cox model was tuned with; the discrete-time models
reach their figures with the same ones (their C-index uses the risk score ``x·w``).

    python benchmarks/privacy_utility.py [--json] [--seeds 42 43 44 45 46]
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any

import numpy as np

from _common import emit, machine, parser
from biofed.core import ParameterSet
from biofed.data import Dataset, FederatedDataset, SiteData
from biofed.datasets import load_tcga_brca
from biofed.privacy import calibrate_noise
from biofed.simulation import simulate
from biofed.strategies import make_strategy
from biofed.tasks import (
    EvalResult,
    LocalTrainingConfig,
    Task,
    TrainContext,
    TrainResult,
    make_task,
)

EPSILONS = [1.0, 3.0, 8.0, math.inf]
DELTA = 1e-5
ACCOUNTANT = "rdp"
ROUNDS, LOCAL_STEPS, BATCH = 5, 50, 32
CLIP = 1.5
AGE_DIVISOR = 100.0
TRAIN = {
    "local_steps": LOCAL_STEPS,
    "batch_size": BATCH,
    "learning_rate": 1.0,
    "optimizer": "sgd",
}
STRATEGIES: dict[str, dict[str, Any]] = {
    "fedadam": {"server_learning_rate": 1.0, "tau": 0.1, "beta_2": 0.999}
}
#: The survival models' fixed intervals (days): 10 equal parts of ten years.
SURVIVAL = {"num_intervals": 10, "max_time": 3650.0}
#: (label, task name, task options, strategy, is ε a guarantee)
MODELS: list[tuple[str, str, dict[str, Any], str, bool]] = [
    ("pem", "pem_torch", SURVIVAL, "fedadam", True),
    ("loghaz", "logistic_hazard_torch", SURVIVAL, "fedadam", True),
    ("cox", "cox_ph_torch", {}, "fedadam", False),
]
TARGET_EPSILON, TARGET_C_INDEX = 8.0, 0.75


def _age_scaled(fed: FederatedDataset) -> FederatedDataset:
    """``fed`` with its first column (age in years) divided by :data:`AGE_DIVISOR`."""

    def scale(data: Dataset) -> Dataset:
        features = np.array(data.features, dtype=np.float32, copy=True)
        features[:, 0] /= AGE_DIVISOR
        return dataclasses.replace(data, features=features)

    sites = {
        name: SiteData(
            train=scale(site.train), test=None if site.test is None else scale(site.test)
        )
        for name, site in fed.sites.items()
    }
    return FederatedDataset(name=fed.name, sites=sites)


@functools.cache
def noise_multiplier(epsilon: float, num_examples: int) -> float:
    """The z a site with ``num_examples`` records uses for ε over the whole run."""
    q = min(1.0, BATCH / num_examples)
    return calibrate_noise(epsilon, DELTA, q, ROUNDS * LOCAL_STEPS, ACCOUNTANT)


class SiteDP:
    """What a node does in sample mode: its own z for its own N, handed to the task's config.

    (``biofed.node`` does this from a job's ``[privacy]`` table; the simulation's in-process
    nodes run the task as given, so the benchmark wraps the task instead.)
    """

    def __init__(self, task: Task, epsilon: float) -> None:
        self.task = task
        self.epsilon = epsilon
        self.name = task.name
        self.primary_metric = task.primary_metric

    def init_parameters(self, rng: np.random.Generator) -> ParameterSet:
        return self.task.init_parameters(rng)

    def train(self, parameters: ParameterSet, data: Dataset, ctx: TrainContext) -> TrainResult:
        config = LocalTrainingConfig.from_config(ctx.config)
        assert config.local_steps == LOCAL_STEPS
        dp = {
            "dp_noise_multiplier": noise_multiplier(self.epsilon, len(data)),
            "dp_max_grad_norm": CLIP,
            "dp_seeded": True,  # reproducible table; not private against the seed's holder
        }
        return self.task.train(
            parameters, data, dataclasses.replace(ctx, config={**ctx.config, **dp})
        )

    def evaluate(self, parameters: ParameterSet, data: Dataset, ctx: TrainContext) -> EvalResult:
        return self.task.evaluate(parameters, data, ctx)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    args = p.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's RDP convergence notes
    started = time.perf_counter()
    fed = _age_scaled(load_tcga_brca())
    sizes = {site: len(data.train) for site, data in fed.sites.items()}

    results: dict[str, dict[str, Any]] = {}
    for label, task_name, options, name, exact in MODELS:
        task = make_task(task_name, num_features=39, **options)
        assert (getattr(task, "dp_record_coupling", "none") == "independent") == exact
        for epsilon in EPSILONS:
            runner: Task = task if math.isinf(epsilon) else SiteDP(task, epsilon)
            per_seed: dict[int, float] = {}
            for seed in args.seeds:
                strategy = make_strategy(name, train_config=TRAIN, **STRATEGIES[name])
                report = simulate(fed, runner, strategy, rounds=ROUNDS, seed=seed, baselines=False)
                per_seed[seed] = report.federated.mean_site_metric
            vals = np.array(list(per_seed.values()))
            results[f"{label}/{name}@{epsilon:g}"] = {
                "model": label,
                "task": task_name,
                "strategy": name,
                "epsilon": epsilon,
                "guarantee": exact,
                "per_seed": per_seed,
                "mean": float(vals.mean()),
                "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                "min": float(vals.min()),
            }

    print(
        "Fed-TCGA-BRCA, sample-level DP-SGD at every site: mean of the 6 per-centre test "
        f"C-indices\n({ROUNDS} rounds x {LOCAL_STEPS} local steps, expected batch {BATCH}, "
        f"C = {CLIP}, δ = {DELTA:g}, {ACCOUNTANT.upper()} accountant, seeded DP mode; "
        f"ε = inf: no DP; ε: 'exact' is a guarantee, 'heur.' is not)"
    )
    header = (
        f"{'model':<8}{'strategy':<9}{'ε':>6} {'ε is':<6}"
        + "".join(f"{'s' + str(s):>8}" for s in args.seeds)
        + f"{'mean':>8}{'std':>7}{'min':>8}"
    )
    print(header)
    print("-" * len(header))
    for entry in results.values():
        vals = [entry["per_seed"][s] for s in args.seeds]
        kind = "-" if math.isinf(entry["epsilon"]) else "exact" if entry["guarantee"] else "heur."
        print(
            f"{entry['model']:<8}{entry['strategy']:<9}{entry['epsilon']:>6g} {kind:<6}"
            + "".join(f"{v:>8.4f}" for v in vals)
            + f"{entry['mean']:>8.4f}{entry['std']:>7.3f}{entry['min']:>8.4f}"
        )

    print()
    print(f"noise multiplier z per site (q = {BATCH}/N, {ROUNDS * LOCAL_STEPS} steps):")
    print(
        f"  {'site':<10}{'N':>5}{'q':>8}"
        + "".join(f"{'ε=' + format(e, 'g'):>9}" for e in EPSILONS[:-1])
    )
    noise: dict[str, dict[str, float]] = {}
    for site, n in sizes.items():
        zs = {f"{e:g}": noise_multiplier(e, n) for e in EPSILONS if not math.isinf(e)}
        noise[site] = zs
        print(
            f"  {site:<10}{n:>5}{min(1.0, BATCH / n):>8.4f}"
            + "".join(f"{z:>9.3f}" for z in zs.values())
        )
    print()
    print(
        "hyper-parameters: "
        f"{ {**TRAIN, 'dp_max_grad_norm': CLIP} }, strategies {STRATEGIES}, "
        f"survival intervals {SURVIVAL}, age / {AGE_DIVISOR:g}"
    )
    checks = {
        f"{label} ({name}) mean >= {TARGET_C_INDEX} at ε = {TARGET_EPSILON:g}, a guarantee": results[
            f"{label}/{name}@{TARGET_EPSILON:g}"
        ]["mean"]
        >= TARGET_C_INDEX
        for label, _, _, name, exact in MODELS
        if exact
    }
    print()
    for label, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}")
    print(
        "  (Cox rows for reference only: their ε is heuristic, the partial likelihood couples "
        "a batch's records; see CoxPHTorchTask)"
    )
    elapsed = time.perf_counter() - started
    print(f"({elapsed:.1f} s)")
    for entry in results.values():  # JSON object keys are strings; ∞ is not JSON
        entry["per_seed"] = {str(k): v for k, v in entry["per_seed"].items()}
        entry["epsilon"] = None if math.isinf(entry["epsilon"]) else entry["epsilon"]
    emit(
        {
            "benchmark": "privacy_utility",
            "machine": machine(),
            "seeds": args.seeds,
            "delta": DELTA,
            "results": list(results.values()),
            "noise_multipliers": noise,
            "site_sizes": sizes,
            "checks": checks,
            "elapsed_s": elapsed,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
