"""Resource caps a coordinator's operator sets on the jobs it accepts (``[limits]`` in the
coordinator's ``kit.toml``).

Security notes
--------------
A valid job can still be too big for this consortium: a 3-billion-feature model was accepted,
OOM-killed three sites and stopped the coordinator's runner while encoding its checkpoint.
The job schema bounds what the wire and the store can hold; these caps bound what this
operator's machines and the sites' may be asked to do, and are enforced at submit, before a
run exists. The model's size is computed from the task's parameter layout
(:func:`biofed.tasks.parameter_spec`), never by building it, so refusing a huge model costs
no memory. The threat is CWE-770 (allocation of resources without limits) by a researcher
of the consortium, who holds a valid certificate.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from biofed.coordinator._job_rules import (
    INT32_MAX,
    INT64_MAX,
    Field,
    Integer,
    Invalid,
    Number,
    Table,
    error_text,
    show,
)
from biofed.core import ConfigurationError, ParameterSpec, Scalar
from biofed.tasks import LocalTrainingConfig, parameter_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from biofed.coordinator._job import JobSpec

_GIB = 1 << 30

LIMITS = Table(
    name="limits",
    doc="Caps the coordinator's operator sets on every job it accepts, in the coordinator's "
    "`kit.toml` (all optional). Jobs over a cap are refused at submit; runs already stored "
    "keep running when a cap is lowered.",
    fields=(
        Field(
            name="max_model_bytes",
            rule=Integer(1, INT64_MAX),
            doc="Largest model (its parameters, in bytes), computed from the task's layout "
            "before anything is allocated.",
            default=_GIB,
        ),
        Field(
            name="max_rounds",
            rule=Integer(1, INT32_MAX),
            doc="Most `[run] rounds`.",
            default=10_000,
        ),
        Field(
            name="max_local_steps",
            rule=Integer(1, INT32_MAX),
            doc="Most `[train] local_steps` per round.",
            default=100_000,
        ),
        Field(
            name="max_batch_size",
            rule=Integer(1, INT32_MAX),
            doc="Largest `[train] batch_size`.",
            default=1_000_000,
        ),
        Field(
            name="max_round_timeout",
            rule=Number(0.01, 31_536_000.0),
            doc="Longest `[run] round_timeout`, in seconds.",
            default=86_400.0,
        ),
        Field(
            name="max_min_nodes",
            rule=Integer(1, INT32_MAX),
            doc="Most `[run] min_nodes` (and `[strategy] min_evaluate_nodes`).",
            default=1_000,
        ),
    ),
)


def read_kit_toml(directory: str | PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """``directory/kit.toml``'s path and its tables (the coordinator's ``[limits]`` and
    ``[trusted_data]`` are read from it).

    Raises
    ------
    ConfigurationError
        One line naming the file when it cannot be read or is not TOML.
    """
    path = Path(directory) / "kit.toml"
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigurationError(f"{path} is not readable TOML: {reason}") from None
    return path, data


def model_bytes(spec: ParameterSpec) -> int:
    """Bytes of the parameters a :class:`~biofed.core.ParameterSpec` describes."""
    return sum(math.prod(shape) * np.dtype(dtype).itemsize for _, shape, dtype in spec.entries)


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError  # pragma: no cover


def _largest(task: str, options: dict[str, Scalar], key: str, cap: int) -> int:
    """The largest integer ``options[key]`` whose model fits in ``cap`` bytes (0 if none);
    a model's size grows with it, so a bisection over layouts (never models) finds it."""
    lo, hi = 0, int(options[key])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if model_bytes(parameter_spec(task, **{**options, key: mid})) <= cap:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True, slots=True, kw_only=True)
class JobLimits:
    """What a coordinator accepts: checked at submit by
    :meth:`~biofed.coordinator.Coordinator.submit_run`.

    Attributes
    ----------
    max_model_bytes:
        Largest model in bytes (default 1 GiB).
    max_rounds:
        Most rounds (10,000).
    max_local_steps:
        Most local steps per round (100,000).
    max_batch_size:
        Largest batch size (1,000,000).
    max_round_timeout:
        Longest round timeout in seconds (one day).
    max_min_nodes:
        Most sites a job may require (1,000).
    """

    max_model_bytes: int = _GIB
    max_rounds: int = 10_000
    max_local_steps: int = 100_000
    max_batch_size: int = 1_000_000
    max_round_timeout: float = 86_400.0
    max_min_nodes: int = 1_000

    def __post_init__(self) -> None:
        errors: list[str] = []
        checked = LIMITS.check({f.name: getattr(self, f.name) for f in fields(self)}, errors)
        if errors:
            raise ConfigurationError(error_text(errors))
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_table(cls, table: object) -> JobLimits:
        """The ``[limits]`` table of a kit.toml (every key optional, unknown keys refused)."""
        errors: list[str] = []
        checked = LIMITS.check(table, errors)
        if errors:
            raise ConfigurationError(error_text(errors))
        return cls(**checked)  # type: ignore[arg-type]

    @classmethod
    def from_kit(cls, directory: str | Path) -> JobLimits:
        """The ``[limits]`` table of ``directory/kit.toml``; the defaults when it has none.

        Raises
        ------
        ConfigurationError
            If the file cannot be read or the table is not valid (each error on one line,
            prefixed with the file's path).
        """
        path, data = read_kit_toml(directory)
        if "limits" not in data:
            return cls()
        try:
            return cls.from_table(data["limits"])
        except ConfigurationError as exc:
            lines = str(exc).splitlines()
            raise ConfigurationError("\n".join(f"{path}: {line}" for line in lines)) from None

    def to_table(self) -> dict[str, Scalar]:
        """The ``[limits]`` table."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # -- checking a job ------------------------------------------------------------------------
    def errors(self, spec: JobSpec) -> list[str]:
        """Every way ``spec`` exceeds these limits, one line each (empty when it fits)."""
        errors: list[str] = []

        def over(where: str, value: Any, cap: Any, limit: str, default: str = "") -> None:
            if value > cap:
                errors.append(
                    f"{where}{default} must be at most {show(cap)} on this coordinator "
                    f"([limits] {limit}), got {show(value)}"
                )

        over("[run] rounds", spec.rounds, self.max_rounds, "max_rounds")
        over("[run] min_nodes", spec.min_nodes, self.max_min_nodes, "max_min_nodes")
        over("[run] round_timeout", spec.round_timeout, self.max_round_timeout, "max_round_timeout")
        evaluate_nodes = spec.strategy_options.get("min_evaluate_nodes", 1)
        over("[strategy] min_evaluate_nodes", evaluate_nodes, self.max_min_nodes, "max_min_nodes")
        defaults = LocalTrainingConfig()
        for key, cap, limit in (
            ("local_steps", self.max_local_steps, "max_local_steps"),
            ("batch_size", self.max_batch_size, "max_batch_size"),
        ):
            given = key in spec.train
            value = spec.train[key] if given else getattr(defaults, key)
            over(f"[train] {key}", value, cap, limit, "" if given else f" (default {value})")
        self._check_model(spec, errors)
        return errors

    def _check_model(self, spec: JobSpec, errors: list[str]) -> None:
        if not spec.features_known:  # a study job: the fitted preprocessing sets the size
            return
        options = dict(spec.task_options)
        try:
            nbytes = model_bytes(parameter_spec(spec.task, **options))
        except (ConfigurationError, Invalid) as exc:
            errors.append(f"[task] {exc}")
            return
        if nbytes <= self.max_model_bytes:
            return
        cap = f"[limits] max_model_bytes is {self.max_model_bytes} ({_size(self.max_model_bytes)})"
        if "num_features" in options:
            largest = _largest(spec.task, options, "num_features", self.max_model_bytes)
            errors.append(
                f"[task] num_features must be at most {largest} for {spec.task} on this "
                f"coordinator, whose {cap}; got {show(options['num_features'])} (a model of "
                f"{_size(nbytes)})"
            )
        else:
            errors.append(
                f"[task] the model of {spec.task} takes {_size(nbytes)}; this coordinator's {cap}"
            )

    def check(self, spec: JobSpec) -> JobSpec:
        """``spec`` if it fits these limits.

        Raises
        ------
        ConfigurationError
            Naming every field over its cap and the cap, one line each.
        """
        errors = self.errors(spec)
        if errors:
            raise ConfigurationError(error_text(errors))
        return spec
