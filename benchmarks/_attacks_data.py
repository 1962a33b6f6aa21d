"""The two federations ``attacks.py`` attacks, and the job each one runs.

* Fed-TCGA-BRCA (FLamby's 6 centres and split; 39 covariates; linear Cox model, numpy
  ``cox_ph``), FedAvg with biofed's tuned client settings (Adam, lr 0.01, batch 8); the
  metric is the mean of the 6 per-centre test C-indices (Harrell).
* WDBC (Wisconsin Diagnostic Breast Cancer, 569 patients, 30 features; UCI, CC BY 4.0, as
  shipped by scikit-learn): a stratified 25 % test hold-out, the rest dealt IID to 6 sites
  (``biofed.data.partition_iid``) and each site's test rows likewise, features standardised
  with the training rows' mean and sd (a benchmark's choice: a real consortium would
  standardise by a federated summary); logistic regression (numpy ``logistic_regression``),
  metric ROC AUC on each site's test rows, averaged.

The split is fixed (seed 0) so that the runs' seeds vary only the training.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from biofed.coordinator import JobSpec
from biofed.data import Dataset, FederatedDataset, SiteData, partition_iid, train_test_split
from biofed.datasets import load_tcga_brca
from biofed.simulation import recommended_settings

WDBC = "wdbc"
TCGA = "tcga-brca"
NUM_SITES = 6


@dataclass(frozen=True, slots=True)
class Setting:
    """One task of the benchmark: its federation and how its job is written."""

    key: str  # "tcga" or "wdbc"
    label: str  # for tables
    fed: FederatedDataset
    task: dict[str, Any]  # the job's [task]
    train: dict[str, Any]  # the job's [train]
    metric: str  # the task's primary metric, as tables name it

    def job(
        self,
        *,
        rounds: int,
        seed: int,
        strategy: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> JobSpec:
        """The job of one run: FedAvg (or ``strategy``) over every site, ``extra`` tables
        (``[robust]``, ``[privacy]``) added as given."""
        tables: dict[str, Any] = {
            "run": {
                "name": f"attacks-{self.key}",
                "dataset": self.fed.name,
                "rounds": rounds,
                "seed": seed,
                "min_nodes": NUM_SITES,
                "min_replies": 2,
            },
            "task": dict(self.task),
            "strategy": dict(strategy or {"name": "fedavg"}),
            "train": dict(self.train),
            "evaluate": {"split": "test"},
            **(extra or {}),
        }
        return JobSpec.from_mapping(tables)


@functools.cache
def wdbc_federation() -> FederatedDataset:
    """WDBC in 6 IID sites, each with train and test rows, standardised (see the module)."""
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    X = np.asarray(raw.data, dtype=np.float64)
    # scikit-learn codes malignant as 0; the model predicts malignancy (1)
    y = (np.asarray(raw.target) == 0).astype(np.float64)
    names = tuple(str(n).replace(" ", "_") for n in raw.feature_names)
    full = Dataset(name=WDBC, features=X, feature_names=names, targets={"label": y})
    rng = np.random.default_rng(0)
    split = train_test_split(full, 0.25, rng, stratify_key="label")
    assert split.test is not None
    mean = split.train.features.mean(axis=0)
    sd = split.train.features.std(axis=0)

    def scaled(ds: Dataset) -> Dataset:
        feats = ((ds.features - mean) / sd).astype(np.float32)
        return Dataset(name=ds.name, features=feats, feature_names=names, targets=dict(ds.targets))

    train = partition_iid(scaled(split.train), NUM_SITES, rng)
    test = partition_iid(scaled(split.test), NUM_SITES, rng)
    return FederatedDataset(
        name=WDBC, sites={site: SiteData(train=train[site], test=test[site]) for site in train}
    )


@functools.cache
def settings(local_steps_tcga: int, local_steps_wdbc: int) -> dict[str, Setting]:
    """Both tasks, keyed ``"tcga"`` and ``"wdbc"``."""
    tcga = load_tcga_brca()
    tuned = dict(recommended_settings(TCGA, "fedavg").train_config)
    wdbc = wdbc_federation()
    return {
        "tcga": Setting(
            key="tcga",
            label="Fed-TCGA-BRCA (Cox, C-index)",
            fed=tcga,
            task={"name": "cox_ph", "num_features": tcga_num_features(tcga)},
            train={**tuned, "local_steps": local_steps_tcga},
            metric="c_index",
        ),
        "wdbc": Setting(
            key="wdbc",
            label="WDBC (logistic regression, ROC AUC)",
            fed=wdbc,
            task={"name": "logistic_regression", "num_features": 30},
            train={
                "batch_size": 16,
                "learning_rate": 0.01,
                "optimizer": "adam",
                "local_steps": local_steps_wdbc,
            },
            metric="roc_auc",
        ),
    }


def tcga_num_features(fed: FederatedDataset) -> int:
    return next(iter(fed.sites.values())).train.num_features
