"""A job's ``[contribution]`` table: the rules between it and the other tables, and the
:class:`~biofed.contribution.Measured` wrapper it builds around the job's strategy.

Security notes
--------------
Measuring contributions needs each site's update on its own (a coalition model is built
from single updates), so a job with ``[secure_aggregation]`` is refused at submit: two
coalition sums that differ by one site would reveal that site's update by subtraction
(issue 17, item 2; ``docs/contribution.md``). The coalition models are valued on the
coordinator's trusted data with the built-in task, so bundle tasks (whose code never runs at
the coordinator) and study jobs (the trusted file is not prepared by the study's
preprocessing) are refused as ``[robust]`` refuses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from biofed.contribution import AUTO, DEFAULT_MAX_EVALUATIONS, Measured
from biofed.core import ConfigurationError, Scalar
from biofed.governance import IncentivePolicy
from biofed.strategies import Strategy, TrustedValidation

if TYPE_CHECKING:
    from biofed.coordinator._job import JobSpec


def contribution_errors(spec: JobSpec, errors: list[str]) -> None:
    """Append every rule a job's ``[contribution]`` table breaks with the rest of the job."""
    table = spec.contribution
    if table is None:
        return
    if spec.secure_aggregation is not None:
        errors.append(
            "[contribution] cannot run with [secure_aggregation]: coalition models are built "
            "from single updates, and two coalition sums that differ by one site reveal that "
            "site's update (see docs/contribution.md)"
        )
    if spec.bundle is not None:
        errors.append(
            "[contribution] cannot be used with [run] bundle: bundle code never runs at the "
            "coordinator, which values coalition models with the built-in task"
        )
    if spec.study is not None:
        errors.append(
            "[contribution] cannot be used with [study]: the trusted file is not prepared by "
            "the study's preprocessing"
        )
    mine = table.get("trusted_dataset")
    theirs = None if spec.robust is None else spec.robust.get("trusted_dataset")
    if mine is not None and theirs is not None and mine != theirs:
        errors.append(
            f"[contribution] trusted_dataset {mine!r} differs from [robust] trusted_dataset "
            f"{theirs!r}: a run uses one trusted dataset (name the same one in both)"
        )


def wrap_measured(
    strategy: Strategy, table: Mapping[str, Scalar], trusted: TrustedValidation | None
) -> Strategy:
    """``strategy`` inside :class:`~biofed.contribution.Measured` as ``[contribution]``
    says, valued on ``trusted``.

    Raises
    ------
    ConfigurationError
        ``trusted`` is None, or Measured refuses an option (its message, prefixed with
        ``[contribution]``).
    """
    if trusted is None:
        raise ConfigurationError(
            f"[contribution] trusted_dataset {table.get('trusted_dataset')!r}: the job needs "
            "the coordinator's trusted data and none was given"
        )
    try:
        return Measured(
            strategy,
            trusted,
            method=str(table.get("method", AUTO)),
            seed=int(table.get("seed", 0)),
            max_evaluations=int(table.get("max_evaluations", DEFAULT_MAX_EVALUATIONS)),
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"[contribution] {exc}") from None


def check_incentives(spec: JobSpec, policy: IncentivePolicy | None) -> None:
    """Refuse, at submit, a job that would escape the incentive policy of the study
    agreement it runs under: one without ``[contribution]``, or one measuring by another
    method than the policy's ``measure`` (``auto`` takes the policy's).

    Raises
    ------
    ConfigurationError
        One line naming the agreement's ``[incentives]`` and the job's table.
    """
    if policy is None:
        return
    if spec.contribution is None:
        raise ConfigurationError(
            f"the study agreement {spec.agreement!r} states [incentives]: the job needs a "
            f'[contribution] table (measured by "{policy.measure}") so its policy can apply'
        )
    method = spec.contribution.get("method", AUTO)
    if method not in (AUTO, policy.measure):
        raise ConfigurationError(
            f'[contribution] method "{method}" differs from the [incentives] measure '
            f'"{policy.measure}" of the study agreement {spec.agreement!r} (use "auto" or '
            f'"{policy.measure}")'
        )
