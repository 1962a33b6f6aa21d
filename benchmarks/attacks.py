"""Attacks on a federation and the defences against them, measured on real data.

Three tables (issue 15), each on Fed-TCGA-BRCA (6 centres, linear Cox model, C-index) and
on WDBC (breast-cancer diagnosis split into 6 sites, logistic regression, ROC AUC), with
1 of 6 and 2 of 6 malicious sites where an attacker is a site, over 3 seeds (mean ± sd):

1. **Poisoning and backdoor** (:mod:`_attacks_poison`): every (attack × defence) cell's
   clean test metric, and the backdoor's attack success rate; the best defence per attack
   is marked ``*``.
2. **Gradient inversion** (:mod:`_attacks_privacy`): the fraction of a record's features
   an honest-but-curious coordinator recovers from one site's update, without defence,
   with sample-level DP-SGD at ε = 8, and from the secure-aggregation sum of 6 sites, at
   batch sizes 1, 2, 4, 8.
3. **Membership inference** (:mod:`_attacks_privacy`): loss-threshold and LiRA attacks on
   the final federated model: AUC, TPR at 1 % FPR and the empirical ε lower bound beside
   the accountant's ε, at DP ε ∈ {1, 8, ∞}.

The data and jobs are in :mod:`_attacks_data`. The goals of issue 15 are printed PASS/MISS
under each table; a MISS is a measured result, reported as it is.

    python benchmarks/attacks.py [--json] [--quick] [--seeds 0 1 2]
                                 [--only poisoning|inversion|membership]

``--quick`` (the CI test): one seed, fewer rounds, 1 of 6 malicious, fewer cells.
Progress lines go to stderr.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import numpy as np

from _attacks_data import settings
from _common import emit, machine, parser

SECTIONS = ("poisoning", "inversion", "membership")
#: Full run: rounds and local steps (Cox reaches its C-index in about 10 rounds of 50 steps).
ROUNDS, STEPS_TCGA, STEPS_WDBC = 10, 50, 20
QUICK_ROUNDS = 4
QUICK_ATTACKS = ("none", "scaling", "weight_inflation", "label_flip", "backdoor")
QUICK_DEFENCES = (
    "none",
    "max_weight",
    "median",
    "multi_krum",
    "fltrust",
    "norm_bound",
    "validation",
)


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def pm(values: list[float], digits: int = 3) -> str:
    """``mean±sd`` of the seeds' values ("n/a" when none)."""
    if not values:
        return "n/a"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f}±{sd:.{digits}f}"


def check_line(ok: bool | None, text: str) -> str:
    mark = "n/a " if ok is None else ("PASS" if ok else "MISS")
    return f"  [{mark}] {text}"


# -- table 1 ---------------------------------------------------------------------------------
def poisoning(args: Any, rounds: int) -> dict[str, Any]:
    from _attacks_poison import (
        ASR_GOAL,
        ATTACK_ROWS,
        CLEAN_GOAL,
        DEFENCE_LABELS,
        DEFENCES,
        SCALING_GOAL,
        best_defence,
        run_grid,
    )

    attacks = QUICK_ATTACKS if args.quick else ATTACK_ROWS
    defences = QUICK_DEFENCES if args.quick else DEFENCES
    malicious = (1,) if args.quick else (1, 2)
    out: dict[str, Any] = {"rounds": rounds, "tasks": {}, "checks": {}}
    lines: list[str] = []
    for key, setting in args.settings.items():
        progress(f"poisoning: {setting.label}")
        result = run_grid(
            setting,
            malicious=malicious,
            seeds=args.seeds,
            rounds=rounds,
            attacks=attacks,
            defences=defences,
            progress=progress,
        )
        task_out: dict[str, Any] = {
            "label": setting.label,
            "metric": setting.metric,
            "norm_bound": result["norm_bound"],
            "trusted_rows": result["trusted_rows"],
            "train": setting.train,
            "by_malicious": {},
        }
        for m_key, grid in result["cells"].items():
            m = int(m_key)
            lines.append("")
            lines.append(
                f"{setting.label}: {m} of 6 sites malicious, clean test {setting.metric} "
                f"(pooled test rows) mean±sd over seeds {list(args.seeds)}; * = best defence"
            )
            head = f"{'attack':<17}" + "".join(f"{DEFENCE_LABELS[d]:>13}" for d in defences)
            lines.append(head)
            lines.append("-" * len(head))
            table: dict[str, Any] = {}
            best: dict[str, str | None] = {}
            for attack in attacks:
                row = grid[attack]
                best[attack] = best_defence(row, attack == "backdoor")
                cells = []
                for d in defences:
                    c = row[d]
                    text = "ERR" if not c.clean else pm(c.clean)
                    cells.append(f"{text + ('*' if best[attack] == d else ' '):>13}")
                lines.append(f"{attack:<17}" + "".join(cells))
                if attack == "backdoor":
                    asr = []
                    for d in defences:
                        a = row[d].asr_mean()
                        asr.append(f"{'n/a' if math.isnan(a) else f'{100 * a:.1f}%':>12} ")
                    lines.append(f"{'  backdoor ASR':<17}" + "".join(asr))
                table[attack] = {d: row[d].to_dict() for d in defences}
                errs = [f"{attack}/{d}: {e}" for d in defences for e in row[d].errors]
                lines.extend(f"  error {e}" for e in errs[:3])
            # goals
            base = grid["none"]["none"].mean() if "none" in grid else math.nan
            checks: dict[str, bool | None] = {}
            if m == 1 and "scaling" in grid:
                fedavg = grid["scaling"]["none"].mean()
                checks[
                    f"{key} 1-of-6 scaling, no defence: {setting.metric} {fedavg:.3f} "
                    f"<= {SCALING_GOAL}"
                ] = fedavg <= SCALING_GOAL
            for attack in attacks:
                if attack == "none" or best[attack] is None:
                    continue
                b = best[attack]
                assert b is not None
                c = grid[attack][b]
                within = c.mean() >= base - CLEAN_GOAL
                label = (
                    f"{key} m={m} {attack}: best defence {b} {c.mean():.3f}, within "
                    f"{CLEAN_GOAL} of no attack ({base:.3f})"
                )
                if attack == "backdoor":
                    label += f" and ASR {100 * c.asr_mean():.1f}% <= {100 * ASR_GOAL:.0f}%"
                    checks[label] = within and c.asr_mean() <= ASR_GOAL
                else:
                    checks[label] = within
            lines.extend(check_line(ok, text) for text, ok in checks.items())
            out["checks"].update(checks)
            task_out["by_malicious"][m_key] = {"cells": table, "best": best, "no_attack": base}
        out["tasks"][key] = task_out
        lines.append(
            f"  ({key}: {rounds} rounds x {setting.train['local_steps']} local steps; norm "
            f"bound / centred-clipping radius M = {result['norm_bound']:.3g}; trusted data "
            f"{result['trusted_rows']} pooled training rows)"
        )
    out["lines"] = lines
    return out


# -- tables 2 and 3 --------------------------------------------------------------------------
def inversion(args: Any) -> dict[str, Any]:
    from _attacks_privacy import inversion_table

    return inversion_table(args, progress)


def membership(args: Any) -> dict[str, Any]:
    from _attacks_privacy import membership_table

    return membership_table(args, progress)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    p.add_argument("--quick", action="store_true", help="the CI run: fewer rounds and cells")
    p.add_argument("--only", choices=SECTIONS, action="append", help="run only this table")
    args = p.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    rounds = QUICK_ROUNDS if args.quick else ROUNDS
    args.settings = settings(STEPS_TCGA, STEPS_WDBC)
    sections = args.only or list(SECTIONS)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for section in SECTIONS:
        if section not in sections:
            continue
        t0 = time.perf_counter()
        if section == "poisoning":
            results[section] = poisoning(args, rounds)
        elif section == "inversion":
            results[section] = inversion(args)
        else:
            results[section] = membership(args)
        timings[section] = time.perf_counter() - t0
    titles = {
        "poisoning": "1. Poisoning and backdoor attacks x defences",
        "inversion": "2. Gradient inversion: features recovered from one site's update",
        "membership": "3. Membership inference against the final federated model",
    }
    for section, result in results.items():
        print()
        print(f"{titles[section]} ({timings[section]:.0f} s)")
        for line in result.pop("lines"):
            print(line)
    checks = {k: v for r in results.values() for k, v in r.get("checks", {}).items()}
    elapsed = time.perf_counter() - started
    passed = sum(1 for v in checks.values() if v)
    print()
    print(f"goals: {passed} of {len(checks)} PASS")
    print(f"({elapsed:.1f} s)")
    emit(
        {
            "benchmark": "attacks",
            "machine": machine(),
            "quick": args.quick,
            "seeds": args.seeds,
            "results": results,
            "checks": checks,
            "timings_s": timings,
            "elapsed_s": elapsed,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
