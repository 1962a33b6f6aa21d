"""A job's ``[robust]`` table: the rules between it and the other tables, and the
:class:`~biofed.strategies.Robust` wrapper it builds around the job's strategy.

Security notes
--------------
Robust aggregation is the coordinator's defence against a malicious minority of sites
(poisoned updates, weight inflation; issue 15). Its settings come from a researcher's job,
so every combination that would silently leave the defence off is refused at submit, one
line naming the keys: an aggregator that needs each site's update under
``[secure_aggregation]`` (the coordinator never sees one), validation or FLTrust without
trusted data, trusted data with a bundle task (bundle code never runs at the coordinator),
a wrapped strategy the wrapper cannot wrap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from biofed.coordinator._job_schema import SINGLE_UPDATE_AGGREGATORS
from biofed.core import ConfigurationError, ParameterSet, Scalar
from biofed.strategies import Strategy, TrustedValidation, UpdateValidation

if TYPE_CHECKING:
    from biofed.coordinator._job import JobSpec

#: ``[robust]`` keys that configure validation, not the aggregator.
_VALIDATION_KEYS = ("validation", "max_drop", "action", "trusted_dataset")
#: Strategies Robust cannot wrap (their aggregation is not a mean of updates).
_UNWRAPPABLE = ("scaffold",)


def needs_trusted(robust: Mapping[str, Scalar] | None) -> bool:
    """Whether a ``[robust]`` table uses the coordinator's trusted data."""
    if robust is None:
        return False
    return bool(robust.get("validation", False)) or robust.get("aggregator") == "fltrust"


def robust_errors(spec: JobSpec, errors: list[str]) -> None:
    """Append every rule a job's ``[robust]`` table breaks with the rest of the job."""
    robust = spec.robust
    if robust is None:
        return
    aggregator = str(robust.get("aggregator", "mean"))
    validation = bool(robust.get("validation", False))
    if spec.secure_aggregation is not None and aggregator in SINGLE_UPDATE_AGGREGATORS:
        errors.append(
            f'[robust] aggregator "{aggregator}" needs each site\'s update on its own and '
            'cannot run with [secure_aggregation] (under it use "mean" or "norm_bound", '
            "with validation = true)"
        )
    if aggregator == "mean" and "norm_bound" not in robust and not validation:
        errors.append(
            '[robust] aggregator "mean" needs norm_bound or validation = true (else leave '
            "[robust] out: it is the strategy's own mean)"
        )
    if aggregator == "norm_bound" and "norm_bound" not in robust:
        errors.append('[robust] aggregator "norm_bound" needs [robust] norm_bound (the bound M)')
    for key in ("max_drop", "action"):
        if key in robust and not validation:
            errors.append(f"[robust] {key} applies only with [robust] validation = true")
    uses = needs_trusted(robust)
    if uses and "trusted_dataset" not in robust:
        what = "validation" if validation else 'aggregator "fltrust"'
        errors.append(
            f"[robust] {what} needs trusted_dataset: the name of a dataset the coordinator's "
            "operator registered (kit.toml [trusted_data])"
        )
    if "trusted_dataset" in robust:
        if not uses:
            errors.append(
                '[robust] trusted_dataset is used only by validation = true or aggregator "fltrust"'
            )
        if spec.bundle is not None:
            errors.append(
                "[robust] trusted_dataset cannot be used with [run] bundle: bundle code never "
                "runs at the coordinator, which scores updates with the built-in task"
            )
        if spec.study is not None:
            errors.append(
                "[robust] trusted_dataset cannot be used with [study]: the trusted file is "
                "not prepared by the study's preprocessing"
            )
    if spec.strategy in _UNWRAPPABLE:
        errors.append(
            f"[robust] cannot wrap [strategy] {spec.strategy}: its aggregation is not a mean "
            "of updates (use fedavg, fedprox, fedavgm or an adaptive fedopt strategy)"
        )
    if spec.privacy is not None and spec.privacy.mode == "client":
        errors.append(
            '[robust] cannot be combined with [privacy] mode = "client": DP-FedAvg releases '
            'only a clipped, noised mean (use mode = "sample", or [robust] norm_bound alone '
            "bounds each site's update)"
        )


class _NotHere:
    """Stands in for the trusted data while a job is only being checked (never called)."""

    metric = "unavailable"

    def score(self, parameters: ParameterSet) -> float:  # pragma: no cover - never scored
        raise ConfigurationError("the job was checked without the coordinator's trusted data")

    def train(
        self, parameters: ParameterSet, server_round: int
    ) -> ParameterSet:  # pragma: no cover
        raise ConfigurationError("the job was checked without the coordinator's trusted data")


#: What :meth:`JobSpec.build_strategy` is given while a job is only checked.
CHECKING: TrustedValidation = _NotHere()


def wrap_robust(
    strategy: Strategy, robust: Mapping[str, Scalar], trusted: TrustedValidation | None
) -> Strategy:
    """``strategy`` inside :class:`~biofed.strategies.Robust` as ``[robust]`` says.

    Raises
    ------
    ConfigurationError
        When the table uses trusted data and ``trusted`` is None, or Robust refuses an
        option (its message, prefixed with ``[robust]``).
    """
    from biofed.strategies import Robust

    if needs_trusted(robust) and trusted is None:
        raise ConfigurationError(
            f"[robust] trusted_dataset {robust.get('trusted_dataset')!r}: the job needs the "
            "coordinator's trusted data and none was given"
        )
    options: dict[str, Any] = {k: v for k, v in robust.items() if k not in _VALIDATION_KEYS}
    aggregator = options.pop("aggregator", "mean")
    validation = None
    if robust.get("validation", False):
        assert trusted is not None
        validation = UpdateValidation(
            trusted,
            max_drop=float(robust.get("max_drop", 0.05)),
            action="downweight" if robust.get("action") == "downweight" else "reject",
        )
    if aggregator == "fltrust":
        options["trusted"] = trusted
    try:
        return Robust(strategy, aggregator=aggregator, validation=validation, **options)
    except ConfigurationError as exc:
        raise ConfigurationError(f"[robust] {exc}") from None
