"""A governed site's real folder for the site dashboard's tests: a provisioned consortium,
the site's kit with node.toml, two versions of a task bundle (the first approved with the
CLI, the second awaiting review), a study agreement signed by every party, and a privacy
ledger with spend recorded through the ledger API as a run records it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from biofed.cli import app as cli
from biofed.governance import (
    LEDGER_FILE,
    LOG_FILE,
    AuditLog,
    AuditSigner,
    OutputPolicy,
    Party,
    PrivacyLedger,
    SignedAgreement,
    StudyAgreement,
    pack_bundle,
    sign,
    write_agreement,
)
from biofed.identity import Consortium, Kit, load_kit

SITE = "hosp-a"
OTHER = "hosp-b"
RESEARCHER = "alice"
AGREEMENT = "brca-cox"
TASK_V1 = (
    "from biofed.tasks import CoxPHTask\n\n\n"
    "def make_task(num_features):\n"
    "    return CoxPHTask(num_features=num_features)\n"
)
TASK_V2 = (
    "from biofed.tasks import CoxPHTask\n\n\n"
    "def make_task(num_features, l2=0.01):\n"
    "    # </pre><script>alert('xss')</script>\n"
    "    return CoxPHTask(num_features=num_features, l2=l2)\n"
)
README = "Cox model for the BRCA study; v2 adds an L2 penalty (default 0.01).\n"
#: A bundle the agreement lists but whose file never reached the site.
ABSENT = "ab" * 32


@dataclass(frozen=True)
class SiteFolder:
    fed: Path
    kit_dir: Path
    node_toml: Path
    v1: str
    v2: str

    def kit(self, name: str = SITE) -> Kit:
        return load_kit(self.fed / name)


def _party(kit: Kit) -> Party:
    return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)


def _pack(root: Path, name: str, files: dict[str, bytes]) -> tuple[str, Path]:
    folder = root / name
    folder.mkdir()
    for path, data in files.items():
        (folder / path).write_bytes(data)
    info = pack_bundle(folder, root / f"{name}.zip")
    return info.digest, root / f"{name}.zip"


def build_site(root: Path, *, hostile: bool = True) -> SiteFolder:
    """Everything a site operator's dashboard shows, made the way biofed makes it; with
    ``hostile``, the new bundle also carries a binary and a 136 kB text file."""
    fed = root / "fed"
    Consortium.create(
        fed,
        consortium="Web Oncology",
        coordinator="127.0.0.1:50051",
        sites=[SITE, OTHER],
        researchers=[RESEARCHER],
    )
    kit_dir = fed / SITE
    for sub in ("agreements", "certificates", "bundles", "data"):
        (kit_dir / sub).mkdir()
    for name in ("coordinator", SITE, OTHER, RESEARCHER):
        shutil.copy(fed / name / "cert.pem", kit_dir / "certificates" / f"{name}.pem")
    (kit_dir / "data" / "brca.csv").write_text("time,event,x\n1,0,0.5\n2,1,0.1\n")
    node_toml = kit_dir / "node.toml"
    node_toml.write_text(
        '[datasets.brca]\npath = "data/brca.csv"\nformat = "csv"\n'
        'targets = { event = "event", time = "time" }\n\n'
        '[governance]\nagreements_dir = "agreements"\ncertificates_dir = "certificates"\n'
        'approvals = "approvals.json"\nregistry = "datasets.json"\nbundles_dir = "bundles"\n'
    )
    # the researcher's two versions of the task: v1 approved last month, v2 new
    bundles = root / "researcher"
    bundles.mkdir()
    v1, v1_zip = _pack(bundles, "v1", {"task.py": TASK_V1.encode()})
    task = TASK_V2 if hostile else TASK_V2.replace("</pre><script>alert('xss')</script>", "v2")
    v2_files = {"task.py": task.encode(), "README.md": README.encode()}
    if hostile:
        v2_files["weights.bin"] = bytes(range(256)) * 8  # binary: shown by size and hash
        v2_files["notes.txt"] = ("a long note line\n" * 8000).encode()  # 136 kB: cut
    v2, v2_zip = _pack(bundles, "v2", v2_files)
    shutil.copy(v1_zip, kit_dir / "bundles" / f"{v1}.zip")
    shutil.copy(v2_zip, kit_dir / "bundles" / f"{v2}.zip")
    result = CliRunner().invoke(
        cli,
        [
            "node", "approve", v1, "--store", str(kit_dir / "approvals.json"),
            "--kit", str(kit_dir), "--by", "dr-ops", "--note", "ticket 41",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # the study agreement every party signed, listing both versions and one not here yet
    kits = {n: load_kit(fed / n) for n in ("coordinator", SITE, OTHER, RESEARCHER)}
    agreement = StudyAgreement(
        agreement_id=AGREEMENT,
        title="Survival in breast cancer",
        purpose="Train a Cox model.",
        legal_basis="GDPR Art. 9(2)(j)",
        consortium="Web Oncology",
        coordinator=_party(kits["coordinator"]),
        parties=tuple(_party(kits[n]) for n in (SITE, OTHER, RESEARCHER)),
        datasets={SITE: "brca", OTHER: "brca"},
        approved_bundles=(v1, v2, ABSENT),
        outputs=OutputPolicy(metrics=("c_index",), per_site_metrics=True),
        min_cohort=10,
        expires=dt.date(2099, 12, 31),
    )
    signed = SignedAgreement(agreement=agreement)
    for kit in kits.values():
        signed = sign(signed, kit)
    write_agreement(kit_dir / "agreements" / f"{AGREEMENT}.toml", signed)
    # a pilot's agreement that only two parties signed, and that has expired since
    expires = dt.date.today() - dt.timedelta(days=1)
    old = dataclasses.replace(agreement, agreement_id="brca-pilot", title="Pilot", expires=expires)
    then = dt.datetime.combine(expires, dt.time(), dt.UTC)
    pilot = SignedAgreement(agreement=old)
    for name in (SITE, RESEARCHER):
        pilot = sign(pilot, kits[name], now=then)
    write_agreement(kit_dir / "agreements" / "brca-pilot.toml", pilot)
    # privacy spend, recorded as the node records a DP round: the ledger, audited
    log = AuditLog(kit_dir / LOG_FILE, AuditSigner.from_kit(kits[SITE]))
    ledger = PrivacyLedger(
        kit_dir / LEDGER_FILE, audit=lambda event, data: log.append(event, dict(data))
    )
    ledger.set_cap("brca", 8.0, 1e-5, source="node.toml")
    runs = {
        "brca-cox-1": (0.6, 1.0, 1.3),
        "brca-cox-2": (0.8, 1.4),
        "brca-km-1": (0.5,),
        "brca-cox-3": (0.7, 1.2, 1.6, 1.9),
    }
    for run, steps in runs.items():
        for rnd, eps in enumerate(steps, start=1):
            ledger.reserve("brca", run, rnd, eps, 1e-6 * rnd, guarantee="exact")
    return SiteFolder(fed=fed, kit_dir=kit_dir, node_toml=node_toml, v1=v1, v2=v2)
