"""The numpy task adapter: a model with an analytic gradient becomes a federated Task."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from biofed.core import (
    Array,
    DataError,
    ParameterSet,
    ParameterSpec,
    TaskError,
)
from biofed.core.checks import check_choice, check_int
from biofed.data import Dataset
from biofed.tasks._api import EvalResult, LocalTrainingConfig, TrainContext, TrainResult
from biofed.tasks._local import finish_local_training, plan_local_training

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_LINEAR_INITS = ("zeros", "uniform")


@runtime_checkable
class GradientModel(Protocol):
    """A model written in numpy with an analytic gradient.

    Parameters arrive as a mapping of name to float64 array (read them, never write them);
    features as an ``(n, p)`` float64 matrix; targets as the dataset's ``target_keys``
    arrays, converted to float64.

    ``target_keys`` names the dataset targets the model needs (``("event", "time")``,
    ``("label",)``); a class attribute is enough.
    """

    @property
    def target_keys(self) -> tuple[str, ...]:
        """The dataset targets the model needs."""
        ...

    def init_parameters(self, rng: np.random.Generator) -> ParameterSet:
        """Initial parameters (float32); their names and shapes are the model's."""
        ...

    def loss_and_grad(
        self, params: Mapping[str, Array], X: Array, targets: Mapping[str, Array]
    ) -> tuple[float, Mapping[str, Array]]:
        """The mini-batch loss and its gradient for each parameter (same shapes)."""
        ...

    def predict(self, params: Mapping[str, Array], X: Array) -> Array:
        """The model's ``(n,)`` output for each row of ``X``."""
        ...

    def metrics(self, params: Mapping[str, Array], data: Dataset) -> dict[str, float]:
        """Evaluation metrics of ``params`` on ``data``."""
        ...


class _Flat:
    """All parameters in one float64 vector, with a view of it per parameter name."""

    def __init__(self, params: ParameterSet) -> None:
        self.names = list(params.keys())
        self.shapes = [a.shape for a in params.values()]
        self.vector = np.concatenate([a.ravel() for a in params.values()]).astype(np.float64)
        self.views: dict[str, Array] = {}
        start = 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = math.prod(shape)
            view = self.vector[start : start + size].reshape(shape)
            view.flags.writeable = False  # the model reads them; only the optimiser writes
            self.views[name] = view
            start += size

    def flatten(self, arrays: Mapping[str, Array]) -> Array:
        flat = np.concatenate([arrays[name].ravel() for name in self.names])
        if flat.shape != self.vector.shape:
            raise TaskError(
                "the model's gradients do not match its parameters: expected shapes "
                f"{dict(zip(self.names, self.shapes, strict=True))}, got "
                f"{ {name: np.shape(arrays[name]) for name in self.names} }"
            )
        return flat


def _targets(model: GradientModel, data: Dataset) -> dict[str, Array]:
    out: dict[str, Array] = {}
    for key in model.target_keys:
        array = np.asarray(data.target(key), dtype=np.float64)
        if not np.isfinite(array).all():
            raise DataError(f"dataset {data.name!r}: target {key!r} has missing or infinite values")
        out[key] = array
    return out


def _nonfinite(what: str, config: LocalTrainingConfig) -> TaskError:
    return TaskError(
        f"local training diverged: the {what} became NaN or infinite; lower the learning_rate "
        f"(now {config.learning_rate}) or standardise the features"
    )


class NumpyTask:
    """A :class:`~biofed.tasks.Task` running local SGD or Adam on a :class:`GradientModel`.

    Each ``train`` call runs ``local_steps`` mini-batch steps with the optimiser of the
    instruction's :class:`~biofed.tasks.LocalTrainingConfig` (Adam's moments restart every
    call), adding the FedProx and SCAFFOLD gradient corrections when asked. Arithmetic is in
    float64; returned parameters have the dtypes of the model's.

    Parameters
    ----------
    model:
        The model.
    name:
        Task name (shown in results).
    primary_metric:
        The metric tables and progress bars show.
    """

    #: How the loss decomposes over records (this adapter runs no DP-SGD; see
    #: :data:`~biofed.tasks.RECORD_COUPLINGS`).
    dp_record_coupling: str = "none"

    def __init__(self, model: GradientModel, *, name: str, primary_metric: str) -> None:
        self.model = model
        self.name = name
        self.primary_metric = primary_metric
        self._spec = model.init_parameters(np.random.default_rng(0)).spec

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r})"

    def init_parameters(self, rng: np.random.Generator) -> ParameterSet:
        """The model's initial parameters."""
        return self.model.init_parameters(rng)

    def train(self, parameters: ParameterSet, data: Dataset, ctx: TrainContext) -> TrainResult:
        """Run the local steps from ``parameters`` on ``data``.

        Returns the new parameters, ``num_examples = len(data)``, the mean mini-batch loss
        over the steps as ``"train_loss"`` (without the FedProx term) and, under SCAFFOLD,
        the control-variate delta in ``extras``.

        Raises
        ------
        ParameterMismatch
            If ``parameters`` do not fit the model.
        TaskError
            If training diverges.
        """
        self._spec.validate(parameters, what="global parameters")
        targets = _targets(self.model, data)
        plan = plan_local_training(parameters, len(data), ctx)
        config = plan.config
        X = np.asarray(data.features, dtype=np.float64)
        flat = _Flat(parameters)
        w, params = flat.vector, flat.views
        offset = None if plan.offset is None else flat.flatten(plan.offset)
        mu, lr = plan.prox_mu, config.learning_rate
        adam = config.optimizer == "adam"
        velocity = np.zeros_like(w)
        second = np.zeros_like(w) if adam else velocity
        beta1, beta2 = _ADAM_BETAS
        total = 0.0
        for step, rows in enumerate(plan.batches, start=1):
            loss, grads = self.model.loss_and_grad(
                params, X[rows], {k: v[rows] for k, v in targets.items()}
            )
            if not math.isfinite(loss):
                raise _nonfinite("loss", config)
            total += loss
            g = flat.flatten(grads)
            if config.max_grad_norm:
                norm = float(np.linalg.norm(g))
                if norm > config.max_grad_norm:
                    g *= config.max_grad_norm / norm
            if offset is not None:
                g += offset
                if mu:
                    g += mu * w
            if adam:
                velocity *= beta1
                velocity += (1.0 - beta1) * g
                second *= beta2
                second += (1.0 - beta2) * (g * g)
                denom = np.sqrt(second / (1.0 - beta2**step)) + _ADAM_EPS
                w -= (lr / (1.0 - beta1**step)) * velocity / denom
            elif config.momentum:
                velocity *= config.momentum
                velocity += g
                w -= lr * velocity
            else:
                w -= lr * g
        with np.errstate(over="ignore"):  # an overflow to ±Inf is reported just below
            new = ParameterSet(
                {name: params[name].astype(parameters[name].dtype) for name in flat.names}
            )
        if not new.all_finite():
            raise _nonfinite("parameters", config)
        extras = finish_local_training(plan, parameters, new, ctx)
        return TrainResult(
            parameters=new,
            num_examples=len(data),
            metrics={"train_loss": total / len(plan.batches)},
            extras=extras,
        )

    def evaluate(self, parameters: ParameterSet, data: Dataset, ctx: TrainContext) -> EvalResult:
        """The model's metrics of ``parameters`` on ``data``."""
        self._spec.validate(parameters, what="parameters")
        params = {k: v.astype(np.float64) for k, v in parameters.items()}
        return EvalResult(num_examples=len(data), metrics=self.model.metrics(params, data))


# Helpers for the built-in linear models ----------------------------------------------
def linear_init(num_features: int, rng: np.random.Generator, init: str) -> ParameterSet:
    """``{"weight": (1, p), "bias": (1,)}`` float32, zero or like ``torch.nn.Linear``'s default.

    ``"uniform"`` draws both from U(−1/√p, 1/√p), the bound of torch's default init.
    """
    if init == "zeros":
        weight = np.zeros((1, num_features), dtype=np.float32)
        bias = np.zeros(1, dtype=np.float32)
    else:
        bound = 1.0 / np.sqrt(num_features)
        weight = rng.uniform(-bound, bound, size=(1, num_features)).astype(np.float32)
        bias = rng.uniform(-bound, bound, size=1).astype(np.float32)
    return ParameterSet({"weight": weight, "bias": bias})


def linear_spec(num_features: int, init: str = "zeros") -> ParameterSpec:
    """The layout :func:`linear_init` gives, without allocating it: ``weight`` ``(1, p)`` and
    ``bias`` ``(1,)``, float32."""
    check_linear_args(num_features, init)
    return ParameterSpec(entries=(("weight", (1, num_features), "<f4"), ("bias", (1,), "<f4")))


def check_linear_args(num_features: int, init: str) -> None:
    """Validate the arguments shared by the linear models."""
    check_int(num_features, "num_features", minimum=1)
    check_choice(init, "init", _LINEAR_INITS)
