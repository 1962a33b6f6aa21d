"""Job specifications: what a researcher submits (``job.toml``), checked before any site is
contacted.

Every value is checked against the declarative schema of :mod:`._job_schema` (types,
ranges, finite numbers, unknown keys in every table), then across fields (``min_replies``
≤ ``min_nodes``, secure aggregation with the strategy …), then, at a coordinator, against
its operator's :class:`~biofed.coordinator.JobLimits`. Each problem is one line naming the
field and what it may be; no file content, however malformed (not UTF-8, nested thousands
of levels, duplicate JSON keys), escapes as anything but a
:class:`~biofed.core.ConfigurationError`.

Security notes
--------------
The coordinator parses text that any researcher of the consortium sends. Parsing is
bounded (1 MiB, ``RecursionError`` from deep nesting caught, Python's 4,300-digit integer
limit), and a JSON object with a key given twice is refused: RFC 8259 §4 leaves the
meaning of duplicate names to each parser, and a job that one component reads as
``rounds = 1`` and another as ``rounds = 1e12`` is a parser-differential attack.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from biofed.coordinator._engine import EngineConfig
from biofed.coordinator._job_contribution import contribution_errors, wrap_measured
from biofed.coordinator._job_robust import CHECKING, needs_trusted, robust_errors, wrap_robust
from biofed.coordinator._job_rules import error_text
from biofed.coordinator._job_schema import check_job
from biofed.coordinator._preprocess import fitted_task_options
from biofed.core import BiofedError, ConfigurationError, ParameterSet, Scalar, freeze_config
from biofed.core.sections import NO_DIRECTIVES, JobSection, StudySection, flat_sections
from biofed.data import Preprocessing, StudySpec, load_study_spec
from biofed.privacy import DPSettings
from biofed.secagg import SecureAggregationSettings
from biofed.strategies import DPFedAvg, Strategy, TrustedValidation, make_strategy
from biofed.tasks import LocalTrainingConfig, Task, make_task, parameter_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from biofed.coordinator._job_limits import JobLimits

#: Largest job file or JSON text accepted (a real one is a few KiB).
MAX_JOB_BYTES = 1 << 20


def _text(data: str | bytes, what: str) -> str:
    """``data`` as text, or one line saying why it is not a job file's text."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) > MAX_JOB_BYTES:
            raise ConfigurationError(f"{what} is larger than {MAX_JOB_BYTES} bytes")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigurationError(
                f"{what} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
            ) from None
    if not isinstance(data, str):
        raise ConfigurationError(f"{what} must be text, got {type(data).__name__}")
    if len(data) > MAX_JOB_BYTES:
        raise ConfigurationError(f"{what} is larger than {MAX_JOB_BYTES} characters")
    try:
        data.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"{what} is not valid Unicode (a lone surrogate at offset {exc.start})"
        ) from None
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (parsers disagree on which one wins)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            shown = repr(key) if len(key) <= 40 else f"of {len(key)} characters"
            raise ConfigurationError(f"job is not valid JSON: key {shown} appears twice")
        out[key] = value
    return out


def parse_toml(data: str | bytes, what: str) -> dict[str, Any]:
    """A job file's TOML tables (``what`` names it in the one-line error): UTF-8, bounded,
    nesting and huge integers refused. Shared by every kind of job file."""
    text = _text(data, what)
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigurationError(f"{what} is not valid TOML: nested too deeply") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer of thousands of digits
        raise ConfigurationError(f"{what} is not valid TOML: {_first_line(exc)}") from None


def parse_json(data: str | bytes, what: str = "job") -> dict[str, Any]:
    """A job's JSON object (what travels to the coordinator and what it stores): bounded,
    a key given twice refused (RFC 8259 §4 parser differentials)."""
    text = _text(data, what)
    try:
        parsed = json.loads(text, object_pairs_hook=_no_duplicates)
    except ConfigurationError:
        raise
    except RecursionError:
        raise ConfigurationError(f"{what} is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ConfigurationError(f"{what} is not valid JSON: {_first_line(exc)}") from None
    if not isinstance(parsed, dict):
        raise ConfigurationError(f"{what} must be a JSON object")
    return parsed


def read_job_file(path: str | PathLike[str]) -> bytes:
    """A job file's bytes, at most one more than :data:`MAX_JOB_BYTES` (the parser refuses
    more); an unreadable file is one ConfigurationError."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            return handle.read(MAX_JOB_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {file}: {exc.strerror or exc}") from None


def _study(table: Mapping[str, Scalar], base: str | PathLike[str] | None) -> StudySpec:
    """The ``[study]`` table's spec: read from ``spec`` (relative to ``base``) or rebuilt
    from ``spec_json``, and checked against ``digest`` when given."""
    path, text, digest = table.get("spec"), table.get("spec_json"), table.get("digest")
    if (path is None) == (text is None):
        raise ConfigurationError("[study] needs exactly one of spec (a file) and spec_json")
    try:
        if path is not None:
            file = Path(str(path))
            if not file.is_absolute() and base is not None:
                file = Path(base) / file
            study = load_study_spec(file)
        else:
            study = StudySpec.from_json(str(text))
    except BiofedError as exc:
        raise ConfigurationError(f"[study] {_first_line(exc)}") from None
    if digest is not None and digest != study.digest:
        raise ConfigurationError(
            f"[study] digest is {digest}, but the spec's is {study.digest} (the spec changed?)"
        )
    return study


def _dimension(task: str, options: Mapping[str, Scalar]) -> int:
    spec = parameter_spec(task, **options)
    return sum(math.prod(shape) for _, shape, _ in spec.entries)


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
    study:
        The ``[study]`` dataset spec (read from its file when the job was parsed), or None:
        with it the run starts with the federated preprocessing phase and every site trains
        on its own compilation of the spec; ``task_options`` may then lack
        ``num_features`` until :meth:`with_preprocessing` sets it.
    robust:
        The ``[robust]`` table (normalised), or None: with it
        :meth:`build_strategy` wraps the strategy in :class:`~biofed.strategies.Robust`
        (robust aggregation, norm bounding, validation on the coordinator's trusted data).
    contribution:
        The ``[contribution]`` table (normalised), or None: with it :meth:`build_strategy`
        wraps the strategy (after Robust or DP-FedAvg) in
        :class:`~biofed.contribution.Measured`, which measures each round's contributions
        on the coordinator's trusted data.

    Notes
    -----
    Build one with :meth:`from_file`, :meth:`from_toml`, :meth:`from_json` or
    :meth:`from_mapping` (``limits=`` adds a coordinator's :class:`JobLimits`). Every
    field, however the spec is built, is checked against the job schema
    (``docs/job-reference.md``, :meth:`reference`); all problems are reported together, one
    line each, in a :class:`~biofed.core.ConfigurationError`.
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
    study: StudySpec | None = None
    robust: Mapping[str, Scalar] | None = None
    contribution: Mapping[str, Scalar] | None = None

    def __post_init__(self) -> None:
        if self.study is not None and not isinstance(self.study, StudySpec):
            raise ConfigurationError("study must be a StudySpec")
        if self.privacy is not None and not isinstance(self.privacy, DPSettings):
            raise ConfigurationError("privacy must be a DPSettings")
        if self.secure_aggregation is not None and not isinstance(
            self.secure_aggregation, SecureAggregationSettings
        ):
            raise ConfigurationError("secure_aggregation must be a SecureAggregationSettings")
        errors: list[str] = []
        for attr, section in (("task_options", "task"), ("strategy_options", "strategy")):
            options = getattr(self, attr)
            if not isinstance(options, Mapping) or "name" in options:
                errors.append(f"[{section}] options must be a table without a 'name' key")
        robust: object = self.robust
        if robust is not None and not isinstance(robust, Mapping):
            errors.append("[robust] must be a table of key = value pairs")
        contribution: object = self.contribution
        if contribution is not None and not isinstance(contribution, Mapping):
            errors.append("[contribution] must be a table of key = value pairs")
        if not errors:
            tables = check_job(self.to_mapping(), errors)
        if not errors:
            self._normalise(tables)
            self._check_across(errors)
        if errors:
            raise ConfigurationError(error_text(errors))
        for attr in ("task_options", "strategy_options", "train", "evaluate"):
            object.__setattr__(self, attr, freeze_config(getattr(self, attr)))
        if self.robust is not None:
            object.__setattr__(self, "robust", freeze_config(self.robust))
        if self.contribution is not None:
            object.__setattr__(self, "contribution", freeze_config(self.contribution))
        try:
            LocalTrainingConfig.from_config(self.train)  # what every site will parse
        except ConfigurationError as exc:
            raise ConfigurationError(f"[train] {exc}") from None
        # validates the strategy's options and train config (trusted data is the
        # coordinator's, added when the run starts)
        strategy = self.build_strategy(trusted=CHECKING if self.needs_trusted else None)
        if self.secure_aggregation is not None and not strategy.supports_secure_aggregation:
            what = f"[strategy] {self.strategy}"
            if self.robust is not None:
                what = f'[robust] aggregator "{self.robust.get("aggregator", "mean")}"'
            raise ConfigurationError(
                f"{what} needs each site's update on its own and cannot run with "
                "[secure_aggregation]"
            )

    def _normalise(self, tables: dict[str, dict[str, Scalar]]) -> None:
        """Keep the schema's normalised values (floats for numbers, lower-case names)."""
        run = tables["run"]
        object.__setattr__(self, "round_timeout", run["round_timeout"])
        task = dict(tables["task"])
        task.pop("name")
        strategy = dict(tables["strategy"])
        object.__setattr__(self, "strategy", strategy.pop("name"))
        object.__setattr__(self, "task_options", task)
        object.__setattr__(self, "strategy_options", strategy)
        object.__setattr__(self, "train", tables["train"])
        object.__setattr__(self, "evaluate", tables["evaluate"])
        if self.robust is not None:
            object.__setattr__(self, "robust", tables["robust"])
        if self.contribution is not None:
            object.__setattr__(self, "contribution", tables["contribution"])

    def _check_across(self, errors: list[str]) -> None:
        """Rules between fields, each problem one line."""
        robust_errors(self, errors)
        contribution_errors(self, errors)
        if self.min_replies > self.min_nodes:
            errors.append(
                f"[run] min_replies cannot exceed [run] min_nodes ({self.min_nodes}), "
                f"got {self.min_replies}"
            )
        if self.strategy == "scaffold" and self.train.get("momentum", 0.0) != 0.0:
            errors.append("[train] momentum must be 0 with [strategy] scaffold (plain local SGD)")
        if self.privacy is not None:
            if (self.privacy.rounds, self.privacy.min_replies) != (self.rounds, self.min_replies):
                errors.append(
                    "[privacy] rounds and min_replies must be the run's (build it with "
                    "DPSettings.from_table(..., rounds=, min_replies=))"
                )
            if self.privacy.mode == "sample" and "max_grad_norm" in self.train:
                errors.append(
                    "[train] max_grad_norm clips whole mini-batch gradients and cannot be "
                    "combined with sample-level DP, which clips each example to "
                    "[privacy] max_grad_norm: remove it from [train]"
                )
        if self.secure_aggregation is not None and self.features_known:
            if self.min_replies < 2:
                errors.append(
                    "[secure_aggregation] needs [run] min_replies >= 2: a sum of one site's "
                    "update is that update"
                )
                return
            try:  # the ring must hold the sum of min_nodes sites' updates
                dimension = _dimension(self.task, self.task_options)
                self.secure_aggregation.secagg_config(dimension).plan(self.min_nodes)
            except ConfigurationError as exc:
                errors.append(f"[secure_aggregation] {_first_line(exc)}")

    # -- parsing ---------------------------------------------------------------------------
    @property
    def needs_trusted(self) -> bool:
        """Whether the job uses the coordinator's trusted data: its ``[robust]`` table
        (validation or FLTrust) or its ``[contribution]`` table."""
        return needs_trusted(self.robust) or self.contribution is not None

    @property
    def trusted_dataset(self) -> str | None:
        """The trusted dataset the job names (``[robust]`` or ``[contribution]``
        ``trusted_dataset``; the same one when both do), or None."""
        name = None if self.robust is None else self.robust.get("trusted_dataset")
        if name is None and self.contribution is not None:
            name = self.contribution.get("trusted_dataset")
        return None if name is None else str(name)

    @property
    def trusted_key(self) -> str:
        """The job-file key that names the trusted dataset (for error messages):
        ``[contribution] trusted_dataset`` when only that table names one."""
        named = self.robust is not None and "trusted_dataset" in self.robust
        if self.contribution is not None and not named:
            return "[contribution] trusted_dataset"
        return "[robust] trusted_dataset"

    @property
    def features_known(self) -> bool:
        """Whether the model's size is known (False only for a study job whose fitted
        preprocessing has not set ``num_features`` yet)."""
        return self.study is None or "num_features" in self.task_options

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        limits: JobLimits | None = None,
        base: str | PathLike[str] | None = None,
    ) -> JobSpec:
        """Build from the parsed job file (TOML tables or the equivalent JSON).

        Parameters
        ----------
        data:
            The job's tables.
        limits:
            A coordinator's caps, checked after the schema (None: the schema only, as when a
            stored run is read back).
        base:
            The folder a ``[study] spec`` path is relative to (default: the current one).

        Raises
        ------
        ConfigurationError
            With one line per problem, naming the field and what it may be.
        """
        errors: list[str] = []
        tables = check_job(data, errors)
        if errors:
            raise ConfigurationError(error_text(errors))
        run = tables["run"]
        task = dict(tables["task"])
        strategy = dict(tables.get("strategy", {}))
        rounds = int(run.get("rounds", 5))
        min_replies = int(run.get("min_replies", 1))
        privacy = None
        if "privacy" in tables:
            privacy = DPSettings.from_table(
                tables["privacy"], rounds=rounds, min_replies=min_replies
            )
        secure = None
        if "secure_aggregation" in tables:
            secure = SecureAggregationSettings.from_table(tables["secure_aggregation"])
        agreement, bundle = run.get("agreement"), run.get("bundle")
        study = None
        if "study" in tables:
            study = _study(tables["study"], base)
        spec = cls(
            name=str(run.get("name", "job")),
            dataset=str(run["dataset"]),
            task=str(task.pop("name")),
            task_options=task,
            strategy=str(strategy.pop("name", "fedavg")),
            strategy_options=strategy,
            train=tables.get("train", {}),
            evaluate=tables.get("evaluate", {"split": "test"}),
            rounds=rounds,
            seed=int(run.get("seed", 0)),
            min_nodes=int(run.get("min_nodes", 1)),
            min_replies=min_replies,
            round_timeout=float(run.get("round_timeout", 120.0)),
            evaluate_every=int(run.get("evaluate_every", 1)),
            agreement=None if agreement is None else str(agreement),
            bundle=None if bundle is None else str(bundle),
            privacy=privacy,
            secure_aggregation=secure,
            study=study,
            robust=tables.get("robust"),
            contribution=tables.get("contribution"),
        )
        return spec if limits is None else limits.check(spec)

    @classmethod
    def from_toml(
        cls,
        text: str | bytes,
        *,
        limits: JobLimits | None = None,
        base: str | PathLike[str] | None = None,
    ) -> JobSpec:
        """Parse a ``job.toml`` (text, or bytes that must be UTF-8); a ``[study] spec`` path
        is relative to ``base`` (default: the current folder)."""
        data = parse_toml(text, "job file")
        return cls.from_mapping(data, limits=limits, base=base)

    @classmethod
    def from_json(cls, text: str | bytes, *, limits: JobLimits | None = None) -> JobSpec:
        """Parse the JSON form (what travels to the coordinator and what it stores)."""
        data = parse_json(text)
        return cls.from_mapping(data, limits=limits)

    @classmethod
    def from_file(cls, path: str | PathLike[str], *, limits: JobLimits | None = None) -> JobSpec:
        """Read and parse a ``job.toml`` file; every failure is one ConfigurationError."""
        return cls.from_toml(read_job_file(path), limits=limits, base=Path(path).parent)

    @staticmethod
    def reference() -> str:
        """The job-file reference (Markdown, ``docs/job-reference.md``), rendered from the
        same schema that checks job files."""
        from biofed.coordinator._job_reference import render_job_reference

        return render_job_reference()

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
        if self.study is not None:
            mapping["study"] = {"spec_json": self.study.to_json(), "digest": self.study.digest}
        if self.robust is not None:
            mapping["robust"] = dict(self.robust)
        if self.contribution is not None:
            mapping["contribution"] = dict(self.contribution)
        return mapping

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal jobs give equal text."""
        return json.dumps(self.to_mapping(), sort_keys=True, separators=(",", ":"))

    # -- what the engine needs ---------------------------------------------------------------
    def build_strategy(self, *, trusted: TrustedValidation | None = None) -> Strategy:
        """The strategy with its options and the training / evaluation configs; wrapped in
        :class:`~biofed.strategies.DPFedAvg` when ``[privacy] mode = "client"``, or in
        :class:`~biofed.strategies.Robust` as the ``[robust]`` table says, and then in
        :class:`~biofed.contribution.Measured` when the job has ``[contribution]``.

        ``trusted`` is the coordinator's trusted data (a
        :class:`~biofed.coordinator.TrustedData`), for a ``[robust]`` table that validates
        updates or runs FLTrust, and for ``[contribution]``.

        Raises
        ------
        ConfigurationError
            When the ``[robust]`` or ``[contribution]`` table uses trusted data and
            ``trusted`` is None.
        """
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
        if self.robust is not None:  # never with client-level DP (refused at parse)
            error = 0.0
            if (secure := self.secure_aggregation) is not None:
                # SecAggPlan.error_bound: s/2 + 2^-23·(r + s) per released value
                step = secure.quantisation_step
                error = step / 2 + (secure.clip_range + step) * 2.0**-23
            strategy = wrap_robust(strategy, self.robust, trusted, secure_value_error=error)
        if self.contribution is not None:  # never with secure aggregation (refused at parse)
            strategy = wrap_measured(strategy, self.contribution, trusted)
        return strategy

    def engine_config(self, *, deadline: bool = True) -> EngineConfig:
        """The round engine's settings for this job; without ``deadline`` rounds wait for
        every site (a simulation's virtual sites answer one after another, so wall time is
        no measure)."""
        return EngineConfig(
            rounds=self.rounds,
            min_nodes=self.min_nodes,
            min_replies=self.min_replies,
            round_timeout=self.round_timeout if deadline else None,
            evaluate_every=self.evaluate_every,
            seed=self.seed,
        )

    def initial_parameters(self, make: Callable[..., Task] = make_task) -> ParameterSet:
        """The model a run starts from: the task's initial parameters for the job's seed (a
        bundle's task declares the same layout by name); ``make`` builds the task by name.

        Raises
        ------
        ConfigurationError
            For a study job before :meth:`with_preprocessing` (the model's size is not known).
        """
        if not self.features_known:
            raise ConfigurationError(
                "the study's preprocessing sets [task] num_features: fit it first "
                "(JobSpec.with_preprocessing)"
            )
        task = make(self.task, **self.task_options)
        return task.init_parameters(np.random.default_rng(self.seed))

    def job_section(self) -> JobSection:
        """The typed job section every instruction of the run carries: the task, its
        options, the dataset, the agreement and bundle when set, and the privacy and
        secure-aggregation settings (each owned and parsed by its package)."""
        return JobSection(
            dataset=self.dataset,
            task=self.task,
            task_options=self.task_options,
            agreement=self.agreement,
            bundle=self.bundle,
            privacy=None if self.privacy is None else self.privacy.to_section(),
            secure_aggregation=(
                None if self.secure_aggregation is None else self.secure_aggregation.to_section()
            ),
            study=(
                None
                if self.study is None
                else StudySection(spec=self.study.to_json(), digest=self.study.digest)
            ),
        )

    def with_preprocessing(self, preprocessing: Preprocessing) -> JobSpec:
        """This job once its preprocessing is fitted: ``[task] num_features`` is the fitted
        feature count.

        Raises
        ------
        ConfigurationError
            If the job has no study, or its ``num_features`` differs from the fitted count
            (one line naming both and the features).
        """
        if self.study is None:
            raise ConfigurationError("a job without [study] has no preprocessing")
        return dataclasses.replace(
            self, task_options=fitted_task_options(self.task_options, preprocessing)
        )

    def instruction_config(self) -> dict[str, Scalar]:
        """:meth:`job_section` in the flat form (as it travels on the wire)."""
        return flat_sections(self.job_section(), NO_DIRECTIVES)
