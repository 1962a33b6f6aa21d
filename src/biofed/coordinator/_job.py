"""Job specifications: what a researcher submits (``job.toml``), checked before any site is
contacted."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from biofed.core import ConfigurationError, Scalar, check_id, freeze_config
from biofed.governance._bundle import check_digest
from biofed.privacy import DPSettings
from biofed.secagg._settings import SecureAggregationSettings
from biofed.strategies import STRATEGIES, DPFedAvg, Strategy, make_strategy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_SECTIONS = {"run", "task", "strategy", "train", "evaluate", "privacy", "secure_aggregation"}
_RUN_KEYS = {
    "name",
    "dataset",
    "rounds",
    "seed",
    "min_nodes",
    "min_replies",
    "round_timeout",
    "evaluate_every",
    "agreement",
    "bundle",
}


def _scalars(section: str, value: object) -> dict[str, Scalar]:
    if not isinstance(value, dict):
        raise ConfigurationError(f"[{section}] must be a table of key = value pairs")
    for key, item in value.items():
        if not isinstance(item, (bool, int, float, str)):
            raise ConfigurationError(f"[{section}] {key} must be a number, string or boolean")
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigurationError(f"[{section}] {key} must be finite")
    return dict(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """A validated job.

    Attributes
    ----------
    name:
        A label for the run.
    dataset:
        The dataset name each site maps to its local file.
    task, task_options:
        Built-in task name (``cox_ph``…) and its options (``num_features`` …).
    strategy, strategy_options:
        Strategy name and keyword arguments.
    train, evaluate:
        Config sent with every training / evaluation instruction.
    rounds, seed, min_nodes, min_replies, round_timeout, evaluate_every:
        How the round engine runs.
    agreement:
        The study agreement the job runs under (its id), or None; sent to every node as
        config ``"agreement"``. Nodes that enforce governance refuse a job without one.
    bundle:
        The task bundle's digest (64 hex), or None; sent as config ``"bundle"``. A node runs
        the bundle's ``make_task(**task options)`` in its sandbox instead of a built-in task.
    privacy:
        The ``[privacy]`` table as :class:`~biofed.privacy.DPSettings`, or None (no DP).
        Its ``rounds`` and ``min_replies`` are the run's. Sample mode is carried out by each
        node (DP-SGD in its local training); client mode wraps the strategy in
        :class:`~biofed.strategies.DPFedAvg`.
    secure_aggregation:
        The ``[secure_aggregation]`` table, or None: with it every training round runs
        SecAgg+ and the coordinator learns only the (weighted) mean of the sites' updates.
    """

    name: str
    dataset: str
    task: str
    task_options: Mapping[str, Scalar] = field(default_factory=lambda: MappingProxyType({}))
    strategy: str = "fedavg"
    strategy_options: Mapping[str, Scalar] = field(default_factory=lambda: MappingProxyType({}))
    train: Mapping[str, Scalar] = field(default_factory=lambda: MappingProxyType({}))
    evaluate: Mapping[str, Scalar] = field(default_factory=lambda: MappingProxyType({}))
    rounds: int = 5
    seed: int = 0
    min_nodes: int = 1
    min_replies: int = 1
    round_timeout: float = 120.0
    evaluate_every: int = 1
    agreement: str | None = None
    bundle: str | None = None
    privacy: DPSettings | None = None
    secure_aggregation: SecureAggregationSettings | None = None

    def __post_init__(self) -> None:
        check_id(self.name, what="[run] name")
        if self.agreement is not None:
            check_id(self.agreement, what="[run] agreement")
        if self.bundle is not None:
            try:
                check_digest(self.bundle)
            except ConfigurationError as exc:
                raise ConfigurationError(f"[run] bundle: {exc}") from None
        check_id(self.dataset, what="[run] dataset")
        for label, value in (
            ("rounds", self.rounds),
            ("min_nodes", self.min_nodes),
            ("min_replies", self.min_replies),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"[run] {label} must be an integer >= 1, got {value!r}")
        if self.min_replies > self.min_nodes:
            raise ConfigurationError("[run] min_replies cannot exceed min_nodes")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigurationError(
                f"[run] seed must be a non-negative integer, got {self.seed!r}"
            )
        if not self.round_timeout > 0:
            raise ConfigurationError(
                f"[run] round_timeout must be > 0 seconds, got {self.round_timeout}"
            )
        if self.strategy.lower() not in STRATEGIES:
            raise ConfigurationError(
                f"[strategy] name {self.strategy!r} is unknown; choose one of {sorted(STRATEGIES)}"
            )
        if self.privacy is not None:
            if not isinstance(self.privacy, DPSettings):
                raise ConfigurationError("privacy must be a DPSettings")
            if (self.privacy.rounds, self.privacy.min_replies) != (self.rounds, self.min_replies):
                raise ConfigurationError(
                    "[privacy] rounds and min_replies must be the run's (build it with "
                    "DPSettings.from_table(..., rounds=, min_replies=))"
                )
            if self.privacy.mode == "sample" and "max_grad_norm" in self.train:
                raise ConfigurationError(
                    "[train] max_grad_norm clips whole mini-batch gradients and cannot be "
                    "combined with sample-level DP, which clips each example to "
                    "[privacy] max_grad_norm: remove it from [train]"
                )
        for attr in ("task_options", "strategy_options", "train", "evaluate"):
            object.__setattr__(self, attr, freeze_config(getattr(self, attr)))
        strategy = self.build_strategy()  # validates the strategy's options and train config
        if self.secure_aggregation is not None:
            if not strategy.supports_secure_aggregation:
                raise ConfigurationError(
                    f"[strategy] {self.strategy} needs each site's update on its own and "
                    "cannot run with [secure_aggregation]"
                )
            if self.min_replies < 2:
                raise ConfigurationError(
                    "[secure_aggregation] needs [run] min_replies >= 2: a sum of one site's "
                    "update is that update"
                )

    # -- parsing ---------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> JobSpec:
        """Build from the parsed job file (TOML tables or the equivalent JSON)."""
        unknown = set(data) - _SECTIONS
        if unknown:
            raise ConfigurationError(
                f"unknown section(s) {sorted(unknown)} in the job; allowed: {sorted(_SECTIONS)}"
            )
        run = _scalars("run", data.get("run", {}))
        bad = set(run) - _RUN_KEYS
        if bad:
            raise ConfigurationError(
                f"unknown [run] key(s) {sorted(bad)}; allowed: {sorted(_RUN_KEYS)}"
            )
        task = _scalars("task", data.get("task", {}))
        strategy = _scalars("strategy", data.get("strategy", {}))
        if "name" not in task:
            raise ConfigurationError('[task] name is required (e.g. name = "cox_ph")')
        if "dataset" not in run:
            raise ConfigurationError("[run] dataset is required: the dataset name sites registered")
        task_name = str(task.pop("name"))
        rounds = run.get("rounds", 5)
        min_replies = run.get("min_replies", 1)
        privacy = None
        if "privacy" in data:
            table = _scalars("privacy", data["privacy"])
            privacy = DPSettings.from_table(
                table,
                rounds=rounds,  # type: ignore[arg-type]
                min_replies=min_replies,  # type: ignore[arg-type]
            )
        strategy_name = str(strategy.pop("name", "fedavg"))
        secure = None
        if "secure_aggregation" in data:
            secure = SecureAggregationSettings.from_table(
                _scalars("secure_aggregation", data["secure_aggregation"])
            )
        return cls(
            name=str(run.get("name", "job")),
            dataset=str(run["dataset"]),
            task=task_name,
            task_options=task,
            strategy=strategy_name,
            strategy_options=strategy,
            train=_scalars("train", data.get("train", {})),
            evaluate=_scalars("evaluate", data.get("evaluate", {"split": "test"})),
            rounds=rounds,  # type: ignore[arg-type]
            seed=run.get("seed", 0),  # type: ignore[arg-type]
            min_nodes=run.get("min_nodes", 1),  # type: ignore[arg-type]
            min_replies=min_replies,  # type: ignore[arg-type]
            round_timeout=float(run.get("round_timeout", 120.0)),
            evaluate_every=run.get("evaluate_every", 1),  # type: ignore[arg-type]
            agreement=None if "agreement" not in run else str(run["agreement"]),
            bundle=None if "bundle" not in run else str(run["bundle"]),
            privacy=privacy,
            secure_aggregation=secure,
        )

    @classmethod
    def from_toml(cls, text: str) -> JobSpec:
        """Parse a ``job.toml``."""
        try:
            return cls.from_mapping(tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"job file is not valid TOML: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """Parse the JSON form (what travels to the coordinator)."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(f"job is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigurationError("job must be a JSON object")
        return cls.from_mapping(data)

    def to_mapping(self) -> dict[str, dict[str, Scalar]]:
        """The job file's tables (``agreement``, ``bundle`` and ``[privacy]`` only when set)."""
        governance: dict[str, Scalar] = {}
        if self.agreement is not None:
            governance["agreement"] = self.agreement
        if self.bundle is not None:
            governance["bundle"] = self.bundle
        mapping: dict[str, dict[str, Scalar]] = {
            "run": {
                "name": self.name,
                "dataset": self.dataset,
                "rounds": self.rounds,
                "seed": self.seed,
                "min_nodes": self.min_nodes,
                "min_replies": self.min_replies,
                "round_timeout": self.round_timeout,
                "evaluate_every": self.evaluate_every,
                **governance,
            },
            "task": {"name": self.task, **self.task_options},
            "strategy": {"name": self.strategy, **self.strategy_options},
            "train": dict(self.train),
            "evaluate": dict(self.evaluate),
        }
        if self.privacy is not None:
            mapping["privacy"] = self.privacy.to_table()
        if self.secure_aggregation is not None:
            mapping["secure_aggregation"] = self.secure_aggregation.to_table()
        return mapping

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal jobs give equal text."""
        return json.dumps(self.to_mapping(), sort_keys=True, separators=(",", ":"))

    # -- what the engine needs ---------------------------------------------------------------
    def build_strategy(self) -> Strategy:
        """The strategy with its options and the training / evaluation configs; wrapped in
        :class:`~biofed.strategies.DPFedAvg` when ``[privacy] mode = "client"``."""
        strategy = make_strategy(
            self.strategy,
            train_config=self.train,
            evaluate_config=self.evaluate,
            min_train_nodes=self.min_replies,
            **self.strategy_options,
        )
        if self.privacy is not None and self.privacy.mode == "client":
            strategy = DPFedAvg(
                strategy,
                clip_norm=self.privacy.max_grad_norm,
                noise_multiplier=self.privacy.client_noise_multiplier(),
                noise="distributed" if self.privacy.noise == "distributed" else "central",
            )
        return strategy

    def instruction_config(self) -> dict[str, Scalar]:
        """Run-level keys every instruction carries: the task, the dataset and, when set,
        the agreement and the bundle digest."""
        config: dict[str, Scalar] = {
            "task": self.task,
            "dataset": self.dataset,
            **{f"task.{k}": v for k, v in self.task_options.items()},
        }
        if self.agreement is not None:
            config["agreement"] = self.agreement
        if self.bundle is not None:
            config["bundle"] = self.bundle
        if self.privacy is not None:
            config.update(self.privacy.to_config())
        if self.secure_aggregation is not None:
            config.update(self.secure_aggregation.to_config())
        return config
