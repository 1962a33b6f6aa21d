"""biofed.governance: what a site allows — registered datasets, signed study agreements,
approvals, audit."""

from biofed.governance._agreement import (
    AgreementStatus,
    OutputPolicy,
    Party,
    PrivacyRequirements,
    Signature,
    SignedAgreement,
    StudyAgreement,
    read_agreement,
    require_in_force,
    sign,
    verify,
    write_agreement,
)
from biofed.governance._audit import AuditLog
from biofed.governance._audit_entry import GENESIS, LOG_FILE, AuditEntry, AuditLogError
from biofed.governance._audit_reconcile import (
    RECEIVED_EVENT,
    SENT_EVENT,
    Pairing,
    ReconcileReport,
    Transfer,
    reconcile,
)
from biofed.governance._audit_signer import AuditSigner
from biofed.governance._audit_verify import AuditSource, VerifyReport, verify_log
from biofed.governance._bundle import (
    Approval,
    ApprovalStore,
    Bundle,
    BundleInfo,
    check_digest,
    pack_bundle,
    read_bundle,
    unpack_bundle,
)
from biofed.governance._datasets import (
    DatasetCheck,
    DatasetRegistry,
    RegisteredDataset,
    file_digest,
)
from biofed.governance._policy import (
    Clearance,
    PolicyRequest,
    SitePolicy,
    check_instruction,
    control_reply,
)

__all__ = [
    "GENESIS",
    "LOG_FILE",
    "RECEIVED_EVENT",
    "SENT_EVENT",
    "AgreementStatus",
    "Approval",
    "ApprovalStore",
    "AuditEntry",
    "AuditLog",
    "AuditLogError",
    "AuditSigner",
    "AuditSource",
    "Bundle",
    "BundleInfo",
    "Clearance",
    "DatasetCheck",
    "DatasetRegistry",
    "OutputPolicy",
    "Pairing",
    "Party",
    "PolicyRequest",
    "PrivacyRequirements",
    "ReconcileReport",
    "RegisteredDataset",
    "Signature",
    "SignedAgreement",
    "SitePolicy",
    "StudyAgreement",
    "Transfer",
    "VerifyReport",
    "check_digest",
    "check_instruction",
    "control_reply",
    "file_digest",
    "pack_bundle",
    "read_agreement",
    "read_bundle",
    "reconcile",
    "require_in_force",
    "sign",
    "unpack_bundle",
    "verify",
    "verify_log",
    "write_agreement",
]
