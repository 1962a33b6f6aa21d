"""Small value types shared by every layer: ids, metrics, configs, node descriptions."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Union

from biofed.core._errors import ConfigurationError

#: A value a config or a metric may hold. Nested structures do not travel in configs.
Scalar = Union[bool, int, float, str]
Config = Mapping[str, Scalar]
Metrics = Mapping[str, float]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_id(value: str, *, what: str = "id") -> str:
    """Return ``value`` if it is a valid biofed identifier, else raise ConfigurationError.

    Identifiers (run ids, node ids, dataset names) are 1–128 characters of letters, digits,
    ``.``, ``_`` and ``-``, starting with a letter or digit, so they are safe in file names,
    SQL, log lines and URLs.
    """
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ConfigurationError(
            f"{what} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit; got {value!r}"
        )
    return value


def freeze_config(config: Mapping[str, Scalar] | None) -> Config:
    """A read-only copy of ``config`` after checking that keys are strings and values scalars."""
    out: dict[str, Scalar] = {}
    for key, value in (config or {}).items():
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"config keys must be non-empty strings, got {key!r}")
        if not isinstance(value, (bool, int, float, str)):
            raise ConfigurationError(
                f"config value {key!r} must be bool, int, float or str, got {type(value).__name__}"
            )
        out[key] = value
    return MappingProxyType(out)


def freeze_metrics(metrics: Mapping[str, float] | None) -> Metrics:
    """A read-only copy of ``metrics`` with every value converted to float."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"metric names must be non-empty strings, got {key!r}")
        try:
            out[key] = float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"metric {key!r} is not a number: {value!r}") from exc
    return MappingProxyType(out)


def weighted_mean_metrics(items: list[tuple[int, Metrics]]) -> dict[str, float]:
    """Example-weighted mean of each metric over the items that report it (NaN skipped)."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for n, metrics in items:
        for key, value in metrics.items():
            if math.isnan(value):
                continue
            sums[key] = sums.get(key, 0.0) + n * value
            weights[key] = weights.get(key, 0.0) + n
    return {k: sums[k] / weights[k] for k in sums if weights[k] > 0}


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """What the coordinator knows of a node when it plans a round.

    Attributes
    ----------
    node_id:
        The node's identity (from its verified certificate in a networked federation).
    num_examples:
        Training examples the node declared for the run's dataset, or 0 if unknown.
    properties:
        Other declared facts (dataset name, hardware…), scalars only.
    """

    node_id: str
    num_examples: int = 0
    properties: Config = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        check_id(self.node_id, what="node_id")
        if self.num_examples < 0:
            raise ConfigurationError(f"num_examples must be >= 0, got {self.num_examples}")
        object.__setattr__(self, "properties", freeze_config(self.properties))
