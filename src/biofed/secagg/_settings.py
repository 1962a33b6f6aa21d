"""A job's secure-aggregation settings (``[secure_aggregation]`` in ``job.toml``) and the
``secagg.*`` keys they travel as in every instruction of the job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from biofed.core import ConfigurationError, ParameterSet, PayloadError, Scalar
from biofed.core.sections import SECAGG_PREFIX as SECAGG_PREFIX
from biofed.core.sections import STAGE_KEY as STAGE_KEY
from biofed.core.sections import WEIGHTING_KEY as WEIGHTING_KEY
from biofed.core.sections import SecureAggregationSection
from biofed.secagg._config import SecAggConfig

#: Name of the extras entry (and of its one array) that carries a protocol message.
MESSAGE_EXTRA = "secagg"
MESSAGE_ARRAY = "message"
#: Extras array names: a site's own certificate (stage 1 reply) and every participant's
#: certificate (``certificate.<site>``, stage 2 instruction).
CERTIFICATE_ARRAY = "certificate"
CERTIFICATE_PREFIX = "certificate."
_TABLE_KEYS = {"num_neighbours", "threshold", "clip_range", "quantisation_step", "max_weight"}


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureAggregationSettings:
    """How a job's training rounds are securely aggregated.

    Attributes
    ----------
    num_neighbours:
        k of the SecAgg+ neighbour graph (even), or None for the full graph.
    threshold:
        t, or None for the smallest strict majority of each site's k + 1 share holders.
    clip_range:
        Each coordinate of a site's model update is clipped to [-r, r] before it is
        quantised.
    quantisation_step:
        The fixed-point step; the aggregate is within step/2 of the exact weighted mean.
    max_weight:
        The largest weight one site's update may carry (its example count is capped there).
    """

    num_neighbours: int | None = None
    threshold: int | None = None
    clip_range: float = 1.0
    quantisation_step: float = 1e-6
    max_weight: int = 100_000

    def __post_init__(self) -> None:
        self.secagg_config(1)  # validates every field with SecAggConfig's messages

    def secagg_config(self, dimension: int) -> SecAggConfig:
        """The protocol's settings for vectors of length ``dimension``."""
        return SecAggConfig(
            dimension=dimension,
            clip_range=self.clip_range,
            quantisation_step=self.quantisation_step,
            max_weight=self.max_weight,
            num_neighbours=self.num_neighbours,
            threshold=self.threshold,
        )

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> SecureAggregationSettings:
        """The ``[secure_aggregation]`` table of a job."""
        bad = set(table) - _TABLE_KEYS
        if bad:
            raise ConfigurationError(
                f"unknown [secure_aggregation] key(s) {sorted(bad)}; allowed: {sorted(_TABLE_KEYS)}"
            )
        try:
            return cls(**dict(table))
        except ConfigurationError as exc:
            raise ConfigurationError(f"[secure_aggregation] {exc}") from None

    def to_table(self) -> dict[str, Scalar]:
        """The ``[secure_aggregation]`` table (unset optional keys left out)."""
        table: dict[str, Scalar] = {
            "clip_range": self.clip_range,
            "quantisation_step": self.quantisation_step,
            "max_weight": self.max_weight,
        }
        if self.num_neighbours is not None:
            table["num_neighbours"] = self.num_neighbours
        if self.threshold is not None:
            table["threshold"] = self.threshold
        return table

    def to_section(self) -> SecureAggregationSection:
        """The job section's secure-aggregation part
        (:attr:`biofed.core.sections.JobSection.secure_aggregation`)."""
        return SecureAggregationSection(table=self.to_table())

    @classmethod
    def from_section(
        cls, section: SecureAggregationSection | None
    ) -> SecureAggregationSettings | None:
        """The settings an instruction's job section carries, or None when its job does not
        use them.

        Raises
        ------
        ConfigurationError
            If they are invalid (one line naming the key).
        """
        return None if section is None or not section.table else cls.from_table(section.table)

    def to_config(self) -> dict[str, Scalar]:
        """The settings in the flat form of older code (``secagg.*`` keys)."""
        return {f"{SECAGG_PREFIX}{k}": v for k, v in self.to_table().items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Scalar]) -> SecureAggregationSettings | None:
        """The settings a flat config carries (``secagg.*`` keys but the stage and the
        weighting), or None."""
        table = {
            k[len(SECAGG_PREFIX) :]: v
            for k, v in config.items()
            if k.startswith(SECAGG_PREFIX) and k not in (STAGE_KEY, WEIGHTING_KEY)
        }
        return cls.from_section(SecureAggregationSection(table=table))


def pack_message(message: bytes, **more: bytes) -> dict[str, ParameterSet]:
    """Instruction or reply extras carrying one protocol message (and named byte strings
    beside it), as 1-D uint8 arrays."""
    arrays = {MESSAGE_ARRAY: np.frombuffer(message, dtype=np.uint8)}
    arrays.update({name: np.frombuffer(data, dtype=np.uint8) for name, data in more.items()})
    return {MESSAGE_EXTRA: ParameterSet(arrays)}


def unpack_message(extras: Mapping[str, ParameterSet]) -> tuple[bytes, dict[str, bytes]]:
    """The protocol message and the other byte strings of :func:`pack_message`'s extras.

    Raises
    ------
    PayloadError
        If the extras carry no message, or arrays that are not 1-D uint8.
    """
    entry = extras.get(MESSAGE_EXTRA)
    if entry is None or MESSAGE_ARRAY not in entry:
        raise PayloadError("the secure-aggregation message is missing")
    out: dict[str, bytes] = {}
    for name, array in entry.items():
        if array.dtype != np.uint8 or array.ndim != 1:
            raise PayloadError(f"secure-aggregation field {name!r} must be a 1-D uint8 array")
        out[name] = array.tobytes()
    return out.pop(MESSAGE_ARRAY), out
