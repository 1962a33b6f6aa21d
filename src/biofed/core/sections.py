"""The typed sections of an :class:`~biofed.core.Instruction`, and their flat form.

A public module of :mod:`biofed.core` (import from ``biofed.core.sections``): the sections
are values every layer meets, but only code that builds or reads instructions needs them,
so they stay out of ``biofed.core``'s own short list.

An instruction carries three things besides its model:

* :class:`JobSection` — what the job is, the same in every instruction of a run: the
  dataset, the task and its options, the study agreement, the bundle digest, the metrics
  an evaluation asks for, the job's privacy and secure-aggregation settings, its study
  dataset spec (:class:`StudySection`) and, once the preprocessing phase fitted it, the
  fitted preprocessing every site applies.
* :class:`RoundDirectives` — what the coordinator's strategy and protocol say about this
  round: DP-FedAvg's clip norm and distributed-noise share, the secure-aggregation stage and
  how a site weighs its masked vector, and a preprocessing pass's summary request.
* the task's own config (local steps, learning rate, seed, split…): plain scalars the node
  hands to the task.

Each section has one owner. Core holds the job's privacy and secure-aggregation settings as
checked scalar tables (:class:`PrivacySection`, :class:`SecureAggregationSection`); core is
the lowest layer and cannot know their rules, so :class:`biofed.privacy.DPSettings` and
:class:`biofed.secagg.SecureAggregationSettings` parse and validate them
(``from_section`` / ``to_section``). Everything else here is checked on construction.

The flat form
-------------
On the wire (``transport/grpc/_serde.py``) and in the instructions older code builds, the
sections travel as prefixed keys of one scalar map — ``dataset``, ``task``, ``task.<option>``,
``agreement``, ``bundle``, ``metrics``, ``privacy.<key>``, ``secagg.<key>``, ``dp.clip_norm``,
``dp.noise_std_share``, ``secagg.stage``, ``secagg.weighting``, ``study.spec``,
``study.digest``, ``preprocessing``, ``summary.request``, ``query.request`` — beside the
task's keys.
:func:`split_flat` and :func:`flat_sections` are the one place that maps between the two
(``Instruction(config={flat keys})`` and, through it, the gRPC codec); nothing else reads
these key names.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from biofed.core._errors import ConfigurationError
from biofed.core._types import Config, Scalar, freeze_config

#: Flat-form prefix of the job's ``[privacy]`` settings (``privacy.mode``…).
PRIVACY_PREFIX = "privacy."
#: Flat-form prefix of the job's ``[secure_aggregation]`` settings (``secagg.threshold``…).
SECAGG_PREFIX = "secagg."
#: Flat-form key of the secure-aggregation stage of a ``MessageKind.SECAGG`` instruction.
STAGE_KEY = "secagg.stage"
#: Flat-form key: how a site weighs its masked vector (``"examples"`` or ``"equal"``).
WEIGHTING_KEY = "secagg.weighting"
#: Flat-form key of the round's clip norm C under client-level DP (DP-FedAvg).
DP_CLIP_NORM = "dp.clip_norm"
#: Flat-form key of the std of the noise share each site adds with distributed noise.
DP_NOISE_STD_SHARE = "dp.noise_std_share"
#: Flat-form key of the norm bound every honest site applies to its update ``xᵢ − x`` before
#: it leaves (robust aggregation's norm bounding; under secure aggregation, before masking).
MAX_UPDATE_NORM = "robust.max_update_norm"
#: Flat-form prefix of the task's options (``task.num_features``…).
TASK_PREFIX = "task."
#: Flat-form key of the job's study dataset spec (canonical JSON).
STUDY_SPEC_KEY = "study.spec"
#: Flat-form key of the study spec's SHA-256 (of its canonical JSON).
STUDY_DIGEST_KEY = "study.digest"
#: Flat-form key of the fitted preprocessing (JSON) every site applies.
PREPROCESSING_KEY = "preprocessing"
#: Flat-form key of a preprocessing pass's summary request (JSON).
SUMMARY_REQUEST_KEY = "summary.request"
#: Flat-form key of an analytics query pass's request (JSON, ``biofed.analytics.Request``).
QUERY_REQUEST_KEY = "query.request"
#: Longest study spec, fitted preprocessing or summary request an instruction carries.
MAX_DOCUMENT_CHARS = 1 << 20
_JOB_KEYS = ("dataset", "task", "agreement", "bundle", "metrics")
_SHA256 = re.compile(r"[0-9a-f]{64}")
WEIGHTINGS = ("examples", "equal")


class SecAggStage(str, enum.Enum):
    """Where a secure-aggregation round stands: the step a party takes next (or its end).

    The four protocol stages are those of Bonawitz et al. (2017): advertise keys, share
    keys, masked input, unmask.
    """

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacySection:
    """The job's ``[privacy]`` settings as a checked scalar table (with ``rounds`` and
    ``min_replies``). :meth:`biofed.privacy.DPSettings.from_section` reads it."""

    table: Config = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", freeze_config(self.table))
        if not self.table:
            raise ConfigurationError("a privacy section needs its settings")


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureAggregationSection:
    """The job's ``[secure_aggregation]`` settings as a checked scalar table.
    :meth:`biofed.secagg.SecureAggregationSettings.from_section` reads it."""

    table: Config = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", freeze_config(self.table))


def _document(value: object, what: str) -> str | None:
    """A JSON document carried as text (checked for size and shape here; its owner parses it)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(
            f"instruction {what} must be JSON text, got {type(value).__name__}"
        )
    if len(value) > MAX_DOCUMENT_CHARS:
        raise ConfigurationError(
            f"instruction {what} is longer than {MAX_DOCUMENT_CHARS} characters"
        )
    if not value.startswith("{"):
        raise ConfigurationError(f"instruction {what} must be a JSON object")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class StudySection:
    """The job's study dataset spec as it travels: its canonical JSON and its digest.

    Core checks only that the digest is the SHA-256 of the text (so a site can compare the
    digest with its agreement's list before it reads anything); :class:`biofed.data.StudySpec`
    (``from_json``) parses and validates the spec itself.

    Attributes
    ----------
    spec:
        The spec's canonical JSON (``StudySpec.to_json()``).
    digest:
        Hex SHA-256 of ``spec`` (``StudySpec.digest``), what agreements list.
    """

    spec: str
    digest: str

    def __post_init__(self) -> None:
        _document(self.spec, "study spec")
        if not isinstance(self.digest, str) or not _SHA256.fullmatch(self.digest):
            raise ConfigurationError("instruction study digest must be 64 lowercase hex")
        if hashlib.sha256(self.spec.encode("utf-8")).hexdigest() != self.digest:
            raise ConfigurationError("instruction study digest is not the SHA-256 of its spec")


def _opt_str(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ConfigurationError(f"instruction {what} must be a string, got {value!r}")


def _opt_number(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"instruction {what} must be a number, got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSection:
    """What a job asks of a site; the same in every instruction of one run.

    Attributes
    ----------
    dataset:
        The dataset the task runs on (None: the instruction names none).
    task:
        The task's name (built in, a site's task module, or the bundle's).
    task_options:
        Arguments of the task's constructor (``[task]`` besides ``name``).
    agreement:
        The study agreement's id; nodes with governance refuse a job without one.
    bundle:
        The approved task bundle's SHA-256 digest.
    metrics:
        The metric names an evaluation asks for, comma-separated as the job wrote them
        (:func:`biofed.governance.requested_metrics` reads them).
    privacy:
        The job's differential-privacy settings, or None.
    secure_aggregation:
        The job's secure-aggregation settings, or None.
    study:
        The job's study dataset spec (each site compiles it against its own data), or None
        (the dataset is a prepared table).
    preprocessing:
        The fitted preprocessing's JSON (``biofed.data.Preprocessing.to_json()``) every site
        applies to its study table; None before (and without) the preprocessing phase.
    """

    dataset: str | None = None
    task: str | None = None
    task_options: Config = field(default_factory=lambda: MappingProxyType({}))
    agreement: str | None = None
    bundle: str | None = None
    metrics: Scalar | None = None
    privacy: PrivacySection | None = None
    secure_aggregation: SecureAggregationSection | None = None
    study: StudySection | None = None
    preprocessing: str | None = None

    def __post_init__(self) -> None:
        if self.study is not None and not isinstance(self.study, StudySection):
            raise ConfigurationError("instruction study must be a StudySection")
        _document(self.preprocessing, "preprocessing")
        if self.preprocessing is not None and self.study is None:
            raise ConfigurationError("instruction preprocessing needs a study spec")
        _opt_str(self.dataset, "dataset")
        _opt_str(self.task, "task")
        _opt_str(self.agreement, "agreement")
        _opt_str(self.bundle, "bundle")
        object.__setattr__(self, "task_options", freeze_config(self.task_options))
        if self.metrics is not None and not isinstance(self.metrics, bool | int | float | str):
            raise ConfigurationError(f"instruction metrics must be a scalar, got {self.metrics!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundDirectives:
    """What the coordinator's strategy and protocol direct for this round.

    Attributes
    ----------
    clip_norm:
        Client-level DP (DP-FedAvg): the round's clip norm C; the site checks it against
        the job's ``max_grad_norm``.
    noise_std_share:
        Client-level DP with distributed noise: the std of the noise this site adds.
    secagg_stage:
        A ``MessageKind.SECAGG`` instruction's protocol stage.
    secagg_weighting:
        How the site weighs its masked vector: ``"examples"`` (its example count, capped)
        or ``"equal"``.
    summary_request:
        A ``MessageKind.SUMMARISE`` instruction's request (``SummaryRequest.to_json()``):
        what this preprocessing pass asks the site to summarise.
    query_request:
        A ``MessageKind.QUERY`` instruction's request (``biofed.analytics.Request``'s
        JSON): the query and what this pass of it asks the site to compute.
    max_update_norm:
        Robust aggregation's norm bound M: an honest site scales its update ``xᵢ − x``
        down to L2 norm M before it leaves (before masking, under secure aggregation).
    """

    clip_norm: float | None = None
    noise_std_share: float | None = None
    secagg_stage: SecAggStage | None = None
    secagg_weighting: str | None = None
    summary_request: str | None = None
    query_request: str | None = None
    max_update_norm: float | None = None

    def __post_init__(self) -> None:
        _document(self.summary_request, "summary request")
        _document(self.query_request, "query request")
        object.__setattr__(self, "clip_norm", _opt_number(self.clip_norm, "clip norm"))
        object.__setattr__(
            self, "max_update_norm", _opt_number(self.max_update_norm, "max update norm")
        )
        object.__setattr__(
            self, "noise_std_share", _opt_number(self.noise_std_share, "noise std share")
        )
        if self.secagg_stage is not None:
            try:
                object.__setattr__(self, "secagg_stage", SecAggStage(self.secagg_stage))
            except ValueError:
                raise ConfigurationError(
                    f"unknown secure-aggregation stage {self.secagg_stage!r}"
                ) from None
        _opt_str(self.secagg_weighting, "secure-aggregation weighting")


NO_JOB = JobSection()
NO_DIRECTIVES = RoundDirectives()


def split_flat(
    config: Mapping[str, Scalar],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Scalar]]:
    """Split a flat map into the job fields and directive fields it sets (only those
    present) and the task's own keys.

    Raises
    ------
    ConfigurationError
        If a section value has the wrong type (one line naming it).
    """
    job: dict[str, Any] = {}
    directives: dict[str, Any] = {}
    task: dict[str, Scalar] = {}
    options: dict[str, Scalar] = {}
    privacy: dict[str, Scalar] = {}
    secagg: dict[str, Scalar] = {}
    study: dict[str, Scalar] = {}
    for key, value in config.items():
        if key in _JOB_KEYS:
            job[key] = value
        elif key in (STUDY_SPEC_KEY, STUDY_DIGEST_KEY):
            study[key] = value
        elif key == PREPROCESSING_KEY:
            job["preprocessing"] = value
        elif key == SUMMARY_REQUEST_KEY:
            directives["summary_request"] = value
        elif key == QUERY_REQUEST_KEY:
            directives["query_request"] = value
        elif key.startswith(TASK_PREFIX) and len(key) > len(TASK_PREFIX):
            options[key[len(TASK_PREFIX) :]] = value
        elif key == DP_CLIP_NORM:
            directives["clip_norm"] = value
        elif key == DP_NOISE_STD_SHARE:
            directives["noise_std_share"] = value
        elif key == MAX_UPDATE_NORM:
            directives["max_update_norm"] = value
        elif key == STAGE_KEY:
            directives["secagg_stage"] = value
        elif key == WEIGHTING_KEY:
            directives["secagg_weighting"] = value
        elif key.startswith(PRIVACY_PREFIX) and len(key) > len(PRIVACY_PREFIX):
            privacy[key[len(PRIVACY_PREFIX) :]] = value
        elif key.startswith(SECAGG_PREFIX) and len(key) > len(SECAGG_PREFIX):
            secagg[key[len(SECAGG_PREFIX) :]] = value
        else:
            task[key] = value
    if options:
        job["task_options"] = options
    if privacy:
        job["privacy"] = PrivacySection(table=privacy)
    if secagg:
        job["secure_aggregation"] = SecureAggregationSection(table=secagg)
    if study:
        if set(study) != {STUDY_SPEC_KEY, STUDY_DIGEST_KEY}:
            raise ConfigurationError(
                f"instruction {STUDY_SPEC_KEY!r} and {STUDY_DIGEST_KEY!r} come together"
            )
        job["study"] = StudySection(spec=study[STUDY_SPEC_KEY], digest=study[STUDY_DIGEST_KEY])  # type: ignore[arg-type]
    return job, directives, task


def flat_sections(job: JobSection, directives: RoundDirectives) -> dict[str, Scalar]:
    """The flat keys of ``job`` and ``directives`` (unset fields left out), the inverse of
    :func:`split_flat`."""
    out: dict[str, Scalar] = {}
    for key in _JOB_KEYS:
        value = getattr(job, key)
        if value is not None:
            out[key] = value
    out.update({f"{TASK_PREFIX}{k}": v for k, v in job.task_options.items()})
    if job.privacy is not None:
        out.update({f"{PRIVACY_PREFIX}{k}": v for k, v in job.privacy.table.items()})
    if job.secure_aggregation is not None:
        out.update({f"{SECAGG_PREFIX}{k}": v for k, v in job.secure_aggregation.table.items()})
    if directives.clip_norm is not None:
        out[DP_CLIP_NORM] = directives.clip_norm
    if directives.noise_std_share is not None:
        out[DP_NOISE_STD_SHARE] = directives.noise_std_share
    if directives.max_update_norm is not None:
        out[MAX_UPDATE_NORM] = directives.max_update_norm
    if directives.secagg_stage is not None:
        out[STAGE_KEY] = directives.secagg_stage.value
    if directives.secagg_weighting is not None:
        out[WEIGHTING_KEY] = directives.secagg_weighting
    if job.study is not None:
        out[STUDY_SPEC_KEY] = job.study.spec
        out[STUDY_DIGEST_KEY] = job.study.digest
    if job.preprocessing is not None:
        out[PREPROCESSING_KEY] = job.preprocessing
    if directives.summary_request is not None:
        out[SUMMARY_REQUEST_KEY] = directives.summary_request
    if directives.query_request is not None:
        out[QUERY_REQUEST_KEY] = directives.query_request
    return out
