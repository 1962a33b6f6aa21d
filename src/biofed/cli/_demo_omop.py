"""``biofed demo --data omop``: the classic OHDSI GI-bleed study from raw OMOP CDMs.

Five site nodes each hold their own OMOP CDM (OHDSI's Eunomia split into sites by
:func:`biofed.datasets.write_eunomia_sites`' documented non-IID rule). Each site registers its
CDM (version, ``cdm_source``, row counts, fingerprint) and runs the data-quality checks; the
study agreement every party signs lists the study spec's digest; the job carries the spec
(new users of celecoxib or diclofenac, outcome gastrointestinal bleeding within a year), so
each site compiles it against its own CDM, the preprocessing (standardisation, vocabularies)
is fitted across the sites through their governed chain before round 1, and a logistic model
is trained over mTLS.

The demo plays every part on one machine, so — unlike any real participant — it can read
every site's CDM: it extracts the same study tables, applies the run's fitted preprocessing
and fits local-only and pooled models of the same kind, to show the federated model beside
them on each site's test persons.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from biofed.cli._demo import _Processes
    from biofed.cli._demo_governance import DemoStudy, Governance
    from biofed.coordinator import JobSpec
    from biofed.data import StudySpec
    from biofed.governance import DatasetRegistry, PrivacyRequirements
    from biofed.identity import Consortium

SITES = [f"site-{k}" for k in range(5)]
DATASET = "cdm"
AGREEMENT_ID = "gi-bleed-nsaid"
METRICS = ("roc_auc", "train_loss")
#: Local training per round: what examples/job-gi-bleed.toml uses.
TRAIN = {"local_steps": 50, "batch_size": 32, "learning_rate": 0.1}

TASK_PY = '''"""The researcher's task: biofed's built-in logistic regression (ROC AUC on test)."""

from biofed.tasks import LogisticRegressionTask


def make_task(num_features, l2=0.0, init="zeros", metric="roc_auc"):
    return LogisticRegressionTask(num_features=num_features, l2=l2, init=init, metric=metric)
'''


def _privacy(sites: Sequence[str]) -> "PrivacyRequirements":
    from biofed.governance import PrivacyRequirements

    return PrivacyRequirements(secure_aggregation_required=True)


def _register(registry: "DatasetRegistry", folder: Path) -> None:
    """A site's data steward registers the CDM and runs the quality checks on it; the site's
    policy refuses any job on it if a fatal check fails."""
    registry.add_omop(DATASET, str(folder / "data" / "cdm.duckdb"), min_cohort=10)
    registry.check_quality(DATASET)


def study(spec: "StudySpec") -> "DemoStudy":
    """What the GI-bleed agreement covers."""
    from biofed.cli._demo_governance import GOVERNANCE_TABLE, DemoStudy

    return DemoStudy(
        agreement_id=AGREEMENT_ID,
        title="Federated GI-bleed risk model for new NSAID users (OMOP CDM)",
        purpose=(
            "Train a logistic model of gastrointestinal bleeding within a year of starting "
            "celecoxib or diclofenac across five sites' OMOP CDMs, compiled by each site from "
            "the approved study specification, with secure aggregation; publish the final "
            "model, its preprocessing and per-site ROC AUC."
        ),
        dataset=DATASET,
        metrics=METRICS,
        task_py=TASK_PY,
        task_label="GI-bleed logistic task",
        approval_note="read task.py: built-in logistic regression, no I/O",
        governance_toml=GOVERNANCE_TABLE,
        privacy=_privacy,
        register=_register,
        approved_studies=(spec.digest,),
    )


def write_sites(root: Path, consortium: "Consortium") -> None:
    """Split Eunomia into the sites' CDMs, each in its site's ``data/`` folder, and write each
    site's ``node.toml``."""
    import shutil

    from biofed.datasets import write_eunomia_sites

    staging = root / "staging"
    paths = write_eunomia_sites(staging, len(SITES))
    for site, path in paths.items():
        folder = consortium.kit_directory(site)
        (folder / "data").mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), folder / "data" / "cdm.duckdb")
        (folder / "node.toml").write_text(
            "# This site's OMOP CDM: studies are compiled against it by the node itself.\n"
            f"[datasets.{DATASET}]\n"
            f'omop = "{(folder / "data" / "cdm.duckdb").as_posix()}"\n'
        )
    shutil.rmtree(staging)


def job(
    root: Path, spec: "StudySpec", rounds: int, strategy: str, governance: "Governance"
) -> "JobSpec":
    """The researcher's job: the study spec (its text travels with the job), the approved
    bundle, secure aggregation."""
    from biofed.cli._demo import ROUND_TIMEOUT
    from biofed.coordinator import JobSpec

    spec_file = root / "study" / "gi-bleed.json"
    spec_file.parent.mkdir(exist_ok=True)
    spec_file.write_text(spec.to_json(), encoding="utf-8")
    return JobSpec.from_mapping(
        {
            "run": {
                "name": "gi-bleed",
                "dataset": DATASET,
                "agreement": governance.agreement_id,
                "bundle": governance.bundle,
                "rounds": rounds,
                "seed": 42,
                "min_nodes": len(SITES),
                "min_replies": len(SITES) - 1,
                "round_timeout": ROUND_TIMEOUT,
            },
            "study": {"spec": str(spec_file)},
            "task": {"name": "logistic_regression"},  # num_features: set by the fitted phase
            "strategy": {"name": strategy},
            "train": TRAIN,
            "evaluate": {"split": "test", "metrics": "roc_auc"},
            "secure_aggregation": {"clip_range": 8.0, "quantisation_step": 1e-6},
        }
    )


def baselines(
    consortium: "Consortium", spec: "StudySpec", result: bytes, *, seed: int, rounds: int
) -> dict[str, Any]:
    """The federated model beside local-only and pooled models on the same study tables.

    The run's result carries its fitted preprocessing; the same extraction and preprocessing
    as the sites' give every site's train/test tables; local-only models train on one site's
    training persons and pooled on all of them, with the job's local training (the same
    number of steps as all the federated rounds together), each evaluated on every site's test
    persons.
    """
    import numpy as np

    from biofed.coordinator import RESULT_PREPROCESSING
    from biofed.core import decode_metadata, decode_parameters
    from biofed.data import Dataset, FederatedDataset, Preprocessing, extract
    from biofed.simulation import evaluate_everywhere, train_centralised
    from biofed.tasks import LogisticRegressionTask

    # the same number of local steps in all as the federation's sites took over its rounds
    train = {**TRAIN, "local_steps": int(TRAIN["local_steps"]) * rounds}
    model = decode_parameters(result)
    fitted = Preprocessing.from_json(decode_metadata(result)[RESULT_PREPROCESSING])
    sites = {
        site: fitted.site_data(
            extract(spec, consortium.kit_directory(site) / "data" / "cdm.duckdb")
        )
        for site in SITES
    }
    fed = FederatedDataset(name=DATASET, sites=sites)
    task = LogisticRegressionTask(num_features=len(fitted.feature_names))
    initial = task.init_parameters(np.random.default_rng(seed))
    federated = evaluate_everywhere(task, model, fed, method="federated")
    local: dict[str, float] = {}
    for site, data in sites.items():
        own = FederatedDataset(name=DATASET, sites={site: data})
        params = train_centralised(task, data.train, initial, train, seed=seed)
        local[site] = evaluate_everywhere(task, params, own, method="local").site_metrics[site]
    pooled_train = Dataset.concat([d.train for d in sites.values()], name=DATASET)
    pooled = evaluate_everywhere(
        task, train_centralised(task, pooled_train, initial, train, seed=seed), fed, method="pooled"
    )
    return {
        "features": list(fitted.feature_names),
        "sites": {
            site: {
                "train": len(data.train),
                "test": len(data.split("test")),
                "federated": federated.site_metrics[site],
                "local": local[site],
                "pooled": pooled.site_metrics[site],
            }
            for site, data in sites.items()
        },
        "pooled_test": {
            "federated": federated.pooled_metric,
            "pooled": pooled.pooled_metric,
        },
    }


def run_omop(
    root: Path,
    consortium: "Consortium",
    procs: "_Processes",
    address: str,
    rounds: int,
    strategy: str,
    console: Console,
) -> dict[str, Any]:
    """Set up the sites and the agreement, run the study over mTLS, compare."""
    from biofed.cli._demo import _follow, _wait_for_nodes, start_processes
    from biofed.cli._demo_governance import prepare
    from biofed.coordinator import tls_of
    from biofed.datasets import gi_bleed_study
    from biofed.identity import load_kit
    from biofed.transport.grpc import ControlClient

    spec = gi_bleed_study("binary")
    write_sites(root, consortium)
    console.print(
        f"{len(SITES)} sites each hold their own OMOP CDM (Eunomia split by age and size); "
        f"study spec {spec.name} has digest {spec.digest}"
    )
    governance = prepare(root, consortium, SITES, console, study(spec))
    _print_quality(consortium, console)
    start_processes(procs, root, consortium, SITES, address)
    researcher = load_kit(consortium.kit_directory("researcher"))
    spec_job = job(root, spec, rounds, strategy, governance)
    with ControlClient(address, tls_of(researcher), timeout=10.0) as client:
        _wait_for_nodes(client, procs, console, len(SITES))
        console.print(
            f"{len(SITES)} sites connected over mutual TLS; submitting the study job under "
            f"agreement {governance.agreement_id}"
        )
        run = client.submit_run(
            spec_job.to_json(),
            governance.bundle_file.read_bytes(),
            agreement=governance.agreement_file.read_bytes(),
            certificates={
                p.name: (consortium.kit_directory(p.name) / "cert.pem").read_bytes()
                for p in consortium.participants()
            },
        )
        out = _follow(
            client,
            run.run_id,
            spec_job.rounds,
            console,
            sites=len(SITES),
            metric=("roc_auc", "ROC AUC"),
        )
        if out["status"] == "finished":
            out["comparison"] = baselines(
                consortium,
                spec,
                client.download_result(run.run_id),
                seed=spec_job.seed,
                rounds=spec_job.rounds,
            )
    out["study"] = {"name": spec.name, "digest": spec.digest}
    out.update(governance.to_json())
    return out


def _print_quality(consortium: "Consortium", console: Console) -> None:
    """One line per site: its CDM's last quality check (kept in its registry)."""
    from biofed.governance import DatasetRegistry

    for site in SITES:
        entry = DatasetRegistry(consortium.kit_directory(site) / "datasets.json").get(DATASET)
        quality = entry.quality
        if quality is None:
            continue
        checks = quality.report.checks
        failed = [c for c in checks if not c.passed]
        fatal = sum(1 for c in failed if c.fatal)
        console.print(
            f"{site}: data-quality checks on its CDM: {len(checks)} run, "
            f"{len(failed) - fatal} warnings, {fatal} fatal"
        )
