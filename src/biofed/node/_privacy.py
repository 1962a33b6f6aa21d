"""The site side of differential privacy: what a round costs this site, checked against its
budget before anything runs, and the noise the site itself adds.

The coordinator sends the job's *settings* (:class:`~biofed.privacy.DPSettings`, the
instruction's ``job.privacy`` section) and, in client mode, the round's directives (clip
norm, noise share); the node decides everything else from what it holds:

* **Sample mode.** The node computes q = batch_size / N from its own record count N,
  calibrates (or takes) z, and hands ``dp_noise_multiplier`` / ``dp_max_grad_norm`` to the
  task, whose local training becomes DP-SGD. A round is ``local_steps`` Poisson-sampled
  Gaussian steps at rate q.
* **Client mode.** The node clips its update to C itself and, with distributed noise, adds
  its noise share itself (CSPRNG) — neither is left to task code. A round is one Gaussian
  mechanism on the site's participation (q = 1: the site knows it takes part). With
  distributed noise the site cannot know how many others will reply; it counts only the
  noise ``min_replies`` shares carry (the least the coordinator aggregates), a bound that
  holds whatever really happens.

Every ε the node debits, reports and audits carries a label (:data:`biofed.privacy.GUARANTEES`)
and the trust assumption it rests on (:meth:`biofed.privacy.DPSettings.trust_assumption`).
In sample mode the label comes from the task's declared ``dp_record_coupling``
(:func:`for_task`): ``"independent"`` → exact; ``"bounded"`` → the task's proven
per-record sensitivity factor k multiplies the noise (the task adds N(0, (k·z·C)²) while the
accountant counts z: the noise in units of the sensitivity k·C) and the figure is a
guarantee labelled "bounded"; ``"none"`` → refused, unless the study agreement (governed) or
``node.toml`` (development) explicitly accepts heuristic figures, which are then labelled
``"heuristic"`` everywhere. Under governance the declaration is read from the approved
bundle's task object inside the sandboxed worker (:meth:`~biofed.node.BundleRunner.describe_dp`):
it is a property of the code whose digest the site approved, so a site that approves a bundle
vouches for its declaration as it vouches for its DP-SGD (review it like the rest of the code).

Privacy notes
-------------
Threat: a round whose release takes the dataset past its budget; a budget that forgets
rounds after a restart; a coordinator that under-reports noise or sends a seed that makes
the noise predictable. Before a round runs, the node composes every round of the job it has
released — read back from its ledger, where each debit keeps its mechanism — with this
round, using its own accountant (RDP or PLD, :mod:`biofed.privacy`), and reserves the
resulting cumulative ε(δ) in the :class:`~biofed.governance._ledger.PrivacyLedger` (debit
before release; refusals are audited by the ledger). ε figures from the coordinator are
never used. Sample mode relies on the approved task code running biofed's DP-SGD; the node
checks that the task reports having done so with the z it was given and withholds the reply
otherwise.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from biofed.core import (
    BiofedError,
    Config,
    ConfigurationError,
    Instruction,
    ParameterSet,
    PolicyViolation,
    Reply,
    Scalar,
)
from biofed.core.sections import DP_NOISE_STD_SHARE, JobSection, RoundDirectives, split_flat
from biofed.governance import PrivacyLedger
from biofed.privacy import (
    DELTA_METRIC,
    EPSILON_METRIC,
    GUARANTEE_METRIC,
    DPSettings,
    GaussianNoise,
    SampledGaussian,
    clip_l2,
    guarantee_code,
    make_accountant,
    noise_in_sum,
)
from biofed.tasks import LocalTrainingConfig, Task, record_coupling, sensitivity_factor

#: What a DP-SGD task reports back (checked before release).
TASK_NOISE_METRIC = "dp_noise_multiplier"
TASK_SECURE_METRIC = "dp_secure"


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundPrivacy:
    """What one training round costs this site and what the node must do for it.

    Attributes
    ----------
    settings:
        The job's settings.
    event:
        This round's mechanism: ``steps`` Gaussian steps of multiplier z at rate q.
    task_config:
        Keys added to the task's config (sample mode: DP-SGD's z and C).
    clip_norm:
        Client mode: the bound the node clips its update to; else None.
    noise_std_share:
        Client mode with distributed noise: the std of the noise the node adds; else 0.
    guarantee:
        What the round's ε is (:data:`biofed.privacy.GUARANTEES`): ``"exact"`` until
        :func:`for_task` reads a sample-mode task's declaration.
    sensitivity:
        Sample mode: the per-record sensitivity in units of C that the task's noise is
        scaled by (1 for a sum of per-record terms).
    """

    settings: DPSettings
    event: SampledGaussian
    task_config: Mapping[str, Scalar] = field(default_factory=lambda: MappingProxyType({}))
    clip_norm: float | None = None
    noise_std_share: float = 0.0
    guarantee: str = "exact"
    sensitivity: float = 1.0

    @property
    def trust(self) -> str:
        """What the round's ε rests on besides the mathematics."""
        return self.settings.trust_assumption()

    @property
    def task_noise_multiplier(self) -> float:
        """Sample mode: the z the task adds noise with (the accountant's z times the
        sensitivity factor), the value it must report back."""
        return self.event.noise_multiplier * self.sensitivity

    def mechanism(self) -> str:
        """The event as the JSON text the ledger keeps with the debit."""
        return json.dumps(
            {
                **self.event.to_dict(),  # the one serialised form of a mechanism
                "accountant": self.settings.accountant,
                "guarantee": self.guarantee,
                "sensitivity": self.sensitivity,
            },
            sort_keys=True,
        )

    def planned_epsilon(self) -> float:
        """ε(δ) at this site after all of the job's planned rounds at this round's cost."""
        acc = make_accountant(self.settings.accountant)
        e = self.event
        acc.step(e.noise_multiplier, e.sampling_rate, e.steps * self.settings.rounds)
        return acc.epsilon(self.settings.delta)


def plan_for(
    job: JobSection, directives: RoundDirectives, task_config: Config, num_examples: int
) -> RoundPrivacy | None:
    """The round's privacy at a site with ``num_examples`` training records, or None when
    the job has no DP. Reads the job's privacy section, the round's directives (client
    mode: clip norm, noise share) and the task's local-training settings (sample mode).

    Raises
    ------
    ConfigurationError
        On malformed or inconsistent settings (e.g. a client-mode clip norm that differs
        from the job's).
    """
    settings = DPSettings.from_section(job.privacy)
    if settings is None:
        return None
    if num_examples < 1:
        raise ConfigurationError("differential privacy needs at least one training record")
    if settings.mode == "sample":
        local = _local_training(task_config)
        q = min(1.0, local.batch_size / num_examples)
        z = settings.sample_noise_multiplier(q, local.local_steps)
        task_keys: dict[str, Scalar] = {
            "dp_noise_multiplier": z,
            "dp_max_grad_norm": settings.max_grad_norm,
            "dp_seeded": settings.seeded,  # always set: the coordinator's word never counts
        }
        return RoundPrivacy(
            settings=settings,
            event=SampledGaussian(noise_multiplier=z, sampling_rate=q, steps=local.local_steps),
            task_config=MappingProxyType(task_keys),
        )
    clip = directives.clip_norm
    if clip != settings.max_grad_norm:
        raise ConfigurationError(
            f"the round's clip norm {clip!r} differs from the job's [privacy] max_grad_norm "
            f"{settings.max_grad_norm}"
        )
    if settings.noise == "distributed":
        share = directives.noise_std_share
        if share is None or not share > 0:
            raise ConfigurationError(
                f"distributed noise needs a positive {DP_NOISE_STD_SHARE}, got {share!r}"
            )
        z = noise_in_sum(float(share), settings.min_replies, settings.max_grad_norm)
        return RoundPrivacy(
            settings=settings,
            event=SampledGaussian(noise_multiplier=z, sampling_rate=1.0, steps=1),
            clip_norm=settings.max_grad_norm,
            noise_std_share=float(share),
        )
    return RoundPrivacy(
        settings=settings,
        event=SampledGaussian(
            noise_multiplier=settings.client_noise_multiplier(), sampling_rate=1.0, steps=1
        ),
        clip_norm=settings.max_grad_norm,
    )


def plan_round(config: Mapping[str, Scalar], num_examples: int) -> RoundPrivacy | None:
    """:func:`plan_for` for a config in the flat form (``privacy.*``, ``dp.*`` and task
    keys in one map)."""
    job, directives, task = split_flat(config)
    return plan_for(JobSection(**job), RoundDirectives(**directives), task, num_examples)


def _local_training(task_config: Config) -> LocalTrainingConfig:
    """The task's local-training settings, without the coordinator's ``dp_*`` keys (only
    the node sets DP-SGD's)."""
    return LocalTrainingConfig.from_config(
        {k: v for k, v in task_config.items() if not k.startswith("dp_")}
    )


def fit_plan(
    plan: RoundPrivacy, task: Task, task_config: Config, heuristic_allowed: bool
) -> RoundPrivacy:
    """The round's plan fitted to the task's declared record coupling (sample mode: the
    guarantee label, and the noise scaled by a bounded task's sensitivity factor); a
    ``"none"`` task is refused unless ``heuristic_allowed``.

    Raises
    ------
    PolicyViolation
        ``"privacy: …"``: the task is refused, or its declaration cannot be read (a bundle's
        worker failed, a malformed declaration): no declaration is no guarantee.
    """
    if plan.settings.mode != "sample":
        return plan
    try:
        coupling = record_coupling(task)
        factor = None
        if coupling == "bounded":
            factor = sensitivity_factor(task, _local_training(task_config).batch_size)
    except PolicyViolation:
        raise
    except BiofedError as exc:
        raise PolicyViolation(f"privacy: cannot read the task's DP declaration: {exc}") from None
    return for_task(plan, coupling, factor, heuristic_allowed=heuristic_allowed)


def for_task(
    plan: RoundPrivacy, coupling: str, factor: float | None, *, heuristic_allowed: bool
) -> RoundPrivacy:
    """``plan`` fitted to the task's declared ``dp_record_coupling`` (sample mode only;
    client-mode plans come back unchanged, the node clips and noises itself).

    Parameters
    ----------
    coupling:
        The task's declaration (:data:`biofed.tasks.RECORD_COUPLINGS`).
    factor:
        For ``"bounded"``: the task's sensitivity factor k ≥ 1 at this job's batch size.
    heuristic_allowed:
        Whether the study agreement (``privacy.exact_guarantees_required = false``) or, on a
        development node, ``node.toml`` (``[privacy] allow_heuristic = true``) accepts a
        figure that is no guarantee.

    Raises
    ------
    PolicyViolation
        ``"privacy: …"`` for a ``"none"`` task unless ``heuristic_allowed``.

    Privacy notes
    -------------
    Threat: a site that debits, enforces and reports an ε that bounds nothing, because the
    task's loss couples the records of a batch (the Cox partial likelihood: one record moves
    the clipped batch gradient by up to (2b + 1)·C, not C). DP-SGD's accounting (Abadi et
    al. 2016; Mironov, Talwar & Zhang 2019) assumes the per-record L2 sensitivity of each
    step's noised sum is the clip norm C. For a sensitivity of k·C the Gaussian mechanism
    with noise std σ has multiplier σ/(k·C), so the task adds noise of std k·z·C for the
    accountant's z (the noise in units of the sensitivity): the same ε, now a guarantee.
    """
    if plan.settings.mode != "sample":
        return plan
    if coupling == "independent":
        return replace(plan, guarantee="exact", sensitivity=1.0)
    if coupling == "bounded":
        if factor is None or not (np.isfinite(factor) and factor >= 1.0):
            raise PolicyViolation(
                f"privacy: the task declares a bounded per-record sensitivity but its factor "
                f"{factor!r} is not a finite number >= 1"
            )
        scaled = replace(plan, guarantee="bounded", sensitivity=float(factor))
        config = dict(plan.task_config)
        config["dp_noise_multiplier"] = scaled.task_noise_multiplier
        return replace(scaled, task_config=MappingProxyType(config))
    if not heuristic_allowed:
        raise PolicyViolation(
            "privacy: sample-level DP refused: the task declares no exact guarantee and no "
            'per-record sensitivity bound (dp_record_coupling = "none", its loss couples '
            "records), so its ε would bound nothing; use a task whose loss is a sum of "
            "per-record terms, or a study agreement with exact_guarantees_required = false "
            "to run it with figures labelled heuristic"
        )
    return replace(plan, guarantee="heuristic", sensitivity=1.0)


def job_epsilon(
    plan: RoundPrivacy, history: Mapping[int, str], server_round: int
) -> tuple[float, float]:
    """The job's cumulative (ε, δ) at this site once this round is released: every other
    round in ``history`` (mechanism texts from the ledger) composed with this one."""
    acc = make_accountant(plan.settings.accountant)
    for rnd, text in sorted(history.items()):
        if rnd == server_round:
            continue
        try:
            e = SampledGaussian.from_dict(json.loads(text))
        except (ValueError, TypeError, AttributeError, ConfigurationError) as exc:
            raise ConfigurationError(
                f"the privacy ledger's record of round {rnd} is unreadable ({exc}); "
                "refusing to guess the job's spend"
            ) from None
        acc.step(e.noise_multiplier, e.sampling_rate, e.steps)
    e = plan.event
    acc.step(e.noise_multiplier, e.sampling_rate, e.steps)
    return acc.epsilon(plan.settings.delta), plan.settings.delta


#: What a DP query answer's ε rests on: the site draws its own noise.
QUERY_TRUST = "none beyond the site: each site adds its own noise to its answer"


def query_mechanism(
    query_sha256: str, pass_no: int, mechanism: str, eps: float, delta: float
) -> str:
    """The ledger's record of one DP query pass (JSON text)."""
    return json.dumps(
        {
            "kind": "query",
            "query_sha256": query_sha256,
            "pass": pass_no,
            "mechanism": mechanism,
            "epsilon": eps,
            "delta": delta,
        },
        sort_keys=True,
    )


def query_epsilon(history: Mapping[int, str], epsilon: float, delta: float) -> tuple[float, float]:
    """A query run's cumulative (ε, δ) at this site once this pass is answered: basic
    composition (Dwork & Roth 2014, Thm 3.16) — the sum of every pass's (ε, δ).

    Raises
    ------
    ConfigurationError
        If a recorded pass of the run is not a query pass the node can read.
    """
    total_eps, total_delta = epsilon, delta
    for rnd, text in sorted(history.items()):
        try:
            data = json.loads(text)
            if data.get("kind") != "query":
                raise ValueError("not a query pass")
            total_eps += float(data["epsilon"])
            total_delta += float(data["delta"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigurationError(
                f"the privacy ledger's record of round {rnd} of this run is not a query pass "
                f"({exc}); refusing to guess the run's spend"
            ) from None
    return total_eps, total_delta


class SitePrivacy:
    """The node's privacy bookkeeping for all jobs: its ledger, or (with no ledger, outside
    governance) an in-memory history that still composes the rounds it released.

    Parameters
    ----------
    ledger:
        The site's persistent ledger; None in development (ε is reported, no cap applies).
    """

    def __init__(self, ledger: PrivacyLedger | None) -> None:
        self.ledger = ledger
        self._memory: dict[tuple[str, str], dict[int, str]] = {}
        self._query_lock = threading.Lock()

    def reserve_query(
        self,
        *,
        dataset: str,
        instruction: Instruction,
        query_sha256: str,
        pass_no: int,
        mechanism: str,
        epsilon: float,
        delta: float,
        agreement_cap: tuple[float, float] | None = None,
    ) -> tuple[float, float]:
        """Reserve one DP query answer before the site gives it; return the run's
        cumulative (ε, δ) at this site (basic composition over every answer it gave).

        Each answer is its own debit: the ledger keys it by the instruction's round, or —
        when that round was answered already (a coordinator that restarted, or asks again)
        — by the next free number, so a repeated pass is charged again, never free.

        Raises
        ------
        PrivacyBudgetExceeded
            When the ledger refuses (audited there as ``budget.refused``).

        Privacy notes
        -------------
        Threat: a release past the dataset's budget, and noise averaged away over repeated
        answers that were charged once. Debit before release (the ledger commits before
        this returns); every answer is composed, a repeat included.
        """
        run_id = instruction.run_id
        text = query_mechanism(query_sha256, pass_no, mechanism, epsilon, delta)
        with self._query_lock:
            if self.ledger is None:
                history = self._memory.setdefault((dataset, run_id), {})
                total = query_epsilon(history, epsilon, delta)
                history[_free_key(history, instruction.round)] = text
                return total
            key = _free_key(self.ledger.mechanisms(dataset, run_id), instruction.round)
            debit = self.ledger.reserve_composed(
                dataset,
                run_id,
                key,
                lambda history: query_epsilon(history, epsilon, delta),
                agreement_cap=agreement_cap,
                mechanism=text,
                guarantee="exact",
                trust=QUERY_TRUST,
            )
        return debit.epsilon_after, debit.delta_after

    def reserve(
        self,
        plan: RoundPrivacy,
        *,
        dataset: str,
        instruction: Instruction,
        agreement_cap: tuple[float, float] | None = None,
    ) -> tuple[float, float]:
        """Reserve the round's cumulative spend before it runs; return the job's (ε, δ).

        Raises
        ------
        PrivacyBudgetExceeded
            When the ledger refuses (audited there as ``budget.refused``).
        """
        run_id, rnd = instruction.run_id, instruction.round
        if self.ledger is None:
            history = self._memory.setdefault((dataset, run_id), {})
            eps, delta = job_epsilon(plan, history, rnd)
            history[rnd] = plan.mechanism()
            return eps, delta
        # The job's history is read and composed inside the reservation's transaction.
        debit = self.ledger.reserve_composed(
            dataset,
            run_id,
            rnd,
            lambda history: job_epsilon(plan, history, rnd),
            agreement_cap=agreement_cap,
            mechanism=plan.mechanism(),
            guarantee=plan.guarantee,
            trust=plan.trust,
        )
        return debit.epsilon_after, debit.delta_after


def _free_key(history: Mapping[int, str], round: int) -> int:
    """The ledger key of a new DP answer: its round, unless that one is taken."""
    return round if round not in history else max(history) + 1


def task_instruction(instruction: Instruction, plan: RoundPrivacy | None) -> Instruction:
    """The instruction the task runs: the coordinator's ``dp_*`` task keys removed (only the
    node decides DP-SGD's noise, clip and randomness source), the plan's added."""
    config = {k: v for k, v in instruction.task_config.items() if not k.startswith("dp_")}
    if plan is not None:
        config.update(plan.task_config)
    return replace(instruction, config=config)


def with_spend(reply: Reply, spend: tuple[float, float], guarantee: str = "exact") -> Reply:
    """``reply`` with ``dp.epsilon`` and ``dp.delta`` (the job's cumulative spend at this
    site after this round, the node's own statement) and ``dp.guarantee`` (what kind of
    figure it is, :func:`biofed.privacy.guarantee_code`) added to its metrics."""
    return replace(
        reply,
        metrics={
            **reply.metrics,
            EPSILON_METRIC: spend[0],
            DELTA_METRIC: spend[1],
            GUARANTEE_METRIC: guarantee_code(guarantee),
        },
    )


def privatise_reply(reply: Reply, instruction: Instruction, plan: RoundPrivacy) -> Reply:
    """What leaves: the task's reply after the node's own DP step.

    Sample mode checks that the task ran DP-SGD with the z it was given; client mode clips
    the update ``x_i − x`` to C and adds the site's noise share (CSPRNG).

    Raises
    ------
    PolicyViolation
        ``"privacy: …"`` when the task did not report DP-SGD with the planned noise: nothing
        of the reply may leave.
    """
    if reply.parameters is None:
        raise PolicyViolation("privacy: a training reply without parameters cannot be released")
    parameters = reply.parameters
    if plan.settings.mode == "sample":
        reported = reply.metrics.get(TASK_NOISE_METRIC)
        if reported is None or not np.isclose(reported, plan.task_noise_multiplier, rtol=1e-9):
            raise PolicyViolation(
                "privacy: the task did not report DP-SGD with the noise multiplier "
                f"{plan.task_noise_multiplier:.6g} this site planned (got {reported!r}); "
                "sample-level DP needs a task that runs biofed's DP-SGD (a TorchTask)"
            )
        if not plan.settings.seeded and reply.metrics.get(TASK_SECURE_METRIC) != 1.0:
            raise PolicyViolation(
                "privacy: the task did not report drawing its samples and noise from the "
                "CSPRNG; a predictable source gives no privacy"
            )
    else:
        assert plan.clip_norm is not None
        update = ParameterSet(
            {
                name: np.asarray(value, dtype=np.float64) - instruction.parameters[name]
                for name, value in parameters.items()
            }
        )
        clipped, _ = clip_l2(update, plan.clip_norm)
        if plan.noise_std_share > 0:
            clipped = GaussianNoise(plan.noise_std_share).add(clipped)
        parameters = ParameterSet(
            {
                name: (instruction.parameters[name] + clipped[name]).astype(
                    instruction.parameters[name].dtype
                )
                for name in parameters
            }
        )
    return replace(reply, parameters=parameters)
