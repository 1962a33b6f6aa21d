"""Experiment tracking: the coordinator reports each training run to an experiment tracker
(MLflow, :mod:`._tracking_mlflow`) as it goes — the job's settings, every round's metrics,
each site's privacy spend, the final guarantee, the contributions and the final model.

The operator turns it on in the coordinator's ``kit.toml``::

    [tracking]                      # absent: no tracking
    enabled = true                  # default true once the table is there
    mlflow_uri = "mlruns"           # a folder (relative to the kit) or any MLflow URI
    experiment = "biofed"
    log_model = true                # the agreement's outputs.final_model still applies
    tensorboard = "tensorboard"     # optional: TensorBoard event files too

The executor talks to a :class:`RunTracker` (``on_start``, ``on_round``, ``on_end``) and
never imports MLflow; :class:`~biofed.coordinator.Tracking` (:mod:`._tracking_worker`) is
the one it gets: it hands every report to a worker thread, so a slow or unreachable
tracking server never slows a run, and a report that fails is logged once per run (the
coordinator's log, and the run event ``tracking_failed``) while the run goes on. Only the
coordinator tracks: no site sends anything more.

Security notes
--------------
Run names, metric names and site ids come from job files and site replies, so every name
and value is made safe by the backend (:func:`._tracking_values.safe_key`: MLflow's key
alphabet, no ``/`` nor ``..``, length limits) and artifacts have fixed names: a hostile job
cannot break tracking or write outside the store (CWE-22, OWASP ASVS 5.0 V5.3 file
handling). The final model is logged only where the study agreement releases it
(``outputs.final_model``), as ``biofed run result`` would.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from biofed.coordinator._engine import EngineListener
from biofed.coordinator._job_limits import read_kit_toml
from biofed.coordinator._job_rules import Field, Flag, Table, Text, error_text
from biofed.coordinator._privacy_report import site_spend, spend_event
from biofed.coordinator._records import RoundRecord, RunEvent
from biofed.core import ConfigurationError, Reply

#: The run event written when a run's tracking fails (once per run; the run goes on).
TRACKING_FAILED_EVENT = "tracking_failed"
#: The default store: a folder ``mlruns`` in the coordinator's kit.
DEFAULT_STORE = "mlruns"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")

TRACKING = Table(
    name="tracking",
    doc="Experiment tracking in the coordinator's `kit.toml`: every training run's settings, "
    "per-round metrics, privacy spend and final model go to MLflow. Without the table, "
    "nothing is tracked. Needs `pip install 'biofed[tracking]'`.",
    fields=(
        Field(
            name="enabled",
            rule=Flag(),
            doc="Track runs (false keeps the table but turns tracking off).",
            default=True,
        ),
        Field(
            name="mlflow_uri",
            rule=Text(r"[^\x00-\x1f\x7f]+", 2000, "a folder or an MLflow tracking URI"),
            doc="Where runs go: a folder (relative to the kit's folder) for a local MLflow "
            "file store, or any MLflow tracking URI (`http://mlflow.example:5000`, "
            "`sqlite:///…`, `databricks`).",
            default=DEFAULT_STORE,
        ),
        Field(
            name="experiment",
            rule=Text(
                r"[A-Za-z0-9][A-Za-z0-9 ._-]*",
                200,
                "a name of letters, digits, spaces, '.', '_' and '-' (at most 200)",
            ),
            doc="The MLflow experiment the runs are logged under.",
            default="biofed",
        ),
        Field(
            name="log_model",
            rule=Flag(),
            doc="Log the final model as an artifact (only where the study agreement "
            "releases it: `outputs.final_model`).",
            default=True,
        ),
        Field(
            name="tensorboard",
            rule=Text(r"[^\x00-\x1f\x7f]+", 2000, "a folder"),
            doc="Also write each run's metrics as TensorBoard event files into this folder "
            "(relative to the kit's folder; one sub-folder per run). Needs the "
            "`tensorboard` package. Default: no TensorBoard.",
        ),
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackingConfig:
    """The coordinator's ``[tracking]`` settings.

    Attributes
    ----------
    mlflow_uri:
        The MLflow tracking URI (a folder is made a ``file:`` URI, relative to the kit).
    experiment:
        The MLflow experiment's name.
    log_model:
        Whether the final model is logged (where the agreement releases it).
    enabled:
        Whether runs are tracked at all.
    tensorboard:
        The folder TensorBoard event files are written to, or None.
    """

    mlflow_uri: str
    experiment: str = "biofed"
    log_model: bool = True
    enabled: bool = True
    tensorboard: Path | None = None

    @classmethod
    def from_table(cls, table: object, directory: str | PathLike[str] = ".") -> TrackingConfig:
        """The ``[tracking]`` table of a kit.toml in ``directory`` (every key optional,
        unknown keys refused, a folder resolved against ``directory``)."""
        errors: list[str] = []
        checked = TRACKING.check(table, errors)
        if errors:
            raise ConfigurationError(error_text(errors))
        uri = str(checked.get("mlflow_uri", DEFAULT_STORE))
        if not _SCHEME.match(uri) or re.match(r"[A-Za-z]:[\\/]", uri):  # a folder
            folder = Path(uri).expanduser()
            folder = folder if folder.is_absolute() else Path(directory) / folder
            uri = folder.resolve().as_uri()
        board: Path | None = None
        if "tensorboard" in checked:
            board = Path(str(checked["tensorboard"])).expanduser()
            board = (board if board.is_absolute() else Path(directory) / board).resolve()
        return cls(
            mlflow_uri=uri,
            experiment=str(checked.get("experiment", "biofed")),
            log_model=bool(checked.get("log_model", True)),
            enabled=bool(checked.get("enabled", True)),
            tensorboard=board,
        )

    @classmethod
    def from_kit(cls, directory: str | PathLike[str]) -> TrackingConfig | None:
        """The ``[tracking]`` table of ``directory/kit.toml``, or None when it has none or
        turns tracking off.

        Raises
        ------
        ConfigurationError
            The file cannot be read, a key is unknown or a value invalid (one line each,
            prefixed with the file's path), or the table is on and MLflow is not installed.
        """
        path, data = read_kit_toml(directory)
        if "tracking" not in data:
            return None
        try:
            config = cls.from_table(data["tracking"], directory)
        except ConfigurationError as exc:
            lines = str(exc).splitlines()
            raise ConfigurationError("\n".join(f"{path}: {line}" for line in lines)) from None
        if not config.enabled:
            return None
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigurationError(
                f"{path}: [tracking] needs MLflow: pip install 'biofed[tracking]' "
                "(or set enabled = false)"
            )
        if config.tensorboard is not None and importlib.util.find_spec("tensorboard") is None:
            raise ConfigurationError(
                f"{path}: [tracking] tensorboard needs the tensorboard package: "
                "pip install tensorboard (or remove the key)"
            )
        return config


# -- what the executor reports -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackedStart:
    """A training run starts (or resumes): its id and the job's settings as a flat table."""

    run_id: str
    params: Mapping[str, str]
    job_json: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackedRound:
    """A committed round: its record and the privacy spend each site reported in it
    (site → ``epsilon``, ``delta``, ``guarantee``)."""

    run_id: str
    record: RoundRecord
    privacy: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackedEnd:
    """A run ended: its status, the privacy report and contributions (when it has them) and
    the final model (``biofed run result``'s bytes; None when there is none or it may not
    leave)."""

    run_id: str
    status: str
    rounds: int
    error: str | None = None
    privacy: Mapping[str, Any] | None = None
    contributions: Mapping[str, Any] | None = None
    model: bytes | None = None


class RunTracker(Protocol):
    """What the executor tells an experiment tracker. Implementations may raise: the
    :class:`Tracking` around them turns a failure into one log line and one run event."""

    @property
    def wants_model(self) -> bool:
        """Whether :meth:`on_end` should be given the final model."""
        ...

    def on_start(self, start: TrackedStart) -> None: ...

    def on_round(self, update: TrackedRound) -> None: ...

    def on_end(self, end: TrackedEnd) -> None: ...


def flat_params(mapping: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    """A job's tables as ``table.key`` → text (a study's specification JSON is left out: the
    job's JSON is an artifact of its own), with ``privacy.enabled`` and
    ``secure_aggregation.enabled`` so runs with and without compare."""
    out: dict[str, str] = {}
    for table, values in mapping.items():
        for key, value in values.items():
            if (table, key) == ("study", "spec_json"):
                continue
            out[f"{table}.{key}"] = str(value).lower() if isinstance(value, bool) else str(value)
    out["privacy.enabled"] = str("privacy" in mapping).lower()
    out["secure_aggregation.enabled"] = str("secure_aggregation" in mapping).lower()
    return out


class TrackedListener:
    """A run's engine listener that also keeps each round's privacy spend for the tracker:
    the figures of the ``privacy_spent`` event the store keeps for each accepted training
    reply (:func:`~biofed.coordinator.spend_event`); everything is forwarded to ``inner``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._spends: dict[int, dict[str, dict[str, Any]]] = {}

    def on_round_start(self, server_round: int, num_selected: int) -> None:
        self.inner.on_round_start(server_round, num_selected)

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        self.inner.on_reply(server_round, reply, accepted)
        spend = spend_event(server_round, reply) if accepted else None
        if spend is not None:  # the figure the store's privacy_spent event holds
            self._keep(spend)

    def on_round_end(self, record: RoundRecord) -> None:
        self.inner.on_round_end(record)

    def completed_event(self, record: RoundRecord) -> RunEvent:
        event: RunEvent = self.inner.completed_event(record)
        return event

    def on_event(self, event: RunEvent) -> None:
        self.inner.on_event(event)

    def _keep(self, event: RunEvent) -> None:
        spend = site_spend(event)
        if spend is not None and event.node_id is not None:
            self._spends.setdefault(event.round, {})[event.node_id] = spend

    def take(self, server_round: int) -> dict[str, dict[str, Any]]:
        """The spends reported in ``server_round`` (forgotten once taken)."""
        return self._spends.pop(server_round, {})


_: type[EngineListener] = TrackedListener  # it is an engine listener
