"""Governed virtual sites: a study agreement and a task bundle rehearsed as the sites would
enforce them.

With an agreement, every virtual site is a governed node (``[governance]``): it checks each
instruction against the agreement, its dataset registry, its local bundle approval and its
privacy rules, runs only the approved bundle in its sandboxed worker, controls each reply
and writes its signed audit log. What a real consortium would hold is played on one machine,
as ``biofed demo`` plays it: every party of the agreement gets a kit of the simulation's
throwaway consortium; the agreement's terms are re-signed by those kits (the real parties'
signatures cannot verify against another CA, and a rehearsal must not hold their keys);
each site registers its part of the data (written to a file: the registry pins a file's
SHA-256) and approves the bundle's digest.

Security notes
--------------
Nothing here is a real approval: the throwaway consortium, its signatures and approvals are
deleted with the simulation (or kept under its folder), and cannot verify in the real
consortium, whose CA never issued those kits.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from biofed.core import ConfigurationError
from biofed.data import FederatedDataset, SiteData, write_site_files
from biofed.governance import (
    ApprovalStore,
    AuditLog,
    AuditSigner,
    DatasetRegistry,
    Party,
    SignedAgreement,
    read_agreement,
    read_bundle,
    sign,
    write_agreement,
)
from biofed.identity import Consortium, Kit, load_kit
from biofed.node import DatasetSource, GovernanceConfig, NodeConfig

#: The coordinator's name in a consortium folder (``Consortium.create`` names it so).
_COORDINATOR = "coordinator"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rehearsal:
    """What the governed sites are set up from: the agreement and the bundle file."""

    agreement: SignedAgreement
    bundle_file: Path | None
    digest: str | None

    @classmethod
    def load(cls, agreement: str | Path, bundle: str | Path | None) -> Rehearsal:
        """Read the agreement (signed or a draft) and the bundle (None for a query, which
        runs no bundle); one line on a problem."""
        signed = read_agreement(agreement)
        if bundle is None:
            return cls(agreement=signed, bundle_file=None, digest=None)
        info = read_bundle(Path(bundle))
        if info.digest not in signed.agreement.approved_bundles:
            raise ConfigurationError(
                f"--bundle {Path(bundle).name}: its digest {info.digest[:16]}… is not among "
                "the agreement's approved_bundles"
            )
        return cls(agreement=signed, bundle_file=Path(bundle), digest=info.digest)

    def check_job(self, agreement_id: str | None, bundle: str | None) -> None:
        """The job must name this agreement and this bundle, as it would at the sites."""
        expected = self.agreement.agreement.agreement_id
        if agreement_id != expected:
            raise ConfigurationError(
                f"[run] agreement must be {expected!r} (the --agreement), got {agreement_id!r}"
            )
        if bundle != self.digest:
            raise ConfigurationError(
                f"[run] bundle must be the --bundle's digest {self.digest}, got {bundle!r}"
            )

    def parties(self, sites: Sequence[str]) -> tuple[list[str], list[str]]:
        """(sites, researchers) to provision: the dataset's sites, the agreement's too."""
        draft = self.agreement.agreement
        extra_sites = [p.name for p in draft.parties if p.role == "site" and p.name not in sites]
        researchers = [p.name for p in draft.parties if p.role == "researcher"]
        return [*sites, *extra_sites], researchers

    def resign(self, consortium: Consortium) -> SignedAgreement:
        """The agreement's terms with the throwaway kits as parties, signed by every one."""
        kits = {name: load_kit(consortium.kit_directory(name)) for name in self._names()}
        draft = self.agreement.agreement

        def party(name: str, role: str) -> Party:
            return Party(name=name, role=role, fingerprint=kits[name].fingerprint)

        terms = dataclasses.replace(
            draft,
            consortium=consortium.name,
            coordinator=party(_COORDINATOR, "coordinator"),
            parties=tuple(party(p.name, p.role) for p in draft.parties),
        )
        signed = SignedAgreement(agreement=terms)
        for signer in terms.signers:
            signed = sign(signed, kits[signer.name])
        return signed

    def _names(self) -> list[str]:
        return [_COORDINATOR, *(p.name for p in self.agreement.agreement.parties)]


def governed_config(
    rehearsal: Rehearsal,
    signed: SignedAgreement,
    consortium: Consortium,
    kit: Kit,
    data: SiteData | str | PathLike[str],
    dataset: str,
    base: NodeConfig,
) -> NodeConfig:
    """Set up one site as its data steward would (register its data file, keep the signers'
    certificates and the signed agreement, hold and approve the bundle) and return the node
    config that enforces it; ``base``'s privacy caps and sandbox settings are kept.

    ``data`` is the site's table (written to a CSV file, which is registered and served),
    or a study source: a data file or an OMOP CDM file, registered as it is and served by
    the virtual site from memory (its ``node.toml`` then names no dataset)."""
    site = kit.name
    folder = consortium.directory / "sites" / site
    for sub in ("agreements", "certificates", "bundles"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    log = AuditLog(folder / "audit.jsonl", AuditSigner.from_kit(kit))

    def audit(event: str, data: Mapping[str, Any]) -> None:
        log.append(event, data)

    registry = DatasetRegistry(folder / "datasets.json", audit=audit)
    if not isinstance(data, SiteData):
        register_source(registry, dataset, Path(data), min_cohort=signed.agreement.min_cohort)
        datasets: dict[str, DatasetSource] = {}
    else:
        part = FederatedDataset(name=dataset, sites={site: data})
        file = write_site_files(part, folder / "data", format="csv")[site]
        targets = {key: key for key in data.train.targets}
        registry.add(
            dataset,
            file,
            format="csv",
            targets=targets,
            split_column="split",
            min_cohort=signed.agreement.min_cohort,
        )
        datasets = {
            dataset: DatasetSource(
                name=dataset, path=file, format="csv", targets=targets, split_column="split"
            )
        }
    for party in signed.agreement.signers:
        shutil.copy(
            consortium.kit_directory(party.name) / "cert.pem",
            folder / "certificates" / f"{party.name}.pem",
        )
    write_agreement(folder / "agreements" / f"{signed.agreement.agreement_id}.toml", signed)
    if rehearsal.bundle_file is not None and rehearsal.digest is not None:
        shutil.copy(rehearsal.bundle_file, folder / "bundles" / f"{rehearsal.digest}.zip")
        ApprovalStore(folder / "approvals.json", audit=log).approve(
            rehearsal.digest, by=f"{site} (simulation)", note="approved for a simulated rehearsal"
        )
    governance = GovernanceConfig(
        agreements_dir=folder / "agreements",
        certificates_dir=folder / "certificates",
        approvals=folder / "approvals.json",
        registry=folder / "datasets.json",
        bundles_dir=folder / "bundles",
        audit=folder / "audit.jsonl",
    )
    return dataclasses.replace(base, datasets=datasets, governance=governance)


def register_source(
    registry: DatasetRegistry, dataset: str, file: Path, *, min_cohort: int
) -> None:
    """Register a study source file as its steward would: an OMOP CDM file (``.duckdb``,
    ``.db``) with the registry's OMOP entry when it has one, a data file as a table."""
    if file.suffix.lower() in (".duckdb", ".db"):
        registry.add_omop(dataset, str(file), min_cohort=min_cohort)
    else:
        registry.add(dataset, file, min_cohort=min_cohort)
