"""Gradient inversion: reconstructing a site's training records from its model update.

Threat model
------------
An **honest-but-curious coordinator** (or anyone who reads a site's plain reply): it follows
the protocol, sees one site's update ``Δ = x_site − x`` in the clear, and knows the model
architecture, the global parameters ``x`` it sent, the learning rate and the batch size of
the local training (all of which are in the job file it wrote). With one local step of plain
SGD the update is ``Δ = −lr · ∇L(x; B)``, the mean gradient of the loss over the batch ``B``,
so ``g = −Δ / lr`` is that gradient exactly; the attacks below reconstruct ``B`` from ``g``.

Attacks
-------
- **Closed form (iDLG; Zhao, Mopuri and Bilen 2020, "iDLG: Improved Deep Leakage from
  Gradients").** For a linear first layer ``W x + b`` and one record, ``∂L/∂W = δ xᵀ`` and
  ``∂L/∂b = δ``, so every row with ``δⱼ ≠ 0`` gives ``x = (∂L/∂W)ⱼ / (∂L/∂b)ⱼ`` exactly. The
  label follows from the sign of the output bias's gradient: with binary cross-entropy on a
  logit, ``∂L/∂b_out = σ(z) − y``, negative iff ``y = 1``. For a ReLU layer with a batch, a
  hidden unit that only one record of the batch activates still gives that record exactly:
  the ratios of all units (merged where equal) are the candidates: every choice of a batch
  of them is scored by the cosine similarity of its gradient to the observed one (a unit's
  label follows from the sign of its bias gradient over its output weight), and the best
  choices seed the optimisation.
- **Optimisation (DLG; Zhu, Liu and Han 2019, "Deep Leakage from Gradients", with the
  cosine loss of Geiping et al. 2020, "Inverting Gradients — How easy is it to break
  privacy in federated learning?").** Dummy records and soft labels are optimised with Adam
  so that the gradient they induce points the same way as ``g`` (one minus the cosine
  similarity over all parameters). Tabular records need no total-variation prior (it is an
  image prior), so none is used.

The victim's update is produced by biofed's own :class:`~biofed.tasks.TorchTask` training
(:func:`victim_update`: one local step, SGD, optionally sample-level DP-SGD through the
task's real per-example clipping and Gaussian noise), so the attack hits what a node sends.

Recovery is scored by :func:`recovery`: the fraction of a record's features reconstructed
within ``tol`` of the truth, in units of each feature's standard deviation; a batch's
reconstructions are matched to its true records by the Hungarian assignment.

Why own code: no maintained library implements these attacks for tabular models on biofed's
parameter layout (the papers' reference code targets images and is not packaged), and each
attack is a few dozen lines of torch.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from biofed.core import Array, ConfigurationError, ParameterSet
from biofed.data import Dataset
from biofed.tasks import LogisticRegressionTorchTask, TorchTask, TrainContext

#: The victim models :func:`invert_update` knows.
VictimModel = Literal["logistic", "mlp"]
VICTIM_MODELS: tuple[str, ...] = ("logistic", "mlp")

#: A closed-form reconstruction whose gradient's cosine similarity is within this of 1
#: explains the update: no optimisation is run.
_EXACT = 1e-6
#: Candidates closer than this (relative) are one record: updates travel as float32, so
#: the same record's ratios from different units differ by float32 rounding.
_MERGE = 2e-2
#: At most this many candidate sets are scored in closed form.
_MAX_CHOICES = 256

#: The default hidden width of the victim MLP.
MLP_HIDDEN = 16


def _bce(outputs: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    logits = outputs.reshape(-1)
    labels = targets["label"].to(logits.dtype)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)


class VictimMLPTask(TorchTask):
    """The victim MLP, ``Linear(d, h) → ReLU → Linear(h, 1)`` with binary cross-entropy.

    biofed ships no MLP classification task (its built-in tasks are linear or survival
    models), but inversion attacks are known to be easier on wider models with a nonlinear
    layer; this small MLP, trained by biofed's own :class:`~biofed.tasks.TorchTask` (plain
    SGD or DP-SGD), is the second victim. Parameters: ``"0.weight"`` ``(h, d)``, ``"0.bias"``
    ``(h,)``, ``"2.weight"`` ``(1, h)``, ``"2.bias"`` ``(1,)``.
    """

    #: Each record's loss term depends on that record only.
    dp_record_coupling: str = "independent"

    def __init__(self, num_features: int, hidden: int = MLP_HIDDEN) -> None:
        self.num_features = num_features
        self.hidden = hidden
        super().__init__(
            lambda: _mlp(num_features, hidden), _bce, name="victim_mlp", primary_metric="loss"
        )


def _mlp(d: int, h: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Linear(h, 1))


def victim_task(model: str, num_features: int, *, hidden: int = MLP_HIDDEN) -> TorchTask:
    """The biofed task that trains the victim: ``logistic_regression_torch`` or the MLP."""
    if model == "logistic":
        return LogisticRegressionTorchTask(num_features)
    if model == "mlp":
        return VictimMLPTask(num_features, hidden)
    raise ConfigurationError(f"model must be one of {VICTIM_MODELS}, got {model!r}")


def victim_update(
    task: TorchTask,
    parameters: ParameterSet,
    features: Array,
    labels: Array,
    *,
    learning_rate: float,
    noise_multiplier: float = 0.0,
    max_grad_norm: float = 0.0,
    seed: int = 0,
) -> ParameterSet:
    """The update ``Δ = x_site − x`` of one local SGD step on the batch ``(features, labels)``.

    Runs the task's real ``train`` (``local_steps = 1``, ``batch_size`` = the number of
    records, SGD at ``learning_rate``). With ``noise_multiplier`` z > 0 the step is biofed's
    DP-SGD step: each example's gradient clipped to ``max_grad_norm`` C, summed, plus
    N(0, (zC)²) noise, divided by the batch size. The batch is the whole ``features``: the
    site's Poisson-sampled batch, handed to the step directly (sampling rate 1 on it), so the
    attack is scored against exactly the records the step used; z is calibrated by the
    caller for the site's real sampling rate and step count (see :func:`dp_noise_for`). The
    noise is seeded (``dp_seeded``) for reproducible measurements; the attack never sees it.
    """
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.float64)
    data = Dataset(
        name="victim",
        features=x,
        feature_names=tuple(f"x{k}" for k in range(x.shape[1])),
        targets={"label": y},
    )
    config: dict[str, float | int | str | bool] = {
        "local_steps": 1,
        "batch_size": len(x),
        "learning_rate": float(learning_rate),
        "optimizer": "sgd",
    }
    if noise_multiplier > 0:
        config.update(
            dp_noise_multiplier=float(noise_multiplier),
            dp_max_grad_norm=float(max_grad_norm),
            dp_seeded=True,
        )
    result = task.train(
        parameters, data, TrainContext(config=config, rng=np.random.default_rng(seed))
    )
    return ParameterSet(
        {
            name: np.asarray(result.parameters[name], dtype=np.float64)
            - np.asarray(parameters[name], dtype=np.float64)
            for name in parameters
        }
    )


@functools.lru_cache(maxsize=32)
def dp_noise_for(
    target_epsilon: float,
    delta: float,
    *,
    site_records: int,
    batch_size: int,
    epochs: float,
) -> float:
    """The noise multiplier biofed's calibration gives for ``target_epsilon`` over training.

    Sampling rate ``q = batch_size / site_records``, steps ``⌈epochs / q⌉`` (PLD accountant).
    Cached: the calibration takes seconds.
    """
    from biofed.privacy import calibrate_noise

    q = min(1.0, batch_size / site_records)
    steps = max(1, math.ceil(epochs / q))
    return float(calibrate_noise(target_epsilon, delta, q, steps))


@dataclass(frozen=True, slots=True)
class Inversion:
    """What :func:`invert_update` reconstructed.

    Attributes
    ----------
    features:
        ``(b, d)`` reconstructed records.
    labels:
        ``(b,)`` inferred labels (0/1).
    method:
        ``"closed_form"`` or ``"optimisation"``.
    gradient_similarity:
        Cosine similarity between the reconstruction's gradient and the observed one.
    """

    features: Array
    labels: Array
    method: str
    gradient_similarity: float


def _names(model: str) -> tuple[str, str, str, str]:
    if model == "logistic":
        return ("weight", "bias", "weight", "bias")
    return ("0.weight", "0.bias", "2.weight", "2.bias")


def _check(model: str, parameters: ParameterSet, update: ParameterSet) -> None:
    if model not in VICTIM_MODELS:
        raise ConfigurationError(f"model must be one of {VICTIM_MODELS}, got {model!r}")
    for name in _names(model):
        if name not in parameters or name not in update:
            raise ConfigurationError(
                f"the {model} victim needs parameter {name!r} in the parameters and the update"
            )
        if np.shape(parameters[name]) != np.shape(update[name]):
            raise ConfigurationError(f"update {name!r} has another shape than the parameters")


def _forward(model: str, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2 = (params[n] for n in _names(model))
    if model == "logistic":
        return (x @ w1.T + b1).reshape(-1)
    hidden = torch.relu(x @ w1.T + b1)
    return (hidden @ w2.T + b2).reshape(-1)


def invert_update(
    model: str,
    parameters: ParameterSet,
    update: ParameterSet,
    *,
    learning_rate: float,
    batch_size: int,
    iterations: int = 400,
    restarts: int = 2,
    step_size: float = 0.1,
    seed: int = 0,
) -> Inversion:
    """Reconstruct the ``batch_size`` records behind one local SGD step's ``update``.

    Parameters
    ----------
    model:
        ``"logistic"`` (biofed's ``logistic_regression_torch`` layout: ``"weight"``
        ``(1, d)``, ``"bias"`` ``(1,)``) or ``"mlp"`` (:class:`VictimMLPTask`).
    parameters:
        The global parameters the site started from.
    update:
        What the coordinator saw: ``x_site − x`` (or, against secure aggregation, the sum of
        the sites' updates, attacked as if it were one site's).
    learning_rate, batch_size:
        The local step's, known to the coordinator from the job.
    iterations, restarts, step_size:
        Adam iterations per start, random restarts besides the closed-form start, Adam's lr.
    seed:
        Seeds the dummy records.

    Returns
    -------
    Inversion
        For a single record of the logistic model, the closed form alone (exact without
        noise); otherwise the best (highest gradient similarity) of the optimisation runs,
        one started from the closed-form candidates of the first layer.
    """
    _check(model, parameters, update)
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be ≥ 1, got {batch_size}")
    if not learning_rate > 0:
        raise ConfigurationError(f"learning_rate must be > 0, got {learning_rate}")
    dtype = torch.float64
    names = _names(model)
    used = list(dict.fromkeys(names))
    params = {n: torch.tensor(np.asarray(parameters[n]), dtype=dtype) for n in used}
    grads = {n: -torch.tensor(np.asarray(update[n]), dtype=dtype) / learning_rate for n in used}
    g_w1, g_b1 = grads[names[0]], grads[names[1]]
    d = g_w1.shape[1]
    # iDLG: the output bias's gradient is mean(σ(z) − y); negative means label 1.
    label_sign = float(grads[names[3]].sum())
    w_out = params[names[2]].reshape(-1) if model == "mlp" else torch.ones(1, dtype=dtype)
    candidates, cand_labels = _first_layer_candidates(g_w1, g_b1, w_out)
    if model == "logistic" and batch_size == 1:
        x_hat = candidates[:1] if len(candidates) else torch.zeros((1, d), dtype=dtype)
        labels = np.array([1.0 if label_sign < 0 else 0.0])
        sim = _similarity(model, params, grads, x_hat, torch.tensor(labels, dtype=dtype))
        return Inversion(x_hat.numpy(), labels, "closed_form", sim)

    gen = torch.Generator().manual_seed(seed)
    best: Inversion | None = None
    starts: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    if len(candidates):
        # every choice of batch_size distinct candidates (or the most repeated ones, when
        # there are too many choices), ranked by how well they explain the gradient
        ranked: list[tuple[float, torch.Tensor, torch.Tensor]] = []
        for chosen, chosen_labels in _choices(candidates, cand_labels, batch_size):
            sim = _similarity(model, params, grads, chosen, chosen_labels)
            ranked.append((sim, chosen, chosen_labels))
        ranked.sort(key=lambda r: -r[0])
        sim, chosen, chosen_labels = ranked[0]
        if len(chosen) == batch_size:  # the closed form alone may explain the gradient
            best = Inversion(chosen.numpy(), chosen_labels.numpy(), "closed_form", sim)
            if sim >= 1.0 - _EXACT:
                return best
        for _, chosen, chosen_labels in ranked[:2]:
            init = torch.randn((batch_size, d), generator=gen, dtype=dtype)
            init[: len(chosen)] = chosen
            y_init = torch.full((batch_size,), 0.5, dtype=dtype)
            y_init[: len(chosen)] = chosen_labels
            starts.append((init, y_init))
    starts += [
        (torch.randn((batch_size, d), generator=gen, dtype=dtype), None)
        for _ in range(max(0, restarts))
    ]
    for start, y_start in starts:
        x_opt, y_opt, sim = _optimise(
            model, params, grads, start, y_start, label_sign, iterations, step_size
        )
        if best is None or sim > best.gradient_similarity:
            best = Inversion(x_opt, y_opt, "optimisation", sim)
    assert best is not None
    return best


def _first_layer_candidates(
    g_w: torch.Tensor, g_b: torch.Tensor, w_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∂L/∂W)ⱼ / (∂L/∂b)ⱼ`` for every first-layer unit with a usable bias gradient, and
    the label each implies: a unit that one record alone activates has
    ``∂L/∂bⱼ ∝ (σ(z) − y)·w_outⱼ``, so ``y = 1`` when ``∂L/∂bⱼ / w_outⱼ < 0``."""
    scale = float(g_b.abs().max()) if g_b.numel() else 0.0
    if scale == 0.0:
        return g_w[:0], g_b[:0]
    keep = (g_b.abs() > 1e-9 * scale) & (w_out != 0)
    labels = ((g_b[keep] / w_out[keep]) < 0).to(g_b.dtype)
    return g_w[keep] / g_b[keep].unsqueeze(1), labels


def _choices(
    candidates: torch.Tensor, labels: torch.Tensor, k: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sets of up to ``k`` distinct candidates (near-duplicates merged: a unit that one
    record alone activates gives that record, and several such units give it again; a unit
    several records activate gives a mixture of them). Every ``k``-subset when there are at
    most ``_MAX_CHOICES``, else the ``k`` most repeated."""
    groups: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    for row, label in zip(candidates, labels, strict=True):
        for i, (count, rep, lab) in enumerate(groups):
            if float((row - rep).norm()) <= _MERGE * (1.0 + float(rep.norm())):
                groups[i] = (count + 1, rep, lab)
                break
        else:
            groups.append((1, row, label))
    groups.sort(key=lambda g: -g[0])
    size = min(k, len(groups))
    if math.comb(len(groups), size) <= _MAX_CHOICES:
        subsets = list(itertools.combinations(groups, size))
    else:
        subsets = [tuple(groups[:size])]
    return [
        (torch.stack([g[1] for g in subset]), torch.stack([g[2] for g in subset]))
        for subset in subsets
    ]


def _model_gradient(
    model: str,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    create_graph: bool,
) -> list[torch.Tensor]:
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    logits = _forward(model, leaves, x)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    return list(torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph))


def _cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    fa = torch.cat([t.reshape(-1) for t in a])
    fb = torch.cat([t.reshape(-1) for t in b])
    out: torch.Tensor = (fa @ fb) / (fa.norm() * fb.norm() + 1e-30)
    return out


def _similarity(
    model: str,
    params: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> float:
    g = _model_gradient(model, params, x, y, create_graph=False)
    return float(_cosine(g, [grads[n] for n in params]))


def _optimise(
    model: str,
    params: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor],
    start: torch.Tensor,
    y_start: torch.Tensor | None,
    label_sign: float,
    iterations: int,
    step_size: float,
) -> tuple[Array, Array, float]:
    """Inverting Gradients: Adam on dummy records and soft labels, cosine gradient loss."""
    target = [grads[n] for n in params]
    x = start.clone().requires_grad_(True)
    batch_size = start.shape[0]
    fixed_label = batch_size == 1
    y0 = 1.0 if label_sign < 0 else 0.0
    init = torch.zeros(batch_size, dtype=start.dtype)
    if y_start is not None:  # labels the closed form implied: a confident start
        init = 3.0 * (2.0 * y_start - 1.0) * (y_start != 0.5).to(start.dtype)
    y_logit = init.clone().requires_grad_(True)
    variables = [x] if fixed_label else [x, y_logit]
    opt = torch.optim.Adam(variables, lr=step_size)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[iterations // 2, (3 * iterations) // 4], gamma=0.2
    )

    def labels() -> torch.Tensor:
        if fixed_label:
            return torch.full((1,), y0, dtype=start.dtype)
        return torch.sigmoid(y_logit)

    for _ in range(iterations):
        opt.zero_grad()
        g = _model_gradient(model, params, x, labels(), create_graph=True)
        loss = 1.0 - _cosine(g, target)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
    with torch.no_grad():
        y_final = labels().round()
    sim = _similarity(model, params, grads, x.detach(), y_final)
    return x.detach().numpy(), y_final.numpy(), sim


@dataclass(frozen=True, slots=True)
class Recovery:
    """How much of the true records a reconstruction recovered.

    Attributes
    ----------
    per_record:
        ``(n_true,)``: the fraction of each true record's features within tolerance of the
        reconstruction matched to it (0 for records left unmatched).
    mean:
        The mean of ``per_record``.
    best:
        The largest entry of ``per_record``: how much of *any single* record leaked.
    """

    per_record: Array
    mean: float
    best: float


def recovery(
    true: Array, reconstructed: Array, *, tol: float = 0.1, scale: Array | float = 1.0
) -> Recovery:
    """The fraction of features recovered: ``|x̂ − x| ≤ tol · scale`` per feature.

    ``scale`` is each feature's standard deviation (1 for standardised records), so the
    default tolerance is a tenth of a standard deviation. Reconstructions are matched to true
    records by the Hungarian assignment (scipy's ``linear_sum_assignment``) maximising the
    number of recovered features (ties broken by the smaller squared distance); with fewer
    reconstructions than true records, the unmatched records count 0.
    """
    x = np.atleast_2d(np.asarray(true, dtype=np.float64))
    r = np.atleast_2d(np.asarray(reconstructed, dtype=np.float64))
    if x.shape[1] != r.shape[1]:
        raise ConfigurationError(
            f"reconstruction has {r.shape[1]} features, the records {x.shape[1]}"
        )
    if not tol > 0:
        raise ConfigurationError(f"tol must be > 0, got {tol}")
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64), (x.shape[1],))
    diff = np.abs(x[:, None, :] - r[None, :, :]) / s
    hits = np.where(np.isfinite(diff), diff <= tol, False).mean(axis=2)
    dist = np.nan_to_num((diff**2).mean(axis=2), nan=np.inf, posinf=1e300)
    cost = -hits + 1e-9 * np.minimum(dist, 1e6)
    rows, cols = linear_sum_assignment(cost)
    per_record = np.zeros(len(x))
    per_record[rows] = hits[rows, cols]
    return Recovery(per_record, float(per_record.mean()), float(per_record.max()))


#: The settings :func:`inversion_experiment` measures.
INVERSION_SETTINGS: tuple[str, ...] = ("none", "dp_sgd", "secure_sum")


@dataclass(frozen=True, slots=True)
class InversionResult:
    """Recovery over several attacked batches.

    Attributes
    ----------
    mean_recovery:
        The mean over trials and true records of the fraction of features recovered.
    best_record:
        The mean over trials of the best-recovered record's fraction (for the secure sum:
        the best over every site's records).
    chance:
        The same mean for a reconstruction that guesses every feature at 0 (the population
        mean of standardised records): what recovery means nothing beyond.
    noise_multiplier:
        The DP-SGD z (0 without DP).
    """

    model: str
    setting: str
    batch_size: int
    trials: int
    mean_recovery: float
    best_record: float
    chance: float
    noise_multiplier: float

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain values, for JSON."""
        return {
            "model": self.model,
            "setting": self.setting,
            "batch_size": self.batch_size,
            "trials": self.trials,
            "mean_recovery": self.mean_recovery,
            "best_record": self.best_record,
            "chance": self.chance,
            "noise_multiplier": self.noise_multiplier,
        }


def inversion_experiment(
    features: Array,
    labels: Array,
    *,
    model: str,
    setting: str,
    batch_size: int = 1,
    trials: int = 5,
    learning_rate: float = 0.1,
    sites: int = 6,
    epsilon: float = 8.0,
    delta: float = 1e-5,
    site_records: int = 95,
    epochs: float = 20.0,
    max_grad_norm: float = 1.0,
    tol: float = 0.1,
    seed: int = 0,
    iterations: int = 400,
) -> InversionResult:
    """Attack ``trials`` random batches of standardised records in one setting.

    ``setting``: ``"none"`` (one site's plain update); ``"dp_sgd"`` (its DP-SGD update, z
    calibrated for ``epsilon`` over ``epochs`` of a ``site_records``-record site at batch
    ``batch_size``, clipping ``max_grad_norm``); ``"secure_sum"`` (the sum of ``sites``
    sites' plain updates, each on its own batch, attacked as one site's update; recovery is
    scored against every site's records). The global model is the task's initial one
    (round 1: zeros for the logistic model, torch's default for the MLP).
    """
    if setting not in INVERSION_SETTINGS:
        raise ConfigurationError(f"setting must be one of {INVERSION_SETTINGS}, got {setting!r}")
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.float64)
    rng = np.random.default_rng(seed)
    task = victim_task(model, x.shape[1])
    params = task.init_parameters(np.random.default_rng(seed))
    z = 0.0
    if setting == "dp_sgd":
        z = dp_noise_for(
            epsilon, delta, site_records=site_records, batch_size=batch_size, epochs=epochs
        )
    groups = sites if setting == "secure_sum" else 1
    means: list[float] = []
    bests: list[float] = []
    chances: list[float] = []
    for trial in range(trials):
        rows = rng.choice(len(x), groups * batch_size, replace=False)
        xs, ys = x[rows], y[rows]
        updates = [
            victim_update(
                task,
                params,
                xs[k * batch_size : (k + 1) * batch_size],
                ys[k * batch_size : (k + 1) * batch_size],
                learning_rate=learning_rate,
                noise_multiplier=z,
                max_grad_norm=max_grad_norm if z else 0.0,
                seed=seed * 1000 + trial * groups + k,
            )
            for k in range(groups)
        ]
        seen = ParameterSet({n: sum(u[n] for u in updates) for n in params})
        inv = invert_update(
            model,
            params,
            seen,
            learning_rate=learning_rate,
            batch_size=batch_size,
            iterations=iterations,
            seed=seed + trial,
        )
        rec = recovery(xs, inv.features, tol=tol)
        means.append(float(rec.per_record.mean()))
        bests.append(rec.best)
        chances.append(recovery(xs, np.zeros((batch_size, x.shape[1])), tol=tol).mean)
    return InversionResult(
        model=model,
        setting=setting,
        batch_size=batch_size,
        trials=trials,
        mean_recovery=float(np.mean(means)),
        best_record=float(np.mean(bests)),
        chance=float(np.mean(chances)),
        noise_multiplier=z,
    )
