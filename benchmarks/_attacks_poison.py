"""Table 1 of ``attacks.py``: poisoning and backdoor attacks × defences.

Every cell is a run of the task's job over its 6 sites, ``m`` of them malicious (chosen at
random per seed by :func:`biofed.attacks.choose_malicious`), through
:func:`biofed.attacks.run_attack` (the job's real site nodes behind a
:class:`~biofed.simulation.TamperingBackend`); the figure is the final model's metric on
the pooled **clean** test rows, and for the backdoor the attack success rate on triggered
clean test rows (:func:`biofed.attacks.attack_success_rate`).

Attacks (``biofed.attacks.make_attack`` with its defaults, except where said):

* ``scaling``: ``x − 100·Δ``, the boosted update (Bhagoji et al. 2019, "Analyzing federated
  learning through an adversarial lens": explicit boosting) pointed against the honest
  direction. A positive boost of an honest update (model replacement's γ = n) leaves a
  Cox model's C-index near the attacker's own model's, ~0.7, since a ranking metric
  survives any positive scale of a sensible model; so does replacing the model by a
  label-flipped one on some seeds (measured: 0.42–0.84 with γ = rows ratio). The boosted
  reversal is the attack that wrecks FedAvg whichever site sends it.
* ``sign_flip``: ``x − Δ``; ``gaussian_noise``: an update drawn from N(0, 1);
  ``weight_inflation``: 10¹⁵ examples claimed (and declared at registration), parameters
  + 50; ``free_riding``: the global model back; ``label_flip``: every training row's
  outcome flipped (survival: times reversed); ``backdoor``: a trigger on the 3 features
  least correlated with the outcome, set just beyond their range, with the target outcome
  (class 1 / an early event), one triggered copy of each of the site's records.

Defences (each alone; the job's ``[strategy]`` / ``[robust]`` tables):

* ``none``: FedAvg; ``max_weight``: FedAvg with ``[strategy] max_weight`` = the largest
  honest site's training rows (what the operator sees in the registered datasets);
* ``median``, ``trimmed_mean`` (``f`` = m: m values dropped per side),
  ``multi_krum`` (``f`` = min(m, 1): Krum needs n > 2f + 2, so 6 sites tolerate f = 1),
  ``geometric_median``, ``centered_clipping`` (τ = M), ``fltrust``, ``norm_bound`` (M),
  and ``validation`` (the weighted mean of the updates that pass
  :class:`~biofed.strategies.UpdateValidation` on the trusted data, max_drop 0.05).

The defender is told ``m`` (as Krum and the trimmed mean require, and as their papers
assume). M, the norm bound and the centred-clipping radius, is the norm of one round of
local training on the trusted data from the initial model — what the coordinator can
compute before round 1 (:class:`~biofed.coordinator.TrustedData`). The trusted data is a
fixed 15 % random sample of the pooled training rows (a reference set the coordinator
holds; never test rows).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from _attacks_data import Setting

ATTACK_ROWS: tuple[str, ...] = (
    "none",
    "sign_flip",
    "scaling",
    "gaussian_noise",
    "weight_inflation",
    "free_riding",
    "label_flip",
    "backdoor",
)
DEFENCES: tuple[str, ...] = (
    "none",
    "max_weight",
    "median",
    "trimmed_mean",
    "multi_krum",
    "geometric_median",
    "centered_clipping",
    "fltrust",
    "norm_bound",
    "validation",
)
#: Column headers (short).
DEFENCE_LABELS = {
    "none": "FedAvg",
    "max_weight": "max_w",
    "median": "median",
    "trimmed_mean": "trim",
    "multi_krum": "m-krum",
    "geometric_median": "geomed",
    "centered_clipping": "cclip",
    "fltrust": "FLTrust",
    "norm_bound": "normb",
    "validation": "valid",
}
TRUSTED_FRACTION = 0.15
MAX_DROP = 0.05
ASR_GOAL = 0.10
CLEAN_GOAL = 0.02
SCALING_GOAL = 0.55


def trusted_rows(setting: Setting) -> Any:
    """The coordinator's trusted dataset: a fixed sample of the pooled training rows."""
    pooled = setting.fed.pooled("train")
    rng = np.random.default_rng(0x7257ED)
    k = max(20, round(TRUSTED_FRACTION * len(pooled)))
    return pooled.subset(np.sort(rng.choice(len(pooled), k, replace=False)), name="trusted")


def calibrated_norm(setting: Setting, trusted_data: Any, rounds: int) -> float:
    """M: the L2 norm of one round of the job's local training on the trusted data from
    the job's initial model (the coordinator can compute it before round 1)."""
    from biofed.coordinator import TrustedData

    job = setting.job(rounds=rounds, seed=0)
    trusted = TrustedData(job, trusted_data, name="reference")
    x0 = job.initial_parameters()
    x1 = trusted.train(x0, 1)
    return float(
        math.sqrt(
            sum(
                float(np.sum((np.asarray(x1[k], np.float64) - np.asarray(x0[k], np.float64)) ** 2))
                for k in x0
            )
        )
    )


def defence_tables(
    defence: str, setting: Setting, m: int, norm: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The job's ``[strategy]`` table and extra tables (``[robust]``) for one defence."""
    strategy: dict[str, Any] = {"name": "fedavg"}
    robust: dict[str, Any] | None = None
    if defence == "max_weight":
        strategy["max_weight"] = max(len(s.train) for s in setting.fed.sites.values())
    elif defence == "median":
        robust = {"aggregator": "median"}
    elif defence == "trimmed_mean":
        robust = {"aggregator": "trimmed_mean", "f": m}
    elif defence == "multi_krum":
        robust = {"aggregator": "multi_krum", "f": min(m, 1)}
    elif defence == "geometric_median":
        robust = {"aggregator": "geometric_median"}
    elif defence == "centered_clipping":
        robust = {"aggregator": "centered_clipping", "cc_tau": norm}
    elif defence == "fltrust":
        robust = {"aggregator": "fltrust", "trusted_dataset": "reference"}
    elif defence == "norm_bound":
        robust = {"aggregator": "norm_bound", "norm_bound": norm}
    elif defence == "validation":
        robust = {
            "aggregator": "mean",
            "validation": True,
            "max_drop": MAX_DROP,
            "trusted_dataset": "reference",
        }
    elif defence != "none":
        raise ValueError(defence)
    return strategy, ({} if robust is None else {"robust": robust})


#: The scaling row's boost: ``x + SCALING_BOOST·Δ`` (see the module).
SCALING_BOOST = -100.0


def build_attack(name: str, setting: Setting, seed: int) -> Any:
    """The :class:`biofed.attacks.Attack` of a table row (see the module)."""
    from biofed.attacks import make_attack

    boost = SCALING_BOOST if name == "scaling" else None
    return make_attack(name, setting.fed, seed=seed, boost=boost)


@dataclass
class Cell:
    """One (attack, defence) cell over the seeds."""

    clean: list[float]
    mean_site: list[float]
    asr: list[float]
    seconds: float
    decisions: dict[str, int]
    errors: list[str]

    def mean(self) -> float:
        return float(np.mean(self.clean)) if self.clean else math.nan

    def sd(self) -> float:
        return float(np.std(self.clean, ddof=1)) if len(self.clean) > 1 else 0.0

    def asr_mean(self) -> float:
        vals = [v for v in self.asr if not math.isnan(v)]
        return float(np.mean(vals)) if vals else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "clean_mean": _num(self.mean()),
            "clean_sd": _num(self.sd()),
            "mean_site": self.mean_site,
            "asr": [_num(v) for v in self.asr],
            "asr_mean": _num(self.asr_mean()),
            "seconds": self.seconds,
            "decisions": self.decisions,
            "errors": self.errors,
        }


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def run_grid(
    setting: Setting,
    *,
    malicious: Sequence[int],
    seeds: Sequence[int],
    rounds: int,
    attacks: Sequence[str] = ATTACK_ROWS,
    defences: Sequence[str] = DEFENCES,
    progress: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Every (m, attack, defence) cell of one task over ``seeds``."""
    from biofed.attacks import choose_malicious, run_attack

    trusted_data = trusted_rows(setting)
    needs_norm = {"centered_clipping", "norm_bound"} & set(defences)
    norm = calibrated_norm(setting, trusted_data, rounds) if needs_norm else math.nan
    sites = list(setting.fed.sites)
    out: dict[str, Any] = {"norm_bound": norm, "trusted_rows": len(trusted_data), "cells": {}}
    started = time.perf_counter()
    for m in malicious:
        grid: dict[str, dict[str, Cell]] = {}
        for attack in attacks:
            for defence in defences:
                strategy, extra = defence_tables(defence, setting, m, norm)
                cell = Cell([], [], [], 0.0, {}, [])
                t0 = time.perf_counter()
                for seed in seeds:
                    job = setting.job(rounds=rounds, seed=seed, strategy=strategy, extra=extra)
                    trusted = None
                    if getattr(job, "needs_trusted", False):
                        from biofed.coordinator import TrustedData

                        trusted = TrustedData(job, trusted_data, name="reference")
                    chosen = () if attack == "none" else choose_malicious(sites, m, seed=seed)
                    spec = {s: build_attack(attack, setting, seed) for s in chosen}
                    try:
                        result = run_attack(setting.fed, job, attacks=spec, trusted=trusted)
                    except Exception as exc:  # a cell that fails is reported, not fatal
                        cell.errors.append(f"seed {seed}: {type(exc).__name__}: {exc}")
                        continue
                    cell.clean.append(float(result.clean_metric))
                    cell.mean_site.append(float(result.mean_site_metric))
                    if result.attack_success_rate is not None:
                        cell.asr.append(float(result.attack_success_rate))
                    for per in result.decisions.values():
                        for kind, count in per.items():
                            cell.decisions[kind] = cell.decisions.get(kind, 0) + count
                cell.seconds = time.perf_counter() - t0
                grid.setdefault(attack, {})[defence] = cell
                progress(
                    f"  [{time.perf_counter() - started:6.1f} s] {setting.key} m={m} "
                    f"{attack:<16} {defence:<17} {cell.mean():.4f} "
                    f"({cell.seconds:.1f} s{', ERRORS' if cell.errors else ''})"
                )
        out["cells"][str(m)] = grid
    return out


def best_defence(row: dict[str, Cell], backdoor: bool) -> str | None:
    """The best defence of an attack row: for the backdoor, the highest clean metric among
    the defences whose attack success rate meets the goal (else the lowest rate); else the
    highest clean metric. ``none`` (no defence) is a candidate too."""
    usable = {d: c for d, c in row.items() if c.clean}
    if not usable:
        return None
    if backdoor:
        meeting = {d: c for d, c in usable.items() if c.asr_mean() <= ASR_GOAL}
        if not meeting:
            return min(usable, key=lambda d: usable[d].asr_mean())
        usable = meeting
    return max(usable, key=lambda d: usable[d].mean())
