"""The governance half of ``biofed demo``: the study agreement every party signs, the task
bundle every site approves, each site's registry, approvals and ``[governance]`` table, and
the closing check of the sites' audit logs.

Each step is what the participant would do with its own kit; the demo only plays all the
parts on one machine.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from biofed.core import BiofedError
from biofed.governance import (
    AgreementStatus,
    ApprovalStore,
    AuditLog,
    AuditSigner,
    DatasetRegistry,
    OutputPolicy,
    Party,
    PrivacyRequirements,
    SignedAgreement,
    StudyAgreement,
    pack_bundle,
    reconcile,
    sign,
    verify,
    verify_log,
    write_agreement,
)
from biofed.identity import Consortium, Kit, load_kit

AGREEMENT_ID = "tcga-brca-survival"
DATASET = "tcga-brca"
METRICS = ("c_index", "train_loss")
TASK_PY = '''"""The researcher's task: a piecewise-exponential (Poisson) survival model trained with
DP-SGD (biofed's built-in pem_torch), with age (column 0, in years) read in centuries.

Its likelihood is a sum of per-record terms, so each site's ε is a guarantee (the Cox partial
likelihood couples a batch's records, and a node refuses it sample-level DP)."""

import dataclasses

import numpy as np

from biofed.tasks import PiecewiseExponentialTorchTask


def _age_in_centuries(data):
    # A fixed unit change, not a statistic of the data: it costs no privacy, and keeps age
    # from dominating every example's gradient norm under per-example clipping.
    features = np.array(data.features, dtype=np.float32, copy=True)
    features[:, 0] /= 100.0
    return dataclasses.replace(data, features=features)


class SurvivalAgeInCenturies(PiecewiseExponentialTorchTask):
    def train(self, parameters, data, ctx):
        return super().train(parameters, _age_in_centuries(data), ctx)

    def evaluate(self, parameters, data, ctx):
        return super().evaluate(parameters, _age_in_centuries(data), ctx)


def make_task(num_features, num_intervals=10, max_time=3650.0):
    return SurvivalAgeInCenturies(
        num_features=num_features, num_intervals=num_intervals, max_time=max_time
    )
'''

#: Each site's privacy-budget cap on its dataset across all jobs (node.toml [privacy]), and
#: the most one job under the agreement may spend at each site.
SITE_CAP = (20.0, 1e-4)
AGREEMENT_MAX = (10.0, 1e-5)

#: A site's ``[governance]`` table in ``node.toml``: where its governance state lives.
GOVERNANCE_TABLE = """
# This site enforces its own governance: the node checks every instruction against these.
[governance]
agreements_dir = "agreements"
certificates_dir = "certificates"
approvals = "approvals.json"
registry = "datasets.json"
bundles_dir = "bundles"
audit = "audit.jsonl"
"""

GOVERNANCE_TOML = f"""{GOVERNANCE_TABLE}
# The site's privacy budget: what this dataset may spend across all jobs (ε, δ).
[privacy.caps.tcga-brca]
epsilon = {SITE_CAP[0]}
delta = {SITE_CAP[1]}
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Governance:
    """What the demo's job runs under: the agreement (id, file, status) and bundle digest."""

    agreement_id: str
    agreement_file: Path
    status: AgreementStatus
    bundle: str
    bundle_file: Path

    def to_json(self) -> dict[str, Any]:
        """The JSON report's ``"agreement"`` and ``"bundle"`` entries."""
        return {
            "agreement": {
                "id": self.agreement_id,
                "file": str(self.agreement_file),
                "digest": self.status.digest,
                "in_force": self.status.in_force,
                "signed_by": list(self.status.signed_by),
            },
            "bundle": self.bundle,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoStudy:
    """What one demo's agreement covers and how each site sets up its data for it."""

    agreement_id: str
    title: str
    purpose: str
    dataset: str
    metrics: tuple[str, ...]
    task_py: str
    #: how the demo names the task ("survival task")
    task_label: str
    approval_note: str
    governance_toml: str
    privacy: Callable[[Sequence[str]], PrivacyRequirements]
    #: registers the site's dataset in its registry (the site's kit folder is given)
    register: Callable[[DatasetRegistry, Path], None]
    approved_studies: tuple[str, ...] = ()


def _tcga_privacy(sites: Sequence[str]) -> PrivacyRequirements:
    return PrivacyRequirements(
        secure_aggregation_required=True,
        dp_required=True,
        max_epsilon={site: AGREEMENT_MAX[0] for site in sites},
        max_delta={site: AGREEMENT_MAX[1] for site in sites},
    )


def _register_tcga(registry: DatasetRegistry, folder: Path) -> None:
    registry.add(
        DATASET,
        folder / "data" / "tcga-brca.csv",
        format="csv",
        targets={"event": "event", "time": "time"},
        split_column="split",
        min_cohort=10,
    )


TCGA_STUDY = DemoStudy(
    agreement_id=AGREEMENT_ID,
    title="Federated survival model for breast cancer (Fed-TCGA-BRCA)",
    purpose=(
        "Train a proportional-hazards (piecewise-exponential) model of overall survival "
        "across six sites "
        "without moving patient records, with sample-level differential privacy at each "
        "site and secure aggregation; publish the final model and per-site C-index."
    ),
    dataset=DATASET,
    metrics=METRICS,
    task_py=TASK_PY,
    task_label="survival task",
    approval_note="read task.py: built-in pem_torch, no I/O",
    governance_toml=GOVERNANCE_TOML,
    privacy=_tcga_privacy,
    register=_register_tcga,
)


def _party(kit: Kit) -> Party:
    return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)


def _draft(
    kits: dict[str, Kit], sites: Sequence[str], digest: str, study: DemoStudy
) -> StudyAgreement:
    coordinator = kits["coordinator"]
    return StudyAgreement(
        agreement_id=study.agreement_id,
        title=study.title,
        purpose=study.purpose,
        legal_basis=(
            "GDPR Art. 6(1)(e) and Art. 9(2)(j): scientific research in the public interest, "
            "with the safeguards of Art. 89(1); approved by each site's ethics board."
        ),
        consortium=coordinator.consortium,
        coordinator=_party(coordinator),
        parties=tuple(_party(kits[name]) for name in [*sites, "researcher"]),
        datasets={site: study.dataset for site in sites},
        approved_bundles=(digest,),
        approved_studies=study.approved_studies,
        outputs=OutputPolicy(final_model=True, metrics=study.metrics, per_site_metrics=True),
        privacy=study.privacy(sites),
        min_cohort=10,
        expires=dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=365),
    )


def _audit(kit: Kit) -> AuditLog:
    return AuditLog(kit.directory / "audit.jsonl", AuditSigner.from_kit(kit))


def _set_up_site(
    kit: Kit, root: Path, signed: SignedAgreement, digest: str, study: DemoStudy
) -> None:
    """What a site's data steward does: register the dataset, keep the signers' certificates
    and the signed agreement, and approve the bundle's digest (after reading its source).
    The bundle itself comes with the job: the node fetches it from the coordinator and
    checks it against the approved digest before keeping it in ``bundles/``."""
    folder = kit.directory
    log = _audit(kit)

    def audit(event: str, data: Mapping[str, Any]) -> None:
        log.append(event, data)

    study.register(DatasetRegistry(folder / "datasets.json", audit=audit), folder)
    for sub in ("agreements", "certificates", "bundles"):
        (folder / sub).mkdir(exist_ok=True)
    for party in signed.agreement.signers:
        shutil.copy(root / party.name / "cert.pem", folder / "certificates" / f"{party.name}.pem")
    write_agreement(folder / "agreements" / f"{study.agreement_id}.toml", signed, overwrite=True)
    log.append(
        "agreement.signed",
        {"agreement": study.agreement_id, "digest": signed.agreement.digest()},
    )
    ApprovalStore(folder / "approvals.json", audit=log).approve(  # recorded in the log
        digest, by=f"{kit.name} data steward", note=study.approval_note
    )
    with (folder / "node.toml").open("a", encoding="utf-8") as toml:
        toml.write(study.governance_toml)


def prepare(
    root: Path,
    consortium: Consortium,
    sites: Sequence[str],
    console: Console,
    study: DemoStudy | None = None,
) -> Governance:
    """Pack the bundle, draft and sign the agreement, and set up every site's governance.

    ``root`` is the demo's work folder; the consortium's kits are in ``root / "consortium"``;
    ``study`` is what the agreement covers (default: the Fed-TCGA-BRCA survival study).
    """
    study = study or TCGA_STUDY
    kits = {
        name: load_kit(consortium.kit_directory(name))
        for name in [*sites, "researcher", "coordinator"]
    }
    task_dir = root / "researcher-task"
    task_dir.mkdir(exist_ok=True)
    (task_dir / "task.py").write_text(study.task_py, encoding="utf-8")
    bundle_file = root / f"{study.agreement_id}-task.zip"
    info = pack_bundle(task_dir, bundle_file)
    console.print(f"researcher packed the {study.task_label} as bundle {info.digest}")

    signed = SignedAgreement(agreement=_draft(kits, sites, info.digest, study))
    agreement_file = root / "agreement" / f"{study.agreement_id}.toml"
    agreement_file.parent.mkdir(exist_ok=True)
    write_agreement(agreement_file, signed, overwrite=True)
    console.print(
        f"drafted study agreement {study.agreement_id} ({len(signed.agreement.signers)} parties, "
        f"expires {signed.agreement.expires})"
    )
    for party in signed.agreement.signers:
        signed = sign(signed, kits[party.name])
    write_agreement(agreement_file, signed, overwrite=True)
    status = verify(
        signed,
        {name: kit.cert_pem for name, kit in kits.items()},
        kits["coordinator"].ca_pem,
    )
    if not status.in_force:
        raise BiofedError(f"the demo's agreement is not in force: {'; '.join(status.reasons)}")
    console.print(
        f"signed by {', '.join(status.signed_by)}: [green]in force[/] (digest {status.digest})"
    )
    for site in sites:
        _set_up_site(kits[site], root / "consortium", signed, info.digest, study)
    console.print(
        f"each site registered {study.dataset}, approved the bundle and enforces governance "
        "(\\[governance] in node.toml)"
    )
    return Governance(
        agreement_id=study.agreement_id,
        agreement_file=agreement_file,
        status=status,
        bundle=info.digest,
        bundle_file=bundle_file,
    )


def check_audit_logs(
    consortium: Consortium, names: Sequence[str], console: Console
) -> dict[str, dict[str, Any]]:
    """Verify each participant's ``audit.jsonl`` (the coordinator's too, if it keeps one)."""
    results: dict[str, dict[str, Any]] = {}
    ca_pem = (consortium.directory / "ca" / "ca.pem").read_bytes()
    for name in [*names, "coordinator"]:
        folder = consortium.kit_directory(name)
        log = folder / "audit.jsonl"
        if name == "coordinator" and not log.exists():
            continue
        try:
            report = verify_log(
                log,
                (folder / "cert.pem").read_bytes(),
                ca_pem,
                writer=name,
            )
            results[name] = {"ok": report.ok, "entries": report.entries}
            if not report.ok:
                results[name]["reason"] = f"line {report.first_bad}: {report.reason}"
        except (BiofedError, OSError) as exc:
            results[name] = {"ok": False, "entries": 0, "reason": str(exc)}
        line = results[name]
        verdict = "[green]OK[/]" if line["ok"] else f"[red]FAILED[/] ({line['reason']})"
        console.print(f"audit log {name:<12} {verdict} · {line['entries']} entries")
    coordinator_log = consortium.kit_directory("coordinator") / "audit.jsonl"
    if coordinator_log.exists() and all(r["ok"] for r in results.values()):
        try:
            paired = reconcile(
                coordinator_log, [consortium.kit_directory(n) / "audit.jsonl" for n in names]
            )
            ok, matched = paired.ok, len(paired.matched)
        except (BiofedError, OSError) as exc:
            ok, matched = False, 0
            console.print(f"[red]reconcile failed[/]: {exc}")
        results["reconcile"] = {"ok": ok, "entries": matched}
        verdict = "[green]OK[/]" if ok else "[red]MISMATCH[/]"
        console.print(
            f"reconciled          {verdict} · {matched} payloads the sites sent = "
            "what the coordinator received"
        )
    return results
