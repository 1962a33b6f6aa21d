"""The PyTorch task adapter, with sample-level DP-SGD through Opacus."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "TorchTask needs PyTorch; install it with: pip install 'biofed[torch]'"
    ) from exc

from biofed.core import Array, ConfigurationError, ParameterSet, ParameterSpec, TaskError
from biofed.data import Dataset
from biofed.tasks._api import EvalResult, LocalTrainingConfig, TrainContext, TrainResult
from biofed.tasks._local import (
    DPPlan,
    LocalPlan,
    finish_local_training,
    plan_local_training,
)

#: ``loss_fn(outputs, targets)``: a scalar loss from the model's outputs and the batch's
#: targets (the dataset's target arrays as tensors, indexed like the features).
LossFn = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]
#: ``metrics_fn(module, data)``: evaluation metrics of a module holding the parameters.
MetricsFn = Callable[[torch.nn.Module, Dataset], Mapping[str, float]]

_ADAM_EPS = 1e-8
_NO_INPUT_GRAD = "Full backward hook is firing when gradients are computed with respect to"


class TorchTask:
    """A :class:`~biofed.tasks.Task` around a ``torch.nn.Module``.

    Parameters travel as the module's ``state_dict`` (same names; floating-point entries as
    float32, others in their own dtype). Local training uses the batches, FedProx and
    SCAFFOLD corrections of the numpy adapter (shared code), with ``torch.optim.SGD`` or
    ``torch.optim.Adam``: with the same ``ctx.rng`` both adapters see the same batches.
    FedProx's gradient ``μ (w − w_global)`` and SCAFFOLD's ``c − c_i`` are added to each
    trainable parameter's ``.grad`` before the optimiser step (buffers travel but are not
    corrected). Torch's global RNG is seeded from ``ctx.rng`` inside a forked RNG state, so
    dropout is reproducible and the caller's torch RNG is left alone.

    **Sample-level DP-SGD.** When the config sets ``dp_noise_multiplier`` z > 0 (and
    ``dp_max_grad_norm`` C, see :class:`~biofed.tasks.LocalTrainingConfig`), each of the
    ``local_steps`` steps Poisson-samples a batch (each record independently with probability
    ``q = min(1, batch_size / N)``), computes every example's gradient with Opacus's
    ``GradSampleModule``, clips each to L2 norm C (over all trainable parameters together),
    sums them, adds N(0, (z·C)²) noise to every coordinate and divides by the expected batch
    size q·N (an empty batch gives a noise-only step). FedProx's and SCAFFOLD's corrections
    are added after the noise and the optimiser then steps as usual, so DP-SGD works with
    every strategy. The result's metrics carry ``dp_steps``, ``dp_sampling_rate``,
    ``dp_noise_multiplier`` and ``dp_max_grad_norm``, and no ``train_loss``: the loss is
    computed from the records without noise, so reporting it would release something ε does
    not cover. Under DP-SGD:

    - ``loss_fn`` must be the **mean** over the batch of per-example terms (Opacus's
      ``loss_reduction="mean"``), computed from the module's outputs. Terms of the loss that
      depend on the parameters directly (a weight penalty) reach no per-example gradient
      and are dropped; use ``proximal_mu`` or put the penalty in the model.
    - The module must not mix examples within a batch (batch normalisation is refused).
    - ε is exact only for losses that are sums of per-example terms; a loss that couples
      the examples of a batch (the Cox partial likelihood) is bounded per example's *share*
      only, see :class:`~biofed.tasks.CoxPHTorchTask`.

    Parameters
    ----------
    model_fn:
        Builds a fresh module (called once per ``train``, ``evaluate`` and
        ``init_parameters`` call, so tasks can run on many threads).
    loss_fn:
        ``loss_fn(outputs, targets) -> scalar tensor``; ``outputs = module(features[batch])``
        and ``targets`` maps every dataset target name to its batch tensor.
    metrics_fn:
        ``metrics_fn(module, data) -> {name: value}`` for ``evaluate``; when ``None``,
        ``evaluate`` reports the full-batch ``"loss"``.
    name:
        Task name.
    primary_metric:
        The metric tables and progress bars show.
    device:
        Where to train (``"cpu"``, ``"cuda"``…).

    Privacy notes
    -------------
    DP-SGD's guarantee (Abadi et al. 2016; the subsampled Gaussian mechanism of Mironov,
    Talwar and Zhang 2019) assumes that the adversary does not know which records each step
    sampled, nor the noise. ``TrainContext.rng`` is derived from the run's seed, which the
    coordinator chooses: a coordinator that knew the sampled batches would void the
    amplification by subsampling, and one that knew the noise could subtract it. So both
    come from a cryptographically secure generator by default: Poisson sampling from the
    operating system's CSPRNG, and noise from :class:`biofed.privacy.GaussianNoise`
    (ChaCha20 under a fresh OS key, each value a sum of 4 Box–Muller normals against
    Mironov's 2012 floating-point attack, as in Opacus's ``secure_mode``). The config key
    ``dp_seeded`` draws both from ``ctx.rng`` instead, for reproducible simulations and
    tests: that run has **no** privacy against whoever knows the run seed, so a node must
    set the key itself rather than take it from an instruction.

    Subclasses declare ``dp_record_coupling`` (see :data:`~biofed.tasks.RECORD_COUPLINGS`);
    the default ``"none"`` makes nodes refuse sample-level DP for the task.
    """

    #: How the loss decomposes over records (``"none"``: no DP-SGD guarantee claimed).
    dp_record_coupling: str = "none"

    def __init__(
        self,
        model_fn: Callable[[], torch.nn.Module],
        loss_fn: LossFn,
        metrics_fn: MetricsFn | None = None,
        *,
        name: str,
        primary_metric: str = "loss",
        device: str | torch.device = "cpu",
    ) -> None:
        self.model_fn = model_fn
        self.loss_fn = loss_fn
        self.metrics_fn = metrics_fn
        self.name = name
        self.primary_metric = primary_metric
        self.device = torch.device(device)
        self._spec: ParameterSpec | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={str(self.device)!r})"

    def _build(self, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        module = self.model_fn()
        if not isinstance(module, torch.nn.Module):
            raise TaskError(f"model_fn must return a torch.nn.Module, got {type(module).__name__}")
        return module.to(self.device)

    def _load(self, module: torch.nn.Module, parameters: ParameterSet) -> None:
        if self._spec is None:
            self._spec = _export(module).spec
        self._spec.validate(parameters, what="parameters")
        with torch.no_grad():
            for name, tensor in module.state_dict().items():
                tensor.copy_(torch.from_numpy(np.array(parameters[name], copy=True)))

    def init_parameters(self, rng: np.random.Generator) -> ParameterSet:
        """The parameters of a module built by ``model_fn`` under a seed drawn from ``rng``."""
        with torch.random.fork_rng(devices=[]):
            return _export(self._build(_seed(rng)))

    def train(self, parameters: ParameterSet, data: Dataset, ctx: TrainContext) -> TrainResult:
        """Run the local steps from ``parameters`` on ``data``, like ``NumpyTask.train``.

        With ``dp_noise_multiplier`` > 0 in ``ctx.config`` the steps are DP-SGD steps (see
        the class's docstring).

        Raises
        ------
        ConfigurationError
            On an invalid config.
        ParameterMismatch
            If ``parameters`` do not fit the module.
        TaskError
            If training diverges, or DP-SGD cannot compute per-example gradients for the
            model.
        """
        plan = plan_local_training(parameters, len(data), ctx, dp_sgd=True)
        config = plan.config
        with torch.random.fork_rng(devices=[]):
            module = self._build(_seed(ctx.rng))
            self._load(module, parameters)
            module.train()
            trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
            weights = [p for _, p in trainable]
            offsets = None
            if plan.offset is not None:
                offsets = [self._tensor(plan.offset[n], p.dtype) for n, p in trainable]
            optimizer: torch.optim.Optimizer
            if config.optimizer == "adam":
                optimizer = torch.optim.Adam(weights, lr=config.learning_rate, eps=_ADAM_EPS)
            else:
                optimizer = torch.optim.SGD(
                    weights, lr=config.learning_rate, momentum=config.momentum
                )
            X = self._tensor(data.features, _input_dtype(module))
            targets = {k: self._tensor(v, None) for k, v in data.targets.items()}

            def correct_and_step() -> None:
                if offsets is not None:
                    with torch.no_grad():
                        for weight, offset in zip(weights, offsets, strict=True):
                            grad = weight.grad
                            if grad is None:
                                continue
                            if plan.prox_mu:
                                grad.add_(weight, alpha=plan.prox_mu)
                            grad.add_(offset)
                optimizer.step()

            metrics: dict[str, float]
            if plan.dp is None:
                mean_loss = self._sgd_steps(module, plan, weights, X, targets, correct_and_step)
                metrics = {"train_loss": mean_loss}
            else:  # the loss is checked at every step, and not released
                self._dp_sgd_steps(module, plan.dp, config, weights, X, targets, correct_and_step)
                metrics = _dp_metrics(plan.dp)
            new = _export(module)
        if not (all(math.isfinite(v) for v in metrics.values()) and new.all_finite()):
            raise TaskError(
                "local training diverged: the loss or parameters became NaN or infinite; "
                f"lower the learning_rate (now {config.learning_rate})"
            )
        extras = finish_local_training(plan, parameters, new, ctx)
        return TrainResult(parameters=new, num_examples=len(data), metrics=metrics, extras=extras)

    def _sgd_steps(
        self,
        module: torch.nn.Module,
        plan: LocalPlan,
        weights: Sequence[torch.nn.Parameter],
        X: torch.Tensor,
        targets: Mapping[str, torch.Tensor],
        correct_and_step: Callable[[], None],
    ) -> float:
        """The plain mini-batch steps; returns the mean batch loss."""
        config = plan.config
        batches = torch.from_numpy(plan.batches).to(self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for rows in batches:
            module.zero_grad(set_to_none=False)
            outputs = module(X[rows])
            loss = self.loss_fn(outputs, {k: v[rows] for k, v in targets.items()})
            loss.backward()  # type: ignore[no-untyped-call]
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(weights, config.max_grad_norm)
            correct_and_step()
            total += loss.detach()
        return float(total) / len(plan.batches)

    def _dp_sgd_steps(
        self,
        module: torch.nn.Module,
        dp: DPPlan,
        config: LocalTrainingConfig,
        weights: Sequence[torch.nn.Parameter],
        X: torch.Tensor,
        targets: Mapping[str, torch.Tensor],
        correct_and_step: Callable[[], None],
    ) -> None:
        """The DP-SGD steps: per-example clipping, noise, then the corrections and the step."""
        try:
            from biofed.tasks import _dpsgd  # imports opacus: only when DP-SGD is on
        except ImportError as exc:
            raise ConfigurationError(f"{exc} (asked for by dp_noise_multiplier > 0)") from exc

        gsm = _dpsgd.grad_sample_module(module)
        try:
            for batch in dp.batches:
                gsm.zero_grad(set_to_none=True)
                if batch.size:
                    rows = torch.from_numpy(batch).to(self.device)
                    outputs = gsm(X[rows])
                    loss = self.loss_fn(outputs, {k: v[rows] for k, v in targets.items()})
                    if not math.isfinite(float(loss.detach())):
                        raise TaskError(
                            "local training diverged: the loss became NaN or infinite; "
                            f"lower the learning_rate (now {config.learning_rate})"
                        )
                    with warnings.catch_warnings():
                        # Opacus's backward hooks need only the outputs' gradients; torch
                        # warns that the inputs (the features) need none. Harmless.
                        warnings.filterwarnings("ignore", _NO_INPUT_GRAD, UserWarning)
                        loss.backward()  # type: ignore[no-untyped-call]
                    per_example = _dpsgd.per_example_gradients(weights, int(batch.size))
                    factors, _ = _dpsgd.clip_factors(per_example, dp.max_grad_norm)
                    summed = _dpsgd.clipped_sum(per_example, factors)
                else:  # an empty Poisson batch: a noise-only step
                    summed = [torch.zeros_like(w) for w in weights]
                with torch.no_grad():
                    for weight, grad in zip(weights, _dpsgd.noisy_mean(summed, dp), strict=True):
                        weight.grad = grad
                correct_and_step()
        finally:
            gsm.cleanup()

    def evaluate(self, parameters: ParameterSet, data: Dataset, ctx: TrainContext) -> EvalResult:
        """``metrics_fn(module, data)`` for a module holding ``parameters`` (in eval mode)."""
        with torch.random.fork_rng(devices=[]):
            module = self._build(_seed(ctx.rng))
            self._load(module, parameters)
            module.eval()
            with torch.no_grad():
                if self.metrics_fn is not None:
                    metrics = dict(self.metrics_fn(module, data))
                else:
                    X = self._tensor(data.features, _input_dtype(module))
                    targets = {k: self._tensor(v, None) for k, v in data.targets.items()}
                    metrics = {"loss": float(self.loss_fn(module(X), targets))}
        return EvalResult(num_examples=len(data), metrics=metrics)

    def _tensor(self, array: Array, dtype: torch.dtype | None) -> torch.Tensor:
        tensor = torch.from_numpy(np.array(array, copy=True))  # a writable copy for torch
        return tensor.to(device=self.device, dtype=dtype or tensor.dtype)


def _dp_metrics(dp: DPPlan) -> dict[str, float]:
    """What a DP-SGD call did, for the node's records (the node accounts from the config)."""
    return {
        "dp_steps": float(len(dp.batches)),
        "dp_sampling_rate": dp.sampling_rate,
        "dp_noise_multiplier": dp.noise_multiplier,
        "dp_max_grad_norm": dp.max_grad_norm,
        "dp_secure": 1.0 if dp.secure else 0.0,
    }


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**63 - 1))


def _input_dtype(module: torch.nn.Module) -> torch.dtype:
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _export(module: torch.nn.Module) -> ParameterSet:
    arrays: dict[str, Array] = {}
    for name, tensor in module.state_dict().items():
        array = tensor.detach().cpu().numpy()
        arrays[name] = array.astype(np.float32 if tensor.is_floating_point() else array.dtype)
    return ParameterSet(arrays)
