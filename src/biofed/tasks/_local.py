"""Local-training machinery shared by every task adapter (numpy and PyTorch).

One place decides, for one ``train`` call, which mini-batches are drawn, what FedProx and
SCAFFOLD add to each gradient, and what SCAFFOLD sends back. The adapters only run the
optimiser: with the same ``ctx.rng`` they see the same batches and the same corrections.

Both corrections are affine in the current parameters ``w``, so they are folded into one
term added to the loss gradient at every step::

    g ← ∇loss(w) + μ (w − x) + (c − c_i)  =  ∇loss(w) + μ w + offset,
    offset = (c − c_i) − μ x

with ``x`` the global parameters the round started from, ``μ`` FedProx's ``proximal_mu``,
``c`` SCAFFOLD's server control variate and ``c_i`` the site's own (Karimireddy et al.,
"SCAFFOLD", ICML 2020, option II). After ``K`` steps of size ``η`` ending at ``y``::

    c_i⁺ = c_i − c + (x − y) / (K η),    Δc = c_i⁺ − c_i  (sent back)

Under sample-level DP-SGD the plan also holds the Poisson-sampled batches and the noise
source (:class:`DPPlan`); both come from a CSPRNG unless the config sets ``dp_seeded``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from biofed.core import Array, ConfigurationError, DataError, ParameterSet
from biofed.core.checks import check_fraction, check_int
from biofed.tasks._api import (
    SCAFFOLD_CLIENT_CONTROL,
    SCAFFOLD_CONTROL_DELTA,
    SCAFFOLD_SERVER_CONTROL,
    LocalTrainingConfig,
    TrainContext,
)

if TYPE_CHECKING:
    from biofed.privacy import GaussianNoise


def sample_batches(
    num_examples: int, batch_size: int, num_steps: int, rng: np.random.Generator
) -> Array:
    """Row indices of ``num_steps`` mini-batches, reshuffling at each pass over the data.

    Each pass draws one permutation from ``rng`` and cuts it into full batches; the last,
    partial batch of a pass is dropped, unless the dataset is smaller than ``batch_size``, in
    which case every batch is the whole (reshuffled) dataset.

    Parameters
    ----------
    num_examples:
        Rows in the dataset (≥ 1).
    batch_size:
        Rows per batch (≥ 1).
    num_steps:
        Number of batches (≥ 1).
    rng:
        Source of the permutations.

    Returns
    -------
    Array
        ``(num_steps, min(batch_size, num_examples))`` int64 row indices.
    """
    if num_examples < 1:
        raise DataError("the dataset is empty: a site needs at least one example to train")
    check_int(batch_size, "batch_size", minimum=1)
    check_int(num_steps, "num_steps", minimum=1)
    size = min(batch_size, num_examples)
    per_pass = num_examples // size
    passes = -(-num_steps // per_pass)
    perms = rng.permuted(np.tile(np.arange(num_examples, dtype=np.int64), (passes, 1)), axis=1)
    return perms[:, : per_pass * size].reshape(-1, size)[:num_steps]


# Uniforms for Poisson sampling have 53 bits, like a double's significand.
_UNIFORM_BITS = 53


def poisson_batches(
    num_examples: int, sampling_rate: float, num_steps: int, rng: np.random.Generator | None
) -> tuple[Array, ...]:
    """Row indices of ``num_steps`` Poisson-sampled batches (DP-SGD's subsampling).

    Each row joins each batch independently with probability ``sampling_rate``, so batch
    sizes vary (Binomial(n, q)) and a batch may be empty.

    Parameters
    ----------
    num_examples:
        Rows in the dataset (≥ 1).
    sampling_rate:
        q, 0 < q ≤ 1.
    num_steps:
        Number of batches (≥ 1).
    rng:
        ``None`` (secure) for uniforms from the operating system's CSPRNG
        (:func:`secrets.token_bytes`); a numpy Generator only for simulations and tests.

    Returns
    -------
    tuple[Array, ...]
        ``num_steps`` sorted int64 arrays of row indices.

    Privacy notes
    -------------
    Privacy amplification by subsampling holds only if no adversary learns which records
    were sampled. A generator derived from the run seed (``TrainContext.rng``) is known to
    the coordinator, which could then tell which records took part in each step; the
    secure default draws fresh OS randomness that no one else holds. In secure mode, a row
    is kept when its 53-bit uniform integer is below ``floor(q · 2⁵³)``, so the realised
    rate never exceeds q (ε grows with q: the accountant's figure stays an upper bound).
    """
    if num_examples < 1:
        raise DataError("the dataset is empty: a site needs at least one example to train")
    check_int(num_steps, "num_steps", minimum=1)
    check_fraction(sampling_rate, "sampling_rate", above=0)
    batches: list[Array] = []
    if rng is not None:
        for _ in range(num_steps):
            batches.append(np.flatnonzero(rng.random(num_examples) < sampling_rate))
        return tuple(batches)
    threshold = np.uint64(int(sampling_rate * 2**_UNIFORM_BITS))
    shift = np.uint64(64 - _UNIFORM_BITS)
    for _ in range(num_steps):
        words = np.frombuffer(secrets.token_bytes(8 * num_examples), dtype="<u8")
        batches.append(np.flatnonzero((words >> shift) < threshold))
    return tuple(batches)


@dataclass(frozen=True, slots=True, kw_only=True)
class DPPlan:
    """What DP-SGD needs for one ``train`` call, decided before the first step.

    Attributes
    ----------
    noise_multiplier:
        z (> 0).
    max_grad_norm:
        The per-example clipping bound C (> 0).
    sampling_rate:
        Poisson sampling rate q = min(1, batch_size / num_examples).
    expected_batch_size:
        q · num_examples, the divisor of each step's noisy sum (Opacus's convention: a
        data-independent divisor, unlike the realised batch size).
    batches:
        ``local_steps`` Poisson-sampled batches of row indices (see :func:`poisson_batches`).
    noise:
        N(0, (z·C)²) noise for each step's sum: secure (CSPRNG) unless ``dp_seeded``.
    """

    noise_multiplier: float
    max_grad_norm: float
    sampling_rate: float
    expected_batch_size: float
    batches: tuple[Array, ...]
    noise: GaussianNoise

    @property
    def secure(self) -> bool:
        """True when the sampling and the noise come from a CSPRNG."""
        return self.noise.secure


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalPlan:
    """What one ``train`` call does, decided before the first step.

    Attributes
    ----------
    config:
        The parsed local-training config.
    batches:
        ``(local_steps, batch)`` row indices (see :func:`sample_batches`); empty
        (``(0, 0)``) under DP-SGD, whose Poisson-sampled batches are in ``dp.batches``.
    prox_mu:
        The factor of ``w`` in the gradient correction (FedProx's μ; 0 when off).
    offset:
        Per-parameter float64 constant of the gradient correction, or ``None`` when there is
        none (neither FedProx nor SCAFFOLD).
    server_control, client_control:
        SCAFFOLD's ``c`` and ``c_i`` when SCAFFOLD is on, else ``None``.
    dp:
        The DP-SGD plan when ``dp_noise_multiplier`` > 0, else ``None``.
    """

    config: LocalTrainingConfig
    batches: Array
    prox_mu: float
    offset: Mapping[str, Array] | None
    server_control: ParameterSet | None
    client_control: ParameterSet | None
    dp: DPPlan | None = None

    @property
    def scaffold(self) -> bool:
        """True when SCAFFOLD's client side runs in this call."""
        return self.server_control is not None


def _plan_dp(
    config: LocalTrainingConfig, num_examples: int, ctx: TrainContext, supported: bool
) -> DPPlan:
    if not supported:
        raise ConfigurationError(
            "sample-level DP (dp_noise_multiplier > 0) needs a TorchTask: DP-SGD clips each "
            "example's gradient through Opacus, which this task's adapter (NumpyTask, e.g. the "
            "built-in 'cox_ph') cannot do; use a torch task such as 'cox_ph_torch', or remove "
            "the dp_* keys"
        )
    # Imported here: biofed.privacy pulls in dp-accounting and scipy, which only DP needs.
    from biofed.privacy import GaussianNoise

    q = config.dp_sampling_rate(num_examples)
    std = config.dp_noise_multiplier * config.dp_max_grad_norm
    if config.dp_seeded:
        batches = poisson_batches(num_examples, q, config.local_steps, ctx.rng)
        noise = GaussianNoise.seeded(std, int(ctx.rng.integers(0, 2**63 - 1)))
    else:
        batches = poisson_batches(num_examples, q, config.local_steps, None)
        noise = GaussianNoise(std)
    return DPPlan(
        noise_multiplier=config.dp_noise_multiplier,
        max_grad_norm=config.dp_max_grad_norm,
        sampling_rate=q,
        expected_batch_size=q * num_examples,
        batches=batches,
        noise=noise,
    )


def plan_local_training(
    parameters: ParameterSet,
    num_examples: int,
    ctx: TrainContext,
    *,
    dp_sgd: bool = False,
) -> LocalPlan:
    """Parse the config, draw the batches and build the gradient corrections for one call.

    The batches are the first thing drawn from ``ctx.rng``, so adapters that draw further
    numbers afterwards (a torch seed) still see the same batches as the numpy adapter.

    Parameters
    ----------
    parameters:
        The global parameters the call starts from.
    num_examples:
        Rows in the site's training data.
    ctx:
        The call's context.
    dp_sgd:
        Whether the calling adapter implements DP-SGD; when the config turns DP-SGD on and
        it does not, the call is refused rather than run without privacy. Under DP-SGD the
        Poisson batches and the noise come from a CSPRNG, or from ``ctx.rng`` (first the
        batches, then the noise's seed) under ``dp_seeded``.

    Raises
    ------
    ConfigurationError
        On an invalid config, SCAFFOLD with an optimizer other than plain SGD, or DP-SGD
        asked of an adapter that does not implement it.
    ParameterMismatch
        If a control variate does not match the parameters.
    """
    config = LocalTrainingConfig.from_config(ctx.config)
    dp = None
    if config.dp_sgd:
        if num_examples < 1:
            raise DataError("the dataset is empty: a site needs at least one example to train")
        dp = _plan_dp(config, num_examples, ctx, dp_sgd)
        batches = np.empty((0, 0), dtype=np.int64)
    else:
        batches = sample_batches(num_examples, config.batch_size, config.local_steps, ctx.rng)
    server_control = ctx.extras.get(SCAFFOLD_SERVER_CONTROL)
    client_control = None
    if server_control is not None:
        if config.optimizer != "sgd" or config.momentum != 0.0:
            raise ConfigurationError(
                "SCAFFOLD needs plain local SGD: set optimizer='sgd' and momentum=0 "
                f"(got optimizer={config.optimizer!r}, momentum={config.momentum})"
            )
        spec = parameters.spec
        spec.validate(server_control, what="SCAFFOLD server control")
        client_control = ctx.state.get(SCAFFOLD_CLIENT_CONTROL)
        if client_control is None:
            client_control = parameters.map(np.zeros_like)
        else:
            spec.validate(client_control, what="SCAFFOLD client control (site state)")
    mu = config.proximal_mu
    offset: dict[str, Array] | None = None
    if mu > 0 or server_control is not None:
        offset = {}
        for name, x in parameters.items():
            term = -mu * x.astype(np.float64)
            if server_control is not None and client_control is not None:
                term += server_control[name] - client_control[name].astype(np.float64)
            offset[name] = term
    return LocalPlan(
        config=config,
        batches=batches,
        prox_mu=mu,
        offset=offset,
        server_control=server_control,
        client_control=client_control,
        dp=dp,
    )


def finish_local_training(
    plan: LocalPlan,
    parameters: ParameterSet,
    trained: Mapping[str, Array],
    ctx: TrainContext,
) -> dict[str, ParameterSet]:
    """SCAFFOLD's client update after the local steps; the extras to send back.

    Stores ``c_i⁺`` in ``ctx.state`` and returns ``{SCAFFOLD_CONTROL_DELTA: c_i⁺ − c_i}``;
    returns ``{}`` when SCAFFOLD is off.

    Parameters
    ----------
    plan:
        The plan the call ran.
    parameters:
        The global parameters ``x`` the call started from.
    trained:
        The local parameters ``y`` after the steps.
    ctx:
        The call's context (its ``state`` is updated).
    """
    if plan.server_control is None or plan.client_control is None:
        return {}
    scale = 1.0 / (plan.config.local_steps * plan.config.learning_rate)
    new_control: dict[str, Array] = {}
    delta: dict[str, Array] = {}
    for name, x in parameters.items():
        old = plan.client_control[name]
        step = (x.astype(np.float64) - np.asarray(trained[name], dtype=np.float64)) * scale
        new = (old - plan.server_control[name].astype(np.float64) + step).astype(x.dtype)
        new_control[name] = new
        delta[name] = new - old
    ctx.state[SCAFFOLD_CLIENT_CONTROL] = ParameterSet(new_control)
    return {SCAFFOLD_CONTROL_DELTA: ParameterSet(delta)}
