"""The coordinator's trusted data: a job's built-in task on a dataset its operator registered.

Update validation and FLTrust (:class:`~biofed.strategies.UpdateValidation`,
``Robust(..., aggregator="fltrust")``) need a small, clean dataset the coordinator trusts.
The operator registers each in the coordinator's ``kit.toml``::

    [trusted_data]
    tcga-reference = "trusted/tcga-reference.csv"   # relative to the kit's folder

and a job names it (``[robust] trusted_dataset = "tcga-reference"``), never a path: a
researcher cannot make the coordinator read a file of their choosing. :class:`TrustedData`
turns the job's built-in task and the file into the
:class:`~biofed.strategies.TrustedValidation` the strategy uses: the score is the task's
primary metric on the data, training is the task's local training with the job's
``[train]`` config, seeded by the job's seed and the round.

Security notes
--------------
A job with a ``[run] bundle`` is refused: a bundle's code runs only in a site's sandbox,
never at the coordinator (the coordinator would otherwise execute researcher-supplied code
next to its keys and state store). The file is read by biofed's table loaders only
(pyarrow; nothing evaluated) and checked before a run uses it: the task's target columns
present, finite and (for events and labels) binary, every feature finite (``Dataset``
refuses NaN and ±inf), the feature count the job's ``[task] num_features``, at least one
row, and a finite score for the job's initial model. Not checked: the feature columns'
order (the job names no columns), which the operator must keep as the sites' (a shuffled
file scores honest updates as bad).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from types import MappingProxyType

import numpy as np

from biofed.contribution import LinearScore
from biofed.coordinator._job import JobSpec
from biofed.coordinator._job_limits import read_kit_toml
from biofed.core import BiofedError, ConfigurationError, ParameterSet, Scalar, check_id
from biofed.data import Dataset, load_table
from biofed.tasks import (
    CoxPHTask,
    LogisticRegressionTask,
    Task,
    TrainContext,
    make_task,
)

#: The dataset targets each built-in task reads (the trusted file's columns of those names).
TASK_TARGETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "cox_ph": ("event", "time"),
        "cox_ph_torch": ("event", "time"),
        "logistic_hazard_torch": ("event", "time"),
        "pem_torch": ("event", "time"),
        "logistic_regression": ("label",),
        "logistic_regression_torch": ("label",),
    }
)
#: Primary metrics where higher is better (what a trusted score must be).
_HIGHER_IS_BETTER = frozenset({"c_index", "roc_auc", "accuracy"})
_BINARY = ("event", "label")
#: Mixed into the training seed so the trusted data's batches differ from every site's.
_TRUSTED_STREAM = 0x7257


def trusted_data_from_kit(directory: str | PathLike[str]) -> dict[str, Path]:
    """The ``[trusted_data]`` table of ``directory/kit.toml``: name → file (paths relative to
    the kit's folder); empty when it has none.

    Raises
    ------
    ConfigurationError
        The file cannot be read, or an entry is not ``name = "file"`` with a biofed
        identifier and an existing file (one line each, prefixed with the kit file's path).
    """
    path, data = read_kit_toml(directory)
    table = data.get("trusted_data", {})
    if not isinstance(table, Mapping):
        raise ConfigurationError(f'{path}: [trusted_data] must be a table of name = "file"')
    out: dict[str, Path] = {}
    errors: list[str] = []
    for name, value in table.items():
        try:
            check_id(name, what="a [trusted_data] name")
        except ConfigurationError as exc:
            errors.append(f"{path}: {exc}")
            continue
        if not isinstance(value, str) or not value:
            errors.append(f'{path}: [trusted_data] {name} must be a file path ("file.csv")')
            continue
        file = Path(value)
        file = file if file.is_absolute() else Path(directory) / file
        if not file.is_file():
            errors.append(f"{path}: [trusted_data] {name}: no such file {str(file)!r}")
            continue
        out[name] = file
    if errors:
        raise ConfigurationError("\n".join(errors))
    return out


def _check_targets(data: Dataset, keys: tuple[str, ...], name: str, key: str) -> None:
    for column in keys:
        values = np.asarray(data.target(column), dtype=np.float64)
        if not np.isfinite(values).all():
            raise ConfigurationError(f"{key} {name!r}: column {column!r} has missing values")
        if column in _BINARY and not np.isin(values, (0.0, 1.0)).all():
            raise ConfigurationError(f"{key} {name!r}: column {column!r} must hold only 0 and 1")
        if column == "time" and (values < 0).any():
            raise ConfigurationError(f"{key} {name!r}: column 'time' has negative values")


class TrustedData:
    """A job's built-in task on the coordinator's trusted dataset, as a
    :class:`~biofed.strategies.TrustedValidation`.

    Parameters
    ----------
    job:
        The job (its built-in ``[task]``, ``[train]`` and seed). A job with ``[run] bundle``
        is refused: bundle code never runs at the coordinator.
    data:
        The trusted dataset, or a CSV / Parquet file holding it: the task's target columns
        by their names (``event`` and ``time`` for the survival tasks, ``label`` for the
        classifiers) and ``[task] num_features`` numeric feature columns (every other
        column, in file order).
    name:
        The name the operator registered it under (used in messages).

    Raises
    ------
    ConfigurationError
        One line naming ``[robust] trusted_dataset`` and what does not fit: a bundle task,
        an unreadable file, missing or malformed target columns, the wrong number of
        features, an empty set, or no finite score for the job's initial model.
    """

    def __init__(
        self, job: JobSpec, data: Dataset | str | PathLike[str], *, name: str = "trusted"
    ) -> None:
        key = job.trusted_key  # the table that names it, for every message below
        if job.bundle is not None:
            raise ConfigurationError(
                f"{key} cannot be used with [run] bundle: the coordinator scores and trains "
                "with the built-in task only, and bundle code never runs at the coordinator"
            )
        if not job.features_known:
            raise ConfigurationError(
                f"{key} cannot be used with [study]: the trusted file is not prepared by "
                "the study's preprocessing"
            )
        keys = TASK_TARGETS.get(job.task)
        if keys is None:  # pragma: no cover - every built-in task is listed (tested)
            raise ConfigurationError(f"{key}: task {job.task!r} has no trusted-data support")
        self.name = name
        self._data = self._load(data, keys, name, key)
        expected = int(job.task_options["num_features"])
        if self._data.num_features != expected:
            raise ConfigurationError(
                f"{key} {name!r} has {self._data.num_features} feature columns; the job's "
                f"[task] num_features is {expected}"
            )
        if len(self._data) == 0:
            raise ConfigurationError(f"{key} {name!r} is empty: it needs at least one row")
        _check_targets(self._data, keys, name, key)
        self._task: Task = make_task(job.task, **job.task_options)
        if self._task.primary_metric not in _HIGHER_IS_BETTER:
            raise ConfigurationError(
                f"{key}: the task's primary metric {self._task.primary_metric!r} is not a "
                "score where higher is better"
            )
        self._linear: LinearScore | None = None
        features = np.asarray(self._data.features, dtype=np.float64)
        if isinstance(self._task, CoxPHTask):
            self._linear = LinearScore(
                features,
                "c_index",
                time=self._data.target("time"),
                event=self._data.target("event"),
            )
        elif isinstance(self._task, LogisticRegressionTask):
            self._linear = LinearScore(
                features, self._task.primary_metric, label=self._data.target("label")
            )
        config: dict[str, Scalar] = dict(job.train)
        if job.strategy == "fedprox":  # FedProx's μ travels in every training config
            config["proximal_mu"] = job.strategy_options["proximal_mu"]
        self._train_config = MappingProxyType(config)
        self._seed = job.seed
        initial = self.score(job.initial_parameters())
        if not math.isfinite(initial):
            raise ConfigurationError(
                f"{key} {name!r} gives no finite {self.metric} for the job's initial model "
                "(too few events or a single class?)"
            )

    @staticmethod
    def _load(
        data: Dataset | str | PathLike[str], keys: tuple[str, ...], name: str, key: str
    ) -> Dataset:
        if isinstance(data, Dataset):
            missing = [k for k in keys if k not in data.targets]
            if missing:
                raise ConfigurationError(f"{key} {name!r} has no target {missing[0]!r}")
            return data
        try:
            return load_table(data, target_columns={k: k for k in keys}, name="trusted")
        except BiofedError as exc:
            text = str(exc).strip().splitlines()
            raise ConfigurationError(
                f"{key} {name!r}: {text[0] if text else type(exc).__name__}"
            ) from None

    def __repr__(self) -> str:
        return f"TrustedData(name={self.name!r}, rows={len(self._data)}, metric={self.metric!r})"

    @property
    def num_examples(self) -> int:
        """Rows of the trusted dataset."""
        return len(self._data)

    @property
    def metric(self) -> str:
        """The task's primary metric (``c_index``, ``roc_auc`` or ``accuracy``)."""
        return self._task.primary_metric

    def score(self, parameters: ParameterSet) -> float:
        """The primary metric of ``parameters`` on the trusted data (NaN if not finite)."""
        ctx = TrainContext(rng=np.random.default_rng([self._seed, _TRUSTED_STREAM]))
        value = self._task.evaluate(parameters, self._data, ctx).metrics.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return math.nan
        return float(value)

    @property
    def linear_score(self) -> LinearScore | None:
        """The same score as :meth:`score`, fast, for the built-in numpy linear tasks
        (``cox_ph``, ``logistic_regression``; None for the others): contribution measures
        score hundreds of coalition models a round with it (see
        :class:`~biofed.contribution.LinearScore`)."""
        return self._linear

    def train(self, parameters: ParameterSet, server_round: int) -> ParameterSet:
        """The model after the job's local training (``[train]``) on the trusted data from
        ``parameters``, its batches drawn from the job's seed and ``server_round``."""
        rng = np.random.default_rng([self._seed, server_round, _TRUSTED_STREAM])
        ctx = TrainContext(config=self._train_config, rng=rng)
        return self._task.train(parameters, self._data, ctx).parameters
