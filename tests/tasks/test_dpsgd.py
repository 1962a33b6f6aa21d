"""Sample-level DP-SGD in the PyTorch adapter: config, Poisson sampling, clipping, noise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from biofed.core import ConfigurationError, DataError, ParameterSet, TaskError
from biofed.data import Dataset
from biofed.privacy import GaussianNoise
from biofed.tasks import (
    SCAFFOLD_CLIENT_CONTROL,
    SCAFFOLD_CONTROL_DELTA,
    SCAFFOLD_SERVER_CONTROL,
    CoxPHTask,
    LocalTrainingConfig,
    LogisticRegressionTask,
    TrainContext,
)
from biofed.tasks._local import DPPlan, poisson_batches

if TYPE_CHECKING:
    import torch

    from biofed.tasks import TorchTask
else:
    torch = pytest.importorskip("torch")
    pytest.importorskip("opacus")

pytestmark = pytest.mark.torch

P = 5
DP = {"dp_noise_multiplier": 1.0, "dp_max_grad_norm": 0.5}


def _data(n: int = 80, seed: int = 0, p: int = P) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)).astype(np.float32)
    label = (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    return Dataset(
        name="toy",
        features=X,
        feature_names=tuple(f"x{i}" for i in range(p)),
        targets={"label": label},
    )


def _logreg() -> TorchTask:
    from biofed.tasks import LogisticRegressionTorchTask

    return LogisticRegressionTorchTask(P, init="uniform")


def _ctx(config: Mapping[str, Any], seed: int = 0, **kwargs: Any) -> TrainContext:
    return TrainContext(config=config, rng=np.random.default_rng(seed), **kwargs)


def _start(task: TorchTask) -> ParameterSet:
    return task.init_parameters(np.random.default_rng(3))


# -- the config --------------------------------------------------------------------------------
def test_config_parses_and_checks_the_dp_keys() -> None:
    config = LocalTrainingConfig.from_config(
        {"dp_noise_multiplier": 2, "dp_max_grad_norm": 1, "dp_seeded": True, "batch_size": 10}
    )
    assert config.dp_sgd
    assert (config.dp_noise_multiplier, config.dp_max_grad_norm) == (2.0, 1.0)
    assert config.dp_seeded
    assert config.dp_sampling_rate(40) == 0.25
    assert config.dp_sampling_rate(4) == 1.0  # batch_size >= N: every record every step
    assert not LocalTrainingConfig().dp_sgd
    with pytest.raises(ConfigurationError, match="dp_max_grad_norm > 0"):
        LocalTrainingConfig(dp_noise_multiplier=1.0)
    with pytest.raises(ConfigurationError, match="remove max_grad_norm"):
        LocalTrainingConfig(dp_noise_multiplier=1.0, dp_max_grad_norm=1.0, max_grad_norm=1.0)
    with pytest.raises(ConfigurationError, match="without noise is not differential privacy"):
        LocalTrainingConfig(dp_max_grad_norm=1.0)
    with pytest.raises(ConfigurationError, match="dp_noise_multiplier must be"):
        LocalTrainingConfig(dp_noise_multiplier=-1.0, dp_max_grad_norm=1.0)
    with pytest.raises(ConfigurationError, match="dp_noise_multiplier must be"):
        LocalTrainingConfig(dp_noise_multiplier=float("inf"), dp_max_grad_norm=1.0)
    with pytest.raises(ConfigurationError, match="dp_max_grad_norm must be"):
        LocalTrainingConfig(dp_noise_multiplier=1.0, dp_max_grad_norm=float("nan"))
    with pytest.raises(ConfigurationError, match="'dp_seeded' must be bool"):
        LocalTrainingConfig.from_config({"dp_seeded": 1})
    with pytest.raises(ConfigurationError, match="'dp_noise_multiplier' must be float"):
        LocalTrainingConfig.from_config({"dp_noise_multiplier": True})


@pytest.mark.parametrize("task", [CoxPHTask(P), LogisticRegressionTask(P)])
def test_numpy_tasks_refuse_dp(task: Any) -> None:
    data = _data()
    if task.name == "cox_ph":
        data = Dataset(
            name="surv",
            features=data.features,
            feature_names=data.feature_names,
            targets={"event": np.ones(len(data)), "time": np.arange(len(data), dtype=float)},
        )
    params = task.init_parameters(np.random.default_rng(0))
    with pytest.raises(ConfigurationError, match="needs a TorchTask"):
        task.train(params, data, _ctx(DP))


def test_dp_with_batch_clipping_is_refused_by_the_torch_task() -> None:
    task = _logreg()
    with pytest.raises(ConfigurationError, match="max_grad_norm"):
        task.train(_start(task), _data(), _ctx({**DP, "max_grad_norm": 1.0}))


# -- Poisson sampling --------------------------------------------------------------------------
@pytest.mark.parametrize("seeded", [False, True])
def test_poisson_batch_sizes_have_mean_qn(seeded: bool) -> None:
    n, q, steps = 500, 0.04, 2000
    rng = np.random.default_rng(1) if seeded else None
    batches = poisson_batches(n, q, steps, rng)
    sizes = np.array([b.size for b in batches])
    assert len(batches) == steps
    # Binomial(n, q): mean qn = 20, std of the mean over 2000 steps ≈ 0.1.
    assert sizes.mean() == pytest.approx(q * n, abs=0.5)
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.15)
    for b in batches[:50]:
        assert b.dtype == np.int64
        assert np.all(np.diff(b) > 0)
        assert b.size == 0 or (b[0] >= 0 and b[-1] < n)
    # each record is sampled at rate q, independently of its position
    counts = np.bincount(np.concatenate(batches), minlength=n)
    assert counts.mean() / steps == pytest.approx(q, rel=0.025)


def test_poisson_sampling_edges() -> None:
    assert all(np.array_equal(b, np.arange(7)) for b in poisson_batches(7, 1.0, 3, None))
    tiny = poisson_batches(10, 1e-9, 20, None)
    assert all(b.size == 0 for b in tiny)  # empty batches are batches too
    a = poisson_batches(50, 0.3, 5, np.random.default_rng(2))
    b = poisson_batches(50, 0.3, 5, np.random.default_rng(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(DataError, match="empty"):
        poisson_batches(0, 0.5, 1, None)
    with pytest.raises(ConfigurationError, match="sampling_rate"):
        poisson_batches(5, 0.0, 1, None)
    with pytest.raises(ConfigurationError, match="num_steps"):
        poisson_batches(5, 0.5, 0, None)


# -- clipping and noise ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clipped_per_example_norms_are_at_most_c(dtype: torch.dtype) -> None:
    from biofed.tasks._dpsgd import clip_factors, clipped_sum

    gen = torch.Generator().manual_seed(0)
    batch, C = 64, 0.7
    scales = torch.logspace(-3, 3, batch, dtype=torch.float64)  # norms from ≪ C to ≫ C
    grads = [
        (torch.randn(batch, 3, 4, generator=gen, dtype=torch.float64) * scales[:, None, None]).to(
            dtype
        ),
        (torch.randn(batch, 7, generator=gen, dtype=torch.float64) * scales[:, None]).to(dtype),
    ]
    factors, norms = clip_factors(grads, C)
    flat = torch.cat([g.reshape(batch, -1).double() for g in grads], dim=1)
    np.testing.assert_allclose(norms.numpy(), flat.norm(dim=1).numpy(), rtol=1e-12)
    clipped = [g * factors.to(dtype).reshape(-1, *([1] * (g.dim() - 1))) for g in grads]
    clipped_norms = torch.cat([g.reshape(batch, -1).double() for g in clipped], dim=1).norm(dim=1)
    assert float(clipped_norms.max()) <= C  # the bound holds on the stored values
    small = norms < C * 0.999
    assert bool(small.any())
    assert bool((~small).any())
    assert torch.all(factors[small] == 1.0)  # small gradients are left alone
    np.testing.assert_allclose(clipped_norms[~small].numpy(), C, rtol=1e-5)
    summed = clipped_sum(grads, factors)
    for total, g in zip(summed, clipped, strict=True):
        torch.testing.assert_close(total, g.sum(dim=0))
    with pytest.raises(TaskError, match="NaN or infinite"):
        clip_factors([torch.tensor([[float("nan")]])], C)


@pytest.mark.parametrize("secure", [True, False])
def test_noise_has_std_z_c_over_the_expected_batch(secure: bool) -> None:
    from biofed.tasks._dpsgd import noisy_mean

    z, C, expected = 1.3, 0.8, 25.0
    noise = GaussianNoise(z * C) if secure else GaussianNoise.seeded(z * C, 5)
    plan = DPPlan(
        noise_multiplier=z,
        max_grad_norm=C,
        sampling_rate=0.1,
        expected_batch_size=expected,
        batches=(),
        noise=noise,
    )
    zeros = [torch.zeros(300, 200), torch.zeros(50)]
    out = noisy_mean(zeros, plan)
    assert [o.shape for o in out] == [z.shape for z in zeros]
    assert all(o.dtype == torch.float32 for o in out)
    values = torch.cat([o.reshape(-1) for o in out]).double() * expected
    assert float(values.mean()) == pytest.approx(0.0, abs=0.03)  # 7 standard errors
    assert float(values.std()) == pytest.approx(z * C, rel=0.015)  # 60 050 values: ±0.3 %


def test_end_to_end_noise_only_step_has_std_z_c() -> None:
    """A loss with zero gradient: one SGD step of size 1 moves w by -noise / (qN)."""
    from biofed.tasks import TorchTask

    p, n, b = 4000, 100, 10

    def zero_loss(outputs: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return (outputs * 0.0).mean()

    task = TorchTask(lambda: torch.nn.Linear(p, 1, bias=False), zero_loss, name="zero")
    params = task.init_parameters(np.random.default_rng(0))
    data = _data(n=n, p=p)
    z, C = 2.0, 0.3
    config = {
        "local_steps": 1,
        "batch_size": b,
        "learning_rate": 1.0,
        "dp_noise_multiplier": z,
        "dp_max_grad_norm": C,
    }
    result = task.train(params, data, _ctx(config))
    step = (result.parameters["weight"] - params["weight"]).astype(np.float64) * b  # qN = b
    assert step.std() == pytest.approx(z * C, rel=0.05)  # 4000 values: ±1.1 % (1 sd)


def test_dp_sgd_step_is_the_clipped_per_example_sum() -> None:
    """q = 1 (every row) and negligible noise: one step equals the hand-computed clipped sum."""
    task = _logreg()
    params = _start(task)
    data = _data(n=12)
    C = 0.05  # below most per-example norms: clipping is active
    config = {
        "local_steps": 1,
        "batch_size": 12,
        "learning_rate": 1.0,
        "dp_noise_multiplier": 1e-9,
        "dp_max_grad_norm": C,
    }
    result = task.train(params, data, _ctx(config))
    module = torch.nn.Linear(P, 1)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})
    total = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
    X = torch.from_numpy(np.array(data.features))
    y = torch.from_numpy(np.array(data.target("label"))).float()
    clipped = 0
    for i in range(len(data)):
        module.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            module(X[i : i + 1])[:, 0], y[i : i + 1]
        )
        loss.backward()
        grads = {name: p.grad.clone() for name, p in module.named_parameters()}
        norm = float(torch.sqrt(sum((g * g).sum() for g in grads.values())))
        factor = min(1.0, C / norm)
        clipped += factor < 1
        for name in total:
            total[name] += factor * grads[name]
    assert clipped >= 6
    for name, value in total.items():
        expected = params[name] - value.numpy() / len(data)
        np.testing.assert_allclose(result.parameters[name], expected, rtol=1e-5, atol=1e-7)


# -- whole train calls -------------------------------------------------------------------------
def _dp_config(**extra: Any) -> dict[str, Any]:
    return {"local_steps": 15, "batch_size": 8, "learning_rate": 0.1, **DP, **extra}


def test_seeded_dp_is_reproducible_and_secure_dp_is_not_seeded_by_ctx_rng() -> None:
    task, data = _logreg(), _data()
    params = _start(task)
    seeded = _dp_config(dp_seeded=True)
    a = task.train(params, data, _ctx(seeded, seed=7))
    b = task.train(params, data, _ctx(seeded, seed=7))
    c = task.train(params, data, _ctx(seeded, seed=8))
    assert a.parameters == b.parameters
    assert a.parameters != c.parameters
    secure = _dp_config()
    d = task.train(params, data, _ctx(secure, seed=7))
    e = task.train(params, data, _ctx(secure, seed=7))
    assert d.parameters != e.parameters
    assert d.parameters != a.parameters
    assert a.metrics["dp_secure"] == 0.0
    assert d.metrics["dp_secure"] == 1.0


def test_dp_metrics_and_no_train_loss() -> None:
    task, data = _logreg(), _data(n=80)
    result = task.train(_start(task), data, _ctx(_dp_config(local_steps=9)))
    assert dict(result.metrics) == {
        "dp_steps": 9.0,
        "dp_sampling_rate": 0.1,
        "dp_noise_multiplier": 1.0,
        "dp_max_grad_norm": 0.5,
        "dp_secure": 1.0,
    }
    assert result.num_examples == 80
    plain = task.train(_start(task), data, _ctx({"local_steps": 3}))
    assert set(plain.metrics) == {"train_loss"}


def test_empty_poisson_batches_are_noise_only_steps() -> None:
    task, data = _logreg(), _data(n=200)
    params = _start(task)
    config = _dp_config(batch_size=1, local_steps=5, dp_seeded=True)  # q = 0.005: mostly empty
    result = task.train(params, data, _ctx(config))
    assert result.parameters.all_finite()
    assert result.parameters != params  # the noise moved them


@pytest.mark.parametrize(
    "extra",
    [
        {"proximal_mu": 0.5},
        {"optimizer": "adam", "learning_rate": 0.01},
        {"momentum": 0.9},
    ],
)
def test_dp_with_fedprox_adam_and_momentum(extra: dict[str, Any]) -> None:
    task, data = _logreg(), _data()
    result = task.train(_start(task), data, _ctx(_dp_config(**extra)))
    assert result.parameters.all_finite()
    assert result.metrics["dp_steps"] == 15


def test_dp_with_scaffold_over_two_rounds() -> None:
    task, data = _logreg(), _data()
    params = _start(task)
    c = params.map(lambda a: np.full_like(a, 0.01))
    state: dict[str, ParameterSet] = {}
    for seed in (1, 2):
        ctx = _ctx(
            _dp_config(proximal_mu=0.1, dp_seeded=True),
            seed=seed,
            extras={SCAFFOLD_SERVER_CONTROL: c},
            state=state,
        )
        result = task.train(params, data, ctx)
        assert result.parameters.all_finite()
        delta = result.extras[SCAFFOLD_CONTROL_DELTA]
        assert delta.spec == params.spec
        assert delta.all_finite()
        assert state[SCAFFOLD_CLIENT_CONTROL].all_finite()


def test_dp_refuses_models_that_mix_examples() -> None:
    from biofed.tasks import TorchTask

    def loss(outputs: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return outputs.mean()

    task = TorchTask(
        lambda: torch.nn.Sequential(torch.nn.Linear(P, 3), torch.nn.BatchNorm1d(3)),
        loss,
        name="bn",
    )
    with pytest.raises(TaskError, match="per-example gradients"):
        task.train(_start(task), _data(), _ctx(_dp_config()))
    # plain training still works with the same task
    assert task.train(_start(task), _data(), _ctx({"local_steps": 2})).parameters.all_finite()


def test_dp_divergence_is_a_task_error() -> None:
    task, data = _logreg(), _data()
    config = _dp_config(learning_rate=1e30, dp_noise_multiplier=1e10, dp_seeded=True)
    with pytest.raises(TaskError, match="lower the learning_rate"):
        task.train(_start(task), data, _ctx(config))


def test_a_shared_module_can_train_twice_under_dp() -> None:
    """Opacus's hooks are removed after each call, so a model_fn returning one module works."""
    from biofed.tasks import TorchTask
    from biofed.tasks._logreg_torch import bce_loss

    shared = torch.nn.Linear(P, 1)
    task = TorchTask(lambda: shared, bce_loss, name="shared")
    params = _start(task)
    for _ in range(2):
        assert task.train(params, _data(), _ctx(_dp_config())).parameters.all_finite()
    assert not hasattr(shared.weight, "grad_sample")
