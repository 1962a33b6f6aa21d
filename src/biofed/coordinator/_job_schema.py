"""The job file's schema: every table, every key, what each may hold and what it does.

One declaration serves three purposes: :func:`check_job` validates a parsed job file (all
errors at once, one line each), :class:`~biofed.coordinator.JobSpec` relies on it for
every value it keeps, and ``scripts/gen_job_reference.py`` renders it as
``docs/job-reference.md``. Tests compare the task, strategy and training tables with the
constructors and :class:`~biofed.tasks.LocalTrainingConfig` they feed, so a new option
cannot be added in one place only.

Bounds come from what the values travel through: rounds are 32-bit on the wire
(``RunInfo.total_rounds``) and in the state store; ``num_features`` is ``uint32`` in a
site's dataset declaration; identifiers are at most 128 characters in every table (a run
id is the job name plus 9 characters); numbers are finite and in ranges where the
optimisers, the accountant's calibration and ``threading`` timeouts stay meaningful. What
an operator may allow on top (largest model, most rounds …) is
:class:`~biofed.coordinator.JobLimits`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from biofed.contribution import AUTO, DEFAULT_MAX_EVALUATIONS, METHODS
from biofed.coordinator._job_rules import (
    INT32_MAX,
    INT64_MAX,
    UINT32_MAX,
    Choice,
    Field,
    Flag,
    Integer,
    Number,
    Table,
    Text,
    VariantTable,
    show,
)
from biofed.core import Scalar
from biofed.privacy import ACCOUNTANTS, NOISE_PLACEMENTS, PRIVACY_MODES
from biofed.strategies import ROBUST_AGGREGATORS, STRATEGIES
from biofed.tasks import BUILTIN_TASKS

_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*"
#: A run id is ``{name}-{8 hex}`` and ids are at most 128 characters.
RUN_NAME_CHARS = 119


def _identifier(max_chars: int = 128) -> Text:
    return Text(
        _ID,
        max_chars,
        f"1-{max_chars} letters, digits, '.', '_' or '-', starting with a letter or digit",
    )


def _opt(
    name: str,
    rule: Integer | Number | Choice | Flag | Text,
    doc: str,
    default: Scalar | None = None,
    *,
    required: bool = False,
) -> Field:
    return Field(name=name, rule=rule, doc=doc, default=default, required=required)


RUN = Table(
    name="run",
    doc="How the coordinator runs the job: the data it uses, how many rounds, how long it "
    "waits, and the governance it runs under.",
    fields=(
        _opt("name", _identifier(RUN_NAME_CHARS), "A label; the run id is NAME-xxxxxxxx.", "job"),
        _opt(
            "dataset",
            _identifier(),
            "The dataset name each site registered (its node.toml `[datasets.NAME]`).",
            required=True,
        ),
        _opt(
            "rounds",
            Integer(1, INT32_MAX),
            "Training rounds (capped by the coordinator's `[limits] max_rounds`).",
            5,
        ),
        _opt(
            "seed",
            Integer(0, INT64_MAX),
            "Seeds node selection, the initial model and each site's shuffling.",
            0,
        ),
        _opt(
            "min_nodes",
            Integer(1, INT32_MAX),
            "Sites connected before a round starts (capped by `[limits] max_min_nodes`).",
            1,
        ),
        _opt(
            "min_replies",
            Integer(1, INT32_MAX),
            "Valid training replies needed to aggregate a round; at most `min_nodes`.",
            1,
        ),
        _opt(
            "round_timeout",
            Number(0.01, 31_536_000.0),
            "Seconds a round waits for replies; late replies are discarded (capped by "
            "`[limits] max_round_timeout`).",
            120.0,
        ),
        _opt(
            "evaluate_every",
            Integer(0, INT32_MAX),
            "Evaluate every this many rounds (0: only after the last round, which is "
            "always evaluated).",
            1,
        ),
        _opt(
            "agreement",
            _identifier(),
            "The id of the study agreement the job runs under; sites that enforce "
            "governance refuse a job without one.",
        ),
        _opt(
            "bundle",
            Text(r"[0-9a-f]{64}", 64, "64 lowercase hex characters (a SHA-256)"),
            "The digest of the task bundle sent with the job (`biofed run submit --bundle`); "
            "sites run its `make_task(**[task] options)` in their sandbox. Its parameters "
            "must have the layout of the built-in task named in `[task]`.",
        ),
    ),
    hints=MappingProxyType(
        {
            "task": "[task] name sets it",
            "strategy": "[strategy] name sets it",
            "split": "[evaluate] sets it",
        }
    ),
)

_NUM_FEATURES = _opt(
    "num_features",
    Integer(1, UINT32_MAX),
    "Feature columns of the dataset (the model's size grows with it; capped by the "
    "coordinator's `[limits] max_model_bytes`).",
    required=True,
)
_INIT = _opt(
    "init",
    Choice(("zeros", "uniform")),
    "Initial weights: zeros, or uniform like `torch.nn.Linear`'s default.",
    "zeros",
)
_DEVICE = _opt(
    "device",
    Choice(("cpu",)),
    "Where sites train; a job may only ask for the CPU (a site's accelerators are its "
    "operator's to assign).",
    "cpu",
)
_L2 = _opt("l2", Number(0.0, 1e6), "L2 penalty `l2/2 ‖w‖²` on the weights.", 0.0)
_LOGISTIC_METRIC = _opt(
    "metric",
    Choice(("roc_auc", "accuracy")),
    "The test metric tables and progress show (every evaluation reports both).",
    "roc_auc",
)
_NUM_INTERVALS = _opt(
    "num_intervals",
    Integer(1, 1000),
    "Discrete-time survival: the number of equal intervals `[0, max_time]` is cut into "
    "(fixed by the job, never computed from a site's data).",
    10,
)
_MAX_TIME = _opt(
    "max_time",
    Number(1e-9, 1e12),
    "Discrete-time survival: end of the last interval, in the dataset's time unit (days for "
    "Fed-TCGA-BRCA); later follow-up counts as censored there.",
    3650.0,
)
_SURVIVAL = (_NUM_FEATURES, _NUM_INTERVALS, _MAX_TIME, _INIT, _DEVICE)

TASK = VariantTable(
    name="task",
    doc="The model: a built-in task and its options. With `[run] bundle` the sites run the "
    "bundle's task with these options instead; the coordinator still builds the initial "
    "model from the built-in task of this name.",
    selector=_opt(
        "name", Choice(tuple(sorted(BUILTIN_TASKS))), "The built-in task.", required=True
    ),
    variants=MappingProxyType(
        {
            "cox_ph": (_NUM_FEATURES, _INIT),
            "cox_ph_torch": (_NUM_FEATURES, _INIT, _DEVICE),
            "logistic_hazard_torch": _SURVIVAL,
            "logistic_regression": (_NUM_FEATURES, _L2, _INIT, _LOGISTIC_METRIC),
            "logistic_regression_torch": (_NUM_FEATURES, _INIT, _DEVICE),
            "pem_torch": _SURVIVAL,
        }
    ),
)

_SERVER_LR = "Server learning rate η."
_BETA = "Exponential decay of the {} moment estimate."
STRATEGY = VariantTable(
    name="strategy",
    doc="How the coordinator aggregates the sites' updates: a strategy and its options.",
    selector=_opt(
        "name",
        Choice(tuple(sorted(STRATEGIES)), fold_case=True),
        "The aggregation strategy.",
        "fedavg",
    ),
    common=(
        _opt(
            "fraction_train",
            Number(0.0, 1.0, lo_open=True),
            "Share of connected sites asked to train each round.",
            1.0,
        ),
        _opt(
            "fraction_evaluate",
            Number(0.0, 1.0, lo_open=True),
            "Share of connected sites asked to evaluate.",
            1.0,
        ),
        _opt(
            "min_evaluate_nodes",
            Integer(1, INT32_MAX),
            "At least this many sites are asked to evaluate.",
            1,
        ),
        _opt(
            "weighted",
            Flag(),
            "Weight each site by its number of training examples (else equally).",
            True,
        ),
        _opt(
            "max_weight",
            Integer(1, INT32_MAX),
            "The largest example count one site's reply weighs with, in training and "
            "evaluation (default: what each site declared when it registered). Bounds "
            "weight inflation: a site claiming 10^15 examples weighs `max_weight`.",
        ),
    ),
    variants=MappingProxyType(
        {
            "fedavg": (),
            "fedprox": (
                _opt(
                    "proximal_mu",
                    Number(0.0, 1e4),
                    "FedProx's μ: sites add `μ/2 ‖w − w_global‖²` to their loss.",
                    required=True,
                ),
            ),
            "fedavgm": (
                _opt("server_learning_rate", Number(0.0, 100.0, lo_open=True), _SERVER_LR, 1.0),
                _opt(
                    "server_momentum",
                    Number(0.0, 1.0, hi_open=True),
                    "Server momentum β.",
                    0.9,
                ),
            ),
            **{
                name: (
                    _opt(
                        "server_learning_rate",
                        Number(0.0, 100.0, lo_open=True),
                        _SERVER_LR,
                        0.1,
                    ),
                    _opt("beta_1", Number(0.0, 1.0, hi_open=True), _BETA.format("first"), 0.9),
                    _opt("beta_2", Number(0.0, 1.0, hi_open=True), _BETA.format("second"), 0.99),
                    _opt(
                        "tau",
                        Number(0.0, 10.0, lo_open=True),
                        "Adaptivity τ added to the root of the second moment.",
                        1e-3,
                    ),
                )
                for name in ("fedadagrad", "fedadam", "fedyogi")
            },
            "scaffold": (
                _opt("server_learning_rate", Number(0.0, 100.0, lo_open=True), _SERVER_LR, 1.0),
            ),
        }
    ),
    hints=MappingProxyType(
        {
            "min_train_nodes": "[run] min_replies sets it",
            "train_config": "write [train]",
            "evaluate_config": "write [evaluate]",
        }
    ),
)

_DP_HINT = "sites set DP-SGD themselves from [privacy]"
TRAIN = Table(
    name="train",
    doc="Local training at each site, sent with every training instruction (the keys "
    "the task adapters read; see `biofed.tasks.LocalTrainingConfig`).",
    fields=(
        _opt(
            "local_steps",
            Integer(1, INT32_MAX),
            "Mini-batch steps per round (capped by `[limits] max_local_steps`).",
            100,
        ),
        _opt(
            "batch_size",
            Integer(1, INT32_MAX),
            "Examples per step; under DP-SGD the expected Poisson batch (capped by "
            "`[limits] max_batch_size`).",
            8,
        ),
        _opt(
            "learning_rate",
            Number(0.0, 100.0, lo_open=True),
            "Client step size.",
            0.01,
        ),
        _opt(
            "optimizer",
            Choice(("sgd", "adam")),
            "Local optimiser (Adam's moments restart every round); SCAFFOLD needs sgd.",
            "sgd",
        ),
        _opt("momentum", Number(0.0, 1.0, hi_open=True), "SGD momentum.", 0.0),
        _opt(
            "proximal_mu",
            Number(0.0, 1e4),
            "FedProx's μ (the fedprox strategy sets it from its own option).",
            0.0,
        ),
        _opt(
            "max_grad_norm",
            Number(0.0, 1e6),
            "Clip each step's mini-batch gradient to this L2 norm (0: off). Not "
            'differential privacy, and not allowed with `[privacy] mode = "sample"`.',
            0.0,
        ),
    ),
    hints=MappingProxyType(
        {
            "dp_noise_multiplier": _DP_HINT,
            "dp_max_grad_norm": _DP_HINT,
            "dp_seeded": _DP_HINT,
            "seed": "[run] seed sets it",
            "split": "[evaluate] sets it",
            "dataset": "[run] sets it",
            "task": "[task] sets it",
            "agreement": "[run] sets it",
            "bundle": "[run] sets it",
        }
    ),
)

EVALUATE = Table(
    name="evaluate",
    doc="Evaluation at each site, sent with every evaluation instruction.",
    fields=(
        _opt("split", Choice(("test", "train")), "The split each site evaluates on.", "test"),
        _opt(
            "metrics",
            Text(
                rf"{_ID}(\s*,\s*{_ID})*",
                1024,
                "comma-separated metric names (letters, digits, '.', '_', '-'), "
                "at most 1024 characters",
            ),
            "The metrics asked for; a site's agreement may allow fewer (the rest are withheld).",
        ),
    ),
    hints=MappingProxyType({"seed": "[run] seed sets it"}),
)

PRIVACY = Table(
    name="privacy",
    doc="Differential privacy (optional): sample-level DP-SGD at each site, or client-level "
    "DP-FedAvg. Each site computes its own noise and spend from these settings.",
    fields=(
        _opt(
            "mode",
            Choice(PRIVACY_MODES),
            '"sample": ε over each site\'s records (DP-SGD); "client": ε over each site\'s '
            "participation (DP-FedAvg).",
            required=True,
        ),
        _opt(
            "delta",
            Number(0.0, 1.0, lo_open=True, hi_open=True),
            "δ of the (ε, δ) guarantee.",
            required=True,
        ),
        _opt(
            "target_epsilon",
            Number(0.01, 1000.0),
            "ε(δ) each site may reach after all rounds (each site calibrates its noise); "
            "give this or `noise_multiplier`.",
        ),
        _opt(
            "noise_multiplier",
            Number(0.001, 10_000.0),
            "A fixed noise multiplier z; give this or `target_epsilon`.",
        ),
        _opt(
            "max_grad_norm",
            Number(0.0, 1e6, lo_open=True),
            "C: the per-example (sample) or per-site update (client) clipping bound.",
            1.0,
        ),
        _opt("accountant", Choice(ACCOUNTANTS), "How rounds compose.", "rdp"),
        _opt(
            "noise",
            Choice(NOISE_PLACEMENTS),
            "Client mode: noise added by the coordinator or by the sites.",
            "central",
        ),
        _opt(
            "seeded",
            Flag(),
            "Draw noise from the run seed: reproducible and NOT private (simulations "
            "only; sites with governance refuse it).",
            False,
        ),
    ),
)

SECURE_AGGREGATION = Table(
    name="secure_aggregation",
    doc="SecAgg+ secure aggregation (optional): the coordinator learns only the weighted "
    "mean of the sites' updates.",
    fields=(
        _opt(
            "num_neighbours",
            Integer(2, INT32_MAX),
            "Even degree k of the SecAgg+ neighbour graph (default: the full graph).",
        ),
        _opt(
            "threshold",
            Integer(2, INT32_MAX),
            "Share holders needed to unmask (default: the smallest strict majority).",
        ),
        _opt(
            "clip_range",
            Number(0.0, 1e9, lo_open=True),
            "Each coordinate of an update is clipped to [-r, r] before quantisation.",
            1.0,
        ),
        _opt(
            "quantisation_step",
            Number(0.0, 1e3, lo_open=True),
            "Fixed-point step; the aggregate is exact to within half of it.",
            1e-6,
        ),
        _opt(
            "max_weight",
            Integer(1, INT32_MAX),
            "Largest weight (example count) one site's update may carry.",
            100_000,
        ),
    ),
)

#: Robust aggregators that need every site's update on its own (no secure aggregation);
#: ``mean`` and ``norm_bound`` work on secure aggregation's released mean.
SINGLE_UPDATE_AGGREGATORS = tuple(
    sorted(a for a in ROBUST_AGGREGATORS if a not in ("mean", "norm_bound"))
)
_KRUM_F = _opt(
    "f",
    Integer(0, INT32_MAX),
    "Malicious sites tolerated; Krum needs n > 2f + 2 replies (default: the largest f "
    "the round's n allows).",
)
ROBUST = VariantTable(
    name="robust",
    doc="Robust aggregation (optional): the strategy's mean is replaced by an aggregate a "
    "malicious minority of sites cannot steer, each update can be norm-bounded and "
    "validated on the coordinator's trusted data, and every decision is a run event and an "
    "audit entry (see docs/robustness.md). Aggregators that need each site's update on its "
    "own cannot run with `[secure_aggregation]`; `mean` and `norm_bound` (with validation "
    "of the aggregate) can.",
    selector=_opt(
        "aggregator",
        Choice(tuple(sorted(ROBUST_AGGREGATORS))),
        "How the sites' updates are combined: the coordinate-wise `median`, a "
        "`trimmed_mean`, `krum` / `multi_krum`, the `geometric_median` (RFA), "
        "`centered_clipping`, `fltrust` (trust scores from the trusted data), `norm_bound` "
        "(the mean of norm-bounded updates) or the `mean` (with `norm_bound` or "
        "`validation`); the means weigh sites by example counts only when "
        "`[strategy] max_weight` caps them, else every site counts once.",
        "mean",
    ),
    common=(
        _opt(
            "norm_bound",
            Number(0.0, 1e9, lo_open=True),
            "Clip every update Δᵢ = xᵢ − x to this L2 norm at the coordinator, and ask every "
            "site to clip its own before it leaves (under secure aggregation: before "
            "masking, and a mean above the bound fails the round).",
        ),
        _opt(
            "validation",
            Flag(),
            "Measure each update's influence on the trusted score of the mean (in secure mode: "
            "the aggregate against the current model) on the coordinator's trusted data, and "
            "reject those that lower it by more than `max_drop`; needs `trusted_dataset`.",
            False,
        ),
        _opt(
            "max_drop",
            Number(0.0, 1.0),
            "The largest drop of the trusted score one update may cause, in the task's primary "
            "metric (C-index, AUC, accuracy); 0.05 passed every honest site of Fed-TCGA-BRCA.",
            0.05,
        ),
        _opt(
            "action",
            Choice(("reject", "downweight")),
            "What validation does with an update costing more than `max_drop`: weight 0, or a "
            "weight falling linearly from 1 to 0 at twice `max_drop`.",
            "reject",
        ),
        _opt(
            "trusted_dataset",
            _identifier(),
            "The coordinator's trusted dataset, by the name its operator registered "
            "(`kit.toml` `[trusted_data]`); needed by `validation` and `fltrust`, refused "
            "with `[run] bundle`.",
        ),
    ),
    variants=MappingProxyType(
        {
            "mean": (),
            "norm_bound": (),
            "median": (),
            "fltrust": (),
            "trimmed_mean": (
                _opt(
                    "f",
                    Integer(0, INT32_MAX),
                    "Updates dropped per side in every coordinate (instead of `trim`).",
                ),
                _opt(
                    "trim",
                    Number(0.0, 0.5, hi_open=True),
                    "Share of the largest and of the smallest values dropped in every "
                    "coordinate: ⌈trim·n⌉ of n updates per side, at least one when trim > 0 "
                    "(a round of n ≤ 2⌈trim·n⌉ sites is refused).",
                    0.1,
                ),
            ),
            "krum": (_KRUM_F,),
            "multi_krum": (
                _KRUM_F,
                _opt(
                    "multi_krum_m",
                    Integer(1, INT32_MAX),
                    "Updates averaged after Krum's selection (default: those replying less f).",
                ),
            ),
            "geometric_median": (
                _opt("gm_iters", Integer(1, 10_000), "Most Weiszfeld iterations.", 100),
                _opt(
                    "gm_eps",
                    Number(0.0, 1.0, lo_open=True),
                    "Weiszfeld's smoothing ν: distances below it count as ν, so one site "
                    "can move the aggregate by about ν/(n−1); keep it far below the norm of "
                    "an honest update.",
                    1e-8,
                ),
            ),
            "centered_clipping": (
                _opt(
                    "cc_tau",
                    Number(0.0, 1e9, lo_open=True),
                    "The clipping radius τ around the previous aggregate, in update-norm "
                    "units (about the norm of an honest site's update).",
                    required=True,
                ),
                _opt(
                    "cc_iters",
                    Integer(1, 1000),
                    "Clipping iterations (1 streams).",
                    1,
                ),
            ),
        }
    ),
)

CONTRIBUTION = Table(
    name="contribution",
    doc="Contribution measurement (optional): every round, the coordinator values each "
    "site's update by the Shapley value of the round's coalition game (coalition models "
    "rebuilt from the round's updates, no site trains again; the value of a coalition is "
    "the gain of the trusted data's score, the task's primary metric). Each round's figures "
    "are a run event, the run's ledger is the `contributions` event and one signed audit "
    "entry per site (see docs/contribution.md; `biofed run contributions RUN`). It needs "
    "each site's update on its own, so it cannot run with `[secure_aggregation]`.",
    fields=(
        _opt(
            "method",
            Choice((AUTO, *METHODS)),
            "`auto` (exact `shapley` for at most 10 sites, else `gtg_shapley`; under a study "
            "agreement with `[incentives]`, its `measure`), `shapley` (2^n coalition "
            "evaluations), `gtg_shapley` or `tmc_shapley` (sampled, bounded by "
            "`max_evaluations`), or `leave_one_out` (n + 2 evaluations); under an agreement "
            "with `[incentives]` only `auto` or its `measure`.",
            AUTO,
        ),
        _opt(
            "trusted_dataset",
            _identifier(),
            "The coordinator's trusted dataset that values the coalition models, by the name "
            "its operator registered (`kit.toml` `[trusted_data]`); the same as `[robust] "
            "trusted_dataset` when both name one; refused with `[run] bundle`.",
            required=True,
        ),
        _opt(
            "seed",
            Integer(0, INT64_MAX),
            "Seeds the sampled methods (each round's generator is seeded with it and the "
            "round), so the figures can be recomputed.",
            0,
        ),
        _opt(
            "max_evaluations",
            Integer(2, 1_000_000),
            "The most coalition evaluations (scores on the trusted data) one round's "
            "measurement may spend; a method that needs more stops (sampled) or the round's "
            "measurement fails with a `contribution_failed` event (exact).",
            DEFAULT_MAX_EVALUATIONS,
        ),
    ),
)

STUDY = Table(
    name="study",
    doc="The study dataset (optional): a spec every site compiles against its own data "
    "(an OMOP CDM or a file; see the study spec reference in `biofed.data`). With it the run "
    "starts with a federated preprocessing phase through the sites' governed chain, and "
    "`[task] num_features` may be left out (the fitted preprocessing sets it).",
    fields=(
        _opt(
            "spec",
            Text(
                r"[^\x00-\x1f]{1,4096}",
                4096,
                "a file path (TOML or JSON), relative to the job file",
            ),
            "The study spec file. It is read when the job is parsed and travels as its "
            "canonical JSON (`spec_json`); sites' agreements list its digest.",
        ),
        _opt(
            "spec_json",
            Text(r"\{.*\}", 1 << 19, "the spec's canonical JSON object (biofed writes it)"),
            "The spec as the job travels and is stored (give `spec` instead).",
        ),
        _opt(
            "digest",
            Text(r"[0-9a-f]{64}", 64, "64 lowercase hex characters (a SHA-256)"),
            "The spec's SHA-256 (`biofed.data.StudySpec.digest`); when given, the spec must "
            "have it.",
        ),
    ),
)

#: The job file's tables, in the order of the reference.
SECTIONS: tuple[Table | VariantTable, ...] = (
    RUN,
    STUDY,
    TASK,
    STRATEGY,
    TRAIN,
    EVALUATE,
    PRIVACY,
    SECURE_AGGREGATION,
    ROBUST,
    CONTRIBUTION,
)
_BY_NAME = {s.name: s for s in SECTIONS}
#: Tables that may be left out entirely.
OPTIONAL_SECTIONS = frozenset(
    {
        "strategy",
        "train",
        "evaluate",
        "privacy",
        "secure_aggregation",
        "study",
        "robust",
        "contribution",
    }
)
#: With a ``[study]`` the fitted preprocessing sets this task option.
STUDY_SETS = "num_features"


def check_job(data: object, errors: list[str]) -> dict[str, dict[str, Scalar]]:
    """Check a parsed job file against the schema.

    Parameters
    ----------
    data:
        The parsed file (TOML tables or the equivalent JSON object).
    errors:
        Every problem is appended as one line naming the table and key.

    Returns
    -------
    dict
        The tables present, values normalised (integers given for numbers become floats;
        strategy names lower case). Complete only when no error was appended.
    """
    if not isinstance(data, Mapping):
        errors.append(f"a job is a table of tables ([run], [task] …), got {show(data)}")
        return {}
    out: dict[str, dict[str, Scalar]] = {}
    # With a [study], the feature count is known once the preprocessing is fitted: a task
    # that leaves it out is checked with a stand-in that is dropped again.
    task_raw = data.get("task")
    stand_in = "study" in data and isinstance(task_raw, Mapping) and STUDY_SETS not in task_raw
    if stand_in:
        assert isinstance(task_raw, Mapping)
        data = {**data, "task": {**task_raw, STUDY_SETS: 1}}
    for name, raw in data.items():
        section = _BY_NAME.get(name) if isinstance(name, str) else None
        if section is None:
            shown = f"[{name}]" if isinstance(name, str) and len(name) <= 40 else show(name)
            errors.append(
                f"unknown section {shown} in the job; allowed: "
                + ", ".join(f"[{s.name}]" for s in SECTIONS)
            )
            continue
        out[section.name] = section.check(raw, errors)
    for section in SECTIONS:
        if section.name not in data and section.name not in OPTIONAL_SECTIONS:
            section.check({}, errors)  # reports the required keys
    if stand_in and "task" in out:
        out["task"].pop(STUDY_SETS, None)
    return out
