"""Tables 2 and 3 of ``attacks.py``: gradient inversion and membership inference.

Both attack a binary model on real records (``biofed.attacks``' victims are the logistic
model and a small MLP): WDBC's diagnosis, and Fed-TCGA-BRCA's records with the event
indicator as the label (a Cox model's update is not what these attacks invert; the records
are the same patients). Features are standardised with the pooled training rows' mean and
sd, so the tolerance of a recovered feature, 0.1, is a tenth of a standard deviation.

Gradient inversion (:func:`biofed.attacks.inversion_experiment`: iDLG's closed form and
DLG / inverting-gradients optimisation, :func:`biofed.attacks.invert_update`): an
honest-but-curious coordinator sees one site's update after one local SGD step (learning
rate 0.1) on a batch of ``b`` records, from the initial model. Defences:

* ``none``: the plain update;
* ``dp_sgd``: the site's step is sample-level DP-SGD (clip C = 1, Gaussian noise) with the
  noise multiplier biofed calibrates for ε = 8 (δ = 1e-5) over 20 epochs of a site of the
  dataset's mean size at that batch size (:func:`biofed.attacks.dp_noise_for`);
* ``secure_sum``: the coordinator sees only the sum of the 6 sites' updates (SecAgg+), each
  site's on its own batch of ``b``; the attacker inverts it as one site's update and is
  scored against every site's records.

Recovery (:func:`biofed.attacks.recovery`) is the fraction of a true record's features
within 0.1 sd of the reconstruction matched to it, averaged over the records ("mean") and
for the best-recovered record ("best"); "chance" is the recovery of guessing the mean (0)
for every feature — what any reconstruction gets for free.

Membership inference (:func:`biofed.attacks.membership_experiment`): a pool of records, a
random half of which train the target federation (6 sites, FedAvg, the victim model of
:class:`biofed.attacks.TrainingSettings` — an MLP with 64 hidden units, trained so that it
can overfit — the sites' DP-SGD calibrated to the target ε), shadows trained the same way on other halves;
the loss-threshold attack and LiRA; AUC, TPR at 1 % FPR, and the empirical ε lower bound
(95 % Clopper–Pearson) beside the accountant's ε.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from _attacks_data import NUM_SITES

BATCHES = (1, 2, 4, 8)
QUICK_BATCHES = (1,)
#: Random restarts of the optimisation besides the closed-form start.
RESTARTS = 1
DEFENCES = ("none", "dp_sgd", "secure_sum")
MODELS = ("logistic", "mlp")
LEARNING_RATE = 0.1
DP_EPSILON, DELTA, CLIP, DP_EPOCHS = 8.0, 1e-5, 1.0, 20.0
TOL = 0.1
RECOVER_GOAL, DEFENDED_GOAL = 0.90, 0.10
EPSILONS = (1.0, 8.0, math.inf)
MIA_GOAL = 0.55
NUM_SHADOWS = 4
RECORDS_PER_SITE = 16


def _records(setting: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Site → (standardised features, binary label) of its training rows."""
    pooled = setting.fed.pooled("train")
    X = np.asarray(pooled.features, dtype=np.float64)
    mean, sd = X.mean(axis=0), X.std(axis=0)
    sd[sd == 0] = 1.0
    key = "label" if "label" in pooled.targets else "event"
    out = {}
    for site, data in setting.fed.sites.items():
        x = (np.asarray(data.train.features, dtype=np.float64) - mean) / sd
        out[site] = (x, np.asarray(data.train.target(key), dtype=np.float64))
    return out


def _pm(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{100 * np.mean(values):5.1f}±{100 * sd:4.1f}%"


def inversion_table(args: Any, progress: Callable[[str], None]) -> dict[str, Any]:
    from biofed.attacks import inversion_experiment

    batches = QUICK_BATCHES if args.quick else BATCHES
    iterations = 100 if args.quick else 300
    keys = ["wdbc"] if args.quick else list(args.settings)
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    checks: dict[str, bool | None] = {}
    started = time.perf_counter()
    for key in keys:
        setting = args.settings[key]
        records = _records(setting)
        X = np.concatenate([x for x, _ in records.values()])
        y = np.concatenate([t for _, t in records.values()])
        site_records = round(len(X) / len(records))
        d = X.shape[1]
        label = "diagnosis" if key == "wdbc" else "event"
        lines.append("")
        lines.append(
            f"{setting.fed.name} records ({d} standardised features, label: {label}); one local "
            f"SGD step (lr {LEARNING_RATE}) from the initial model; DP-SGD: z for ε = "
            f"{DP_EPSILON:g} over {DP_EPOCHS:g} epochs of a {site_records}-record site, C = "
            f"{CLIP:g}; features recovered within {TOL} sd, mean±sd over seeds "
            f"{list(args.seeds)}: mean of the batch's records / best record"
        )
        head = f"{'model':<10}{'defence':<12}" + "".join(
            f"{'b=' + str(b) + ' mean':>16}{'best':>8}" for b in batches
        )
        lines.append(head + f"{'chance':>9}")
        lines.append("-" * (len(head) + 9))
        for model in MODELS:
            for defence in DEFENCES:
                cells: list[str] = []
                chance: list[float] = []
                for b in batches:
                    means: list[float] = []
                    bests: list[float] = []
                    z = 0.0
                    t0 = time.perf_counter()
                    for seed in args.seeds:
                        r = inversion_experiment(
                            X,
                            y,
                            model=model,
                            setting=defence,
                            batch_size=b,
                            trials=1,
                            learning_rate=LEARNING_RATE,
                            sites=NUM_SITES,
                            epsilon=DP_EPSILON,
                            delta=DELTA,
                            site_records=site_records,
                            epochs=DP_EPOCHS,
                            max_grad_norm=CLIP,
                            tol=TOL,
                            seed=seed,
                            iterations=iterations,
                        )
                        means.append(float(r.mean_recovery))
                        bests.append(float(r.best_record))
                        chance.append(float(r.chance))
                        z = float(r.noise_multiplier)
                    rows.append(
                        {
                            "dataset": key,
                            "model": model,
                            "defence": defence,
                            "batch": b,
                            "recovery": means,
                            "recovery_mean": float(np.mean(means)),
                            "best": bests,
                            "best_mean": float(np.mean(bests)),
                            "noise_multiplier": z,
                            "seconds": time.perf_counter() - t0,
                        }
                    )
                    cells.append(f"{_pm(means):>16}{100 * np.mean(bests):>7.0f}%")
                    progress(
                        f"  [{time.perf_counter() - started:6.1f} s] inversion {key} {model} "
                        f"{defence} b={b}: {np.mean(means):.3f}"
                    )
                lines.append(
                    f"{model:<10}{defence:<12}" + "".join(cells) + f"{100 * np.mean(chance):>8.1f}%"
                )

    def cell(key: str, model: str, defence: str, b: int) -> float:
        for r in rows:
            if (r["dataset"], r["model"], r["defence"], r["batch"]) == (key, model, defence, b):
                return float(r["recovery_mean"])
        return math.nan

    for key in keys:
        for model in MODELS:
            v = cell(key, model, "none", 1)
            checks[
                f"{key} {model} inversion of a single record (batch 1), no defence: "
                f"{100 * v:.1f}% >= {100 * RECOVER_GOAL:.0f}%"
            ] = v >= RECOVER_GOAL
            for defence in ("dp_sgd", "secure_sum"):
                v = cell(key, model, defence, 1)
                checks[
                    f"{key} {model} inversion of a single record (batch 1), {defence}: "
                    f"{100 * v:.1f}% < {100 * DEFENDED_GOAL:.0f}%"
                ] = v < DEFENDED_GOAL
    notes: list[str] = []
    if len(batches) > 1:
        for key in keys:
            for defence in DEFENCES:
                worst = max(cell(key, m, defence, b) for m in MODELS for b in batches)
                notes.append(f"{key} {defence} {100 * worst:.1f}%")
    lines.extend(f"  [{'PASS' if ok else 'MISS'}] {text}" for text, ok in checks.items())
    if notes:
        lines.append(
            "  (not goals) the most recovered at any batch size and model: "
            + "; ".join(notes)
            + " — compare the chance column: guessing the mean recovers that much"
        )
    return {"rows": rows, "checks": checks, "lines": lines, "sites": NUM_SITES}


def membership_table(args: Any, progress: Callable[[str], None]) -> dict[str, Any]:
    from biofed.attacks import TrainingSettings, membership_experiment

    epsilons = (math.inf,) if args.quick else EPSILONS
    seeds = args.seeds
    shadows = 2 if args.quick else NUM_SHADOWS
    keys = ["wdbc"] if args.quick else list(args.settings)
    training = TrainingSettings(rounds=5) if args.quick else TrainingSettings()
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    checks: dict[str, bool | None] = {}
    started = time.perf_counter()
    for key in keys:
        setting = args.settings[key]
        records = _records(setting)
        X = np.concatenate([x for x, _ in records.values()])
        y = np.concatenate([t for _, t in records.values()])
        label = "diagnosis" if key == "wdbc" else "event"
        lines.append("")
        lines.append(
            f"{setting.fed.name} records (label: {label}); target federation: "
            f"{training.sites} sites of {RECORDS_PER_SITE} records, FedAvg, {training.model} "
            f"({training.rounds} rounds x {training.local_steps} steps, batch "
            f"{training.batch_size}, lr {training.learning_rate}), sample-level DP-SGD at ε; "
            f"LiRA with {shadows} shadows; mean±sd over seeds {list(seeds)}"
        )
        head = (
            f"{'ε':>5}  {'attack':<7}{'AUC':>14}{'TPR@1%FPR':>14}{'empirical ε':>14}"
            f"{'accountant ε':>14}"
        )
        lines.append(head)
        lines.append("-" * len(head))
        for epsilon in epsilons:
            per: dict[str, list[Any]] = {}
            for seed in seeds:
                t0 = time.perf_counter()
                result = membership_experiment(
                    X,
                    y,
                    epsilon=epsilon,
                    records_per_site=RECORDS_PER_SITE,
                    num_shadows=shadows,
                    settings=training,
                    seed=seed,
                )
                for attack, r in result.items():
                    per.setdefault(attack, []).append(r)
                progress(
                    f"  [{time.perf_counter() - started:6.1f} s] membership {key} ε={epsilon:g} "
                    f"seed {seed}: "
                    + ", ".join(f"{a} AUC {r.auc:.3f}" for a, r in result.items())
                    + f" ({time.perf_counter() - t0:.0f} s)"
                )
            for attack, results in per.items():
                auc = [r.auc for r in results]
                tpr = [r.tpr_at_1pct_fpr for r in results]
                emp = [r.empirical_epsilon for r in results]
                acc = [r.accountant_epsilon for r in results]
                acc_txt = "inf" if math.isinf(max(acc)) else f"{max(acc):.2f}"
                lines.append(
                    f"{epsilon:>5g}  {attack:<7}{_f(auc):>14}{_f(tpr):>14}{_f(emp):>14}"
                    f"{acc_txt:>14}"
                )
                rows.append(
                    {
                        "dataset": key,
                        "epsilon": None if math.isinf(epsilon) else epsilon,
                        "attack": attack,
                        "auc": float(np.mean(auc)),
                        "auc_seeds": auc,
                        "tpr_at_1pct_fpr": float(np.mean(tpr)),
                        "empirical_epsilon": float(np.mean(emp)),
                        "empirical_epsilon_max": float(np.max(emp)),
                        "accountant_epsilon": None if math.isinf(max(acc)) else float(max(acc)),
                    }
                )
        at1 = [r for r in rows if r["dataset"] == key and r["epsilon"] == 1.0]
        if at1:
            worst = max(r["auc"] for r in at1)
            checks[f"{key} membership AUC at ε = 1: {worst:.3f} (worst attack) <= {MIA_GOAL}"] = (
                worst <= MIA_GOAL
            )
    lines.extend(f"  [{'PASS' if ok else 'MISS'}] {text}" for text, ok in checks.items())
    half = training.sites * RECORDS_PER_SITE  # members; as many non-members
    se = math.sqrt((2 * half + 1) / (12 * half * half))
    lines.append(
        f"  (each seed's pool: {half} members and {half} non-members, so a chance AUC of 0.5 "
        f"has a standard error of {se:.3f} per seed)"
    )
    return {"rows": rows, "checks": checks, "lines": lines, "auc_standard_error": se}


def _f(values: list[float]) -> str:
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f}±{sd:.3f}"
