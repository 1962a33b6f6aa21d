"""DP-SGD for :class:`~biofed.tasks.TorchTask`: per-example gradients, clipping and noise.

One DP-SGD step (Abadi et al. 2016, "Deep Learning with Differential Privacy"), as Opacus's
``DPOptimizer`` takes it::

    g = ( Σ_{i ∈ B} clip_C(∇ℓ_i) + N(0, (z·C)² I) ) / (q·N)

with ``B`` a Poisson-sampled batch (rate q over the site's N records), ``clip_C`` scaling a
vector to L2 norm ≤ C over all trainable parameters together, and ``q·N`` the *expected*
batch size (a data-independent divisor). Opacus's ``GradSampleModule`` computes the
per-example gradients; the noise comes from :class:`biofed.privacy.GaussianNoise` (a CSPRNG
by default), because Opacus's own ``secure_mode`` needs ``torchcsprng``, which is not built
for current torch releases.

This module imports torch and opacus; :mod:`biofed.tasks._torch` imports it only when a
``train`` call turns DP-SGD on, so plain torch training does not pay for importing opacus.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

try:
    from opacus.grad_sample import GradSampleModule
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sample-level DP-SGD needs Opacus; install it with: pip install 'biofed[torch]'"
    ) from exc

from biofed.core import TaskError
from biofed.tasks._local import DPPlan

# Clip factors are shrunk by this many ulps of the gradients' dtype, so that rounding in
# the scaling cannot leave a clipped gradient above C (see clip_factors).
_CLIP_ULPS = 4


def grad_sample_module(module: torch.nn.Module) -> GradSampleModule:
    """``module`` wrapped in Opacus's ``GradSampleModule`` (per-example gradients).

    The loss must be the **mean** over the batch of per-example terms
    (``loss_reduction="mean"``): Opacus rescales by the batch size to get each example's
    gradient of the summed loss.

    Raises
    ------
    TaskError
        If the module holds layers Opacus cannot compute per-example gradients for: layers
        with buffers, such as batch normalisation, which mixes the examples of a batch.
    """
    try:
        return GradSampleModule(module, batch_first=True, loss_reduction="mean", strict=True)
    except (NotImplementedError, ValueError) as exc:
        raise TaskError(
            "DP-SGD cannot compute per-example gradients for this model: "
            f"{exc}; replace batch normalisation by group or layer normalisation "
            "(opacus.validators.ModuleValidator.fix does it)"
        ) from exc


def per_example_gradients(weights: Sequence[torch.nn.Parameter], batch: int) -> list[torch.Tensor]:
    """Each trainable parameter's ``(batch, *shape)`` per-example gradients, after backward.

    A parameter that took no part in the forward pass gets zeros.

    Raises
    ------
    TaskError
        If Opacus returned gradients of another shape (the model ran a layer on something
        other than the batch's rows, or more than once).
    """
    out: list[torch.Tensor] = []
    for weight in weights:
        sample = getattr(weight, "grad_sample", None)
        if sample is None:
            out.append(weight.new_zeros((batch, *weight.shape)))
        elif isinstance(sample, torch.Tensor) and sample.shape == (batch, *weight.shape):
            out.append(sample)
        else:
            raise TaskError(
                "DP-SGD got per-example gradients of an unexpected shape for a parameter of "
                f"shape {tuple(weight.shape)} and a batch of {batch}: the model must run each "
                "layer once per forward pass, on the batch's rows"
            )
    return out


def clip_factors(
    per_example: Sequence[torch.Tensor], max_norm: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example scale factors that bring each gradient's L2 norm to at most ``max_norm``.

    Parameters
    ----------
    per_example:
        Each trainable parameter's ``(batch, *shape)`` per-example gradients.
    max_norm:
        The clipping bound C > 0.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        ``(factors, norms)``: float64 ``(batch,)`` factors in [0, 1] and the norms before
        clipping (each over all parameters together, computed in float64).

    Privacy notes
    -------------
    The bound must hold on the vectors actually summed, not on exact arithmetic: the factor
    is ``min(1, C / (‖g‖ (1 + 4 ε)))`` with ε the machine epsilon of the gradients' dtype,
    which absorbs the rounding of the factor to that dtype and of the products, so every
    scaled gradient has norm ≤ C (Opacus's ``C / (‖g‖ + 1e-6)`` is a looser margin).
    Non-finite gradients are refused: their clipped value would be undefined.
    """
    if not per_example:
        raise TaskError("DP-SGD needs at least one trainable parameter")
    batch = per_example[0].shape[0]
    squares = torch.zeros(batch, dtype=torch.float64, device=per_example[0].device)
    for grad in per_example:
        flat = grad.reshape(batch, -1).to(torch.float64)
        squares += (flat * flat).sum(dim=1)
    norms = squares.sqrt()
    if not bool(torch.isfinite(norms).all()):
        raise TaskError(
            "local training diverged: a per-example gradient became NaN or infinite; lower "
            "the learning_rate"
        )
    eps = max(torch.finfo(g.dtype).eps for g in per_example)
    factors = (max_norm / (norms * (1.0 + _CLIP_ULPS * eps))).clamp(max=1.0)
    return factors, norms


def clipped_sum(per_example: Sequence[torch.Tensor], factors: torch.Tensor) -> list[torch.Tensor]:
    """``Σ_i factors[i] · g_i`` for each parameter, in the gradients' own dtype."""
    return [torch.einsum("n,n...->...", factors.to(grad.dtype), grad) for grad in per_example]


def noisy_mean(summed: Sequence[torch.Tensor], plan: DPPlan) -> list[torch.Tensor]:
    """``(summed + N(0, (z·C)²)) / (q·N)`` for each parameter: the step's private gradient.

    One draw from ``plan.noise`` (float64) covers every coordinate of every parameter; each
    chunk is cast to its parameter's dtype and device before the addition. An empty Poisson
    batch passes zeros: its step is noise only.

    Privacy notes
    -------------
    The noise is what the guarantee rests on, so it comes from ``plan.noise``:
    :class:`biofed.privacy.GaussianNoise`, a CSPRNG with Mironov's floating-point attack
    mitigated, unless the config asked for seeded DP; never from torch's generator, whose
    state follows the run seed. The divisor is the expected batch size q·N, not the
    realised one, which would depend on the sampled records.
    """
    sizes = [t.numel() for t in summed]
    noise = torch.from_numpy(plan.noise.sample(sum(sizes)))
    out: list[torch.Tensor] = []
    for total, chunk in zip(summed, torch.split(noise, sizes), strict=True):
        values = chunk.reshape(total.shape).to(device=total.device, dtype=total.dtype)
        out.append((total + values) / plan.expected_batch_size)
    return out
