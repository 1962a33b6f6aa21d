"""What a secure-aggregation round needs agreed before it starts: the config and its plan."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from biofed.core import ConfigurationError, PayloadError
from biofed.core.checks import check_choice, check_float, check_int
from biofed.secagg._wire import Reader, Writer

#: Rings the masked vectors live in: Z_{2^32} (numpy uint32) or Z_{2^64} (numpy uint64).
RING_BITS = (32, 64)
_KIND_PLAN = 0x10
_MAX_DIMENSION = (1 << 32) - 2


@dataclass(frozen=True, slots=True, kw_only=True)
class SecAggConfig:
    """Settings of secure aggregation that do not depend on how many sites take part.

    Parameters
    ----------
    dimension:
        Length d of the float32 vector each site contributes.
    clip_range:
        r > 0: each value is clipped to [-r, r] before it is quantised.
    quantisation_step:
        The fixed-point step s: a value x becomes the integer ``rint((clip(x) + r) / s)`` in
        ``[0, L]`` with ``L = ceil(2r / s)`` levels. The aggregate's error is at most s/2 per
        value (see :attr:`SecAggPlan.error_bound`).
    max_weight:
        Largest weight (example count) one site may give its vector; a site's weight is an
        integer in ``[1, max_weight]``.
    num_neighbours:
        k, the degree of the SecAgg+ neighbour graph: an even number (k/2 neighbours on each
        side of a random ring), or ``None`` for the full graph (every site a neighbour of
        every other, the original protocol of Bonawitz et al.). A k ≥ n − 1 also gives the full
        graph. Bell et al. (2020) show k = O(log n) suffices; the benchmark uses the smallest
        even k ≥ log2(n).
    threshold:
        t, how many of a site's k + 1 share holders (its neighbours and itself) must answer
        to remove its masks. ``None`` picks the smallest strict majority, ⌊(k + 1)/2⌋ + 1.
    ring_bits:
        32 or 64 to force a ring, or ``None`` to take the smaller one in which the sum cannot
        wrap around.

    Security notes
    --------------
    t must be a strict majority of the k + 1 holders (t > (k + 1)/2): every honest site
    reveals, for each neighbour, either the share of its self-mask seed (neighbour alive) or
    of its mask key (neighbour dropped), never both, so a coordinator that tells different
    sites different stories about who dropped collects at most k + 1 shares in all and
    cannot reach t of both kinds for any site. t ≥ 2 also means that at least two inputs are
    in any sum released.
    """

    dimension: int
    clip_range: float
    quantisation_step: float
    max_weight: int = 1
    num_neighbours: int | None = None
    threshold: int | None = None
    ring_bits: int | None = None

    def __post_init__(self) -> None:
        dimension = check_int(self.dimension, "dimension", minimum=1, maximum=_MAX_DIMENSION)
        object.__setattr__(self, "dimension", dimension)
        object.__setattr__(self, "clip_range", check_float(self.clip_range, "clip_range", above=0))
        step = check_float(self.quantisation_step, "quantisation_step", above=0)
        object.__setattr__(self, "quantisation_step", step)
        object.__setattr__(self, "max_weight", check_int(self.max_weight, "max_weight", minimum=1))
        if self.num_neighbours is not None:
            k = check_int(self.num_neighbours, "num_neighbours", minimum=2)
            if k % 2:
                raise ConfigurationError(
                    f"num_neighbours must be even (k/2 neighbours on each side of the ring), "
                    f"got {k}; use {k + 1}, or None for the full graph"
                )
            object.__setattr__(self, "num_neighbours", k)
        if self.threshold is not None:
            object.__setattr__(self, "threshold", check_int(self.threshold, "threshold", minimum=2))
        if self.ring_bits is not None:
            check_choice(self.ring_bits, "ring_bits", RING_BITS)
        if not math.isfinite(2 * self.clip_range / step):
            raise ConfigurationError("2 * clip_range / quantisation_step must be finite")

    @property
    def levels(self) -> int:
        """L = ⌈2r/s⌉: quantised values lie in [0, L]."""
        return max(1, math.ceil(2 * self.clip_range / self.quantisation_step))

    def plan(self, num_sites: int) -> SecAggPlan:
        """Check this config for ``num_sites`` sites and fix the ring, degree and threshold.

        Raises
        ------
        ConfigurationError
            If the weighted sum of ``num_sites`` vectors could wrap around the ring, or the
            threshold does not fit the graph: before any site is contacted.
        """
        return SecAggPlan(config=self, num_sites=num_sites)


def _derive(config: SecAggConfig, num_sites: int) -> tuple[int, int, int]:
    """(ring bits, effective degree k, threshold t) for ``num_sites``, or ConfigurationError."""
    n = check_int(num_sites, "num_sites", minimum=2)
    k = n - 1 if config.num_neighbours is None else min(config.num_neighbours, n - 1)
    holders = k + 1
    t = holders // 2 + 1 if config.threshold is None else config.threshold
    if t > holders:
        raise ConfigurationError(
            f"threshold t={t} exceeds the {holders} holders of each site's shares (its "
            f"{k} neighbours and itself) with {n} sites; lower threshold or raise num_neighbours"
        )
    if 2 * t <= holders:
        raise ConfigurationError(
            f"threshold t={t} must be a strict majority of the {holders} share holders "
            f"(t > {holders / 2:g}), so that a coordinator that lies about who dropped out "
            f"cannot collect both shares of one site; use threshold={holders // 2 + 1} or more"
        )
    worst = n * config.max_weight * config.levels
    if config.ring_bits is not None:
        bits = config.ring_bits
    else:
        bits = next((b for b in RING_BITS if worst < 1 << b), RING_BITS[-1])
    if worst >= 1 << bits:
        raise ConfigurationError(
            f"the weighted sum of {n} sites could wrap around the {bits}-bit ring: sites × "
            f"max_weight × levels = {n} × {config.max_weight} × {config.levels} = {worst} ≥ "
            f"2^{bits} (levels = ⌈2 × clip_range / quantisation_step⌉); raise "
            "quantisation_step, lower max_weight or clip_range, take fewer sites"
            + (", or use ring_bits=64" if bits < RING_BITS[-1] else "")
        )
    return bits, k, t


@dataclass(frozen=True, slots=True, kw_only=True)
class SecAggPlan:
    """A :class:`SecAggConfig` checked for a number of sites: every party of a round holds one.

    Build with :meth:`SecAggConfig.plan`. The derived fields are recomputed and checked on
    construction, so a plan cannot hold a ring in which the sum could wrap.

    Attributes
    ----------
    config, num_sites:
        The config and the most sites that may take part.
    ring_bits:
        b: masked vectors are vectors of Z_{2^b} (``dtype``).
    num_neighbours:
        The graph's degree k for ``num_sites`` sites (n − 1 for the full graph).
    threshold:
        t, shares needed to rebuild a secret.
    """

    config: SecAggConfig
    num_sites: int
    ring_bits: int = 0
    num_neighbours: int = 0
    threshold: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.config, SecAggConfig):
            raise ConfigurationError(
                f"config must be a SecAggConfig, got {type(self.config).__name__}"
            )
        bits, k, t = _derive(self.config, self.num_sites)
        for name, given, derived in (
            ("ring_bits", self.ring_bits, bits),
            ("num_neighbours", self.num_neighbours, k),
            ("threshold", self.threshold, t),
        ):
            if given not in (0, derived):
                raise ConfigurationError(
                    f"{name}={given} does not match the config, which gives {derived}"
                )
        object.__setattr__(self, "num_sites", int(self.num_sites))
        object.__setattr__(self, "ring_bits", bits)
        object.__setattr__(self, "num_neighbours", k)
        object.__setattr__(self, "threshold", t)

    @property
    def dimension(self) -> int:
        """d, the length of each site's float32 vector."""
        return self.config.dimension

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        """The numpy dtype of ring elements: uint32 or uint64."""
        return np.dtype(np.uint32 if self.ring_bits == 32 else np.uint64)

    @property
    def error_bound(self) -> float:
        """Largest difference between the released mean and the weighted mean of the clipped
        inputs, per value: s/2 from rounding to the step, plus float32 rounding of the output
        (2^-24 relative, on values of at most r + s) and float64 decoding (far smaller);
        stated here as s/2 + 2^-23 (r + s)."""
        step = self.config.quantisation_step
        return step / 2 + (self.config.clip_range + step) * 2.0**-23

    def to_bytes(self) -> bytes:
        """The canonical encoding: the config's fields and ``num_sites``."""
        c = self.config
        return (
            Writer(_KIND_PLAN)
            .u32(c.dimension)
            .f64(c.clip_range)
            .f64(c.quantisation_step)
            .u64(c.max_weight)
            .u32(c.num_neighbours or 0)
            .u32(c.threshold or 0)
            .u8(c.ring_bits or 0)
            .u32(self.num_sites)
            .finish()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SecAggPlan:
        """Parse :meth:`to_bytes` output and re-check it (PayloadError if malformed)."""
        r = Reader(data, _KIND_PLAN, "SecAggPlan")
        fields = (r.u32(), r.f64(), r.f64(), r.u64(), r.u32(), r.u32(), r.u8(), r.u32())
        r.finish()
        dimension, clip, step, weight, k, t, bits, n = fields
        try:
            config = SecAggConfig(
                dimension=dimension,
                clip_range=clip,
                quantisation_step=step,
                max_weight=weight,
                num_neighbours=k or None,
                threshold=t or None,
                ring_bits=bits or None,
            )
            return cls(config=config, num_sites=n)
        except ConfigurationError as exc:
            raise PayloadError(f"SecAggPlan: {exc}") from exc

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of :meth:`to_bytes`: signed by every site, so all sites run one plan."""
        return hashlib.sha256(self.to_bytes()).digest()
