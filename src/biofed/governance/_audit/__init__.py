"""The tamper-evident audit log: the entry format and its hash chain (:mod:`._entry`), signing
(:mod:`._signer`), the log file (:mod:`._log`), checking a log (:mod:`._verify`), anchoring
its head in a peer's log (:mod:`._anchor`) and pairing two logs' transfers
(:mod:`._reconcile`)."""

from biofed.governance._audit._anchor import (
    ANCHOR_EVENT,
    ANCHOR_KEY,
    COORDINATOR_PEER,
    AnchorReport,
    AuditHead,
    anchor_data,
    check_against,
    check_expected_head,
)
from biofed.governance._audit._entry import GENESIS, LOG_FILE, AuditEntry, AuditLogError
from biofed.governance._audit._log import AuditFollower, AuditLog
from biofed.governance._audit._reconcile import (
    RECEIVED_EVENT,
    SENT_EVENT,
    Pairing,
    ReconcileReport,
    Transfer,
    reconcile,
    reply_payload,
)
from biofed.governance._audit._signer import AuditSigner
from biofed.governance._audit._verify import AuditSource, VerifyReport, verify_log

__all__ = [
    "ANCHOR_EVENT",
    "ANCHOR_KEY",
    "COORDINATOR_PEER",
    "GENESIS",
    "LOG_FILE",
    "RECEIVED_EVENT",
    "SENT_EVENT",
    "AnchorReport",
    "AuditEntry",
    "AuditFollower",
    "AuditHead",
    "AuditLog",
    "AuditLogError",
    "AuditSigner",
    "AuditSource",
    "Pairing",
    "ReconcileReport",
    "Transfer",
    "VerifyReport",
    "anchor_data",
    "check_against",
    "check_expected_head",
    "reconcile",
    "reply_payload",
    "verify_log",
]
