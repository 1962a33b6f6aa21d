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
a wrapped strategy the wrapper cannot wrap, and the settings that turn a rule into the plain
mean or validation into a pass-through (a trimmed mean dropping nothing, Multi-Krum with
f = 0 averaging every update, ``max_drop`` ≥ 0.5).
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
#: The smallest ``max_drop`` refused: a drop of one half in a [0, 1] score is perfect → chance.
_MAX_DROP_LIMIT = 0.5
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
    if aggregator == "trimmed_mean":
        if robust.get("f") == 0:
            errors.append(
                "[robust] trimmed_mean with f = 0 drops nothing: it is the plain mean (give f "
                ">= 1, or leave f out and use trim)"
            )
        elif "f" not in robust and robust.get("trim", 0.1) == 0:
            errors.append(
                "[robust] trimmed_mean with trim = 0 drops nothing: it is the plain mean (give "
                "trim > 0 or f >= 1)"
            )
    if aggregator == "multi_krum" and robust.get("f") == 0 and "multi_krum_m" not in robust:
        errors.append(
            "[robust] multi_krum with f = 0 and no multi_krum_m averages every update: it is "
            "the plain mean (give f >= 1, multi_krum_m, or leave f out)"
        )
    max_drop = robust.get("max_drop")
    if validation and isinstance(max_drop, int | float) and max_drop >= _MAX_DROP_LIMIT:
        errors.append(
            f"[robust] max_drop {max_drop:g} lets one update take the trusted C-index, AUC or "
            f"accuracy from perfect to chance: validation would pass every update (give "
            f"max_drop < {_MAX_DROP_LIMIT:g}; 0.05 passed every honest site of Fed-TCGA-BRCA)"
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
    strategy: Strategy,
    robust: Mapping[str, Scalar],
    trusted: TrustedValidation | None,
    *,
    secure_value_error: float = 0.0,
) -> Strategy:
    """``strategy`` inside :class:`~biofed.strategies.Robust` as ``[robust]`` says;
    ``secure_value_error``: the job's secure aggregation's error per released value
    (``Robust(secure_value_error=…)``, its norm check's room for quantisation).

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
    if aggregator == "fltrust":
        options["trusted"] = trusted
    try:
        if robust.get("validation", False):
            assert trusted is not None
            validation = UpdateValidation(
                trusted,
                max_drop=float(robust.get("max_drop", 0.05)),
                action="downweight" if robust.get("action") == "downweight" else "reject",
            )
        return Robust(
            strategy,
            aggregator=aggregator,
            validation=validation,
            secure_value_error=secure_value_error,
            **options,
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"[robust] {exc}") from None
