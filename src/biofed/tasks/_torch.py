"""The PyTorch task adapter (the only module of biofed.tasks that imports torch)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "TorchTask needs PyTorch; install it with: pip install 'biofed[torch]'"
    ) from exc

from biofed.core import Array, ParameterSet, ParameterSpec, TaskError
from biofed.data import Dataset
from biofed.tasks._api import EvalResult, TrainContext, TrainResult
from biofed.tasks._local import finish_local_training, plan_local_training

#: ``loss_fn(outputs, targets)``: a scalar loss from the model's outputs and the batch's
#: targets (the dataset's target arrays as tensors, indexed like the features).
LossFn = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]
#: ``metrics_fn(module, data)``: evaluation metrics of a module holding the parameters.
MetricsFn = Callable[[torch.nn.Module, Dataset], Mapping[str, float]]

_ADAM_EPS = 1e-8


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
    """

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
        return f"TorchTask(name={self.name!r}, device={str(self.device)!r})"

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

        Raises
        ------
        ParameterMismatch
            If ``parameters`` do not fit the module.
        TaskError
            If training diverges.
        """
        plan = plan_local_training(parameters, len(data), ctx)
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
            batches = torch.from_numpy(plan.batches).to(self.device)
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for rows in batches:
                optimizer.zero_grad(set_to_none=False)
                outputs = module(X[rows])
                loss = self.loss_fn(outputs, {k: v[rows] for k, v in targets.items()})
                loss.backward()  # type: ignore[no-untyped-call]
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(weights, config.max_grad_norm)
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
                total += loss.detach()
            mean_loss = float(total) / len(plan.batches)
            new = _export(module)
        if not (math.isfinite(mean_loss) and new.all_finite()):
            raise TaskError(
                "local training diverged: the loss or parameters became NaN or infinite; "
                f"lower the learning_rate (now {config.learning_rate})"
            )
        extras = finish_local_training(plan, parameters, new, ctx)
        return TrainResult(
            parameters=new,
            num_examples=len(data),
            metrics={"train_loss": mean_loss},
            extras=extras,
        )

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
