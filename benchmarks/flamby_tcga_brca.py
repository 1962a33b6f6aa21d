"""Fed-TCGA-BRCA under FLamby's protocol, beside FLamby's published results.

Protocol (FLamby, NeurIPS 2022): 6 centres (regions), linear Cox model on 39 covariates,
batch 8, 100 local steps per round, 5 rounds, seeds 42–46; the figure is the unweighted mean
of the 6 per-centre test C-indices (Harrell), averaged over seeds. Local-only and pooled
baselines train for FLamby's budget of 30 epochs each. Hyper-parameters are biofed's own
(``biofed.simulation.recommended_settings``) and are printed with the results.

    python benchmarks/flamby_tcga_brca.py [--json] [--seeds 42 43 44 45 46]
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from _common import emit, machine, parser
from biofed.datasets import TCGA_BRCA_SITES, flamby_tcga_brca_baselines, load_tcga_brca
from biofed.simulation import (
    evaluate_everywhere,
    recommended_settings,
    simulate,
    train_centralised,
)
from biofed.strategies import make_strategy
from biofed.tasks import CoxPHTask

STRATEGIES = ["fedavg", "fedprox", "scaffold", "fedadam", "fedyogi", "fedadagrad"]
FLAMBY_NAMES = {
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "scaffold": "Scaffold",
    "fedadam": "FedAdam",
    "fedyogi": "FedYogi",
    "fedadagrad": "FedAdagrad",
    "pooled": "Pooled Training",
    **{f"local:{s}": f"Local {k}" for k, s in enumerate(TCGA_BRCA_SITES)},
}
ROUNDS, LOCAL_STEPS, BATCH = 5, 100, 8
BASELINE = {"batch_size": BATCH, "learning_rate": 0.01, "optimizer": "adam"}
BASELINE_EPOCHS = 30


def _baseline_config(n: int) -> dict[str, Any]:
    return {**BASELINE, "local_steps": BASELINE_EPOCHS * math.ceil(n / BATCH)}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    args = p.parse_args()
    fed = load_tcga_brca()
    task = CoxPHTask(num_features=39)
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()

    def record(method: str, seed: int, mean_site: float, pooled: float) -> None:
        entry = results.setdefault(method, {"per_seed": {}, "pooled_per_seed": {}})
        entry["per_seed"][seed] = mean_site
        entry["pooled_per_seed"][seed] = pooled

    for name in STRATEGIES:
        settings = recommended_settings(fed.name, name)
        train_config = {**settings.train_config, "local_steps": LOCAL_STEPS, "batch_size": BATCH}
        results[name] = {
            "per_seed": {},
            "pooled_per_seed": {},
            "hyperparameters": {**train_config, **settings.strategy_kwargs},
        }
        for seed in args.seeds:
            strategy = make_strategy(name, train_config=train_config, **settings.strategy_kwargs)
            report = simulate(fed, task, strategy, rounds=ROUNDS, seed=seed, baselines=False)
            record(name, seed, report.federated.mean_site_metric, report.federated.pooled_metric)
    for seed in args.seeds:
        initial = task.init_parameters(np.random.default_rng(seed))
        for site, data in fed.sites.items():
            params = train_centralised(
                task, data.train, initial, _baseline_config(len(data.train)), seed=seed
            )
            r = evaluate_everywhere(task, params, fed, method=f"local:{site}")
            record(r.method, seed, r.mean_site_metric, r.pooled_metric)
        pooled_train = fed.pooled("train")
        params = train_centralised(
            task, pooled_train, initial, _baseline_config(len(pooled_train)), seed=seed
        )
        r = evaluate_everywhere(task, params, fed, method="pooled")
        record("pooled", seed, r.mean_site_metric, r.pooled_metric)
    for method in results:
        if method.startswith("local:") or method == "pooled":
            results[method]["hyperparameters"] = {**BASELINE, "epochs": BASELINE_EPOCHS}

    published = flamby_tcga_brca_baselines()
    header = (
        f"{'method':<16}"
        + "".join(f"{'s' + str(s):>8}" for s in args.seeds)
        + f"{'mean':>8}{'std':>7}{'min':>8}{'pooled':>8}   {'FLamby mean':>11}{'std':>7}{'min':>7}"
    )
    print(
        f"Fed-TCGA-BRCA, mean of the 6 per-centre test C-indices "
        f"({ROUNDS} rounds x {LOCAL_STEPS} local steps, batch {BATCH})"
    )
    print(header)
    print("-" * len(header))
    for method, entry in results.items():
        vals = np.array([entry["per_seed"][s] for s in args.seeds])
        pooled = np.array([entry["pooled_per_seed"][s] for s in args.seeds])
        entry.update(
            mean=float(vals.mean()),
            std=float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
            min=float(vals.min()),
            pooled_mean=float(pooled.mean()),
        )
        ref = published.get(FLAMBY_NAMES.get(method, ""), {})
        entry["flamby"] = ref
        ref_txt = (
            (
                f"{ref.get('mean_of_local_tests', math.nan):>11.4f}{ref.get('std', math.nan):>7.3f}"
                f"{ref.get('min_seed', math.nan):>7.3f}"
            )
            if ref
            else ""
        )
        print(
            f"{method:<16}"
            + "".join(f"{v:>8.4f}" for v in vals)
            + f"{entry['mean']:>8.4f}{entry['std']:>7.3f}{entry['min']:>8.4f}{entry['pooled_mean']:>8.4f}   {ref_txt}"
        )
    print()
    print("hyper-parameters:")
    for method, entry in results.items():
        if not method.startswith("local:") or method.endswith("center-0"):
            label = "local-only/pooled" if method.startswith("local:") else method
            if method != "pooled":
                print(f"  {label:<18} {entry['hyperparameters']}")
    checks = {
        "fedadam mean >= 0.815": results["fedadam"]["mean"] >= 0.815,
        "fedavg >= 0.80 on every seed": results["fedavg"]["min"] >= 0.80,
        "every federated strategy >= 0.78 on every seed": all(
            results[s]["min"] >= 0.78 for s in STRATEGIES
        ),
    }
    print()
    for label, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}")
    elapsed = time.perf_counter() - started
    print(f"({elapsed:.1f} s)")
    for entry in results.values():  # JSON object keys are strings
        entry["per_seed"] = {str(k): v for k, v in entry["per_seed"].items()}
        entry["pooled_per_seed"] = {str(k): v for k, v in entry["pooled_per_seed"].items()}
    emit(
        {
            "benchmark": "flamby_tcga_brca",
            "machine": machine(),
            "seeds": args.seeds,
            "results": results,
            "checks": checks,
            "elapsed_s": elapsed,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
