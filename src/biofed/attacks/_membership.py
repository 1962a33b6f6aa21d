"""Membership inference against a federation's final model.

Threat model
------------
Anyone who gets the released model (a researcher, or the public if it is published) and a
pool of candidate records, some of which trained it: is a given record a member? The
attacker can query the model's output (a logit) for any record and, for LiRA, can train
shadow models the same way the federation trained (same task, hyper-parameters and DP
settings) on records from the same population.

Attacks
-------
- **Loss threshold** (Yeom, Giacomelli, Fredrikson and Jha 2018, "Privacy Risk in Machine
  Learning: Analyzing the Connection to Overfitting"): members tend to have a lower loss,
  so the score is minus the record's cross-entropy under the model.
- **LiRA** (Carlini et al. 2022, "Membership Inference Attacks From First Principles"), the
  online variant: K shadow models, each trained on a random half of the pool; for each record
  the logit-scaled confidence ``φ = log(p / (1 − p))`` of its true label (for a binary logit
  z this is ``(2y − 1)·z``) is fitted by one Gaussian over the shadows that trained on it and
  one over those that did not; the score is the likelihood ratio of the target model's φ.
  With few shadows the per-example variances are replaced by the global ones, as the paper
  recommends below 64 shadows.

Training (:func:`train_federated`) is a federated run through
:func:`biofed.simulation.simulate`: FedAvg over 6 sites, each trained by biofed's own
:class:`~biofed.tasks.TorchTask` (plain SGD, or its sample-level DP-SGD with the noise
multiplier :func:`biofed.privacy.calibrate_noise` gives for the target ε over the run's
steps, as a node calibrates it). ``via_job=True`` trains ``logistic_regression_torch``
from a real :class:`~biofed.coordinator.JobSpec` with ``[privacy] mode = "sample"``
instead (every site node calibrates and accounts itself; slower). Target and shadows are
trained by the same function with the same settings, so the shadows are faithful. The
default victim is a small MLP that overfits small sites (see :class:`TrainingSettings`):
without memorisation there is nothing for an attack to measure at ε = ∞.

Why own code: the attacks are short formulas over model outputs; the libraries that
implement them (ML Privacy Meter, TensorFlow Privacy) pull in TensorFlow or their own
training loops and do not train through biofed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from biofed.attacks._empirical_eps import MembershipResult, score_attack
from biofed.core import Array, ConfigurationError, ParameterSet, Scalar
from biofed.data import Dataset, FederatedDataset, SiteData

#: The attacks :func:`membership_inference` runs.
MEMBERSHIP_ATTACKS: tuple[str, ...] = ("loss", "lira")


def logits(parameters: ParameterSet, features: Array) -> Array:
    """The victim's logits: logistic (``weight``/``bias``, biofed's layout) or the MLP's."""
    x = np.asarray(features, dtype=np.float64)

    def p(name: str) -> Array:
        return np.asarray(parameters[name], dtype=np.float64)

    if "weight" in parameters:
        return np.asarray(x @ p("weight").reshape(-1) + p("bias").reshape(-1)[0])
    if "0.weight" in parameters:
        hidden = np.maximum(x @ p("0.weight").T + p("0.bias"), 0.0)
        return np.asarray(hidden @ p("2.weight").reshape(-1) + p("2.bias").reshape(-1)[0])
    raise ConfigurationError("parameters are neither the logistic model's nor the victim MLP's")


def confidence_logit(z: Array, labels: Array) -> Array:
    """LiRA's ``φ = log(p/(1−p))`` with p the probability of the true label: ``(2y−1)·z``."""
    return (2.0 * np.asarray(labels, dtype=np.float64) - 1.0) * np.asarray(z, dtype=np.float64)


def loss_scores(z: Array, labels: Array) -> Array:
    """Minus each record's binary cross-entropy (higher = more likely a member)."""
    phi = confidence_logit(z, labels)
    return -np.logaddexp(0.0, -phi)  # −log σ(φ)


def lira_scores(
    target_phi: Array, shadow_phi: Array, shadow_in: Array, *, global_variance: bool = True
) -> Array:
    """Online LiRA: ``log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out)`` per record.

    Parameters
    ----------
    target_phi:
        ``(n,)`` the target model's φ for each record.
    shadow_phi:
        ``(K, n)`` each shadow's φ.
    shadow_in:
        ``(K, n)`` bool: the record was in that shadow's training set.
    global_variance:
        Use one variance per side over all records (advised for K < 64).

    Notes
    -----
    A record that no shadow had on one side gets that side's mean over all records.
    """
    phi = np.asarray(shadow_phi, dtype=np.float64)
    mask = np.asarray(shadow_in, dtype=bool)
    if phi.shape != mask.shape or phi.ndim != 2:
        raise ConfigurationError("shadow_phi and shadow_in must both be (K, n)")
    if not (mask.any() and (~mask).any()):
        raise ConfigurationError("the shadows must have trained on some records and not others")
    x = np.asarray(target_phi, dtype=np.float64)

    def fit(sel: Array) -> tuple[Array, Array]:
        count = sel.sum(axis=0)
        pooled = float(phi[sel].mean())  # for a record no shadow saw on this side
        mu = np.where(count > 0, np.where(sel, phi, 0.0).sum(axis=0) / np.maximum(count, 1), pooled)
        dev = np.where(sel, phi - mu, 0.0)
        if global_variance:
            var = np.full_like(mu, (dev**2).sum() / max(1, int(count.sum()) - 1))
        else:
            var = (dev**2).sum(axis=0) / np.maximum(count - 1, 1)
        return mu, np.sqrt(np.maximum(var, 1e-12))

    mu_in, sd_in = fit(mask)
    mu_out, sd_out = fit(~mask)
    return np.asarray(norm.logpdf(x, mu_in, sd_in) - norm.logpdf(x, mu_out, sd_out))


def membership_inference(
    target: ParameterSet,
    features: Array,
    labels: Array,
    is_member: Array,
    *,
    shadows: list[ParameterSet] | None = None,
    shadow_in: Array | None = None,
    delta: float = 1e-5,
    accountant_epsilon: float = math.inf,
) -> dict[str, MembershipResult]:
    """Run the loss attack (and LiRA, given shadows) on ``target`` over a pool of records.

    Parameters
    ----------
    target:
        The released logistic model.
    features, labels:
        The pool: ``(n, d)`` records and their 0/1 labels.
    is_member:
        ``(n,)`` bool: the record trained the target (the ground truth the attack is scored
        against; the attack itself never reads it).
    shadows, shadow_in:
        K shadow models and their ``(K, n)`` training masks over the pool (LiRA).
    delta:
        δ for the empirical ε bound.
    accountant_epsilon:
        The ε the accountant reported for the target's training, reported alongside.

    Returns
    -------
    dict[str, MembershipResult]
        ``"loss"`` and, with shadows, ``"lira"``.
    """
    member = np.asarray(is_member, dtype=bool)
    y = np.asarray(labels, dtype=np.float64)
    if member.shape != y.shape or not member.any() or member.all():
        raise ConfigurationError("is_member must mark some, not all, of the pool's records")
    z = logits(target, features)
    out: dict[str, MembershipResult] = {}
    s = loss_scores(z, y)
    out["loss"] = score_attack(
        "loss", s[member], s[~member], delta=delta, accountant_epsilon=accountant_epsilon
    )
    if shadows:
        if shadow_in is None:
            raise ConfigurationError("shadows need shadow_in, their training masks")
        phi = np.stack([confidence_logit(logits(p, features), y) for p in shadows])
        s = lira_scores(confidence_logit(z, y), phi, np.asarray(shadow_in, dtype=bool))
        out["lira"] = score_attack(
            "lira", s[member], s[~member], delta=delta, accountant_epsilon=accountant_epsilon
        )
    return out


@dataclass(frozen=True, slots=True)
class TrainingSettings:
    """How the federation (and every shadow) trains: chosen so the model can overfit.

    Small sites (a few dozen records split over ``sites``) trained for many epochs at a large
    step size; the default victim is the MLP (``model = "mlp"``, ``hidden`` units), which
    memorises its training records where the linear model on WDBC barely does (its loss
    attack's AUC stays near 0.5 even without DP, so membership would not be measurable).
    """

    model: str = "mlp"
    hidden: int = 64
    sites: int = 6
    rounds: int = 20
    local_steps: int = 10
    batch_size: int = 8
    learning_rate: float = 0.5
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    seed: int = 0


@functools.lru_cache(maxsize=64)
def _noise_for(epsilon: float, delta: float, q: float, steps: int) -> tuple[float, float]:
    """(z, accountant ε) of biofed's calibration, cached: target and shadows share it."""
    from biofed.privacy import calibrate_noise, make_accountant

    z = float(calibrate_noise(epsilon, delta, q, steps))
    acc = make_accountant("pld")
    acc.step(z, q, steps)
    return z, float(acc.epsilon(delta))


def _federation(x: Array, y: Array, sites: int) -> FederatedDataset:
    names = tuple(f"x{k}" for k in range(x.shape[1]))
    parts: dict[str, SiteData] = {}
    for k, rows in enumerate(np.array_split(np.arange(len(x)), sites)):
        part = Dataset(
            name="mia", features=x[rows], feature_names=names, targets={"label": y[rows]}
        )
        parts[f"site-{k}"] = SiteData(train=part, test=part)
    return FederatedDataset(name="mia", sites=parts)


def train_federated(
    features: Array,
    labels: Array,
    *,
    epsilon: float,
    settings: TrainingSettings | None = None,
    seed: int | None = None,
    via_job: bool = False,
) -> tuple[ParameterSet, float]:
    """Train the victim with FedAvg over sites holding ``features``, at DP ε (or none).

    The records are split into ``settings.sites`` consecutive, near-equal parts (shuffle
    first); ``epsilon = inf`` trains without DP. Two ways, the same training:

    - ``via_job=True`` (logistic model only: a job names a built-in task): a real
      :class:`~biofed.coordinator.JobSpec` with ``[privacy] mode = "sample"``,
      ``target_epsilon = epsilon``: every site node calibrates its own DP-SGD noise and
      reports its spend. Each node's PLD calibration takes seconds, per run.
    - otherwise: :func:`biofed.simulation.simulate` with the task object and FedAvg, the
      DP-SGD keys in the training config: z from :func:`biofed.privacy.calibrate_noise`
      for ``(ε, δ, q, rounds · local_steps)`` with q the largest site's sampling rate
      ``batch_size / records`` of the smallest site (so every site's ε ≤ the target), the
      same calibration a node runs, done once and cached for the shadows.

    DP noise is seeded (a reproducible simulation; the attack never uses the seed).

    Returns
    -------
    tuple[ParameterSet, float]
        The final global model and the accountant's ε (``inf`` without DP).
    """
    from biofed.attacks._inversion import victim_task
    from biofed.simulation import simulate
    from biofed.strategies import FedAvg

    cfg = settings or TrainingSettings()
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.float64)
    if len(x) < 2 * cfg.sites:
        raise ConfigurationError(f"need at least two records per site, got {len(x)}")
    fed = _federation(x, y, cfg.sites)
    run_seed = cfg.seed if seed is None else seed
    train: dict[str, Scalar] = {
        "local_steps": cfg.local_steps,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "optimizer": "sgd",
    }
    if via_job:
        return _train_job(fed, x.shape[1], train, epsilon, cfg, run_seed)
    spent = math.inf
    if math.isfinite(epsilon):
        smallest = min(len(site.train) for site in fed.sites.values())
        q = min(1.0, cfg.batch_size / smallest)
        z, spent = _noise_for(float(epsilon), cfg.delta, q, cfg.rounds * cfg.local_steps)
        train.update(dp_noise_multiplier=z, dp_max_grad_norm=cfg.max_grad_norm, dp_seeded=True)
    task = victim_task(cfg.model, x.shape[1], hidden=cfg.hidden)
    strategy = FedAvg(train_config=train, min_train_nodes=cfg.sites)
    report = simulate(fed, task, strategy, rounds=cfg.rounds, seed=run_seed, baselines=False)
    if report.parameters is None:
        raise ConfigurationError("the simulation returned no model")
    return report.parameters, spent


def _train_job(
    fed: FederatedDataset,
    num_features: int,
    train: dict[str, Scalar],
    epsilon: float,
    cfg: TrainingSettings,
    seed: int,
) -> tuple[ParameterSet, float]:
    from biofed.coordinator import JobSpec
    from biofed.simulation import simulate

    if cfg.model != "logistic":
        raise ConfigurationError("via_job trains the built-in logistic_regression_torch only")
    tables: dict[str, Any] = {
        "run": {
            "name": "mia",
            "dataset": "mia",
            "rounds": cfg.rounds,
            "seed": seed,
            "min_nodes": cfg.sites,
            "min_replies": cfg.sites,
        },
        "task": {"name": "logistic_regression_torch", "num_features": num_features},
        "strategy": {"name": "fedavg"},
        "train": train,
        "evaluate": {"split": "test"},
    }
    if math.isfinite(epsilon):
        tables["privacy"] = {
            "mode": "sample",
            "target_epsilon": float(epsilon),
            "delta": cfg.delta,
            "max_grad_norm": cfg.max_grad_norm,
            "seeded": True,
        }
    report = simulate(fed, job=JobSpec.from_mapping(tables), baselines=False)
    if report.parameters is None:
        raise ConfigurationError("the simulation returned no model")
    spent = math.inf
    if math.isfinite(epsilon):
        privacy = report.privacy
        if privacy is None:
            raise ConfigurationError("the DP run reported no privacy spend")
        spent = max(float(site["epsilon"]) for site in privacy["sites"].values())
    return report.parameters, spent


def membership_experiment(
    features: Array,
    labels: Array,
    *,
    epsilon: float,
    records_per_site: int = 16,
    num_shadows: int = 8,
    settings: TrainingSettings | None = None,
    seed: int = 0,
) -> dict[str, MembershipResult]:
    """The whole measurement at one ε: pool, target, shadows, both attacks.

    A pool of ``2 · sites · records_per_site`` records is drawn from ``(features, labels)``;
    a random half are the members that train the target federation, the other half the
    non-members. Each of ``num_shadows`` shadows trains the same way (same settings and ε)
    on its own random half of the pool (the online LiRA setting; the target's half is not
    revealed to the shadows).
    """
    cfg = settings or TrainingSettings()
    rng = np.random.default_rng(seed)
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    n_pool = 2 * cfg.sites * records_per_site
    if n_pool > len(x):
        raise ConfigurationError(f"a pool of {n_pool} records needs more than {len(x)} records")
    pool = rng.choice(len(x), n_pool, replace=False)
    px, py = x[pool], y[pool]

    def half() -> Array:
        mask = np.zeros(n_pool, dtype=bool)
        mask[rng.choice(n_pool, n_pool // 2, replace=False)] = True
        return mask

    member = half()
    order = rng.permutation(np.flatnonzero(member))
    target, spent = train_federated(
        px[order], py[order], epsilon=epsilon, settings=cfg, seed=int(rng.integers(2**31))
    )
    shadows: list[ParameterSet] = []
    masks: list[Array] = []
    for _ in range(num_shadows):
        mask = half()
        rows = rng.permutation(np.flatnonzero(mask))
        params, _ = train_federated(
            px[rows], py[rows], epsilon=epsilon, settings=cfg, seed=int(rng.integers(2**31))
        )
        shadows.append(params)
        masks.append(mask)
    return membership_inference(
        target,
        px,
        py,
        member,
        shadows=shadows or None,
        shadow_in=np.stack(masks) if masks else None,
        delta=cfg.delta,
        accountant_epsilon=spent,
    )
