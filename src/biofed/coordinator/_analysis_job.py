"""Analysis jobs: a federated query a researcher submits (``analysis.toml``), checked before
any site is contacted.

An analysis job asks every site of a dataset one :class:`~biofed.analytics.Query` (a
count, the moments of some columns, a Kaplan–Meier curve, a Cox model…) instead of training
a model. Its file has four tables::

    [run]                 name, dataset, min_nodes, min_replies, round_timeout, agreement
    [study]               optional: the study spec each site compiles (no preprocessing
                          phase: the query reads the extracted table's columns by name)
    [secure_aggregation]  optional: the sites' answers are summed under SecAgg+
    [analysis]            kind = "count" | "describe" | …, the kind's options inline,
                          [[analysis.where]] filters, split, [analysis.dp], [analysis.rules]

It is stored and travels as JSON of the same tables; a stored run spec with an
``[analysis]`` table is an analysis job, any other a :class:`~biofed.coordinator.JobSpec`
(:func:`run_spec_from_json`, the one place that tells them apart).

Secure sums
-----------
With ``[secure_aggregation]`` each site masks its answer's arrays and its record count as
one float64 vector (:func:`biofed.analytics.secure_vector`) with weight 1, and the
coordinator unmasks only their sum. The fixed-point grid has step ``s``
(``quantisation_step``, default 1e-6) over ``[-r, r]`` (``clip_range``, default 1e9, at
most 1e15, and ``2r/s`` at most 2^53 so that every grid point is an exact float64): a
secure sum over ``n`` sites is within ``n·s/2`` of the exact sum (with the defaults and ten
sites, 5e-6 absolute), plus the float64 rounding of the result; with a step ``1/K`` and a
whole ``r`` (the defaults) a zero and a sum of integers (a count) come back exact
(the secure sum's decoding removes the grid's offset in integers). A site whose value lies
beyond ``±r`` refuses to answer (never clipped silently) and names ``clip_range`` to raise:
sums of squares outgrow 1e9 quickly (Fed-TCGA-BRCA's follow-up days squared at one site).

Security notes
--------------
The coordinator parses text that any researcher of the consortium sends: the same bounded,
duplicate-key-refusing parsing as :class:`~biofed.coordinator.JobSpec` (1 MiB, RFC 8259 §4
parser differentials, deep nesting), every ``[run]`` key checked by the job schema's rules,
the query by its kind's own checks, and a one-line error naming the field.

The disclosure rules a request states are the job's ``[analysis.rules]`` (the defaults of
:class:`~biofed.analytics.DisclosureRules` for keys it leaves out) made at least as strict
as the agreement's ``[analytics]`` thresholds when the coordinator keeps the agreement. A
job cannot loosen what a site protects: each site answers under the stricter of its own
rules (``node.toml``, the agreement) and the request's in plain mode, and refuses a secure
request looser than its own; a job may ask for looser rules than the defaults only where
the sites agreed to them (e.g. ``records_per_parameter = 1`` for a 39-covariate Cox model
on Fed-TCGA-BRCA, whose smallest site holds 40 training rows).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biofed.analytics import DisclosureRules, DPOptions, Filter, Query, start
from biofed.coordinator._job import JobSpec, _study, parse_json, parse_toml, read_job_file
from biofed.coordinator._job_rules import (
    Field,
    Integer,
    Number,
    Table,
    error_text,
    show,
)
from biofed.coordinator._job_schema import RUN
from biofed.core import ConfigurationError, Scalar
from biofed.core.sections import JobSection, StudySection
from biofed.data import StudySpec
from biofed.secagg import SecureAggregationSettings

if TYPE_CHECKING:
    from biofed.coordinator._job_limits import JobLimits

#: Longest query JSON (the site's limit for a query).
MAX_QUERY_CHARS = 1 << 16
#: Keys of ``[analysis]`` that are not the kind's options.
QUERY_KEYS = ("kind", "where", "split", "dp", "rules")
#: Default ``[secure_aggregation]`` of an analysis: a grid of 1e-6 over ±1e9, weight 1.
ANALYSIS_CLIP_RANGE = 1e9
ANALYSIS_QUANTISATION_STEP = 1e-6
#: Most fixed-point levels ``2r/s``: every grid point an exact float64 (the site's
#: quantisation and the coordinator's decoding stay exact integers).
MAX_LEVELS = float(1 << 53)

_RUN_KEYS = ("name", "dataset", "min_nodes", "min_replies", "round_timeout", "agreement")
_RUN_DOCS = {
    "min_nodes": "Sites connected before the query starts (capped by `[limits] max_min_nodes`).",
    "min_replies": "Valid answers each pass needs; fewer and the run fails with the sites' "
    "reasons. At most `min_nodes`; at least 2 with `[secure_aggregation]`.",
    "round_timeout": "Seconds each pass waits for the sites' answers (capped by `[limits] "
    "max_round_timeout`).",
}

ANALYSIS_RUN = Table(
    name="run",
    doc="How the coordinator runs the query: the dataset it asks, how many sites must take "
    "part, how long each pass waits, and the governance it runs under.",
    fields=tuple(
        Field(
            name=f.name,
            rule=f.rule,
            doc=_RUN_DOCS.get(f.name, f.doc),
            default="analysis" if f.name == "name" else f.default,
            required=f.required,
        )
        for f in RUN.fields
        if f.name in _RUN_KEYS
    ),
    hints={
        "rounds": "a query runs the passes its kind needs",
        "seed": "sites draw DP noise from a CSPRNG",
        "evaluate_every": "an analysis trains no model",
        "bundle": "an analysis runs no task bundle",
    },
)

ANALYSIS_SECURE_AGGREGATION = Table(
    name="secure_aggregation",
    doc="SecAgg+ for the query (optional): the coordinator unmasks only the sum of the "
    "sites' answers. Every site adds weight 1; a sum over n sites is within n·s/2 of the "
    "exact sum, and with s = 1/K and a whole r (the defaults) zeros and counts are exact.",
    fields=(
        Field(
            name="num_neighbours",
            rule=Integer(2, 2**31 - 1),
            doc="Even degree k of the SecAgg+ neighbour graph (default: the full graph).",
        ),
        Field(
            name="threshold",
            rule=Integer(2, 2**31 - 1),
            doc="Share holders needed to unmask (default: the smallest strict majority).",
        ),
        Field(
            name="clip_range",
            rule=Number(0.0, 1e15, lo_open=True),
            doc="r: every value a site sums must lie in [-r, r]; a site refuses (naming this "
            "key) rather than clip.",
            default=ANALYSIS_CLIP_RANGE,
        ),
        Field(
            name="quantisation_step",
            rule=Number(0.0, 1e6, lo_open=True),
            doc="s: the fixed-point step; 2r/s may be at most 2^53.",
            default=ANALYSIS_QUANTISATION_STEP,
        ),
    ),
    hints={"max_weight": "every site adds its answer with weight 1"},
)


def _secure(table: Mapping[str, Scalar]) -> SecureAggregationSettings:
    values: dict[str, Scalar] = {
        "clip_range": ANALYSIS_CLIP_RANGE,
        "quantisation_step": ANALYSIS_QUANTISATION_STEP,
    }
    values.update(table)
    return SecureAggregationSettings.from_table({**values, "max_weight": 1})


def _filters(raw: object) -> tuple[Filter, ...]:
    if not isinstance(raw, list):
        raise ConfigurationError(
            f"[analysis] where must be an array of tables ([[analysis.where]]), got {show(raw)}"
        )
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(Filter.from_dict(item))
        except ConfigurationError as exc:
            raise ConfigurationError(f"[analysis] where[{i}]: {exc}") from None
    return tuple(out)


def query_from_table(table: object) -> tuple[Query, DisclosureRules | None]:
    """The ``[analysis]`` table's query and its requested rules (None when not given).

    Raises
    ------
    ConfigurationError
        One line naming the key (``[analysis] …``).
    """
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"[analysis] must be a table, got {show(table)}")
    if "kind" not in table:
        raise ConfigurationError("[analysis] kind is required (count, describe, km, cox, …)")
    options = {k: v for k, v in table.items() if k not in QUERY_KEYS}
    rules = None
    try:
        if "rules" in table:
            rules = DisclosureRules.from_mapping(table["rules"], what="[analysis.rules]")
        dp = table.get("dp")
        if dp is not None and not isinstance(dp, Mapping):
            raise ConfigurationError(f"[analysis.dp] must be a table, got {show(dp)}")
        split = table.get("split", "all")
        if not isinstance(split, str):
            raise ConfigurationError(f"split must be a string, got {show(split)}")
        query = Query(
            kind=table["kind"],
            options=options,
            where=_filters(table.get("where", [])),
            split=split,
            dp=None if dp is None else DPOptions.from_dict(dp),
        )
    except ConfigurationError as exc:
        text = str(exc).splitlines()[0] if str(exc) else "invalid"
        raise ConfigurationError(
            text if text.startswith("[analysis") else f"[analysis] {text}"
        ) from None
    if len(query.to_json()) > MAX_QUERY_CHARS:
        raise ConfigurationError(
            f"[analysis] the query is longer than {MAX_QUERY_CHARS} characters as JSON"
        )
    return query, rules


def query_table(query: Query, rules: DisclosureRules | None = None) -> dict[str, Any]:
    """The ``[analysis]`` table of ``query`` (and the requested ``rules``); an option whose
    value is None (its default) is left out."""
    table: dict[str, Any] = {k: v for k, v in query.options.items() if v is not None}
    table["kind"] = query.kind
    table["split"] = query.split
    if query.where:
        table["where"] = [
            {k: v for k, v in f.to_dict().items() if v is not None} for f in query.where
        ]
    if query.dp is not None:
        table["dp"] = query.dp.to_dict()
    if rules is not None:
        table["rules"] = rules.to_dict()
    return table


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalysisJob:
    """A validated analysis job (see the module).

    Attributes
    ----------
    name:
        A label; the run id is ``NAME-xxxxxxxx``.
    dataset:
        The dataset name each site registered.
    query:
        The query every site answers.
    rules:
        The disclosure rules the job asks the coordinator to apply (``[analysis.rules]``;
        the defaults for keys it leaves out); :meth:`request_rules` makes them at least as
        strict as the agreement's.
    min_nodes, min_replies, round_timeout:
        Sites connected before the query starts; valid answers each pass needs; seconds
        each pass waits.
    agreement:
        The study agreement's id, or None.
    secure_aggregation:
        With settings, the answers are summed under SecAgg+ (weight 1 each), or None.
    study:
        The study spec every site compiles, or None (the dataset is a prepared table).
    """

    name: str = "analysis"
    dataset: str
    query: Query
    rules: DisclosureRules = field(default_factory=DisclosureRules)
    min_nodes: int = 1
    min_replies: int = 1
    round_timeout: float = 120.0
    agreement: str | None = None
    secure_aggregation: SecureAggregationSettings | None = None
    study: StudySpec | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.query, Query):
            raise ConfigurationError("an analysis job's query must be a Query")
        if not isinstance(self.rules, DisclosureRules):
            raise ConfigurationError("an analysis job's rules must be DisclosureRules")
        if self.study is not None and not isinstance(self.study, StudySpec):
            raise ConfigurationError("study must be a StudySpec")
        secure = self.secure_aggregation
        if secure is not None and not isinstance(secure, SecureAggregationSettings):
            raise ConfigurationError("secure_aggregation must be a SecureAggregationSettings")
        errors: list[str] = []
        run = ANALYSIS_RUN.check(self._run_table(), errors)
        if errors:
            raise ConfigurationError(error_text(errors))
        object.__setattr__(self, "round_timeout", run["round_timeout"])
        if self.min_replies > self.min_nodes:
            errors.append(
                f"[run] min_replies cannot exceed [run] min_nodes ({self.min_nodes}), "
                f"got {self.min_replies}"
            )
        if secure is not None:
            self._check_secure(secure, errors)
        if errors:
            raise ConfigurationError(error_text(errors))
        try:  # the kind's own refusal (a kind that needs each site's answer, in secure mode)
            start(self.query, self.rules, secure=secure is not None)
        except ConfigurationError as exc:
            where = "[secure_aggregation]" if secure is not None else "[analysis]"
            raise ConfigurationError(f"{where} {str(exc).splitlines()[0]}") from None

    def _check_secure(self, secure: SecureAggregationSettings, errors: list[str]) -> None:
        if secure.max_weight != 1:
            errors.append("[secure_aggregation] an analysis sums every site with weight 1")
        if self.min_replies < 2:
            errors.append(
                "[secure_aggregation] needs [run] min_replies >= 2: a sum of one site's "
                "answer is that answer"
            )
        levels = 2 * secure.clip_range / secure.quantisation_step
        if levels > MAX_LEVELS:
            errors.append(
                f"[secure_aggregation] 2 × clip_range / quantisation_step is {levels:.3g}, "
                "at most 2^53 (every grid point an exact float64): raise quantisation_step "
                "or lower clip_range"
            )
        elif self.min_nodes >= 2:
            try:  # the ring must hold the sum of min_nodes sites' answers
                secure.secagg_config(1).plan(self.min_nodes)
            except ConfigurationError as exc:
                errors.append(f"[secure_aggregation] {str(exc).splitlines()[0]}")

    def _run_table(self) -> dict[str, Scalar]:
        table: dict[str, Scalar] = {
            "name": self.name,
            "dataset": self.dataset,
            "min_nodes": self.min_nodes,
            "min_replies": self.min_replies,
            "round_timeout": self.round_timeout,
        }
        if self.agreement is not None:
            table["agreement"] = self.agreement
        return table

    # -- parsing ---------------------------------------------------------------------------
    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        limits: JobLimits | None = None,
        base: str | PathLike[str] | None = None,
    ) -> AnalysisJob:
        """Build from the parsed file (TOML tables or the equivalent JSON).

        Parameters
        ----------
        limits:
            A coordinator's caps (``max_min_nodes``, ``max_round_timeout``), or None.
        base:
            The folder a ``[study] spec`` path is relative to.

        Raises
        ------
        ConfigurationError
            One line per problem, naming the table and key.
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"an analysis job is a table of tables, got {show(data)}")
        allowed = ("run", "study", "secure_aggregation", "analysis")
        errors: list[str] = []
        for name in data:
            if name not in allowed:
                shown = f"[{name}]" if isinstance(name, str) and len(name) <= 40 else show(name)
                hint = " (an analysis trains no model)" if name in ("task", "train") else ""
                errors.append(
                    f"unknown section {shown} in an analysis job{hint}; allowed: "
                    + ", ".join(f"[{a}]" for a in allowed)
                )
        run = ANALYSIS_RUN.check(data.get("run", {}), errors)
        secure = None
        if "secure_aggregation" in data:
            table = ANALYSIS_SECURE_AGGREGATION.check(data["secure_aggregation"], errors)
            if not errors:
                secure = _secure(table)
        if "analysis" not in data:
            errors.append('[analysis] is required: the query (kind = "count", …)')
        if errors:
            raise ConfigurationError(error_text(errors))
        query, rules = query_from_table(data["analysis"])
        study = None
        if "study" in data:
            study_table = data["study"]
            if not isinstance(study_table, Mapping):
                raise ConfigurationError(f"[study] must be a table, got {show(study_table)}")
            study = _study(study_table, base)
        agreement = run.get("agreement")
        job = cls(
            name=str(run.get("name", "analysis")),
            dataset=str(run["dataset"]),
            query=query,
            rules=DisclosureRules() if rules is None else rules,
            min_nodes=int(run.get("min_nodes", 1)),
            min_replies=int(run.get("min_replies", 1)),
            round_timeout=float(run.get("round_timeout", 120.0)),
            agreement=None if agreement is None else str(agreement),
            secure_aggregation=secure,
            study=study,
        )
        return job if limits is None else job.within(limits)

    @classmethod
    def from_toml(
        cls,
        text: str | bytes,
        *,
        limits: JobLimits | None = None,
        base: str | PathLike[str] | None = None,
    ) -> AnalysisJob:
        """Parse an ``analysis.toml`` (text, or bytes that must be UTF-8)."""
        data = parse_toml(text, "analysis file")
        return cls.from_mapping(data, limits=limits, base=base)

    @classmethod
    def from_json(cls, text: str | bytes, *, limits: JobLimits | None = None) -> AnalysisJob:
        """Parse the JSON form (what travels to the coordinator and what it stores)."""
        return cls.from_mapping(parse_json(text), limits=limits)

    @classmethod
    def from_file(
        cls, path: str | PathLike[str], *, limits: JobLimits | None = None
    ) -> AnalysisJob:
        """Read and parse an ``analysis.toml``; every failure is one ConfigurationError."""
        return cls.from_toml(read_job_file(path), limits=limits, base=Path(path).parent)

    def within(self, limits: JobLimits) -> AnalysisJob:
        """This job if it fits a coordinator's ``limits`` (``max_min_nodes``,
        ``max_round_timeout``); one line per cap exceeded otherwise."""
        errors = []
        for key, value, cap, limit in (
            ("min_nodes", self.min_nodes, limits.max_min_nodes, "max_min_nodes"),
            ("round_timeout", self.round_timeout, limits.max_round_timeout, "max_round_timeout"),
        ):
            if value > cap:
                errors.append(
                    f"[run] {key} must be at most {show(cap)} on this coordinator "
                    f"([limits] {limit}), got {show(value)}"
                )
        if errors:
            raise ConfigurationError(error_text(errors))
        return self

    # -- forms -----------------------------------------------------------------------------
    def to_mapping(self) -> dict[str, Any]:
        """The file's tables (``[study]`` and ``[secure_aggregation]`` only when set)."""
        mapping: dict[str, Any] = {
            "run": self._run_table(),
            "analysis": query_table(self.query, self.rules),
        }
        if self.secure_aggregation is not None:
            table = self.secure_aggregation.to_table()
            table.pop("max_weight", None)
            mapping["secure_aggregation"] = table
        if self.study is not None:
            mapping["study"] = {"spec_json": self.study.to_json(), "digest": self.study.digest}
        return mapping

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal jobs give equal text."""
        return json.dumps(self.to_mapping(), sort_keys=True, separators=(",", ":"))

    # -- what the run needs ----------------------------------------------------------------
    @property
    def secure(self) -> bool:
        """Whether the answers are summed under secure aggregation."""
        return self.secure_aggregation is not None

    def request_rules(
        self, agreement: DisclosureRules | Mapping[str, float] | None = None
    ) -> DisclosureRules:
        """The rules every request states: the job's, made at least as strict as the
        agreement's ``[analytics]`` thresholds (when the coordinator holds them) on every
        key the agreement sets (a table of some of the rule keys, or all of them)."""
        if agreement is None:
            return self.rules
        if not isinstance(agreement, DisclosureRules):
            given = DisclosureRules.from_mapping(agreement, what="the agreement's [analytics]")
            set_keys = {k: getattr(given, k) for k in agreement}
            agreement = DisclosureRules(**{**self.rules.to_dict(), **set_keys})
        return self.rules.stricter(agreement)

    def job_section(self) -> JobSection:
        """The job section every instruction of the run carries: the dataset, the
        agreement, the study and the secure-aggregation settings (no task)."""
        return JobSection(
            dataset=self.dataset,
            agreement=self.agreement,
            secure_aggregation=(
                None if self.secure_aggregation is None else self.secure_aggregation.to_section()
            ),
            study=(
                None
                if self.study is None
                else StudySection(spec=self.study.to_json(), digest=self.study.digest)
            ),
        )


#: A stored run's job: a training job or an analysis job.
RunSpec = JobSpec | AnalysisJob


def is_analysis(data: Mapping[str, Any]) -> bool:
    """Whether parsed job tables are an analysis job's (they have ``[analysis]``)."""
    return "analysis" in data


def run_spec_from_json(text: str | bytes, *, limits: JobLimits | None = None) -> RunSpec:
    """A stored (or submitted) run spec: an :class:`AnalysisJob` when it has an
    ``[analysis]`` table, else a :class:`~biofed.coordinator.JobSpec` (``limits`` applied
    to either).

    Raises
    ------
    ConfigurationError
        One line per problem, as the job's own parser words it.
    """
    data = parse_json(text)
    if is_analysis(data):
        return AnalysisJob.from_mapping(data, limits=limits)
    return JobSpec.from_mapping(data, limits=limits)


def job_from_file(path: str | PathLike[str], *, limits: JobLimits | None = None) -> RunSpec:
    """A job file (``job.toml`` or ``analysis.toml``): an :class:`AnalysisJob` when it has
    an ``[analysis]`` table, else a :class:`~biofed.coordinator.JobSpec`."""
    file = Path(path)
    data = parse_toml(read_job_file(file), "job file")
    if is_analysis(data):
        return AnalysisJob.from_mapping(data, limits=limits, base=file.parent)
    return JobSpec.from_mapping(data, limits=limits, base=file.parent)
